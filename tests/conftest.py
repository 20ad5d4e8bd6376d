import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (`make test` runs 2 workers), the workers share the cores instead of each spinning
# up a thread per core: two OpenMP pools of 2 threads on 2 cores wait on each other. The processes a test
# starts (the CLI, the graded scripts, DDP ranks) inherit the same share through OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "hw1_data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Image caches of the tests go to a temporary folder, never the user's ~/.cache."""
    os.environ["DLCV_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The synthetic tree at the tests' sizes: `dlcv data synth`'s, with 400 P1 training images and 192 mini
    images (cheaper; the tests count on these numbers)."""
    from dlcv.data.synth import SynthSizes, write_tree
    return write_tree(tmp_path_factory.mktemp("synth"), seed=0,
                      sizes=SynthSizes(p1_train_per_class=40, p2_mini_per_class=24))


@pytest.fixture(scope="session")
def p1_root(synth_root) -> Path:
    return synth_root / "p1_data"


def small_classify_cfg(root, **overrides):
    """A resolved classify config for a small, fast model on the synthetic P1 data."""
    from dlcv.tasks import classify

    recipe = {
        "task": "classify", "device": "cpu",
        "data": {"root": str(root)},
        "model": {"name": "cifar_convnet", "options": {"widths": [16, 32, 64]}},
        "augment": {"flip": True, "crop_padding": 2, "pad_mode": "reflect"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "sched": {"name": "onecycle", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 50, "eval_batch_size": 64, "precision": "fp32", "seed": 0},
        "snapshot": {"figures": False},  # (FIGURES to draw them: the tests that look at them)
    }
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return classify.SCHEMA.resolve(recipe, sets)


# The helpers' runs draw no figures (matplotlib took a fifth of the suite); a test that looks at them adds this
FIGURES = {"snapshot.figures": True}


needs_real_data = pytest.mark.skipif(not (REAL_DATA / "p1_data").is_dir(),
                                     reason="real course data (../shared/data/hw1_data) not present")


def seg_cfg(root, **overrides):
    """A resolved segment config for the CPU-sized fcn_small on the synthetic P3 data."""
    from dlcv.tasks import segment

    recipe = {"task": "segment", "device": "cpu", "data": {"root": str(root)},
              "model": {"name": "fcn_small", "options": {"width": 16}},
              "augment": {"flip": True, "rotate90": True},
              "optim": {"name": "adam", "lr": 3e-3},
              "train": {"epochs": 8, "batch_size": 4, "eval_batch_size": 8, "precision": "fp32", "seed": 0},
              "snapshot": {"figures": False}}
    return segment.SCHEMA.resolve(recipe, [f"{k}={v}" for k, v in overrides.items()])


TINY_SSL = {  # resnet18 at 32 px with a narrow projector: a few seconds per epoch on 2 cores
    "model.name": "resnet18", "data.image_size": 32, "byol.projector_hidden": 256, "byol.projector_dim": 64,
    "train.batch_size": 32, "train.eval_batch_size": 128, "optim.lr": 0.05, "sched.warmup_epochs": 0,
    "train.precision": "fp32", "device": "cpu", "train.channels_last": False, "snapshot.figures": False,
}


def assert_runs_in_a_fresh_python(code: str) -> None:
    """`code` passes in a new interpreter: import rules (what importing a module pulls in) need one."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def sets_of(values: dict) -> list[str]:
    """--set strings of a {dotted.key: value} mapping (lists as JSON, which is YAML)."""
    import json
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in values.items()]


def ssl_cfg(p2_root, **overrides):
    """A resolved BYOL config (the shipped p2_byol recipe at TINY_SSL scale) on the synthetic P2 data."""
    from dlcv import config
    from dlcv.tasks import ssl

    sets = sets_of({**TINY_SSL, "data.root": str(p2_root), **overrides})
    return ssl.SCHEMA.resolve(config.load_yaml("p2_byol"), sets)


def kill_after_epoch(monkeypatch, epoch: int):
    """The training process dies (KeyboardInterrupt) right after epoch `epoch`'s last.pt landed. Returns what
    brings the process back to life."""
    from dlcv.engine.trainer import Trainer
    real_save_last = Trainer._save_last

    def save_then_die(self, saved_epoch, *args):
        real_save_last(self, saved_epoch, *args)
        if saved_epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_last", save_then_die)
    return lambda: monkeypatch.setattr(Trainer, "_save_last", real_save_last)


# `make test` hands whole files to its 2 workers (--dist loadfile) in collection order: the longest files go
# first, so the suite does not end with one worker finishing a 4-minute file while the other waits (the order
# of `pytest --durations=0 --junitxml` per-file sums on the 2-core AVX2 machine).
LONGEST_FIRST = ("test_gpu_kit.py", "test_benchmarks.py", "test_ddp.py", "test_resume_kill.py", "test_ssl.py",
                 "test_export.py", "test_safety.py", "test_report.py", "test_docs.py", "test_precision.py",
                 "test_cli.py", "test_hostile.py", "test_segment.py", "test_engine.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
