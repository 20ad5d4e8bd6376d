"""`train.epochs: auto`: the number of epochs whose whole schedule (warm-up, decay, validation) fits
`train.max_seconds`, planned once from a measurement of this run's own steps on this machine."""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Seconds kept aside for what the plan does not measure: snapshots, logging and the end's figures (PCA,
# t-SNE, mask grids), and the noise of a short measurement.
RESERVE_FRACTION, RESERVE_MIN_S = 0.05, 10.0


@dataclass(frozen=True)
class EpochPlan:
    epochs: int
    budget_s: float
    elapsed_s: float  # spent before the plan: start-up, decoding, the measurement itself
    step_s: float  # one training step, measured after warm-up
    steps_per_epoch: int
    eval_s: float  # one validation, measured
    save_s: float  # an epoch's checkpoints (last.pt and best.pt), measured: 0.4 s for BYOL's ResNet-50 pair
    evaluations: int
    reserve_s: float
    planned_end_s: float  # elapsed + training + validations: what the run expects to use of its budget
    fits: bool  # False: even one epoch overruns the budget (train.max_seconds then cuts the run)

    def to_json(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def evaluations(epochs: int, eval_every: int) -> int:
    """Validations in a run: every eval_every-th epoch, and always the last."""
    return epochs // eval_every + (1 if epochs % eval_every else 0)


def plan_epochs(budget_s: float, elapsed_s: float, step_s: float, steps_per_epoch: int, eval_s: float,
                eval_every: int, save_s: float = 0.0, max_epochs: int = 100_000) -> EpochPlan:
    """The most epochs E (at least 1) with elapsed + E epochs of steps and checkpoints + their validations +
    reserve <= budget."""
    reserve = max(RESERVE_MIN_S, RESERVE_FRACTION * budget_s)
    epoch_s = step_s * steps_per_epoch + save_s

    def end(e: int) -> float:
        return elapsed_s + e * epoch_s + evaluations(e, eval_every) * eval_s

    # end() grows with e, so the largest fitting e is found by bisection
    low, high = 0, max_epochs
    while low < high:
        mid = (low + high + 1) // 2
        if end(mid) + reserve <= budget_s:
            low = mid
        else:
            high = mid - 1
    epochs = max(1, low)
    return EpochPlan(epochs, budget_s, elapsed_s, step_s, steps_per_epoch, eval_s, save_s,
                     evaluations(epochs, eval_every), reserve, end(epochs), low >= 1)
