"""Train NCXT's two-stage 3-D U-Net cascade for the cell task (``sxtdask train --arch cascade``).

NCXT's settings (REFERENCE-3D §3) are the defaults, sized for CPUs where NCXT's are not:

1. **Stage 1** learns from 3-D blocks of the binned tomogram: the image binned by
   :func:`sxtdask.io.bin_mean` and normalised by :meth:`CascadeSegmenter.normalise`, exactly as
   inference prepares its stage-1 tiles; labels binned by the majority of each bin's annotated
   voxels.
2. **Stage 2** learns from full-resolution blocks of
   :meth:`CascadeSegmenter.stage1_probabilities` (the normalised image and stage 1's fused,
   smoothed probabilities), computed by a segmenter loaded from a temporary checkpoint of the
   just-trained stage 1: training and inference share one code path.

Both stages: cross-entropy + (1 − mean soft Dice over the classes, background included), masked
where the labels are unannotated; Adam (lr 3e-4, weight decay 3e-5); the learning rate × 0.8
whenever the 10-epoch moving mean of the training loss stops falling; early stop after
``patience`` epochs without a better validation Dice; random flips per axis, 90° rotations in
(y, x) and an intensity scale/shift jitter; blocks redrawn at every step (so every epoch).
The best stage 1 (by validation Dice) feeds stage 2; the checkpoint is the best stage 2 with it.

Decided here where NCXT is silent: validation scores a fixed set of blocks drawn once from the
validation tomograms (``val_blocks`` per stage, not whole volumes: a CPU could not afford whole
volumes every epoch), by the mean Dice of the foreground classes; a bin with any annotated voxel
takes their majority class (so slice-wise sparse labels survive binning).
"""

from __future__ import annotations

import logging
import tempfile
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
    BlockSampler,
    Fit,
    Labelled,
    augment_block,
    bin_mode,
    ce_dice_loss,
    check_run_out,
    dice_counts,
    dice_metrics,
    label_map_of,
    load_labelled,
    positive_int,
    predict_blocks,
    run_epochs,
)

__all__ = ["CascadeTrainConfig", "train_cascade"]

logger = logging.getLogger(__name__)

PREPROCESSINGS = ("percentile", "lac")
INSTANCENORM = ("both", "stage1", "stage2", "none")


@dataclass(frozen=True)
class CascadeTrainConfig:
    """Hyper-parameters of a cascade training run (both stages).

    Attributes
    ----------
    depth : int
        UNet3D levels of both stages (NCXT: 3).
    width : int
        First filter count of both stages (NCXT: 32; 16 here, for CPUs).
    block : int
        Stage 1's block side at the binned scale (NCXT: 32).
    block2 : int, optional
        Stage 2's block side at full resolution (default ``block``).
    binning : int
        Stage 1's binning factor (NCXT: 2).
    epochs, steps_per_epoch, batch_size : int
        Per stage.
    lr, weight_decay : float
        Adam's (NCXT: 3e-4, 3e-5).
    lr_factor : float
        × on the learning rate when the ``lr_window``-epoch mean loss stops falling (0.8, 10).
    patience : int
        Early stop after this many epochs without a better validation Dice (NCXT: 50).
    val_blocks : int
        Validation blocks per stage (drawn once from the validation tomograms, uniformly).
    foreground : float
        Share of training blocks centred on a voxel of a foreground class (cytoplasm or nucleus,
        drawn uniformly) rather than drawn uniformly (NCXT: 0).
    sigma : float
        The Gaussian (voxels) on stage 1's probabilities before stage 2 (NCXT: 2).
    preprocessing : str
        ``percentile`` (sxtdask's: the volume's 0.5/99.5 percentiles → −1/1) or ``lac``
        (NCXT's LAC × ``lac_factor``, for calibrated LACs).
    instancenorm : str
        Which stages normalise each conv's output per tile with InstanceNorm: ``both`` (NCXT),
        ``stage1``, ``stage2`` or ``none``. InstanceNorm removes a tile's absolute level, and
        stage 2 reads probabilities whose level is the answer: ``stage1`` keeps it there.
    label_map : str, optional
        ``VALUE:CLASS,...`` (see :func:`sxtdask.train.parse_label_map`).
    ignore_label : int, optional
        The label value of unannotated voxels (default: a material named ``ignore``, if any).
    seed : int
    device : str
    """

    depth: int = 3
    width: int = 16
    block: int = 32
    block2: int | None = None
    binning: int = 2
    epochs: int = 40
    steps_per_epoch: int = 50
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 3e-5
    lr_factor: float = 0.8
    lr_window: int = 10
    patience: int = 50
    val_blocks: int = 16
    foreground: float = 0.0
    sigma: float = 2.0
    preprocessing: str = "percentile"
    lac_factor: float = 100.0
    instancenorm: str = "both"
    label_map: str | None = None
    ignore_label: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("depth", "width", "block", "binning", "epochs", "steps_per_epoch",
                     "batch_size", "lr_window", "val_blocks"):
            positive_int(name, getattr(self, name))
        positive_int("patience", self.patience, 0)
        positive("lr", self.lr)
        if not 0 <= self.foreground <= 1:
            raise ConfigError(f"foreground ({self.foreground}) must be in [0, 1]")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"lr_factor ({self.lr_factor}) must be in (0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay ({self.weight_decay}) must not be negative")
        if self.instancenorm not in INSTANCENORM:
            raise ConfigError(f"instancenorm {self.instancenorm!r} must be one of "
                              f"{', '.join(INSTANCENORM)}")
        if self.preprocessing not in PREPROCESSINGS:
            raise ConfigError(f"preprocessing {self.preprocessing!r} must be one of "
                              f"{', '.join(PREPROCESSINGS)}")
        if self.ignore_label is not None:
            positive_int("ignore_label", self.ignore_label, 0)
        self.cascade_config()  # the stages' rules (block a multiple of 2**(depth-1), ...)
        label_map_of(self.label_map, len(CELL_CLASSES))

    def cascade_config(self) -> Any:
        """The :class:`~sxtdask.models.CascadeConfig` these settings train."""
        from ..models import CascadeConfig, StageConfig

        prep: dict[str, Any] = {"name": self.preprocessing}
        if self.preprocessing == "lac":
            prep["factor"] = float(self.lac_factor)
        common: dict[str, Any] = {"depth": self.depth, "start_filts": self.width}
        norm = self.instancenorm
        return CascadeConfig(
            num_classes=len(CELL_CLASSES),
            stage1=StageConfig(**common, block=self.block, binning=self.binning,
                               instancenorm=norm in ("both", "stage1")),
            stage2=StageConfig(**common, block=self.block2 or self.block, binning=1,
                               instancenorm=norm in ("both", "stage2")),
            sigma=float(self.sigma), preprocessing=prep, classes=CELL_CLASSES, labels=CELL_VALUES)

    def record(self) -> dict[str, Any]:
        """Every setting that shapes the result (the resume check), without the device."""
        return {"arch": "cascade", "task": "cell",
                **{k: v for k, v in asdict(self).items() if k != "device"}}


def train_cascade(train: Sequence[TrainingVolume], val: Sequence[TrainingVolume],
                  out: str | Path, config: CascadeTrainConfig = CascadeTrainConfig(), *,
                  resume: bool = False, overwrite: bool = False,
                  progress: Progress | None = None) -> TrainResult:
    """Train a cell cascade (stage 1, then stage 2) and write its checkpoint.

    Parameters
    ----------
    train, val : sequence of TrainingVolume
        Training and validation tomograms (``val`` may be empty: then each stage's last epoch
        is kept and no early stop happens).
    out : path
        The checkpoint (:func:`sxtdask.models.load_cascade`, ``CascadeSegmenter.load_model``),
        written at each better stage-2 epoch. The resume state (``out + ".state"``) is kept beside
        it while training.
    config : CascadeTrainConfig
    resume : bool
        Continue an interrupted run (same configuration) from its last finished epoch.
    overwrite : bool
    progress : callable, optional
        See :data:`sxtdask.train.Progress`; ``info`` also holds ``stage`` (1 or 2).

    Returns
    -------
    TrainResult
        ``history`` lists both stages' epochs (each with its ``stage``); ``best`` is stage 2's.
    """
    import torch

    from ..models import NCXTCascade

    out = Path(out)
    check_run_out(out, resume, overwrite)
    device = resolve_train_device(config.device)
    rng = seed_everything(config.seed)
    cfg = config.cascade_config()
    net = NCXTCascade(cfg).to(device)  # both stages initialised now, in this order
    state: dict[str, Any] = {"stage": 1, "history": {"1": [], "2": []}, "best": {}}
    if resume:
        state = _resumed(out, config, net, rng)
    n = cfg.num_classes
    train_data = load_labelled(train, n, label_map=config.label_map,
                               ignore_label=config.ignore_label)
    val_data = load_labelled(val, n, label_map=config.label_map, ignore_label=config.ignore_label)
    meta = _meta(config, cfg, train, val)
    with tempfile.TemporaryDirectory(prefix="sxtdask-cascade-") as tmp:
        seg = _segmenter(net, cfg, Path(tmp) / "initial.pt", device)
        opt1 = torch.optim.Adam(net.stage1.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay)
        if state["stage"] == 1:
            if state.get("optimizer") is not None:
                opt1.load_state_dict(state["optimizer"])
            vols = [_stage1_input(seg, v, config.binning, n) for v in train_data]
            vvols = [_stage1_input(seg, v, config.binning, n) for v in val_data]
            fit = _fit(1, net.stage1, opt1, vols, vvols, config, config.block, rng, device)

            def after1(entry: dict[str, float], best: bool) -> None:
                if best:
                    state["best"]["1"] = dict(entry)
                    state["stage1_weights"] = _copy(net.stage1.state_dict())
                _save(out, config, state, net, opt1, rng)

            run_epochs(fit, state["history"]["1"], after1, progress)
            state.update(stage=2, optimizer=None)
            _save(out, config, state, net, None, rng)
        net.stage1.load_state_dict(state["stage1_weights"])
        seg = _segmenter(net, cfg, Path(tmp) / "stage1.pt", device)
        vols = [_stage2_input(seg, v) for v in train_data]
        vvols = [_stage2_input(seg, v) for v in val_data]
    opt2 = torch.optim.Adam(net.stage2.parameters(), lr=config.lr,
                            weight_decay=config.weight_decay)
    if state.get("optimizer") is not None:
        opt2.load_state_dict(state["optimizer"])
    fit = _fit(2, net.stage2, opt2, vols, vvols, config, config.block2 or config.block, rng,
               device)

    def after2(entry: dict[str, float], best: bool) -> None:
        from ..models import save_checkpoint

        if best:
            state["best"]["2"] = dict(entry)
            save_checkpoint(out, net, {**meta, "epoch": int(entry["epoch"]), "metrics": entry,
                                       "stage1_metrics": state["best"].get("1", {})})
        _save(out, config, state, net, opt2, rng)

    run_epochs(fit, state["history"]["2"], after2, progress)
    state_path(out).unlink(missing_ok=True)
    history = state["history"]["1"] + state["history"]["2"]
    return TrainResult(out, history, dict(state["best"].get("2", {})), [out])


# --------------------------------------------------------------------------- the stages' data


def _segmenter(net: Any, cfg: Any, path: Path, device: str) -> Any:
    """A :class:`CascadeSegmenter` of the cascade as it is now (saved to ``path``, a new file each
    time, so the segmenter's model cache cannot hand back an older network).
    """
    from ..models import save_checkpoint
    from ..segmenters import CascadeSegmenter

    save_checkpoint(path, net, {"task": "cell", **cfg.as_meta()})
    return CascadeSegmenter(device=device).load_model(path)


def _stage1_input(seg: Any, v: Labelled, binning: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1's (1, z, y, x) input and binned target, as inference prepares its tiles."""
    from ..io import bin_mean

    x = seg.normalise(bin_mean(v.image, binning) if binning > 1 else v.image, v.stats)
    return x[None].astype(np.float32), bin_mode(v.target, binning, n)


def _stage2_input(seg: Any, v: Labelled) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2's (n, Z, Y, X) input (the segmenter's own) and the full-resolution target."""
    return seg.stage1_probabilities(v.image, v.stats).astype(np.float32), v.target


def _fit(stage: int, part: Any, opt: Any, vols: list[tuple[np.ndarray, np.ndarray]],
         vvols: list[tuple[np.ndarray, np.ndarray]], config: CascadeTrainConfig, size: int,
         rng: np.random.Generator, device: str) -> Fit:
    sampler = BlockSampler(vols, size, rng, config.foreground)

    def batch() -> tuple[np.ndarray, np.ndarray]:
        xs, ts = [], []
        for _ in range(config.batch_size):
            x, t = augment_block(*sampler.sample(), rng)
            xs.append(x)
            ts.append(t)
        return np.stack(xs), np.stack(ts)

    validate = None
    if vvols:
        # drawn once, from their own generator: every epoch is scored on the same blocks
        vsampler = BlockSampler(vvols, size, np.random.default_rng((config.seed, stage)))
        blocks = [vsampler.sample() for _ in range(config.val_blocks)]

        def validate() -> dict[str, float]:
            part.eval()
            preds = predict_blocks(part, [x for x, _ in blocks], device, config.batch_size)
            counts = sum(dice_counts(p, t, t != IGNORE, len(CELL_CLASSES))
                         for p, (_, t) in zip(preds, blocks, strict=True))
            part.train()
            return dice_metrics(np.asarray(counts), CELL_CLASSES)

    return Fit(stage, part, opt, part, ce_dice_loss, batch, config.epochs,
               config.steps_per_epoch, device, validate, config.patience,
               (config.lr_factor, config.lr_window))


# --------------------------------------------------------------------------- state and meta


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _save(out: Path, config: CascadeTrainConfig, state: dict[str, Any], net: Any, opt: Any,
          rng: np.random.Generator) -> None:
    save_state(out, {**{k: v for k, v in state.items() if k != "optimizer"},
                     "config": config.record(), "model": _copy(net.state_dict()),
                     "optimizer": None if opt is None else opt.state_dict(),
                     "rng": rng_state(rng)})


def _resumed(out: Path, config: CascadeTrainConfig, net: Any,
             rng: np.random.Generator) -> dict[str, Any]:
    saved = load_state(out)
    if saved.get("config") != config.record():
        raise ConfigError(f"{state_path(out)} was written with another configuration; resume "
                          f"with the same options or start afresh with {OVERWRITE}")
    net.load_state_dict(saved["model"])
    restore_rng(rng, saved["rng"])
    done = len(saved["history"]["1"]) + len(saved["history"]["2"])
    logger.info("resuming the cascade at stage %d after %d epochs", saved["stage"], done)
    return {k: v for k, v in saved.items() if k not in ("config", "model", "rng")}


def _meta(config: CascadeTrainConfig, cfg: Any, train: Sequence[TrainingVolume],
          val: Sequence[TrainingVolume]) -> dict[str, Any]:
    from .._version import __version__

    return {
        "task": "cell", **cfg.as_meta(),
        "trained_by": f"sxtdask {__version__} (sxtdask train --arch cascade)",
        "train_data": [v.name for v in train], "val_data": [v.name for v in val],
        "voxel_size_nm": list(train[0].voxel_size_nm) if train else None,
        "config": config.record(),
    }
