"""Train a Biomedisa 3-D U-Net for the cell task (``sxtdask train --arch unet3d``).

Biomedisa's settings (REFERENCE-3D §1) are the defaults, but for the filters (8-16-32-64 here
for CPUs; Biomedisa's 32-64-128-256-512):

- every tomogram is resized to the grid (``scale``, 256³, each reduced to ``scale − (scale −
  patch) % 32``) with the predictor's own resize (:mod:`sxtdask.segmenters._resize`: area when an
  axis shrinks, else cubic) and normalised as it normalises (min–max, then standardised to
  ``mu``, ``sig``, clipped to [0, 1]); ``mu``, ``sig`` are the mean and standard deviation of the
  first training image after its min–max step, and go into the checkpoint;
- labels are resized class by class, the inverse of the predictor's rule: each class's binary
  mask is resized and a grid voxel takes the class where it reaches ½, later classes overwriting
  earlier ones;
- 64³ patches at stride 32 over every training grid, shuffled each epoch; categorical
  cross-entropy; SGD (lr 0.01, momentum 0.9, Nesterov), lr / (1 + 1e-6 · step); no augmentation.

Decided here where Biomedisa is silent: unannotated voxels (the ignore label) are resized as a
mask too; a grid voxel is annotated where any annotated voxel reaches it, and its class is decided
among the annotated voxels (the ½ threshold on the class's share of them), so dense labels give
exactly Biomedisa's rule and sparse ones are not lost to the resize. Patches without an annotated
voxel are dropped. Validation predicts each validation grid as the predictor does (softmax
summed over the patches, argmax) and scores the Dice per class on the grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OVERWRITE, ConfigError
from ._common import (
    Progress,
    TrainResult,
    load_state,
    positive,
    resolve_train_device,
    restore_rng,
    rng_state,
    save_state,
    seed_everything,
    state_path,
)
from ._data import IGNORE, TrainingVolume
from ._train3d import (
    CELL_CLASSES,
    CELL_VALUES,
    Fit,
    Labelled,
    check_run_out,
    dice_counts,
    dice_metrics,
    label_map_of,
    load_labelled,
    masked_cross_entropy,
    positive_int,
    run_epochs,
)

__all__ = ["STRIDE", "UNet3DTrainConfig", "train_unet3d"]

logger = logging.getLogger(__name__)

#: Biomedisa's patch stride (the predictor's too: the grid depends on it).
STRIDE = 32


@dataclass(frozen=True)
class UNet3DTrainConfig:
    """Hyper-parameters of a Biomedisa U-Net training run.

    Attributes
    ----------
    filters : tuple of int
        Encoder levels and the bottleneck (Biomedisa: 32-64-128-256-512).
    resnet : bool
        Biomedisa's ResNet blocks.
    scale : (z, y, x)
        The grid every tomogram is resized to (Biomedisa: 256³).
    patch : int
        Patch side (Biomedisa: 64); a multiple of ``2**(len(filters) − 1)``, at least the stride.
    epochs, batch_size : int
        Biomedisa: 200, 24.
    steps_per_epoch : int, optional
        At most this many steps an epoch (default: one pass over every patch).
    lr, momentum, decay : float
        SGD's (Nesterov) and the decay of lr / (1 + decay · step).
    normalize : bool
        Standardise every grid to the first training image's ``mu``, ``sig``.
    patience : int
        Early stop after this many epochs without a better validation Dice (0: never).
    label_map, ignore_label : as :class:`CascadeTrainConfig`'s
    seed : int
    device : str
    """

    filters: tuple[int, ...] = (8, 16, 32, 64)
    resnet: bool = False
    scale: tuple[int, int, int] = (256, 256, 256)
    patch: int = 64
    epochs: int = 200
    batch_size: int = 24
    steps_per_epoch: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    decay: float = 1e-6
    normalize: bool = True
    patience: int = 0
    label_map: str | None = None
    ignore_label: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        filters = tuple(self.filters)
        if not 2 <= len(filters) <= 8 or any(isinstance(f, bool) or not isinstance(f, int)
                                             or not 1 <= f <= 4096 for f in filters):
            raise ConfigError(f"filters {self.filters!r} must list 2 to 8 integers from 1 to 4096")
        object.__setattr__(self, "filters", filters)
        object.__setattr__(self, "scale", tuple(self.scale))
        for name in ("patch", "epochs", "batch_size"):
            positive_int(name, getattr(self, name))
        if self.steps_per_epoch is not None:
            positive_int("steps_per_epoch", self.steps_per_epoch)
        positive_int("patience", self.patience, 0)
        positive("lr", self.lr)
        if not 0 <= self.momentum < 1 or self.decay < 0:
            raise ConfigError(f"momentum ({self.momentum}) must be in [0, 1) and decay "
                              f"({self.decay}) not negative")
        multiple = 2 ** (len(filters) - 1)
        if self.patch % multiple:
            raise ConfigError(f"patch ({self.patch}) must be a multiple of {multiple} for "
                              f"{len(filters)} filter levels")
        if self.patch < STRIDE:
            raise ConfigError(f"patch ({self.patch}) must be at least the stride ({STRIDE}): "
                              "smaller patches would leave gaps in the predicted grid")
        if len(self.scale) != 3:
            raise ConfigError(f"scale {self.scale!r} must be three sizes (z, y, x)")
        for s in self.scale:
            positive_int("scale", s)
        if self.ignore_label is not None:
            positive_int("ignore_label", self.ignore_label, 0)
        self.grid  # noqa: B018 - a grid smaller than the patch is refused now
        label_map_of(self.label_map, len(CELL_CLASSES))

    @property
    def grid(self) -> tuple[int, int, int]:
        from ..segmenters import grid_shape

        return grid_shape(self.scale, (self.patch,) * 3, STRIDE)

    def record(self) -> dict[str, Any]:
        """Every setting that shapes the result (the resume check), without the device."""
        rec = {k: v for k, v in asdict(self).items() if k != "device"}
        rec.update(filters=list(self.filters), scale=list(self.scale))
        return {"arch": "unet3d", "task": "cell", **rec}


@dataclass
class _Grid:
    """A tomogram on the grid: the normalised image and the class target (``IGNORE``)."""

    name: str
    image: np.ndarray
    target: np.ndarray


def train_unet3d(train: Sequence[TrainingVolume], val: Sequence[TrainingVolume],
                 out: str | Path, config: UNet3DTrainConfig = UNet3DTrainConfig(), *,
                 resume: bool = False, overwrite: bool = False,
                 progress: Progress | None = None) -> TrainResult:
    """Train a Biomedisa U-Net for the cell task and write its checkpoint.

    Parameters
    ----------
    train, val : sequence of TrainingVolume
        ``val`` may be empty (then the last epoch is kept).
    out : path
        An sxtdask unet3d checkpoint (``UNet3DSegmenter().load_model(path)``, ``segment --method
        unet3d --model PATH``), written at each better epoch; ``out + ".state"`` while training.
    config : UNet3DTrainConfig
    resume, overwrite : bool
    progress : callable, optional

    Returns
    -------
    TrainResult
    """
    import torch

    from ..models import BiomedisaMeta, BiomedisaUNet3D, biomedisa_checkpoint_meta, save_checkpoint

    out = Path(out)
    check_run_out(out, resume, overwrite)
    device = resolve_train_device(config.device)
    rng = seed_everything(config.seed)
    n = len(CELL_CLASSES)
    net = BiomedisaUNet3D(config.filters, 1, n, config.resnet).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                          nesterov=config.momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + config.decay * step))
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    if resume:
        saved = load_state(out)
        if saved.get("config") != config.record():
            raise ConfigError(f"{state_path(out)} was written with another configuration; "
                              f"resume with the same options or start afresh with {OVERWRITE}")
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        restore_rng(rng, saved["rng"])
        history, best = list(saved["history"]), dict(saved["best"])
        logger.info("resuming unet3d training after epoch %d", len(history))
    train_data = load_labelled(train, n, label_map=config.label_map,
                               ignore_label=config.ignore_label)
    val_data = load_labelled(val, n, label_map=config.label_map, ignore_label=config.ignore_label)
    mu, sig = _first_image_moments(train_data[0], config.grid)
    grids = [_to_grid(v, config, mu, sig) for v in train_data]
    vgrids = [_to_grid(v, config, mu, sig) for v in val_data]
    patches = [(i, s) for i, g in enumerate(grids) for s in _annotated_patches(g, config.patch)]
    if not patches:
        raise ConfigError("no training patch holds an annotated voxel")
    info = BiomedisaMeta(labels=CELL_VALUES, scale=config.scale, normalize=config.normalize,
                         mu=mu, sig=sig, patch_size=(config.patch,) * 3, materials=CELL_CLASSES)
    meta = {"task": "cell", **biomedisa_checkpoint_meta(net, info), **_record(config, train, val)}
    steps = min(math.ceil(len(patches) / config.batch_size),
                config.steps_per_epoch or len(patches))
    def refresh() -> None:
        precise_batchnorm(net, grids, patches, config, device)

    fit = Fit(0, net, opt, lambda x: net(x, logits=True), masked_cross_entropy,
              _Batches(grids, patches, config, rng, steps), config.epochs, steps, device,
              _validator(net, vgrids, config, device, refresh) if vgrids else None,
              config.patience, None, sched.step)

    def after(entry: dict[str, float], improved: bool) -> None:
        if not vgrids:
            refresh()
        if improved:
            best.clear()
            best.update(entry)
            save_checkpoint(out, net, {**meta, "epoch": int(entry["epoch"]), "metrics": entry})
        save_state(out, {"config": config.record(), "model": net.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng": rng_state(rng), "history": history, "best": best})

    run_epochs(fit, history, after, progress)
    state_path(out).unlink(missing_ok=True)
    return TrainResult(out, history, best, [out])


# --------------------------------------------------------------------------- the grid


def _resize(a: np.ndarray, grid: Sequence[int], mode: str | None = None) -> np.ndarray:
    """``a`` resized to ``grid`` with the predictor's taps (the same values as its Dask resize)."""
    from ..segmenters import axis_taps, resize_block, resize_mode

    mode = mode or resize_mode(a.shape, grid)
    taps = [axis_taps(i, o, mode) for i, o in zip(a.shape, grid, strict=True)]
    return resize_block(a, [0, 0, 0], taps, [(0, g) for g in grid])


def _first_image_moments(v: Labelled, grid: Sequence[int]) -> tuple[float, float]:
    """Biomedisa's ``mu``, ``sig``: mean and standard deviation of the first training image on the
    grid after min–max.
    """
    from ..segmenters import normalise_grid as _normalised

    g = _normalised(_resize(v.image, grid), False, 0.0, 1.0)
    return float(g.mean(dtype=np.float64)), float(g.std(dtype=np.float64))


def _to_grid(v: Labelled, config: UNet3DTrainConfig, mu: float, sig: float) -> _Grid:
    from ..segmenters import normalise_grid as _normalised
    from ..segmenters import resize_mode

    grid = config.grid
    image = _normalised(_resize(v.image, grid), config.normalize, mu, sig)
    return _Grid(v.name, image, resize_target(v.target, grid, len(CELL_CLASSES),
                                              resize_mode(v.target.shape, grid)))


def resize_target(target: np.ndarray, grid: Sequence[int], n_classes: int,
                  mode: str | None = None) -> np.ndarray:
    """A class target (``IGNORE`` unannotated) on the grid: each class's mask resized, a grid
    voxel of class c where c's share of its annotated voxels reaches ½ (later classes overwrite
    earlier ones), ``IGNORE`` where no annotated voxel reaches it.
    """
    known = target != IGNORE
    reach = _resize(known.astype(np.float32), grid, mode)
    out = np.zeros(tuple(grid), np.int8)
    for c in range(1, n_classes):
        share = _resize((target == c).astype(np.float32), grid, mode)
        out[share >= 0.5 * reach] = c
    out[reach <= 1e-3] = IGNORE
    return out


def _annotated_patches(g: _Grid, patch: int) -> list[tuple[int, ...]]:
    from ..segmenters import patch_starts

    return [s for s in patch_starts(g.image.shape, (patch,) * 3, STRIDE)
            if (g.target[s[0]:s[0] + patch, s[1]:s[1] + patch, s[2]:s[2] + patch] != IGNORE).any()]


class _Batches:
    """Biomedisa's epochs: the annotated patches in a new random order each epoch, ``batch_size``
    at a time, for ``steps`` steps (every patch once when ``steps`` is the full pass). An epoch's
    order is drawn at its first step, so a resumed run draws what an uninterrupted one does.
    """

    def __init__(self, grids: list[_Grid], patches: list[tuple[int, tuple[int, ...]]],
                 config: UNet3DTrainConfig, rng: np.random.Generator, steps: int) -> None:
        self.grids, self.patches, self.config, self.rng = grids, patches, config, rng
        self.steps, self.calls = steps, 0
        self.order = np.arange(0)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        p, b = self.config.patch, self.config.batch_size
        k = self.calls % self.steps
        if k == 0:
            self.order = self.rng.permutation(len(self.patches))
        self.calls += 1
        xs, ts = [], []
        for j in self.order[k * b:(k + 1) * b]:
            i, (z, y, x) = self.patches[int(j)]
            g = self.grids[i]
            xs.append(g.image[None, z:z + p, y:y + p, x:x + p])
            ts.append(g.target[z:z + p, y:y + p, x:x + p])
        return np.stack(xs).astype(np.float32), np.stack(ts)


#: Training patches whose batch statistics become BatchNorm's running statistics (PreciseBN).
PRECISE_BN_PATCHES = 64


def precise_batchnorm(net: Any, grids: list[_Grid], patches: list[tuple[int, tuple[int, ...]]],
                      config: UNet3DTrainConfig, device: str) -> None:
    """Recompute every BatchNorm layer's running mean and variance as the average of its batch
    statistics over a fixed, evenly spread set of training patches (Wu & Johnson's "PreciseBN").

    Keras's BatchNorm momentum (0.99) makes the running statistics trail the weights by
    hundreds of steps: Biomedisa's 200 epochs leave them settled, a short run does not, and the
    network in eval mode then answers with stale statistics (seen here: a run whose training
    loss fell predicted nothing but exterior). The patches are fixed (no random draw), so a
    seeded or resumed run stays reproducible; only the running statistics change, never the
    weights.
    """
    import torch

    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or not patches:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    chosen = [patches[int(i)] for i in np.unique(np.linspace(
        0, len(patches) - 1, min(PRECISE_BN_PATCHES, len(patches))).astype(int))]
    p, was_training = config.patch, net.training
    net.train()
    with torch.no_grad():
        for k in range(0, len(chosen), config.batch_size):
            x = np.stack([grids[i].image[None, z:z + p, y:y + p, xx:xx + p]
                          for i, (z, y, xx) in chosen[k:k + config.batch_size]])
            net(torch.from_numpy(x.astype(np.float32)).to(device))
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    net.train(was_training)


def _validator(net: Any, grids: list[_Grid], config: UNet3DTrainConfig, device: str,
               refresh: Any = None) -> Any:
    """The predictor's grid prediction (softmax summed over patches, argmax) scored per class,
    after ``refresh()`` (the BatchNorm statistics).
    """
    import torch

    from ..segmenters import patch_starts

    p = config.patch

    def validate() -> dict[str, float]:
        if refresh is not None:
            refresh()
        net.eval()
        counts = np.zeros((2, len(CELL_CLASSES) + 1), np.int64)
        with torch.inference_mode():
            for g in grids:
                starts = patch_starts(g.image.shape, (p,) * 3, STRIDE)
                total = np.zeros((len(CELL_CLASSES), *g.image.shape), np.float32)
                for k in range(0, len(starts), config.batch_size):
                    batch = starts[k:k + config.batch_size]
                    x = np.stack([g.image[None, z:z + p, y:y + p, xx:xx + p] for z, y, xx in batch])
                    probs = net(torch.from_numpy(x).to(device)).float().cpu().numpy()
                    for prob, (z, y, xx) in zip(probs, batch, strict=True):
                        total[:, z:z + p, y:y + p, xx:xx + p] += prob
                pred = total.argmax(axis=0)
                counts += dice_counts(pred, g.target, g.target != IGNORE, len(CELL_CLASSES))
        net.train()
        return dice_metrics(counts, CELL_CLASSES)

    return validate


def _record(config: UNet3DTrainConfig, train: Sequence[TrainingVolume],
            val: Sequence[TrainingVolume]) -> dict[str, Any]:
    from .._version import __version__

    return {"trained_by": f"sxtdask {__version__} (sxtdask train --arch unet3d)",
            "train_data": [v.name for v in train], "val_data": [v.name for v in val],
            "voxel_size_nm": list(train[0].voxel_size_nm) if train else None,
            "config": config.record()}
