"""Loading a state_dict into a module strictly, with an error that names what does not fit (used by the
model builders (weight files), the engine (resume) and the backbone export), and saving one as a plain file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dlcv.errors import DlcvError
from dlcv.fileio import torch_save


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with an error that lists what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(items):
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise DlcvError(f"{source} does not fit {type(model).__name__}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """A plain state_dict file (tensors only, on the CPU), written atomically."""
    torch_save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
