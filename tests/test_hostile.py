"""What a careless or malicious user types (issue 37), class by class, through the real command line (in
process, or the hw1 scripts and `python` where the start-up itself is under test): the exit code, the one
line it prints, and every file of the world it ran in byte-identical afterwards. FIFOs stand in for
devices (never the machine's own /dev)."""
import os
import shutil
import stat
import subprocess
import sys

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
from dlcv.pipelines import transfer
from dlcv.tasks import classify, fill_model_defaults

# snapshot.epochs outside the run: no feature snapshots, so no t-SNE figures (seconds each on a busy core)
TINY = {"train.epochs": 1, "train.max_steps": 2, "model.options": "{widths: [8, 8, 8]}", "data.limit_train": 60,
        "data.limit_val": 20, "train.batch_size": 30, "snapshot.epochs": [99]}
TRAIN = ["classify", "train", "-c", "p1_fast", "--set", "data.root={dir}", "--set", "device=cpu", "--set",
         "model.options={{widths: [8, 8, 8]}}", "--set", "data.limit_train=60", "--set", "data.limit_val=20",
         "--set", "train.epochs=1", "--set", "train.max_steps=2", "--set", "train.batch_size=30",
         "--set", "train.precision=fp32", "--set", "snapshot.epochs=[99]", "--out", "{x}/new_run"]
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
     "OUT_CSV {dir}/val_gt.csv holds ground truth (every label is the one in its file name)"),
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
     "OUT_CSV {x}/photo.png exists and is not a CSV text file"),
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
