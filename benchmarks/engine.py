"""Engine overhead: the whole engine with a segmenter that costs next to nothing, against the raw
I/O limit of the same store.

sxtdask runs the whole pipeline on a 480×600×480 phantom in OME-Zarr (``segment_tomogram``:
whole-volume statistics, halo reads, segmentation, global relabel, label writes, pyramids) with
``ThresholdComponents``, a threshold of the normalised image plus connected components (so what
is timed is the engine, not a network), on sxtdask's own local cluster (2 workers × 1 thread on
2 cores).

The peer is the raw limit: the same image read chunk by chunk with plain zarr, and a uint32
array of the same shape written with the same chunks and codecs as sxtdask's label image (the
very label values sxtdask wrote, so both compress the same bytes), as fast as it goes: a thread
pool with as many threads as cores, each chunk read and then its labels written.

Printed per chunking (z slabs and in-plane chunks): both throughputs in M voxels/s, their ratio
(target ≥ 0.7× the limit), and what the engine's wall time was spent on (Dask task groups,
summed over the workers' threads).

    python benchmarks/engine.py                           # 480×600×480, slabs and in-plane
    python benchmarks/engine.py --shape 240,300,240 --chunks 32,300,240
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _segmenter() -> Any:
    from scipy import ndimage

    from sxtdask.relabel import Match
    from sxtdask.segmenters import OutputKind, OutputSpec, Segmenter, Task

    @dataclasses.dataclass(frozen=True)
    class ThresholdComponents(Segmenter):
        """Connected components (faces) of the normalised image above ``level``."""

        level: float = 0.5
        halo: tuple[int, int, int] = (1, 1, 1)
        task = Task.ISG
        outputs = (OutputSpec("isg", OutputKind.INSTANCES, "uint32", match=Match.TOUCHING),)

        def segment_block(self, block: np.ndarray, stats: Any,
                          voxel_size_nm: Any) -> dict[str, np.ndarray]:
            labels, _ = ndimage.label(stats.normalize(block) > self.level)
            return {"isg": labels.astype(np.uint32)}

    return ThresholdComponents()


def _task_groups(stream: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Compute seconds per task group of a task stream, largest first."""
    total: dict[str, float] = collections.defaultdict(float)
    for rec in stream:
        key = rec["key"]
        name = str(key[0] if isinstance(key, tuple) else key)
        group = name.rsplit("-", 1)[0] if len(name.rsplit("-", 1)[-1]) >= 16 else name
        for ss in rec["startstops"]:
            if ss["action"] == "compute":
                total[group] += ss["stop"] - ss["start"]
    return sorted(total.items(), key=lambda kv: -kv[1])


def run_sxtdask(path: Path, chunks: tuple[int, int, int], cores: int
                ) -> tuple[float, list[tuple[str, float]]]:
    from sxtdask.engine import ClusterConfig, connect
    from sxtdask.pipeline import segment_tomogram

    seg = _segmenter()
    with connect(ClusterConfig(workers=cores, threads_per_worker=1,
                               dashboard_address=":0")) as client:
        client.run(lambda: __import__("sxtdask.pipeline"))  # worker imports, not timed
        run = segment_tomogram(path, seg, chunks=chunks, overwrite=True)
        client.get_task_stream()  # start recording
        t0 = time.perf_counter()
        run.compute()
        seconds = time.perf_counter() - t0
        stream = client.get_task_stream()
    return seconds, _task_groups(stream)


def run_limit(image: Path, labels: Path, out: Path, cores: int) -> float:
    """Read every chunk of ``image`` level 0 and write ``labels`` level 0's values into a new
    array of the same chunks and codecs, ``cores`` chunks at a time.
    """
    import zarr

    src = zarr.open_array(str(image / "0"), mode="r")
    lab = zarr.open_array(str(labels / "0"), mode="r")
    values = lab[...]  # in memory beforehand: the peer writes the same bytes, untimed
    dst = zarr.create_array(str(out), shape=lab.shape, chunks=lab.chunks, dtype=lab.dtype,
                            compressors=lab.compressors, filters=lab.filters,
                            serializer=lab.serializer, fill_value=lab.fill_value,
                            overwrite=True)
    grid = [range(0, n, c) for n, c in zip(src.shape, lab.chunks, strict=True)]
    boxes = [tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, lab.chunks, src.shape,
                                                               strict=True))
             for origin in itertools.product(*grid)]

    def one(box: tuple[slice, ...]) -> int:
        block = src[box]
        dst[box] = values[box]
        return int(block.size)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        n = sum(pool.map(one, boxes))
    seconds = time.perf_counter() - t0
    assert n == src.size
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="480,600,480")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--chunks", nargs="*", default=["32,600,480", "120,150,120"],
                    help="chunkings (Z,Y,X each): the image is stored in them and the engine "
                         "works in them")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    cores = _cores()

    from sxtdask.io import open_labels, write_image
    from sxtdask.phantoms import make_phantom

    work = Path(tempfile.mkdtemp(prefix="sxtdask-engine-"))
    try:
        vol = make_phantom(shape, seed=args.seed).image.astype(np.float32)
        print(f"{shape[0]}×{shape[1]}×{shape[2]} phantom ({vol.size / 1e6:.0f} M voxels, float32), "
              f"{cores} CPU cores; sxtdask: {cores} workers × 1 thread; the limit: {cores} "
              f"threads", flush=True)
        for spec in args.chunks:
            chunks = tuple(int(v) for v in spec.split(","))
            path = work / f"img-{spec}.ome.zarr"
            write_image(vol, path, chunks=chunks, voxel_size_nm=(30.0, 30.0, 30.0))
            t_ours, groups = run_sxtdask(path, chunks, cores)  # type: ignore[arg-type]
            n = int(np.asarray(open_labels(path, "isg").max().compute()))
            t_lim = run_limit(path, path / "labels" / "isg", work / "limit.zarr", cores)
            v = vol.size / 1e6
            print(f"chunks {spec}: sxtdask {v / t_ours:.1f} M voxels/s ({t_ours:.2f} s, {n} "
                  f"objects), raw zarr read + uint32 write {v / t_lim:.1f} M voxels/s "
                  f"({t_lim:.2f} s): ratio {t_lim / t_ours:.2f}x (target >= 0.7)", flush=True)
            busy = sum(s for _, s in groups)
            top = ", ".join(f"{g} {s:.1f} s" for g, s in groups[:8])
            print(f"  task time {busy:.1f} s over {cores} threads: {top}", flush=True)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
