"""What every trainer shares: seeding, the device, the resume state file and the result."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_file, check_new_path
from ..errors import OVERWRITE, ConfigError, InputError, option

__all__ = ["Progress", "TrainResult", "resolve_train_device", "seed_everything", "state_path"]

logger = logging.getLogger(__name__)

#: ``progress(epoch, step, steps_per_epoch, info)``: called after every optimiser step (``info``
#: holds ``loss`` and ``lr``) and after each validation (``step == steps``, ``info`` holds the
#: validation metrics under ``val_*``).
Progress = Callable[[int, int, int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    checkpoint : Path
        The best model (by the validation metric; the last one without validation).
    history : list of dict
        One entry per epoch: ``epoch``, ``loss`` and the validation metrics.
    best : dict
        The best epoch's entry.
    files : list of Path
        Every checkpoint written (best, final, periodic).
    """

    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; return the generator the samplers draw from."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def resolve_train_device(device: str) -> str:
    from ..models import resolve_device

    return resolve_device(device)


def state_path(out: Path) -> Path:
    """The resume file beside a checkpoint (optimiser, schedule, epoch and random states)."""
    return out.with_name(out.name + ".state")


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a checkpoint unless resuming or overwriting; the folder must exist and be
    writable (:func:`sxtdask._fs.check_new_path`).
    """
    if resume:
        check_new_path(out, True)
        if not state_path(out).is_file():
            raise InputError(f"{out}: nothing to resume (no {state_path(out).name} beside it)")
        return
    check_new_path(out, overwrite, exists=_EXISTS)


_EXISTS = ("{subject} exists; pass " + OVERWRITE + " to replace it or "
           + option("resume=True", "--resume") + " to continue")


def save_state(out: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically (a weights-only loadable dict of tensors and numbers)."""
    import torch

    with atomic_file(state_path(out)) as tmp:
        torch.save(state, tmp)


def load_state(out: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(state_path(out), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"{state_path(out)}: cannot resume from it ({exc})") from None


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Random states as weights-only-loadable values (the torch state as a uint8 tensor)."""
    import torch

    bit = rng.bit_generator.state
    return {"torch": torch.get_rng_state(),
            "numpy": {"state": str(bit["state"]["state"]), "inc": str(bit["state"]["inc"]),
                      "has_uint32": int(bit["has_uint32"]), "uinteger": int(bit["uinteger"])}}


def restore_rng(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(saved["torch"])
    n = saved["numpy"]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(n["state"]), "inc": int(n["inc"])},
        "has_uint32": int(n["has_uint32"]), "uinteger": int(n["uinteger"]),
    }


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} ({value}) must be positive")
