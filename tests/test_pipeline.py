"""The one pipeline (``segment_tomogram``): one lazy graph from statistics to metrics.

Planning writes nothing; computing the graph writes labels equal to the engine's step-by-step
route and to a whole-volume run; every block is segmented once even when the metrics read the
new labels; pyramids are built on the workers.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from archive_helpers import ThresholdCell, ThresholdMito

import sxtdask.engine._run as engine_run
from sxtdask.archive import tomogram_metrics
from sxtdask.engine import segment_store
from sxtdask.errors import OutputError
from sxtdask.io import labels_complete, list_labels, open_labels, write_image
from sxtdask.pipeline import METRIC_COLUMNS, segment_tomogram
from sxtdask.segmenters import ClassicalISG, CombinedSegmenter
from sxtdask.stats import global_stats

CHUNKS = (8, 64, 64)


def _files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def _label_bytes(path: Path) -> dict[str, bytes]:
    root = path / "labels"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def store(tmp_path, small_phantom) -> Path:
    return write_image(small_phantom.image[:32, :64, :64], tmp_path / "t.zarr", chunks=CHUNKS,
                       voxel_size_nm=(30.0, 30.0, 30.0))


def _segmenter() -> CombinedSegmenter:
    return CombinedSegmenter((ThresholdCell(), ThresholdMito(), ClassicalISG()))


def test_planning_writes_nothing_and_the_graph_does_everything(store):
    before = _files(store)
    run = segment_tomogram(store, _segmenter(), measure=True)
    assert _files(store) == before  # no label array, no scratch, no plan file yet
    report = run.result.compute(scheduler="sync")
    assert sorted(list_labels(store)) == ["cell", "isg", "mito"]
    assert all(labels_complete(store, n) for n in ("cell", "mito", "isg"))
    assert not (store / "_sxtdask_scratch").exists()
    assert report["chunks_total"] == run.n_chunks == 4 and report["chunks_computed"] == 4
    assert report["instance_count"]["isg"] == int(open_labels(store, "isg").max().compute())
    ended = report["stage_ended"]
    assert list(ended) == ["statistics", "segment_and_relabel", "pyramids", "measure"]
    assert ended["statistics"] <= ended["segment_and_relabel"] <= ended["pyramids"] <= ended["measure"]
    assert set(report["metrics"]) == set(METRIC_COLUMNS)
    assert report["metrics"] == tomogram_metrics(store).compute(scheduler="sync")


def test_each_block_is_segmented_once_with_metrics(store, monkeypatch):
    """The metrics read the new labels through the same graph: nothing runs twice (array
    optimisation once renamed the shared keys and segmented every block again).
    """
    calls = []
    real = engine_run._segment_and_write

    def spy(*args):
        out = real(*args)
        calls.append(args[3])
        return out

    monkeypatch.setattr(engine_run, "_segment_and_write", spy)
    run = segment_tomogram(store, _segmenter(), measure=True)
    run.result.compute(scheduler="sync")
    assert sorted(calls) == sorted(run.store.grid.indices())


def test_pipeline_equals_the_engine_step_by_step_and_a_whole_volume_run(store, tmp_path, small_phantom):
    other = write_image(small_phantom.image[:32, :64, :64], tmp_path / "u.zarr", chunks=CHUNKS,
                        voxel_size_nm=(30.0, 30.0, 30.0))
    segment_tomogram(store, _segmenter()).result.compute(scheduler="sync")
    stats = global_stats(da.from_zarr(str(other / "0"))).compute(scheduler="sync")
    run = segment_store(other, _segmenter(), stats)
    run.graph.compute(scheduler="sync")
    run.finish()
    assert _label_bytes(store) == _label_bytes(other)
    whole = _segmenter().predict(small_phantom.image[:32, :64, :64], (30.0, 30.0, 30.0))
    for name in ("cell", "mito", "isg"):
        np.testing.assert_array_equal(open_labels(store, name).compute(), whole[name])


def test_existing_labels_are_refused_at_planning_and_overwrite_keeps_nothing_stale(store):
    segment_tomogram(store, ClassicalISG()).result.compute(scheduler="sync")
    first = _label_bytes(store)
    with pytest.raises(OutputError, match="exists; pass overwrite=True"):
        segment_tomogram(store, ClassicalISG())
    segment_tomogram(store, ClassicalISG(), overwrite=True).result.compute(scheduler="sync")
    assert _label_bytes(store) == first


def test_pyramids_are_built_on_the_workers(store, client):
    """The client never builds a pyramid: finalize runs as tasks on the worker processes."""
    run = segment_tomogram(store.absolute(), _segmenter())
    from distributed import get_task_stream

    with get_task_stream(client) as ts:
        futures = client.compute([run.result, *run.blocks])
        report = futures[0].result()
        assert [f.result() for f in futures[1:]] == [False] * run.n_chunks
    pyramids = [t for t in ts.data if str(t["key"]).startswith("pyramid.")]
    assert len(pyramids) == 3 and {t["worker"] for t in pyramids} <= set(client.scheduler_info()["workers"])
    assert sorted(report["outputs"]) == sorted(f"{store.absolute()}/labels/{n}"
                                               for n in ("cell", "isg", "mito"))
