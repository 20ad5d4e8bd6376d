"""What a careless or malicious user types (issue 37), class by class, through the real command line (in
process, or the hw1 scripts and `python` where the start-up itself is under test): the exit code, the one
line it prints, and every file of the world it ran in byte-identical afterwards. FIFOs stand in for
devices (never the machine's own /dev)."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, small_classify_cfg
from dlcv import config as config_mod
from dlcv.cli import main
from dlcv.data.masks import check_prediction_targets, write_mask
from dlcv.engine import checkpoint, identity
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.pipelines import transfer
from dlcv.tasks import classify, fill_model_defaults

# snapshot.epochs outside the run: no feature snapshots, so no t-SNE figures (seconds each on a busy core)
TINY = {"train.epochs": 1, "train.max_steps": 2, "model.options": "{widths: [8, 8, 8]}", "data.limit_train": 60,
        "data.limit_val": 20, "train.batch_size": 30, "snapshot.epochs": [99]}
TRAIN = ["classify", "train", "-c", "p1_fast", "--set", "data.root={dir}", "--set", "device=cpu", "--set",
         "model.options={{widths: [8, 8, 8]}}", "--set", "data.limit_train=60", "--set", "data.limit_val=20",
         "--set", "train.epochs=1", "--set", "train.max_steps=2", "--set", "train.batch_size=30",
         "--set", "train.precision=fp32", "--set", "snapshot.epochs=[99]", "--out", "{x}/new_run"]
SSL_TRAIN = ["ssl", "pretrain", "-c", "p2_byol", "--set", "data.root={p2}", "--set", "device=cpu", "--out",
             "{x}/new_run"]
SEG_TRAIN = ["segment", "train", "-c", "p3_lite0", "--set", "data.root={p3}", "--set", "device=cpu", "--out",
             "{x}/new_run"]
TABLE = ["ssl", "table", "-c", "p2_finetune", "--settings", "C", "--out", "{x}/table"]
TABLE_SETS = ["model.name=resnet18", "data.image_size=32", "train.epochs=1", "device=cpu"]


@pytest.fixture(scope="module")
def world(synth_root, tmp_path_factory):
    """A copy of the P1 data, a finished tiny run, and the user's other files: a CSV, a photo, notes, a
    FIFO, a link to an input image, P3 tiles with and without ground truth, a table made earlier."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = tmp / "p1"
    shutil.copytree(synth_root / "p1_data", data)
    run = tmp / "run"
    cfg = small_classify_cfg(data, **TINY)
    Trainer(classify.ClassifyTask(cfg), cfg, run).fit()
    x = tmp / "x"
    x.mkdir()
    (x / "in.csv").write_text("id,filename,label\n0,0_450.png,None\n")
    shutil.copy(data / "val_50" / "0_450.png", x / "photo.png")
    (x / "notes.md").write_text("# my notes\n")
    os.mkfifo(x / "fifo")
    os.symlink(data / "val_50" / "0_450.png", x / "link.csv")
    p3 = synth_root / "p3_data" / "validation"
    for folder, names in (("seg", ["0013_sat.jpg"]), ("gt_masks", ["0013_mask.png"])):
        (x / folder).mkdir()
        for name in names:
            shutil.copy(p3 / name, x / folder / name)
    (x / "fifo_masks").mkdir()
    os.mkfifo(x / "fifo_masks" / "0013_mask.png")
    (x / "b1.pt").write_bytes(b"backbone one")  # never loaded: reuse is decided before any model is built
    (x / "b2.pt").write_bytes(b"backbone two")
    _table_made_earlier(run, x, synth_root / "p2_data")
    _users_files_of_round_4(x, data)
    return {"tmp": tmp, "dir": data, "run": run, "ck": run / "checkpoints" / "best.pt", "x": x,
            "p2": synth_root / "p2_data", "p3": synth_root / "p3_data"}


def _table_made_earlier(run, x, p2):
    """x/table/setting_C as `ssl table ... --ssl-backbone x/b1.pt` leaves it: its resolved config, the
    sha256 of b1.pt among its inputs (the tiny run's files stand in for the ResNet's)."""
    sets = [f"data.root={p2}", *TABLE_SETS]
    cfg = fill_model_defaults(transfer.finetune_config(config_mod.load_yaml("p2_finetune"), sets, "C", str(x / "b1.pt")))
    setting = x / "table" / "setting_C"
    shutil.copytree(run, setting, ignore=shutil.ignore_patterns(".lock"))
    (setting / "config.yaml").write_text(config_mod.dump(cfg))
    for name in ("last.pt", "best.pt"):
        state = torch.load(setting / "checkpoints" / name, weights_only=True)
        checkpoint.save(setting / "checkpoints" / name, {**state, "config": cfg})
    summary = (setting / "summary.json").read_text()
    sha = identity.weights_sha256(str(x / "b1.pt"))
    (setting / "summary.json").write_text(summary.replace('"weights_sha256": null', f'"weights_sha256": "{sha}"'))


def _users_files_of_round_4(x, data):
    """Ground truth whose names carry no label (mini/train.csv, Office-Home's), an earlier prediction edited by
    hand since, a link to ground truth, a folder with the user's own table.md, folders of the user's notes
    and hidden temporary files."""
    (x / "mini_train.csv").write_text("id,filename,label\n0,n0153282900001095.jpg,3\n1,n0153282900001096.jpg,3\n")
    (x / "office_gt.csv").write_text("filename,label\nCouch00015.jpg,Couch\n")
    (x / "edited.csv").write_text("filename,label\n0_450.png,7\n")  # dlcv wrote "...,3"; the user fixed a label
    (x / ".edited.csv.dlcv").write_text('{"written_by": "dlcv", "sha256": ["%s"]}\n' % ("0" * 64))
    os.symlink(data / "val_gt.csv", x / "gt_link.csv")
    (x / "mytable").mkdir()
    (x / "mytable" / "table.md").write_text("| my | own |\n")
    (x / "userdir" / "sub").mkdir(parents=True)
    (x / "userdir" / "notes.md").write_text("mine\n")
    (x / "userdir" / "sub" / ".draft.md.tmp").write_text("my editor's swap file\n")
    (x / "hidden").mkdir()
    (x / "hidden" / ".notes.tmp").write_text("mine too\n")
    (x / "page.html").write_text("<!DOCTYPE html><html><body>my page</body></html>\n")


def files_of(root):
    """Every regular file's bytes (logs and locks aside: they hold no data) and every other entry's kind."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if path.name in ("train.log", ".lock") or stat.S_ISDIR(mode):
            continue
        found[str(path.relative_to(root))] = path.read_bytes() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return found


def fill(argv, world):
    return [a.format(**world) for a in argv]


def script(name, *args, cwd=REPO, env=None):
    """An hw1 script run with this interpreter; `env` adds to this process's environment."""
    return subprocess.run(["bash", str(REPO / name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "DLCV_PYTHON": sys.executable, **(env or {})}, timeout=300)


def run_case(argv, world, capsys, env=None, monkeypatch=None):
    """(exit code, stdout, stderr) of an in-process command, or of an hw1 script when argv[0] is one."""
    if argv[0].endswith(".sh"):
        r = script(argv[0], *fill(argv[1:], world), env={"DLCV_P1_CKPT": str(world["ck"]),
                                                         "DLCV_P2_CKPT": str(world["ck"])})
        return r.returncode, r.stdout, r.stderr
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    code = main(fill(argv, world))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, expected, world):
    assert code == 2, err
    assert expected.format(**world) in err, err
    assert err.count("dlcv: error:") == 1 and "Traceback" not in err, err


# -- 1. an output is never an input, a run's file, ground truth or a device ----------------------------

OUTPUT_CASES = [
    ("P1 predictions over the ground truth", ["hw1_1.sh", "{dir}/val_50", "{dir}/val_gt.csv"],
     "OUT_CSV {dir}/val_gt.csv exists and dlcv did not write it (ground truth, or a file of yours?): it is never "
     "replaced"),
    ("P2 predictions over mini/train.csv (names without labels)", ["ssl", "predict", "--ckpt", "{ck}", "{x}/in.csv",
                                                                   "{dir}/val_50", "{x}/mini_train.csv"],
     "OUT_CSV {x}/mini_train.csv exists and dlcv did not write it"),
    ("P1 predictions over Office-Home names (Couch00015.jpg)", ["classify", "predict", "--ckpt", "{ck}",
                                                                "{dir}/val_50", "{x}/office_gt.csv"],
     "OUT_CSV {x}/office_gt.csv exists and dlcv did not write it"),
    ("predictions over an earlier one edited since", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50",
                                                      "{x}/edited.csv"],
     "OUT_CSV {x}/edited.csv exists and its content changed since dlcv wrote it: it is never replaced"),
    ("predictions through a link to ground truth", ["ssl", "predict", "--ckpt", "{ck}", "{x}/in.csv", "{dir}/val_50",
                                                    "{x}/gt_link.csv"],
     "OUT_CSV {x}/gt_link.csv exists and dlcv did not write it"),
    ("a run into a folder of the user's notes", TRAIN[:-1] + ["{x}/userdir"],
     "{x}/userdir holds files a dlcv run does not write (notes.md, sub); give a new or empty folder"),
    ("a run into a folder of hidden files", TRAIN[:-1] + ["{x}/hidden"],
     "{x}/hidden holds files a dlcv run does not write (.notes.tmp)"),
    ("a run into a finished run without --resume", TRAIN[:-1] + ["{run}"],
     "{run} already holds a run; continue it with --resume"),
    ("the report over the user's page", ["report", "{run}", "--out", "{x}/page.html"],
     "--out {x}/page.html exists and is not a dlcv report: it would be overwritten"),
    ("a table over the user's own table.md", ["ssl", "table", "-c", "p2_finetune", "--settings", "A", "--out",
                                              "{x}/mytable"],
     "--out {x}/mytable holds a table.md that `ssl table` did not write: it would be replaced"),
    ("a table into a folder of the user's notes", ["ssl", "table", "-c", "p2_finetune", "--settings", "A", "--out",
                                                   "{x}/userdir"],
     "--out {x}/userdir holds files `ssl table` does not write (notes.md, sub)"),
    ("P1 predictions over an input image", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50",
                                            "{dir}/val_50/0_450.png"],
     "OUT_CSV {dir}/val_50/0_450.png is an existing file inside the input folder {dir}/val_50"),
    ("P2 predictions over their own input CSV", ["ssl", "predict", "--ckpt", "{ck}", "{x}/in.csv", "{dir}/val_50",
                                                 "{x}/in.csv"],
     "OUT_CSV {x}/in.csv is an input of this command too: it would be overwritten"),
    ("masks into a folder of ground truth alone", ["segment", "predict", "--ckpt", "{ck}", "{x}/seg", "{x}/gt_masks"],
     "OUT_DIR {x}/gt_masks holds 0013_mask.png, which dlcv segment predict did not write (ground truth?)"),
    ("masks into their own image folder", ["segment", "predict", "--ckpt", "{ck}", "{x}/seg", "{x}/seg/../seg"],
     "OUT_DIR {x}/seg/../seg is an input of this command too"),
    ("a mask over a FIFO", ["segment", "predict", "--ckpt", "{ck}", "{x}/seg", "{x}/fifo_masks"],
     "OUT_DIR {x}/fifo_masks/0013_mask.png is a device, FIFO or socket"),
    ("predictions into a FIFO", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50", "{x}/fifo"],
     "OUT_CSV {x}/fifo is a device, FIFO or socket, not a regular file or folder"),
    ("predictions over a file of the checkpoint's run", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50",
                                                         "{run}/metrics.csv"],
     "OUT_CSV {run}/metrics.csv is an existing file inside the input folder {run}"),
    ("predictions over a photo", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50", "{x}/photo.png"],
     "OUT_CSV {x}/photo.png exists and dlcv did not write it"),
    ("predictions through a link to an input image", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50",
                                                      "{x}/link.csv"],
     "OUT_CSV {x}/link.csv (a link to {dir}/val_50/0_450.png) is an existing file inside the input folder"),
    ("export over its checkpoint", ["ssl", "export", "{ck}", "{ck}"], "backbone file OUT {ck} is an input of this command too"),
    ("embed figure over an input image", ["classify", "embed", "--ckpt", "{ck}", "{dir}/val_50", "--out",
                                          "{dir}/val_50/0_450.png"], "is an existing file inside the input folder"),
    ("a run into its own data", ["classify", "train", "-c", "p1_fast", "--set", "data.root={dir}", "--out", "{dir}"],
     "--out {dir} is an input of this command too"),
    ("a run into its training folder", ["classify", "train", "-c", "p1_fast", "--set", "data.root={dir}", "--out",
                                        "{dir}/train_50"], "--out {dir}/train_50 is an input of this command too"),
    ("the report's twin over the user's notes", ["report", "{run}", "--out", "{x}/notes.html"],
     "--out's Markdown twin {x}/notes.md exists and is not a dlcv report"),
    ("synthetic data into a FIFO", ["data", "synth", "{x}/fifo"], "data synth OUT_DIR {x}/fifo is a device, FIFO"),
]


@pytest.mark.parametrize("case,argv,expected", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_an_output_is_never_an_input_ground_truth_or_a_device(case, argv, expected, world, capsys):
    before = files_of(world["tmp"])
    code, _, err = run_case(argv, world, capsys)
    assert_one_line(code, err, expected, world)
    assert files_of(world["tmp"]) == before  # nothing touched, FIFOs still FIFOs


def test_earlier_predictions_are_replaced(world, tmp_path, capsys):
    """The rule's other side: what the command itself wrote before is its to replace."""
    out = tmp_path / "p.csv"
    for _ in range(2):
        assert main(["classify", "predict", "--ckpt", str(world["ck"]), str(world["dir"] / "val_50"), str(out)]) == 0
    write_mask(tmp_path / "0013_mask.png", np.zeros((4, 4), np.uint8))
    check_prediction_targets(tmp_path, [world["x"] / "seg" / "0013_sat.jpg"], "OUT_DIR")  # no error


def test_a_prediction_killed_while_written_stays_replaceable(tmp_path, monkeypatch):
    """Its record lists the new content before the rename: a kill between the two leaves the old content, still
    listed, so the next run replaces it; edited since, or without a record, it is the user's."""
    from dlcv import fileio
    from dlcv.data.labels import write_csv
    out = tmp_path / "p.csv"
    write_csv(out, ["filename", "label"], [("a.png", 1)], predictions=True)

    def killed_at_the_csv(src, dst, real=os.replace):  # the record's own rename goes through
        if Path(dst) == out:
            raise KeyboardInterrupt
        real(src, dst)
    monkeypatch.setattr(fileio.os, "replace", killed_at_the_csv)
    with pytest.raises(KeyboardInterrupt):
        write_csv(out, ["filename", "label"], [("a.png", 2)], predictions=True)
    monkeypatch.undo()
    assert out.read_text() == "filename,label\na.png,1\n" and len(fileio._recorded(out)) == 2
    fileio.check_replaceable(out, "OUT_CSV")
    write_csv(out, ["filename", "label"], [("a.png", 2)], predictions=True)
    assert len(fileio._recorded(out)) == 2  # the content it replaced and its own: the record never grows
    out.write_text("filename,label\na.png,3\n")
    with pytest.raises(DlcvError, match="its content changed since dlcv wrote it"):
        fileio.check_replaceable(out, "OUT_CSV")


# -- 2. no code from the working folder ------------------------------------------------------------------

FOREIGN = "import pathlib; pathlib.Path('FOREIGN_RAN').touch(); print('foreign code')\n"
START_AS_INSTALLED = ("import sys; del sys.path[0]; sys.argv[0] = 'dlcv'; from dlcv.cli import main; "
                      "sys.exit(main())")  # what the `dlcv` console script does: its folder, not the cwd, on sys.path


@pytest.mark.parametrize("case", ["dlcv models", "hw1_1.sh"])
def test_a_dlcv_py_in_the_working_folder_never_runs(case, world, tmp_path):
    (tmp_path / "dlcv.py").write_text(FOREIGN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DLCV_MALLOC"}
    env.update(PYTHONPATH=str(REPO / "src"), DLCV_PYTHON=sys.executable, DLCV_P1_CKPT=str(world["ck"]))
    command = [sys.executable, "-c", START_AS_INSTALLED, "models"] if case == "dlcv models" else \
        ["bash", str(REPO / "hw1_1.sh"), str(world["dir"] / "val_50"), "out.csv"]
    # no MALLOC_* set: `dlcv` restarts itself with the malloc settings, as a user's command does
    r = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    if case == "dlcv models":
        assert "cifar_convnet" in r.stdout.split()
    else:
        assert (tmp_path / "out.csv").read_text().startswith("filename,label\n0_450.png,")
    assert "foreign code" not in r.stdout and not (tmp_path / "FOREIGN_RAN").exists()


# -- 3. reuse and resume only what defines the same result -----------------------------------------------

REUSE_CASES = [
    ("table reuse with another backbone", [*TABLE, "--ssl-backbone", "{x}/b2.pt"],
     "{x}/table/setting_C holds a run made with other settings (model.weights '{x}/b1.pt' -> '{x}/b2.pt'); "
     "reusing it would mislabel its result; to start afresh, delete {x}/table/setting_C"),
    ("table reuse after its backbone file changed", ["ssl", "table", "-c", "p2_finetune", "--settings", "C", "--out",
                                                     "{x}/table_of_old_b1", "--ssl-backbone", "{x}/b1.pt"],
     "{x}/table_of_old_b1/setting_C was trained from another {x}/b1.pt (its sha256 changed since)"),
    ("table reuse with another learning rate", [*TABLE, "--ssl-backbone", "{x}/b1.pt", "--set", "optim.lr=0.5"],
     "holds a run made with other settings (optim.lr 0.0005 -> 0.5)"),
    ("table reuse with another model", [*TABLE, "--ssl-backbone", "{x}/b1.pt", "--set", "model.name=resnet50"],
     "holds a run made with other settings (model.name 'resnet18' -> 'resnet50'"),
    ("resume of setting C as setting E", ["ssl", "finetune", "--out", "{x}/table/setting_C", "--resume", "--setting", "E"],
     "--resume: {x}/table/setting_C was made with other settings (model.options.freeze_backbone False -> True); "
     "a resumed run keeps them"),
    ("resume with another batch size", ["classify", "train", "--out", "{run}", "--resume", "--set", "train.batch_size=32"],
     "--resume: {run} was made with other settings (train.batch_size 30 -> 32)"),
    ("resume on other data", ["classify", "train", "--out", "{run}", "--resume", "--set", "data.root={x}/other_p1",
                              "--set", "train.epochs=2", "--set", "train.max_steps=4"],
     "{run} was made from other inputs (classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] -> ['0', '1', '2']"),
    # a refused command changes no state: config.yaml, metrics.csv and the run's stale temporaries stay
    ("resume with other parameter groups (optim.lr_mult)", ["classify", "train", "--out", "{run}", "--resume", "--set",
                                                            "optim.lr_mult={{stem: 0.5}}", "--set", "train.epochs=2",
                                                            "--set", "train.max_steps=4"],
     "{run}/checkpoints/last.pt: its optimizer state does not fit this config's parameter groups"),
    ("resume of a finished run whose last.pt is gone", ["classify", "train", "--out", "{x}/no_last", "--resume"],
     "--resume: {x}/no_last/checkpoints/last.pt is missing, but the run saved epochs (metrics.csv, summary.json): "
     "starting it over would replace them"),
    ("a table's refusal of setting C before setting A trains", ["ssl", "table", "-c", "p2_finetune", "--settings",
                                                                 "AC", "--out", "{x}/table", "--ssl-backbone",
                                                                 "{x}/b2.pt"],
     "{x}/table/setting_C holds a run made with other settings (model.weights '{x}/b1.pt' -> '{x}/b2.pt')"),
    ("table rerun with epochs=auto over fixed epochs", [*TABLE, "--ssl-backbone", "{x}/b1.pt", "--set",
                                                        "train.epochs=auto", "--set", "train.max_seconds=60"],
     "{x}/table/setting_C holds a run made with other settings (train.epochs 1 -> 'auto'"),
]


def table_sets(world):
    return [a for s in [f"data.root={world['p2']}", *TABLE_SETS] for a in ("--set", s)]


@pytest.fixture(scope="module")
def reuse_world(world):
    """A table made from an earlier content of b1.pt (its recorded sha256 is another), and other P1 data
    with 3 classes."""
    x = world["x"]
    shutil.copytree(x / "table", x / "table_of_old_b1")
    summary = x / "table_of_old_b1" / "setting_C" / "summary.json"
    summary.write_text(summary.read_text().replace(identity.weights_sha256(str(x / "b1.pt")), "0" * 64))
    other = x / "other_p1"
    for folder in ("train_50", "val_50"):
        (other / folder).mkdir(parents=True)
        for f in sorted((world["dir"] / folder).glob("[012]_*.png")):
            os.link(f, other / folder / f.name)
    shutil.copytree(world["run"], x / "no_last", ignore=shutil.ignore_patterns(".lock", "last.pt"))
    (world["run"] / "checkpoints" / ".last.pt.k1ll3d.pt.tmp").write_bytes(b"left by a killed write")
    return world


@pytest.mark.parametrize("case,argv,expected", REUSE_CASES, ids=[c[0] for c in REUSE_CASES])
def test_a_run_is_reused_or_resumed_only_with_what_made_it(case, argv, expected, reuse_world, capsys):
    world = reuse_world
    if argv[:2] == ["ssl", "table"]:  # the table's settings, then the case's own
        argv = [*argv[:len(TABLE)], *table_sets(world), *argv[len(TABLE):]]
    before = files_of(world["tmp"])
    code, _, err = run_case(argv, world, capsys)
    assert_one_line(code, err, expected, world)
    assert files_of(world["tmp"]) == before


def test_a_matching_run_is_reused_and_a_resume_applies_its_changes(world, tmp_path, capsys, caplog):
    argv = [*fill(TABLE, world), *table_sets(world), "--ssl-backbone", str(world["x"] / "b1.pt")]
    argv[argv.index("--out") + 1] = str(tmp_path / "table")
    shutil.copytree(world["x"] / "table", tmp_path / "table")
    assert main(argv) == 0 and "setting_C is finished; reusing it" in caplog.text
    run = tmp_path / "run"
    shutil.copytree(world["run"], run, ignore=shutil.ignore_patterns(".lock"))
    assert main(["classify", "train", "--out", str(run), "--resume", "--set", "train.epochs=2",
                 "--set", "train.max_steps=4"]) == 0
    assert "with changed settings: train.epochs 1 -> 2; train.max_steps 2 -> 4" in caplog.text
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 4


# -- 4. values checked where they are read ---------------------------------------------------------------

BOMB = "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(6))

VALUE_CASES = [
    ("lr inf", TRAIN + ["--set", "optim.lr=.inf"], None, "config key 'optim.lr': invalid value inf; expected a finite number"),
    ("lr beyond float32", TRAIN + ["--set", "optim.lr=1e39"], None,
     "config key 'optim.lr': invalid value 1e+39; expected a finite number (within float32's range, 3.4e38)"),
    ("weight decay 1e30", TRAIN + ["--set", "optim.weight_decay=1e30"], None,
     "config key 'optim.weight_decay': invalid value 1e+30 with optim.lr 0.1; expected optim.lr x optim.weight_decay < 1"),
    ("weights overflowing in the epoch's last step", TRAIN + ["--set", "optim.lr=3e38", "--set", "optim.weight_decay=0",
                                                              "--set", "sched.warmup_epochs=0", "--set",
                                                              "train.max_steps=1"], None,
     "weights became inf/nan in epoch 1 (by step 1), "),
    ("betas 2, 3", TRAIN + ["--set", "optim.betas=[2,3]"], None,
     "config key 'optim.betas': invalid value [2, 3]; expected [beta1, beta2], each in [0, 1)"),
    ("widths 0", TRAIN + ["--set", "model.options={{widths: [0, 0, 0]}}"], None,
     "model 'cifar_convnet' option 'widths': invalid value [0, 0, 0]; expected a list of whole numbers in 1..4096"),
    ("image size 100000", TRAIN + ["--set", "data.image_size=100000"], None,
     "config key 'data.image_size': invalid value 100000; expected a whole number in 1..2048"),
    ("seed -1", TRAIN + ["--set", "train.seed=-1"], None, "config key 'train.seed': invalid value -1"),
    ("padding 1000", TRAIN + ["--set", "augment.crop_padding=1000"], None,
     "config key 'augment.crop_padding': invalid value 1000; expected less than the model input side, 32 px"),
    ("YAML alias bomb", TRAIN[:3] + ["{x}/bomb.yaml"] + TRAIN[4:], None,
     "bomb.yaml: not valid YAML: more than 100,000 values once its aliases (*name) are expanded"),
    ("WORLD_SIZE abc", TRAIN, {"WORLD_SIZE": "abc"}, "environment variable WORLD_SIZE='abc': expected a whole number >= 1"),
    ("RANK abc", TRAIN, {"RANK": "abc"}, "environment variable RANK='abc': expected a whole number >= 0"),
    ("RANK beyond WORLD_SIZE", TRAIN, {"RANK": "3"}, "environment variable RANK=3 must be below WORLD_SIZE=1"),
    ("checkpoint without classes", ["classify", "predict", "--ckpt", "{x}/no_classes.pt", "{dir}/val_50", "{x}/o.csv"],
     None, "no_classes.pt: its class list [] is not a list of distinct class names (a damaged or hand-edited checkpoint)"),
    ("checkpoint of size 0", ["classify", "predict", "--ckpt", "{x}/size_0.pt", "{dir}/val_50", "{x}/o.csv"], None,
     "size_0.pt: preprocess image_size 0 is not a size in 1..2048 px"),
    # round 4: every key of every task has a range, checked before any work
    ("negative final lr", TRAIN + ["--set", "sched.final_lr_ratio=-5"], None,
     "config key 'sched.final_lr_ratio': invalid value -5; expected a fraction of optim.lr in [0, 1]"),
    ("milestones [a]", TRAIN + ["--set", "sched.milestones=[a]"], None,
     "config key 'sched.milestones': invalid value ['a']; expected a list of epochs > 0"),
    ("cutmix alpha 1e-50", TRAIN + ["--set", "mix.cutmix_alpha=1e-50"], None,
     "config key 'mix.cutmix_alpha': invalid value 1e-50; expected 0 or a number of at least 1.2e-38 in size"),
    ("eval batch 10**20", TRAIN + ["--set", f"train.eval_batch_size={10 ** 20}"], None,
     f"config key 'train.eval_batch_size': invalid value {10 ** 20}; expected a whole number within 64 bits"),
    ("perplexity 0", TRAIN + ["--set", "snapshot.tsne_perplexity=0"], None,
     "config key 'snapshot.tsne_perplexity': invalid value 0; expected a number in (0, 1000]"),
    ("val fraction 1", TRAIN + ["--set", "data.val_dir=null", "--set", "data.val_fraction=1"], None,
     "config key 'data.val_fraction': invalid value 1; expected a fraction in (0, 1)"),
    ("colour jitter of 3 values", TRAIN + ["--set", "augment.color_jitter=[0.4, 0.4, 0.4]"], None,
     "config key 'augment.color_jitter': invalid value [0.4, 0.4, 0.4]; expected [brightness, contrast, "
     "saturation, hue]"),
    ("lr_mult not a mapping", TRAIN + ["--set", "optim.lr_mult=3"], None,
     "config key 'optim.lr_mult': expected a mapping ({{}} for none), got 3"),
    ("model options null", TRAIN + ["--set", "model.options=null"], None,
     "config key 'model.options': expected a mapping ({{}} for none), got None"),
    ("lr 1e-40 (0 in float32)", TRAIN + ["--set", "optim.lr=1e-40"], None,
     "config key 'optim.lr': invalid value 1e-40; expected 0 or a number of at least 1.2e-38"),
    ("lite0 at 16 px", TRAIN + ["--set", "model.name=efficientnet_lite0", "--set", "model.options={{}}", "--set",
                                "data.image_size=16", "--set", "augment.crop_padding=0"], None,
     "config key 'data.image_size': invalid value 16; model efficientnet_lite0 needs inputs of at least 32 px"),
    ("k-NN k 0", SSL_TRAIN + ["--set", "knn.k=0"], None,
     "config key 'knn.k': invalid value 0; expected a whole number >= 1"),
    ("k-NN temperature 0", SSL_TRAIN + ["--set", "knn.temperature=0"], None,
     "config key 'knn.temperature': invalid value 0; expected a number > 0"),
    ("projector of 0", SSL_TRAIN + ["--set", "byol.projector_dim=0"], None,
     "config key 'byol.projector_dim': invalid value 0; expected a whole number in 1..16384"),
    ("crop ratio [0, 0]", SSL_TRAIN + ["--set", "views.crop_ratio=[0,0]"], None,
     "config key 'views.crop_ratio': invalid value [0, 0]; expected [min, max] with 0 < min <= max"),
    ("hue 0.7", SSL_TRAIN + ["--set", "views.hue=0.7"], None, "config key 'views.hue': invalid value 0.7"),
    ("blur of one view", SSL_TRAIN + ["--set", "views.blur=[1]"], None,
     "config key 'views.blur': invalid value [1]; expected [p1, p2]"),
    ("momentum 2", SSL_TRAIN + ["--set", "byol.base_momentum=2"], None,
     "config key 'byol.base_momentum': invalid value 2; expected a number in [0, 1]"),
    ("jitter order sorted", SSL_TRAIN + ["--set", "views.jitter_order=sorted"], None,
     "config key 'views.jitter_order': invalid value 'sorted'; valid choices: random, fixed"),
    ("infer scale 0.001", SEG_TRAIN + ["--set", "data.infer_scale=0.001"], None,
     "config key 'data.infer_scale': invalid value 0.001; expected a factor in [0.05, 4]"),
    ("aux weight -1", SEG_TRAIN + ["--set", "loss.aux_weight=-1"], None,
     "config key 'loss.aux_weight': invalid value -1; expected a number >= 0"),
    ("snapshot images as numbers", SEG_TRAIN + ["--set", "snapshot.images=[13, 62]"], None,
     "config key 'snapshot.images': invalid value [13, 62]; expected a list of validation tile ids"),
    ("WORLD_SIZE 2 without RANK", TRAIN, {"WORLD_SIZE": "2"},
     "environment variable WORLD_SIZE=2 is set without RANK, MASTER_ADDR, MASTER_PORT: start a run of several "
     "processes with torchrun"),
]


@pytest.fixture(scope="module")
def value_world(world):
    x = world["x"]
    (x / "bomb.yaml").write_text("task: classify\na: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB + "model: {options: *g}\n")
    state = torch.load(world["ck"], weights_only=True)
    torch.save({**state, "classes": []}, x / "no_classes.pt")
    torch.save({**state, "preprocess": {**state["preprocess"], "image_size": 0}}, x / "size_0.pt")
    return world


@pytest.mark.parametrize("case,argv,env,expected", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_values_are_checked_where_read_and_a_failed_start_leaves_no_folder(case, argv, env, expected, value_world,
                                                                           capsys, monkeypatch):
    world = value_world
    before = files_of(world["tmp"])
    code, _, err = run_case(argv, world, capsys, env, monkeypatch)
    assert_one_line(code, err, expected, world)
    assert not (world["x"] / "new_run").exists() and files_of(world["tmp"]) == before


def test_a_tile_without_any_labelled_pixel_trains_with_a_warning(tmp_path, caplog):
    """Pure red everywhere: nothing to learn, a warning naming it, and a loss of 0 for it (never nan)."""
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        for i in range(2):
            Image.fromarray(np.random.RandomState(i).randint(0, 255, (32, 32, 3), np.uint8)).save(
                tmp_path / split / f"{i:04d}_sat.jpg")
            mask = np.zeros((32, 32, 3), np.uint8)
            mask[..., 0 if split == "train" and i == 0 else 1] = 255  # red, or yellow (agriculture)
            Image.fromarray(mask).save(tmp_path / split / f"{i:04d}_mask.png")
    assert main(["segment", "train", "-c", "p3_lite0", "--set", f"data.root={tmp_path}", "--set", "model.name=fcn_small",
                 "--set", "model.options={width: 8}", "--set", "model.weights=null", "--set", "device=cpu",
                 "--set", "train.epochs=1", "--set", "train.batch_size=1", "--set", "train.precision=fp32",
                 "--set", "data.crop_size=null", "--out", str(tmp_path / "run")]) == 0
    assert f"{tmp_path / 'train'}: 1 training tile(s) pure red everywhere, e.g. 0000" in caplog.text
    assert np.isfinite(float((tmp_path / "run" / "metrics.csv").read_text().splitlines()[1].split(",")[1]))


# -- 5. no quiet surprises -------------------------------------------------------------------------------

SURPRISE_CASES = [  # (case, argv, exit code, where, expected)
    ("labels 0.0 and 0 are one class", ["eval", "acc", "{x}/gt.csv", "{x}/pred_float.csv"], 0, "out",
     "accuracy: 1.0000 (2/2)"),
    ("duplicated ground-truth rows", ["eval", "acc", "{x}/gt_twice.csv", "{x}/pred_float.csv"], 0, "log",
     "gt_twice.csv, line 3: 0_450.png is listed again with the same label"),
    ("a stray IMG_0001.png", TRAIN[:-1] + ["{x}/stray_run", "--set", "data.root={x}/stray_p1", "--set",
                                          "train.max_steps=1"], 0, "log",
     "train_50: 1 file(s) whose label is not a number while 400 are, e.g. IMG_0001.png (class 'IMG'): stray files?"),
    ("miou of renamed masks", ["segment", "miou", "{x}/gt_masks", "{x}/renamed_masks"], 0, "log",
     "pairs masks in sorted order, as the course's evaluator: 1 pair(s) have different names, first 0013_mask.png "
     "with 0014_mask.png"),
    ("report --out x.md", ["report", "{run}", "--out", "{x}/r.md"], 2, "err",
     "--out {x}/r.md: the report is an .html file (its Markdown twin gets the same name with .md)"),
    ("demo into the user's folder", ["demo", "--out", "{x}/gt_masks_and_notes"], 2, "err",
     "--out {x}/gt_masks_and_notes holds files the demo did not write (0013_mask.png, notes.txt); give a new or "
     "empty folder"),
    ("hw1_1.sh -imgs out.csv", ["hw1_1.sh", "-imgs", "{x}/o.csv"], 2, "err", "image folder not found: -imgs"),
    ("a classify checkpoint to segment predict", ["segment", "predict", "--ckpt", "{ck}", "{x}/seg", "{x}/masks"], 2,
     "err", "{ck} is a checkpoint of task 'classify', not 'segment' (a model for `dlcv classify predict`)"),
]


@pytest.fixture(scope="module")
def surprise_world(world):
    x = world["x"]
    (x / "gt.csv").write_text("filename,label\n0_450.png,0\n1_450.png,1\n")
    (x / "gt_twice.csv").write_text("filename,label\n0_450.png,0\n0_450.png,0\n1_450.png,1\n")
    (x / "pred_float.csv").write_text("filename,label\n0_450.png,0.0\n1_450.png,1.0\n")
    stray = x / "stray_p1"
    shutil.copytree(world["dir"], stray, copy_function=os.link)
    shutil.copy(world["dir"] / "train_50" / "0_0.png", stray / "train_50" / "IMG_0001.png")
    (x / "renamed_masks").mkdir()
    shutil.copy(x / "gt_masks" / "0013_mask.png", x / "renamed_masks" / "0014_mask.png")
    (x / "gt_masks_and_notes").mkdir()
    shutil.copy(x / "gt_masks" / "0013_mask.png", x / "gt_masks_and_notes")
    (x / "gt_masks_and_notes" / "notes.txt").write_text("mine\n")
    return world


@pytest.mark.parametrize("case,argv,code,where,expected", SURPRISE_CASES, ids=[c[0] for c in SURPRISE_CASES])
def test_surprises_get_a_warning_or_a_clear_line(case, argv, code, where, expected, surprise_world, capsys, caplog):
    world = surprise_world
    before = {k: v for k, v in files_of(world["tmp"]).items() if not k.startswith("x/stray_run")}
    got, out, err = run_case(argv, world, capsys)
    if code == 2:
        assert_one_line(got, err, expected, world)
    else:
        assert got == 0, err
        assert expected.format(**world) in {"out": out, "log": caplog.text}[where]
    after = {k: v for k, v in files_of(world["tmp"]).items() if not k.startswith("x/stray_run")}
    assert after == before


def test_a_closed_pipe_ends_the_listing_quietly():
    """`dlcv models | head -0`: the reader is gone before the list is written."""
    proc = subprocess.Popen([sys.executable, "-m", "dlcv", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env={**os.environ, "DLCV_MALLOC": "default"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err


# -- 6. round 4 (issue 48): odd inputs, crashes and hangs, silently wrong results --------------------------

ODD_CASES = [
    ("report of a run whose config.yaml is empty", ["report", "{x}/bad_runs/empty", "--out", "{x}/r.html"],
     "{x}/bad_runs/empty/config.yaml: not a dlcv run config (it needs task, model.name and data"),
    ("report of a task dlcv does not have", ["report", "{x}/bad_runs/depth", "--out", "{x}/r.html"],
     "{x}/bad_runs/depth/config.yaml: task 'depth' is not a task of this dlcv (classify, ssl, segment)"),
    ("report of a summary whose final is a list", ["report", "{x}/bad_runs/final_list", "--out", "{x}/r.html"],
     "{x}/bad_runs/final_list/summary.json: not a dlcv summary (final is a list"),
    ("report of a summary whose best is text", ["report", "{x}/bad_runs/best_text", "--out", "{x}/r.html"],
     "{x}/bad_runs/best_text/summary.json: not a dlcv summary (best.val_acc is a str"),
    ("report of a table.csv without its columns", ["report", "{x}/bad_table", "--out", "{x}/r.html"],
     "{x}/bad_table/table.csv: not a dlcv table (every row needs setting, pre-training, fine-tuning)"),
    ("predict with NaN weights", ["classify", "predict", "--ckpt", "{x}/nan.pt", "{dir}/val_50", "{x}/o.csv"],
     "{x}/nan.pt: its weights hold inf or nan (stem.0.weight first; a damaged or hand-edited checkpoint)"),
    ("predict a folder with a FIFO named like an image", ["classify", "predict", "--ckpt", "{ck}", "{x}/fifo_imgs",
                                                          "{x}/o.csv"],
     "image {x}/fifo_imgs/9_999.png is a device, FIFO or socket, not a file"),
    ("masks of a folder with a FIFO tile", ["segment", "predict", "--ckpt", "{ck}", "{x}/fifo_tiles", "{x}/masks"],
     "image {x}/fifo_tiles/0014_sat.jpg is a device, FIFO or socket, not a file"),
    ("miou of a FIFO mask", ["segment", "miou", "{x}/fifo_masks", "{x}/gt_masks"],
     "mask {x}/fifo_masks/0013_mask.png is a device, FIFO or socket, not a file"),
    ("training on a folder with a FIFO image", TRAIN + ["--set", "data.root={x}/fifo_p1"],
     "image {x}/fifo_p1/train_50/9_999.png is a device, FIFO or socket, not a file"),
    ("training on one class", TRAIN + ["--set", "data.root={x}/one_class"],
     "{x}/one_class/train_50: the training set has one class ('0'); a classifier needs at least 2"),
    ("resume of a run whose train.log is a FIFO", ["classify", "train", "--out", "{x}/fifo_log_run", "--resume"],
     "run file {x}/fifo_log_run/train.log is a device, FIFO or socket"),
    ("predictions whose authorship record is a FIFO", ["classify", "predict", "--ckpt", "{ck}", "{dir}/val_50",
                                                       "{x}/fifo_record.csv"],
     "OUT_CSV {x}/fifo_record.csv exists and dlcv did not write it"),
]


@pytest.fixture(scope="module")
def odd_world(world):
    """Damaged run folders and checkpoints, FIFOs named like images, masks and run files, P1 data of one class."""
    x, run = world["x"], world["run"]
    edits = {"empty": ("config.yaml", lambda text: ""),
             "depth": ("config.yaml", lambda text: text.replace("task: classify", "task: depth")),
             "final_list": ("summary.json", lambda text: json.dumps({**json.loads(text), "final": [1, 2]})),
             "best_text": ("summary.json", lambda text: json.dumps({**json.loads(text), "best": {"val_acc": "high"}}))}
    for name, (file, edit) in edits.items():
        shutil.copytree(run, x / "bad_runs" / name, ignore=shutil.ignore_patterns(".lock", ".*.tmp"))
        (x / "bad_runs" / name / file).write_text(edit((run / file).read_text()))
    shutil.copytree(x / "table", x / "bad_table", ignore=shutil.ignore_patterns(".lock"))
    (x / "bad_table" / "table.csv").write_text("run,val_acc\nsetting_C,0.5\n")
    state = torch.load(world["ck"], weights_only=True)
    state["model"] = {k: v * float("nan") if k == "stem.0.weight" else v for k, v in state["model"].items()}
    torch.save(state, x / "nan.pt")
    (x / "fifo_imgs").mkdir()
    shutil.copy(world["dir"] / "val_50" / "0_450.png", x / "fifo_imgs")
    os.mkfifo(x / "fifo_imgs" / "9_999.png")
    (x / "fifo_tiles").mkdir()
    shutil.copy(x / "seg" / "0013_sat.jpg", x / "fifo_tiles")
    os.mkfifo(x / "fifo_tiles" / "0014_sat.jpg")
    for name, pattern in (("fifo_p1", "*"), ("one_class", "0_*")):
        for folder in ("train_50", "val_50"):
            (x / name / folder).mkdir(parents=True)
            for f in sorted((world["dir"] / folder).glob(pattern)):
                os.link(f, x / name / folder / f.name)
    os.mkfifo(x / "fifo_p1" / "train_50" / "9_999.png")
    shutil.copytree(run, x / "fifo_log_run", ignore=shutil.ignore_patterns(".lock", "train.log", ".*.tmp"))
    os.mkfifo(x / "fifo_log_run" / "train.log")
    (x / "fifo_record.csv").write_text("filename,label\n0_450.png,0\n")
    os.mkfifo(x / ".fifo_record.csv.dlcv")
    return world


@pytest.mark.parametrize("case,argv,expected", ODD_CASES, ids=[c[0] for c in ODD_CASES])
def test_odd_inputs_get_one_line_and_never_block(case, argv, expected, odd_world, capsys):
    world = odd_world
    before = files_of(world["tmp"])
    code, _, err = run_case(argv, world, capsys)
    assert_one_line(code, err, expected, world)
    assert not (world["x"] / "new_run").exists() and files_of(world["tmp"]) == before


def schema_leaves():
    """(task, dotted key, default) of every key of every task's schema (free-form mappings as one key)."""
    from dlcv.task_registry import TASKS
    for entry in TASKS:
        schema = entry.load().SCHEMA
        full = config_mod.deep_merge(config_mod.COMMON_DEFAULTS, schema.defaults)
        yield from ((schema, key, value) for key, value in _leaves(full))


def _leaves(node, prefix=""):
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and dotted not in config_mod.FREE_FORM:
            yield from _leaves(value, dotted)
        else:
            yield dotted, value


def test_every_config_key_has_a_range_a_choice_or_is_a_name():
    """The class behind knn.k=0, sched.final_lr_ratio=-5, views.crop_ratio=[0, 0]: a key that holds a number or a
    list has a range (config.COMMON_RANGES or the task's), a choice key its choices; only names (paths, the
    task) and switches (true / false) go without. The free-form mappings are checked where they are read."""
    unchecked = []
    for schema, key, default in schema_leaves():
        nullable = {**config_mod.COMMON_NULLABLE_TYPES, **schema.types}.get(key)
        kind = type(default) if default is not None else nullable
        named = kind in (str, bool) or key in config_mod.FREE_FORM
        if not (named or key in config_mod.COMMON_RANGES or key in schema.ranges or key in schema.choices()
                or key in config_mod.COMMON_CHOICES):
            unchecked.append(f"{schema.task}: {key}")
    assert unchecked == []


FLOAT_KEYS = sorted({(schema.task, key) for schema, key, default in schema_leaves()
                     if isinstance(default, float) or {**config_mod.COMMON_NULLABLE_TYPES, **schema.types}.get(key)
                     in (float, list[float]) or isinstance(default, list) and default
                     and all(isinstance(v, float) for v in default)})
# whole numbers in range for each of them (1 for the others); train.ema_decay and data.val_fraction have none
WHOLE = {"data.mean": [0, 0, 1], "data.std": [1, 1, 1], "optim.betas": [0, 0], "augment.color_jitter": [0, 0, 0, 0],
         "augment.resized_crop_scale": [1, 1], "augment.scale": [1, 1], "views.crop_scale": [1, 1],
         "views.crop_ratio": [1, 2], "views.blur": [1, 0], "views.blur_sigma": [1, 2], "views.solarize": [0, 1],
         "tta.scales": [1, 2], "optim.momentum": 0, "loss.label_smoothing": 0, "views.hue": 0}
FLOAT_KEYS = [(task, key) for task, key in FLOAT_KEYS if key not in ("train.ema_decay", "data.val_fraction")]


@pytest.mark.parametrize("task,key", FLOAT_KEYS, ids=[f"{t}:{k}" for t, k in FLOAT_KEYS])
def test_whole_numbers_of_float_keys_reach_torch_as_floats(task, key):
    """mix.cutmix_alpha=1 (as docs/recipes.md writes it) was an int, from which torch draws no Beta sample."""
    from dlcv import task_registry
    value = WHOLE.get(key, 1)
    cfg = task_registry.task(task).load().SCHEMA.resolve({}, [f"{key}={value}", "data.root=x"])
    got = config_mod.get(cfg, key)
    assert all(type(v) is float for v in (got if isinstance(got, list) else [got])), got
    assert got == value


def test_cutmix_alpha_1_trains_in_an_existing_empty_folder(odd_world, tmp_path, capsys, caplog):
    """An existing empty folder is where a timm or Lightning user starts a run; a failed start there leaves it
    empty, as found. Three validation images are too few for a t-SNE (it needs more than 3 x perplexity 2)."""
    world = odd_world
    out = tmp_path / "empty"
    out.mkdir()
    argv = fill(TRAIN[:-1], world) + [str(out)]
    assert main([*argv, "--set", "data.root=" + str(world["x"] / "one_class")]) == 2
    assert out.is_dir() and not any(out.iterdir())
    assert main([*argv, "--set", "mix.cutmix_alpha=1", "--set", "data.limit_val=3", "--set", "snapshot.epochs=[1]"]) \
        == 0, capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").is_file() and not list((out / "figures").glob("tsne_*"))
    assert "3 validation image(s): too few for the PCA / t-SNE figures (at least 5)" in caplog.text


def test_copies_of_one_image_embed_at_one_point(world, tmp_path, capsys, caplog):
    """scikit-learn's t-SNE crashed the process (exit 139) on equal features: a run whose val images are all one
    picture never finished, and every --resume crashed again."""
    from dlcv.viz import figures
    for method in ("pca", "tsne"):
        assert not figures.embed_2d(np.ones((20, 8), np.float32), method).any()
    data = tmp_path / "copies"
    shutil.copytree(world["dir"] / "train_50", data / "train_50")
    (data / "val_50").mkdir()
    for label in range(10):
        shutil.copy(world["dir"] / "val_50" / "0_450.png", data / "val_50" / f"{label}_9.png")
    argv = fill(TRAIN[:-1], world) + [str(tmp_path / "run"), "--set", f"data.root={data}", "--set",
                                      "snapshot.epochs=[1]"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "figures" / "tsne_epoch_001.png").is_file()
    assert "all 10 feature vectors are equal: the t-SNE picture is a single point" in caplog.text
    assert main(["classify", "embed", "--ckpt", str(world["ck"]), str(data / "val_50"), "--method", "tsne",
                 "--out", str(tmp_path / "embed.png")]) == 0
    assert (tmp_path / "embed.png").is_file()


def test_lite_segmenters_take_tiles_under_their_stride():
    """EfficientNet-Lite0's convolutions were padded for one input side: 16x16 tiles and 3x2000 strips failed
    (kernel larger than its input); data.infer_scale and the test-time scales shrink a strip to no pixel."""
    from dlcv.engine.precision import Numerics
    from dlcv.inference.segment import Segmenter
    from dlcv.models import create_model
    lite0 = create_model("lite0_deeplab", num_classes=7).eval()
    with torch.no_grad():
        for shape in ((16, 16), (3, 2000), (1, 1)):
            assert lite0(torch.rand(1, 3, *shape))["out"].shape == (1, 7, *shape)
    small = create_model("fcn_small", num_classes=7, width=4).eval()
    meta = {"mean": [0.5] * 3, "std": [0.5] * 3, "tta": {"flip": True, "rotate90": False, "scales": [0.5, 1.0]},
            "infer_scale": 0.25}
    segmenter = Segmenter(small, meta, Numerics("fp32", False), 8, torch.device("cpu"))
    assert segmenter.masks(torch.zeros(2, 3, 3, 40, dtype=torch.uint8)).shape == (2, 3, 40)


def test_predict_batches_of_large_tiles_are_bounded_by_pixels(monkeypatch):
    """8 tiles of 1024 px in a batch of 8 took 4.2 GB: a batch counts tiles of 512 px, so it holds 2 of them."""
    from dlcv.engine.precision import Numerics
    from dlcv.inference import segment as inference
    model = torch.nn.Conv2d(3, 7, 1)
    seen = []
    segmenter = inference.Segmenter(lambda x: seen.append(len(x)) or {"out": model(x)},
                                    {"mean": [0.5] * 3, "std": [0.5] * 3}, Numerics("fp32", False), 8,
                                    torch.device("cpu"))
    assert [segmenter.tiles_per_pass(s, s) for s in (256, 512, 1024)] == [8, 8, 2]
    assert segmenter.masks(torch.zeros(5, 3, 1024, 1000, dtype=torch.uint8)).shape == (5, 1024, 1000)
    assert seen == [2, 2, 1]
    seen.clear()
    segmenter.logits(torch.zeros(8, 3, 512, 512, dtype=torch.uint8))  # the course's tiles: as validated
    assert seen == [8]


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line(tmp_path):
    """torch.save reports a failed write as a RuntimeError; a file-size limit stands in for the full disk."""
    code = ("import resource, signal, torch\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "from dlcv.engine import checkpoint\n"
            "from dlcv.errors import DlcvError\n"
            "try:\n"
            f"    checkpoint.save({str(tmp_path / 'last.pt')!r}, {{'model': {{'w': torch.zeros(100000)}}}})\n"
            "except DlcvError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == f"cannot write {tmp_path / 'last.pt'}: the write failed (a full disk or a file-size limit?)\n"
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file


def test_an_empty_dlcv_cache_is_not_the_working_folder(tmp_path, monkeypatch, p1_root):
    from dlcv.data.images import default_cache_dir, load_images
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for value in ("", " "):
        monkeypatch.setenv("DLCV_CACHE", value)
        assert default_cache_dir() == tmp_path / "home" / ".cache" / "dlcv"
    load_images(sorted((p1_root / "val_50").glob("0_*.png"))[:2], 8)
    assert [p.name for p in tmp_path.iterdir()] == ["home"]


def test_an_image_rewritten_with_the_same_size_and_mtime_is_decoded_again(tmp_path):
    from dlcv.data.images import load_images
    image = tmp_path / "0_1.png"
    pixels = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(image, compress_level=0)  # stored, not compressed: the size is the pixels'
    before = image.stat()
    assert load_images([image], 8, tmp_path / "cache").max() == 0
    pixels[0, 0] = 255
    Image.fromarray(pixels).save(image, compress_level=0)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or `rsync -t` leave it
    assert image.stat().st_size == before.st_size and image.stat().st_mtime_ns == before.st_mtime_ns
    assert load_images([image], 8, tmp_path / "cache").max() == 255


def test_a_table_of_auto_epochs_is_reused_on_a_rerun(world, tmp_path, caplog):
    """`ssl table` with train.epochs=auto compared the planned epochs with 'auto' ('>' between str and int)."""
    table = tmp_path / "table"
    shutil.copytree(world["x"] / "table", table, ignore=shutil.ignore_patterns(".lock"))
    setting = table / "setting_C"
    config = (setting / "config.yaml").read_text()
    (setting / "config.yaml").write_text(config.replace("max_seconds: null", "max_seconds: 60.0"))
    summary = json.loads((setting / "summary.json").read_text())
    summary["environment"]["epoch_plan"] = {"epochs": 1, "budget_s": 60.0}
    (setting / "summary.json").write_text(json.dumps(summary))
    argv = [*fill(TABLE, world), *table_sets(world), "--ssl-backbone", str(world["x"] / "b1.pt"), "--set",
            "train.epochs=auto", "--set", "train.max_seconds=60"]
    argv[argv.index("--out") + 1] = str(table)
    assert main(argv) == 0 and "setting_C is finished; reusing it" in caplog.text
