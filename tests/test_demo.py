"""`dlcv demo`'s bookkeeping (the demo itself runs for minutes: `make demo`): the graded scripts it names
and the checkpoints it keeps for them."""
from dlcv.pipelines.demo import graded_commands, prune_checkpoints


def test_each_graded_script_gets_the_best_run_of_its_problem_and_p2_setting_c(tmp_path):
    results = [{"run": "p1_model_a", "value": 0.3}, {"run": "p1_fast", "value": 0.9}, {"run": "p2_byol", "value": 0.5},
               {"run": "p2_setting_A", "value": 0.6}, {"run": "p2_setting_C", "value": 0.4},
               {"run": "p3_model_a", "value": None}, {"run": "p3_small", "value": 0.8}]
    out, data = tmp_path / "demo", tmp_path / "demo" / "data" / "hw1_data"
    lines = graded_commands(out, data, results)
    runs = out / "runs"
    assert lines == {
        runs / "p1_fast/checkpoints/best.pt": f"DLCV_P1_CKPT={runs}/p1_fast/checkpoints/best.pt bash hw1_1.sh "
                                              f"{data}/p1_data/val_50 p1_pred.csv",
        runs / "p2_table/setting_C/checkpoints/best.pt": f"DLCV_P2_CKPT={runs}/p2_table/setting_C/checkpoints/best.pt "
                                                        f"bash hw1_2.sh {data}/p2_data/office/val.csv "
                                                        f"{data}/p2_data/office/val p2_pred.csv",
        runs / "p3_small/checkpoints/best.pt": f"DLCV_P3_CKPT={runs}/p3_small/checkpoints/best.pt bash hw1_3.sh "
                                               f"{data}/p3_data/validation p3_masks"}


def test_only_the_graded_checkpoints_are_kept(tmp_path):
    files = ["a/checkpoints/last.pt", "a/checkpoints/best.pt", "a/checkpoints/epoch_001.pt",
             "t/setting_C/checkpoints/best.pt", "t/setting_C/checkpoints/last.pt", "b/backbone.pt", "a/figures/x.png"]
    for i, name in enumerate(files):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * (i + 1))
    keep = {tmp_path / "a/checkpoints/best.pt", tmp_path / "t/setting_C/checkpoints/best.pt"}
    assert prune_checkpoints(tmp_path, keep) == (1 + 3 + 5, 2 + 4)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["a/checkpoints/best.pt", "a/figures/x.png", "b/backbone.pt", "t/setting_C/checkpoints/best.pt"]
