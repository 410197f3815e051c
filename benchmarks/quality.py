"""Quality of the bundled U-Nets on phantoms never used in training, per family and pooled, and on
the real tomogram in shared/fixtures (sample_12.rec) against its sparse labels.

Each phantom goes through the user's route, as commands: ``sxtdask synth`` (with its scene and
imaging flags) → ``sxtdask convert`` → ``sxtdask segment --task cell,mito,isg-instances``
(bundled weights, no ``--model``) → ``sxtdask evaluate`` against the phantom's ground truth.

The families span the variations: ``classic`` (the old phantoms: no regression), ``wide`` (every
LAC, PSF, noise and clutter drawn wide, direct imaging), ``capillary`` and ``grid`` (tilt series,
photon noise, FBP), and two families that training never saw: ``capillary-60`` (a ±60° tilt
series in a capillary) and ``grid-sirt`` (SIRT on a grid). The training seeds are 1000-1039
(``benchmarks/train_bundled.py``); these are 9000 and up. Figures are pooled per family and over
all (Dice from summed voxel counts, F1 from summed TP/FP/FN), with each family's minimum.

sample_12.rec: cell Dice over the annotated voxels only (label 2 is "unannotated"); its AmiraMesh
header carries no voxel size, so 30 nm is given (``--voxel-size 30``; the 2-D networks resize whole
planes and do not use it).

``--cell-methods unet,cascade,unet3d`` (``METHOD-clean``: with ``--clean 0.1``) segments every
phantom's cell with each method
(``--name cell-<method>``, beside the 2-D U-Net's ``cell``) and prints, per family and pooled, the
cell Dice and the relative error of the cell's surface-to-volume ratio (from ``sxtdask evaluate``'s
morphometrics) side by side: the cascade works at full resolution, ``unet3d`` on Biomedisa's
resized grid (``--unet3d-model``: a Biomedisa .h5 or a checkpoint of ``sxtdask train --arch
unet3d``; its grid is the file's).

Usage::

    python benchmarks/quality.py [--families classic,wide,...] [--shape 128,256,256] [--work DIR]
    python benchmarks/quality.py --cell-methods unet,cascade,cascade-clean,unet3d --unet3d-model u3.pt
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "real_sxt"
TARGETS = {"cell Dice": 0.97, "nucleus Dice": 0.95, "mito Dice": 0.85, "ISG F1@0.5": 0.95}
FAMILIES = {  # family -> (synth flags, seeds)
    "classic": ([], (9000, 9001, 9002)),
    "wide": (["--variation", "wide"], (9010, 9011)),
    "capillary": (["--mount", "capillary"], (9020, 9021)),
    "grid": (["--mount", "grid"], (9030, 9031)),
    "capillary-60": (["--mount", "capillary", "--tilt", "60"], (9040,)),
    "grid-sirt": (["--mount", "grid", "--recon", "sirt", "--iterations", "30"], (9050,)),
}


def sh(*cmd: str) -> None:
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def tally() -> dict[str, list[int]]:
    return {"cell": [0, 0], "nucleus": [0, 0], "mito": [0, 0], "isg": [0, 0, 0]}


def add(total: dict[str, list[int]], m: dict) -> None:
    for name, (label, cls) in {"cell": ("cell", "cell"), "nucleus": ("cell", "nucleus"),
                               "mito": ("mito", "1")}.items():
        c = m[label]["classes"][cls]
        total[name][0] += 2 * c["overlap_voxels"]
        total[name][1] += c["true_voxels"] + c["pred_voxels"]
    for i, k in enumerate(("tp", "fp", "fn")):
        total["isg"][i] += m["isg"]["match_50"][k]


def figures(total: dict[str, list[int]]) -> dict[str, float]:
    tp, fp, fn = total["isg"]
    return {"cell Dice": total["cell"][0] / max(1, total["cell"][1]),
            "nucleus Dice": total["nucleus"][0] / max(1, total["nucleus"][1]),
            "mito Dice": total["mito"][0] / max(1, total["mito"][1]),
            "ISG F1@0.5": 2 * tp / max(1, 2 * tp + fp + fn)}


def sample12(exe: str, work: Path, cluster: list[str], models: list[str]) -> float | None:
    """Cell Dice of the bundled cell U-Net on sample_12.rec over its annotated voxels."""
    from sxtdask.io import open_labels, open_volume

    rec, lab = SAMPLE / "sample_12.rec", SAMPLE / "sample_12.labels"
    if not rec.exists() or not lab.exists():
        print(f"sample_12: {SAMPLE} not found; skipped")
        return None
    data = work / "sample_12.zarr"
    sh(exe, "-q", "convert", str(rec), str(data), "--voxel-size", "30", "--overwrite")
    sh(exe, "-q", "segment", str(data), "--task", "cell", "--overwrite", *models, *cluster)
    pred = np.asarray(open_labels(data, "cell").compute()) > 0
    truth = np.asarray(open_volume(lab)[:])
    annotated = truth != 2
    t, p = truth[annotated] == 1, pred[annotated]
    dice = 2 * np.count_nonzero(t & p) / max(1, np.count_nonzero(t) + np.count_nonzero(p))
    print(f"sample_12.rec {truth.shape}: cell Dice on the {np.count_nonzero(annotated)} annotated "
          f"voxels {dice:.4f} (target >= 0.90; 30 nm voxels assumed, the file gives none)")
    return dice


CELL_TARGETS = {"cascade": (0.97, 0.05), "cascade-clean": (0.97, 0.05)}  # Dice, |S/V error|


def cell_figures(m: dict) -> tuple[int, int, float]:
    """(2·overlap, true + predicted voxels, S/V relative error) of one cell evaluation."""
    c = m["classes"]["cell"]
    sv = m["morphometrics"]["cell"]["surface_to_volume_per_um_rel_error"]
    return 2 * c["overlap_voxels"], c["true_voxels"] + c["pred_voxels"], float(sv)


def cell_methods(exe: str, args: argparse.Namespace, work: Path, cluster: list[str]) -> None:
    """Cell Dice and S/V error per family and pooled, for each cell method side by side."""
    methods = args.cell_methods.split(",")
    rows: dict[str, dict[str, list[tuple[int, int, float]]]] = {m: {} for m in methods}
    for family in args.families.split(","):
        flags, seeds = FAMILIES[family]
        for seed in seeds:
            stem = work / f"q-{family}-{seed}"
            mrc, data, gt = Path(f"{stem}.mrc"), Path(f"{stem}.zarr"), Path(f"{stem}.gt.zarr")
            if not (data / "zarr.json").exists():
                sh(exe, "-q", "synth", str(mrc), "--shape", args.shape, "--seed", str(seed),
                   *flags, "--overwrite")
                sh(exe, "-q", "convert", str(mrc), str(data), "--overwrite")
            for method in methods:
                name = "cell" if method == "unet" else f"cell-{method}"
                metrics = Path(f"{stem}.{name}.metrics.json")
                if not metrics.exists():
                    base, _, clean = method.partition("-")
                    extra = (["--model", str(args.unet3d_model)] if base == "unet3d" else []) + (
                        ["--clean", str(args.clean)] if clean == "clean" else [])
                    sh(exe, "-q", "segment", str(data), "--task", "cell", "--method", base,
                       "--name", name, "--overwrite", *extra, *cluster)
                    sh(exe, "-q", "evaluate", str(data), str(gt), "--labels", f"{name}=cell",
                       "--no-coco", "--out", str(metrics), "--overwrite", *cluster)
                m = next(iter(json.loads(metrics.read_text())["labels"].values()))
                rows[method].setdefault(family, []).append(cell_figures(m))
    print(f"\ncell methods on phantoms {args.shape} never used in training: Dice, and the "
          "relative error of the cell's surface-to-volume ratio (mean |error| over tomograms)")
    print(f"  {'family':<13} " + "  ".join(f"{m + ' Dice':>14} {m + ' |S/V|':>14}"
                                           for m in methods))

    def line(name: str, per: dict[str, list[tuple[int, int, float]]]) -> str:
        cells = []
        for m in methods:
            got = per[m]
            dice = sum(a for a, _, _ in got) / max(1, sum(b for _, b, _ in got))
            sv = float(np.mean([abs(e) for _, _, e in got]))
            cells.append(f"{dice:14.4f} {sv:13.1%} ")
        return f"  {name:<13} " + "  ".join(cells)

    for family in args.families.split(","):
        print(line(family, {m: rows[m][family] for m in methods}))
    pooled = {m: [r for f in rows[m].values() for r in f] for m in methods}
    print(line("pooled", pooled))
    for m, (dice_t, sv_t) in CELL_TARGETS.items():
        if m in pooled:
            got = pooled[m]
            dice = sum(a for a, _, _ in got) / max(1, sum(b for _, b, _ in got))
            sv = float(np.mean([abs(e) for _, _, e in got]))
            worst = min(rows[m], key=lambda f: sum(a for a, _, _ in rows[m][f]) /
                        max(1, sum(b for _, b, _ in rows[m][f])))
            print(f"  {m}: pooled Dice {dice:.4f} (target >= {dice_t}), |S/V error| {sv:.1%} "
                  f"(target <= {sv_t:.0%}); lowest-Dice family {worst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--shape", default="128,256,256")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--workers", default="1")
    ap.add_argument("--tag", default="bundled", help="names the metrics files of this run")
    ap.add_argument("--models", type=Path, default=None,
                    help="a folder of {cell,mito,isg}_unet.pt to measure instead of the bundled")
    ap.add_argument("--cell-methods", default=None,
                    help="compare cell methods instead (e.g. unet,cascade,unet3d)")
    ap.add_argument("--clean", type=float, default=0.1,
                    help="the --clean of the methods named METHOD-clean (e.g. cascade-clean)")
    ap.add_argument("--unet3d-model", type=Path, default=None,
                    help="the unet3d method's model (a Biomedisa .h5 or sxtdask checkpoint)")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("sxtdask"))
    work = args.work or Path(tempfile.mkdtemp(prefix="sxtdask-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = ["--workers", args.workers, "--threads-per-worker", "2"]
    if args.cell_methods:
        if "unet3d" in args.cell_methods.split(",") and args.unet3d_model is None:
            ap.error("--cell-methods unet3d needs --unet3d-model")
        cell_methods(exe, args, work, cluster)
        return
    models: list[str] = []
    for task, name in (("cell", "cell"), ("mito", "mito"), ("isg-instances", "isg")):
        if args.models is not None:
            models += ["--model", f"{task}={args.models / f'{name}_unet.pt'}"]
    pooled, per_family = tally(), {}
    for family in args.families.split(","):
        flags, seeds = FAMILIES[family]
        total = per_family[family] = tally()
        for seed in seeds:
            stem = work / f"q-{family}-{seed}"
            mrc, data = Path(f"{stem}.mrc"), Path(f"{stem}.zarr")
            gt, metrics = Path(f"{stem}.gt.zarr"), Path(f"{stem}.{args.tag}.metrics.json")
            if not metrics.exists():
                if not (data / "zarr.json").exists():
                    sh(exe, "-q", "synth", str(mrc), "--shape", args.shape, "--seed", str(seed),
                       *flags, "--overwrite")
                    sh(exe, "-q", "convert", str(mrc), str(data), "--overwrite")
                sh(exe, "-q", "segment", str(data), "--task", "cell,mito,isg-instances",
                   "--overwrite", *models, *cluster)
                sh(exe, "-q", "evaluate", str(data), str(gt), "--out", str(metrics),
                   "--overwrite", *cluster)
            m = json.loads(metrics.read_text())["labels"]
            add(total, m)
            add(pooled, m)
            f = figures(_one(m))
            print(f"{family} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in f.items()),
                  flush=True)
    print(f"\nbundled U-Nets on phantoms {args.shape} of seeds never used in training:")
    print(f"  {'family':<13} " + "  ".join(f"{k:>12}" for k in TARGETS))
    table = {family: figures(t) for family, t in per_family.items()}
    for family, f in table.items():
        print(f"  {family:<13} " + "  ".join(f"{f[k]:12.4f}" for k in TARGETS))
    pool = figures(pooled)
    print(f"  {'pooled':<13} " + "  ".join(f"{pool[k]:12.4f}" for k in TARGETS))
    for k, target in TARGETS.items():
        worst = min(table.items(), key=lambda kv: kv[1][k])
        ok = "meets" if pool[k] >= target else "MISSES"
        print(f"  {k:<13} pooled {pool[k]:.4f} (target >= {target:.2f}: {ok}); family minimum "
              f"{worst[1][k]:.4f} ({worst[0]})")
    sample12(exe, work, cluster, models[:2])


def _one(m: dict) -> dict[str, list[int]]:
    t = tally()
    add(t, m)
    return t


if __name__ == "__main__":
    main()
