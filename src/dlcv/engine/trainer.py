"""The training loop. Tasks (classify, ssl, segment) supply data, model, loss and evaluation through the
`Task` contract (engine/task.py); everything else (precision, DDP, schedule, checkpoints, resume, logging,
snapshots) lives here once."""
from __future__ import annotations

import copy
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dlcv.engine import batches, checkpoint, distributed, identity
from dlcv.engine.budget import plan_epochs
from dlcv.engine.guard import Bf16Guard, guards_gradients
from dlcv.engine.optim import (MAX_WARMUP_FRACTION, build_optimizer, build_scheduler, keep_config_hyperparameters,
                               trainable_parameters, warmup_epochs)
from dlcv.engine.precision import PRECISIONS, Numerics, resolve_channels_last, resolve_precision
from dlcv.engine.run import RunDir, Summary, environment
from dlcv.engine.task import Context, Task
from dlcv.errors import DlcvError
from dlcv.statedict import load_strict

log = logging.getLogger("dlcv")

PLAIN_PROGRESS_S = 30.0
# train.epochs=auto measures MEASURE_STEPS training steps after MEASURE_WARMUP (cuDNN's autotuning,
# torch.compile, allocator growth), one validation and one epoch's checkpoint writes
MEASURE_WARMUP, MEASURE_STEPS = 3, 10


@dataclass
class Progress:
    """Where the run stands after its last finished epoch (0: none yet)."""
    epoch: int = 0
    step: int = 0
    best: float = math.nan  # the monitor's best value so far
    wall_before: float = 0.0  # seconds the run spent before this process resumed it


def snapshot_epochs(requested: list[int] | None, epochs: int) -> list[int]:
    """Default: the first, the middle and the last epoch. Requested epochs outside 1..epochs are dropped
    with a warning that names them."""
    if not requested:
        return sorted({1, (epochs + 1) // 2, epochs})
    dropped = sorted({e for e in requested if not 1 <= e <= epochs})
    if dropped:
        log.warning("snapshot.epochs %s outside 1..%d (train.epochs) are dropped", dropped, epochs)
    return sorted({e for e in requested if 1 <= e <= epochs})


class Trainer:
    """`resume=True` continues the run in `run_dir` from checkpoints/last.pt, or starts it over when it
    stopped before its first checkpoint; without it, a folder that holds a run is refused."""

    def __init__(self, task: Task, cfg: dict, run_dir: str | Path, resume: bool = False):
        self.task, self.cfg, self.resume = task, cfg, resume
        root = cfg["data"]["root"]
        if root is None:
            raise DlcvError("data.root is not set: the problem's data folder (e.g. hw1_data/p1_data)")
        if not Path(root).exists():
            raise DlcvError(f"data.root {root}: not found; point it at your copy with --set data.root=PATH/"
                            f"{Path(root).name}, or write the synthetic data (dlcv data synth /tmp/synth) and add "
                            f"--set data.root=/tmp/synth/hw1_data/{Path(root).name}")
        self.env = distributed.setup(cfg["device"])
        self.device = self.env.device
        self.run = RunDir(run_dir, self.env.is_main)
        self.ema: AveragedModel | None = None
        self.plan: dict[str, Any] | None = None  # train.epochs=auto: how the epochs were chosen
        t = cfg["train"]
        # the one precision / layout decision of the run: the loop trains in it, the task validates in it
        self.numerics = Numerics(resolve_precision(t["precision"], self.device, task.cpu_bf16),
                                 resolve_channels_last(t["channels_last"], self.device, task.cpu_channels_last))
        self.dtype = PRECISIONS[self.numerics.precision]
        if self.dtype is torch.float16 and self.device.type == "cpu":
            log.warning("fp16 on CPU is slow (emulated); fp32 is usually fastest there")
        self.environment = environment(self.device, self.env.world_size)
        self.ctx = Context(self.device, self.env.rank, self.env.world_size, self.run, self.numerics)

    def _sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """BatchNorm statistics over the global batch instead of each process's share (BYOL and
        segmentation use small per-GPU batches). torch's SyncBatchNorm runs on CUDA only."""
        if self.device.type != "cuda":
            log.warning("train.sync_batchnorm: SyncBatchNorm needs CUDA; on %s each process keeps its own "
                        "BatchNorm statistics", self.device.type)
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> Summary:
        """Holds the run folder's lock throughout. The folder is checked before anything is written to it
        (RunDir.check); a run that fails on bad input before its first checkpoint leaves a new or empty
        folder as it was (an existing empty folder is where timm and Lightning users start a run)."""
        created, fresh = not self.run.path.exists(), self.run.is_fresh()
        self.run.check(self.resume)
        self.run.open()
        try:
            return self._fit()
        except Exception:  # bad input (or a failure) while building: leave no half-made run behind
            if fresh and self.env.is_main and not self.run.last.exists():
                self.run.remove_contents(keep_folder=not created)
            raise
        finally:
            self.run.close()

    def _starting_state(self) -> dict[str, Any] | None:
        t = self.cfg["train"]
        self.run.check(self.resume)  # again, under the folder's lock: another process may have written it meanwhile
        if not self.resume:
            return None
        if not self.run.last.is_file():
            if self.run.started():
                log.info("%s stopped before its first checkpoint; starting it over", self.run.path)
            return None
        state = checkpoint.load(self.run.last, self.task.name, require=("rows", "rng", "best"))
        if t["epochs"] == "auto":  # planned when the run started: config.yaml and every checkpoint hold it
            t["epochs"] = state["config"]["train"]["epochs"]
        if t["epochs"] == state["config"]["train"]["epochs"]:  # a plain --resume too: the plan still holds
            self.plan = state.get("epoch_plan")
        changed = identity.check_resume(self.run.path, state["config"], self.cfg)
        complete = state["epoch"] >= t["epochs"] or (t["max_steps"] is not None and state["step"] >= t["max_steps"]) \
            or (t["max_seconds"] is not None and state["wall_time_s"] >= t["max_seconds"])
        if complete and self.run.finished():
            # checked before the data is decoded: a finished run is refused at once
            raise DlcvError(f"{self.run.path} is already complete ({state['epoch']} epochs, {state['step']} "
                            "steps); extend it with --set train.epochs=N (or train.max_steps / max_seconds)")
        if changed:
            log.info("resuming %s with changed settings: %s", self.run.path, changed)
        return state

    def _fit(self) -> Summary:
        started = time.time()
        state = self._starting_state()
        self._set_up_task(state)
        self._build_training(state)
        self._prepare_loop(started)
        last_metrics = None
        for epoch in range(self.progress.epoch + 1, self.cfg["train"]["epochs"] + 1):
            if self._run_is_over():  # resumed after the run's end (killed while finishing)
                break
            metrics, out_of_time = self._epoch(epoch, started)
            last_metrics = metrics if metrics is not None else last_metrics
            if out_of_time:
                break
        return self._finish(last_metrics, started)

    def _epoch(self, epoch: int, started: float) -> tuple[dict[str, Any] | None, bool]:
        """Train one epoch, validate when due, snapshot on the chosen epochs, save. Returns the validation's
        metrics (None where it did not validate) and whether train.max_seconds ran out."""
        train_loss, images_per_s, tic = self._train_one_epoch(epoch)
        out_of_time = self._out_of_time()
        metrics = self._validate_if_due(epoch, out_of_time)
        out_of_time = out_of_time or metrics is not None and self._out_of_time()  # validation may use it up
        self._snapshot_if_chosen(epoch, stopping=self._stops_after(epoch) or out_of_time)
        row = self._row(epoch, train_loss, images_per_s, metrics or {}, tic)
        self._save_epoch(epoch, row, metrics or {}, started)
        return metrics, out_of_time

    # -- before the first epoch ---------------------------------------------------------------------
    def _set_up_task(self, state: dict[str, Any] | None) -> None:
        """The run's config is written, the task reads its data, and a resumed run's inputs are checked."""
        cfg = self.cfg
        distributed.barrier()  # every rank has looked at the folder before rank 0 writes to it
        if state is None:
            self.run.write_config(cfg)  # before the data is read: a run killed from here on is resumable
        self.inputs = {"weights_sha256": identity.weights_sha256(cfg["model"]["weights"])}
        torch.manual_seed(cfg["train"]["seed"])  # identical initial weights on every rank
        self.task.setup(self.ctx)
        self.inputs.update(self.task.data_identity())
        if state is not None:
            identity.check_inputs(self.run.path, state.get("inputs"), self.inputs)

    def _build_training(self, state: dict[str, Any] | None) -> None:
        """The model (with its EMA), optimizer, schedule and loss scaler; a resumed run's state loaded."""
        t, ctx = self.cfg["train"], self.ctx
        self.module = self.task.build_model(ctx).to(self.device)
        if t["sync_batchnorm"] and self.env.distributed:
            self.module = self._sync_batchnorm(self.module)
        if self.numerics.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.guard = Bf16Guard(self.module) if guards_gradients(self.device, self.numerics.precision) else None
        # torch's own EMA (AveragedModel), BatchNorm statistics averaged too; it follows every optimizer step
        self.ema = None if t["ema_decay"] is None else AveragedModel(
            self.module, multi_avg_fn=get_ema_multi_avg_fn(t["ema_decay"]), use_buffers=True)
        ctx.module, ctx.eval_module = self.module, self.module if self.ema is None else self.ema.module
        self.batch_size = self._fitted_batch_size()
        self.steps_per_epoch = batches.steps_per_epoch(self.task.num_train(), self.batch_size)
        self.auto_epochs = t["epochs"] == "auto"
        if self.auto_epochs:
            t["epochs"] = 1  # the schedule's shape while measuring (the measured steps are undone)
        self.optimizer = build_optimizer(trainable_parameters(self.module), self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)
        self.progress = Progress(best=-math.inf if self._maximise else math.inf)
        torch.manual_seed(t["seed"] + 1 + self.env.rank)  # dropout etc. differ per rank
        if state is not None:
            self._restore(state)
            # config.yaml changes only once the resume is known to work (same inputs, the state loaded into this
            # config's model and optimizer): a refused --resume leaves the run as it was
            self.run.write_config(self.cfg)
        self.run.remove_stale_temporaries()

    def _fitted_batch_size(self) -> int:
        """train.batch_size, or where the training set is smaller, the whole set (rounded down to a multiple of
        the processes) with a warning: a recipe's batch on a small dataset then trains one step per epoch, as
        a loader without drop_last gives one short batch, instead of stopping the run."""
        wanted, images, world = self.cfg["train"]["batch_size"], self.task.num_train(), self.env.world_size
        if wanted <= images:
            return wanted
        fitted = images - images % world
        if fitted == 0:
            raise DlcvError(f"the training set has {images} image(s), fewer than the {world} processes")
        log.warning("train.batch_size=%d is larger than the training set (%d images): batches of %d instead, one "
                    "step per epoch", wanted, images, fitted)
        return fitted

    def _restore(self, state: dict[str, Any]) -> None:
        where = f"{self.run.last} (resumed with another model config?)"
        load_strict(self.module, state.get("train_model", state["model"]), where)
        if self.ema is not None:
            load_strict(self.ema.module, state["model"], where)
            self.ema.n_averaged.fill_(state["ema_steps"])
        config_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # other parameter groups: optim.lr_mult or decay_norm_and_bias changed
            raise DlcvError(f"{self.run.last}: its optimizer state does not fit this config's parameter groups "
                            f"({exc}); resume with the run's optim.lr_mult and optim.decay_norm_and_bias") from None
        self.scheduler.load_state_dict(state["scheduler"])
        changed = keep_config_hyperparameters(self.optimizer, self.scheduler, config_groups)
        if changed:
            log.info("resumed with the config's optimizer settings, not the checkpoint's: %s", "; ".join(changed))
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(state["epoch"], state["step"], state["best"], state["wall_time_s"])
        checkpoint.restore_rng_states(state["rng"][min(self.env.rank, len(state["rng"]) - 1)])
        self.run.restore_rows(state["rows"])
        log.info("resumed %s at epoch %d (step %d)", self.run.path, state["epoch"], state["step"])

    def _prepare_loop(self, started: float) -> None:
        """What trains (compiled, DDP-wrapped) and what validates; train.epochs=auto planned; the step total,
        the deadline and the snapshot epochs."""
        t, ctx = self.cfg["train"], self.ctx
        fast = torch.compile(self.module) if t["compile"] else self.module
        self.evaluated = fast if self.ema is None else ctx.eval_module  # the EMA's weights are validated eagerly
        self.train_model = DistributedDataParallel(fast) if self.env.distributed else fast
        if self.auto_epochs:
            self._plan_epochs(started)
        ctx.total_steps = self.steps_per_epoch * t["epochs"]
        if t["max_steps"] is not None:
            ctx.total_steps = min(ctx.total_steps, t["max_steps"])
        if warmup_epochs(self.cfg) < self.cfg["sched"]["warmup_epochs"]:
            log.warning("sched.warmup_epochs=%g is more than %.0f%% of the run's %d epochs: warming up for %g epochs "
                        "instead (set sched.warmup_epochs to choose)", self.cfg["sched"]["warmup_epochs"],
                        MAX_WARMUP_FRACTION * 100, t["epochs"], warmup_epochs(self.cfg))
        # train.max_seconds: wall time of the whole run (resumed parts included), like Lightning's max_time;
        # the epoch it runs out in ends early and is evaluated, checkpointed and logged as usual
        self._deadline = None if t["max_seconds"] is None else started - self.progress.wall_before + t["max_seconds"]
        self.snapshots = snapshot_epochs(self.cfg["snapshot"]["epochs"], t["epochs"])

    # -- an epoch -----------------------------------------------------------------------------------
    def _run_is_over(self) -> bool:
        t, p = self.cfg["train"], self.progress
        return t["max_steps"] is not None and p.step >= t["max_steps"] or \
            t["max_seconds"] is not None and p.wall_before >= t["max_seconds"]

    def _stops_after(self, epoch: int) -> bool:
        """The schedule ends with this epoch (its last, or train.max_steps reached)."""
        t = self.cfg["train"]
        return epoch == t["epochs"] or t["max_steps"] is not None and self.progress.step >= t["max_steps"]

    def _train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        """(mean training loss, images per second, start time) over every process."""
        self.train_model.train()
        tic = time.time()
        loss_sum, seen = self._run_epoch_steps(epoch)
        train_seconds = time.time() - tic
        totals = distributed.all_reduce_sum(torch.tensor([loss_sum, float(seen)], dtype=torch.float64,
                                                         device=self.device))
        return (totals[0] / totals[1]).item(), totals[1].item() / train_seconds, tic

    def _validate_if_due(self, epoch: int, out_of_time: bool) -> dict[str, Any] | None:
        """The task's metrics on train.eval_every's epochs and the last one; None on the others."""
        if out_of_time or self._stops_after(epoch) or epoch % self.cfg["train"]["eval_every"] == 0:
            return self._evaluate(self.evaluated)
        return None

    def _snapshot_if_chosen(self, epoch: int, stopping: bool) -> None:
        if epoch in self.snapshots or (stopping and not self.cfg["snapshot"]["epochs"]):
            self.ctx.eval_module.eval()  # also on epochs train.eval_every skips: no batch statistics, no dropout
            with torch.no_grad():  # the task autocasts (ctx.numerics)
                self.task.snapshot(self.ctx, self.ctx.eval_module, epoch)
            self._save_weights(self.run.checkpoints / f"epoch_{epoch:03d}.pt", epoch)

    def _row(self, epoch: int, train_loss: float, images_per_s: float, metrics: dict[str, Any],
             tic: float) -> dict[str, Any]:
        """The epoch's metrics.csv row; an epoch between train.eval_every's has no validation columns."""
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        # optim.lr as scheduled now (groups under optim.lr_mult run at their multiple of it)
        return {"epoch": epoch, "train_loss": train_loss, **scalars,
                "lr": self.cfg["optim"]["lr"] * self.scheduler.factor(), "images_per_s": images_per_s,
                "seconds": time.time() - tic}

    def _save_epoch(self, epoch: int, row: dict[str, Any], metrics: dict[str, Any], started: float) -> None:
        """best.pt when the monitor improved, last.pt, the row in metrics.csv, the log line, summary.json."""
        p = self.progress
        # NaN where not validated this epoch, or e.g. for a class absent from a tiny val set
        value = row.get(self.task.monitor, math.nan)
        improved = self._better(value, p.best)  # False for NaN: best stays as it was
        if improved or not (self.run.checkpoints / "best.pt").exists():
            p.best = value if improved else p.best
            self._save_weights(self.run.checkpoints / "best.pt", epoch)
        wall = p.wall_before + time.time() - started
        # last.pt (with this epoch's row) lands before metrics.csv shows the epoch: a kill anywhere
        # leaves a folder whose --resume continues after the last epoch metrics.csv shows
        self._save_last(epoch, wall, [*self.run.rows, row])
        self.run.log_epoch(row)
        log.info("epoch %d/%d  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"),
                 epoch, self.cfg["train"]["epochs"])
        self.run.write_summary(self._summary("running", row, metrics, wall))

    def _finish(self, last_metrics: dict[str, Any] | None, started: float) -> Summary:
        if last_metrics is None:  # resumed after the last epoch (killed while finishing): score it again
            last_metrics = self._evaluate(self.evaluated)
        if self.env.is_main:
            self.task.finish(self.ctx, self.run.rows)
        wall = self.progress.wall_before + time.time() - started
        final = self.run.rows[-1] if self.run.rows else {}
        summary = self._summary("finished", final, last_metrics, wall)
        self.run.write_summary(summary)
        distributed.barrier()
        return summary

    def _out_of_time(self, within_epoch: bool = False) -> bool:
        """Within an epoch only for one process (ranks must run the same steps); between epochs every
        rank agrees through an all-reduce."""
        if self._deadline is None:
            return False
        late = time.time() >= self._deadline
        if not self.env.distributed or within_epoch:
            return late and not self.env.distributed
        return bool(distributed.all_reduce_sum(torch.tensor(float(late), device=self.device)).item())

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The task's metrics; a non-finite validation loss means finite weights too large to use (they
        overflow), which no figure or checkpoint should be made of."""
        model.eval()
        with torch.no_grad():  # the task autocasts, once (ctx.numerics; inference/ does for classify and segment)
            metrics = self.task.evaluate(self.ctx, model)
        loss = metrics.get("val_loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise DlcvError(f"validation loss became {loss}: the weights diverged (overflowing outputs); lower "
                            "optim.lr or optim.weight_decay")
        return metrics

    def _run_epoch_steps(self, epoch: int) -> tuple[float, int]:
        """This process's (loss sum, images) of one epoch's steps; progress.step counts them."""
        t, env, step = self.cfg["train"], self.env, self.progress.step
        first_step = step
        gen = batches.epoch_generator(t["seed"], epoch, self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, tic = 0, time.time()
        max_steps = t["max_steps"]
        total = self.steps_per_epoch if max_steps is None else min(self.steps_per_epoch, max_steps - step)
        # a terminal gets a live bar; a log file (CI, nohup, a notebook) a plain line every PLAIN_PROGRESS_S,
        # not thousands of carriage-return fragments
        plain = env.is_main and not sys.stderr.isatty()
        bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not env.is_main or plain, leave=False,
                   dynamic_ncols=True)
        next_line = tic + PLAIN_PROGRESS_S
        redone_before = 0 if self.guard is None else self.guard.redone
        plan = self._plan(epoch, total)
        for i, (indices, offset) in enumerate(plan):
            if i > 0 and self._out_of_time(within_epoch=True):  # >= 1 step per epoch
                break
            batch = self.task.train_batch(self.ctx, indices, offset, gen, self.batch_size, epoch)
            step += 1
            loss = self._step(self.train_model, batch, step)
            self.progress.step = step
            seen += len(indices)
            loss_sum += loss.detach().double() * len(indices)
            if (i + 1) % t["log_every"] == 0:
                self._check_finite(loss_sum, epoch, step)
            bar.update()
            if plain and time.time() >= next_line:
                next_line += PLAIN_PROGRESS_S
                log.info("epoch %d  step %d/%d  loss %.4f  %.1f img/s", epoch, i + 1, total, loss.item(),
                         seen * env.world_size / (time.time() - tic))
            elif not plain and env.is_main and (i % t["log_every"] == 0 or i == total - 1):
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen * env.world_size / (time.time() - tic):.1f}")
        bar.close()
        self._check_finite(loss_sum, epoch, step)
        if self.guard is not None and self.guard.redone > redone_before:
            log.warning("epoch %d: %d of its %d steps were done again in fp32 (bf16 gave inf/nan gradients)", epoch,
                        self.guard.redone - redone_before, step - first_step)
        return loss_sum.item(), seen

    def _plan(self, epoch: int, steps: int) -> list[tuple[torch.Tensor, int]]:
        """This process's (indices, offset) of the epoch's first `steps` global batches, told to the task
        before its first step."""
        t, env = self.cfg["train"], self.env
        plan = list(itertools.islice(batches.train_batches(self.task.num_train(), self.batch_size, t["seed"], epoch,
                                                           env.rank, env.world_size), steps))
        self.task.plan_epoch(self.ctx, epoch, [indices for indices, _ in plan])
        return plan

    def _step(self, model, batch, step: int) -> torch.Tensor:
        """One optimizer step on `batch` (the `step`-th of the run); returns the loss."""
        optimizer, scaler = self.optimizer, self.scaler
        if self.guard is not None:
            self.guard.mark()
        with self.numerics.autocast(self.device):
            loss = self.task.loss(model, batch)
        scaler.scale(loss).backward()
        if self.guard is not None and torch.isfinite(loss):
            parameter = self.guard.first_nonfinite()
            if parameter is not None:  # engine/guard.py: the step again, in fp32
                optimizer.zero_grad(set_to_none=True)
                self.guard.rewind(step, parameter)
                loss = self.task.loss(model, batch)
                loss.backward()
        if self.cfg["train"]["grad_clip"]:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg["train"]["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        self.task.after_step(self.ctx, step)
        return loss

    def _plan_epochs(self, started: float) -> None:
        """train.epochs=auto: measure, choose the epochs that fit train.max_seconds, record them (config.yaml,
        every checkpoint, summary.json) and log the plan."""
        t, steps_per_epoch = self.cfg["train"], self.steps_per_epoch
        step_s, eval_s, save_s = self._measure()
        plan = plan_epochs(t["max_seconds"], time.time() - started, step_s, steps_per_epoch, eval_s, t["eval_every"],
                           save_s)
        t["epochs"] = plan.epochs
        self.plan = plan.to_json()
        self.run.write_config(self.cfg)
        log.info("train.epochs=auto: %d epochs of %d steps (%.3f s per step, %.1f s per validation, %.1f s of "
                 "checkpoints per epoch, %.0f s spent before) planned to end at %.0f s of the %.0f s budget",
                 plan.epochs, steps_per_epoch, step_s, eval_s, save_s, plan.elapsed_s, plan.planned_end_s,
                 plan.budget_s)
        if not plan.fits:
            log.warning("train.epochs=auto: one epoch does not fit train.max_seconds=%s; it is cut there",
                        t["max_seconds"])

    def _measure(self) -> tuple[float, float, float]:
        """Seconds of one training step (after warm-up), of one validation and of an epoch's two checkpoints
        (last.pt and best.pt, written to a scratch file), on this run's model and data.
        Weights, optimizer, schedule, EMA and random generators are put back afterwards, so the run trains as
        if it had not been measured (batches of 'epoch 0', which training never draws)."""
        env = self.env
        saved = copy.deepcopy({"model": self.module.state_dict(), **self._optimization_state(),
                               "ema": None if self.ema is None else self.ema.state_dict()})
        rng = checkpoint.rng_states()
        step_s = self._measure_steps()
        start = time.perf_counter()
        self._evaluate(self.evaluated)
        self._sync()
        eval_s = time.perf_counter() - start
        self._put_back(saved, rng)
        save_s = self._measure_saves() if env.is_main else 0.0
        # every process plans from the same figures: the mean step and validation, the main process's saves
        step_s, eval_s, save_s = (distributed.all_reduce_sum(torch.tensor(
            [step_s / env.world_size, eval_s / env.world_size, save_s], dtype=torch.float64, device=self.device))).tolist()
        return step_s, eval_s, save_s

    def _measure_steps(self) -> float:
        """Seconds per training step on 'epoch 0's batches, after MEASURE_WARMUP untimed ones."""
        t, steps_per_epoch = self.cfg["train"], self.steps_per_epoch
        self.ctx.total_steps = steps_per_epoch
        warm = min(MEASURE_WARMUP, steps_per_epoch - 1)
        timed = min(MEASURE_STEPS, steps_per_epoch - warm)
        gen = batches.epoch_generator(t["seed"], 0, self.device)
        plan = self._plan(0, warm + timed)
        self.train_model.train()
        for i, (indices, offset) in enumerate(plan):
            if i == warm:
                self._sync()
                start = time.perf_counter()
            batch = self.task.train_batch(self.ctx, indices, offset, gen, self.batch_size, 0)
            self._step(self.train_model, batch, i + 1)
        self._sync()
        return (time.perf_counter() - start) / timed

    def _put_back(self, saved: dict[str, Any], rng: dict[str, Any]) -> None:
        """Weights, optimizer, schedule, loss scaler, EMA and random generators as `saved` and `rng` hold them."""
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.zero_grad(set_to_none=True)
        checkpoint.restore_rng_states(rng)

    def _measure_saves(self) -> float:
        scratch = self.run.checkpoints / "measure.pt.tmp"
        start = time.perf_counter()
        checkpoint.save(scratch, {**self._weights_state(0, 0), **self._optimization_state()})
        checkpoint.save(scratch, self._weights_state(0, 0))
        seconds = time.perf_counter() - start
        scratch.unlink()
        return seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """The epoch's running loss sum stays non-finite once any step's loss was, so checking it every
        train.log_every steps and at the epoch's end catches a divergence without making a GPU wait for
        every step's loss (a host sync per step). The weights too: a step can make them inf/nan while its
        own loss was finite (an epoch's last step, a huge weight decay). The failed epoch is never
        checkpointed."""
        if not torch.isfinite(loss_sum):
            raise DlcvError(f"loss became {loss_sum.item()} in epoch {epoch} (by step {step}); lower optim.lr "
                            "or use train.precision=fp32")
        params = [p for p in self.module.parameters() if p.is_floating_point()]
        if params and not torch.stack([torch.isfinite(p).all() for p in params]).all():
            name = next(n for n, p in self.module.named_parameters() if not torch.isfinite(p).all())
            raise DlcvError(f"weights became inf/nan in epoch {epoch} (by step {step}), {name} first, while the "
                            "loss was finite; lower optim.lr or optim.weight_decay")

    def _weights_state(self, epoch: int, step: int) -> dict[str, Any]:
        return {"task": self.task.name, "model": self.ctx.eval_module.state_dict(), "epoch": epoch, "step": step,
                "config": self.cfg, "inputs": self.inputs, "inference": self.ctx.numerics.record(),
                **({} if self.plan is None else {"epoch_plan": self.plan}), **self.task.checkpoint_meta()}

    def _optimization_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def _save_weights(self, path: Path, epoch: int) -> None:
        if self.env.is_main:
            checkpoint.save(path, self._weights_state(epoch, self.progress.step))

    def _save_last(self, epoch: int, wall: float, rows: list[dict[str, Any]]) -> None:
        rng = [checkpoint.rng_states()]
        if self.env.distributed:  # every rank's generator state, gathered on rank 0
            gathered = [None] * self.env.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.env.is_main:
            checkpoint.save(self.run.checkpoints / "last.pt", {
                **self._weights_state(epoch, self.progress.step), **self._optimization_state(),
                "best": self.progress.best, "rng": rng, "wall_time_s": wall, "rows": rows,
                # with EMA, "model" holds the averaged weights (what was validated and what predict uses)
                **({} if self.ema is None else {"train_model": self.module.state_dict(),
                                                "ema_steps": int(self.ema.n_averaged)})})
        distributed.barrier()

    @property
    def _maximise(self) -> bool:
        return self.task.monitor_mode == "max"

    def _better(self, value: float, best: float) -> bool:
        return value > best if self._maximise else value < best

    def _summary(self, status: str, row: dict[str, Any], metrics: dict[str, Any], wall: float) -> Summary:
        best = self.progress.best
        extras = {k: v for k, v in metrics.items() if not isinstance(v, (int, float))}
        scored = [r for r in self.run.rows if not math.isnan(r.get(self.task.monitor, math.nan))]
        best_row = (max if self._maximise else min)(scored, key=lambda r: r[self.task.monitor], default={})
        return Summary(task=self.task.name, status=status, monitor=self.task.monitor,
                       best={self.task.monitor: best if math.isfinite(best) else None, "epoch": best_row.get("epoch")},
                       final=row, seed=self.cfg["train"]["seed"], wall_time_s=round(wall, 2),
                       environment={**self.environment, **self.numerics.record(),
                                    **({} if self.plan is None else {"epoch_plan": self.plan})},
                       run_dir=str(self.run.path), extras=extras, inputs=self.inputs)
