"""The chunked engine: segment every chunk with a halo, stitch instances, write labels.

Per chunk one task reads the chunk grown by the halo, runs the segmenter, trims the halo and keeps
(in memory for :func:`segment_array`, in a scratch Zarr array for :func:`segment_store`) the
instance labels with local IDs; the relabel reduction (``sxtdask.relabel``) turns the pieces into
global IDs, and one task per chunk applies that chunk's slice of the lookup table.
"""

from __future__ import annotations

import copy
import logging
import operator
import re
import shutil
import time
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

from .._fs import remove_path, swap_directories
from ..errors import OVERWRITE, ConfigError, OutputError, option
from ..io import (
    create_labels,
    finalize_labels,
    labels_complete,
    list_label_images,
    open_image,
    read_block,
)
from ..relabel import (
    BlockGrid,
    BlockResult,
    Index,
    Match,
    ReductionKeys,
    label,
    reduction_tasks,
    renumber_block,
)
from ..segmenters import OutputKind, OutputSpec, Segmenter
from ..stats import IntensityStats, refuse_nonfinite
from ._resume import (
    RECORD_ERRORS,
    Progress,
    load_record,
    plan_fingerprint,
    save_record,
    touch_marker,
)

__all__ = ["SCRATCH_DIR", "WORKER_BASELINE", "StoreRun", "limit_option", "memory_text",
           "plan_grid", "plan_store", "segment_array", "segment_store", "plan_memory",
           "smallest_memory_limit", "staged_name", "task_prefix", "tomogram_name",
           "worker_memory"]

logger = logging.getLogger(__name__)

SCRATCH_DIR = "_sxtdask_scratch"
_STAGED = ".sxtdask-new"


def staged_name(name: str) -> str:
    """The name a replacement for the complete label image ``name`` is built under
    (``labels/<name>.sxtdask-new``, never listed), until it is swapped into ``labels/<name>``.
    """
    return f"{name}{_STAGED}"


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
    eff = tuple(int(h) if len(c) > 1 else 0 for h, c in zip(halo, chunks, strict=False))
    return BlockGrid(tuple(shape), tuple(chunks), eff)


def check_halo(segmenter: Segmenter, halo: Sequence[int]) -> tuple[int, int, int]:
    """The halo to read, checked: three non-negative integers, at least the segmenter's context
    radius along each axis (a U-Net reading ±1 slice needs 1 slice of z halo to be exact).
    """
    values = tuple(int(h) for h in halo)
    if len(values) != 3 or any(h < 0 for h in values):
        raise ConfigError(f"halo {tuple(halo)} must be three non-negative integers (Z, Y, X)")
    radius = segmenter.context_radius
    if radius is not None:
        for axis, h, r in zip("zyx", values, radius, strict=True):
            if h < r:
                raise ConfigError(f"halo {values} is smaller than {type(segmenter).__name__}'s "
                                  f"context along {axis} ({r} voxels): chunked results would "
                                  "differ from whole-volume ones")
    return values


#: The share of a worker's memory limit its tasks may plan to use (Dask pauses a worker at 80 %
#: and restarts it at 95 %; the rest is the worker's own and its stored results').
MEMORY_FRACTION = 0.6
#: What a worker process holds before it runs anything: the interpreter with Dask, distributed,
#: NumPy, SciPy, scikit-image, Zarr and sxtdask imported (about 180 MiB measured on Linux, with
#: distributed 2026.8). A memory limit must leave room for it beside the tasks.
WORKER_BASELINE = 200 * 1024**2
_GIB = 1024**3


def smallest_memory_limit(task_bytes: float, threads: int = 1) -> int:
    """The smallest worker memory limit (bytes) for ``threads`` tasks holding ``task_bytes``
    each at once: what :func:`plan_memory` plans (:data:`MEMORY_FRACTION` of the limit for the
    tasks), and below the limit at which Dask pauses a worker (its ``memory.pause`` fraction,
    0.8) with the worker's own :data:`WORKER_BASELINE` as well. Below it a worker cannot run a
    task: it is paused for good (a run that hangs) or restarted over and over.
    """
    import dask

    pause = dask.config.get("distributed.worker.memory.pause", 0.8) or 0.95
    tasks = max(1, int(threads)) * float(task_bytes)
    return int(np.ceil(max(tasks / MEMORY_FRACTION, (WORKER_BASELINE + tasks) / float(pause))))


def memory_text(nbytes: float) -> str:
    """``3.2 MiB``, ``1.5 GiB``: a size for a message."""
    for unit, size in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def limit_option(nbytes: float) -> str:
    """The option asking for at least ``nbytes`` per worker, in GiB rounded up to 0.1."""
    gib = np.ceil(nbytes / _GIB * 10) / 10
    return option(f'memory_limit="{gib:.1f}GiB"', f"--memory-limit {gib:.1f}GiB")


def _largest_block(grid: BlockGrid) -> tuple[int, ...]:
    shapes = {tuple(s.stop - s.start for s in grid.ext(i)) for i in grid.indices()}
    return max(shapes, key=lambda s: int(np.prod(s)))


def plan_memory(segmenter: Segmenter, grid: BlockGrid, memory_limit: int | None,
                threads: int = 1) -> Segmenter:
    """The segmenter with batches small enough that ``threads`` blocks segmented at once fit in
    :data:`MEMORY_FRACTION` of a worker's ``memory_limit`` (bytes; None: no limit, unchanged).

    Batches are halved until the largest extended block fits (the answer does not depend on
    them). A block that does not fit even one slice at a time is refused before anything runs.

    Raises
    ------
    ConfigError
        One line: what the block needs, what the workers have, and what would fit (a memory
        limit, fewer threads per worker, or thinner chunks).
    """
    if not memory_limit or memory_limit <= 0:
        return segmenter
    threads = max(1, int(threads))
    budget = MEMORY_FRACTION * memory_limit / threads
    block = _largest_block(grid)
    seg, batch = segmenter, segmenter.max_batch
    need = seg.memory_bytes(block)
    while need > budget and batch > 1:
        batch //= 2
        seg = seg.with_batch_size(batch)
        need = seg.memory_bytes(block)
    floor = smallest_memory_limit(need, threads)
    if need <= budget and memory_limit < floor:  # the block fits, the worker itself does not
        raise ConfigError(
            f"a worker memory limit of {memory_text(memory_limit)} is too small: a worker holds "
            f"about {memory_text(WORKER_BASELINE)} of its own, and {type(segmenter).__name__} "
            f"needs about {memory_text(need)} for each of {threads} "
            f"{'×'.join(map(str, block))} block(s) at once; the smallest that can work is "
            f"{limit_option(floor)}")
    if need > budget:
        chunk = tuple(c[0] for c in grid.chunks)
        depth = chunk[0]
        while depth > 1 and seg.memory_bytes((depth + 2 * grid.halo[0], *block[1:])) > budget:
            depth //= 2
        fits = seg.memory_bytes((depth + 2 * grid.halo[0], *block[1:])) <= budget
        thinner = (f" or chunks of {depth}×{chunk[1]}×{chunk[2]}" if fits and depth < chunk[0]
                   else "")
        enough = np.ceil(floor / _GIB * 10) / 10
        raise ConfigError(
            f"{type(segmenter).__name__} needs about {memory_text(need)} to segment one "
            f"{'×'.join(map(str, block))} block, one slice at a time; the workers have "
            f"{memory_text(memory_limit)} for {threads} thread(s) (of which sxtdask plans "
            f"{MEMORY_FRACTION:.0%}): use "
            f"{option(f'workers of {enough:.1f} GiB', f'--memory-limit {enough:.1f}GiB')}"
            f"{' with fewer threads per worker' if threads > 1 else ''}{thinner}")
    if seg is not segmenter:
        logger.info("batches of at most %d slices so that %d block(s) of %s fit in %.1f GiB",
                    batch, threads, "×".join(map(str, block)), memory_limit / _GIB)
    return seg


def worker_memory(client: Any) -> tuple[int | None, int]:
    """(smallest memory limit in bytes or None where unlimited, most threads) of ``client``'s
    workers, for :func:`plan_memory`.
    """
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    except TypeError:  # older distributed: no n_workers
        workers = client.scheduler_info().get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    threads = max((int(w.get("nthreads") or 1) for w in workers), default=1)
    known = [m for m in limits if m > 0]
    return (min(known) if known else None), threads


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
    there, so that nothing stays joined only through the untrusted rim.
    """
    if spec.match is Match.TOUCHING:
        return measure.label(arr, background=0, connectivity=spec.connectivity)
    return arr


def _run_segmenter(
    ext: np.ndarray,
    segmenter: Segmenter,
    stats: IntensityStats,
    voxel_size_nm: tuple[float, float, float],
    grid: BlockGrid,
    idx: Index,
    context: Any = None,
) -> dict[str, Any]:
    """Segment one extended block; semantic outputs trimmed, instance outputs renumbered.

    ``context`` is the block's piece of the segmenter's per-tomogram work
    (:meth:`Segmenter.plan_context`), or None where it has none.
    """
    if context is None:
        outs = segmenter.segment_block(ext, stats, voxel_size_nm)
    else:
        outs = segmenter.segment_block_in(ext, stats, voxel_size_nm, box=grid.ext(idx),
                                          shape=grid.shape, context=context, core=grid.core(idx))
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
    segmenter = copy.deepcopy(segmenter)  # the plan keeps its own (load_model works in place)
    grid = plan_grid(image.shape, image.chunks,
                     check_halo(segmenter, halo if halo is not None else segmenter.halo))
    check_full_plane(segmenter, grid)
    token = tokenize(image, segmenter, stats, voxel_size_nm, grid.halo)
    seg = f"{task_prefix('segment', [s.name for s in segmenter.outputs])}-{token}"
    layers: dict[Any, Any] = {}
    deps: list[Any] = [image]
    context = segmenter.plan_context(image, stats)
    for i in grid.indices():
        ext = image[grid.ext(i)].rechunk(-1)
        deps.append(ext)
        piece = _context_key(context, grid, i, deps)
        layers[(seg, *i)] = (
            _run_segmenter, (ext.name, *((0,) * image.ndim)), segmenter, stats,
            voxel_size_nm, grid, i, piece,
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
    arrays = {spec.name: da.Array(graph, names[spec.name], chunks=image.chunks, dtype=spec.dtype)
              for spec in segmenter.outputs}
    for spec in segmenter.outputs:
        if spec.kind is OutputKind.SEMANTIC and spec.clean is not None:
            arr = arrays[spec.name]  # one layer named like the array, to build on
            own = HighLevelGraph({arr.name: MaterializedLayer(dict(arr.__dask_graph__()))},
                                 {arr.name: set()})
            arrays[spec.name] = clean_semantic(da.Array(own, arr.name, arr.chunks, arr.dtype),
                                               spec.clean)
    return arrays


def _part_sizes(parts: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(parts).ravel())


def _keep_parts(fraction: float, *sizes: np.ndarray) -> np.ndarray:
    """Which global part IDs to keep: those larger than ``fraction`` × the largest."""
    total = np.zeros(max(len(s) for s in sizes), np.int64)
    for s in sizes:
        total[:len(s)] += s
    total[0] = 0
    keep = total > fraction * total.max() if len(total) > 1 else np.zeros(len(total), bool)
    keep[0] = False
    return keep


def _masked(labels: np.ndarray, parts: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.where(keep[parts], labels, 0).astype(labels.dtype)


def clean_semantic(labels: da.Array, fraction: float) -> da.Array:
    """``labels`` with the connected parts of its foreground (> 0, faces connectivity) of at most
    ``fraction`` × the largest part set to 0, chunk by chunk: the parts come from the global
    relabel (:func:`sxtdask.relabel.label`, IDs of the whole volume for any chunking), their
    sizes from one reduction. Equals :func:`sxtdask.segmenters.keep_large_parts` on the whole
    array.
    """
    from dask import delayed

    parts, _ = label(labels > 0)
    token = tokenize(labels, fraction)
    sizes = [delayed(_part_sizes, pure=True)(b, dask_key_name=(f"clean.sizes-{token}", *i))
             for i, b in zip(np.ndindex(parts.numblocks), parts.to_delayed().ravel(), strict=True)]
    keep = delayed(_keep_parts, pure=True)(fraction, *sizes, dask_key_name=f"clean.keep-{token}")
    return da.map_blocks(_masked, labels, parts, keep, dtype=labels.dtype,
                         name=f"clean-{token}")


def _context_key(context: Any, grid: BlockGrid, idx: Index, deps: list[Any]) -> Any:
    """The graph key (or plain value) of block ``idx``'s piece of a segmenter's per-tomogram
    work; a lazy piece is added to ``deps`` (its graph joins the run's).
    """
    if context is None:
        return None
    piece = context.for_block(grid.ext(idx))
    if isinstance(piece, Delayed):
        deps.append(piece)
        return piece.key
    return piece


# --------------------------------------------------------------------------- on-disk engine


def _zarr_array(path: str, mode: str) -> zarr.Array:
    """Open an array in the task itself: a cache on long-lived workers would go stale when a
    later run recreates the array with other chunks (opening reads one small JSON file).
    """
    return zarr.open_array(store=path, mode=mode)


def _read_ext(image_path: str, box: tuple[slice, ...]) -> np.ndarray:
    """One extended block of the image, strictly: a missing or undecodable chunk is one
    InputError naming it (:func:`sxtdask.io.read_block`), never zeros.
    """
    return read_block(image_path, box)


def _instance_names(outputs: Sequence[OutputSpec]) -> list[str]:
    return [s.name for s in outputs if s.kind is OutputKind.INSTANCES]


@dataclass(frozen=True)
class _Layout:
    """What a store run writes, known before anything runs (no statistics needed)."""

    path: Path
    voxel_size_nm: tuple[float, float, float]
    segmenter: Segmenter
    grid: BlockGrid
    image: tuple[Any, ...]
    overwrite: bool
    #: Outputs whose complete label image is being replaced (``overwrite``): the new one is built
    #: under :func:`staged_name` and swapped in only when complete, so a failed or killed run
    #: leaves the previous result as it was.
    staged: frozenset[str] = frozenset()
    #: Level 0 of the image, as its metadata names it (not always ``0``).
    level0: str = "0"

    def label_name(self, name: str) -> str:
        """Where output ``name``'s label image is built: ``labels/<this>``."""
        return staged_name(name) if name in self.staged else name

    @property
    def progress(self) -> Progress:
        return Progress(self.path / SCRATCH_DIR)

    @property
    def names(self) -> list[str]:
        return _instance_names(self.segmenter.outputs)

    def fingerprint(self, stats: IntensityStats | None) -> str:
        """The plan's token (``stats`` None: the layout alone, before statistics exist)."""
        return plan_fingerprint(self.segmenter, stats, self.grid, self.voxel_size_nm, self.image)

    def finals(self) -> dict[str, str]:
        return {s.name: str(self.path / "labels" / self.label_name(s.name) / "0")
                for s in self.segmenter.outputs}

    @property
    def cleaned(self) -> list[OutputSpec]:
        """Semantic outputs cleaned over the whole volume before they are written
        (``OutputSpec.clean``): blocks write them to scratch first.
        """
        return [s for s in self.segmenter.outputs
                if s.kind is OutputKind.SEMANTIC and s.clean is not None]

    def targets(self) -> dict[str, str]:
        """Where each output's block results go: provisional arrays for instances, scratch
        arrays for semantic outputs still to be cleaned, the label image for the others.
        """
        finals = self.finals()
        cleaned = {s.name for s in self.cleaned}
        return {s.name: str(self.progress.provisional(s.name)) if s.kind is OutputKind.INSTANCES
                else str(self.progress.root / "semantic" / s.name) if s.name in cleaned
                else finals[s.name] for s in self.segmenter.outputs}


def _prepare(layout: _Layout, stats: IntensityStats, _after: Any = None) -> bool:
    """The first task of a store run: create (or reopen) the label arrays and the scratch folder.

    Everything a run writes starts here, on a worker, once the statistics exist: planning
    changes nothing on disk. Recorded progress is kept only when it belongs to this exact plan
    (segmenter, checkpoints, statistics, grid, outputs) and every label array existed; otherwise
    it is discarded. Returns whether progress was kept.
    """
    refuse_nonfinite(stats, str(layout.path))  # a constant volume is the caller's to report
    grid, progress = layout.grid, layout.progress
    _drop_stale_staging(layout)
    had_labels = _label_arrays(layout, grid)
    fingerprint = layout.fingerprint(stats)
    resume = progress.open(fingerprint, fresh=not had_labels, why="a label array was missing")
    try:
        _scratch_arrays(progress, layout.names, grid, resume)
        _semantic_scratch(layout, resume)
    except (OSError, ValueError, KeyError) as err:  # damaged scratch: start afresh
        logger.warning("%s: cannot resume (%s); starting afresh", progress.root, err)
        resume = progress.open(fingerprint, fresh=True, why="damaged scratch")
        _scratch_arrays(progress, layout.names, grid, resume)
        _semantic_scratch(layout, resume)
    if not resume:
        progress.write_plan(fingerprint, {
            "layout": layout.fingerprint(None), "image": str(layout.path),
            "segmenter": repr(layout.segmenter), "chunks": grid.chunks, "halo": grid.halo,
            "outputs": [s.name for s in layout.segmenter.outputs]})
    elif done := len(progress.segmented(grid)):
        logger.info("%s: resuming: %d of %d blocks already segmented", layout.path, done,
                    grid.nblocks)
    return resume


def _segment_and_write(
    layout: _Layout, targets: dict[str, str], stats: IntensityStats, idx: Index, _prepared: bool,
    context: Any = None,
) -> tuple[dict[str, tuple[Any, Any]], bool, dict[str, int]]:
    """Read one extended block, segment it, write semantic labels and provisional instances.

    Idempotent, so Dask may run it again (after a worker died, or in a rerun): a block whose
    record exists is not segmented again, its saved stitching data is returned. Every chunk
    is written whole (Zarr writes a chunk file atomically) and the record only after them all.
    Returns the block's stitching data, whether it came from a record, and the block's
    foreground voxels of each semantic output (read back from its chunks for a recorded block).
    """
    names, grid, segmenter = layout.names, layout.grid, layout.segmenter
    rec = layout.progress.record(idx)
    if rec.exists():
        try:
            saved = load_record(rec, names)
        except RECORD_ERRORS as err:
            logger.warning("%s: unreadable record (%s); segmenting the block again", rec, err)
        else:
            return saved, True, _written_voxels(segmenter, targets, grid.core(idx))
    ext = _read_ext(str(layout.path / layout.level0), grid.ext(idx))
    result = _run_segmenter(ext, segmenter, stats, layout.voxel_size_nm, grid, idx, context)
    core = grid.core(idx)
    small: dict[str, tuple[Any, Any]] = {}
    voxels: dict[str, int] = {}
    for spec in segmenter.outputs:
        value = result[spec.name]
        if spec.kind is OutputKind.SEMANTIC:
            _zarr_array(targets[spec.name], "r+")[core] = value
            if spec.clean is None:  # a cleaned output is counted when it is written
                voxels[spec.name] = int(np.count_nonzero(value))
        else:
            _zarr_array(targets[spec.name], "r+")[core] = value.core
            small[spec.name] = (value.meta, value.crops)
    save_record(rec, small, names)
    return small, False, voxels


def _written_voxels(segmenter: Segmenter, targets: dict[str, str],
                    core: tuple[slice, ...]) -> dict[str, int]:
    """Foreground voxels of each semantic output in one block's written chunks."""
    return {spec.name: int(np.count_nonzero(_zarr_array(targets[spec.name], "r")[core]))
            for spec in segmenter.outputs if spec.kind is OutputKind.SEMANTIC
            and spec.clean is None}


def _block_voxels(done: tuple[Any, bool, dict[str, int]]) -> dict[str, int]:
    """A block's foreground voxels per semantic output (a small result, for the report)."""
    return dict(done[2])


def _stitching_data(done: tuple[dict[str, Any], bool, dict[str, int]], name: str) -> Any:
    return done[0][name]


def _relabel_chunk(
    scratch_path: str, out_path: str, box: tuple[slice, ...], lut: np.ndarray, marker: str
) -> bool:
    """Apply one chunk's lookup slice to its provisional labels and write the final chunk.

    Idempotent: a chunk whose ``marker`` exists was written (the marker follows the data).
    Returns whether the chunk had been written by an earlier run.
    """
    done = Path(marker)
    if done.exists():
        return True
    provisional = np.asarray(_zarr_array(scratch_path, "r")[box])
    _zarr_array(out_path, "r+")[box] = lut[provisional]
    touch_marker(done)
    return False


def _block_written(done: tuple[Any, bool, dict[str, int]]) -> bool:
    """A small marker of one block (its reuse flag), so no segment result is held to the end."""
    return bool(done[1])


def _finalize_output(path: Path, name: str, label: str, classes: dict[int, str] | None,
                     *_written: Any) -> str:
    """Pyramid and metadata of one label image (built as ``labels/<label>``), on a worker
    (listed afterwards, with the rest).
    """
    finalize_labels(path, label, listed=False, title=name, classes=classes)
    return f"{path}/labels/{name}"


def _list_outputs(path: Path, names: list[str], staged: list[str], *_finalized: Any) -> float:
    """Swap replacements into place, then list the run's label images in ``labels/``, in output
    order, once all are finalized: only now do they look complete.

    A replacement takes the place of the old label image in one atomic exchange
    (:func:`~sxtdask._fs.swap_directories`), so ``labels/<name>`` is always a complete label
    image, old or new.
    """
    for name in staged:
        swap_directories(path / "labels" / staged_name(name), path / "labels" / name)
    list_label_images(path, names)
    return time.time()


def _finalized_staging(path: Path, name: str) -> bool:
    meta = path / "labels" / staged_name(name) / "zarr.json"
    return meta.is_file() and "multiscales" in meta.read_text(errors="replace")


def _drop_stale_staging(layout: _Layout) -> None:
    """Remove replacements a killed ``--overwrite`` run left half-built (never listed, never
    swapped in); this run's own are recreated by :func:`_label_arrays`.
    """
    for spec in layout.segmenter.outputs:
        left = layout.path / "labels" / staged_name(spec.name)
        # A finalized one is the old label image swapped out (or a replacement killed just
        # before its swap): never this run's work in progress, whatever the records say.
        if left.exists() and (spec.name not in layout.staged
                              or _finalized_staging(layout.path, spec.name)):
            logger.info("%s: removing %s, left by an interrupted --overwrite run", layout.path,
                        left.name)
            remove_path(left)


def _drop_scratch(path: Path, *_finalized: Any) -> float:
    shutil.rmtree(path / SCRATCH_DIR, ignore_errors=True)
    return time.time()


def _stamp(*_after: Any) -> float:
    """The wall-clock time once everything it depends on is done (stage timings)."""
    return time.time()


def _report(counts: list[int], names: list[str], blocks: list[bool], relabel_names: list[str],
            relabel_flags: list[list[bool]], outputs: list[str] | None,
            stats: IntensityStats, times: list[float], voxels: list[dict[str, int]],
            *_after: Any) -> dict[str, Any]:
    """What the run did: instance counts, foreground voxels of the semantic outputs, blocks
    segmented or reused, outputs written, the statistics it normalised with, and when each stage
    ended (``time.time()`` on the workers).
    """
    total: dict[str, int] = {}
    for block in voxels:
        for name, n in block.items():
            total[name] = total.get(name, 0) + int(n)
    return {
        "intensity_stats": stats,
        "stage_ended": dict(zip(("statistics", "segment_and_relabel", "pyramids"), times, strict=False)),
        "instance_count": dict(zip(names, (int(c) for c in counts), strict=False)),
        "voxel_count": total,
        "chunks_total": len(blocks),
        "chunks_reused": int(sum(blocks)),
        "chunks_computed": len(blocks) - int(sum(blocks)),
        "relabel_reused": {k: int(sum(v)) for k, v in zip(relabel_names, relabel_flags, strict=False)},
        "outputs": outputs,
    }


def _counts(report: dict[str, Any]) -> dict[str, int]:
    return dict(report["instance_count"])


@dataclass
class StoreRun:
    """A planned segmentation of an OME-Zarr store: compute ``graph`` (or ``report``).

    Nothing has touched the disk yet: the graph's first task creates the label arrays and the
    scratch folder. With ``finalize`` the graph also builds the pyramids and metadata (one task
    per label image, on the workers) and removes the scratch folder; without it, call
    :meth:`finish` after computing.

    Attributes
    ----------
    graph : Delayed
        Computes to ``{output name: instance count}`` (semantic outputs map to 0) after every
        chunk is written.
    report : Delayed
        The same graph, computing to the run's report: ``instance_count``, ``voxel_count``
        (foreground voxels of each semantic output), ``chunks_total``, ``chunks_reused``,
        ``chunks_computed``, ``relabel_reused`` and ``outputs`` (the label images, when
        finalized in the graph, else None).
    blocks : list of Delayed
        One per block, in grid order, computing to whether the block was reused (for progress).
    path : Path
        The OME-Zarr image.
    grid : BlockGrid
    outputs : tuple of OutputSpec
    scratch : dict of name → Path
        Provisional instance arrays.
    chunks_reused : int
        Blocks an earlier, interrupted run of the same plan segmented completely, as planning
        finds them (the graph loads their saved stitching data instead of segmenting them).
    relabel_reused : dict of name → int
        Final instance chunks an earlier run wrote, per instance output (not written again).
    """

    graph: Delayed
    report: Delayed
    blocks: list[Delayed]
    path: Path
    grid: BlockGrid
    outputs: tuple[OutputSpec, ...]
    scratch: dict[str, Path] = field(default_factory=dict)
    chunks_reused: int = 0
    relabel_reused: dict[str, int] = field(default_factory=dict)
    #: With ``finalize``: the key of the task after which every label image is complete and
    #: listed (what readers of the new labels wait for); None otherwise.
    complete_key: str | None = None
    #: Outputs whose existing complete label image the run replaces (built aside, swapped in).
    staged: frozenset[str] = frozenset()

    @property
    def finalized(self) -> bool:
        return self.complete_key is not None

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
        """Build label pyramids and metadata (only now do the labels look complete); drop scratch.

        Only for a run planned without ``finalize`` (its graph did not do this itself).
        """
        if self.finalized:
            return [f"{self.path}/labels/{spec.name}" for spec in self.outputs]
        for spec in self.outputs:
            label = staged_name(spec.name) if spec.name in self.staged else spec.name
            finalize_labels(self.path, label, listed=False, title=spec.name,
                            classes=dict(spec.classes) or None)
        _list_outputs(self.path, [s.name for s in self.outputs], sorted(self.staged))
        shutil.rmtree(self.path / SCRATCH_DIR, ignore_errors=True)
        return [f"{self.path}/labels/{spec.name}" for spec in self.outputs]


def _semantic_scratch(layout: _Layout, resume: bool) -> None:
    """The scratch arrays of semantic outputs to be cleaned: created afresh, or checked."""
    chunks = tuple(c[0] for c in layout.grid.chunks)
    targets = layout.targets()
    for spec in layout.cleaned:
        path = targets[spec.name]
        if resume:
            arr = zarr.open_array(store=path, mode="r")
            if arr.shape != layout.grid.shape or arr.chunks != chunks or \
                    arr.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{path}: scratch array does not match the plan")
            continue
        zarr.create_array(store=path, shape=layout.grid.shape, chunks=chunks, dtype=spec.dtype,
                          fill_value=0, overwrite=True)


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


def plan_store(
    path: str | Path, segmenter: Segmenter, *, chunks: tuple[int, int, int] | None = None,
    halo: Sequence[int] | None = None, overwrite: bool = False,
    memory_limit: int | None = None, threads: int = 1,
) -> _Layout:
    """Check and lay out a store run (reads metadata only; writes nothing).

    With ``memory_limit`` (a worker's, bytes) and ``threads`` (its threads), batches are sized
    to fit and a block that cannot fit is refused (:func:`plan_memory`).

    Raises
    ------
    OutputError
        A complete label image of one of the segmenter's outputs exists and not ``overwrite``.
    ConfigError
        Bad chunks or halo, or in-plane chunks for a whole-slice segmenter.
    """
    path = Path(path)
    img = open_image(path)
    chunk = tuple(chunks) if chunks is not None else tuple(img.data.chunksize)
    if len(chunk) != 3 or any(int(c) <= 0 for c in chunk):
        raise ConfigError(f"chunks {chunk} must be three positive integers (Z, Y, X)")
    clipped = tuple(min(c, s) for c, s in zip(chunk, img.data.shape, strict=False))
    full = BlockGrid.regular(img.data.shape, clipped, (0, 0, 0))
    segmenter = copy.deepcopy(segmenter)  # the plan keeps its own (load_model works in place)
    grid = plan_grid(full.shape, full.chunks,
                     check_halo(segmenter, halo if halo is not None else segmenter.halo))
    check_full_plane(segmenter, grid)
    segmenter = plan_memory(segmenter, grid, memory_limit, threads)
    complete = {spec.name for spec in segmenter.outputs if labels_complete(path, spec.name)}
    if complete and not overwrite:
        name = next(s.name for s in segmenter.outputs if s.name in complete)
        raise OutputError(f"{path}: label image {name!r} exists; pass {OVERWRITE} to replace it")
    return _Layout(path, img.voxel_size_nm, segmenter, grid,
                   (img.data.shape, img.data.chunksize, str(img.data.dtype)), overwrite,
                   frozenset(complete), img.level_paths[0] if img.level_paths else "0")


def _planned_reuse(layout: _Layout, stats: IntensityStats | None) -> tuple[set[Index], dict[str, set[Index]]]:
    """Blocks and final chunks an interrupted run of this plan recorded (read-only).

    With statistics at hand the whole fingerprint must match; without, the layout's (the
    first task then checks the statistics too and discards the records if they changed).
    """
    none: tuple[set[Index], dict[str, set[Index]]] = (set(), {n: set() for n in layout.names})
    progress = layout.progress
    if any(_finalized_staging(layout.path, n) for n in layout.staged) or not all(
            (layout.path / "labels" / layout.label_name(s.name) / "0" / "zarr.json").is_file()
            for s in layout.segmenter.outputs):
        return none
    plan = progress.read_plan()
    if plan is None:
        return none
    if stats is not None:
        if plan.get("fingerprint") != layout.fingerprint(stats):
            return none
    elif plan.get("layout") != layout.fingerprint(None):
        return none
    return (progress.segmented(layout.grid),
            {n: progress.relabelled(n, layout.grid) for n in layout.names})


def segment_store(
    path: str | Path,
    segmenter: Segmenter,
    stats: IntensityStats | Delayed,
    *,
    chunks: tuple[int, int, int] | None = None,
    halo: Sequence[int] | None = None,
    overwrite: bool = False,
    finalize: bool = False,
    memory_limit: int | None = None,
    threads: int = 1,
) -> StoreRun:
    """Plan a chunked segmentation of an OME-Zarr image, writing ``labels/<name>`` for each output.

    Nothing runs, and nothing on disk changes, until the returned ``StoreRun.graph`` (or
    ``.report``) is computed on any Dask scheduler; then, unless ``finalize``,
    ``StoreRun.finish()`` writes pyramids and metadata.

    Resumable: every block's completion is recorded under ``<store>/_sxtdask_scratch/`` once its
    chunks are written. Running the same plan again (same segmenter, checkpoints, statistics,
    chunks, halo and outputs) after an interruption segments only the blocks not recorded, writes
    only the final instance chunks not recorded, and gives the same chunk files as an
    uninterrupted run; ``StoreRun.chunks_reused`` says how many blocks planning found recorded.
    A different plan discards the earlier progress (with a warning in the log).

    Parameters
    ----------
    path : str or Path
        OME-Zarr image (``sxtdask convert`` output).
    segmenter : Segmenter
    stats : IntensityStats or Delayed
        Whole-volume statistics of the image, or the lazy reduction that computes them (the
        pipeline passes ``global_stats(...)`` so that statistics and segmentation are one graph).
    chunks : (cz, cy, cx), optional
        Block (and label chunk) shape; default the image's level-0 chunks.
    halo : (hz, hy, hx), optional
        Default ``segmenter.halo``.
    overwrite : bool
        Replace existing complete label images of the same names. The replacements are built
        beside them (``labels/<name>.sxtdask-new``, never listed) and swapped in atomically once
        complete, so a run that fails or is killed leaves the previous labels as they were; an
        interrupted replacement of the same plan resumes like any other run.
    finalize : bool
        Build pyramids and metadata in the graph (one task per label image), then drop the
        scratch folder.
    memory_limit, threads : int, optional
        A worker's memory limit (bytes) and threads: batches are sized to fit, and a block
        that cannot fit is refused here (:func:`plan_memory`).
    """
    layout = plan_store(path, segmenter, chunks=chunks, halo=halo, overwrite=overwrite,
                        memory_limit=memory_limit, threads=threads)
    concrete = stats if isinstance(stats, IntensityStats) else None
    segmented, relabelled = _planned_reuse(layout, concrete)
    graph, report, blocks, complete = _store_graph(layout, stats, finalize, segmented, relabelled)
    scratch = {n: layout.progress.provisional(n) for n in layout.names}
    return StoreRun(graph, report, blocks, layout.path, layout.grid, layout.segmenter.outputs, scratch,
                    len(segmented), {n: len(v) for n, v in relabelled.items()}, complete,
                    layout.staged)


def _label_arrays(layout: _Layout, grid: BlockGrid) -> bool:
    """Create (or reopen, to resume) each output's level-0 label array; a replacement of a
    complete label image (``layout.staged``) is created afresh beside it.

    Returns whether every one existed before (recorded progress is trusted only then).
    """
    label_chunks = tuple(c[0] for c in grid.chunks)
    existed = True
    for spec in layout.segmenter.outputs:
        label = layout.label_name(spec.name)
        level0 = layout.path / "labels" / label / "0"
        existed = existed and (level0 / "zarr.json").is_file()
        create_labels(layout.path, label, shape=grid.shape, chunks=label_chunks,
                      dtype=spec.dtype)  # complete ones are staged: this one is unfinished
    return existed


def _store_graph(layout: _Layout, stats: IntensityStats | Delayed, finalize: bool,
                 segmented: set[Index], relabelled_before: dict[str, set[Index]],
                 ) -> tuple[Delayed, Delayed, list[Delayed], str | None]:
    """The run as one graph: prepare, segment (GPU-pinned when the network runs on CUDA), the
    relabel reduction per instance output, final chunk writes, then (``finalize``) one pyramid
    task per label image and the scratch clean-up, and the report.

    Keys: ``prepare.<outputs>.<tomogram>-<token>``, ``segment.<outputs>.<tomogram>-<token>`` per
    block (``…-reused-<token>`` for blocks planning found recorded: they load their record and
    need no GPU), ``relabel.<name>.<tomogram>-…`` for the reduction and the final writes
    (``…-write-`` or ``…-reused-``),
    ``pyramid.<name>.<tomogram>-…`` and ``finish.<outputs>.<tomogram>-…``.
    """
    grid, seg, outputs = layout.grid, layout.segmenter, layout.segmenter.outputs
    tomo = tomogram_name(layout.path)
    what = [s.name for s in outputs]
    stats_key: Any = stats
    deps: list[Delayed] = []
    if isinstance(stats, Delayed):
        stats_key, deps = stats.key, [stats]
    token = tokenize(layout.fingerprint(None), str(layout.path), stats_key if deps else stats,
                     finalize, sorted(segmented),
                     sorted((n, sorted(v)) for n, v in relabelled_before.items()))
    stats_layers = {n for d in deps for n in d.__dask_layers__()}
    prepare = f"{task_prefix('prepare', what, tomo)}-{token}"
    run_name = f"{task_prefix('segment', what, tomo)}-{token}"
    reuse_name = f"{task_prefix('segment', what, tomo)}-reused-{token}"
    targets = layout.targets()
    stamps = [f"{task_prefix('finish', what, tomo)}-statistics-{token}",
              f"{task_prefix('finish', what, tomo)}-segmented-{token}"]
    # The statistics' end is stamped before the run's first task, so stage times are ordered.
    first = {stamps[0]: (_stamp, stats_key), prepare: (_prepare, layout, stats_key, stamps[0])}
    dsk: dict[Any, Any] = {}
    seg_tasks: dict[Any, Any] = {}
    block: dict[Index, Any] = {}
    context = None
    if len(segmented) < grid.nblocks:  # blocks to segment: the per-tomogram work they read
        img = open_image(layout.path, check_chunks=False)
        context = seg.plan_context(img.strict(0), stats, binned=img.mean_levels())
    ctx_deps: list[Any] = []
    for i in grid.indices():
        reused = i in segmented
        key = block[i] = (reuse_name if reused else run_name, *i)
        piece = None if reused else _context_key(context, grid, i, ctx_deps)
        (dsk if reused else seg_tasks)[key] = (_segment_and_write, layout, targets, stats_key, i,
                                               prepare, piece)
    done = f"{task_prefix('segment', what, tomo)}-written-{token}"
    written = {s.name: [] for s in outputs}  # type: dict[str, list[Any]]
    flags: list[Any] = []
    semantic = any(s.kind is OutputKind.SEMANTIC for s in outputs)
    counted = f"{task_prefix('segment', what, tomo)}-voxels-{token}"
    voxels: list[Any] = []
    for i in grid.indices():
        dsk[(done, *i)] = (_block_written, block[i])
        flags.append((done, *i))
        if semantic:
            dsk[(counted, *i)] = (_block_voxels, block[i])
            voxels.append((counted, *i))
        for spec in outputs:
            if spec.kind is OutputKind.SEMANTIC:
                written[spec.name].append((done, *i))
    for spec in layout.cleaned:
        keys = _clean_tasks(dsk, layout, spec, written[spec.name], targets, token, tomo)
        written[spec.name] = keys
        voxels.extend(keys)
    counts: list[Any] = []
    relabelled: dict[str, list[Any]] = {}
    for spec in outputs:
        if spec.kind is OutputKind.SEMANTIC:
            counts.append(0)
            continue
        count, keys = _relabel_tasks(dsk, layout, spec, block, targets, token, tomo,
                                     relabelled_before.get(spec.name, set()))
        counts.append(count)
        relabelled[spec.name] = keys
        written[spec.name].extend(keys)
    after: list[Any] = [k for v in written.values() for k in v]
    dsk[stamps[1]] = (_stamp, *after)
    times: list[Any] = list(stamps)
    finals: Any = None
    done_key: str | None = None
    if finalize:
        finals = []
        for spec in outputs:
            final_key = f"{task_prefix('pyramid', [spec.name], tomo)}-{token}"
            dsk[final_key] = (_finalize_output, layout.path, spec.name,
                              layout.label_name(spec.name), dict(spec.classes) or None, stamps[1],
                              *written[spec.name])
            finals.append(final_key)
        done_key = f"{task_prefix('finish', what, tomo)}-pyramids-{token}"
        dsk[done_key] = (_list_outputs, layout.path, what, sorted(layout.staged), *finals)
        drop = f"{task_prefix('finish', what, tomo)}-scratch-{token}"
        dsk[drop] = (_drop_scratch, layout.path, done_key)
        after = [drop]
        times.append(done_key)
    name = f"{task_prefix('finish', what, tomo)}-{token}"
    dsk[name] = (_report, counts, what, flags, list(relabelled), list(relabelled.values()),
                 finals, stats_key, times, voxels, *after)
    counts_name = f"{task_prefix('finish', what, tomo)}-counts-{token}"
    dsk[counts_name] = (_counts, name)
    # Inference runs where the accelerator is; reading, relabelling and writing run anywhere.
    resources = {"resources": {"GPU": 1}} if seg.blocks_need_gpu else None
    layers: dict[str, Any] = {prepare: MaterializedLayer(first),
                              run_name: MaterializedLayer(seg_tasks, annotations=resources),
                              name: MaterializedLayer(dsk)}
    ctx_layers = {n for d in ctx_deps for n in d.__dask_layers__()}
    dependencies = {prepare: set(stats_layers), run_name: {prepare, *stats_layers, *ctx_layers},
                    name: {run_name, prepare, *stats_layers}}
    for d in [*deps, *ctx_deps]:
        graph = d.__dask_graph__()
        assert isinstance(graph, HighLevelGraph)
        layers.update(graph.layers)
        dependencies.update(graph.dependencies)
    hlg = HighLevelGraph(layers, dependencies)
    blocks = [Delayed(k, hlg, layer=name) for k in flags]
    return (Delayed(counts_name, hlg, layer=name), Delayed(name, hlg, layer=name), blocks,
            done_key)


def _read_after(path: str, box: tuple[slice, ...], _after: Any) -> np.ndarray:
    return np.asarray(_zarr_array(path, "r")[box])


def _write_cleaned(path: str, box: tuple[slice, ...], name: str, value: np.ndarray
                   ) -> dict[str, int]:
    """Write one chunk of a cleaned semantic output; its foreground voxels (for the report)."""
    _zarr_array(path, "r+")[box] = value
    return {name: int(np.count_nonzero(value))}


def _clean_tasks(dsk: dict[Any, Any], layout: _Layout, spec: OutputSpec, blocks: list[Any],
                 targets: dict[str, str], token: str, tomo: str) -> list[Any]:
    """Clean one semantic output over the whole volume (:func:`clean_semantic`) once every block
    has written it to scratch, then write its final chunks; returns the write keys (each
    computing to the chunk's foreground voxels).
    """
    grid = layout.grid
    prefix = task_prefix("clean", [spec.name], tomo)
    ready = f"{prefix}-segmented-{token}"
    dsk[ready] = (_stamp, *blocks)
    read = f"{prefix}-read-{token}"
    layer = {(read, *i): (_read_after, targets[spec.name], grid.core(i), ready)
             for i in grid.indices()}
    scratch = da.Array(HighLevelGraph({read: MaterializedLayer(layer)}, {read: set()}), read,
                       chunks=grid.chunks, dtype=np.dtype(spec.dtype))
    assert spec.clean is not None
    cleaned = clean_semantic(scratch, spec.clean)
    dsk.update(dict(cleaned.__dask_graph__()))
    final = layout.finals()[spec.name]
    keys = []
    for i in grid.indices():
        key = (f"{prefix}-write-{token}", *i)
        dsk[key] = (_write_cleaned, final, grid.core(i), spec.name, (cleaned.name, *i))
        keys.append(key)
    return keys


def _relabel_tasks(
    dsk: dict[Any, Any], layout: _Layout, spec: OutputSpec, block: dict[Index, Any],
    targets: dict[str, str], token: str, tomo: str, before: set[Index],
) -> tuple[tuple[str], list[Any]]:
    """The reduction and final chunk writes of one instance output; returns its count key and
    the write keys.
    """
    grid, finals = layout.grid, layout.finals()
    local, keys = _stitch_tasks(dsk, stitch_grid(grid, layout.segmenter), spec, token, tomo)
    prefix = task_prefix("relabel", [spec.name], tomo)
    writes: list[Any] = []
    for i in grid.indices():
        dsk[(local, *i)] = (_stitching_data, block[i], spec.name)
        # The lookup depends on every block's meta, so all provisional writes are done; the
        # segment result itself (with its halo crops) is not held until this runs.
        step = "reused" if i in before else "write"
        key = (f"{prefix}-{step}-{token}", *i)
        dsk[key] = (
            _relabel_chunk, targets[spec.name], finals[spec.name], grid.core(i),
            (keys.lookup, *i), str(layout.progress.marker(spec.name, i)),
        )
        writes.append(key)
    return (keys.count,), writes
