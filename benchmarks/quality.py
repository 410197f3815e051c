"""Quality of the bundled U-Nets on phantoms of seeds never used in training, against the targets.

Each phantom goes through the user's route, as commands: ``sxtdask synth`` → ``sxtdask convert``
→ ``sxtdask segment --task cell,mito,isg-instances`` (bundled weights, no ``--model``) →
``sxtdask evaluate`` against the phantom's ground truth. The figures are pooled over the phantoms
(Dice from summed voxel counts, F1 from summed TP/FP/FN) and printed beside the targets of the
issue: cell Dice ≥ 0.95, nucleus Dice ≥ 0.92, mitochondria Dice ≥ 0.80, ISG instances
F1@IoU0.5 ≥ 0.90. The training seeds are 1000-1009 (``benchmarks/train_bundled.py``); these are
9000 and up.

Usage::

    python benchmarks/quality.py [--seeds 9000,9001,9002] [--shape 128,256,256] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = {"cell Dice": 0.95, "nucleus Dice": 0.92, "mito Dice": 0.80, "ISG F1@0.5": 0.90}


def sh(*cmd: str) -> None:
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="9000,9001,9002")
    ap.add_argument("--shape", default="128,256,256")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--workers", default="1")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("sxtdask"))
    work = args.work or Path(tempfile.mkdtemp(prefix="sxtdask-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = ["--workers", args.workers, "--threads-per-worker", "2"]
    pooled = {"cell": [0, 0], "nucleus": [0, 0], "mito": [0, 0]}  # [2·overlap, true + pred]
    tp = fp = fn = 0
    extra: dict[str, list[float]] = {"ap_3d": [], "coco_map": [], "coco_map50": [], "coco_ar100": [],
                                     "cell_volume_err": [], "cell_sv_err": [], "nucleus_volume_err": []}
    for seed in args.seeds.split(","):
        mrc, gt, data = work / f"q{seed}.mrc", work / f"q{seed}.gt.zarr", work / f"q{seed}.zarr"
        metrics = work / f"q{seed}.metrics.json"
        sh(exe, "-q", "synth", str(mrc), "--shape", args.shape, "--seed", seed, "--overwrite")
        sh(exe, "-q", "convert", str(mrc), str(data), "--overwrite")
        sh(exe, "-q", "segment", str(data), "--task", "cell,mito,isg-instances", "--overwrite",
           "--report", str(work / f"q{seed}.run.json"), *cluster)
        sh(exe, "-q", "evaluate", str(data), str(gt), "--out", str(metrics), "--overwrite", *cluster)
        m = json.loads(metrics.read_text())["labels"]
        for name, (label, cls) in {"cell": ("cell", "cell"), "nucleus": ("cell", "nucleus"),
                                   "mito": ("mito", "1")}.items():
            c = m[label]["classes"][cls]
            pooled[name][0] += 2 * c["overlap_voxels"]
            pooled[name][1] += c["true_voxels"] + c["pred_voxels"]
        isg = m["isg"]
        tp, fp, fn = tp + isg["match_50"]["tp"], fp + isg["match_50"]["fp"], fn + isg["match_50"]["fn"]
        extra["ap_3d"].append(isg["ap_3d"]["ap"])
        extra["coco_map"].append(isg["coco_2d"]["map"])
        extra["coco_map50"].append(isg["coco_2d"]["map_50"])
        extra["coco_ar100"].append(isg["coco_2d"]["ar_100"])
        morph = m["cell"]["morphometrics"]
        extra["cell_volume_err"].append(morph["cell"]["volume_um3_rel_error"])
        extra["cell_sv_err"].append(morph["cell"]["surface_to_volume_per_um_rel_error"])
        extra["nucleus_volume_err"].append(morph["nucleus"]["volume_um3_rel_error"])
        print(f"seed {seed}: cell {m['cell']['classes']['cell']['dice']:.4f}, nucleus "
              f"{m['cell']['classes']['nucleus']['dice']:.4f}, mito {m['mito']['classes']['1']['dice']:.4f}, "
              f"ISG F1 {isg['match_50']['f1']:.4f} ({isg['gt_instances']} true, "
              f"{isg['pred_instances']} found)", flush=True)
    figures = {
        "cell Dice": pooled["cell"][0] / pooled["cell"][1],
        "nucleus Dice": pooled["nucleus"][0] / pooled["nucleus"][1],
        "mito Dice": pooled["mito"][0] / pooled["mito"][1],
        "ISG F1@0.5": 2 * tp / (2 * tp + fp + fn),
    }
    print(f"\nbundled U-Nets on phantoms {args.shape}, seeds {args.seeds} (unseen in training):")
    for name, value in figures.items():
        ok = "meets" if value >= TARGETS[name] else "MISSES"
        print(f"  {name:<13} {value:.4f}   target >= {TARGETS[name]:.2f}   {ok}")
    mean = {k: sum(v) / len(v) for k, v in extra.items()}
    print(f"  ISG 3-D AP@[.5:.95] {mean['ap_3d']:.4f}; 2-D slice-wise COCO mAP@[.5:.95] "
          f"{mean['coco_map']:.4f}, mAP@.5 {mean['coco_map50']:.4f}, AR@100 {mean['coco_ar100']:.4f} "
          "(reference Mask R-CNN on its own validation set: 0.2276, 0.6137, 0.367)")
    print(f"  relative errors: cell volume {mean['cell_volume_err']:+.3f}, cell surface/volume "
          f"{mean['cell_sv_err']:+.3f}, nucleus volume {mean['nucleus_volume_err']:+.3f}")


if __name__ == "__main__":
    main()
