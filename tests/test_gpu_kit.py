"""benchmarks/gpu: pack.sh and run.sh in tiny mode on the synthetic data, so the GPU kit cannot rot between
the rare sessions that have a GPU. Every step of every problem runs (one epoch, a few small images)."""
import json
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
            shutil.rmtree(dest, ignore_errors=True)
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
    assert info["images"] == {"train_50": 400, "val_50": 100} and 0 < info["call_mib"] < 64
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


@pytest.mark.parametrize("problem", ["p1", "p2", "p3"])
def test_run_sh_tiny_mode_runs_every_step_and_returns_few_flat_files(problem, synth_root, packed, tmp_path):
    pack_dir, info = packed(problem)
    if problem == "p3":
        assert info["train_tiles"] == "{0} of {0}".format(len(list((synth_root / "p3_data/train").glob("*_sat.jpg"))))
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh"), problem, str(out), "--pack", str(pack_dir),
                           "--tiny"], capture_output=True, text=True, cwd=REPO, env={"DLCV_PYTHON": sys.executable,
                                                                                     "PATH": "/usr/bin:/bin"})
    figures = json.loads((out / "figures.json").read_text())
    assert done.returncode == 0, [(s["name"], s["rc"]) for s in figures["steps"]]
    names = {"p1": ["speed_p1", "p1_scratch", "p1_pretrained"], "p2": ["p2_byol", "p2_supervised", "p2_export", "p2_table"],
             "p3": ["p3_lite0", "hw1_3", "miou"]}[problem]
    assert [s["name"] for s in figures["steps"]] == names and all(s["rc"] == 0 for s in figures["steps"])
    assert figures["tiny"] is True and figures["manifest"]["problem"] == problem and figures["device"]
    entries = sorted(p.name for p in out.iterdir())
    assert len(entries) <= 8 and all((out / e).is_file() for e in entries)
    assert "progress.log" in entries and all(f"{n}_summary.json" in entries for n in names if n.startswith("p") and
                                             n not in ("p2_export", "p2_table"))
    log = (out / "progress.log").read_text()
    assert all(f"{n}: rc 0" in log for n in names)  # timestamped progress, step by step
    if problem == "p1":
        assert figures["steps"][0]["result"]["cases"]["p1"]["dlcv"]["images_per_s"] > 0
    if problem == "p2":
        assert "table.md" in entries
    if problem == "p3":
        assert "mean_iou" in " ".join(figures["steps"][2]["output"]) and "mask_grid.png" in entries
