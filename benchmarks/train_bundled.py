"""Reproduce sxtdask's bundled default weights (``sxtdask/weights/*_unet.pt`` and
``sxtdask/weights/cell_cascade.pt``).

Every step is an ``sxtdask`` command (printed as it runs), so the same can be typed by hand:

1. ``sxtdask synth`` phantoms of training seeds, four families of four (never used for
   evaluation, which uses seeds 9000+ and two more families in ``benchmarks/quality.py``):
   ``classic`` (1000-1003: sxtdask's first phantoms), ``wide`` (1010-1013: every LAC, the PSF,
   noise, texture and clutter drawn over wide ranges), ``capillary`` (1020-1023: cells in a
   glass tube, full tilt series, photon noise, FBP) and ``grid`` (1030-1033: ice on a grid,
   ±65°, the missing wedge);
2. ``sxtdask train --task {isg,cell}`` on them, with a fifth held out for validation (the
   mitochondria network is still trained on ten classic phantoms, seeds 1000-1009: see
   ``CLASSIC_ONLY``);
3. the best checkpoint's weights are stored as float16 (half the size; they are loaded back into
   float32 networks) beside its metadata, in ``sxtdask/weights/``.

The 3-D cell cascade (task ``cascade``: ``sxtdask train --task cell --arch cascade``, NCXT's
two stages) learns from the same sixteen phantoms (three held out for validation by the same
split) and is stored as float32 (stage 2 learnt from stage 1's float32 probabilities; the file
is under 1 MB). Its validation tomograms are then segmented whole by ``sxtdask segment --method
cascade`` and, for comparison in the same run, by the bundled 2-D cell U-Net (``--method unet``),
and ``sxtdask evaluate`` scores both against the phantoms' truth.

Usage::

    python benchmarks/train_bundled.py --work /tmp/sxtdask-train [--tasks isg,cell,mito,cascade]

On the 2-core CPU machine (1 torch thread per run, ``OMP_NUM_THREADS=1``, two runs side by side)
isg and cell took 2 and 17 minutes (mito, classic only, 15); on a GPU, minutes. The cascade
(width 8, 25 + 25 epochs of 40 steps of four 32³ blocks; stage 2 stopped early after epoch 23,
its best being epoch 13) trained in 22 minutes and the whole run with the evaluation took 32
(one torch thread, the machine shared with other work; the sixteen phantoms took 7 more to
make; peak memory 3.8 GB). Validation Dice of the bundled cascade (held-out classic-1002,
classic-1003, capillary-1023): on the 32 validation blocks, stage 2: exterior 0.963, cytoplasm
0.930, nucleus 0.899 (stage 1: 0.917, 0.857, 0.756); on the three whole tomograms segmented by
``sxtdask segment --method cascade``, mean per tomogram: cell 0.947, cytoplasm 0.923, nucleus
0.805, against the 2-D cell U-Net's 0.946, 0.888, 0.826 in the same run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "128,256,256"
FAMILIES = {  # family -> (synth flags, seeds)
    "classic": ([], range(1000, 1004)),
    "wide": (["--variation", "wide"], range(1010, 1014)),
    "capillary": (["--mount", "capillary"], range(1020, 1024)),
    "grid": (["--mount", "grid"], range(1030, 1034)),
}
# The mitochondria network is still the one trained on ten classic phantoms (seeds 1000-1009,
# named train<seed>): trained on the four families at width 8 it lost on the classic phantoms
# (Dice 0.83 -> 0.60) and gained nothing on the others (pooled 0.289 -> 0.281).
CLASSIC_ONLY = {"mito"}
# Per task: options of `sxtdask train` (width 8: ~0.5 M parameters, ~1 MB as float16). Strong
# intensity jitter is used for ISGs; for cell/nucleus it made the nucleus class collapse
# (validation nucleus Dice 0.00 against 0.80 with the mild default), so cell keeps mild.
TRAIN = {
    "isg": ["--width", "8", "--patch", "64", "--batch-size", "8", "--epochs", "12",
            "--steps-per-epoch", "100", "--lr", "4e-3", "--intensity-jitter", "strong"],
    "cell": ["--width", "8", "--patch", "192", "--batch-size", "4", "--epochs", "16",
             "--steps-per-epoch", "125", "--lr", "4e-3"],
    "mito": ["--width", "8", "--context", "1", "--patch", "128", "--batch-size", "8",
             "--epochs", "16", "--steps-per-epoch", "125", "--lr", "4e-3"],
}
# The 3-D cell cascade: NCXT's settings (depth 3, 32³ blocks, stage 1 binned ×2, CE + soft Dice,
# Adam with weight decay 3e-5, lr × 0.8 on a plateau of the 10-epoch mean loss) but for: width 8
# (NCXT: 32); lr 1e-3 (NCXT: 3e-4, for runs of hundreds of epochs); each stage 25 epochs of 40
# steps of 4 blocks, early stop after 10 epochs without a better validation Dice (NCXT: 50);
# half the blocks centred on a cytoplasm or nucleus voxel (NCXT: all uniform; the nucleus is 3-6 %
# of a phantom, and in pilot runs it was never predicted without); InstanceNorm in stage 1 only
# (NCXT: both; without it stage 1 found no nucleus in pilots, with it in stage 2 the exterior
# and cytoplasm Dice of stage 2 stayed below stage 1's: InstanceNorm removes the level of the
# probabilities stage 2 reads).
CASCADE = ["--task", "cell", "--arch", "cascade", "--width", "8", "--depth", "3", "--block", "32",
           "--binning", "2", "--epochs", "25", "--steps-per-epoch", "40", "--batch-size", "4",
           "--lr", "1e-3", "--patience", "10", "--val-blocks", "32", "--foreground-fraction",
           "0.5", "--instancenorm", "stage1"]


def sh(*cmd: str) -> None:
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def to_half(src: Path, dst: Path) -> None:
    """Copy an sxtdask checkpoint with its floating-point weights as float16."""
    import torch

    payload = torch.load(src, map_location="cpu", weights_only=True)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    payload["meta"]["stored_as"] = "float16"
    tmp = dst.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(dst)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sxtdask-train"))
    ap.add_argument("--tasks", default="isg,cell,mito,cascade")
    ap.add_argument("--install", action="store_true",
                    help="copy the float16 weights into sxtdask/weights/")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("sxtdask"))
    args.work.mkdir(parents=True, exist_ok=True)
    data, classic = [], []
    for seed in range(1000, 1010):
        mrc, gt = args.work / f"train{seed}.mrc", args.work / f"train{seed}.gt.zarr"
        if not gt.exists() and CLASSIC_ONLY & set(args.tasks.split(",")):
            sh(exe, "-q", "synth", str(mrc), "--shape", SHAPE, "--seed", str(seed))
        classic.append(str(gt))
    for family, (flags, seeds) in FAMILIES.items():
        for seed in seeds:
            mrc = args.work / f"train-{family}-{seed}.mrc"
            gt = args.work / f"train-{family}-{seed}.gt.zarr"
            if not gt.exists():
                sh(exe, "-q", "synth", str(mrc), "--shape", SHAPE, "--seed", str(seed), *flags)
            data.append(str(gt))
    for task in args.tasks.split(","):
        if task == "cascade":
            train_cascade(exe, args.work, data, args.install)
            continue
        out = args.work / f"{task}_unet_fp32.pt"
        sh(exe, "train", "--task", task, "--data", *(classic if task in CLASSIC_ONLY else data),
           "--val-fraction", "0.2",
           "--seed", "0", "--out", str(out), "--overwrite", *TRAIN[task])
        half = args.work / f"{task}_unet.pt"
        to_half(out, half)
        if args.install:
            install(half)


def install(path: Path, name: str | None = None) -> None:
    dst = ROOT / "sxtdask" / "weights" / (name or path.name)
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(path.read_bytes())
    print(f"installed {dst}", flush=True)


def train_cascade(exe: str, work: Path, data: list[str], install_it: bool) -> None:
    """Train the cascade, then segment its validation tomograms whole with it and with the 2-D
    cell U-Net, and print both Dice per class against the phantoms' truth.
    """
    import time

    from sxtdask.models import read_checkpoint_meta

    out = work / "cell_cascade.pt"
    t0 = time.perf_counter()
    sh(exe, "train", *CASCADE, "--data", *data, "--val-fraction", "0.2", "--seed", "0",
       "--out", str(out), "--overwrite")
    print(f"trained the cascade in {(time.perf_counter() - t0) / 60:.1f} min "
          f"({out.stat().st_size / 1e6:.2f} MB)", flush=True)
    meta = read_checkpoint_meta(out)
    assert meta is not None
    print("validation blocks (stage 2):", json.dumps(
        {k: round(v, 4) for k, v in meta["metrics"].items() if k.startswith("val_")}))
    scores: dict[str, list[dict[str, float]]] = {"cascade": [], "unet": []}
    for name in meta["val_data"]:
        gt = work / name
        image = work / f"eval-{name.removesuffix('.gt.zarr')}.zarr"
        sh(exe, "-q", "convert", str(gt.with_name(name.replace(".gt.zarr", ".mrc"))), str(image),
           "--overwrite")
        for method in scores:
            model = ["--model", str(out)] if method == "cascade" else []
            sh(exe, "-q", "segment", str(image), "--task", "cell", "--method", method, *model,
               "--name", "cell", "--overwrite", "--workers", "1")
            report = work / f"eval-{name}-{method}.json"
            sh(exe, "-q", "evaluate", str(image), str(gt), "--labels", "cell", "--no-coco",
               "--out", str(report), "--overwrite", "--workers", "1")
            scores[method].append(class_dice(json.loads(report.read_text())))
    for method, rows in scores.items():
        mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}
        print(f"whole validation tomograms, {method}: {json.dumps(mean)}", flush=True)
    if install_it:
        install(out)


def class_dice(report: dict) -> dict[str, float]:
    """Dice per part (cell = any foreground, cytoplasm, nucleus) from ``sxtdask evaluate``'s
    report of a cell label image.
    """
    return {str(k): float(v["dice"]) for k, v in report["labels"]["cell"]["classes"].items()}


if __name__ == "__main__":
    main()
