"""One tomogram, one lazy graph: statistics → plan → segment and relabel → pyramids → measure.

:func:`segment_tomogram` is the single pipeline that ``sxtdask segment``, ``sxtdask archive`` and
``sxtdask demo`` run. Building it reads metadata only (nothing on disk changes until the graph
runs); computing :attr:`TomogramRun.result` on any Dask scheduler does everything, on the workers:

1. the whole-volume statistics (one reduction);
2. the run's first task creates the label arrays and scratch (or keeps an interrupted run's);
3. every block is segmented with its halo; instance outputs go through the global relabel;
4. one task per label image builds its pyramid and metadata, and only then lists it;
5. optionally, the summary metrics of the new labels (read chunk by chunk after step 4).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from .._fs import write_lock
from ..engine import StoreRun, segment_store, task_prefix, tomogram_name
from ..io import open_image
from ..segmenters import Segmenter, Task
from ..stats import IntensityStats, global_stats
from ._measure import summary_metrics

__all__ = ["TomogramRun", "segment_tomogram"]

logger = logging.getLogger(__name__)

#: Which label image feeds which summary metric, by the task that makes it.
_MEASURED = {Task.CELL: "cell", Task.MITO: "mito", Task.ISG_INSTANCES: "isg"}


def _read_chunk(path: str, box: tuple[slice, ...], _after: Any) -> np.ndarray:
    return np.asarray(zarr.open_array(store=path, mode="r")[box])


def _result(report: dict[str, Any], metrics: dict[str, float] | None,
            measured: float | None) -> dict[str, Any]:
    out = dict(report)
    out["metrics"] = metrics
    if measured is not None:
        out["stage_ended"] = {**out["stage_ended"], "measure": measured}
    return out


def _stamp(*_after: Any) -> float:
    return time.time()


@dataclass
class TomogramRun:
    """A planned pipeline run of one OME-Zarr image (from :func:`segment_tomogram`).

    Attributes
    ----------
    path : Path
        The OME-Zarr image.
    segmenter : Segmenter
    store : StoreRun
        The engine's plan (grid, outputs, what an interrupted run left).
    result : Delayed
        Computes to the run's report: ``instance_count``, ``voxel_count`` (foreground voxels
        of each semantic output), ``chunks_total``, ``chunks_reused``,
        ``chunks_computed``, ``relabel_reused``, ``outputs``, ``intensity_stats``, ``metrics``
        (None unless measured) and ``stage_ended`` (wall-clock end of each stage).
    blocks : list of Delayed
        One per block, each computing (once the block is segmented) to whether it was reused:
        compute them with ``result`` for per-block progress.
    voxel_size_nm : (z, y, x)
    stats : Delayed or IntensityStats
        The whole-volume statistics the graph uses (compute it with ``result`` to see them
        first: they are one key of the same graph).
    """

    path: Path
    segmenter: Segmenter
    store: StoreRun
    result: Delayed
    blocks: list[Delayed]
    voxel_size_nm: tuple[float, float, float]
    stats: Delayed | IntensityStats

    @property
    def n_chunks(self) -> int:
        return self.store.n_chunks

    def compute(self, **kwargs: Any) -> dict[str, Any]:
        """Compute :attr:`result` while holding the store's one-writer lock (as ``sxtdask
        segment`` does): a second run on the same store at the same time is refused.

        ``kwargs`` go to :func:`dask.compute` (e.g. ``scheduler="sync"``); without them the
        current client, if any, runs it.

        Raises
        ------
        OutputError
            Another run holds the store (its host, process and start time are named).
        """
        with write_lock(self.path, str(self.path)):
            return cast(dict[str, Any], dask.compute(self.result, **kwargs)[0])

    def labels(self, name: str) -> da.Array:
        """The label image ``name`` as a lazy array read chunk by chunk once it is complete."""
        return _lazy_labels(self.store, name)


def _lazy_labels(run: StoreRun, name: str) -> da.Array:
    spec = next((s for s in run.outputs if s.name == name), None)
    if spec is None:
        raise KeyError(f"the run writes no label image {name!r}")
    if run.complete_key is None:
        raise ValueError("the run was planned without finalize: its labels never become complete")
    graph = run.report.__dask_graph__()
    pyramid = run.complete_key  # read once every label image of the run is complete
    out = f"labels.{name}-{tokenize(pyramid)}"
    level0 = str(run.path / "labels" / name / "0")
    grid = run.grid
    dsk = {(out, *i): (_read_chunk, level0, grid.core(i), pyramid) for i in grid.indices()}
    # The layer names the run's layers as its dependencies: the pyramid-stage key it waits for
    # is then a key wherever the graph is converted (not a plain string).
    layer = HighLevelGraph({out: MaterializedLayer(dsk)}, {out: set(run.report.__dask_layers__())})
    merged = HighLevelGraph.merge(graph, layer)
    return da.Array(merged, out, chunks=grid.chunks, dtype=np.dtype(spec.dtype))


def segment_tomogram(
    path: str | Path,
    segmenter: Segmenter,
    *,
    chunks: tuple[int, int, int] | None = None,
    halo: Sequence[int] | None = None,
    overwrite: bool = False,
    stats: IntensityStats | Delayed | None = None,
    measure: bool = False,
    memory_limit: int | None = None,
    threads: int = 1,
) -> TomogramRun:
    """Plan the whole pipeline for one OME-Zarr image, as one lazy graph.

    Parameters
    ----------
    path : str or Path
        OME-Zarr image (``sxtdask convert`` output).
    segmenter : Segmenter
        One, or a ``CombinedSegmenter`` (several tasks over one read of each chunk).
    chunks : (cz, cy, cx), optional
        Block (and label chunk) shape; default the image's level-0 chunks.
    halo : (hz, hy, hx), optional
        Default the segmenter's.
    overwrite : bool
        Replace existing label images of the same names.
    stats : IntensityStats or Delayed, optional
        Whole-volume statistics; default their reduction, inside the graph.
    measure : bool
        Add the summary metrics of the new labels (``result["metrics"]``).
    memory_limit, threads : int, optional
        A worker's memory limit (bytes) and threads: batches are sized to fit and a block that
        cannot fit is refused here, before anything runs (``sxtdask segment`` passes its
        cluster's; see :func:`sxtdask.engine.plan_memory`).

    Returns
    -------
    TomogramRun
        Nothing has run and nothing on disk has changed.

    Raises
    ------
    OutputError
        A complete label image of one of the outputs exists and ``overwrite`` is false.
    ConfigError
        Bad chunks or halo.

    Examples
    --------
    >>> from sxtdask import ClassicalISG                              # doctest: +SKIP
    >>> run = segment_tomogram("cell.ome.zarr", ClassicalISG())      # doctest: +SKIP
    >>> report = run.compute()                                        # doctest: +SKIP
    >>> report["instance_count"]                                      # doctest: +SKIP
    {'isg': 812}
    """
    path = Path(path)
    segmenter = copy.deepcopy(segmenter)  # the run keeps its own (load_model works in place)
    img = open_image(path)
    lazy_stats = global_stats(img.strict(0)) if stats is None else stats  # damaged chunks: one line
    store = segment_store(path, segmenter, lazy_stats, chunks=chunks, halo=halo,
                          overwrite=overwrite, finalize=True, memory_limit=memory_limit,
                          threads=threads)
    metrics: Any = None
    measured: Any = None
    if measure:
        names = {_MEASURED[p.task]: o.name for p in segmenter.parts if p.task in _MEASURED
                 for o in p.outputs}
        arrays = {k: _lazy_labels(store, v) for k, v in names.items()}
        key = task_prefix("measure", list(names.values()) or ["none"], tomogram_name(path))
        metrics = summary_metrics(img.voxel_size_nm, key_name=key, **arrays)
        measured = dask.delayed(_stamp, pure=False)(metrics)
    result = dask.delayed(_result, pure=True)(
        store.report, metrics, measured,
        dask_key_name=f"{task_prefix('report', [s.name for s in store.outputs], tomogram_name(path))}"
                      f"-{tokenize(store.report.key, measure)}")
    return TomogramRun(path, segmenter, store, result, store.blocks, img.voxel_size_nm,
                       lazy_stats)
