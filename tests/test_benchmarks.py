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


def test_speed_benchmark_prints_both_loops_side_by_side(synth_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert speed.main(["--data", str(synth_root), "--tasks", "p1", "--batch", "p1=4", "--steps", "p1=2",
                       "--warmup", "p1=1", "--workers", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    p1 = report["cases"]["p1"]
    val_images = len(list((synth_root / "p1_data" / "val_50").glob("*.png")))
    for impl in ("baseline", "dlcv"):
        run = p1[impl]
        assert run["images_per_s"] > 0 and 0 <= run["data_wait_fraction"] <= 1, run
        assert run["steps_timed"] == 2 and run["peak_rss_mb"] > 0
        correct = run["val_acc"] * min(500, val_images)  # accuracy over the whole (<= 500 image) val subset
        assert correct == pytest.approx(round(correct), abs=1e-6), run["val_acc"]
    assert p1["baseline"]["precision"] == "fp32" and p1["baseline"]["dataloader_workers"] == 1
    assert p1["dlcv"]["channels_last"] is True
    assert p1["ratio_dlcv_over_baseline"] == pytest.approx(
        p1["dlcv"]["images_per_s"] / p1["baseline"]["images_per_s"], rel=1e-2)
    assert p1["train_gflops_per_image"] == pytest.approx(7.8, rel=0.05)  # ResNet-50, 3x3 stem, 32 px
    assert p1["dlcv"]["inference"]["images"] == min(512, val_images)


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
