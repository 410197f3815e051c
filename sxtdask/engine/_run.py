"""The chunked engine: segment every chunk with a halo, stitch instances, write labels.

Per chunk one task reads the chunk grown by the halo, runs the segmenter, trims the halo and keeps
(in memory for :func:`segment_array`, in a scratch Zarr array for :func:`segment_store`) the
instance labels with local IDs; the relabel reduction (``sxtdask.relabel``) turns the pieces into
global IDs, and one task per chunk applies that chunk's slice of the lookup table.
"""

from __future__ import annotations

import logging
import operator
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
from ..segmenters._base import OutputKind, OutputSpec, Segmenter
from ..stats import IntensityStats

__all__ = ["segment_array", "segment_store", "StoreRun", "plan_grid", "SCRATCH_DIR"]

logger = logging.getLogger(__name__)

SCRATCH_DIR = "_sxtdask_scratch"


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
    dsk: dict[Any, Any], grid: BlockGrid, spec: OutputSpec, token: str
) -> tuple[str, ReductionKeys]:
    """Add the relabel reduction of one instance output; return its local-task name and keys."""
    local = f"sxtdask-local-{spec.name}-{token}"
    red, keys = reduction_tasks(
        grid, local, match=spec.match, dtype=spec.dtype, prefix=f"sxtdask-{spec.name}", token=token
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
    seg = f"sxtdask-segment-{token}"
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
        out = names[spec.name] = f"sxtdask-{spec.name}-{token}"
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


def _segment_and_write(
    image_path: str,
    outputs: dict[str, str],
    segmenter: Segmenter,
    stats: IntensityStats,
    voxel_size_nm: tuple[float, float, float],
    grid: BlockGrid,
    idx: Index,
) -> dict[str, tuple[Any, Any]]:
    """Read one extended block, segment it, write semantic labels and provisional instances."""
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
    return small


def _relabel_chunk(scratch_path: str, out_path: str, box: tuple[slice, ...], lut: np.ndarray) -> int:
    """Apply one chunk's lookup slice to its provisional labels and write the final chunk."""
    provisional = np.asarray(_zarr_array(scratch_path, "r")[box])
    _zarr_array(out_path, "r+")[box] = lut[provisional]
    return int(provisional.size)


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
    """

    graph: Delayed
    path: Path
    grid: BlockGrid
    outputs: tuple[OutputSpec, ...]
    scratch: dict[str, Path] = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return self.grid.nblocks

    def finish(self) -> list[str]:
        """Build label pyramids and metadata (only now do the labels look complete); drop scratch."""
        for spec in self.outputs:
            finalize_labels(self.path, spec.name)
        shutil.rmtree(self.path / SCRATCH_DIR, ignore_errors=True)
        return [f"{self.path}/labels/{spec.name}" for spec in self.outputs]


def _scratch_array(root: Path, name: str, grid: BlockGrid) -> Path:
    path = root / SCRATCH_DIR / name
    chunks = tuple(c[0] for c in grid.chunks)
    zarr.create_array(store=str(path), shape=grid.shape, chunks=chunks, dtype="uint32",
                      fill_value=0, overwrite=True)
    return path


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
        Replace existing label images of the same names.
    """
    path = Path(path)
    img = open_image(path)
    chunk = tuple(chunks) if chunks is not None else tuple(img.data.chunksize)
    if len(chunk) != 3 or any(int(c) <= 0 for c in chunk):
        raise ConfigError(f"chunks {chunk} must be three positive integers (Z, Y, X)")
    full = BlockGrid.regular(img.data.shape, tuple(min(c, s) for c, s in zip(chunk, img.data.shape)), (0, 0, 0))
    grid = plan_grid(full.shape, full.chunks, halo if halo is not None else segmenter.halo)
    check_full_plane(segmenter, grid)
    label_chunks = tuple(c[0] for c in grid.chunks)
    targets: dict[str, str] = {}
    finals: dict[str, str] = {}
    scratch: dict[str, Path] = {}
    for spec in segmenter.outputs:
        arr = create_labels(path, spec.name, shape=grid.shape,  # type: ignore[arg-type]
                            chunks=label_chunks, dtype=spec.dtype, overwrite=overwrite)  # type: ignore[arg-type]
        finals[spec.name] = str(path / "labels" / spec.name / "0")
        if spec.kind is OutputKind.INSTANCES:
            scratch[spec.name] = _scratch_array(path, spec.name, grid)
            targets[spec.name] = str(scratch[spec.name])
        else:
            targets[spec.name] = finals[spec.name]
        del arr
    graph = _store_graph(path, img.voxel_size_nm, segmenter, stats, grid, targets, finals)
    return StoreRun(graph, path, grid, segmenter.outputs, scratch)


def _store_graph(
    path: Path,
    voxel_size_nm: tuple[float, float, float],
    segmenter: Segmenter,
    stats: IntensityStats,
    grid: BlockGrid,
    targets: dict[str, str],
    finals: dict[str, str],
) -> Delayed:
    token = tokenize(str(path), segmenter, stats, grid, sorted(targets.items()))
    seg = f"sxtdask-segment-{segmenter.task.value}-{token}"
    image_path = str(path / "0")
    seg_tasks = {
        (seg, *i): (_segment_and_write, image_path, targets, segmenter, stats, voxel_size_nm,
                    grid, i)
        for i in grid.indices()
    }
    dsk: dict[Any, Any] = {}
    counts: list[Any] = []
    done = f"sxtdask-written-{token}"  # tiny markers, so no segment result is held to the end
    for i in grid.indices():
        dsk[(done, *i)] = (_written, (seg, *i))
    written: list[Any] = [(done, *i) for i in grid.indices()]
    for spec in segmenter.outputs:
        if spec.kind is OutputKind.SEMANTIC:
            counts.append(0)
            continue
        local, keys = _stitch_tasks(dsk, stitch_grid(grid, segmenter), spec, token)
        write = f"sxtdask-relabel-{spec.name}-{token}"
        for i in grid.indices():
            dsk[(local, *i)] = (operator.getitem, (seg, *i), spec.name)
            # The lookup depends on every block's meta, so all provisional writes are done; the
            # segment result itself (with its halo crops) is not held until this runs.
            dsk[(write, *i)] = (
                _relabel_chunk, targets[spec.name], finals[spec.name], grid.core(i),
                (keys.lookup, *i),
            )
            written.append((write, *i))
        counts.append((keys.count,))
    name = f"sxtdask-finish-{token}"
    dsk[name] = (_summary, counts, [s.name for s in segmenter.outputs], written)
    # Inference runs where the accelerator is; reading, relabelling and writing run anywhere.
    resources = {"resources": {"GPU": 1}} if uses_gpu(segmenter) else None
    layers = {seg: MaterializedLayer(seg_tasks, annotations=resources),
              name: MaterializedLayer(dsk)}
    return Delayed(name, HighLevelGraph(layers, {seg: set(), name: {seg}}))


def uses_gpu(segmenter: Segmenter) -> bool:
    """True when the segmenter's network is to run on CUDA (its tasks need a ``GPU`` resource)."""
    parts = getattr(segmenter, "parts", None)
    if parts:
        return any(uses_gpu(p) for p in parts)
    net = getattr(segmenter, "unet", segmenter)
    device = getattr(net, "device", None)
    if device is None:
        return False
    from ..segmenters._unet import resolve_device

    return resolve_device(device).startswith("cuda")
