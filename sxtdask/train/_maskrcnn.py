"""Train the ISG Mask R-CNN on COCO-style 2-D patches of labelled tomograms.

The reference training configuration is the default: 256×256 patches (:mod:`._coco`, the same
patches ``sxtdask export-coco`` writes), batch 4, SGD (lr 0.005, momentum 0.9, weight decay
0.0005) with a step decay of the learning rate, gradient clipping at norm 0.5, mixed precision
(float16 autocast with a gradient scaler) on CUDA only, 20 epochs, COCO segmentation metrics on the
validation patches every 2 epochs (the primary score, for the best checkpoint and for early
stopping, is mAP@[.5:.95]), and checkpoints of the best, the final and every 5th epoch.

Patches are read lazily (one window of one slice each) and prepared exactly as the segmenter
prepares its tiles (:func:`sxtdask.segmenters.prepare_maskrcnn_slices`); training adds
random flips and 90° rotations. The checkpoint records the task (``isg-maskrcnn``), the
preprocessing and the network's resize, so ``--model PATH`` and ``MaskRCNNISG().load_model(path)``
rebuild and use it unchanged.

Reproducibility: one seed draws the initial weights, the patch order, the augmentations and the
detector's proposal sampling; on the CPU two runs with one seed give identical weights, and a run
resumed from its state file ends identical to an uninterrupted one (the state holds the weights,
the optimiser's momentum, the schedule, the gradient scaler and every random state). On CUDA,
torchvision's RoIAlign backward adds with atomics, so runs agree only to rounding.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OVERWRITE, ConfigError, OutputError
from ._coco import (
    PatchRef,
    check_patching,
    coco_annotation,
    coco_dataset,
    coco_segm_metrics,
    patch_grid,
    patch_objects,
    read_patch,
)
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
from ._data import TrainingVolume

__all__ = ["MaskRCNNTrainConfig", "train_maskrcnn"]

logger = logging.getLogger(__name__)

_TASK = "isg-maskrcnn"
_PRIMARY = "val_map"


@dataclass(frozen=True)
class MaskRCNNTrainConfig:
    """Hyper-parameters of a Mask R-CNN training run (defaults: the reference configuration).

    Attributes
    ----------
    patch : int
        Side of the square training patches, pixels (256).
    stride : int, optional
        Step of the patch grid, pixels; default ``patch`` (no overlap).
    min_area : int
        Cut-off fragments (touching a patch border) with fewer pixels are not objects (16).
    batch_size : int
        Patches per optimiser step (4).
    lr, momentum, weight_decay : float
        SGD (0.005, 0.9, 0.0005).
    lr_step, gamma : int, float
        Step decay: the learning rate is multiplied by ``gamma`` every ``lr_step`` epochs
        (8 and 0.1; the reference names step decay without its values).
    clip : float
        Gradient-norm clipping (0.5); 0 switches it off.
    epochs : int
        At most this many epochs (20).
    steps_per_epoch : int, optional
        Optimiser steps per epoch. None (default): one pass over the training patches, i.e.
        ``ceil(patches / batch_size)`` steps, each patch seen once per epoch in a new random
        order; a number: that many batches drawn from consecutive random passes.
    eval_every : int
        Validate every this many epochs (2), and after the last epoch.
    patience : int
        Stop early after this many validations without a better mAP@[.5:.95] (3); 0: never.
    save_every : int
        Also keep the model of every this many epochs (5) as ``<stem>_epoch005<suffix>``;
        0: never.
    val_patches : int
        At most this many validation patches, spread evenly over them (500).
    augment : bool
        Random flips and 90° rotations of the training patches.
    min_size, max_size : int
        torchvision's resize of every patch (800, and 1333:800 of ``min_size`` when None);
        recorded in the checkpoint, used again at inference. Small values train fast on a CPU.
    trainable_backbone_layers : int
        ResNet stages trained, from the top (5: all; the network starts untrained).
    rpn_batch_size_per_image, box_batch_size_per_image : int
        Anchors and proposals sampled per image for the losses (torchvision's 256 and 512);
        small values train fast on a CPU.
    seed : int
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    """

    patch: int = 256
    stride: int | None = None
    min_area: int = 16
    batch_size: int = 4
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_step: int = 8
    gamma: float = 0.1
    clip: float = 0.5
    epochs: int = 20
    steps_per_epoch: int | None = None
    eval_every: int = 2
    patience: int = 3
    save_every: int = 5
    val_patches: int = 500
    augment: bool = True
    min_size: int = 800
    max_size: int | None = None
    trainable_backbone_layers: int = 5
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_patching(self.patch, self.stride, self.min_area)
        for name in ("batch_size", "lr_step", "epochs", "eval_every", "val_patches", "min_size",
                     "rpn_batch_size_per_image", "box_batch_size_per_image"):
            _integer(name, getattr(self, name), 1)
        for name in ("patience", "save_every"):
            _integer(name, getattr(self, name), 0)
        if self.steps_per_epoch is not None:
            _integer("steps_per_epoch", self.steps_per_epoch, 1)
        if self.max_size is not None:
            _integer("max_size", self.max_size, self.min_size)
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ConfigError(f"trainable_backbone_layers ({self.trainable_backbone_layers}) "
                              "must be between 0 and 5")
        positive("lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum ({self.momentum}) must be in [0, 1)")
        if self.weight_decay < 0 or self.clip < 0:
            raise ConfigError(f"weight_decay ({self.weight_decay}) and clip ({self.clip}) "
                              "must not be negative")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma ({self.gamma}) must be in (0, 1]")

    @property
    def resize_max(self) -> int:
        """``max_size``, or its default for ``min_size``."""
        from ..segmenters import maskrcnn_max_size

        return self.max_size if self.max_size is not None else maskrcnn_max_size(self.min_size)


def _integer(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} ({value!r}) must be an integer of at least {least}")


def final_path(out: Path) -> Path:
    """``<stem>_final<suffix>`` beside ``out``."""
    return out.with_name(f"{out.stem}_final{out.suffix}")


def epoch_path(out: Path, epoch: int) -> Path:
    """``<stem>_epoch005<suffix>`` beside ``out``."""
    return out.with_name(f"{out.stem}_epoch{epoch:03d}{out.suffix}")


def train_maskrcnn(train: Sequence[TrainingVolume], val: Sequence[TrainingVolume],
                   out: str | Path, config: MaskRCNNTrainConfig = MaskRCNNTrainConfig(), *,
                   resume: bool = False, overwrite: bool = False,
                   progress: Progress | None = None) -> TrainResult:
    """Train the ISG Mask R-CNN on patches of ``train``, validating on ``val``; write checkpoints.

    Parameters
    ----------
    train, val : sequence of TrainingVolume
        Tomograms with ISG instance labels (``open_training_data(..., "isg-maskrcnn")``), split by
        tomogram; ``val`` may be empty, and then the last epoch's model is the best.
    out : path
        The best checkpoint (by validation mAP@[.5:.95]). Beside it: ``<stem>_final<suffix>``
        (the last epoch, also after early stopping), ``<stem>_epoch005<suffix>`` (every
        ``save_every`` epochs) and, while training, the resume state ``out + ".state"``
        (removed at the end).
    config : MaskRCNNTrainConfig
    resume : bool
        Continue an interrupted run from its state file (same configuration and data).
    overwrite : bool
        Replace existing checkpoints.
    progress : callable, optional
        See :data:`sxtdask.train._common.Progress`: after every step, and at every epoch's end
        with ``val_map``, ``val_map_50`` and ``val_ar_100`` when it was validated (else ``{}``).

    Returns
    -------
    TrainResult
    """
    import torch

    out = Path(out)
    check_out(out, resume, overwrite)
    if not resume and not overwrite and final_path(out).exists():
        raise OutputError(f"{final_path(out)} exists; pass {OVERWRITE} to replace it")
    device = resolve_train_device(config.device)
    rng = seed_everything(config.seed)
    train_refs = patch_grid(train, config.patch, config.stride, config.min_area)
    if not train_refs:
        raise ConfigError(f"no {config.patch}-pixel patch of the training data holds an ISG: "
                          "are the labels ISG instances?")
    val_refs = _spread(patch_grid(val, config.patch, config.stride, config.min_area),
                       config.val_patches)
    steps = config.steps_per_epoch or math.ceil(len(train_refs) / config.batch_size)
    record = _config_record(config, train, val)
    state = _resume_state(out, record) if resume else None
    if val and not val_refs:
        logger.warning("no validation patch holds an ISG: the last epoch's model is the best")
    net = _build(config).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.gamma)
    use_amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    run = _Run(history=[], best={}, epoch=0, stale=0, files=[])
    if state is not None:
        run = _restore(state, net, opt, sched, scaler, rng)
    logger.info("Mask R-CNN: %d training patches (%d steps per epoch), %d validation patches, "
                "on %s", len(train_refs), steps, len(val_refs), device)
    val_gt = _val_dataset(val, val_refs, config.min_area) if val_refs else None
    meta = _meta(config, train, val)
    for epoch in range(run.epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        loss = _train_epoch(net, opt, scaler, train, train_refs, steps, epoch, config, rng,
                            device, progress)
        sched.step()
        entry: dict[str, float] = {"epoch": epoch, "loss": loss, "lr": opt.param_groups[0]["lr"],
                                   "seconds": time.perf_counter() - t0}
        last = epoch == config.epochs
        if val_gt is not None and (epoch % config.eval_every == 0 or last):
            entry.update(_validate(net, val, val_refs, val_gt, config, device))
            if not run.best or entry[_PRIMARY] > run.best.get(_PRIMARY, -1.0):
                run.best, run.stale = dict(entry), 0
                _save(out, net, meta, entry, run)
            else:
                run.stale += 1
        if progress is not None:  # the epoch's end, with its validation metrics if any
            progress(epoch, steps, steps, {k: v for k, v in entry.items() if k.startswith("val_")})
        run.history.append(entry)
        logger.info("Mask R-CNN epoch %d/%d: %s", epoch, config.epochs,
                    ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch"))
        if config.save_every and epoch % config.save_every == 0:
            _save(epoch_path(out, epoch), net, meta, entry, run)
        stop = bool(config.patience) and run.stale >= config.patience
        if stop:
            logger.info("early stop after epoch %d: %d validations without a better %s",
                        epoch, run.stale, _PRIMARY)
        if stop or last:
            if val_gt is None:  # no validation: the last epoch is the model
                run.best = dict(entry)
                _save(out, net, meta, entry, run)
            _save(final_path(out), net, meta, entry, run)
            break
        run.epoch = epoch
        save_state(out, {"config": record, "model": net.state_dict(),
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict(), "rng": rng_state(rng),
                         "history": run.history, "best": run.best, "epoch": epoch,
                         "stale": run.stale, "files": [str(f) for f in run.files]})
    state_path(out).unlink(missing_ok=True)
    return TrainResult(out, run.history, run.best, run.files)


@dataclass
class _Run:
    """What a run has done so far (restored on resume)."""

    history: list[dict[str, float]]
    best: dict[str, float]
    epoch: int  # epochs completed
    stale: int  # validations since the best
    files: list[Path]


def _build(config: MaskRCNNTrainConfig) -> Any:
    from ..models import build_maskrcnn

    return build_maskrcnn(2, trainable_backbone_layers=config.trainable_backbone_layers,
                          **_model_kwargs(config),
                          rpn_batch_size_per_image=config.rpn_batch_size_per_image,
                          box_batch_size_per_image=config.box_batch_size_per_image).train()


def _model_kwargs(config: MaskRCNNTrainConfig) -> dict[str, int]:
    """What the segmenter needs to rebuild the network for inference (in the meta)."""
    return {"min_size": config.min_size, "max_size": config.resize_max}


def _resume_state(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The state file of an interrupted run with this configuration and data."""
    state = load_state(out)
    if state.get("config") != record:
        raise ConfigError(f"{state_path(out)} was written with another configuration or other "
                          f"data; resume with the same options or start afresh with {OVERWRITE}")
    return state


def _restore(state: dict[str, Any], net: Any, opt: Any, sched: Any, scaler: Any,
             rng: np.random.Generator) -> _Run:
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    restore_rng(rng, state["rng"])
    logger.info("resuming Mask R-CNN training after epoch %d", int(state["epoch"]))
    return _Run(list(state["history"]), dict(state["best"]), int(state["epoch"]),
                int(state["stale"]), [Path(f) for f in state["files"]])


def _save(path: Path, net: Any, meta: dict[str, Any], entry: dict[str, float], run: _Run) -> None:
    from ..models import save_checkpoint

    save_checkpoint(path, net, {**meta, "epoch": int(entry["epoch"]), "metrics": entry})
    if path not in run.files:
        run.files.append(path)


def _spread(refs: list[PatchRef], n: int) -> list[PatchRef]:
    """At most ``n`` of ``refs``, evenly spaced (deterministic)."""
    if len(refs) <= n:
        return refs
    return [refs[int(i)] for i in np.linspace(0, len(refs) - 1, n).round()]


def _config_record(config: MaskRCNNTrainConfig, train: Sequence[TrainingVolume],
                   val: Sequence[TrainingVolume]) -> dict[str, Any]:
    return {"task": _TASK, **{k: v for k, v in asdict(config).items() if k != "device"},
            "train_data": [v.name for v in train], "val_data": [v.name for v in val]}


def _meta(config: MaskRCNNTrainConfig, train: Sequence[TrainingVolume],
          val: Sequence[TrainingVolume]) -> dict[str, Any]:
    from .._version import __version__
    from ..segmenters import LAC_FACTOR

    return {
        "task": _TASK,
        "classes": ["background", "isg"],
        "num_classes": 2,
        "model": {"builder": "maskrcnn_resnet50_fpn", "num_classes": 2, **_model_kwargs(config)},
        "preprocessing": {"name": "lac", "factor": LAC_FACTOR, "clip": [0.0, 1.0],
                          "channels": 3},
        "patch": config.patch,
        "trained_by": f"sxtdask {__version__} (sxtdask train)",
        "train_data": [v.name for v in train],
        "val_data": [v.name for v in val],
        "voxel_size_nm": list(train[0].voxel_size_nm) if train else None,
        "config": _config_record(config, train, val),
    }


# ------------------------------------------------------------------------------ one epoch


def _train_epoch(net: Any, opt: Any, scaler: Any, volumes: Sequence[TrainingVolume],
                 refs: list[PatchRef], steps: int, epoch: int, config: MaskRCNNTrainConfig,
                 rng: np.random.Generator, device: str, progress: Progress | None) -> float:
    """One epoch of SGD steps; the mean loss."""
    import torch

    net.train()
    n = steps * config.batch_size
    order = np.concatenate([rng.permutation(len(refs)) for _ in range(-(-n // len(refs)))])[:n]
    params = [p for p in net.parameters() if p.requires_grad]
    losses = []
    for step in range(steps):
        batch = [refs[int(i)] for i in order[step * config.batch_size:(step + 1) * config.batch_size]]
        images, targets = _batch(volumes, batch, config, rng, device)
        with torch.autocast("cuda", enabled=scaler.is_enabled()):
            loss = sum(net(images, targets).values())
        if not torch.isfinite(loss):
            raise ConfigError(f"the loss became {float(loss)} at epoch {epoch}, step {step + 1}: "
                              f"lower the learning rate (lr {config.lr})")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, config.clip)
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(epoch, step + 1, steps, {"loss": losses[-1], "lr": opt.param_groups[0]["lr"]})
    return float(np.mean(losses))


def _batch(volumes: Sequence[TrainingVolume], refs: list[PatchRef], config: MaskRCNNTrainConfig,
           rng: np.random.Generator, device: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """Images (3, h, w) and torchvision targets of the patches at ``refs``, augmented."""
    import torch

    images, targets = [], []
    for ref in refs:
        x, labels = read_patch(volumes, ref)
        if config.augment:
            x, labels = _augment(x, labels, rng)
        objects = patch_objects(labels, config.min_area)
        boxes = [(b[0], b[1], b[0] + b[2], b[1] + b[3]) for b in (o.bbox for o in objects)]
        images.append(torch.from_numpy(np.repeat(x[None], 3, axis=0)).to(device))
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).to(device),
            "labels": torch.ones(len(objects), dtype=torch.int64, device=device),
            "masks": torch.from_numpy(np.stack([o.mask for o in objects]).astype(np.uint8)
                                      if objects else np.zeros((0, *x.shape), np.uint8)).to(device),
        })
    return images, targets


def _augment(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
             ) -> tuple[np.ndarray, np.ndarray]:
    """A random one of the 8 flips and 90° rotations, the same for image and labels."""
    k = int(rng.integers(4))
    x, labels = np.rot90(x, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        x, labels = x[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(labels)


# ------------------------------------------------------------------------------ validation


def _val_dataset(volumes: Sequence[TrainingVolume], refs: list[PatchRef],
                 min_area: int) -> dict[str, Any]:
    """The validation patches' ground truth as a COCO dataset (image ids 1, 2, ...)."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id, ref in enumerate(refs, start=1):
        labels = np.asarray(volumes[ref.volume].labels[ref.z, ref.y0:ref.y1, ref.x0:ref.x1])
        images.append({"id": image_id, "height": labels.shape[0], "width": labels.shape[1]})
        for obj in patch_objects(labels, min_area):
            anns.append(coco_annotation(obj, image_id, len(anns) + 1))
    return coco_dataset(images, anns)


def predict_patches(net: Any, images: list[np.ndarray], device: str,
                    batch_size: int) -> list[dict[str, np.ndarray]]:
    """The detector's raw output (``boxes``, ``scores``, ``masks`` as NumPy) for prepared patches,
    run as the segmenter runs it (eval mode, bfloat16 autocast on CUDA).
    """
    import torch

    was_training = net.training
    net.eval()
    out: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [torch.from_numpy(np.repeat(im[None], 3, axis=0)).to(device)
                     for im in images[start:start + batch_size]]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                results = net(batch)
            out.extend({k: r[k].float().cpu().numpy() for k in ("boxes", "scores", "masks")}
                       for r in results)
    net.train(was_training)
    return out


def _validate(net: Any, volumes: Sequence[TrainingVolume], refs: list[PatchRef],
              gt: dict[str, Any], config: MaskRCNNTrainConfig, device: str) -> dict[str, float]:
    """COCO segmentation metrics of the network on the validation patches."""
    from pycocotools import mask as mask_utils

    detections = []
    for start in range(0, len(refs), config.batch_size):
        chunk = refs[start:start + config.batch_size]
        images = [read_patch(volumes, ref)[0] for ref in chunk]
        for k, result in enumerate(predict_patches(net, images, device, config.batch_size)):
            masks = result["masks"][:, 0] >= 0.5
            for mask, score in zip(masks, result["scores"], strict=True):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                detections.append({"image_id": start + k + 1, "category_id": 1,
                                   "segmentation": rle, "score": float(score)})
    metrics = coco_segm_metrics(gt, detections)
    return {f"val_{k}": v for k, v in metrics.items()}
