"""What the 3-D trainers share: whole labelled volumes in memory, 3-D blocks, the masked losses
and Dice, and the epoch loop with its schedule, early stop and resume state.

Both 3-D networks learn the cell task (0 exterior, 1 cytoplasm, 2 nucleus) from whole tomograms
held in memory (a 3-D tile needs whole neighbourhoods, and the cascade's stage 2 learns from
stage 1's fused probabilities of the whole volume). Labels are mapped onto the classes first
(:func:`._data.class_target`): unannotated voxels become :data:`._data.IGNORE` and are left out of
every loss and every validation figure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OVERWRITE, ConfigError, OutputError, option
from ..metrics import dice_from_counts
from ..stats import IntensityStats
from ._common import Progress, check_out, state_path
from ._data import IGNORE, LabelMap, TrainingVolume, class_target, ignore_label_of, parse_label_map

__all__ = ["CELL_CLASSES", "BlockSampler", "Labelled", "augment_block", "bin_mode", "ce_dice_loss",
           "check_run_out", "dice_counts", "dice_metrics", "load_labelled",
           "masked_cross_entropy"]

logger = logging.getLogger(__name__)

#: The cell task's classes, index order, and the label values its checkpoints write.
CELL_CLASSES = ("exterior", "cytoplasm", "nucleus")
CELL_VALUES = (0, 1, 2)
#: Uniform draws of a block before one is centred on an annotated voxel.
_TRIES = 8


# --------------------------------------------------------------------------- data


def check_run_out(out: str | Path, resume: bool, overwrite: bool) -> None:
    """:func:`._common.check_out`, and an interrupted run's state beside ``out`` is not started
    afresh over without ``overwrite`` (the 3-D trainers write ``out`` late: the cascade only in
    stage 2).
    """
    out = Path(out)
    check_out(out, resume, overwrite)
    if not resume and not overwrite and state_path(out).is_file():
        raise OutputError(f"{out}: an interrupted run's {state_path(out).name} is beside it; "
                          f"pass {option('resume=True', '--resume')} to continue it or "
                          f"{OVERWRITE} to start afresh")


@dataclass
class Labelled:
    """One training tomogram in memory.

    Attributes
    ----------
    name : str
    image : (Z, Y, X) float32 ndarray
        The raw intensities.
    target : (Z, Y, X) int8 ndarray
        Class per voxel, ``IGNORE`` (−1) where unannotated.
    stats : IntensityStats
        Whole-volume statistics of ``image`` (what the segmenters normalise with).
    voxel_size_nm : (z, y, x)
    """

    name: str
    image: np.ndarray
    target: np.ndarray
    stats: IntensityStats
    voxel_size_nm: tuple[float, float, float]


def label_map_of(text: str | None, n_classes: int) -> LabelMap | None:
    return None if text is None else parse_label_map(text, n_classes)


def load_labelled(volumes: Sequence[TrainingVolume], n_classes: int, *,
                  label_map: str | None = None, ignore_label: int | None = None,
                  ) -> list[Labelled]:
    """Read each tomogram whole and map its labels onto the classes.

    The ignore label is ``ignore_label`` or, for label files that name their materials, the
    material called ``ignore`` (:func:`._data.ignore_label_of`).

    Raises
    ------
    InputError
        A label value outside the classes and the map, or a tomogram without an annotated voxel.
    """
    mapping = label_map_of(label_map, n_classes)
    out = []
    for v in volumes:
        labels = np.asarray(v.labels[:])
        ignore = ignore_label_of(v, ignore_label)
        target = class_target(labels, n_classes, label_map=mapping, ignore_label=ignore,
                              source=v.name)
        image = np.asarray(v.image[:], dtype=np.float32)
        known = float(np.mean(target != IGNORE))
        logger.info("%s: %s voxels, %.1f%% annotated", v.name, "×".join(map(str, image.shape)),
                    100 * known)
        out.append(Labelled(v.name, image, target, v.stats, v.voxel_size_nm))
    return out


def bin_mode(target: np.ndarray, factor: int, n_classes: int) -> np.ndarray:
    """The class of each ``factor``³ bin: the most frequent among its annotated voxels (ties to the
    lower class), ``IGNORE`` where none is annotated; the last bins of odd sizes take what exists
    (the shape of :func:`sxtdask.io.bin_mean`'s result).
    """
    if factor == 1:
        return target
    pad = [(0, -n % factor) for n in target.shape]
    t = np.pad(target, pad, constant_values=IGNORE)
    z, y, x = (n // factor for n in t.shape)
    r = t.reshape(z, factor, y, factor, x, factor)
    counts = np.stack([(r == c).sum(axis=(1, 3, 5)) for c in range(n_classes)])
    out = counts.argmax(axis=0).astype(np.int8)
    out[counts.sum(axis=0) == 0] = IGNORE
    return out


# --------------------------------------------------------------------------- blocks


def _crop(a: np.ndarray, origin: Sequence[int], size: int, fill: float) -> np.ndarray:
    """The ``size``³ block at ``origin`` of the last three axes, padded with ``fill`` after the
    end where the volume is shorter (as the segmenters zero-pad their tiles).
    """
    box: tuple[Any, ...] = (Ellipsis, *(slice(o, o + size) for o in origin))
    part = a[box]
    pad = [(0, 0)] * (a.ndim - 3) + [(0, size - n) for n in part.shape[-3:]]
    if any(p for _, p in pad):
        part = np.pad(part, pad, constant_values=fill)
    return np.ascontiguousarray(part)


class BlockSampler:
    """Random blocks (input (C, s, s, s), target (s, s, s)) holding at least one annotated voxel.

    The volume is drawn in proportion to its annotated voxels. A share ``foreground`` of the
    blocks is centred (± a quarter block) on a voxel of a foreground class drawn uniformly among
    those the volume holds, so that small classes (the nucleus) are seen; the others are drawn
    uniformly, a block with no annotated voxel is redrawn, and after a few misses one is centred
    on an annotated voxel.

    Parameters
    ----------
    volumes : sequence of (input (C, Z, Y, X), target (Z, Y, X))
    size : int
        Block side; volumes shorter than it are padded after their end (input 0, target
        ``IGNORE``), as the segmenters pad their tiles.
    rng : numpy.random.Generator
    foreground : float
        Share of class-centred blocks (0: all uniform, NCXT's way).
    """

    def __init__(self, volumes: Sequence[tuple[np.ndarray, np.ndarray]], size: int,
                 rng: np.random.Generator, foreground: float = 0.0) -> None:
        self.volumes, self.size, self.rng = list(volumes), int(size), rng
        self.foreground = float(foreground)
        known = np.array([np.count_nonzero(t != IGNORE) for _, t in self.volumes], dtype=float)
        self.p = known / known.sum()
        self._where: dict[tuple[int, int], np.ndarray] = {}

    def _voxels(self, i: int, c: int) -> np.ndarray:
        """Flat indices of class ``c`` (``IGNORE``: of every annotated voxel) in volume ``i``."""
        if (i, c) not in self._where:
            t = self.volumes[i][1]
            found = np.flatnonzero(t != IGNORE if c == IGNORE else t == c)
            self._where[(i, c)] = found.astype(np.int32 if t.size < 2**31 else np.int64)
        return self._where[(i, c)]

    def _present(self, i: int) -> list[int]:
        """The foreground classes volume ``i`` holds."""
        if (i, -2) not in self._where:
            top = int(self.volumes[i][1].max())
            self._where[(i, -2)] = np.array([c for c in range(1, top + 1)
                                             if len(self._voxels(i, c))], dtype=np.int64)
        return [int(c) for c in self._where[(i, -2)]]

    def _centred(self, i: int, c: int, jitter: int) -> list[int]:
        t = self.volumes[i][1]
        where = self._voxels(i, c)
        centre = np.unravel_index(int(where[int(self.rng.integers(len(where)))]), t.shape)
        return [min(max(int(k) - self.size // 2 + int(self.rng.integers(-jitter, jitter + 1)), 0),
                    max(n - self.size, 0)) for k, n in zip(centre, t.shape, strict=True)]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        rng, size = self.rng, self.size
        i = int(rng.choice(len(self.volumes), p=self.p))
        x, t = self.volumes[i]
        if self.foreground > 0 and rng.random() < self.foreground:
            present = self._present(i)
            if present:
                origin = self._centred(i, present[int(rng.integers(len(present)))], size // 4)
                return _crop(x, origin, size, 0.0), _crop(t, origin, size, IGNORE)
        for attempt in range(_TRIES):
            if attempt < _TRIES - 1:
                origin = [int(rng.integers(0, max(n - size, 0) + 1)) for n in t.shape]
            else:
                origin = self._centred(i, IGNORE, 0)
            tb = _crop(t, origin, size, IGNORE)
            if (tb != IGNORE).any():
                break
        return _crop(x, origin, size, 0.0), tb


def augment_block(x: np.ndarray, t: np.ndarray, rng: np.random.Generator, *,
                  scale: tuple[float, float] = (0.8, 1.25), shift: float = 0.2,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Random flips per axis, a 90° rotation in the (y, x) plane, and an intensity jitter of
    channel 0 (the image): × a log-uniform factor in ``scale``, + a shift uniform in ±``shift`` ×
    the block's standard deviation (so it means the same for any preprocessing). ``x`` is
    (C, s, s, s), ``t`` (s, s, s); both move together.
    """
    for axis in range(3):
        if rng.random() < 0.5:
            x, t = np.flip(x, axis + 1), np.flip(t, axis)
    k = int(rng.integers(4))
    x, t = np.rot90(x, k, axes=(-2, -1)), np.rot90(t, k, axes=(-2, -1))
    x = np.array(x, dtype=np.float32)
    gain = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    offset = float(rng.uniform(-shift, shift)) * float(x[0].std())
    x[0] = x[0] * np.float32(gain) + np.float32(offset)
    return x, np.ascontiguousarray(t)


# --------------------------------------------------------------------------- losses, Dice


def masked_cross_entropy(logits: Any, target: Any, known: Any) -> Any:
    """Cross-entropy averaged over the annotated voxels only (``known``); whatever ``target``
    holds elsewhere does not count.
    """
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target.clamp(0, logits.shape[1] - 1).long(), reduction="none")
    w = known.to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp(min=1.0)


def ce_dice_loss(logits: Any, target: Any, known: Any) -> Any:
    """NCXT's loss: cross-entropy + (1 − mean soft Dice over every class, background included),
    both over the annotated voxels only (``known``).

    ``logits`` (N, K, ...), ``target`` (N, ...) class indices, ``known`` (N, ...) bool.
    """
    import torch.nn.functional as F

    k = logits.shape[1]
    tgt = target.clamp(0, k - 1).long()
    w = known.to(logits.dtype).unsqueeze(1)
    prob = logits.softmax(dim=1) * w
    onehot = F.one_hot(tgt, k).movedim(-1, 1).to(logits.dtype) * w
    dims = (0, *range(2, logits.ndim))
    inter = (prob * onehot).sum(dim=dims)
    denom = prob.sum(dim=dims) + onehot.sum(dim=dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return masked_cross_entropy(logits, target, known) + (1 - dice.mean())


def dice_counts(pred: np.ndarray, target: np.ndarray, known: np.ndarray, n_classes: int,
                ) -> np.ndarray:
    """(2, K + 1) counts over the annotated voxels: per class, then for "cell" (any class > 0),
    the intersections (row 0) and the sums of both sizes (row 1).
    """
    p, t = pred[known], target[known]
    out = np.zeros((2, n_classes + 1), np.int64)
    for c in range(n_classes):
        out[0, c] = np.count_nonzero((p == c) & (t == c))
        out[1, c] = np.count_nonzero(p == c) + np.count_nonzero(t == c)
    out[0, n_classes] = np.count_nonzero((p > 0) & (t > 0))
    out[1, n_classes] = np.count_nonzero(p > 0) + np.count_nonzero(t > 0)
    return out


def dice_metrics(counts: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """``val_dice_<class>`` for every class, ``val_dice_cell`` (any foreground) and ``val_dice``,
    the mean over the foreground classes (the figure the best epoch is chosen by).
    """
    n = len(classes)
    dice = [dice_from_counts(int(i), int(s)) for i, s in zip(counts[0], counts[1], strict=True)]
    out = {f"val_dice_{name}": float(dice[c]) for c, name in enumerate(classes)}
    out["val_dice_cell"] = float(dice[n])
    out["val_dice"] = float(np.mean(dice[1:n]))
    return out


# --------------------------------------------------------------------------- the epoch loop


@dataclass
class Fit:
    """One network's training: ``epochs`` of ``steps`` optimiser steps on ``batch()``.

    Attributes
    ----------
    stage : int
        0 for a one-network run, 1 or 2 for the cascade's stages (told to ``progress``).
    forward : callable
        Input tensor → logits.
    loss : callable
        ``(logits, target, known) → loss``.
    batch : callable
        () → (input (N, C, ...) float32, target (N, ...) int8 with ``IGNORE``).
    validate : callable, optional
        () → ``val_*`` metrics (:func:`dice_metrics`).
    patience : int
        Stop after this many epochs without a better ``val_dice`` (0: never).
    plateau : (factor, window), optional
        × ``factor`` on the learning rate whenever the ``window``-epoch moving mean of the
        training loss stops falling (NCXT's schedule).
    after_step : callable, optional
        Called after each optimiser step (a per-step schedule).
    """

    stage: int
    net: Any
    opt: Any
    forward: Callable[[Any], Any]
    loss: Callable[[Any, Any, Any], Any]
    batch: Callable[[], tuple[np.ndarray, np.ndarray]]
    epochs: int
    steps: int
    device: str
    validate: Callable[[], dict[str, float]] | None = None
    patience: int = 0
    plateau: tuple[float, int] | None = None
    after_step: Callable[[], None] | None = None


def stopped(history: Sequence[dict[str, float]], patience: int) -> bool:
    """Whether ``patience`` epochs have passed since the best ``val_dice``."""
    scored = [h["val_dice"] for h in history if "val_dice" in h]
    if patience <= 0 or not scored:
        return False
    return len(scored) - 1 - int(np.argmax(scored)) >= patience


def improved(history: Sequence[dict[str, float]]) -> bool:
    """Whether the last epoch is the best so far (always, without validation)."""
    last = history[-1]
    if "val_dice" not in last:
        return True
    return all(last["val_dice"] > h["val_dice"] for h in history[:-1])


def run_epochs(fit: Fit, history: list[dict[str, float]],
               on_epoch: Callable[[dict[str, float], bool], None],
               progress: Progress | None = None) -> None:
    """Run ``fit``'s remaining epochs (``len(history)`` are done), calling ``on_epoch(entry,
    best)`` after each (the caller writes checkpoints and the resume state there).
    """
    import torch

    tag = {"stage": float(fit.stage)} if fit.stage else {}
    for epoch in range(len(history), fit.epochs):
        if stopped(history, fit.patience):
            logger.info("early stop: %d epochs without a better validation Dice", fit.patience)
            break
        fit.net.train()
        t0, losses = time.perf_counter(), []
        for step in range(fit.steps):
            xb, yb = fit.batch()
            x = torch.from_numpy(xb).to(fit.device)
            y = torch.from_numpy(yb).to(fit.device).long()
            loss = fit.loss(fit.forward(x), y, y != IGNORE)
            fit.opt.zero_grad(set_to_none=True)
            loss.backward()
            fit.opt.step()
            if fit.after_step is not None:
                fit.after_step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(epoch + 1, step + 1, fit.steps,
                         {"loss": losses[-1], "lr": _lr(fit.opt), **tag})
        entry: dict[str, float] = {**tag, "epoch": epoch + 1, "loss": float(np.mean(losses)),
                                   "lr": _lr(fit.opt), "seconds": time.perf_counter() - t0}
        if fit.validate is not None:
            entry.update(fit.validate())
        history.append(entry)
        if fit.plateau is not None:
            _plateau(fit.opt, history, *fit.plateau)
        logger.info("%sepoch %d/%d: %s", f"stage {fit.stage} " if fit.stage else "", epoch + 1,
                    fit.epochs, ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                                          if k not in ("epoch", "stage")))
        on_epoch(entry, improved(history))
        if progress is not None:
            progress(epoch + 1, fit.steps, fit.steps,
                     {**{k: v for k, v in entry.items() if k.startswith("val_")}, **tag})


def _lr(opt: Any) -> float:
    return float(opt.param_groups[0]["lr"])


def _plateau(opt: Any, history: Sequence[dict[str, float]], factor: float, window: int) -> None:
    """× ``factor`` when the moving mean of the last ``window`` epochs' losses is not below the
    previous epoch's moving mean.
    """
    losses = [h["loss"] for h in history]
    if len(losses) < 2:
        return
    now = float(np.mean(losses[-window:]))
    before = float(np.mean(losses[-window - 1:-1]))
    if now >= before:
        for group in opt.param_groups:
            group["lr"] *= factor
        logger.info("learning rate × %g → %.3g (the %d-epoch mean loss stopped falling)", factor,
                    _lr(opt), window)


def predict_blocks(forward: Callable[[Any], Any], blocks: Sequence[np.ndarray], device: str,
                   batch_size: int) -> list[np.ndarray]:
    """Class maps (argmax of the logits) of ``blocks`` (each (C, s, s, s)), in eval mode."""
    import torch

    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(blocks), batch_size):
            x = torch.from_numpy(np.stack(blocks[i:i + batch_size])).to(device)
            out.extend(forward(x).argmax(dim=1).cpu().numpy())
    return out


def positive_int(name: str, value: object, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} ({value!r}) must be an integer of at least {low}")


def training_record(volumes: Sequence[Labelled] | Sequence[TrainingVolume]) -> list[str]:
    return [v.name for v in volumes]
