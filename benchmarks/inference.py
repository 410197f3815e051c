"""U-Net inference: the chunked engine against a plain per-slice loop of the same model.

One network (random weights with the output bias centred, saved to a checkpoint both sides load)
segments the same phantom volume twice:

* the peer, in the reference style, in this process: the volume in memory, its min/max taken,
  then one slice at a time the reference preprocessing (``UNetSegmenter._prepare``, so the inputs
  are identical), a float32 forward pass with batch 1 under ``torch.no_grad()``, the nearest resize
  to the network's plane and back, and argmax (ISG: softmax > threshold). Torch uses its default
  intra-op threads (one per core). One warm-up slice is not timed.
* sxtdask: the OME-Zarr copy of the volume (slice-stack chunks) on a LocalCluster, timed from
  statistics through ``segment_store`` and ``StoreRun.finish()`` (labels written, pyramids built).
  Every worker loads the model and segments one slice before the clock starts.

The label images are compared voxel by voxel; throughputs (slices/s) and their ratio are printed.

CPU configuration (default): one worker with one thread per core, torch one intra-op thread per
task (slices in parallel, not each slice across cores), batch 1. Dask starts its workers with
``OMP_NUM_THREADS=1`` (so torch uses one thread however many cores are idle),
``MALLOC_TRIM_THRESHOLD_=65536`` (which turns off glibc's adaptive mmap threshold, so every large
activation is a fresh mmap and page faults) and a 10 ms statistical profiler; this script sets
``OMP_NUM_THREADS`` to ``cores // (workers × threads)`` and gives the workers glibc's defaults, as
the peer has (sxtdask's own local clusters set glibc's grown limits instead of Dask's value:
``sxtdask.engine.worker_environ``), and no profiler (``--dask-worker-defaults`` keeps Dask's).
``--keep-freed-memory`` turns mmap and trimming off on both sides (no page faults for
activations; both get faster).

    python benchmarks/inference.py --slices 8                # cell U-Net, width 64, 8 × 256 × 256
    python benchmarks/inference.py --slices 8 --model isg --width 16
    python benchmarks/inference.py --device cuda --slices 64  # 1 worker × 2 threads, batch 8, bf16
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_TASKS = {"cell": "CELL", "mito": "MITO", "isg": "ISG"}
_KINDS = {"cell": "CELL_NUCLEUS", "mito": "MITO", "isg": "ISG"}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _checkpoint(model: str, width: int, path: Path, sample: np.ndarray) -> Path:
    """Random weights, with the last layer's bias shifted so that every class wins somewhere on
    ``sample`` (the network input of one slice); otherwise one class wins everywhere and the
    label comparison would say nothing.
    """
    import torch

    from sxtdask.models import ModelKind, build_unet

    torch.manual_seed(0)
    net = build_unet(getattr(ModelKind, _KINDS[model]), width=width).eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        logits = net(torch.from_numpy(sample))
        last.bias -= logits.mean(dim=(0, 2, 3))
    torch.save(net.state_dict(), path)
    return path


def _peer(seg: Any, vol: np.ndarray, device: str) -> tuple[np.ndarray, float, float, float]:
    """The reference style: one slice at a time, float32, no_grad. Returns labels, seconds for
    the timed slices, and the volume's min and max.
    """
    import torch
    import torch.nn.functional as F

    from sxtdask.models import load_unet
    from sxtdask.segmenters import Task
    from sxtdask.segmenters._unet import CELL_SIZE
    from sxtdask.stats import IntensityStats

    net = load_unet(seg.model_path, device=device).eval()
    resize = seg.task is not Task.ISG

    def one(z: int, stats: IntensityStats) -> np.ndarray:
        x = torch.from_numpy(seg._prepare(vol[z : z + 1], stats)).to(device)
        if resize:
            x = F.interpolate(x, size=CELL_SIZE, mode="nearest")
        prob = net(x).softmax(dim=1)
        if resize:
            prob = F.interpolate(prob, size=vol.shape[1:], mode="nearest")
        if seg.task is Task.ISG:
            lab = prob[:, 1] > seg.threshold
        else:
            lab = prob.argmax(dim=1)
        return lab.to(torch.uint8).cpu().numpy()[0]

    out = np.zeros(vol.shape, np.uint8)
    with torch.no_grad():
        lo, hi = float(vol.min()), float(vol.max())
        warm = IntensityStats(lo, hi, 0.0, 0.0, lo, hi, vol.size)
        one(0, warm)  # warm-up, not timed
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        lo, hi = float(vol.min()), float(vol.max())
        stats = IntensityStats(lo, hi, 0.0, 0.0, lo, hi, vol.size)
        for z in range(vol.shape[0]):
            out[z] = one(z, stats)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0, lo, hi


def _warm_worker(seg: Any, block: np.ndarray, stats: Any) -> dict[str, int]:
    """Load the model in this worker and segment one slice; report torch's thread count."""
    import torch

    import sxtdask.engine._run  # noqa: F401  (the engine's imports, as the tasks need them)

    seg.segment_block(block, stats, (30.0, 30.0, 30.0))
    return {"torch_threads": torch.get_num_threads(), "pid": os.getpid()}


def _in_task() -> tuple[int, str]:
    """Torch's thread count inside a task, and the worker's malloc and profiler settings."""
    import dask
    import torch

    env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    profile = dask.config.get("distributed.worker.profile.enabled")
    return torch.get_num_threads(), f"{env or 'glibc malloc defaults'}, profiler {profile}"


_KEEP_FREED = {"MALLOC_MMAP_MAX_": 0, "MALLOC_TRIM_THRESHOLD_": 2**31 - 1}


def _keep_freed_memory() -> None:
    """``_KEEP_FREED`` in this (already started) process: mallopt(M_MMAP_MAX / M_TRIM_THRESHOLD)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(-4, _KEEP_FREED["MALLOC_MMAP_MAX_"])
            and libc.mallopt(-1, _KEEP_FREED["MALLOC_TRIM_THRESHOLD_"])):
        raise RuntimeError("mallopt failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(_TASKS), default="cell")
    parser.add_argument("--width", type=int, default=64, help="base channels (64 = reference)")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--shape", default="256,256", help="the phantom's (Y, X) plane")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per forward pass (default: CPU 1, GPU 8; on CPU larger "
                             "batches are slower at the reference width)")
    parser.add_argument("--chunk-z", type=int, default=None,
                        help="slices per chunk (default: the slices shared evenly by the worker "
                             "threads, at most the batch size)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (CPU; on a GPU dask-cuda starts one per GPU)")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="default: CPU one per core (each slice on one core), GPU 2 (one "
                             "thread prepares and writes while the other computes)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads per worker (default: cores // all threads)")
    parser.add_argument("--dask-worker-defaults", action="store_true",
                        help="keep Dask's worker settings that slow CPU inference: "
                             "MALLOC_TRIM_THRESHOLD_=65536 and the 10 ms statistical profiler")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="both sides: glibc malloc without mmap and without trimming, so "
                             "large activations reuse pages instead of faulting in fresh ones")
    args = parser.parse_args()
    plane = tuple(int(v) for v in args.shape.split(","))

    import dask
    import torch

    from sxtdask import global_stats, make_phantom, segment_store
    from sxtdask.engine import ClusterConfig, connect, load_counts
    from sxtdask.io import open_image, open_labels, write_image
    from sxtdask.segmenters import Task, UNetSegmenter
    from sxtdask.segmenters._unet import CELL_SIZE, resolve_device
    from sxtdask.stats import IntensityStats

    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    cores = _cores()
    workers = args.workers
    threads = args.threads_per_worker or (2 if gpu else max(1, cores // workers))
    batch = args.batch_size or (8 if gpu else 1)
    torch_threads = args.torch_threads or max(1, cores // (workers * threads))
    slots = workers * threads
    cz = args.chunk_z or max(1, min(batch, math.ceil(args.slices / slots)))

    tmp = Path(tempfile.mkdtemp(prefix="sxtdask-bench-"))
    try:
        t0 = time.perf_counter()
        depth = max(32, args.slices)  # phantoms are at least 16 deep; keep the middle slices
        start = (depth - args.slices) // 2
        vol = np.ascontiguousarray(
            make_phantom((depth, *plane), seed=args.seed).image[start : start + args.slices])
        path = write_image(vol, tmp / "vol.ome.zarr", chunks=(cz, *plane),
                           voxel_size_nm=(30.0, 30.0, 30.0))
        seg = UNetSegmenter(task=getattr(Task, _TASKS[args.model]), device=device,
                            batch_size=batch)
        lo, hi = float(vol.min()), float(vol.max())
        sample = torch.from_numpy(seg._prepare(
            vol[args.slices // 2 : args.slices // 2 + 1], IntensityStats(lo, hi, 0, 0, lo, hi, 1)))
        if seg.task is not Task.ISG:
            sample = torch.nn.functional.interpolate(sample, size=CELL_SIZE, mode="nearest")
        ckpt = _checkpoint(args.model, args.width, tmp / f"{args.model}_unet.pth", sample.numpy())
        seg = seg.load_model(ckpt)
        name = seg.outputs[0].name
        print(f"model {args.model} U-Net, width {args.width}, random weights (output bias "
              f"centred); volume {vol.shape} float32 in {cz}-slice chunks; device {device}; "
              f"made in {time.perf_counter() - t0:.0f} s")

        if args.keep_freed_memory:
            _keep_freed_memory()
        ref, t_peer, lo, hi = _peer(seg, vol, device)
        malloc = "malloc keeps freed memory" if args.keep_freed_memory else "glibc malloc defaults"
        print(f"peer (one process, per slice, batch 1, float32, no_grad, torch "
              f"{torch.get_num_threads()} threads, {malloc}): {t_peer:.2f} s, "
              f"{args.slices / t_peer:.3f} slices/s")

        environ = {"OMP_NUM_THREADS": torch_threads, "MKL_NUM_THREADS": torch_threads,
                   "OPENBLAS_NUM_THREADS": torch_threads}
        settings: dict[str, Any] = {}
        if args.dask_worker_defaults:
            environ["MALLOC_TRIM_THRESHOLD_"] = 65536
        else:
            settings["distributed.worker.profile.enabled"] = False
        if args.keep_freed_memory:
            environ.update(_KEEP_FREED)
        settings["distributed.nanny.pre-spawn-environ"] = environ
        # On a GPU, inference tasks need a worker with a GPU resource: dask-cuda, as the CLI.
        config = ClusterConfig(workers=workers, threads_per_worker=threads,
                               dashboard_address=":0", gpu=gpu)
        with dask.config.set(settings), connect(config) as client:
            warm_stats = client.compute(global_stats(open_image(path).data)).result()
            info = client.run(_warm_worker, seg, vol[:1], warm_stats)
            in_task, worker_env = client.submit(_in_task, pure=False).result()
            t0 = time.perf_counter()
            stats = client.compute(global_stats(open_image(path).data)).result()
            t1 = time.perf_counter()
            run = segment_store(path, seg, stats, overwrite=True)
            client.compute(run.graph).result()
            t2 = time.perf_counter()
            run.finish()
            t_sx = time.perf_counter() - t0
            stages = (f"statistics {t1 - t0:.2f} s, segmentation {t2 - t1:.2f} s, "
                      f"finish {t0 + t_sx - t2:.2f} s")
            loads = client.run(load_counts)
        got = open_labels(path, name).compute()
        per_worker = sorted({i["torch_threads"] for i in info.values()})
        print(f"sxtdask ({workers} worker(s) x {threads} thread(s), torch {per_worker} "
              f"thread(s) per worker ({in_task} inside a task), {worker_env}, batch size {batch}, "
              f"{run.n_chunks} chunks, model loads per worker "
              f"{sorted(sum(v.values()) for v in loads.values())}): {t_sx:.2f} s, "
              f"{args.slices / t_sx:.3f} slices/s ({stages})")
        same = float(np.mean(got == ref))
        classes = ", ".join(f"{c}: {np.mean(ref == c):.1%}" for c in np.unique(ref))
        print(f"sxtdask / peer throughput: {t_peer / t_sx:.2f}x (target >= 1.0 on CPU, >= 3 on "
              f"a GPU); labels equal at {same:.4%} of voxels (peer classes {classes}); "
              f"min/max equal to the engine's statistics: {(lo, hi) == (stats.min, stats.max)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
