"""Interpolation of sparse labels: Dice per class and method, time and peak memory, on phantoms;
and a cell U-Net trained on interpolated labels against one trained on the full truth.

**Quality and cost** (default). Every 20th z slice (10, 30, ...) of a phantom's truth is kept
and the rest set to 0 — the cell labels (0 ice, 1 cytoplasm, 2 nucleus) and, separately, the
mitochondria (0/1). Slices that keep nothing but 0 are unlabelled under Biomedisa's rule, as they
would be for an annotator's file. The sparse labels are interpolated by ``sxtdask interpolate``
in a subprocess (a local cluster of ``--workers`` single-thread workers, output a .npy file) and
scored against the full truth: the cell (cytoplasm and nucleus as one), the nucleus, the
mitochondria. Printed per run: Dice, the command's wall time (cluster start included) and its
interpolation stage, the seed voxels walked and steps per second per worker, the peak resident
memory of the whole process tree and of its largest process (sampled every 50 ms). Beside the
mitochondria, the share of their voxels in objects that some labelled slice crosses and the
Dice a perfect interpolation would reach (an object no labelled slice crosses has no seed).

Methods: ``shape`` (signed distance maps, PCHIP), ``walk`` (Biomedisa's smart interpolation at
its defaults: 10 walks × 4,000 steps from every seed voxel), ``walk-fast`` (the recommended
knobs: Biomedisa's 3×3×3 denoising, walks of 1,000 steps within 50 voxels of their seed, from
every 4th seed voxel in-plane and from every voxel within 4 voxels of a boundary),
``walk-denoise`` (Biomedisa's defaults plus its denoising).
The knobs were chosen on phantom seeds 101–103 at 128³ and 256³; the phantoms here use other
seeds (``classic:201`` = seed 201 of the classic family, ``capillary-tomo:202`` = a capillary
mount imaged as a tilt series and reconstructed, a family never used for tuning).

**Training** (``--train``): three phantoms of ``--train-shape`` train the 2-D cell U-Net twice —
on their full truth, and on the interpolation (``--train-method``) of every 20th slice of it —
with the same seed and steps; both are scored on two unseen phantoms (cell and nucleus Dice of
``sxtdask segment`` against the truth).

    python benchmarks/interpolate.py --shape 256 --cases classic:201,capillary-tomo:202
    python benchmarks/interpolate.py --shape 512 --cases classic:301 --methods shape,walk-fast
    python benchmarks/interpolate.py --train
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

METHODS: dict[str, list[str]] = {
    "shape": ["--method", "shape"],
    "walk": ["--method", "walk"],
    "walk-fast": ["--method", "walk", "--denoise", "--steps", "1000", "--reach", "50",
                  "--seed-stride", "4", "--boundary-band", "4"],
    "walk-denoise": ["--method", "walk", "--denoise"],
}
STEP = 20
OFFSET = 10


class TreeRSS:
    """Peak resident memory of a process and its children (sum, and the largest one)."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.total = self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                self.total = max(self.total, sum(rss))
                self.largest = max(self.largest, max(rss, default=0))
            except psutil.Error:
                pass
            time.sleep(every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = np.count_nonzero(a) + np.count_nonzero(b)
    return 2 * np.count_nonzero(a & b) / s if s else 1.0


def sparse_of(truth: np.ndarray) -> np.ndarray:
    out = np.zeros_like(truth)
    out[OFFSET::STEP] = truth[OFFSET::STEP]
    return out


def phantom(case: str, shape: tuple[int, int, int]) -> Any:
    from sxtdask.phantoms import make_phantom

    family, seed = case.split(":")
    kw: dict[str, Any] = {}
    if family.startswith("capillary"):
        kw["mount"] = "capillary"
    if family.endswith("tomo"):
        kw["imaging"] = "tomo"
    return make_phantom(shape, seed=int(seed), **kw)


def touched(mito: np.ndarray) -> float:
    """The share of mitochondrial voxels in objects that a labelled slice crosses."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(mito)
    hit = np.unique(lab[OFFSET::STEP])
    hit = hit[hit > 0]
    return float(np.isin(lab, hit).sum() / max(1, mito.sum()))


def interpolate(folder: Path, image: Path, labels: Path, method: str, workers: int,
                extra: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    out, report = folder / f"out-{method}.npy", folder / f"report-{method}.json"
    for p in (out, report):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "sxtdask.cli", "-q", "interpolate", str(image), str(labels),
           str(out), *METHODS[method], "--workers", str(workers), "--dashboard-address", ":0",
           "--report", str(report), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid)
    _, err = proc.communicate()
    rss.stop()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip()}")
    info = json.loads(report.read_text())
    info.update(wall=seconds, peak_total=rss.total, peak_largest=rss.largest)
    return np.load(out), info


def quality(args: argparse.Namespace) -> None:
    shape = (args.shape,) * 3 if len(args.shape_t) == 1 else args.shape_t
    load = os.getloadavg()[0]
    print(f"interpolation of every {STEP}th z slice, {'×'.join(map(str, shape))}, {args.workers} "
          f"workers; load average {load:.1f} on {os.cpu_count()} cores at the start", flush=True)
    for case in args.cases.split(","):
        p = phantom(case, shape)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            folder = Path(tmp)
            image = folder / "image.npy"
            np.save(image, p.image)
            for target in args.targets.split(","):
                truth = p.cell if target == "cell" else p.mito
                labels = folder / f"sparse-{target}.npy"
                np.save(labels, sparse_of(truth))
                if target == "mito":
                    f = touched(p.mito)
                    print(f"{case} mito: {f:.1%} of the voxels in objects a labelled slice crosses: "
                          f"a perfect interpolation scores Dice {2 * f / (1 + f):.3f}", flush=True)
                for method in args.methods.split(","):
                    out, info = interpolate(folder, image, labels, method, args.workers, [])
                    if target == "cell":
                        score = (f"cell {dice(out > 0, truth > 0):.4f} nucleus "
                                 f"{dice(out == 2, truth == 2):.4f}")
                    else:
                        score = f"mito {dice(out == 1, truth == 1):.4f}"
                    stage = info["stage_seconds"]["interpolation"]
                    rate = (f"{info['steps_walked'] / max(stage, 1e-9) / args.workers:.3g} steps/s "
                            f"per worker" if info["steps_walked"] else "")
                    print(f"{'×'.join(map(str, shape))} {case} {target:4s} {method:12s} {score}  "
                          f"wall {info['wall']:.1f} s (interpolation {stage:.1f} s)  seeds "
                          f"{info['seeds']:,} {rate}  peak {info['peak_total'] / 2**30:.2f} GiB "
                          f"(largest process {info['peak_largest'] / 2**30:.2f} GiB)", flush=True)
                    del out


def _run(cmd: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "sxtdask.cli", "-q", *cmd], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"sxtdask {' '.join(cmd)} failed: {proc.stderr.strip()}")


def training(args: argparse.Namespace) -> None:
    from sxtdask.io import open_labels
    from sxtdask.phantoms import write_phantom

    shape = args.train_shape
    cluster = ["--workers", str(args.workers), "--dashboard-address", ":0"]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        train, test = [], []
        for seed in (401, 402, 403):
            _, gt = write_phantom(folder / f"t{seed}.mrc", shape=shape, seed=seed)
            truth = open_labels(gt, "cell").compute()
            np.save(folder / f"s{seed}.npy", sparse_of(truth))
            _run(["interpolate", str(gt), str(folder / f"s{seed}.npy"), str(gt), "--name",
                  "cell-interp", *METHODS[args.train_method], *cluster])
            interp = open_labels(gt, "cell-interp").compute()
            print(f"train phantom {seed}: interpolated ({args.train_method}) cell Dice "
                  f"{dice(interp > 0, truth > 0):.4f} nucleus {dice(interp == 2, truth == 2):.4f}",
                  flush=True)
            train.append(gt)
        for seed in (501, 502):
            mrc, gt = write_phantom(folder / f"e{seed}.mrc", shape=shape, seed=seed)
            _run(["convert", str(mrc), str(folder / f"e{seed}.zarr")])
            test.append((folder / f"e{seed}.zarr", open_labels(gt, "cell").compute()))
        for labels in ("cell", "cell-interp"):
            model = folder / f"{labels}.pt"
            t0 = time.perf_counter()
            _run(["train", "--task", "cell", "--data", *map(str, train), "--labels", labels, "--out",
                  str(model), "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps),
                  "--val-fraction", "0.34", "--seed", "0", "--device", "cpu"])
            seconds = time.perf_counter() - t0
            scores = []
            for store, truth in test:
                _run(["segment", str(store), "--task", "cell", "--model", str(model), "--name",
                      f"pred-{labels}", "--overwrite", *cluster])
                pred = open_labels(store, f"pred-{labels}").compute()
                scores.append((dice(pred > 0, truth > 0), dice(pred == 2, truth == 2)))
            cell, nucleus = np.mean(scores, axis=0)
            print(f"cell U-Net trained on {'the full truth' if labels == 'cell' else 'interpolated labels'}"
                  f" ({args.epochs} epochs × {args.steps} steps, {seconds:.0f} s): unseen phantoms "
                  f"cell Dice {cell:.4f} nucleus {nucleus:.4f} "
                  f"({'; '.join(f'{c:.4f}/{n:.4f}' for c, n in scores)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="256", help="N (N³) or Z,Y,X")
    parser.add_argument("--cases", default="classic:201,capillary-tomo:202",
                        help="phantoms FAMILY:SEED (classic, capillary, capillary-tomo)")
    parser.add_argument("--targets", default="cell,mito")
    parser.add_argument("--methods", default="shape,walk-fast,walk",
                        help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="folder for the temporary files")
    parser.add_argument("--train", action="store_true", help="the training comparison instead")
    parser.add_argument("--train-shape", default="64,192,192")
    parser.add_argument("--train-method", default="shape", choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    args.shape_t = tuple(int(v) for v in args.shape.split(","))
    args.shape = args.shape_t[0]
    args.train_shape = tuple(int(v) for v in args.train_shape.split(","))
    if args.train:
        training(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
