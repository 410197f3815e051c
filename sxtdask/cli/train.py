"""``sxtdask train``: train a U-Net (cell, mito, isg) or Mask R-CNN (isg-maskrcnn) on labelled
tomograms, or a 3-D cell network (``--arch cascade``: NCXT's cascade; ``--arch unet3d``: a
Biomedisa U-Net).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Self

from sxtdask.segmenters import trainable

from ._console import Console
from ._options import add_device_option, output_options

NAME = "train"
EXAMPLES = """\
examples:
  # a small ISG U-Net on two synthetic cells (one of them validates), then use it:
  sxtdask train --task isg --data a.gt.zarr b.gt.zarr --out isg.pt --epochs 2
  sxtdask segment cell.zarr --task isg --model isg.pt
  # the ISG Mask R-CNN on a CPU, at the patches' own size:
  sxtdask train --task isg-maskrcnn --data a.gt.zarr b.gt.zarr --out isg-maskrcnn.pt --min-size 256
  # NCXT's 3-D cascade for cell/nucleus, then segment with it:
  sxtdask train --task cell --arch cascade --data a.gt.zarr b.gt.zarr --out cascade.pt
  sxtdask segment cell.zarr --task cell --method cascade --model cascade.pt
  # sparse labels: AmiraMesh .labels ('ignore' material), INS-1E values mapped onto the classes:
  sxtdask train --task cell --arch cascade --data s12.rec,s12.labels --out c.pt
  sxtdask train --task cell --arch unet3d --data t1.mrc,t1.labels.mrc --out u.pt --label-map 0:0,1:1,2:2,5:1
"""
#: Network families of ``--arch``: the 2-D U-Nets (and Mask R-CNN) of every task, and the two 3-D
#: networks of the cell task.
ARCHS = ("unet2d", "unet3d", "cascade")
#: Options of one family only: option dest → the families that take it.
_ONLY = {
    "depth": ("cascade",), "block": ("cascade",), "binning": ("cascade",),
    "val_blocks": ("cascade",), "preprocessing": ("cascade",), "instancenorm": ("cascade",),
    "foreground": ("cascade",),
    "filters": ("unet3d",), "resnet": ("unet3d",), "scale": ("unet3d",),
    "label_map": ("unet3d", "cascade"), "ignore_label": ("unet3d", "cascade"),
    "context": ("unet2d",), "jitter": ("unet2d",), "min_size": ("unet2d",),
}
#: The networks ``--task`` trains: the registry's (cell, mito, isg, isg-maskrcnn).
TASKS = trainable()


def add_parser(sub: Any) -> None:
    """Add the ``train`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--task", required=True, choices=TASKS,
                     help="the network to train (one per run): a U-Net for cell, mito or isg, or "
                          "the ISG Mask R-CNN")
    own.add_argument("--data", required=True, nargs="+", metavar="PATH",
                     help="OME-Zarr stores with labels/ (e.g. from `sxtdask synth`), or IMAGE,LABELS "
                          "file pairs (MRC/TIFF/...); split into training and validation by tomogram")
    own.add_argument("--out", required=True, type=Path, metavar="MODEL.pt", help="checkpoint to write")
    own.add_argument("--arch", default="unet2d", choices=ARCHS,
                     help="unet2d: the 2-D U-Net of --task (or its Mask R-CNN); with --task cell "
                          "only: cascade (NCXT's two-stage 3-D U-Net cascade, its settings as "
                          "defaults, sized for CPUs) or unet3d (a Biomedisa 3-D U-Net on a resized "
                          "grid, its settings as defaults but for --filters)")
    own.add_argument("--labels", default=None, metavar="NAME",
                     help="label image to learn from in the stores (default: cell, mito or isg)")
    own.add_argument("--val-data", nargs="+", default=None, metavar="PATH",
                     help="validation tomograms (default: --val-fraction of --data)")
    own.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of the --data tomograms held out for validation")
    own.add_argument("--epochs", type=int, default=None,
                     help="passes over the data (default: U-Net 10, Mask R-CNN 20, cascade 40 per "
                          "stage, unet3d 200)")
    own.add_argument("--steps-per-epoch", type=int, default=None,
                     help="optimiser steps per epoch (default: U-Net 100, cascade 50 per stage, "
                          "unet3d one pass over every patch)")
    own.add_argument("--batch-size", type=int, default=None,
                     help="patches per optimiser step (default: U-Net 8, Mask R-CNN 4, cascade 4, "
                          "unet3d 24)")
    own.add_argument("--patch", type=int, default=None,
                     help="patch side (default: U-Net 128, Mask R-CNN 256, unet3d 64)")
    own.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default: U-Net 3e-3 AdamW, Mask R-CNN 0.005 SGD, "
                          "cascade 3e-4 Adam, unet3d 0.01 SGD)")
    own.add_argument("--width", type=int, default=None,
                     help="U-Net base width, or the cascade's first filter count (default: U-Net "
                          "16, the reference's is 64; cascade 16, NCXT's 32)")
    own.add_argument("--context", type=int, default=None, choices=(0, 1),
                     help="mito: neighbouring slices on each side as input channels (default 1; 0 "
                          "repeats the slice, as the reference)")
    own.add_argument("--intensity-jitter", dest="jitter", default=None,
                     choices=("mild", "strong"),
                     help="U-Net: contrast/brightness augmentation; mild ×0.75-1.25, ±0.2 "
                          "(default); strong ×0.4-2.5, ±0.6 (tomograms whose percentiles a "
                          "capillary wall, beads or vacuum move)")
    own.add_argument("--min-size", type=int, default=None,
                     help="Mask R-CNN: the image size its transform resizes to (default 800, the "
                          "reference; 256 keeps patches at their size and trains far faster on a CPU)")
    own.add_argument("--patience", type=int, default=None,
                     help="stop after this many evaluations (epochs) without a better validation "
                          "figure (default: Mask R-CNN 3, cascade 50, unet3d 0 = never)")
    own.add_argument("--depth", type=int, default=None,
                     help="cascade: UNet3D levels of both stages (default 3)")
    own.add_argument("--block", default=None, metavar="N[,N2]",
                     help="cascade: block side of stage 1 (binned voxels) and, after a comma, of "
                          "stage 2 (full resolution; default the same) (default 32)")
    own.add_argument("--binning", type=int, default=None,
                     help="cascade: stage 1's binning factor (default 2)")
    own.add_argument("--val-blocks", type=int, default=None,
                     help="cascade: validation blocks per stage, drawn once from the validation "
                          "tomograms (default 16)")
    own.add_argument("--foreground-fraction", dest="foreground", type=float, default=None,
                     metavar="F",
                     help="cascade: share of training blocks centred on a voxel of a foreground "
                          "class drawn uniformly (cytoplasm or nucleus; NCXT draws all blocks "
                          "uniformly) (default 0)")
    own.add_argument("--preprocessing", default=None, choices=("percentile", "lac"),
                     help="cascade: network input, recorded in the checkpoint: percentile (the "
                          "volume's 0.5/99.5 percentiles to -1/1, sxtdask's) or lac (LAC x 100, "
                          "NCXT's, for calibrated LACs) (default percentile)")
    own.add_argument("--instancenorm", default=None, choices=("both", "stage1", "stage2", "none"),
                     help="cascade: the stages whose convolutions are InstanceNorm-ed per tile "
                          "(NCXT: both; a tile's absolute level, which stage 2's probabilities "
                          "carry, is lost to it) (default both)")
    own.add_argument("--filters", default=None, metavar="F1-F2-...",
                     help="unet3d: filters of the encoder levels and the bottleneck (default "
                          "8-16-32-64; Biomedisa's 32-64-128-256-512)")
    own.add_argument("--resnet", action="store_true", help="unet3d: Biomedisa's ResNet blocks")
    own.add_argument("--scale", default=None, metavar="N|Z,Y,X",
                     help="unet3d: the grid every tomogram is resized to (default 256)")
    own.add_argument("--label-map", default=None, metavar="V:C,...",
                     help="3-D: label values of the data -> classes of the task (0 exterior, 1 "
                          "cytoplasm, 2 nucleus), VALUE:CLASS or VALUE:ignore, e.g. INS-1E's "
                          "0:0,1:1,2:2,5:1; values not listed are an error (default: 0, 1, 2 as "
                          "they are)")
    own.add_argument("--ignore-label", type=int, default=None, metavar="N",
                     help="3-D: label value of unannotated voxels, left out of the loss and the "
                          "validation (default: the value of a material named 'ignore' in "
                          "AmiraMesh labels, else none)")
    own.add_argument("--seed", type=int, default=0, help="random seed (runs are repeatable)")
    add_device_option(own)
    own.add_argument("--resume", action="store_true", help="continue an interrupted run of --out")
    own.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sub.add_parser(
        NAME, help="train a network on labelled tomograms (OME-Zarr with labels/, or IMAGE,LABELS)",
        description="Train the cell/nucleus, mitochondria or ISG U-Net, or the ISG Mask R-CNN; "
                    "or, for the cell task, a 3-D network: NCXT's two-stage cascade (--arch "
                    "cascade; stage 1 on binned blocks, then stage 2 on the segmenter's own "
                    "stage-1 probabilities) or a Biomedisa U-Net (--arch unet3d; every tomogram "
                    "resized to --scale). The 3-D trainers read whole tomograms into memory and "
                    "learn from sparse labels (--ignore-label, an AmiraMesh 'ignore' material, "
                    "--label-map). The checkpoint is read by `segment --model PATH` (with "
                    "--method cascade or unet3d for the 3-D ones) and load_model(path).",
        parents=[own, output_options()])


def _options(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, arg) for arg, field in names.items()
            if getattr(args, arg) is not None}


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Train the network of ``args.task`` on the labelled tomograms ``args.data`` into ``args.out``."""
    from sxtdask.errors import InputError
    from sxtdask.train import (
        check_out,
        check_run_out,
        open_training_data,
        source_key,
        split_by_tomogram,
    )

    _check_arch(args)
    config, trainer = _trainer(args)  # options are checked before anything is read
    check = check_out if args.arch == "unet2d" else check_run_out
    check(args.out, args.resume, args.overwrite)  # before any data is read
    if args.val_data:
        both = {source_key(s) for s in args.data} & {source_key(s) for s in args.val_data}
        if both:
            raise InputError(f"{min(both)} is given both as --data and as --val-data; a tomogram "
                             "either trains or validates")
    t0 = time.perf_counter()
    with con.busy("opening training data"):
        volumes = open_training_data(args.data, args.task, label_name=args.labels)
        if args.val_data:
            train, val = volumes, open_training_data(args.val_data, args.task,
                                                     label_name=args.labels)
        else:
            train, val = split_by_tomogram(volumes, args.val_fraction, args.seed)
    what = args.task if args.arch == "unet2d" else f"{args.task} ({args.arch})"
    con.say(f"training {what} on {len(train)} tomogram(s) ({', '.join(v.name for v in train)}), "
            f"validating on {len(val)} ({', '.join(v.name for v in val) or 'none'})")
    with _EpochBars(con, config.epochs) as progress:
        result = trainer(train, val, args.out, config, resume=args.resume,
                         overwrite=args.overwrite, progress=progress)
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best.items()
                     if k.startswith("val_") or k == "loss")
    stage = "stage 2 " if args.arch == "cascade" else ""
    con.say(f"wrote {result.checkpoint} (best {stage}epoch {int(result.best.get('epoch', 0))}: "
            f"{best}) in {time.perf_counter() - t0:.0f} s")
    return {"checkpoint": str(result.checkpoint), "history": result.history, "best": result.best,
            "files": [str(f) for f in result.files]}


def _check_arch(args: argparse.Namespace) -> None:
    """``--arch`` fits the task, and every family-specific option fits ``--arch``."""
    from sxtdask.errors import ConfigError

    if args.arch != "unet2d" and args.task != "cell":
        raise ConfigError(f"--arch {args.arch} trains the cell task, not {args.task!r} (use "
                          "--task cell, or --arch unet2d)")
    for dest, archs in _ONLY.items():
        value = getattr(args, dest, None)
        if value is not None and value is not False and args.arch not in archs:
            flag = "--intensity-jitter" if dest == "jitter" else f"--{dest.replace('_', '-')}"
            raise ConfigError(f"{flag} is an option of --arch {' or '.join(archs)}, not of "
                              f"--arch {args.arch}")
    if args.arch == "cascade" and args.patch is not None:
        raise ConfigError("--patch is not a cascade option: its blocks are --block")


def _trainer(args: argparse.Namespace) -> tuple[Any, Any]:
    """The configuration and the training function of the command's options."""
    from sxtdask.errors import ConfigError
    from sxtdask.train import UNetTrainConfig, train_unet

    common = {"epochs": "epochs", "steps_per_epoch": "steps_per_epoch", "batch_size": "batch_size",
              "patch": "patch", "lr": "lr", "seed": "seed", "device": "device"}
    if args.arch == "cascade":
        from sxtdask.train import CascadeTrainConfig, train_cascade

        args.block, args.block2 = (None, None) if args.block is None else _block(args.block)
        opts = _options(args, {**common, "width": "width", "patience": "patience",
                               "depth": "depth", "block": "block", "block2": "block2",
                               "binning": "binning", "val_blocks": "val_blocks",
                               "preprocessing": "preprocessing", "instancenorm": "instancenorm",
                               "foreground": "foreground",
                               "label_map": "label_map",
                               "ignore_label": "ignore_label"})
        return CascadeTrainConfig(**opts), train_cascade
    if args.arch == "unet3d":
        from sxtdask.train import UNet3DTrainConfig, train_unet3d

        if args.width is not None:
            raise ConfigError("--width is not a unet3d option: its filters are --filters")
        if args.filters is not None:
            args.filters = _ints(args.filters, "--filters", "F1-F2-...")
        if args.scale is not None:
            scale = _ints(args.scale, "--scale", "N or Z,Y,X")
            if len(scale) not in (1, 3):
                raise ConfigError(f"--scale {args.scale!r} must be N or Z,Y,X")
            args.scale = scale * 3 if len(scale) == 1 else scale
        opts = _options(args, {**common, "patience": "patience", "filters": "filters",
                               "scale": "scale", "label_map": "label_map",
                               "ignore_label": "ignore_label"})
        return UNet3DTrainConfig(**opts, resnet=bool(args.resnet)), train_unet3d
    if args.task == "isg-maskrcnn":
        from sxtdask.train import MaskRCNNTrainConfig, train_maskrcnn

        if getattr(args, "jitter", None) is not None:
            raise ConfigError("--intensity-jitter is a U-Net option")
        return MaskRCNNTrainConfig(**_options(
            args, {**common, "min_size": "min_size", "patience": "patience"})), train_maskrcnn
    if getattr(args, "jitter", None) is None:
        args.jitter = "mild"
    for flag in ("min_size", "patience"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} is a Mask R-CNN option")
    if args.context is None:
        args.context = 1 if args.task == "mito" else 0
    config = UNetTrainConfig(**_options(args, {**common, "width": "width",
                                               "context": "context", "jitter": "jitter"}))
    task = args.task

    def trainer(train: Any, val: Any, out: Any, config: Any, **kw: Any) -> Any:
        return train_unet(task, train, val, out, config, **kw)

    return config, trainer


def _ints(text: str, flag: str, form: str) -> tuple[int, ...]:
    from sxtdask.errors import ConfigError

    try:
        return tuple(int(v) for v in text.replace("-", ",").split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be integers ({form})") from None


def _block(text: str) -> tuple[int, int | None]:
    from sxtdask.errors import ConfigError

    sizes = _ints(text, "--block", "N or N,N2")
    if len(sizes) not in (1, 2):
        raise ConfigError(f"--block {text!r} must be N or N,N2")
    return sizes[0], sizes[1] if len(sizes) == 2 else None


class _EpochBars:
    """One bar per epoch over its optimiser steps; a line of loss and validation metrics after it."""

    def __init__(self, con: Console, epochs: int) -> None:
        self.con, self.epochs = con, epochs
        self.epoch: tuple[int, int] = (0, 0)
        self.label = ""
        self.cm: Any = None
        self.update: Any = None
        self.losses: list[float] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.cm is not None:
            self.cm.__exit__(None, None, None)
            self.cm = None

    def __call__(self, epoch: int, step: int, steps: int, info: dict[str, float]) -> None:
        stage = int(info.get("stage", 0))
        self.label = (f"stage {stage} " if stage else "") + f"epoch {epoch}/{self.epochs}"
        if (stage, epoch) != self.epoch:
            self._close()
            self.epoch, self.losses = (stage, epoch), []
            self.cm = self.con.steps(self.label, steps)
            self.update = self.cm.__enter__()
        if "loss" in info:
            self.losses.append(info["loss"])
            recent = self.losses[-20:]
            self.update(step, steps, f"loss {sum(recent) / len(recent):.4f}")
            return
        self._close()
        mean = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        metrics = ", ".join(f"{k[4:]} {v:.4f}" for k, v in info.items() if k.startswith("val_"))
        self.con.say(f"{self.label}: loss {mean:.4f}"
                     + (f"; validation {metrics}" if metrics else ""),
                     epoch=epoch, loss=mean, **info)
