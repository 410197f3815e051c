"""The chunked engine: segment every chunk with a halo, stitch instances, write labels.

Per chunk one task reads the chunk grown by the halo, runs the segmenter, trims the halo and keeps
(in memory for :func:`segment_array`, in a scratch Zarr array for :func:`segment_store`) the
instance labels with local IDs; the relabel reduction (``sxtdask.relabel``) turns the pieces into
global IDs, and one task per chunk applies that chunk's slice of the lookup table.
"""

from __future__ import annotations

import logging
import operator
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from skimage import measure

from ..errors import ConfigError
from ..io import create_labels, finalize_labels, open_image
from ..relabel import Match
from ..relabel._graph import ReductionKeys, reduction_tasks
from ..relabel._grid import BlockGrid, Index
from ..relabel._local import BlockResult, renumber_block
from ..segmenters import OutputKind, OutputSpec, Segmenter
from ..stats import IntensityStats
from ._resume import (
    RECORD_ERRORS,
    Progress,
    load_record,
    plan_fingerprint,
    save_record,
    touch_marker,
)

__all__ = ["SCRATCH_DIR", "StoreRun", "plan_grid", "segment_array", "segment_store", "task_prefix"]

logger = logging.getLogger(__name__)

SCRATCH_DIR = "_sxtdask_scratch"


def _word(text: str, limit: int = 40) -> str:
    """``text`` as a word of letters, digits and underscores (at most ``limit`` characters)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")[:limit] or "x"


def tomogram_name(path: str | Path) -> str:
    """The store's name for task keys: ``/data/Tomo 01.ome.zarr`` → ``Tomo_01``."""
    name = Path(path).name or Path(path).resolve().name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return _word(name)


def task_prefix(stage: str, what: Sequence[str], tomogram: str | None = None) -> str:
    """Readable key-name prefix ``stage.what.tomogram``, e.g. ``segment.cell+mito.Tomo_01``.

    It is one dash-free word, so ``dask.utils.key_split`` (the name on the dashboard's task
    stream and progress bars) keeps it whole, digits included; words after a dash survive
    ``key_split`` only when they are purely alphabetic (so ``segment-cell-tomo01`` would
    show as ``segment-cell``). Keys are ``f"{prefix}-{token}"`` or
    ``f"{prefix}-{step}-{token}"`` with an alphabetic ``step`` (shown as ``prefix-step``).
    """
    parts = [_word(stage), "+".join(_word(w) for w in what)]
    if tomogram is not None:
        parts.append(_word(tomogram))
    return ".".join(parts)


def plan_grid(
    shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...], halo: Sequence[int]
) -> BlockGrid:
    """Block grid with the halo kept only along axes that are split into several chunks."""
    if len(halo) != len(shape):
        raise ConfigError(f"halo {tuple(halo)} must have one value per axis of {shape}")
    eff = tuple(int(h) if len(c) > 1 else 0 for h, c in zip(halo, chunks))
    return BlockGrid(tuple(shape), tuple(chunks), eff)


def check_full_plane(segmenter: Segmenter, grid: BlockGrid) -> None:
    """Refuse in-plane chunking for segmenters that need whole slices."""
    if segmenter.full_plane and (len(grid.chunks[1]) > 1 or len(grid.chunks[2]) > 1):
        raise ConfigError(
            f"{type(segmenter).__name__} segments whole slices: chunks must span the full "
            f"(Y, X) plane {grid.shape[1:]}, not {grid.chunks[1][0]}×{grid.chunks[2][0]}"
        )


def stitch_grid(grid: BlockGrid, segmenter: Segmenter) -> BlockGrid:
    """The grid instances are stitched on: each core grown by the segmenter's trusted margin.

    A segmenter's answer near the edge of its extended block is wrong (its context is cut off);
    only ``core ± margin`` is trusted, with ``margin < halo`` (``Segmenter.stitch_margin``).
    """
    margin = segmenter.stitch_margin(grid.halo)
    return BlockGrid(grid.shape, grid.chunks, margin)


def _trusted_pieces(arr: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """Labels in the trusted box; connected-component labels split into their connected parts
    there, so that nothing stays joined only through the untrusted rim."""
    if spec.match is Match.TOUCHING:
        return measure.label(arr, background=0, connectivity=arr.ndim)
    return arr


def _run_segmenter(
    ext: np.ndarray,
    segmenter: Segmenter,
    stats: IntensityStats,
    voxel_size_nm: tuple[float, float, float],
    grid: BlockGrid,
    idx: Index,
) -> dict[str, Any]:
    """Segment one extended block; semantic outputs trimmed, instance outputs renumbered."""
    outs = segmenter.segment_block(ext, stats, voxel_size_nm)
    stitch = stitch_grid(grid, segmenter)
    trusted = grid.crop_in_ext(idx, stitch.ext(idx))
    result: dict[str, Any] = {}
    for spec in segmenter.outputs:
        arr = np.asarray(outs[spec.name])
        if arr.shape != ext.shape:
            raise RuntimeError(
                f"segmenter output {spec.name!r} has shape {arr.shape}, not the block's {ext.shape}"
            )
        if spec.kind is OutputKind.SEMANTIC:
            result[spec.name] = arr[grid.core_in_ext(idx)].astype(spec.dtype)
        else:
            result[spec.name] = renumber_block(_trusted_pieces(arr[trusted], spec), stitch, idx)
    return result


def _stitch_tasks(
    dsk: dict[Any, Any], grid: BlockGrid, spec: OutputSpec, token: str, tomogram: str | None = None
) -> tuple[str, ReductionKeys]:
    """Add the relabel reduction of one instance output; return its local-task name and keys.

    Keys are named ``relabel.<output>[.<tomogram>]-<step>-<token>``.
    """
    prefix = task_prefix("relabel", [spec.name], tomogram)
    local = f"{prefix}-local-{token}"
    red, keys = reduction_tasks(
        grid, local, match=spec.match, dtype=spec.dtype, prefix=prefix, token=token
    )
    dsk.update(red)
    return local, keys


def _meta_and_crops(result: dict[str, Any], name: str) -> tuple[Any, Any]:
    res: BlockResult = result[name]
    return res.meta, res.crops


def _apply_lut(result: dict[str, Any], name: str, lut: np.ndarray) -> np.ndarray:
    return lut[result[name].core]


def segment_array(
    image: da.Array,
    segmenter: Segmenter,
    stats: IntensityStats,
    *,
    voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    halo: Sequence[int] | None = None,
) -> dict[str, da.Array]:
    """Lazy chunked segmentation of an in-memory Dask array (one output array per label image).

    Parameters
    ----------
    image : (Z, Y, X) dask.array.Array
        Chunks are the blocks.
    segmenter : Segmenter
    stats : IntensityStats
        Whole-volume statistics (``sxtdask.stats.global_stats``).
    voxel_size_nm : (z, y, x)
    halo : (hz, hy, hx), optional
        Default ``segmenter.halo``; kept only along axes split into several chunks.

    Returns
    -------
    dict of name → dask.array.Array
        Chunked like ``image``. Instance outputs have IDs ``1..n`` numbered by first voxel.
    """
    grid = plan_grid(image.shape, image.chunks, halo if halo is not None else segmenter.halo)
    check_full_plane(segmenter, grid)
    token = tokenize(image, segmenter, stats, voxel_size_nm, grid.halo)
    seg = f"{task_prefix('segment', [s.name for s in segmenter.outputs])}-{token}"
    layers: dict[Any, Any] = {}
    deps: list[Any] = [image]
    for i in grid.indices():
        ext = image[grid.ext(i)].rechunk(-1)
        deps.append(ext)
        layers[(seg, *i)] = (
            _run_segmenter, (ext.name, *((0,) * image.ndim)), segmenter, stats,
            voxel_size_nm, grid, i,
        )
    names: dict[str, str] = {}
    for spec in segmenter.outputs:
        out = names[spec.name] = f"{task_prefix('labels', [spec.name])}-{token}"
        if spec.kind is OutputKind.SEMANTIC:
            for i in grid.indices():
                layers[(out, *i)] = (operator.getitem, (seg, *i), spec.name)
            continue
        local, keys = _stitch_tasks(layers, stitch_grid(grid, segmenter), spec, token)
        for i in grid.indices():
            layers[(local, *i)] = (_meta_and_crops, (seg, *i), spec.name)
            layers[(out, *i)] = (_apply_lut, (seg, *i), spec.name, (keys.lookup, *i))
    graph = HighLevelGraph.from_collections(seg, layers, dependencies=deps)
    return {
        spec.name: da.Array(graph, names[spec.name], chunks=image.chunks, dtype=spec.dtype)
        for spec in segmenter.outputs
    }


# --------------------------------------------------------------------------- on-disk engine


def _zarr_array(path: str, mode: str) -> zarr.Array:
    """Open an array in the task itself: a cache on long-lived workers would go stale when a
    later run recreates the array with other chunks (opening reads one small JSON file)."""
    return zarr.open_array(store=path, mode=mode)


def _read_ext(image_path: str, box: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(_zarr_array(image_path, "r")[box])


def _instance_names(outputs: Sequence[OutputSpec]) -> list[str]:
    return [s.name for s in outputs if s.kind is OutputKind.INSTANCES]


def _segment_and_write(
    image_path: str,
    outputs: dict[str, str],
    segmenter: Segmenter,
    stats: IntensityStats,
    voxel_size_nm: tuple[float, float, float],
    grid: BlockGrid,
    idx: Index,
    record: str,
) -> dict[str, tuple[Any, Any]]:
    """Read one extended block, segment it, write semantic labels and provisional instances.

    Idempotent, so Dask may run it again (after a worker died, or in a rerun): a block whose
    ``record`` exists is not segmented again, its saved stitching data is returned. Every chunk
    is written whole (Zarr writes a chunk file atomically) and the record only after them all.
    """
    names = _instance_names(segmenter.outputs)
    rec = Path(record)
    if rec.exists():
        try:
            return load_record(rec, names)
        except RECORD_ERRORS as err:
            logger.warning("%s: unreadable record (%s); segmenting the block again", rec, err)
    result = _run_segmenter(
        _read_ext(image_path, grid.ext(idx)), segmenter, stats, voxel_size_nm, grid, idx
    )
    core = grid.core(idx)
    small: dict[str, tuple[Any, Any]] = {}
    for spec in segmenter.outputs:
        value = result[spec.name]
        if spec.kind is OutputKind.SEMANTIC:
            _zarr_array(outputs[spec.name], "r+")[core] = value
        else:
            _zarr_array(outputs[spec.name], "r+")[core] = value.core
            small[spec.name] = (value.meta, value.crops)
    save_record(rec, small, names)
    return small


def _relabel_chunk(
    scratch_path: str, out_path: str, box: tuple[slice, ...], lut: np.ndarray, marker: str
) -> int:
    """Apply one chunk's lookup slice to its provisional labels and write the final chunk.

    Idempotent: a chunk whose ``marker`` exists was written (the marker follows the data).
    """
    done = Path(marker)
    if not done.exists():
        provisional = np.asarray(_zarr_array(scratch_path, "r")[box])
        _zarr_array(out_path, "r+")[box] = lut[provisional]
        touch_marker(done)
    return 1


def _written(_: Any) -> bool:
    return True


def _summary(counts: list[int], names: list[str], _: list[Any]) -> dict[str, int]:
    return dict(zip(names, (int(c) for c in counts)))


@dataclass
class StoreRun:
    """A planned segmentation of an OME-Zarr store: compute ``graph``, then call ``finish``.

    Attributes
    ----------
    graph : Delayed
        Computes to ``{output name: instance count}`` (semantic outputs: number of classes seen
        is not counted; they map to 0) after writing every chunk.
    path : Path
        The OME-Zarr image.
    grid : BlockGrid
    outputs : tuple of OutputSpec
    scratch : dict of name → Path
        Provisional instance arrays.
    chunks_reused : int
        Blocks an earlier, interrupted run of the same plan segmented completely: the graph
        loads their saved stitching data instead of segmenting them.
    relabel_reused : dict of name → int
        Final instance chunks an earlier run wrote, per instance output (not written again).
    """

    graph: Delayed
    path: Path
    grid: BlockGrid
    outputs: tuple[OutputSpec, ...]
    scratch: dict[str, Path] = field(default_factory=dict)
    chunks_reused: int = 0
    relabel_reused: dict[str, int] = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return self.grid.nblocks

    @property
    def chunks_total(self) -> int:
        """Blocks in the plan."""
        return self.grid.nblocks

    @property
    def chunks_computed(self) -> int:
        """Blocks this run segments (those no earlier run completed)."""
        return self.grid.nblocks - self.chunks_reused

    def finish(self) -> list[str]:
        """Build label pyramids and metadata (only now do the labels look complete); drop scratch."""
        for spec in self.outputs:
            finalize_labels(self.path, spec.name)
        shutil.rmtree(self.path / SCRATCH_DIR, ignore_errors=True)
        return [f"{self.path}/labels/{spec.name}" for spec in self.outputs]


def _scratch_arrays(progress: Progress, names: list[str], grid: BlockGrid, resume: bool) -> dict[str, Path]:
    """The provisional instance arrays: created afresh, or opened (and checked) to resume."""
    chunks = tuple(c[0] for c in grid.chunks)
    paths = {}
    for name in names:
        progress.marker(name, (0,) * grid.ndim).parent.mkdir(parents=True, exist_ok=True)
        path = paths[name] = progress.provisional(name)
        if resume:
            arr = zarr.open_array(store=str(path), mode="r")
            if arr.shape != grid.shape or arr.chunks != chunks or arr.dtype != np.uint32:
                raise ValueError(f"{path}: provisional array does not match the plan")
            continue
        zarr.create_array(store=str(path), shape=grid.shape, chunks=chunks, dtype="uint32",
                          fill_value=0, overwrite=True)
    return paths


def segment_store(
    path: str | Path,
    segmenter: Segmenter,
    stats: IntensityStats,
    *,
    chunks: tuple[int, int, int] | None = None,
    halo: Sequence[int] | None = None,
    overwrite: bool = False,
) -> StoreRun:
    """Plan a chunked segmentation of an OME-Zarr image, writing ``labels/<name>`` for each output.

    Nothing runs until the returned ``StoreRun.graph`` is computed (on any Dask scheduler); then
    ``StoreRun.finish()`` writes pyramids and metadata.

    Resumable: every block's completion is recorded under ``<store>/_sxtdask_scratch/`` once its
    chunks are written. Planning the same run again (same segmenter, checkpoints, statistics,
    chunks, halo and outputs) after an interruption segments only the blocks not recorded, writes
    only the final instance chunks not recorded, and gives the same chunk files as an
    uninterrupted run; ``StoreRun.chunks_reused`` says how many blocks were skipped. A different
    plan discards the earlier progress (with a warning in the log).

    Parameters
    ----------
    path : str or Path
        OME-Zarr image (``sxtdask convert`` output).
    segmenter : Segmenter
    stats : IntensityStats
        Whole-volume statistics of the image.
    chunks : (cz, cy, cx), optional
        Block (and label chunk) shape; default the image's level-0 chunks.
    halo : (hz, hy, hx), optional
        Default ``segmenter.halo``.
    overwrite : bool
        Replace existing label images of the same names, and discard any recorded progress.
    """
    path = Path(path)
    img = open_image(path)
    chunk = tuple(chunks) if chunks is not None else tuple(img.data.chunksize)
    if len(chunk) != 3 or any(int(c) <= 0 for c in chunk):
        raise ConfigError(f"chunks {chunk} must be three positive integers (Z, Y, X)")
    full = BlockGrid.regular(img.data.shape, tuple(min(c, s) for c, s in zip(chunk, img.data.shape)), (0, 0, 0))
    grid = plan_grid(full.shape, full.chunks, halo if halo is not None else segmenter.halo)
    check_full_plane(segmenter, grid)
    finals, had_labels = _label_arrays(path, segmenter.outputs, grid, overwrite)
    fingerprint = plan_fingerprint(segmenter, stats, grid, img.voxel_size_nm,
                                   (img.data.shape, img.data.chunksize, str(img.data.dtype)))
    progress = Progress(path / SCRATCH_DIR)
    why = "--overwrite" if overwrite else "a label array was missing"
    resume = progress.open(fingerprint, fresh=overwrite or not had_labels, why=why)
    names = _instance_names(segmenter.outputs)
    try:
        scratch = _scratch_arrays(progress, names, grid, resume)
    except (OSError, ValueError, KeyError) as err:  # damaged scratch: start afresh
        logger.warning("%s: cannot resume (%s); starting afresh", progress.root, err)
        resume = progress.open(fingerprint, fresh=True, why="damaged scratch")
        scratch = _scratch_arrays(progress, names, grid, resume)
    if not resume:
        progress.write_plan(fingerprint, {
            "image": str(path), "segmenter": repr(segmenter), "chunks": grid.chunks,
            "halo": grid.halo, "outputs": [s.name for s in segmenter.outputs]})
    segmented = progress.segmented(grid) if resume else set()
    relabelled = {n: progress.relabelled(n, grid) if resume else set() for n in names}
    if resume:
        logger.info("%s: resuming: %d of %d blocks already segmented", path, len(segmented),
                    grid.nblocks)
    targets = {s.name: str(scratch[s.name]) if s.name in scratch else finals[s.name]
               for s in segmenter.outputs}
    plan = _StorePlan(path, img.voxel_size_nm, segmenter, stats, grid, targets, finals,
                      progress, segmented, relabelled, fingerprint)
    return StoreRun(_store_graph(plan), path, grid, segmenter.outputs, scratch, len(segmented),
                    {n: len(v) for n, v in relabelled.items()})


def _label_arrays(
    path: Path, outputs: Sequence[OutputSpec], grid: BlockGrid, overwrite: bool
) -> tuple[dict[str, str], bool]:
    """Create (or reopen, to resume) each output's level-0 label array.

    Returns the arrays' paths and whether every one existed before (recorded progress is
    trusted only then).
    """
    label_chunks = tuple(c[0] for c in grid.chunks)
    finals: dict[str, str] = {}
    existed = True
    for spec in outputs:
        level0 = path / "labels" / spec.name / "0"
        existed = existed and (level0 / "zarr.json").is_file()
        create_labels(path, spec.name, shape=grid.shape,  # type: ignore[arg-type]
                      chunks=label_chunks, dtype=spec.dtype, overwrite=overwrite)  # type: ignore[arg-type]
        finals[spec.name] = str(level0)
    return finals, existed


@dataclass(frozen=True)
class _StorePlan:
    path: Path
    voxel_size_nm: tuple[float, float, float]
    segmenter: Segmenter
    stats: IntensityStats
    grid: BlockGrid
    targets: dict[str, str]
    finals: dict[str, str]
    progress: Progress
    segmented: set[Index]
    relabelled: dict[str, set[Index]]
    fingerprint: str


def _store_graph(plan: _StorePlan) -> Delayed:
    """Segment tasks (GPU-pinned when the network runs on CUDA), reused-block loads, the
    relabel reduction per instance output, final chunk writes and one summary task.

    Keys: ``segment.<outputs>.<tomogram>-<token>`` for blocks to segment,
    ``…-reused-<token>`` for blocks an earlier run completed, ``relabel.<name>.<tomogram>-…``
    for the reduction and the final writes (``…-write-`` or ``…-reused-``).
    """
    grid, seg, outputs = plan.grid, plan.segmenter, plan.segmenter.outputs
    tomo = tomogram_name(plan.path)
    token = tokenize(plan.fingerprint, str(plan.path), sorted(plan.segmented),
                     sorted((n, sorted(v)) for n, v in plan.relabelled.items()))
    stage = task_prefix("segment", [s.name for s in outputs], tomo)
    run_name, reuse_name = f"{stage}-{token}", f"{stage}-reused-{token}"
    image_path = str(plan.path / "0")
    seg_tasks: dict[Any, Any] = {}
    dsk: dict[Any, Any] = {}
    block: dict[Index, Any] = {}
    for i in grid.indices():
        key = block[i] = (reuse_name if i in plan.segmented else run_name, *i)
        task = (_segment_and_write, image_path, plan.targets, seg, plan.stats,
                plan.voxel_size_nm, grid, i, str(plan.progress.record(i)))
        (dsk if i in plan.segmented else seg_tasks)[key] = task
    done = f"{stage}-written-{token}"  # tiny markers, so no segment result is held to the end
    written: list[Any] = []
    for i in grid.indices():
        dsk[(done, *i)] = (_written, block[i])
        written.append((done, *i))
    counts: list[Any] = []
    for spec in outputs:
        if spec.kind is OutputKind.SEMANTIC:
            counts.append(0)
            continue
        counts.append(_relabel_tasks(dsk, plan, spec, block, token, tomo, written))
    name = f"{task_prefix('finish', [s.name for s in outputs], tomo)}-{token}"
    dsk[name] = (_summary, counts, [s.name for s in outputs], written)
    # Inference runs where the accelerator is; reading, relabelling and writing run anywhere.
    resources = {"resources": {"GPU": 1}} if uses_gpu(seg) else None
    layers = {run_name: MaterializedLayer(seg_tasks, annotations=resources),
              name: MaterializedLayer(dsk)}
    return Delayed(name, HighLevelGraph(layers, {run_name: set(), name: {run_name}}))


def _relabel_tasks(
    dsk: dict[Any, Any], plan: _StorePlan, spec: OutputSpec, block: dict[Index, Any],
    token: str, tomo: str, written: list[Any],
) -> tuple[str]:
    """The reduction and final chunk writes of one instance output; returns its count key."""
    grid = plan.grid
    local, keys = _stitch_tasks(dsk, stitch_grid(grid, plan.segmenter), spec, token, tomo)
    prefix = task_prefix("relabel", [spec.name], tomo)
    for i in grid.indices():
        dsk[(local, *i)] = (operator.getitem, block[i], spec.name)
        # The lookup depends on every block's meta, so all provisional writes are done; the
        # segment result itself (with its halo crops) is not held until this runs.
        step = "reused" if i in plan.relabelled[spec.name] else "write"
        key = (f"{prefix}-{step}-{token}", *i)
        dsk[key] = (
            _relabel_chunk, plan.targets[spec.name], plan.finals[spec.name], grid.core(i),
            (keys.lookup, *i), str(plan.progress.marker(spec.name, i)),
        )
        written.append(key)
    return (keys.count,)


def uses_gpu(segmenter: Segmenter) -> bool:
    """True when the segmenter's network is to run on CUDA (its tasks need a ``GPU`` resource)."""
    return segmenter.needs_gpu
