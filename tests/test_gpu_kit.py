"""benchmarks/gpu: pack.sh and run.sh in tiny mode on the synthetic data, so the GPU kit cannot rot between
the rare sessions that have a GPU. Every step of every problem runs (one epoch, a few small images)."""
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
import kit  # noqa: E402

pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def packed(synth_root):
    """pack.sh's output per problem (made once), in ignored folders inside the repository (what a call
    carries), removed afterwards."""
    made = {}

    def pack(problem):
        if problem not in made:
            dest = REPO / f"gpu_pack_test_{problem}"
            done = subprocess.run(["bash", str(REPO / "benchmarks/gpu/pack.sh"), problem, str(dest), "--data",
                                   str(synth_root), "--tiny"], capture_output=True, text=True, cwd=REPO)
            assert done.returncode == 0, done.stderr
            made[problem] = dest, json.loads(done.stdout.strip().splitlines()[-1])
        return made[problem]
    yield pack
    for dest, _ in made.values():
        shutil.rmtree(dest, ignore_errors=True)


def test_p1_pack_is_lossless_and_refuses_a_tracked_folder(synth_root, packed, tmp_path):
    pack_dir, info = packed("p1")
    assert info["images"] == {"train_50": 400, "val_50": 100} and info["parts"] == 1 and 0 < info["part_mib"][0] < 64
    assert (pack_dir / "weights" / "efficientnet_lite2.pth.xz").is_file()
    data = kit.unpack(pack_dir, tmp_path / "work")
    for split in ("train_50", "val_50"):
        original = sorted((synth_root / "p1_data" / split).glob("*.png"))
        unpacked = sorted((data / "p1_data" / split).glob("*.png"))
        assert [p.name for p in unpacked] == [p.name for p in original]
        for a, b in zip(original, unpacked):
            assert np.array_equal(np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b)))
    assert (data / "p1_data" / "val_gt.csv").read_bytes() == (synth_root / "p1_data" / "val_gt.csv").read_bytes()
    assert (tmp_path / "work" / "weights" / "efficientnet_lite2.pth").read_bytes() == \
        kit.weight_file("efficientnet_lite2").read_bytes()
    refused = subprocess.run(["bash", str(REPO / "benchmarks/gpu/pack.sh"), "p1", str(REPO / "src" / "gpu_x"),
                              "--data", str(synth_root)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode != 0 and "must be an ignored folder" in refused.stderr
    assert not (REPO / "src" / "gpu_x").exists()


def test_a_pack_split_into_parts_comes_back_whole_and_a_missing_part_is_named(synth_root, tmp_path, monkeypatch):
    dest = REPO / "gpu_pack_test_split"
    monkeypatch.setitem(kit.WEIGHTS, "p3", [])  # the data alone, split into parts of 150 kB
    try:
        info = kit.pack("p3", dest, synth_root, tiny=True, capacity=150_000)
        assert info["parts"] >= 3 and all(mib <= 150_000 / 2**20 for mib in info["part_mib"])
        parts = [REPO / name for name in info["folders"]]
        store = tmp_path / "store"
        first = kit.receive(parts[0], store)
        assert kit.missing_parts(store, first) == list(range(2, info["parts"] + 1))
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu/kit.py"), "run", "p3", str(out), "--pack",
                               str(parts[1]), "--store", str(store)], capture_output=True, text=True)
        assert done.returncode == 2
        assert f"part(s) {', '.join(map(str, range(3, info['parts'] + 1)))} of {info['parts']} are not on this " \
               "machine" in done.stderr
        for part in parts[2:]:
            kit.receive(part, store)
        assert kit.missing_parts(store, first) == []
        data = kit.unpack(store, tmp_path / "work")
        for split in ("train", "validation"):
            original = sorted((synth_root / "p3_data" / split).iterdir())
            unpacked = sorted((data / "p3_data" / split).iterdir())
            assert [p.name for p in unpacked] == [p.name for p in original]
            assert all(a.read_bytes() == b.read_bytes() for a, b in zip(original, unpacked))
    finally:
        for folder in REPO.glob("gpu_pack_test_split*"):
            shutil.rmtree(folder)


def test_the_plan_keeps_each_call_and_each_problems_loan_within_its_limit():
    for problem, parts in (("p1", 1), ("p2", 1), ("p3", 2)):
        plan = kit.plan(problem, parts)
        assert len(plan["calls_s"]) == parts - 1 + len(kit.CALL_STEPS[problem])
        assert sorted(c for loan in kit.LOANS[problem] for c in loan) == list(range(1, len(kit.CALL_STEPS[problem]) + 1))
        assert plan["total_s"] == sum(plan["calls_s"]) == sum(plan["loans_s"])
        assert max(plan["loans_s"]) <= kit.LOAN_S and max(plan["calls_s"]) <= kit.CALL_S
        every = [s["name"] for s in kit.steps(problem, Path("d"), Path("w"), False)]
        in_calls = [s["name"] for c in range(1, len(kit.CALL_STEPS[problem]) + 1)
                    for s in kit.call_steps(problem, c, kit.steps(problem, Path("d"), Path("w"), False))]
        assert in_calls == every  # each step in exactly one call, in order


def threads() -> dict[str, str]:
    """The test process's share of the cores (conftest.py), for a process started with an environment of its own."""
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ}


@pytest.mark.parametrize("problem", ["p1", "p2", "p3"])
def test_run_sh_tiny_mode_runs_every_step_and_returns_few_flat_files(problem, synth_root, packed, tmp_path):
    pack_dir, info = packed(problem)
    if problem == "p3":
        assert info["train_tiles"] == len(list((synth_root / "p3_data/train").glob("*_sat.jpg")))
    calls = len(kit.CALL_STEPS[problem])
    for call in range(1, calls + 1):  # the calls of a loan, one after another on the same store
        out = tmp_path / f"out{call}"
        done = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh"), problem, str(out), "--pack", str(pack_dir),
                               "--store", str(tmp_path / "store"), "--call", str(call), "--tiny"], capture_output=True,
                              text=True, cwd=REPO, env={"DLCV_PYTHON": sys.executable, "PATH": "/usr/bin:/bin", **threads()})
        assert done.returncode == 0, done.stdout[-3000:]
    figures = {"steps": [step for call in range(1, calls + 1)
                         for step in json.loads((tmp_path / f"out{call}" / "figures.json").read_text())["steps"]],
               **{k: v for k, v in json.loads((out / "figures.json").read_text()).items() if k != "steps"}}
    names = [s["name"] for s in kit.steps(problem, tmp_path, tmp_path, True)]
    assert [s["name"] for s in figures["steps"]] == names and all(s["rc"] == 0 for s in figures["steps"])
    assert figures["tiny"] is True and figures["manifest"]["problem"] == problem and figures["device"]
    entries = sorted(p.name for p in out.iterdir())
    assert len(entries) <= 8 and all((out / e).is_file() for e in entries)
    trained = [s["name"] for s in kit.call_steps(problem, calls, kit.steps(problem, tmp_path, tmp_path, True))
               if "run" in s]
    assert "progress.log" in entries and all(f"{n}_summary.json" in entries for n in trained)
    log = "".join((tmp_path / f"out{c}" / "progress.log").read_text() for c in range(1, calls + 1))
    assert all(f"{n}: rc 0" in log for n in names)  # timestamped progress, step by step
    if problem == "p1":
        speed_lines = next(s for s in figures["steps"] if s["name"] == "speed_p1")["result"]
        assert any(line.get("variant") == "dlcv" and line["images_per_s"] > 0 for line in speed_lines)
        for acc in ("p1_acc", "p1_ensemble_acc"):
            assert "accuracy" in " ".join(next(s for s in figures["steps"] if s["name"] == acc)["output"]).lower()
    if problem == "p2":
        assert "table.md" in entries
    if problem == "p3":
        steps = {s["name"]: s for s in figures["steps"]}
        assert "mean_iou" in " ".join(steps["miou"]["output"]) and "mask_grid.png" in entries
        check = steps["bf16_check"]["result"][0]
        assert check["repeats"] == 1 and check["convolutions_with_dead_taps"]["layer4.0.conv1"]["dead_taps"] == 8
