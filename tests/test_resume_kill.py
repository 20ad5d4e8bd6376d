"""A run killed at any moment resumes: once metrics.csv shows epoch N, `--resume` continues after epoch N
and ends with the metrics of an uninterrupted run. One run per run directory (an advisory lock)."""
import csv
import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from conftest import FIGURES, small_classify_cfg
from dlcv.cli import main
from dlcv.engine import checkpoint
from dlcv.engine.run import read_summary
from dlcv.engine.trainer import Trainer
from dlcv.errors import DlcvError
from dlcv.fileio import DirectoryLock
from dlcv.malloc import SETTINGS
from dlcv.tasks.classify import ClassifyTask

# deterministic columns (images_per_s and seconds are timings)
SCORED = ("epoch", "train_loss", "val_loss", "val_acc", "lr")


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` handler may catch it."""


def tiny_cfg(root):
    return small_classify_cfg(root, **{"model.options": "{widths: [8, 16, 16]}", "train.epochs": 2,
                                       "snapshot.epochs": [2], "data.limit_train": 150, "snapshot.tsne_perplexity": 5,
                                       **FIGURES})


def scored_rows(run):
    return [{k: r[k] for k in SCORED} for r in csv.DictReader(open(run / "metrics.csv"))]


def fit(cfg, out, resume=False):
    return Trainer(ClassifyTask(cfg), cfg, out, resume=resume).fit()


@pytest.fixture(scope="module")
def straight(p1_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = tiny_cfg(p1_root)
    fit(cfg, out)
    return cfg, out


def count_commits(monkeypatch, kill_at=None, before=False):
    """Counts atomic renames (every file a run writes goes through one); raises Killed at the
    `kill_at`-th, just before it (the temp file written, the target not yet replaced) or just after."""
    real_replace, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == kill_at and before:
            raise Killed(dst)
        real_replace(src, dst)
        if calls[0] == kill_at:
            raise Killed(dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_a_kill_at_every_write_resumes_to_the_uninterrupted_metrics(straight, tmp_path, monkeypatch):
    cfg, reference = straight
    calls = count_commits(monkeypatch)
    fit(cfg, tmp_path / "count")
    monkeypatch.undo()
    writes = calls[0]
    assert writes >= 12  # config, 2 x (last, metrics, summary), snapshot, epoch/best checkpoints, figures
    expected = scored_rows(reference)
    for kill_at in range(1, writes + 1):
        for before in (True, False):
            out = tmp_path / f"k{kill_at}{'b' if before else 'a'}"
            count_commits(monkeypatch, kill_at, before)
            with pytest.raises(Killed):
                fit(cfg, out)
            monkeypatch.undo()
            if (out / "metrics.csv").exists():  # the contract: epochs metrics.csv shows are checkpointed
                shown = int(scored_rows(out)[-1]["epoch"])
                assert checkpoint.load(out / "checkpoints" / "last.pt")["epoch"] >= shown, (kill_at, before)
            if kill_at == writes and not before:  # killed after its very last write: nothing to resume
                with pytest.raises(DlcvError, match="already complete"):
                    fit(cfg, out, resume=True)
                summary = read_summary(out)
            else:
                summary = fit(cfg, out, resume=True)
            assert summary.status == "finished", (kill_at, before)
            assert scored_rows(out) == expected, (kill_at, before)
            assert summary.best == {"val_acc": pytest.approx(float(max(r["val_acc"] for r in expected))),
                                 "epoch": summary.best["epoch"]}
            assert (out / "figures" / "tsne_epoch_002.png").is_file(), (kill_at, before)
            assert not list(out.rglob("*.tmp")), (kill_at, before)


def test_sigkill_of_a_real_process_then_resume_from_the_cli(straight, tmp_path):
    """A real SIGKILL as soon as epoch 1's checkpoint lands (wherever the process then is). All three
    runs are processes with one thread, so the comparison is on one code path."""
    from dlcv import config
    recipe = tmp_path / "r.yaml"
    recipe.write_text(config.dump(straight[0]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def dlcv(out, *extra):
        return [sys.executable, "-m", "dlcv", "classify", "train", "--out", str(out), *extra]

    subprocess.run(dlcv(tmp_path / "reference", "-c", str(recipe)), env=env, check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(dlcv(out, "-c", str(recipe)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "epoch_001.pt").exists() and not (out / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(dlcv(out, "--resume"), env=env, check=True, capture_output=True)
    assert scored_rows(out) == scored_rows(tmp_path / "reference")
    if platform.libc_ver()[0] == "glibc" and not any(k.startswith("MALLOC_") for k in env):  # restarted with them
        assert read_summary(out).environment["malloc"] == SETTINGS


def test_killed_before_the_first_checkpoint_restarts_with_resume(straight, tmp_path, monkeypatch):
    cfg, reference = straight
    out = tmp_path / "run"
    count_commits(monkeypatch, kill_at=2)  # config.yaml written, then killed before any epoch ended
    with pytest.raises(Killed):
        fit(cfg, out)
    monkeypatch.undo()
    assert (out / "config.yaml").is_file() and not (out / "checkpoints" / "last.pt").exists()
    with pytest.raises(DlcvError, match="already holds a run; continue it with --resume"):
        fit(cfg, out)
    assert main(["classify", "train", "--out", str(out), "--resume"]) == 0
    assert scored_rows(out) == scored_rows(reference)


def test_resume_of_a_folder_without_a_run_says_what_to_do(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["classify", "train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "run the same command without --resume" in capsys.readouterr().err


def test_a_failed_start_leaves_no_run_folder(p1_root, tmp_path):
    cfg = small_classify_cfg(tmp_path / "no_such_data")
    with pytest.raises(DlcvError, match="not found"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- one run per folder ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["classify", "train", "-c", "p1_fast", "--set", "data.root={p1}", "--out", "{dir}"],
    ["ssl", "table", "-c", "p2_finetune", "--out", "{dir}"],
    ["demo", "--out", "{dir}"],
], ids=["train", "ssl-table", "demo"])
def test_a_second_command_on_a_locked_folder_exits_2_naming_folder_and_pid(argv, p1_root, tmp_path, capsys):
    folder = tmp_path / "busy"  # (the training's data exists: the lock, not a missing folder, refuses it)
    with DirectoryLock(folder):
        assert main([a.format(dir=folder, p1=p1_root) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is in use by another dlcv process (pid {os.getpid()})" in err
    assert not (folder / "config.yaml").exists() and not (folder / "data").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dlcv.fileio import DirectoryLock; "
                               f"lock = DirectoryLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(DlcvError, match=f"pid {holder.pid}"):
        DirectoryLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = DirectoryLock(tmp_path)
    lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()
