"""3-D inference: sxtdask's chunked ``unet3d`` and ``cascade`` against a plain single-process
sliding-window loop of the same weights.

Per method, the same phantom tomogram (default 256 × 512 × 512) is segmented twice:

* **the peer**, the way the reference tools run: the whole tomogram loaded into this process,
  then a plain loop. ``cascade``: NCXT's steps written out with NumPy (bin, stage-1 tiles fused
  into full-resolution arrays with the triangular window, smoothed, stage-2 tiles fused,
  argmax). ``unet3d``: Biomedisa's steps (resize the whole tomogram to the grid, min–max and
  mu/sig, 64³ patches at stride 32 summed, argmax, each label resized back). Torch uses one
  intra-op thread per core.
* **sxtdask**: the tomogram as OME-Zarr (z-slab chunks, with its mean pyramid), the whole
  pipeline (statistics, the per-tomogram work, blocks, label image and pyramid) on a
  LocalCluster of one worker with one thread per core and the environment sxtdask gives its own
  workers (one torch thread per task, glibc's grown malloc limits), timed from the start of the graph to the
  label image listed; its worker's resident memory sampled every 10 ms.

Printed per method: voxels/s of both and their ratio, the labels' agreement, the peak memory of
the worker and of the peer, and the worker's peak on a tomogram 4× smaller (the same plane,
a quarter of the slices: memory bounded by block and halo gives a ratio near 1; target ≤ 1.25).

Networks: the bundled cascade (``sxtdask/weights/cell_cascade.pt``) when present, otherwise a
random one with NCXT's example layout at ``--width``; for ``unet3d`` a random Biomedisa U-Net
with ``--filters`` (Biomedisa's own 32-…-512 costs about 72 GMAC per 64³ patch, hours on two
CPU cores). Random final layers are biased so that every class wins somewhere.

    python benchmarks/inference3d.py                       # both methods, 256×512×512
    python benchmarks/inference3d.py --methods cascade --shape 64,256,256
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from memory import PeakRSS  # benchmarks/memory.py


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- networks


def _balance(last: Any, logits: Any) -> None:
    """Shift a final layer's bias so that the classes' mean logits are equal."""
    import torch

    with torch.no_grad():
        last.bias -= logits.mean(dim=(0, 2, 3, 4))


def _cascade_model(work: Path, width: int, sample: np.ndarray) -> Path:
    from sxtdask.models import bundled_weights

    try:
        return bundled_weights("cascade")
    except Exception:  # noqa: BLE001 - no bundled cascade in this checkout: a random one
        pass
    import torch

    from sxtdask.models import CascadeConfig, NCXTCascade, StageConfig, save_checkpoint

    torch.manual_seed(0)
    cfg = CascadeConfig(stage1=StageConfig(start_filts=width, binning=2),
                        stage2=StageConfig(start_filts=width))
    net = NCXTCascade(cfg).eval()
    x = torch.from_numpy(sample[None, None, :32, :32, :32].copy())
    _balance(net.stage1.conv_final, net.stage1(x))
    _balance(net.stage2.conv_final, net.stage2(x.repeat(1, 3, 1, 1, 1)))
    return save_checkpoint(work / "cascade.pt", net, {"task": "cell", **cfg.as_meta()})


def _unet3d_model(work: Path, filters: list[int], sample: np.ndarray) -> Path:
    import torch

    from sxtdask.models import BiomedisaMeta, BiomedisaUNet3D, biomedisa_checkpoint_meta, save_checkpoint

    torch.manual_seed(0)
    net = BiomedisaUNet3D(filters, 1, 3).eval()
    x = torch.from_numpy(sample[None, None, :64, :64, :64].copy())
    _balance(net.final, net(x, logits=True))
    meta = BiomedisaMeta(labels=(0, 1, 2), mu=0.5, sig=0.2)
    return save_checkpoint(work / "unet3d.pt", net,
                           {"task": "cell", **biomedisa_checkpoint_meta(net, meta)})


# --------------------------------------------------------------------------- the peers


def _forward(net: Any, tiles: list[np.ndarray], batch: int) -> list[np.ndarray]:
    import torch

    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.stack(tiles[i:i + batch]))
            out += list(net(x).float().softmax(dim=1).numpy())
    return out


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, 0)] * (a.ndim - 3) + [(0, size - n) for n in a.shape[-3:]]
    return np.pad(a, pad) if any(p for _, p in pad) else a


def peer_cascade(vol: np.ndarray, path: Path, batch: int) -> np.ndarray:
    """NCXT's cascade over an in-memory tomogram, as a plain loop."""
    import dask.array as da
    from scipy import ndimage

    from sxtdask.io import bin_mean
    from sxtdask.models import load_cascade
    from sxtdask.segmenters._cascade import tile_starts, tile_window
    from sxtdask.stats import global_stats

    net, cfg = load_cascade(path)
    stats = global_stats(da.from_array(vol, chunks=(32, -1, -1))).compute(scheduler="sync")

    def norm(x: np.ndarray) -> np.ndarray:
        if cfg.preprocessing["name"] == "lac":
            return (x * np.float32(cfg.preprocessing.get("factor", 100.0))).astype(np.float32)
        return np.clip(stats.normalize(x) * 2.0 - 1.0, -2.0, 2.0).astype(np.float32)

    def fuse(probs: list[np.ndarray], origins: list[tuple[int, ...]], b: int, s: int,
             keep: slice) -> np.ndarray:
        e = s * b
        w = tile_window(e)
        num = np.zeros((len(range(cfg.num_classes)[keep]), *vol.shape), np.float32)
        den = np.zeros(vol.shape, np.float32)
        for p, o in zip(probs, origins, strict=True):
            up = p[keep]
            for axis in (1, 2, 3):
                up = np.repeat(up, b, axis=axis)
            box = tuple(slice(v * b, min(v * b + e, n)) for v, n in zip(o, vol.shape, strict=True))
            size = tuple(sl.stop - sl.start for sl in box)
            num[(slice(None), *box)] += up[(slice(None), *(slice(0, n) for n in size))] * w[
                tuple(slice(0, n) for n in size)]
            den[box] += w[tuple(slice(0, n) for n in size)]
        return num / np.maximum(den, np.float32(1e-12))

    b, s1, s2 = cfg.stage1.binning, cfg.stage1.block, cfg.stage2.block
    small = norm(bin_mean(vol, b))
    o1 = list(itertools.product(*(tile_starts(n, s1) for n in small.shape)))
    p1 = _forward(net.stage1, [_pad(small[None, z:z + s1, y:y + s1, x:x + s1], s1)
                               for z, y, x in o1], batch)
    fused = fuse(p1, o1, b, s1, slice(1, None))
    for c in range(fused.shape[0]):
        if b > 1:
            fused[c] = ndimage.gaussian_filter(fused[c], b / 2.355)
        fused[c] = ndimage.gaussian_filter(fused[c], cfg.sigma)
    x2 = np.concatenate([norm(vol)[None], fused])
    del fused
    o2 = list(itertools.product(*(tile_starts(n, s2) for n in vol.shape)))
    p2 = []
    for i in range(0, len(o2), 256):  # tiles in groups, so their inputs are not all held at once
        p2 += _forward(net.stage2, [_pad(x2[:, z:z + s2, y:y + s2, x:x + s2], s2)
                                    for z, y, x in o2[i:i + 256]], batch)
    labels = fuse(p2, o2, 1, s2, slice(None)).argmax(axis=0)
    return np.asarray(cfg.labels, np.uint8)[labels]


def peer_unet3d(vol: np.ndarray, path: Path, batch: int) -> np.ndarray:
    """Biomedisa's prediction over an in-memory tomogram, as a plain loop."""
    from sxtdask.models import read_unet3d
    from sxtdask.segmenters._resize import axis_taps, resize_block, resize_mode
    from sxtdask.segmenters._unet3d import grid_shape, patch_starts

    info = read_unet3d(path)
    net, meta = info.build(), info.meta
    grid = grid_shape(meta.scale, meta.patch_size, 32)

    def resize(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        mode = resize_mode(a.shape, shape)
        taps = [axis_taps(i, o, mode) for i, o in zip(a.shape, shape, strict=True)]
        return resize_block(a, (0, 0, 0), taps, [(0, n) for n in shape])

    g = resize(vol.astype(np.float32), grid)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-12)
    if meta.normalize:
        g = np.clip((g - g.mean()) / (g.std() or 1.0) * meta.sig + meta.mu, 0, 1)
    g = g.astype(np.float32)
    starts = patch_starts(grid, meta.patch_size, 32)
    pz, py, px = meta.patch_size
    total = np.zeros((info.n_labels, *grid), np.float32)
    for i in range(0, len(starts), batch):
        part = starts[i:i + batch]
        probs = _forward(net, [g[None, z:z + pz, y:y + py, x:x + px] for z, y, x in part], batch)
        for p, (z, y, x) in zip(probs, part, strict=True):
            total[:, z:z + pz, y:y + py, x:x + px] += p
    idx = total.argmax(axis=0)
    out = np.zeros(vol.shape, np.uint8)
    for k in range(1, info.n_labels):
        out[resize((idx == k).astype(np.float32), vol.shape) >= 0.5] = meta.labels[k]
    return out


# --------------------------------------------------------------------------- sxtdask


def _warm(seg: Any) -> None:
    import sxtdask.engine._run  # noqa: F401 - what the tasks import
    import sxtdask.pipeline  # noqa: F401

    seg.model  # noqa: B018 - built once per worker (cached)


def run_sxtdask(client: Any, path: Path, method: str, model: Path, batch: int
                ) -> tuple[float, int, np.ndarray]:
    """Seconds, peak worker RSS and labels of the whole pipeline on one store."""
    from sxtdask.io import open_labels
    from sxtdask.pipeline import segment_tomogram
    from sxtdask.segmenters import make_segmenter

    seg = make_segmenter("cell", method, models={"cell": model}, device="cpu", batch_size=batch)
    client.run(_warm, seg)  # imports and the model's one build per worker, not timed
    client.run(lambda: __import__("gc").collect())
    pid = next(iter(client.run(os.getpid).values()))
    run = segment_tomogram(path, seg, overwrite=True)
    with PeakRSS(pid) as rss:
        t0 = time.perf_counter()
        run.compute()
        seconds = time.perf_counter() - t0
    return seconds, rss.peak, np.asarray(open_labels(path, "cell").compute())


def _phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    from sxtdask.phantoms import make_phantom

    return make_phantom(shape, seed=seed).image.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="cascade,unet3d")
    ap.add_argument("--shape", default="256,512,512")
    ap.add_argument("--chunk", type=int, default=64, help="z-slab depth of the store's chunks")
    ap.add_argument("--width", type=int, default=16, help="random cascade's first filters")
    ap.add_argument("--filters", default="8,16,32,64,128", help="random unet3d's filter list")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    cores = _cores()
    import dask
    import torch
    from distributed import Client, LocalCluster

    from sxtdask.engine import worker_environ
    from sxtdask.io import write_image

    torch.set_num_threads(cores)
    work = Path(tempfile.mkdtemp(prefix="sxtdask-inference3d-"))
    try:
        vol = _phantom(shape, args.seed)  # type: ignore[arg-type]
        quarter = vol[: max(shape[0] // 4, 64)]
        stores = {}
        for name, v in (("full", vol), ("quarter", quarter)):
            stores[name] = write_image(v, work / f"{name}.zarr", voxel_size_nm=(30.0,) * 3,
                                       chunks=(args.chunk, v.shape[1], v.shape[2]))
        models = {"cascade": lambda: _cascade_model(work, args.width, vol),
                  "unet3d": lambda: _unet3d_model(
                      work, [int(f) for f in args.filters.split(",")], vol)}
        print(f"{shape[0]}×{shape[1]}×{shape[2]} phantom ({vol.size / 1e6:.0f} M voxels), "
              f"{cores} CPU cores, torch {torch.__version__}; sxtdask: 1 worker × {cores} "
              f"threads, z slabs of {args.chunk}", flush=True)
        for method in args.methods.split(","):
            model = models[method]()
            peer = {"cascade": peer_cascade, "unet3d": peer_unet3d}[method]
            me = PeakRSS(os.getpid())
            with me:
                t0 = time.perf_counter()
                ref = peer(vol, model, args.batch_size)
                t_peer = time.perf_counter() - t0
            runs = {}
            # the workers' environment of sxtdask's own clusters (one torch thread per task,
            # glibc's grown malloc limits: sxtdask.engine.worker_environ)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
                for name in ("quarter", "full"):  # a fresh worker each: its own peak
                    with LocalCluster(n_workers=1, threads_per_worker=cores, processes=True,
                                      dashboard_address=None) as cluster, Client(cluster) as client:
                        runs[name] = run_sxtdask(client, stores[name], method, model,
                                                 args.batch_size)
            (t_ours, peak, ours), peak_small = runs["full"], runs["quarter"][1]
            agree = float(np.mean(ours == ref))
            v = vol.size
            print(f"{method}: sxtdask {v / t_ours / 1e6:.2f} M voxels/s ({t_ours:.1f} s), plain "
                  f"loop {v / t_peer / 1e6:.2f} M voxels/s ({t_peer:.1f} s): ratio "
                  f"{t_peer / t_ours:.2f}x (target >= 1.0 on CPU)", flush=True)
            print(f"{method}: labels identical on {agree:.6%} of voxels; classes "
                  f"{dict(zip(*np.unique(ours, return_counts=True), strict=True))}", flush=True)
            print(f"{method}: peak memory: sxtdask worker {peak / 2**20:.0f} MiB "
                  f"({quarter.shape[0]} slices: {peak_small / 2**20:.0f} MiB, ratio "
                  f"{peak / peak_small:.2f} for {vol.shape[0] / quarter.shape[0]:.0f}× the "
                  f"voxels; target <= 1.25), plain loop {me.peak / 2**20:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
