"""Reproduce sxtdask's bundled default weights (``sxtdask/weights/*_unet.pt``).

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

Usage::

    python benchmarks/train_bundled.py --work /tmp/sxtdask-train [--tasks isg,cell,mito]

On the 2-core CPU machine (1 torch thread per run, ``OMP_NUM_THREADS=1``, two runs side by side)
isg and cell took 2 and 17 minutes (mito, classic only, 15); on a GPU, minutes.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--tasks", default="isg,cell,mito")
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
        out = args.work / f"{task}_unet_fp32.pt"
        sh(exe, "train", "--task", task, "--data", *(classic if task in CLASSIC_ONLY else data),
           "--val-fraction", "0.2",
           "--seed", "0", "--out", str(out), "--overwrite", *TRAIN[task])
        half = args.work / f"{task}_unet.pt"
        to_half(out, half)
        if args.install:
            dst = ROOT / "sxtdask" / "weights" / half.name
            dst.parent.mkdir(exist_ok=True)
            dst.write_bytes(half.read_bytes())
            print(f"installed {dst}", flush=True)


if __name__ == "__main__":
    main()
