import os
import platform
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, small_classify_cfg
from dlcv import __version__
from dlcv.cli import main
from dlcv.engine.trainer import Trainer
from dlcv.malloc import SETTINGS
from dlcv.tasks.classify import ClassifyTask


@pytest.fixture(scope="module")
def ckpt(p1_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    cfg = small_classify_cfg(p1_root, **{"train.epochs": 1})
    Trainer(ClassifyTask(cfg), cfg, out).fit()
    return out / "checkpoints" / "best.pt"


def dlcv(*args, env=None):
    return subprocess.run([sys.executable, "-m", "dlcv", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=600)


def test_predict_writes_sorted_rows_and_never_reads_labels_from_names(ckpt, p1_root, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    originals = sorted((p1_root / "val_50").glob("*.png"))[::7][:12]
    for i, f in enumerate(originals):  # misleading names: the label prefix is not the true class
        shutil.copy(f, images / f"{(i * 3) % 10}_{i:04d}.png")
    shutil.copy(originals[0], images / "0000.png")  # a test-style name without a label
    assert main(["classify", "predict", "--ckpt", str(ckpt), str(images), str(tmp_path / "pred.csv")]) == 0
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert lines[0] == "filename,label"
    names = [line.split(",")[0] for line in lines[1:]]
    assert names == sorted(p.name for p in images.iterdir()) and len(names) == 13
    assert all(line.split(",")[1].isdigit() for line in lines[1:])
    # Predictions depend on pixels only: the same image under its true name gets the same label.
    main(["classify", "predict", "--ckpt", str(ckpt), str(p1_root / "val_50"), str(tmp_path / "all.csv")])
    truth_name = dict(line.split(",") for line in (tmp_path / "all.csv").read_text().splitlines()[1:])
    renamed = dict(line.split(",") for line in lines[1:])
    for i, f in enumerate(originals):
        assert renamed[f"{(i * 3) % 10}_{i:04d}.png"] == truth_name[f.name]
    assert renamed["0000.png"] == truth_name[originals[0].name]


def test_eval_acc_matches_by_filename_not_row_order(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("filename,label\r\na.png,1\r\nb.png,2\r\nc.png,3\r\nd.png,4\r\n")
    (tmp_path / "pred.csv").write_text("filename,label\nc.png,3\nb.png,2\na.png,0\n")  # d.png missing
    assert main(["eval", "acc", str(tmp_path / "gt.csv"), str(tmp_path / "pred.csv")]) == 0
    assert "accuracy: 0.5000 (2/4)" in capsys.readouterr().out


def test_eval_acc_accepts_id_filename_label(tmp_path, capsys):
    (tmp_path / "gt.csv").write_text("id,filename,label\n0,x.jpg,7\n1,y.jpg,07\n")
    (tmp_path / "pred.csv").write_text("id,filename,label\n0,y.jpg,7\n1,x.jpg,7\n")
    main(["eval", "acc", str(tmp_path / "gt.csv"), str(tmp_path / "pred.csv")])
    assert "accuracy: 1.0000 (2/2)" in capsys.readouterr().out


def test_embed_writes_a_figure(ckpt, p1_root, tmp_path):
    for method in ("pca", "tsne"):
        out = tmp_path / f"{method}.png"
        assert main(["classify", "embed", "--ckpt", str(ckpt), str(p1_root / "val_50"), "--method", method,
                     "--out", str(out)]) == 0
        assert Image.open(out).size[0] > 100


def test_hw1_1_script(ckpt, p1_root, tmp_path):
    result = subprocess.run(["bash", str(REPO / "hw1_1.sh"), str(p1_root / "val_50"), str(tmp_path / "o.csv")],
                            capture_output=True, text=True, env={**os.environ, "DLCV_P1_CKPT": str(ckpt),
                                                                 "DLCV_PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.csv").read_text().startswith("filename,label\n0_450.png,")
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 101
    usage = subprocess.run(["bash", str(REPO / "hw1_1.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_bad_inputs_exit_non_zero_with_the_file_named_and_no_partial_output(ckpt, p1_root, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(p1_root / "val_50" / "0_450.png", images / "0_1.png")
    shutil.copy(p1_root / "val_50" / "1_450.png", images / "1_1.png")  # two classes: a classifier's least
    (images / "0_2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "pred.csv"
    r = dlcv("classify", "predict", "--ckpt", ckpt, images, out)
    assert r.returncode == 2 and "0_2.png" in r.stderr and not out.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".pred*"))

    r = dlcv("classify", "predict", "--ckpt", ckpt, tmp_path / "missing", out)
    assert r.returncode == 2 and "image folder not found" in r.stderr

    (tmp_path / "gt.csv").write_text("name,label\na.png,1\n")
    r = dlcv("eval", "acc", tmp_path / "gt.csv", tmp_path / "gt.csv")
    assert r.returncode == 2 and "missing column(s) filename" in r.stderr

    r = dlcv("classify", "train", "-c", REPO / "configs/p1_model_a.yaml", "--set", f"data.root={images}",
             "--set", "data.train_dir=.", "--set", "data.val_dir=.", "--out", tmp_path / "r")
    assert r.returncode == 2 and "0_2.png" in r.stderr

    r = dlcv("classify", "train", "-c", REPO / "configs/p1_model_a.yaml", "--set", "train.epoch=1")
    assert r.returncode == 2 and "unknown config key 'train.epoch'" in r.stderr


def test_wrong_task_checkpoint_is_a_clear_error(ckpt, tmp_path):
    import torch
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "task": "segment"}, tmp_path / "seg.pt")
    r = dlcv("classify", "predict", "--ckpt", tmp_path / "seg.pt", tmp_path, tmp_path / "o.csv")
    assert r.returncode == 2 and "checkpoint of task 'segment'" in r.stderr


def test_data_synth_command(tmp_path):
    assert main(["data", "synth", str(tmp_path), "--seed", "3"]) == 0
    root = tmp_path / "hw1_data"
    for sub in ("p1_data/train_50", "p1_data/val_50", "p1_data/val_gt.csv", "p2_data/mini/train",
                "p2_data/office/train.csv", "p2_data/office/val", "p3_data/train", "p3_data/validation"):
        assert (root / sub).exists(), sub


def test_help_says_what_dlcv_does_and_each_training_command_lists_its_recipes(capsys):
    for argv, says, not_said in ((["--help"], ["trains and evaluates", "examples:", "dlcv config show"], []),
                                 (["classify", "train", "--help"], ["p1_cpu", "p2_finetune", "docs/usage.md"],
                                  ["p3_cpu"]),
                                 (["segment", "train", "--help"], ["p3_cpu", "p3_model_b"], ["p1_cpu"]),
                                 (["ssl", "pretrain", "--help"], ["p2_byol_cpu"], ["p2_finetune"]),
                                 (["data", "synth", "--help"], ["520 training", "OUT_DIR/hw1_data"], [])):
        with pytest.raises(SystemExit) as done:
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert done.value.code == 0 and all(s in text for s in says) and not any(s in text for s in not_said), argv


def test_config_show_prints_the_resolved_recipe_as_yaml_that_c_reads_back(capsys, tmp_path):
    from dlcv import config
    from dlcv.tasks import classify
    assert main(["config", "show", "-c", "p1_cpu", "--set", "train.epochs=3"]) == 0
    shown = capsys.readouterr().out
    (tmp_path / "shown.yaml").write_text(shown)
    expected = classify.SCHEMA.resolve(config.load_yaml("p1_cpu"), ["train.epochs=3"])
    assert config.load_yaml(tmp_path / "shown.yaml") == expected and shown.startswith("# p1_cpu with ")
    assert main(["config", "show", "-c", "p1_cpu", "--set", "train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err


def test_missing_data_and_checkpoint_name_the_remedy(tmp_path, capsys):
    root = tmp_path / "nowhere" / "p1_data"
    assert main(["classify", "train", "-c", "p1_cpu", "--set", f"data.root={root}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"data.root {root}: not found" in err and "--set data.root=" in err and "dlcv data synth" in err
    assert not (tmp_path / "r").exists()
    done = subprocess.run(["bash", str(REPO / "hw1_1.sh"), "imgs", "o.csv"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "DLCV_P1_CKPT": str(tmp_path / "none.pt")})
    assert done.returncode == 2 and "checkpoint not found" in done.stderr and "set DLCV_P1_CKPT=" in done.stderr
    assert all(os.access(REPO / f"hw1_{n}.sh", os.X_OK) for n in (1, 2, 3))


def test_train_cli_resume_and_csv_labels(p1_root, tmp_path):
    """Training through the CLI from a CSV of string labels, then --resume extends the run."""
    csv = tmp_path / "train.csv"
    rows = [f"{i},{f.name},class_{f.name.split('_')[0]}" for i, f in enumerate(sorted((p1_root / "train_50").iterdir()))]
    csv.write_text("id,filename,label\n" + "\n".join(rows) + "\n")
    val_csv = tmp_path / "val.csv"
    val_csv.write_text("filename,label\n" + "\n".join(
        f"{f.name},class_{f.name.split('_')[0]}" for f in sorted((p1_root / "val_50").iterdir())) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""task: classify
device: cpu
data: {{root: {p1_root}, train_csv: {csv}, val_csv: {val_csv}}}
model: {{name: cifar_convnet, options: {{widths: [8, 16, 16]}}}}
optim: {{name: adam, lr: 1e-3}}
train: {{epochs: 1, batch_size: 100, max_steps: 2}}
""")
    out = tmp_path / "run"
    assert main(["classify", "train", "-c", str(recipe), "--out", str(out)]) == 0
    assert main(["classify", "train", "--out", str(out), "--resume", "--set", "train.epochs=2",
                 "--set", "train.max_steps=4"]) == 0
    lines = (out / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]
    import torch
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["classes"][:2] == ["class_0", "class_1"] and state["step"] == 4
    main(["classify", "predict", "--ckpt", str(out / "checkpoints/best.pt"), str(p1_root / "val_50"),
          str(tmp_path / "p.csv")])
    assert (tmp_path / "p.csv").read_text().splitlines()[1].split(",")[1].startswith("class_")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_a_command_restarts_once_with_the_malloc_settings_unless_the_user_chose():
    show = "import os; print(sorted((k, v) for k, v in os.environ.items() if k.startswith('MALLOC_')))"
    probe = ("import sys; from dlcv import malloc; "
             f"malloc.restart_command = lambda args: [sys.executable, '-c', {show!r}]; "
             "malloc.reexec_with_settings([]); print('not restarted')")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DLCV_MALLOC"}

    def run(**env):
        return subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True,
                              check=True).stdout

    assert run() == f"{sorted(SETTINGS.items())}\n"
    assert run(MALLOC_ARENA_MAX="2") == "not restarted\n"  # the user's own settings win
    assert run(DLCV_MALLOC="default") == "not restarted\n"


def test_version_prints_the_version_and_the_source_checkouts_commit(capsys):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO / "src" / "dlcv", capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"dlcv {__version__} (git {head.stdout.strip()})\n"


def test_version_without_git_prints_the_version_alone(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to find
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"dlcv {__version__}\n"
