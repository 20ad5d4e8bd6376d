import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "hw1_data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Image caches of the tests go to a temporary folder, never the user's ~/.cache."""
    os.environ["DLCV_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from dlcv.data.synth import write_tree
    return write_tree(tmp_path_factory.mktemp("synth"), seed=0)


@pytest.fixture(scope="session")
def p1_root(synth_root) -> Path:
    return synth_root / "p1_data"


def small_classify_cfg(root, **overrides):
    """A resolved classify config for a small, fast model on the synthetic P1 data."""
    from dlcv import config
    from dlcv.tasks import classify

    recipe = {
        "task": "classify", "device": "cpu",
        "data": {"root": str(root)},
        "model": {"name": "cifar_convnet", "options": {"widths": [16, 32, 64]}},
        "augment": {"flip": True, "crop_padding": 2, "pad_mode": "reflect"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "sched": {"name": "onecycle", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 50, "eval_batch_size": 64, "precision": "fp32", "seed": 0},
    }
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return config.resolve(classify.DEFAULTS, classify.choices(), classify.TYPES, recipe, sets)


needs_real_data = pytest.mark.skipif(not (REAL_DATA / "p1_data").is_dir(),
                                     reason="real course data (../shared/data/hw1_data) not present")
