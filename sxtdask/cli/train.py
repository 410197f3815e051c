"""``sxtdask train``: train a U-Net (cell, mito, isg) or Mask R-CNN (isg-maskrcnn) on labelled tomograms."""

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
"""
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
    own.add_argument("--labels", default=None, metavar="NAME",
                     help="label image to learn from in the stores (default: cell, mito or isg)")
    own.add_argument("--val-data", nargs="+", default=None, metavar="PATH",
                     help="validation tomograms (default: --val-fraction of --data)")
    own.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of the --data tomograms held out for validation")
    own.add_argument("--epochs", type=int, default=None,
                     help="passes over the data (default: U-Net 10, Mask R-CNN 20)")
    own.add_argument("--steps-per-epoch", type=int, default=None,
                     help="optimiser steps per epoch (default: U-Net 100)")
    own.add_argument("--batch-size", type=int, default=None,
                     help="patches per optimiser step (default: U-Net 8, Mask R-CNN 4)")
    own.add_argument("--patch", type=int, default=None,
                     help="patch side (default: U-Net 128, Mask R-CNN 256)")
    own.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default: U-Net 3e-3 AdamW, Mask R-CNN 0.005 SGD)")
    own.add_argument("--width", type=int, default=16,
                     help="U-Net base width (the reference's is 64)")
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
                     help="Mask R-CNN: stop after this many evaluations without improvement (default 3)")
    own.add_argument("--seed", type=int, default=0, help="random seed (runs are repeatable)")
    add_device_option(own)
    own.add_argument("--resume", action="store_true", help="continue an interrupted run of --out")
    own.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sub.add_parser(
        NAME, help="train a network on labelled tomograms (OME-Zarr with labels/, or IMAGE,LABELS)",
        description="Train the cell/nucleus, mitochondria or ISG U-Net, or the ISG Mask R-CNN. "
                    "The checkpoint is read by `segment --model PATH` and load_model(path).",
        parents=[own, output_options()])


def _options(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, arg) for arg, field in names.items()
            if getattr(args, arg) is not None}


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Train the network of ``args.task`` on the labelled tomograms ``args.data`` into ``args.out``."""
    from sxtdask.errors import ConfigError, InputError
    from sxtdask.train import (
        UNetTrainConfig,
        check_out,
        open_training_data,
        source_key,
        split_by_tomogram,
        train_unet,
    )

    check_out(args.out, args.resume, args.overwrite)  # before any data is read
    if args.val_data:
        both = {source_key(s) for s in args.data} & {source_key(s) for s in args.val_data}
        if both:
            raise InputError(f"{min(both)} is given both as --data and as --val-data; a tomogram "
                             "either trains or validates")
    common = {"epochs": "epochs", "steps_per_epoch": "steps_per_epoch", "batch_size": "batch_size",
              "patch": "patch", "lr": "lr", "seed": "seed", "device": "device"}
    if args.task == "isg-maskrcnn":
        from sxtdask.train import MaskRCNNTrainConfig, train_maskrcnn

        if getattr(args, "jitter", None) is not None:
            raise ConfigError("--intensity-jitter is a U-Net option")

        config: Any = MaskRCNNTrainConfig(**_options(
            args, {**common, "min_size": "min_size", "patience": "patience"}))
        trainer: Any = train_maskrcnn
    else:
        if getattr(args, "jitter", None) is None:
            args.jitter = "mild"
        for flag in ("min_size", "patience"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} is a Mask R-CNN option")
        if args.context is None:
            args.context = 1 if args.task == "mito" else 0
        config = UNetTrainConfig(**_options(args, {**common, "width": "width",
                                                   "context": "context", "jitter": "jitter"}))

        def trainer(train: Any, val: Any, out: Any, config: Any, **kw: Any) -> Any:
            return train_unet(args.task, train, val, out, config, **kw)

    t0 = time.perf_counter()
    with con.busy("opening training data"):
        volumes = open_training_data(args.data, args.task, label_name=args.labels)
        if args.val_data:
            train, val = volumes, open_training_data(args.val_data, args.task,
                                                     label_name=args.labels)
        else:
            train, val = split_by_tomogram(volumes, args.val_fraction, args.seed)
    con.say(f"training {args.task} on {len(train)} tomogram(s) ({', '.join(v.name for v in train)}), "
            f"validating on {len(val)} ({', '.join(v.name for v in val) or 'none'})")
    with _EpochBars(con, config.epochs) as progress:
        result = trainer(train, val, args.out, config, resume=args.resume,
                         overwrite=args.overwrite, progress=progress)
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best.items()
                     if k.startswith("val_") or k == "loss")
    con.say(f"wrote {result.checkpoint} (best epoch {int(result.best.get('epoch', 0))}: {best}) "
            f"in {time.perf_counter() - t0:.0f} s")
    return {"checkpoint": str(result.checkpoint), "history": result.history, "best": result.best,
            "files": [str(f) for f in result.files]}


class _EpochBars:
    """One bar per epoch over its optimiser steps; a line of loss and validation metrics after it."""

    def __init__(self, con: Console, epochs: int) -> None:
        self.con, self.epochs = con, epochs
        self.epoch = 0
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
        if epoch != self.epoch:
            self._close()
            self.epoch, self.losses = epoch, []
            self.cm = self.con.steps(f"epoch {epoch}/{self.epochs}", steps)
            self.update = self.cm.__enter__()
        if "loss" in info:
            self.losses.append(info["loss"])
            recent = self.losses[-20:]
            self.update(step, steps, f"loss {sum(recent) / len(recent):.4f}")
            return
        self._close()
        mean = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        metrics = ", ".join(f"{k[4:]} {v:.4f}" for k, v in info.items())
        self.con.say(f"epoch {epoch}/{self.epochs}: loss {mean:.4f}"
                     + (f"; validation {metrics}" if metrics else ""),
                     epoch=epoch, loss=mean, **info)
