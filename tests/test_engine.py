"""The chunked engine: chunk invariance, global normalisation, model cache, resumable writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage import measure

from sxtdask.engine import cached_model, load_counts, segment_array, segment_store
from sxtdask.engine._run import SCRATCH_DIR
from sxtdask.io import labels_complete, list_labels, open_image, open_labels, write_image
from sxtdask.relabel import Match
from sxtdask.segmenters import ClassicalISG, OutputKind, OutputSpec, Segmenter, Task
from sxtdask.stats import IntensityStats, global_stats


@dataclasses.dataclass(frozen=True)
class ThresholdComponents(Segmenter):
    """Local: smooth (radius 2), threshold on the *global* normalised scale, connected components."""

    level: float = 0.5
    halo: tuple[int, int, int] = (3, 3, 3)
    task = Task.ISG_INSTANCES
    outputs = (
        OutputSpec("objects", OutputKind.INSTANCES, "uint32", Match.TOUCHING),
        OutputSpec("mask", OutputKind.SEMANTIC, "uint8"),
    )

    def segment_block(self, block, stats, voxel_size_nm):
        smooth = ndimage.gaussian_filter(stats.normalize(block), 1.0, truncate=2.0, mode="nearest")
        mask = smooth > self.level
        return {"objects": ndimage.label(mask)[0], "mask": mask.astype(np.uint8)}


@dataclasses.dataclass(frozen=True)
class Identity(Segmenter):
    """The input already holds instance IDs: stitching must reproduce them, renamed by first voxel."""

    halo: tuple[int, int, int] = (2, 2, 2)
    task = Task.ISG_INSTANCES
    outputs = (OutputSpec("isg", OutputKind.INSTANCES, "uint32"),)

    def segment_block(self, block, stats, voxel_size_nm):
        return {"isg": block.astype(np.uint32)}


def _first_voxel_order(labels: np.ndarray) -> np.ndarray:
    """Rename IDs 1..n in the raster order of their first voxel."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    ids, first = ids[ids > 0], first[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[ids[np.argsort(first)]] = np.arange(1, ids.size + 1)
    return lut[labels]


@st.composite
def chunked_shapes(draw, max_side: int = 24):
    shape = tuple(draw(st.integers(4, max_side)) for _ in range(3))
    chunks = []
    for n in shape:
        sizes, left = [], n
        while left:
            c = draw(st.integers(min(4, left), left))
            sizes.append(c)
            left -= c
        chunks.append(tuple(sizes))
    return shape, tuple(chunks), draw(st.integers(0, 2**32 - 1))


def _stats(x: np.ndarray) -> IntensityStats:
    return global_stats(da.from_array(x)).compute(scheduler="sync")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_shapes())
# a 3-voxel object one diagonal step from a large one, joined only through a block's untrusted
# rim: the trusted box once split labels by full (26-) connectivity, so the two stayed one
@example(((22, 22, 11), ((4, 5, 13), (8, 10, 4), (4, 7)), 157))
def test_chunked_equals_whole_for_a_local_segmenter(case):
    """Invariant 1 (and 3): a z-gradient makes every chunk's own statistics different."""
    shape, chunks, seed = case
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32) + np.linspace(0, 1.5, shape[0])[:, None, None]
    seg = ThresholdComponents(level=0.55)
    whole = seg.predict(x)
    got = segment_array(da.from_array(x, chunks=chunks), seg, _stats(x))
    got = dask.compute(got, scheduler="sync")[0]
    np.testing.assert_array_equal(got["mask"], whole["mask"])
    np.testing.assert_array_equal(got["objects"], whole["objects"])
    np.testing.assert_array_equal(whole["objects"], ndimage.label(whole["mask"])[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_shapes(), st.integers(1, 40))
def test_stitched_instances_equal_the_input_instances(case, n_objects):
    """Invariant 2: touching instances keep two IDs, crossing ones keep one, for any chunking."""
    shape, chunks, seed = case
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.uint32)
    for k in range(1, n_objects + 1):  # random boxes; later ones overwrite (touching, odd shapes)
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [min(s, a + int(rng.integers(1, 6))) for a, s in zip(lo, shape, strict=True)]
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = k
    # Instances are connected: a box cut in two by a later one becomes two instances.
    vol = measure.label(vol, background=0, connectivity=1).astype(np.uint32)
    seg = Identity()
    got = segment_array(da.from_array(vol.astype(np.float32), chunks=chunks), seg, _stats(vol))
    np.testing.assert_array_equal(got["isg"].compute(scheduler="sync"), _first_voxel_order(vol))


def test_global_statistics_not_chunk_statistics():
    """A chunk that holds only bright voxels must not be thresholded on its own range."""
    x = np.zeros((16, 8, 8), np.float32)
    x[:8] = np.random.default_rng(0).uniform(0.0, 0.2, (8, 8, 8))
    x[8:] = np.random.default_rng(1).uniform(0.8, 1.0, (8, 8, 8))
    seg = ThresholdComponents(level=0.5)
    got = segment_array(da.from_array(x, chunks=(8, 8, 8)), seg, _stats(x))["mask"].compute()
    assert got[:6].sum() == 0 and got[10:].all()


# --------------------------------------------------------------------------- on-disk engine


@pytest.fixture()
def phantom_store(tmp_path, small_phantom) -> Path:
    return write_image(small_phantom.image, tmp_path / "cell.zarr", chunks=(12, 96, 96),
                       voxel_size_nm=(30.0, 30.0, 30.0))


def _run_store(path, seg, client=None, **kw):
    img_stats = global_stats(da.from_zarr(str(path / "0"))).compute(scheduler="sync")
    run = segment_store(path, seg, img_stats, **kw)
    counts = run.graph.compute(scheduler=client or "sync")
    run.finish()
    return counts


def test_store_run_equals_whole_volume_and_is_idempotent(phantom_store, small_phantom):
    seg = ClassicalISG()
    counts = _run_store(phantom_store, seg)
    labels = open_labels(phantom_store, "isg").compute()
    whole = seg.predict(small_phantom.image, (30.0, 30.0, 30.0))
    np.testing.assert_array_equal(labels, whole)
    assert counts == {"isg": int(whole.max())} and int(whole.max()) > 10
    assert labels_complete(phantom_store, "isg") and labels.dtype == np.uint32
    assert not (phantom_store / SCRATCH_DIR).exists()
    levels = sorted(p.name for p in (phantom_store / "labels" / "isg").iterdir() if p.is_dir())
    assert levels == [str(k) for k in range(open_image(phantom_store).levels)]
    before = {p.relative_to(phantom_store): p.read_bytes()
              for p in (phantom_store / "labels" / "isg" / "0").rglob("*") if p.is_file()}
    _run_store(phantom_store, seg, overwrite=True)
    after = {p.relative_to(phantom_store): p.read_bytes()
             for p in (phantom_store / "labels" / "isg" / "0").rglob("*") if p.is_file()}
    assert before == after


def test_interrupted_run_looks_incomplete_and_rerun_gives_the_same_labels(tmp_path, small_phantom):
    path = write_image(small_phantom.image, tmp_path / "a.zarr", chunks=(12, 96, 96))
    ref = _run_store(write_image(small_phantom.image, tmp_path / "b.zarr", chunks=(12, 96, 96)),
                     ClassicalISG())
    flag = tmp_path / "crash"
    flag.write_text("1")

    @dataclasses.dataclass(frozen=True)
    class Crash(ClassicalISG):
        def segment_block(self, block, stats, voxel_size_nm):
            # an edge block: its halo is clipped by the volume's first or last slice
            if flag.exists() and block.shape[0] < small_phantom.image.shape[0]:
                raise RuntimeError("simulated crash")
            return super().segment_block(block, stats, voxel_size_nm)

    with pytest.raises(RuntimeError, match="simulated crash"):
        _run_store(path, Crash())
    assert "isg" not in list_labels(path) and not labels_complete(path, "isg")
    flag.unlink()
    counts = _run_store(path, Crash())
    assert counts == ref
    np.testing.assert_array_equal(open_labels(path, "isg").compute(),
                                  open_labels(tmp_path / "b.zarr", "isg").compute())


@dataclasses.dataclass(frozen=True)
class CachedModel(Segmenter):
    """Builds a (fake) model through the per-worker cache on every block."""

    halo: tuple[int, int, int] = (2, 2, 2)
    task = Task.ISG_INSTANCES
    outputs = (OutputSpec("mask", OutputKind.SEMANTIC, "uint8"),)

    def segment_block(self, block, stats, voxel_size_nm):
        model = cached_model(("test-threshold-model", 0.5), lambda: np.float32(0.5))
        return {"mask": (stats.normalize(block) > model).astype(np.uint8)}


def test_models_load_once_per_worker_not_per_chunk(tmp_path, small_phantom, client):
    path = write_image(small_phantom.image, tmp_path / "c.zarr", chunks=(4, 48, 48))
    _run_store(path, CachedModel(), client=client)
    loads = client.run(load_counts)
    per_worker = [v.get("('test-threshold-model', 0.5)", 0) for v in loads.values()]
    n_chunks = 12 * 2 * 2
    assert sum(per_worker) <= len(loads) < n_chunks
    assert all(n <= 1 for n in per_worker) and sum(per_worker) >= 1
    mask = open_labels(path, "mask").compute()
    assert mask.any() and set(np.unique(mask)) <= {0, 1}


def test_inference_tasks_need_a_gpu_resource_when_the_network_runs_on_cuda(tmp_path, small_phantom):
    """Pinning: a worker without a GPU resource never runs them; one with it does."""
    from unittest import mock

    from distributed import Client, LocalCluster

    path = write_image(small_phantom.image[:16], tmp_path / "g.zarr", chunks=(8, 96, 96))
    stats = global_stats(da.from_zarr(str(path / "0"))).compute(scheduler="sync")
    expected = int(ClassicalISG().predict(small_phantom.image[:16]).max())
    assert expected > 0
    with mock.patch.object(ClassicalISG, "needs_gpu", new=True):  # as a CUDA network says
        assert ClassicalISG().describe().needs_gpu
        run = segment_store(path, ClassicalISG(), stats)
    for resources, should_run in ((None, False), ({"GPU": 1}, True)):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                          dashboard_address=":0", resources=resources) as cluster, \
                Client(cluster) as c:
            future = c.compute(run.graph)
            if should_run:
                assert future.result(timeout=60)["isg"] == expected
                run.finish()
                assert int(open_labels(path, "isg").max().compute()) == expected
            else:
                with pytest.raises(TimeoutError):
                    future.result(timeout=3)
