"""Train the cell/nucleus, mitochondria and ISG U-Nets on 2-D patches of labelled tomograms.

AdamW with a one-cycle learning-rate schedule, cross-entropy + soft Dice loss, flips, 90°
rotations, intensity/contrast jitter and noise, mixed precision (bfloat16) on CUDA. Inputs are
prepared exactly as the segmenter prepares them at inference (:func:`prepare_slices`, the
``percentile`` preprocessing), and the checkpoint records that, the task and the network's sizes,
so ``--model PATH`` and ``load_model(path)`` rebuild and use it unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OVERWRITE, ConfigError
from ..metrics import dice_from_counts
from ._common import (
    Progress,
    TrainResult,
    check_out,
    load_state,
    positive,
    resolve_train_device,
    restore_rng,
    rng_state,
    save_state,
    seed_everything,
    state_path,
)
from ._data import PatchSampler, TrainingVolume, target_from_labels, validation_slices

__all__ = ["UNetTrainConfig", "train_unet"]

logger = logging.getLogger(__name__)

_N_CLASSES = {"cell": 3, "mito": 2, "isg": 2}
_CLASS_NAMES = {"cell": ("background", "cytoplasm", "nucleus"), "mito": ("background", "mito"),
                "isg": ("background", "isg")}


JITTER = ("mild", "strong")


@dataclass(frozen=True)
class UNetTrainConfig:
    """Hyper-parameters of a U-Net training run (defaults suit the narrow bundled networks).

    Attributes
    ----------
    width : int
        Base channel count (the reference is 64; the bundled networks 16).
    epochs, steps_per_epoch : int
    batch_size : int
    patch : int
        Side of the square training patches (voxels).
    lr, weight_decay : float
        AdamW's peak learning rate (one-cycle schedule) and weight decay.
    dice_weight : float
        Weight of the soft Dice term added to the cross-entropy.
    val_slices : int
        Whole slices of the validation tomograms scored after each epoch.
    context : int
        Mitochondria only: 1 feeds slices z-1, z, z+1 as the network's 3 input channels (tubes
        are told from cytoplasm texture by their continuity across slices); 0 repeats slice z,
        as the reference does.
    jitter : str
        Intensity augmentation: ``"mild"`` (contrast × 0.75-1.25, brightness ±0.2) or
        ``"strong"`` (contrast × 0.4-2.5 log-uniform, brightness ±0.6: tomograms whose percentiles
        a capillary wall, beads or vacuum have moved).
    seed : int
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    """

    width: int = 16
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 8
    patch: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    val_slices: int = 16
    context: int = 0
    jitter: str = "mild"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("width", "epochs", "steps_per_epoch", "batch_size", "val_slices"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer")
        if self.patch < 16 or self.patch % 16:
            raise ConfigError(f"patch ({self.patch}) must be a multiple of 16")
        positive("lr", self.lr)
        if self.context not in (0, 1):
            raise ConfigError(f"context ({self.context}) must be 0 or 1")
        if self.jitter not in JITTER:
            raise ConfigError(f"jitter ({self.jitter!r}) must be one of {', '.join(JITTER)}")


def train_unet(task: str, train: Sequence[TrainingVolume], val: Sequence[TrainingVolume],
               out: str | Path, config: UNetTrainConfig = UNetTrainConfig(), *,
               resume: bool = False, overwrite: bool = False,
               progress: Progress | None = None) -> TrainResult:
    """Train a U-Net for ``task`` (``cell``, ``mito`` or ``isg``) and write its checkpoint.

    Parameters
    ----------
    task : str
    train, val : sequence of TrainingVolume
        Training and validation tomograms (see :func:`split_by_tomogram`); ``val`` may be empty,
        and then the last epoch's model is kept.
    out : path
        The checkpoint (the best epoch by mean foreground Dice on ``val``). The resume state is
        kept beside it (``out + ".state"``) while training and removed at the end.
    config : UNetTrainConfig
    resume : bool
        Continue from the state file of an interrupted run with the same configuration.
    overwrite : bool
        Replace an existing checkpoint.
    progress : callable, optional
        See :data:`Progress`.

    Returns
    -------
    TrainResult
    """
    import torch

    from ..models import ModelKind, build_unet, save_checkpoint

    if task not in _N_CLASSES:
        raise ConfigError(f"task {task!r} has no U-Net (cell, mito or isg)")
    if config.context and task != "mito":
        raise ConfigError(f"slice context is for the mitochondria network, not {task!r}")
    out = Path(out)
    check_out(out, resume, overwrite)
    device = resolve_train_device(config.device)
    rng = seed_everything(config.seed)
    kind = {"cell": ModelKind.CELL_NUCLEUS, "mito": ModelKind.MITO, "isg": ModelKind.ISG}[task]
    net = build_unet(kind, width=config.width).to(device)
    total_steps = config.epochs * config.steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps,
                                                pct_start=0.15)
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    start_epoch = 0
    if resume:
        state = load_state(out)
        if state.get("config") != _config_record(task, config):
            raise ConfigError(f"{state_path(out)} was written with another configuration; "
                              f"resume with the same options or start afresh with {OVERWRITE}")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        restore_rng(rng, state["rng"])
        history, best = list(state["history"]), dict(state["best"])
        start_epoch = int(state["epoch"])
        logger.info("resuming %s training at epoch %d of %d", task, start_epoch + 1, config.epochs)
    sampler = PatchSampler(train, config.patch, rng, context=config.context)
    val_set = validation_slices(val, config.val_slices, config.context) if val else []
    meta = _meta(task, config, train, val)
    in_channels = 3 if task == "mito" else 1
    use_amp = device.startswith("cuda")
    for epoch in range(start_epoch, config.epochs):
        net.train()
        t0, losses = time.perf_counter(), []
        for step in range(config.steps_per_epoch):
            xb, yb = _batch(sampler, config.batch_size, task, in_channels, rng, config.jitter)
            x, y = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = net(x)
            loss = _loss(logits.float(), y, config.dice_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(epoch + 1, step + 1, config.steps_per_epoch,
                         {"loss": losses[-1], "lr": float(sched.get_last_lr()[0])})
        entry: dict[str, float] = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                                   "seconds": time.perf_counter() - t0}
        if val_set:
            entry.update(_validate(net, val_set, task, in_channels, device))
        history.append(entry)
        # The best epoch by validation Dice; without validation, the last epoch is the model.
        if not val_set or not best or entry["val_dice"] > best["val_dice"]:
            best = dict(entry)
            save_checkpoint(out, net, {**meta, "epoch": epoch + 1, "metrics": entry})
        logger.info("%s epoch %d/%d: %s", task, epoch + 1, config.epochs,
                    ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch"))
        if progress is not None:
            progress(epoch + 1, config.steps_per_epoch, config.steps_per_epoch,
                     {k: v for k, v in entry.items() if k.startswith("val_")})
        save_state(out, {"config": _config_record(task, config), "model": net.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng": rng_state(rng), "history": history, "best": best,
                         "epoch": epoch + 1})
    state_path(out).unlink(missing_ok=True)
    return TrainResult(out, history, best, [out])


def _config_record(task: str, config: UNetTrainConfig) -> dict[str, Any]:
    return {"task": task, **{k: v for k, v in asdict(config).items() if k != "device"}}


def _meta(task: str, config: UNetTrainConfig, train: Sequence[TrainingVolume],
          val: Sequence[TrainingVolume]) -> dict[str, Any]:
    from .._version import __version__

    return {
        "task": task,
        "classes": list(_CLASS_NAMES[task]),
        "preprocessing": {"name": "percentile", "percentiles": [0.5, 99.5], "resize": None,
                          "context": config.context},
        "trained_by": f"sxtdask {__version__} (sxtdask train)",
        "train_data": [v.name for v in train],
        "val_data": [v.name for v in val],
        "voxel_size_nm": list(train[0].voxel_size_nm) if train else None,
        "config": _config_record(task, config),
    }


def _batch(sampler: PatchSampler, n: int, task: str, in_channels: int,
           rng: np.random.Generator, jitter: str = "mild") -> tuple[np.ndarray, np.ndarray]:
    from ..segmenters import Task, prepare_slices

    xs, ys = [], []
    t = Task.CELL if task == "cell" else Task.MITO if task == "mito" else Task.ISG
    for image, labels, stats in sampler.batch(n):
        stack = image if image.ndim == 3 else image[None]  # (C, p, p): slice context or one slice
        x = prepare_slices(stack, stats, task=t, preprocessing="percentile", in_channels=1)[:, 0]
        y = target_from_labels(task, labels)
        x, y = _augment(x, y, rng, jitter)
        xs.append(x if len(x) == in_channels else np.repeat(x, in_channels, axis=0))
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, jitter: str = "mild",
             ) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90° rotations, contrast/brightness jitter and Gaussian noise (image only); ``x`` is
    (C, Y, X), every channel moved with the labels. ``jitter`` as :class:`UNetTrainConfig`'s.
    """
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[..., ::-1], y[:, ::-1]
    if jitter == "strong":
        contrast = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
        brightness = rng.uniform(-0.6, 0.6)
    else:
        contrast = rng.uniform(0.75, 1.25)
        brightness = rng.uniform(-0.2, 0.2)
    x = x * contrast + brightness
    if rng.random() < 0.5:
        x = x + rng.normal(0.0, rng.uniform(0.02, 0.15), size=x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def _loss(logits: Any, target: Any, dice_weight: float) -> Any:
    """Cross-entropy + ``dice_weight`` × (1 − mean soft Dice over the foreground classes)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    if dice_weight == 0:
        return ce
    prob = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice.mean())


def _validate(net: Any, val_set: list[tuple[np.ndarray, np.ndarray, Any]], task: str,
              in_channels: int, device: str) -> dict[str, float]:
    """Dice per foreground class (and cell = any foreground, for ``cell``) over whole slices,
    against the training target (for ISGs: interiors with touching rims removed, so the best
    epoch is the one that separates granules, not the one that merges them least wrongly).
    """
    import torch

    from ..segmenters import Task, pad_reflect, prepare_slices

    t = Task.CELL if task == "cell" else Task.MITO if task == "mito" else Task.ISG
    n_classes = _N_CLASSES[task]
    inter = np.zeros(n_classes + 1)
    total = np.zeros(n_classes + 1)
    net.eval()
    with torch.inference_mode():
        for image, labels, stats in val_set:
            stack = image if image.ndim == 3 else image[None]
            x = prepare_slices(stack, stats, task=t, preprocessing="percentile", in_channels=1)
            x = x[:, 0][None]  # (1, C, Y, X)
            if x.shape[1] != in_channels:
                x = np.repeat(x, in_channels, axis=1)
            size = image.shape[-2:]
            xt = pad_reflect(torch.from_numpy(x).to(device), tuple(-n % 16 for n in size))
            pred = net(xt).argmax(dim=1)[0, : size[0], : size[1]].cpu().numpy()
            truth = target_from_labels(task, labels)  # what the network is trained to output
            for c in range(1, n_classes):
                inter[c] += np.sum((pred == c) & (truth == c))
                total[c] += np.sum(pred == c) + np.sum(truth == c)
            inter[n_classes] += np.sum((pred > 0) & (truth > 0))
            total[n_classes] += np.sum(pred > 0) + np.sum(truth > 0)
    dice = [dice_from_counts(i, t) for i, t in zip(inter, total, strict=True)]  # 1.0 where both are empty
    names = _CLASS_NAMES[task]
    out = {f"val_dice_{names[c]}": float(dice[c]) for c in range(1, n_classes)}
    if task == "cell":
        out["val_dice_cell"] = float(dice[n_classes])
    out["val_dice"] = float(np.mean([dice[c] for c in range(1, n_classes)]))
    net.train()
    return out
