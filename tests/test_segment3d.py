"""The 3-D cell segmenters on the engine, the API and the command line.

``--method unet3d`` (Biomedisa's 3-D U-Net on a resized grid) and ``--method cascade`` (NCXT's
two-stage cascade) do per-tomogram work (the label grid; stage 1) before their blocks. Their
chunked runs must equal a single-process run of the same steps for any chunking, in memory and
on disk; the cascade's stage 1 must not depend on whether a pyramid level stands in for the
binning; the command line must reach them (``--model``, ``--clean``, ``--fill``), refuse bad
input in one line, and write the file's label values with their class names; the network tasks
must ask for a GPU when the network runs on CUDA.

The networks are tiny and random, their last layer re-centred so that every class wins somewhere
(``segment3d_helpers``; ``biomedisa_helpers`` builds the Keras files).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dask.array as da
import zarr
from segment3d_helpers import blob_volume
from test_cli import _CLUSTER_SCRIPT, ENV, PARALLEL, assert_ok, describe, sxtdask

from sxtdask.cli import build_parser
from sxtdask.cli._segmenters import make_segmenter as cli_segmenter
from sxtdask.engine import segment_array, segment_store
from sxtdask.errors import ConfigError
from sxtdask.io import bin_mean, open_image, open_labels, write_image
from sxtdask.pipeline import segment_tomogram
from sxtdask.segmenters import create_segmenter, make_segmenter
from sxtdask.segmenters._cascade import CascadeSegmenter, tile_starts
from sxtdask.segmenters._unet3d import UNet3DSegmenter, clean_labels, fill_labels, patch_starts
from sxtdask.stats import global_stats

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")  # NumPy 2's copy=

VOXEL = (30.0, 30.0, 30.0)
#: Volumes per method: unet3d's grid is 48³, so (27, 35, 62) shrinks x (area interpolation on
#: every axis) and (21, 30, 40) only grows (cubic); the cascade's is odd along every axis.
CASES = [("unet3d", (27, 35, 62)), ("unet3d", (21, 30, 40)), ("cascade", (25, 29, 33))]
SHAPES = {"unet3d": (27, 35, 62), "cascade": (25, 29, 33)}
#: unet3d checkpoint label values (index 0, 1, 2) and the cascade's.
VALUES = {"unet3d": {0, 5, 9}, "cascade": {0, 1, 2}}
NUCLEUS = {"unet3d": 9, "cascade": 2}


def _chunks(kind: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Slabs of 10 slices (the last one short), or blocks split in-plane with short edge blocks."""
    return (10, shape[1], shape[2]) if kind == "z-slabs" else (9, 13, 15)


def _assert_not_trivial(labels: np.ndarray, method: str) -> None:
    """The file's label values only, and at least two of them each on 1 % of the voxels (a run
    answering one class everywhere could not show a chunking error).
    """
    values, counts = np.unique(labels, return_counts=True)
    assert set(values.tolist()) <= VALUES[method]
    assert (counts >= 0.01 * labels.size).sum() >= 2, dict(zip(values.tolist(), counts.tolist(), strict=True))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny convolutions run fastest, and steadiest on a shared machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def segmenters(unet3d_checkpoint: Path, cascade_checkpoint: Path) -> dict[str, Any]:
    return {"unet3d": UNet3DSegmenter(device="cpu", stride=16).load_model(unet3d_checkpoint),
            "cascade": CascadeSegmenter(device="cpu").load_model(cascade_checkpoint)}


@pytest.fixture(scope="module")
def reference(segmenters: dict[str, Any]) -> Any:
    """The single-process answer of (method, shape), computed once."""
    cache: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def get(method: str, shape: tuple[int, int, int]) -> np.ndarray:
        if (method, shape) not in cache:
            cache[method, shape] = segmenters[method].segment_volume(blob_volume(shape))["cell"]
        return cache[method, shape]

    return get


# --------------------------------------------------------------------------- chunk invariance


@pytest.mark.parametrize("chunking", ["z-slabs", "in-plane"])
@pytest.mark.parametrize(("method", "shape"), CASES, ids=["unet3d-area", "unet3d-cubic", "cascade"])
def test_chunked_array_equals_single_process(method: str, shape: tuple[int, int, int],
                                             chunking: str, segmenters: dict[str, Any],
                                             reference: Any) -> None:
    ref = reference(method, shape)
    _assert_not_trivial(ref, method)
    image = da.from_array(blob_volume(shape), chunks=_chunks(chunking, shape))
    assert image.npartitions > 1 and any(len(set(c)) > 1 for c in image.chunks)  # uneven edges
    stats = global_stats(image).compute()
    out = segment_array(image, segmenters[method], stats, voxel_size_nm=VOXEL)["cell"]
    np.testing.assert_array_equal(out.compute(scheduler="threads"), ref)


@pytest.mark.parametrize("method", ["unet3d", "cascade"])
def test_on_disk_pipeline_equals_single_process(method: str, segmenters: dict[str, Any],
                                                reference: Any, tmp_path: Path) -> None:
    shape = SHAPES[method]
    seg = segmenters[method]
    store = write_image(blob_volume(shape), tmp_path / "cell.ome.zarr", chunks=(8, 16, 16),
                        voxel_size_nm=VOXEL)
    ref = reference(method, shape)
    for chunking in ("z-slabs", "in-plane"):
        report = segment_tomogram(store, seg, chunks=_chunks(chunking, shape),
                                  overwrite=True).compute(scheduler="threads")
        assert report["chunks_total"] > 1
        np.testing.assert_array_equal(open_labels(store, "cell").compute(), ref)
    assert report["voxel_count"]["cell"] == int((ref != 0).sum())
    meta = zarr.open_group(store / "labels" / "cell", mode="r").attrs["ome"]["image-label"]
    named = {"unet3d": [(5, "cytoplasm"), (9, "nucleus")],
             "cascade": [(1, "cytoplasm"), (2, "nucleus")]}[method]
    assert meta["properties"] == [{"label-value": v, "class": c} for v, c in named]


def test_a_renamed_cell_image_is_evaluated_as_cell(segmenters: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """``segment --name cell-cascade`` writes a cell image under another name: its metadata's
    class names make ``evaluate`` score it as cell parts (cell > 0, cytoplasm, nucleus), against a
    label file too, not as classes 1 and 2 alone.
    """
    from sxtdask.metrics import evaluate_stores
    from sxtdask.segmenters import rename_outputs

    shape = SHAPES["cascade"]
    store = write_image(blob_volume(shape), tmp_path / "cell.ome.zarr", voxel_size_nm=VOXEL)
    seg = rename_outputs(segmenters["cascade"], {"cell": "cell-cascade"})
    segment_tomogram(store, seg).compute(scheduler="threads")
    pred = open_labels(store, "cell-cascade").compute()
    truth = np.where(pred == 2, 1, pred).astype(np.uint8)  # nucleus called cytoplasm: cell agrees
    truth_file = tmp_path / "truth.npy"
    np.save(truth_file, truth)
    result = evaluate_stores(store, truth_file, labels=["cell-cascade"], coco=False)
    scores = next(iter(result["labels"].values()))
    assert scores["kind"] == "cell"
    assert scores["classes"]["cell"]["dice"] == pytest.approx(1.0)
    assert scores["classes"]["nucleus"]["dice"] < 0.5


# --------------------------------------------------------------------------- cascade stage 1


def test_cascade_stage1_rows_from_a_level_equal_binned_rows(segmenters: dict[str, Any]) -> None:
    """Stage 1's softmax rows read from a mean level are bit-identical to those binned from
    level 0 in each task, on an odd-sized volume (partial last bins).
    """
    seg = segmenters["cascade"]
    vol = blob_volume((17, 23, 21), seed=4)
    image = da.from_array(vol, chunks=(5, 7, 9))
    stats = global_stats(image).compute()
    level = da.from_array(bin_mean(vol, 2), chunks=(4, 5, 6))
    box = tuple(slice(0, n) for n in vol.shape)
    from_level = seg._plan_stage1(image, stats, {2: level}).for_block(box).compute()
    binned = seg._plan_stage1(image, stats, None).for_block(box).compute()
    rows = len(tile_starts(9, seg.config.stage1.block)) * len(tile_starts(12, seg.config.stage1.block))
    assert len(from_level) == len(binned) >= rows > 1
    for key, probs in binned.items():
        np.testing.assert_array_equal(from_level[key], probs)
    # and so are stage 2's fused bands built on them
    bands = [seg.plan_context(image, stats, binned=b).for_block(box).compute()
             for b in ({2: level}, None)]
    assert [t for t, _ in bands[0]] == [t for t, _ in bands[1]] and len(bands[0]) >= 1
    for (_, a), (_, b) in zip(*bands, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cascade_stage1_level_or_binning_gives_the_same_labels(segmenters: dict[str, Any],
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    import sxtdask.io
    import sxtdask.io._omezarr as omezarr

    seg = segmenters["cascade"]
    shape = (25, 29, 33)  # odd along every axis: the level's last bins are partial
    vol = blob_volume(shape, seed=2)
    monkeypatch.setattr(omezarr, "MIN_LEVEL_SIZE", 8)  # small images get a level 1 too
    several = write_image(vol, tmp_path / "levels.ome.zarr", chunks=(8, 16, 16), voxel_size_nm=VOXEL)
    monkeypatch.setattr(omezarr, "MIN_LEVEL_SIZE", 10_000)
    one = write_image(vol, tmp_path / "one.ome.zarr", chunks=(8, 16, 16), voxel_size_nm=VOXEL)
    monkeypatch.undo()
    levels = open_image(several).mean_levels()
    assert levels[2].shape == (13, 15, 17)
    assert open_image(one).levels == 1 and open_image(one).mean_levels() == {}
    binnings: list[tuple[int, ...]] = []

    def counted(block: np.ndarray, factor: int) -> np.ndarray:
        binnings.append(block.shape)
        return bin_mean(block, factor)

    monkeypatch.setattr(sxtdask.io, "bin_mean", counted)  # what stage-1 tasks call on level 0
    segment_tomogram(several, seg, chunks=(9, 13, 15)).compute(scheduler="threads")
    assert binnings == []  # stage 1 read level 1
    segment_tomogram(one, seg, chunks=(9, 13, 15)).compute(scheduler="threads")
    assert len(binnings) > 1  # stage 1 binned level 0, row by row
    a, b = (open_labels(p, "cell").compute() for p in (several, one))
    _assert_not_trivial(a, "cascade")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, seg.segment_volume(vol)["cell"])


# --------------------------------------------------------------------------- clean and fill


def test_clean_keeps_parts_larger_than_t_times_the_largest() -> None:
    a = np.zeros((9, 9, 9), np.uint8)
    a[1:4, 1:4, 1:4] = 1  # 27 voxels, the largest part of label 1
    a[6, 6, 6] = 1  # an island of 1 voxel
    a[6:8, 1:4, 1:4] = 1  # 18 voxels (2/3 of the largest)
    a[4, 4, 4] = 1  # touches the cube at a corner only: its own 6-connected part
    a[6:8, 6:8, 1:3] = 2  # another label: the largest of its own
    out = clean_labels(a, 0.1)
    want = a.copy()
    want[6, 6, 6] = want[4, 4, 4] = 0
    np.testing.assert_array_equal(out, want)
    only_largest = clean_labels(a, 0.9)  # Biomedisa's web default: the largest part only
    want[6:8, 1:4, 1:4] = 0
    np.testing.assert_array_equal(only_largest, want)
    assert (only_largest == 2).sum() == 8  # each label keeps its own largest


def test_fill_fills_enclosed_holes_up_to_t_times_the_label() -> None:
    a = np.zeros((12, 12, 12), np.uint8)
    a[1:6, 1:6, 1:6] = 1
    a[3, 3, 3] = 0  # an enclosed hole of 1 voxel
    a[1:6, 7:11, 1:6] = 1
    a[2:5, 8:10, 2:5] = 0  # an enclosed hole of 18 voxels (label 1 has 206 voxels)
    a[7:11, 1:6, 1:6] = 2
    a[8:10, 2:4, 0:3] = 0  # a hole open to the volume's border: outer background, never filled
    a[7:11, 7:11, 7:11] = 2
    a[8:10, 8:10, 8:10] = 0  # an enclosed hole of 8 voxels (label 2 has 56)...
    a[8, 8, 8] = 3  # ... holding a voxel of label 3, which filling leaves as it is
    out = fill_labels(a, 0.9)
    want = a.copy()
    want[3, 3, 3] = 1
    want[2:5, 8:10, 2:5] = 1
    want[8:10, 8:10, 8:10] = 2
    want[8, 8, 8] = 3
    np.testing.assert_array_equal(out, want)
    # holes up to 0.05 × 206 ≈ 10 voxels of label 1 and 0.05 × 56 ≈ 3 of label 2: only the
    # 1-voxel hole is filled
    small = fill_labels(a, 0.05)
    want = a.copy()
    want[3, 3, 3] = 1
    np.testing.assert_array_equal(small, want)


def test_clean_and_fill_run_on_the_label_grid(unet3d_checkpoint: Path) -> None:
    """``clean``/``fill`` change the answer, and the answer is the grid's clean/fill resized."""
    plain = UNet3DSegmenter(device="cpu", stride=16).load_model(unet3d_checkpoint)
    post = dataclasses.replace(plain, clean=0.5, fill=0.9)
    vol = blob_volume((21, 30, 40), seed=5)
    grids = [s.volume_context(da.from_array(vol)).compute(scheduler="sync") for s in (plain, post)]
    np.testing.assert_array_equal(grids[1], fill_labels(clean_labels(grids[0], 0.5), 0.9))
    assert not np.array_equal(grids[0], grids[1])
    assert not np.array_equal(plain.segment_volume(vol)["cell"], post.segment_volume(vol)["cell"])


def test_method_options_reach_only_the_methods_that_have_them(unet3d_checkpoint: Path,
                                                              cascade_checkpoint: Path) -> None:
    seg = make_segmenter("cell", "unet3d", models={"cell": unet3d_checkpoint}, device="cpu",
                         options={"clean": 0.3, "fill": 0.8})
    assert (seg.clean, seg.fill) == (0.3, 0.8)
    with pytest.raises(ConfigError, match="the cascade method of the cell task has no option fill"):
        make_segmenter("cell", "cascade", models={"cell": cascade_checkpoint}, options={"fill": 0.3})
    with pytest.raises(ConfigError, match=r"fill \(1.5\) must lie between 0 and 1"):
        make_segmenter("cell", "unet3d", models={"cell": unet3d_checkpoint}, options={"fill": 1.5})


def test_unet3d_refuses_a_stride_that_leaves_gaps(unet3d_checkpoint: Path) -> None:
    """Patches further apart than their size would leave grid voxels without a prediction."""
    with pytest.raises(ConfigError, match="stride"):
        UNet3DSegmenter(stride=65)  # the default patch is 64³
    with pytest.raises(ConfigError, match=r"unet3d.pt: its patches \(32, 32, 32\) are smaller"):
        UNet3DSegmenter(device="cpu", stride=33).load_model(unet3d_checkpoint)
    assert UNet3DSegmenter(device="cpu", stride=32).load_model(unet3d_checkpoint).grid == (32,) * 3


# --------------------------------------------------------------------------- the reference API


def test_create_segmenter_makes_the_3d_methods() -> None:
    assert type(create_segmenter("sxt", task="cell", method="unet3d")) is UNet3DSegmenter
    assert type(create_segmenter("sxt", task="cell_unet3d")) is UNet3DSegmenter
    assert type(create_segmenter("sxt", task="cell_cascade")) is CascadeSegmenter
    assert type(create_segmenter("sxt", task="cell", method="cascade")) is CascadeSegmenter
    assert type(create_segmenter("sxt", task="cell")).__name__ == "UNetSegmenter"  # still 2-D
    with pytest.raises(ConfigError, match="no bundled weights"):
        create_segmenter("sxt", task="cell_unet3d").load_model()


@pytest.mark.parametrize("method", ["unet3d", "cascade"])
def test_predict_returns_the_cell_dict(method: str, unet3d_checkpoint: Path,
                                       cascade_checkpoint: Path) -> None:
    options = {"stride": 16} if method == "unet3d" else {}
    ckpt = unet3d_checkpoint if method == "unet3d" else cascade_checkpoint
    seg = create_segmenter("sxt", task=f"cell_{method}", device="cpu", **options).load_model(ckpt)
    vol = blob_volume((21, 30, 40), seed=6)
    out = seg.predict(vol)
    labels = seg.segment_volume(vol)["cell"]
    assert set(out) == {"cell_mask", "nucleus_mask"}
    assert all(m.dtype == np.uint8 and m.shape == vol.shape for m in out.values())
    np.testing.assert_array_equal(out["cell_mask"], labels != 0)
    np.testing.assert_array_equal(out["nucleus_mask"], labels == NUCLEUS[method])
    assert out["nucleus_mask"].any() and (out["cell_mask"] > out["nucleus_mask"]).any()
    with pytest.raises(ConfigError, match="no threshold"):
        seg.predict(vol, threshold=0.5)


def test_bundled_cascade_predicts_when_installed() -> None:
    from sxtdask.errors import SxtdaskError
    from sxtdask.models import bundled_weights

    try:
        bundled_weights("cascade")
    except SxtdaskError:
        pytest.skip("sxtdask/weights/cell_cascade.pt is not bundled yet (trained separately)")
    out = create_segmenter("sxt", task="cell_cascade", device="cpu").load_model().predict(
        blob_volume((32, 48, 48)))
    assert set(out) == {"cell_mask", "nucleus_mask"} and out["cell_mask"].any()


# --------------------------------------------------------------------------- halo


def test_cascade_needs_no_halo_and_a_halo_changes_nothing(segmenters: dict[str, Any],
                                                          reference: Any) -> None:
    """Blocks fuse whole stage-2 tiles of the per-tomogram rows: no image around a chunk."""
    seg = segmenters["cascade"]
    assert seg.context_radius == (0, 0, 0) and seg.halo == (0, 0, 0)
    shape = SHAPES["cascade"]
    image = da.from_array(blob_volume(shape), chunks=(9, 13, 15))
    stats = global_stats(image).compute()
    out = segment_array(image, seg, stats, halo=(3, 5, 7))["cell"].compute(scheduler="threads")
    np.testing.assert_array_equal(out, reference("cascade", shape))


def test_halo_below_the_context_radius_is_refused_before_anything_runs(
        segmenters: dict[str, Any], cascade_checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's halo check reads ``context_radius``: a 3-D segmenter whose blocks needed one
    stage-2 tile around them is refused a smaller halo in memory, on disk and through
    make_segmenter's halo (the command line's ``--halo``), before any network runs.
    """
    e2 = segmenters["cascade"].config.stage2.extent

    def no_network(*_: Any) -> None:
        raise AssertionError("a network ran")

    monkeypatch.setattr(CascadeSegmenter, "context_radius", (e2, e2, e2))
    monkeypatch.setattr(CascadeSegmenter, "_forward", no_network)
    seg = segmenters["cascade"]
    vol = blob_volume((25, 29, 33))
    image = da.from_array(vol, chunks=(9, 13, 15))
    stats = global_stats(image).compute()
    for axis, halo in (("z", (e2 - 1, e2, e2)), ("x", (e2, e2, 1))):
        with pytest.raises(ConfigError, match=rf"context along {axis} \({e2} voxels\)"):
            segment_array(image, seg, stats, halo=halo)
    small = make_segmenter("cell", "cascade", models={"cell": cascade_checkpoint}, device="cpu",
                           halo=(4, 4, 4))
    assert small.halo == (4, 4, 4)
    store = write_image(vol, tmp_path / "cell.ome.zarr", chunks=(9, 13, 15), voxel_size_nm=VOXEL)
    with pytest.raises(ConfigError, match="halo"):
        segment_tomogram(store, small)
    assert not (store / "labels").exists()
    wide = make_segmenter("cell", "cascade", models={"cell": cascade_checkpoint}, device="cpu",
                          halo=(e2, e2, e2))
    assert segment_tomogram(store, wide).n_chunks == 27  # planned (nothing runs here)


# --------------------------------------------------------------------------- GPU annotations


def _layers(graph: Any, prefix: str | tuple[str, ...], *, inside: bool = True) -> list[Any]:
    """The annotations of the graph's layers whose name starts (or, ``inside=False``, does not
    start) with ``prefix`` (a Delayed with a tuple key is a layer named by that tuple).
    """
    out = []
    for name, layer in graph.layers.items():
        text = name[0] if isinstance(name, tuple) else name
        if str(text).startswith(prefix) == inside:
            out.append(layer.annotations)
    return out


@pytest.mark.parametrize("gpu", [True, False], ids=["cuda", "cpu"])
def test_network_tasks_ask_for_a_gpu_on_cuda(gpu: bool, segmenters: dict[str, Any],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (UNet3DSegmenter, CascadeSegmenter):
        monkeypatch.setattr(cls, "needs_gpu", property(lambda self: gpu))
    want = {"resources": {"GPU": 1}} if gpu else None
    shape = (25, 29, 33)
    vol = blob_volume(shape)
    image = da.from_array(vol, chunks=(9, 13, 15))
    stats = global_stats(image).compute()
    unet3d, cascade = segmenters["unet3d"], segmenters["cascade"]
    n_patches = len(patch_starts(unet3d.grid, unet3d.patch, unet3d.stride))
    s1, small = cascade.config.stage1.block, [-(-n // cascade.factor) for n in shape]
    rows1 = len(tile_starts(small[0], s1)) * len(tile_starts(small[1], s1))
    e2 = cascade.config.stage2.extent
    rows2 = len(tile_starts(shape[0], e2))  # one task per z band
    store = write_image(vol, tmp_path / "cell.ome.zarr", chunks=(9, 13, 15), voxel_size_nm=VOXEL)
    for seg, network in ((unet3d, {"unet3d.patches-": -(-n_patches // unet3d.batch_size)}),
                         (cascade, {"cascade.stage1-": rows1, "cascade.stage2-": rows2})):
        graphs = [segment_array(image, seg, stats)["cell"].__dask_graph__(),
                  segment_store(store, seg, stats, overwrite=True).graph.__dask_graph__()]
        for graph in graphs:
            for prefix, count in network.items():
                assert count > 1 and _layers(graph, prefix) == [want] * count
        # resizing, sums, reading and fusing run anywhere
        assert not any(_layers(graphs[0], tuple(network), inside=False))
        # the engine's blocks only resize or fuse: they run anywhere (blocks_need_gpu False)
        assert _layers(graphs[1], "segment.cell.")[0] is None


# --------------------------------------------------------------------------- command line

CLI_SHAPE = (24, 40, 72)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Keras-built Biomedisa U-Net (filters 4-8) saved as ``.h5`` twice: ACSeg-era meta
    (``configuration`` only, grid (64, 64, 96), 64³ patches) and the later one
    (``normalization``, 32³ patches, grid 64³, an AmiraMesh header naming the materials).
    Labels 0, 5, 9.
    """
    pytest.importorskip("h5py")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("the Biomedisa files are built with Keras on the torch backend")
    from biomedisa_helpers import keras_unet, recentre_final, write_meta

    from sxtdask.segmenters import normalise_grid as _normalised
    from sxtdask.segmenters._resize import resize_dask

    keras.utils.set_random_seed(0)
    model = keras_unet((4, 8), size=32)
    # balanced on the patches the command line's volume gives (Biomedisa's preprocessing)
    grid = resize_dask(da.from_array(blob_volume(CLI_SHAPE, seed=1)), (64, 64, 64)).compute()
    grid = _normalised(grid, True, 0.4, 0.2)
    sample = np.stack([grid[z:z + 32, y:y + 32, x:x + 32]
                       for z in (0, 32) for y in (0, 32) for x in (0, 32)])
    recentre_final(model, sample[..., None])
    folder = tmp_path_factory.mktemp("h5")
    files = {}
    for gen, scale, patch, materials in (("2023", (64, 64, 96), None, ()),
                                         ("2024", (64, 64, 64), (32, 32, 32),
                                          ("Exterior", "cyto", "nuc"))):
        path = files[gen] = folder / f"acseg-{gen}.h5"
        model.save(path)
        write_meta(path, gen, labels=(0, 5, 9), scale=scale, patch=patch, materials=materials)
    return files


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A long-lived one-worker Dask cluster (test_cli's) for ``--scheduler ADDRESS`` runs."""
    proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        address = proc.stdout.readline().strip()
        if not address.startswith("tcp://"):
            pytest.fail(f"the test cluster did not start (exit {proc.poll()})")
        yield address
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cli(keras_files: dict[str, Path], scheduler: str,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``sxtdask segment --method unet3d`` with each file, side by side on one long-lived
    cluster, each in its own store of the same volume.
    """
    d = tmp_path_factory.mktemp("cli")
    vol = blob_volume(CLI_SHAPE, seed=1)
    data = {k: write_image(vol, d / f"{k}.ome.zarr", voxel_size_nm=VOXEL) for k in keras_files}
    runs = {
        "2023": ("--chunks", "10,24,40"),
        "2024": ("--clean", "0.1", "--fill", "0.9"),
    }

    def run(gen: str) -> Any:
        return sxtdask("segment", data[gen], "--task", "cell", "--method", "unet3d", "--model",
                       keras_files[gen], *runs[gen], "--scheduler", scheduler)

    with ThreadPoolExecutor(PARALLEL) as pool:
        procs = dict(zip(runs, pool.map(run, runs), strict=True))
    return {"procs": procs, "data": data, "volume": vol}


@pytest.mark.parametrize("gen", ["2023", "2024"])
def test_cli_unet3d_writes_the_files_label_values(gen: str, cli: dict[str, Any],
                                                  keras_files: dict[str, Path]) -> None:
    proc = cli["procs"][gen]
    assert_ok(proc)
    store = cli["data"][gen]
    got = open_labels(store, "cell").compute()
    _assert_not_trivial(got, "unet3d")
    options = {"clean": 0.1, "fill": 0.9} if gen == "2024" else {}
    seg = UNet3DSegmenter(device="cpu", **options).load_model(keras_files[gen])
    assert seg.scale == ((64, 64, 96) if gen == "2023" else (64, 64, 64))
    np.testing.assert_array_equal(got, seg.segment_volume(cli["volume"])["cell"])
    if options:  # the options reached the segmenter: without them the answer differs
        plain = dataclasses.replace(seg, clean=None, fill=None)
        assert not np.array_equal(got, plain.segment_volume(cli["volume"])["cell"])
    names = {"2023": ["label 5", "label 9"], "2024": ["cyto", "nuc"]}[gen]
    meta = zarr.open_group(store / "labels" / "cell", mode="r").attrs["ome"]["image-label"]
    assert meta["properties"] == [{"label-value": v, "class": c}
                                  for v, c in zip((5, 9), names, strict=True)]
    assert f"cell: {int((got != 0).sum()):,} voxels" in proc.stdout, describe(proc)


BAD = {  # argv after DATA → (what the line names, one of these words)
    "no-model": (("--method", "unet3d"), "unet3d", ("--model PATH",)),
    "text-model": (("--method", "unet3d", "--model", "{text}"), "notes.pt",
                   ("checkpoint",)),
    "missing-model": (("--method", "unet3d", "--model", "{missing}"), "missing.h5",
                      ("no such model file",)),
    "fill-cascade": (("--method", "cascade", "--model", "{cascade}", "--fill", "0.5"),
                     "--fill", ("--method unet3d",)),
    "clean-one": (("--method", "cascade", "--model", "{cascade}", "--clean", "1"),
                  "clean", ("below 1",)),
    "fill-unet": (("--fill", "0.5"), "--fill", ("--method unet3d",)),
}


@pytest.mark.parametrize("command", ["segment", "archive"])
@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_3d_options_are_one_line(case: str, command: str, cascade_checkpoint: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    from sxtdask.cli import main

    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    store = write_image(blob_volume((8, 16, 16)), tmp_path / "cell.ome.zarr", voxel_size_nm=VOXEL)
    np.save(tmp_path / "cell.npy", blob_volume((8, 16, 16)))
    head = [str(store)] if command == "segment" else [str(tmp_path), "--out", str(tmp_path / "a")]
    args, name, words = BAD[case]
    paths = {"text": text, "missing": tmp_path / "missing.h5", "cascade": cascade_checkpoint}
    argv = [command, *head, "--task", "cell", *(a.format(**paths) for a in args)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert name in lines[0] and any(w in lines[0] for w in words), lines[0]
    assert not (store / "labels").exists() and not (tmp_path / "a").exists()


def test_cli_clean_and_fill_lie_between_0_and_1(keras_files: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "x.zarr", "--task", "cell", "--method", "unet3d",
                           "--model", str(keras_files["2024"]), "--fill", "1.5"])
    assert "argument --fill: '1.5' must lie between 0 and 1" in capsys.readouterr().err


def test_cli_archive_runs_the_cascade(cascade_checkpoint: Path, scheduler: str, tmp_path: Path
                                      ) -> None:
    from sxtdask.cli import main

    vol = blob_volume((24, 40, 44), seed=1)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "cell.npy", vol)
    out = tmp_path / "archive"
    assert main(["-q", "archive", str(tmp_path / "in"), "--out", str(out), "--task", "cell",
                 "--method", "cascade", "--model", str(cascade_checkpoint), "--chunks",
                 "10,24,40", "--scheduler", scheduler]) == 0
    stores = list((out / "tomograms").glob("*.zarr"))
    assert len(stores) == 1
    got = open_labels(stores[0], "cell").compute()
    _assert_not_trivial(got, "cascade")
    seg = CascadeSegmenter(device="cpu").load_model(cascade_checkpoint)
    np.testing.assert_array_equal(got, seg.segment_volume(vol)["cell"])


@pytest.mark.parametrize("command", ["segment", "archive"])
def test_model_options_reach_the_segmenter(command: str, keras_files: dict[str, Path],
                                           cascade_checkpoint: Path) -> None:
    """``segment`` and ``archive`` read --method, --model, --clean, --fill and --halo alike."""
    head = ["segment", "x.zarr"] if command == "segment" else ["archive", "in", "--out", "out"]
    args = build_parser().parse_args([*head, "--task", "cell", "--method", "unet3d", "--model",
                                      str(keras_files["2024"]), "--clean", "0.1", "--fill", "0.9",
                                      "--device", "cpu"])
    seg = cli_segmenter(args)
    assert type(seg) is UNet3DSegmenter and (seg.clean, seg.fill) == (0.1, 0.9)
    assert seg.model_files == (str(keras_files["2024"]),) and seg.patch == (32, 32, 32)
    args = build_parser().parse_args([*head, "--task", "cell", "--method", "cascade", "--model",
                                      str(cascade_checkpoint), "--halo", "9,10,11"])
    seg = cli_segmenter(args)
    assert type(seg) is CascadeSegmenter and seg.halo == (9, 10, 11)
    assert seg.model_files == (str(cascade_checkpoint),)
