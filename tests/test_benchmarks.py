"""benchmarks/speed.py end to end on tiny sizes (it prints figures; no speed is asserted here)."""
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import speed  # noqa: E402


def test_summarise_hand_computed():
    # 2 warm-up steps apart; timed: 3 steps of 0.5 s with 0.1 s of data each, batch 4
    out = speed.summarise([5.0, 1.0, 0.5, 0.5, 0.5], [1.0, 0.2, 0.1, 0.1, 0.1], [4.0, 3.0, 2.0, 1.0, 0.0],
                          warmup=2, batch=4)
    assert out["images_per_s"] == 8.0 and out["data_wait_fraction"] == 0.2 and out["step_ms"] == 500.0
    assert out["warmup_s"] == 6.0 and out["steps_timed"] == 3
    assert out["first_loss"] == 4.0 and out["last_loss_mean"] == 2.0


def test_speed_benchmark_prints_a_json_line_per_variant_as_measured(synth_root, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert speed.main(["--data", str(synth_root), "--tasks", "p1", "--batch", "p1=4", "--steps", "p1=2",
                       "--warmup", "p1=1", "--workers", "1", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines
    assert lines[0]["environment"]["device"] and "variant" not in lines[0]
    runs = {line["variant"]: line for line in lines[1:-1]}
    assert list(runs) == ["baseline", "dlcv"] and runs["dlcv"]["channels_last"] is True
    val_images = len(list((synth_root / "p1_data" / "val_50").glob("*.png")))
    for impl in ("baseline", "dlcv"):
        run = runs[impl]
        assert run["images_per_s"] > 0 and 0 <= run["data_wait_fraction"] <= 1, run
        assert run["steps_timed"] == 2 and run["peak_rss_mb"] > 0
        assert run["step_ms_spread"][0] <= run["step_ms"] <= run["step_ms_spread"][1]
        correct = run["val_acc"] * min(500, val_images)  # accuracy over the whole (<= 500 image) val subset
        assert correct == pytest.approx(round(correct), abs=1e-6), run["val_acc"]
    assert runs["baseline"]["precision"] == "fp32" and runs["baseline"]["dataloader_workers"] == 1
    summary = lines[-1]["summary"]
    assert summary["ratio_dlcv_over_baseline"] == pytest.approx(
        runs["dlcv"]["images_per_s"] / runs["baseline"]["images_per_s"], rel=1e-2)
    assert summary["train_gflops_per_image"] == pytest.approx(7.8, rel=0.05)  # ResNet-50, 3x3 stem, 32 px
    assert runs["dlcv"]["inference"]["images"] == min(512, val_images)


def test_ablations_are_what_differs_from_the_resolved_dlcv_run_with_compile_last(synth_root, tmp_path, monkeypatch):
    resolved = {"images_per_s": 10.0, "precision": "bf16", "channels_last": True}  # dlcv on a GPU
    monkeypatch.setattr(speed, "spawn", lambda spec: resolved)
    monkeypatch.setattr(speed, "flops_per_image", lambda case, cfg: 1e9)
    out = tmp_path / "bench.jsonl"
    assert speed.main(["--data", str(synth_root), "--tasks", "p1", "--out", str(out), "--ablate"]) == 0
    variants = [json.loads(line).get("variant") for line in out.read_text().splitlines()][1:-1]
    assert variants == ["baseline", "dlcv", "dlcv_contiguous", "dlcv_fp32", "dlcv_compile"]


def test_a_cut_off_benchmark_keeps_the_variants_measured_before(synth_root, tmp_path, monkeypatch):
    out = tmp_path / "bench.jsonl"
    calls = []

    def spawn_then_killed(spec):
        if calls:
            raise KeyboardInterrupt  # the time limit strikes during the second variant
        calls.append(spec)
        return {"images_per_s": 10.0, "precision": "fp32", "channels_last": False}

    monkeypatch.setattr(speed, "spawn", spawn_then_killed)
    with pytest.raises(KeyboardInterrupt):
        speed.main(["--data", str(synth_root), "--tasks", "p1", "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line.get("variant") for line in lines] == [None, "baseline"] and lines[1]["images_per_s"] == 10.0


def test_median_run_picks_the_middle_run_and_lists_all():
    runs = [{"images_per_s": 3.0, "inference": {"images": 8}}, {"images_per_s": 1.0}, {"images_per_s": 2.0}]
    chosen = speed.median_run(runs)
    assert chosen["images_per_s"] == 2.0 and chosen["images_per_s_runs"] == [3.0, 1.0, 2.0]
    assert chosen["inference"] == {"images": 8}
    assert speed.median_run([{"error": "exit code 1"}]) == {"error": "exit code 1"}


def test_time_to_accuracy_runs_both_recipes_for_the_budget(synth_root, tmp_path, capsys):
    import time_to_accuracy
    small = ["model.name=cifar_convnet", "model.options={widths: [8, 16, 16]}", "train.batch_size=100",
             "train.eval_batch_size=100", "snapshot.epochs=[1]", "train.precision=fp32"]
    assert time_to_accuracy.main(["--data", str(synth_root / "p1_data"), "--minutes", "0.1",
                                  *[a for s in small for a in ("--report-set", s)],
                                  *[a for s in [*small, "train.epochs=2"] for a in ("--ours-set", s)],
                                  "--out", str(tmp_path / "t.json")]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert json.loads(capsys.readouterr().out) == result and result["budget_s"] == 6
    for recipe in ("report_recipe", "ours"):
        run = result[recipe]
        assert run["curve"] and run["val_acc_at_budget"] == run["curve"][-1]["val_acc"]
        reached = [c["train_s"] for c in run["curve"] if c["val_acc"] >= 0.2904]
        assert run["train_s_to_report_accuracy"] == (reached[0] if reached else None)
    assert result["report_recipe"]["command"].startswith("dlcv classify train -c p1_model_a")


def test_byol_reference_mini_knn_split_holds_out_the_first_images_of_each_class(synth_root, tmp_path):
    import byol_reference
    from dlcv.data import labels as labels_mod
    p2 = synth_root / "p2_data"
    sets = dict(s.split("=", 1) for s in byol_reference.mini_knn_split(p2, tmp_path, query_per_class=3))
    assert sets["knn.train_dir"] == sets["knn.val_dir"] == "mini/train"
    bank, query = (labels_mod.read_labelled_csv(sets[f"knn.{s}_csv"]) for s in ("train", "val"))
    names, labels = labels_mod.read_labelled_csv(p2 / "mini" / "train.csv")
    classes = sorted(set(labels))
    assert sorted(query[1]) == sorted(c for c in classes for _ in range(3))  # 3 queries per class
    assert sorted(bank[0] + query[0]) == sorted(names) and not set(bank[0]) & set(query[0])
    first = {c: [n for n, lab in zip(names, labels) if lab == c][:3] for c in classes}
    assert sorted(query[0]) == sorted(n for c in classes for n in first[c])


def test_byol_reference_gives_lightly_dlcvs_view_settings_per_view():
    import byol_reference
    from dlcv.tasks import ssl
    views = {**ssl.DEFAULTS["views"], "blur": [0.5, 0.0], "crop_scale": [0.2, 1.0]}
    first, second = (byol_reference.lightly_view_options(views, i) for i in (0, 1))
    assert (first["gaussian_blur"], second["gaussian_blur"]) == (0.5, 0.0)
    assert (first["solarization_prob"], second["solarization_prob"]) == (0.0, 0.2)  # BYOL's asymmetric pair
    assert first["min_scale"] == 0.2 and first["cj_prob"] == 0.8 and first["cj_hue"] == 0.1
    with pytest.raises(SystemExit, match="crop_ratio"):  # lightly cannot crop at other aspect ratios
        byol_reference.lightly_view_options({**views, "crop_ratio": [0.5, 2.0]}, 0)


def test_byol_reference_dlcv_views_are_ssl_pretrains_views_in_full_shuffled_batches():
    # --views dlcv: the reference trains on dlcv's own views, normalised, every image at most once per epoch
    from types import SimpleNamespace

    import byol_reference
    import torch

    from dlcv.data.preprocess import Preprocess
    from dlcv.tasks import ssl
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    preprocess = Preprocess({"mean": [0.5] * 3, "std": [0.25] * 3}, torch.device("cpu"))
    monitor = SimpleNamespace(unlabeled=images, input_size=16, preprocess=preprocess)
    base = ["data.root=x", "data.image_size=16", "train.batch_size=4"]
    views = byol_reference.DlcvViews(ssl.SCHEMA.resolve(None, base), monitor, seed=0)
    first = list(views)
    assert len(views) == len(first) == 2  # 10 images in batches of 4: full batches only
    assert all(x0.shape == x1.shape == (4, 3, 16, 16) and not torch.equal(x0, x1) for x0, x1 in first)
    again = list(byol_reference.DlcvViews(ssl.SCHEMA.resolve(None, base), monitor, seed=0))
    assert all(torch.equal(a, b) for pa, pb in zip(first, again) for a, b in zip(pa, pb))  # seeded
    assert not torch.equal(next(iter(views))[0], first[0][0])  # the next epoch draws anew
    at_8 = SimpleNamespace(**{**vars(monitor), "input_size": 8})
    small = byol_reference.DlcvViews(ssl.SCHEMA.resolve(None, base), at_8, seed=0)
    assert next(iter(small))[0].shape == (4, 3, 8, 8)  # the views at the monitor's (ssl's) input size
    # with every augmentation off, the views are the images themselves, normalised, 8 different ones per epoch
    off = ["views.crop_scale=[1.0, 1.0]", "views.crop_ratio=[1.0, 1.0]", "views.flip=0", "views.jitter=0",
           "views.grayscale=0", "views.blur=[0.0, 0.0]", "views.solarize=[0.0, 0.0]"]
    plain = list(byol_reference.DlcvViews(ssl.SCHEMA.resolve(None, base + off), monitor, seed=1))
    for x0, x1 in plain:
        torch.testing.assert_close(x0, x1)
    seen = (torch.cat([x0 for x0, _ in plain]) * 0.25 + 0.5) * 255
    matches = [int(torch.isclose(images.float(), x, atol=1e-3).flatten(1).all(1).nonzero()) for x in seen]
    assert len(set(matches)) == 8


def test_byol_reference_runs_both_implementations_per_epoch(synth_root, tmp_path, capsys):
    pytest.importorskip("lightly")  # the benchmark-only extra (pip install -e '.[bench]')
    import byol_reference
    tiny = ["data.image_size=32", "byol.projector_hidden=64", "byol.projector_dim=32", "train.batch_size=32",
            "train.eval_batch_size=64", "train.epochs=2", "train.precision=fp32", "knn.k=5"]
    out = tmp_path / "ab.json"
    assert byol_reference.main(["--data", str(synth_root / "p2_data"), "--seeds", "0", "--knn", "mini",
                                *[a for s in tiny for a in ("--set", s)], "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for side in ("dlcv seed 0", "reference seed 0"):
        rows = report["runs"][side]
        assert [r["epoch"] for r in rows] == [1, 2], side
        assert all(0 <= r["knn_acc"] <= 1 and r["embed_std"] > 0 and r["loss"] > 0 for r in rows), rows
    assert 0 <= report["random network knn_acc seed 0"] <= 1
    assert "knn.train_dir=mini/train" in report["sets"]
    # both sides log each epoch as it ends (dlcv's run log passes through), not only in the final JSON
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and '"reference": 0, "epoch": 2' in err


@pytest.mark.parametrize("name,options", [("resnet18", {}), ("resnet18_cifar", {}),
                                          ("resnet18_cifar", {"keep_maxpool": True})])
def test_byol_reference_independent_backbone_is_dlcvs_network(name, options):
    # --independent builds the backbone without dlcv: the same network (dlcv's weights loaded into it compute
    # the same), for the ImageNet stem also the same weights per seed (dlcv draws a new fc before a CIFAR stem)
    import byol_reference
    import torch

    from dlcv.models import create_model
    cfg = {"model": {"name": name, "options": options}}
    torch.manual_seed(3)
    ours = create_model(name, num_classes=1000, weights=None, **options).eval()
    torch.manual_seed(3)
    independent = byol_reference.torchvision_backbone(cfg).eval()
    theirs = ours.state_dict()
    assert {k: v.shape for k, v in independent.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    assert all(torch.equal(v, theirs[k]) for k, v in independent.state_dict().items()) == (name == "resnet18")
    independent.load_state_dict(theirs)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(independent(x), ours(x))


def test_byol_reference_independent_schedule_follows_dlcvs():
    # torch's SGD + lightly's warm-up cosine against dlcv's builders on the same config, step by step
    pytest.importorskip("lightly")
    import byol_reference
    import torch

    from dlcv.engine.optim import build_optimizer, build_scheduler
    from dlcv.tasks import ssl
    cfg = ssl.SCHEMA.resolve(None, ["data.root=x", "optim.name=sgd", "optim.lr=0.1", "optim.weight_decay=5e-4",
                                    "sched.name=cosine", "sched.warmup_epochs=2", "train.epochs=10"])
    params = [("w", torch.nn.Parameter(torch.zeros(3)))]
    ours = build_optimizer(params, cfg)
    dlcv_sched = build_scheduler(ours, cfg, 100)
    independent, lightly_sched = byol_reference.torch_optimizer(params, cfg, 100)
    assert independent.defaults["weight_decay"] == 5e-4 and independent.defaults["momentum"] == 0.9
    for _ in range(1000):
        # the same warm-up and cosine (to 0.001x, not 0) within a step (lightly's counts one step ahead)
        assert independent.param_groups[0]["lr"] == pytest.approx(ours.param_groups[0]["lr"], abs=1e-3)
        ours.step(), independent.step(), dlcv_sched.step(), lightly_sched.step()
    with pytest.raises(SystemExit, match="--independent"):
        byol_reference.torch_optimizer(params, {**cfg, "optim": {**cfg["optim"], "name": "adamw"}}, 5)


def test_byol_reference_supervised_ceiling_learns_the_bank_labels(synth_root, tmp_path):
    import byol_reference  # this side needs no lightly
    # the same backbone trained with the bank's labels, scored by the same monitor
    tiny = ["data.image_size=32", "train.batch_size=32", "train.eval_batch_size=64", "train.precision=fp32",
            "knn.k=5", "optim.lr=0.02"]
    out = tmp_path / "ceiling.json"
    assert byol_reference.main(["--data", str(synth_root / "p2_data"), "--seeds", "0", "--knn", "mini",
                                "--only", "supervised", "--supervised-epochs", "4",
                                *[a for s in tiny for a in ("--set", s)], "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["runs"]["supervised seed 0"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(0 <= r["knn_acc"] <= 1 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"], rows  # it learns the labels


def test_streaming_benchmark_prints_a_json_line_per_run_and_streams_what_exceeds_its_budget(synth_root, tmp_path):
    import streaming
    out = tmp_path / "streaming.jsonl"
    assert streaming.main(["--data", str(synth_root), "--cases", "p1", "big", "--batch", "p1=8", "big=8",
                           "--steps", "2", "--warmup", "1", "--workers", "1", "--big-images", "48", "--big-size", "32",
                           "--big-dir", str(tmp_path / "big"), "--budget-gb", "0.0001", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["environment"]["device"]
    runs = {(line["case"], line["variant"]): line for line in lines if "variant" in line}
    assert runs[("p1", "memory")]["in_memory"] is True and runs[("p1", "stream")]["in_memory"] is False
    for run in runs.values():
        assert run["images_per_s"] > 0 and run["peak_rss_mb"] > 0, run
    assert runs[("p1", "stream")]["steps_timed"] == 2 and "peak_worker_rss_mb" in runs[("p1", "stream")]
    big = runs[("big", "auto")]  # 48 images of 32 px decode to 144 KiB, over the 107 KiB budget: streamed
    assert big["in_memory"] is False and big["train_images"] == 48 and big["steps_timed"] == 48 // 8 - 1
    summary = next(line["summary"] for line in lines if "summary" in line)
    rates = summary["images_per_s"]
    assert summary["ratio_stream_over_memory"] == pytest.approx(rates["stream"] / rates["memory"], rel=1e-2)


def test_export_speed_prints_every_variant_and_hw1_3_with_both_models(synth_root, tmp_path, capsys):
    """benchmarks/export_speed.py at tiny size: the hw1_3 case (its P3 model's case first) with a tiny model
    without views (exports take seconds), one timed batch; no speed is asserted."""
    import export_speed
    out = tmp_path / "bench.jsonl"
    tiny = ["p3:model.name=fcn_small", "p3:model.options={width: 4}", "p3:model.weights=null",
            "p3:tta.rotate90=false", "p3:tta.scales=[1.0]"]
    assert export_speed.main(["--data", str(synth_root), "--cases", "hw1_3", "--batch", "p3=1", "--out", str(out),
                              *[a for s in tiny for a in ("--set", s)]]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines
    assert lines[0]["machine"]["cpu"]
    measured = {(line["case"], line["variant"]) for line in lines[1:] if "images_per_s" in line or "seconds" in line}
    assert {("p3", v) for v in ("export_torchscript", "export_onnx", "eager_fp32", "torchscript", "onnxruntime")} \
        <= measured and {("hw1_3", "checkpoint"), ("hw1_3", "onnx")} <= measured
    exports = [line for line in lines if line.get("variant", "").startswith("export_")]
    assert all(line["agree"] == line["total"] for line in exports)
    summary = next(line["summary"] for line in lines if line.get("case") == "hw1_3" and "summary" in line)
    tiles = len(list((synth_root / "p3_data" / "validation").glob("*_sat.jpg")))
    assert summary == {"identical_masks": tiles, "masks": tiles}
