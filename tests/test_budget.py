"""train.epochs=auto: the epochs that fit train.max_seconds, planned from the run's own measured steps."""
import copy
import csv
import json

import pytest
import torch
import yaml

from conftest import kill_after_epoch, small_classify_cfg
from dlcv.config import ConfigError
from dlcv.engine import checkpoint
from dlcv.engine import trainer as trainer_mod
from dlcv.engine.budget import evaluations, plan_epochs
from dlcv.engine.trainer import Trainer
from dlcv.tasks import classify
from dlcv.tasks.classify import ClassifyTask

STEP_S = 1.0  # fake seconds one training step takes
EVAL_S = 3.0  # fake seconds one validation takes


def test_evaluations_count_every_nth_and_the_last_epoch():
    assert [evaluations(e, 1) for e in (1, 2, 5)] == [1, 2, 5]
    assert [evaluations(e, 3) for e in (1, 3, 4, 6, 7)] == [1, 1, 2, 2, 3]


def test_the_plan_is_the_most_epochs_that_end_within_the_budget():
    plan = plan_epochs(budget_s=600, elapsed_s=40, step_s=0.1, steps_per_epoch=50, eval_s=2, eval_every=1)
    # reserve 30 s (5%); each epoch 5 s of steps + 2 s of validation: (600 - 30 - 40) // 7 = 75
    assert (plan.epochs, plan.evaluations, plan.reserve_s) == (75, 75, 30)
    assert plan.planned_end_s == pytest.approx(40 + 75 * 7) and plan.fits
    sparse = plan_epochs(budget_s=600, elapsed_s=40, step_s=0.1, steps_per_epoch=50, eval_s=2, eval_every=10)
    # 101 epochs: 505 s of steps + 11 validations = 527 s; 102 would need 510 + 22 > 530
    assert (sparse.epochs, sparse.evaluations) == (101, 11)


def test_each_epochs_checkpoints_count_against_the_budget():
    plan = plan_epochs(budget_s=100, elapsed_s=0, step_s=1, steps_per_epoch=10, eval_s=0, eval_every=1, save_s=10)
    assert plan.epochs == 4 and plan.planned_end_s == 80  # 4 x (10 s of steps + 10 s of saving) + 10 s reserve


def test_a_budget_too_small_for_one_epoch_plans_one_and_says_it_does_not_fit():
    plan = plan_epochs(budget_s=20, elapsed_s=15, step_s=1, steps_per_epoch=10, eval_s=1, eval_every=1)
    assert plan.epochs == 1 and not plan.fits


def test_auto_needs_max_seconds_and_other_strings_are_refused(p1_root):
    with pytest.raises(ConfigError, match="auto needs train.max_seconds"):
        small_classify_cfg(p1_root, **{"train.epochs": "auto"})
    with pytest.raises(ConfigError, match="train.epochs"):
        small_classify_cfg(p1_root, **{"train.epochs": "many", "train.max_seconds": 10})
    assert small_classify_cfg(p1_root, **{"train.epochs": "auto", "train.max_seconds": 10})["train"]["epochs"] == "auto"


class FakeClock:
    """time.time / perf_counter for the trainer module: only the steps and validations of the task below
    take (fake) time, so the budget arithmetic is exact and independent of the machine."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    perf_counter = time
    monotonic = time


class ClockedTask(ClassifyTask):
    clock: FakeClock

    def loss(self, model, batch):
        self.clock.now += STEP_S
        return super().loss(model, batch)

    def evaluate(self, ctx, model):
        self.clock.now += EVAL_S
        return super().evaluate(ctx, model)

    def finish(self, ctx, rows):
        """No figures (t-SNE): the engine's budget is under test."""


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(trainer_mod, "time", fake)
    monkeypatch.setattr(ClockedTask, "clock", fake, raising=False)
    return fake


def fit(cfg, out, resume=False):
    return Trainer(ClockedTask(copy.deepcopy(cfg)), copy.deepcopy(cfg), out, resume=resume).fit()


def auto_cfg(p1_root, budget):
    # 400 training images in batches of 50: 8 steps (8 fake s) + one validation (3 fake s) per epoch
    return small_classify_cfg(p1_root, **{"train.epochs": "auto", "train.max_seconds": budget,
                                          "data.limit_train": 400, "data.limit_val": 100,
                                          "snapshot.epochs": "[1]"})


def test_auto_epochs_fill_the_budget_record_the_plan_and_train_as_the_fixed_number(p1_root, tmp_path, clock):
    summary = fit(auto_cfg(p1_root, 80), tmp_path / "auto")
    # measuring: 3 warm-up + 5 timed steps + one validation = 11 s; reserve 10 s; (80 - 10 - 11) // 11 = 5
    plan = summary.environment["epoch_plan"]
    assert (plan["epochs"], plan["step_s"], plan["eval_s"], plan["elapsed_s"]) == (5, 1.0, 3.0, 11.0)
    assert summary.final["epoch"] == 5 and summary.status == "finished"
    assert summary.wall_time_s <= 80
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["train"]["epochs"] == 5
    assert checkpoint.load(tmp_path / "auto" / "checkpoints" / "last.pt")["config"]["train"]["epochs"] == 5
    # measuring left no trace: the same run with train.epochs=5 trains to the same weights and metrics
    fixed = small_classify_cfg(p1_root, **{"train.epochs": 5, "train.max_seconds": 80, "data.limit_train": 400,
                                           "data.limit_val": 100, "snapshot.epochs": "[1]"})
    fit(fixed, tmp_path / "fixed")
    a = checkpoint.load(tmp_path / "auto" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "fixed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[r["train_loss"], r["val_acc"]] for r in csv.DictReader(open(tmp_path / "auto" / "metrics.csv"))]
    assert rows == [[r["train_loss"], r["val_acc"]] for r in csv.DictReader(open(tmp_path / "fixed" / "metrics.csv"))]


def test_a_resumed_auto_run_keeps_its_planned_epochs(p1_root, tmp_path, clock, monkeypatch):
    cfg = auto_cfg(p1_root, 80)
    fit(cfg, tmp_path / "straight")
    revive = kill_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "resumed")
    revive()
    clock.now += 500  # the machine was down for a while: wall time between processes does not count
    revive = kill_after_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "resumed", resume=True)  # `-c recipe` again: epochs still reads auto
    revive()
    saved = classify.SCHEMA.resolve(yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text()))
    assert saved["train"]["epochs"] == 5
    summary = fit(saved, tmp_path / "resumed", resume=True)  # a plain --resume: the run's config.yaml
    assert summary.final["epoch"] == 5 and summary.environment["epoch_plan"]["epochs"] == 5
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary.final["val_acc"] == straight["final"]["val_acc"]
    assert summary.final["train_loss"] == straight["final"]["train_loss"]
