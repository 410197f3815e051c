"""``sxtdask archive``: many tomograms in flight, failures recorded, reruns skip or resume, summary.

Inputs are small phantoms as MRC, TIFF (in a subfolder) and OME-Zarr, a corrupt MRC and a 2-D
TIFF. Segmenters are fast stand-ins for the networks (``archive_helpers``) plus the classical ISG
method; every summary value is checked against a NumPy computation on the written labels, and the
metrics function against the phantom's ground truth.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import tifffile
from archive_helpers import FlakyISG, ThresholdCell, ThresholdMito

from sxtdask.archive import (
    MANIFEST_COLUMNS,
    SUMMARY_COLUMNS,
    Tomogram,
    assign_outputs,
    discover_tomograms,
    plan_archive,
    run_archive,
    tomogram_metrics,
)
from sxtdask.cli import main
from sxtdask.errors import InputError, OutputError
from sxtdask.io import labels_complete, open_image, open_labels, write_image
from sxtdask.phantoms import make_phantom, write_phantom
from sxtdask.segmenters import ClassicalISG, CombinedSegmenter

SHAPE = (32, 64, 64)
CHUNKS = (16, 64, 64)  # two blocks per tomogram
GOOD = ("a.mrc", "c.ome.zarr", "sub/b.tif")
BAD = ("bad.mrc", "flat.tif")
EXCLUDE = ["*.gt.zarr"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("archive-in")
    write_phantom(d / "a.mrc", shape=SHAPE, seed=1)  # a.gt.zarr beside it is excluded by the runs
    (d / "sub").mkdir()
    tifffile.imwrite(d / "sub" / "b.tif", make_phantom(SHAPE, seed=2).image)
    write_image(make_phantom(SHAPE, seed=3).image, d / "c.ome.zarr", voxel_size_nm=(30, 30, 30))
    (d / "bad.mrc").write_bytes(b"not a tomogram " * 100)
    tifffile.imwrite(d / "flat.tif", np.ones((64, 64), np.float32))  # 2-D: wrong dimensions
    (d / "notes.txt").write_text("not a tomogram, ignored\n")
    return d


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> CombinedSegmenter:
    d = tmp_path_factory.mktemp("models")
    (d / "cell.pt").write_bytes(b"cell weights")
    (d / "mito.pt").write_bytes(b"mito weights")
    return CombinedSegmenter((ThresholdCell(model_path=str(d / "cell.pt")),
                              ThresholdMito(model_path=str(d / "mito.pt")), ClassicalISG()))


@pytest.fixture(scope="module")
def first(inputs, segmenter, client, tmp_path_factory):
    """One archive run over the inputs: (output folder, result, progress snapshots)."""
    out = tmp_path_factory.mktemp("archive-out") / "archive"
    snapshots = []
    result = run_archive(plan_archive(inputs, out, exclude=EXCLUDE), segmenter, client, chunks=CHUNKS,
                         progress=snapshots.append)
    return out, result, snapshots


def _rows(out: Path) -> dict[str, dict]:
    return {r["input"]: r for r in json.loads((out / "manifest.json").read_text())["rows"]}


def _label_files(out: Path) -> dict[str, tuple[str, int]]:
    """Every file of the written images: content hash and modification time."""
    return {p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted((out / "tomograms").rglob("*")) if p.is_file()}


def _expected_metrics(store: Path) -> dict[str, float]:
    """The summary metrics computed directly with NumPy from a store's label images."""
    voxel_nm3 = float(np.prod(open_image(store).voxel_size_nm))
    cell = np.asarray(open_labels(store, "cell"))
    mito = np.asarray(open_labels(store, "mito"))
    isg = np.asarray(open_labels(store, "isg"))
    sizes = np.bincount(isg.ravel())[1:]
    sizes = sizes[sizes > 0]
    diameters = np.cbrt(6 * sizes * voxel_nm3 / np.pi)
    cell_um3 = np.count_nonzero(cell) * voxel_nm3 / 1e9
    return {
        "cell_volume_um3": cell_um3,
        "nucleus_volume_um3": np.count_nonzero(cell == 2) * voxel_nm3 / 1e9,
        "isg_count": sizes.size,
        "isg_mean_diameter_nm": diameters.mean(),
        "isg_median_diameter_nm": np.median(diameters),
        "isg_density_per_um3": sizes.size / cell_um3,
        "mito_volume_fraction": np.count_nonzero(mito) / np.count_nonzero(cell),
    }


# --------------------------------------------------------------------------- one run


def test_every_tomogram_is_processed_and_failures_are_recorded(first, inputs, segmenter):
    out, result, _ = first
    assert result.counts == {"done": 3, "failed": 2}
    rows = _rows(out)
    assert set(rows) == set(GOOD) | set(BAD)  # notes.txt and a.gt.zarr are not tomograms here
    for key in BAD:
        row = rows[key]
        assert row["status"] == "failed" and row["stage"] == "convert"
        assert key in row["error"] and "\n" not in row["error"]
    assert "not an MRC file" in rows["bad.mrc"]["error"]
    assert "3-D" in rows["flat.tif"]["error"] or "2-D" in rows["flat.tif"]["error"]
    for key in GOOD:
        row = rows[key]
        assert row["status"] == "done" and row["error"] is None
        assert row["tasks"] == ["cell", "mito", "isg-instances"]
        assert row["sxtdask_version"]
        assert row["chunks_total"] == 2
        assert all(row[f"seconds_{s}"] >= 0 for s in ("checksum", "convert", "segment", "measure"))
        store = out / row["output"]
        assert all(labels_complete(store, name) for name in ("cell", "mito", "isg"))
        assert np.array_equal(np.asarray(open_image(store).data), _source_image(inputs / key))
        assert row["instance_counts"]["isg"] == int(np.asarray(open_labels(store, "isg")).max())
    sha = hashlib.sha256((inputs / "a.mrc").read_bytes()).hexdigest()
    assert rows["a.mrc"]["input_sha256"] == sha
    cell_model = Path(segmenter.parts[0].model_path)
    assert rows["a.mrc"]["models"]["cell"] == str(cell_model)
    assert rows["a.mrc"]["model_sha256"]["cell"] == hashlib.sha256(cell_model.read_bytes()).hexdigest()
    assert rows["a.mrc"]["model_sha256"]["isg-instances"] is None
    assert rows["sub/b.tif"]["output"] == "tomograms/sub/b.ome.zarr"

    table = pd.read_csv(out / "manifest.csv")
    assert list(table.columns) == list(MANIFEST_COLUMNS)
    assert dict(zip(table["input"], table["status"], strict=True)) == {
        k: r["status"] for k, r in rows.items()}
    assert table.loc[table["input"] == "a.mrc", "input_sha256"].item() == sha


def _source_image(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        return tifffile.imread(path)
    if path.name.endswith(".zarr"):
        return np.asarray(open_image(path).data)
    import mrcfile

    with mrcfile.open(path) as mrc:
        return np.asarray(mrc.data)


def test_summary_equals_a_direct_computation_on_the_labels(first):
    out, _, _ = first
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert sorted(summary["input"]) == sorted(GOOD)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "summary.parquet"), summary, check_dtype=False)
    for row in summary.to_dict("records"):
        expected = _expected_metrics(out / row["output"])
        assert expected["isg_count"] > 0 and 0 < expected["mito_volume_fraction"] < 1
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-9), (row["input"], name)
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_reports_tomograms_stages_and_chunks(first):
    last = first[2][-1]
    assert (last.total, last.finished, last.counts) == (5, 5, {"done": 3, "failed": 2})
    assert last.stages["convert"] == (5, 5) and last.stages["segment"] == (3, 3)
    assert last.chunks == (6, 6)  # two blocks for each of three tomograms
    done = [s.finished for s in first[2]]
    assert done == sorted(done)


def test_each_tomogram_runs_in_its_own_span(first, client):
    def spans(dask_scheduler=None):
        return [(s.name, sorted(g.name for g in s.groups))
                for s in dask_scheduler.extensions["spans"].spans.values()]

    named = {name[-1]: groups for name, groups in client.run_on_scheduler(spans)
             if name[-1].startswith("tomogram ")}
    for key in GOOD:
        groups = named[f"tomogram {key}"]
        for stage in ("checksum", "convert", "segment", "measure"):
            assert any(stage in g for g in groups), (key, stage, groups)
    names = [name for name, _ in client.run_on_scheduler(spans)]
    assert any(n[0].startswith("archive ") and n[-1] == "tomogram a.mrc" for n in names)


def test_metrics_match_the_phantom_ground_truth(inputs):
    phantom = make_phantom(SHAPE, seed=1)
    got = tomogram_metrics(inputs / "a.gt.zarr").compute(scheduler="sync")
    voxel_nm3 = phantom.voxel_size_nm**3
    sizes = np.bincount(phantom.isg.ravel())[1:]
    cell = np.count_nonzero(phantom.cell)
    assert got["cell_volume_um3"] == pytest.approx(cell * voxel_nm3 / 1e9)
    assert got["nucleus_volume_um3"] == pytest.approx(np.count_nonzero(phantom.cell == 2) * voxel_nm3 / 1e9)
    assert got["isg_count"] == phantom.n_isg
    assert got["isg_median_diameter_nm"] == pytest.approx(np.median(np.cbrt(6 * sizes * voxel_nm3 / np.pi)))
    assert got["isg_density_per_um3"] == pytest.approx(phantom.n_isg / (cell * voxel_nm3 / 1e9))
    assert got["mito_volume_fraction"] == pytest.approx(np.count_nonzero(phantom.mito) / cell)
    only_isg = tomogram_metrics(inputs / "a.gt.zarr", cell=None, mito=None).compute(scheduler="sync")
    assert only_isg["isg_count"] == phantom.n_isg
    assert np.isnan(only_isg["cell_volume_um3"]) and np.isnan(only_isg["isg_density_per_um3"])


# --------------------------------------------------------------------------- reruns


def test_rerun_skips_finished_tomograms_and_changes_no_byte(first, inputs, segmenter, client):
    out, _, _ = first
    before, rows_before = _label_files(out), _rows(out)
    summary_before = pd.read_csv(out / "summary.csv")
    result = run_archive(plan_archive(inputs, out, exclude=EXCLUDE), segmenter, client, chunks=CHUNKS)
    assert result.counts == {"skipped": 3, "failed": 2}  # failed ones are tried again
    assert _label_files(out) == before
    rows = _rows(out)
    for key in GOOD:
        assert rows[key]["status"] == "skipped"
        assert rows[key]["finished"] == rows_before[key]["finished"]  # as made by the first run
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), summary_before)


def test_modified_input_is_redone_and_the_rest_skipped(first, inputs, segmenter, client, tmp_path):
    src, _, _ = first
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(inputs, inp)
    shutil.copytree(src, out)  # the manifest holds relative paths: a moved archive still resumes
    before = _label_files(out)
    tifffile.imwrite(inp / "sub" / "b.tif", make_phantom(SHAPE, seed=4).image)
    result = run_archive(plan_archive(inp, out, exclude=EXCLUDE), segmenter, client, chunks=CHUNKS)
    assert result.counts == {"done": 1, "skipped": 2, "failed": 2}
    rows = _rows(out)
    assert rows["sub/b.tif"]["status"] == "done" and rows["sub/b.tif"]["seconds_convert"] is not None
    expected = hashlib.sha256((inp / "sub" / "b.tif").read_bytes()).hexdigest()
    assert rows["sub/b.tif"]["input_sha256"] == expected
    after = _label_files(out)
    assert {k: v for k, v in after.items() if "/b.ome.zarr/" not in k} == \
        {k: v for k, v in before.items() if "/b.ome.zarr/" not in k}
    store = out / rows["sub/b.tif"]["output"]
    assert np.array_equal(np.asarray(open_image(store).data), tifffile.imread(inp / "sub" / "b.tif"))
    summary = pd.read_csv(out / "summary.csv").set_index("input")
    assert summary.loc["sub/b.tif", "isg_count"] == _expected_metrics(store)["isg_count"]


def test_changed_model_redoes_only_its_task(first, inputs, segmenter, client, tmp_path):
    src, _, _ = first
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(inputs, inp)
    shutil.copytree(src, out)
    (tmp_path / "cell2.pt").write_bytes(b"other cell weights")
    cell, mito, isg = segmenter.parts
    changed = CombinedSegmenter((dataclasses.replace(cell, model_path=str(tmp_path / "cell2.pt"), high=0.5),
                                 mito, isg))
    before = _label_files(out)
    result = run_archive(plan_archive(inp, out, exclude=EXCLUDE), changed, client, chunks=CHUNKS)
    assert result.counts == {"done": 3, "failed": 2}
    after = _label_files(out)
    for name, value in before.items():
        if "/labels/mito/" in name or "/labels/isg/" in name or "/labels/" not in name:
            assert after.get(name) == value, name  # untouched: the same bytes, not rewritten
    cell_chunks = [n for n in before if "/labels/cell/0/" in n]
    assert cell_chunks and all(after[n][1] != before[n][1] for n in cell_chunks)  # rewritten
    for row in pd.read_csv(out / "summary.csv").to_dict("records"):
        store = out / row["output"]
        assert row["nucleus_volume_um3"] == pytest.approx(_expected_metrics(store)["nucleus_volume_um3"])
        assert row["isg_count"] == _expected_metrics(store)["isg_count"]
    rows = _rows(out)
    assert rows["a.mrc"]["model_sha256"]["cell"] == hashlib.sha256(b"other cell weights").hexdigest()


def test_interrupted_tomogram_is_completed_from_its_missing_chunks(first, inputs, client, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(inputs / "a.mrc", inp / "a.mrc")
    armed = tmp_path / "armed"
    armed.touch()
    seg = FlakyISG(armed=str(armed))
    result = run_archive(plan_archive(inp, out), seg, client, chunks=CHUNKS)
    row = result.rows[0]
    assert (row["status"], row["stage"], row["error"]) == (
        "failed", "segment", "RuntimeError: simulated crash")
    store = out / row["output"]
    assert not labels_complete(store, "isg")  # unfinished, and left in place
    _wait_until_workers_idle(client)  # the block that got through has finished writing

    armed.unlink()
    result = run_archive(plan_archive(inp, out), seg, client, chunks=CHUNKS)
    row = result.rows[0]
    assert row["status"] == "done"
    assert (row["chunks_skipped"], row["chunks_recomputed"]) == (1, 1)
    assert row["seconds_convert"] is None  # the converted image was reused
    # byte for byte the labels of the uninterrupted first run (same method and chunks)
    ref = first[0] / _rows(first[0])["a.mrc"]["output"]
    for f in sorted((ref / "labels" / "isg").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (store / f.relative_to(ref)).read_bytes(), f


def _wait_until_workers_idle(client, timeout: float = 60.0) -> None:
    def busy(dask_worker=None):
        return len(dask_worker.state.executing) + len(dask_worker.state.long_running)

    deadline = time.monotonic() + timeout
    while any(client.run(busy).values()):
        assert time.monotonic() < deadline, "workers still busy"
        time.sleep(0.1)


def test_a_second_run_on_the_same_folder_is_refused(inputs, tmp_path, client):
    plan = plan_archive(inputs, tmp_path / "out", exclude=EXCLUDE)
    with open(tmp_path / "out" / ".sxtdask.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another sxtdask archive run"):
            run_archive(plan, ClassicalISG(), client)


# --------------------------------------------------------------------------- discovery and names


def test_discovery_and_output_names(tmp_path):
    (tmp_path / "x").mkdir()
    for name in ("a.mrc", "a.tif", "x/a.mrc", ".hidden.mrc", "readme.md"):
        (tmp_path / name).write_bytes(b"\0")
    (tmp_path / "s.ome.zarr").mkdir()
    (tmp_path / "s.ome.zarr" / "inner.mrc").write_bytes(b"\0")  # inside a Zarr folder: not entered
    found = discover_tomograms(tmp_path, exclude=["*.tif"])
    assert [(t.key, t.kind) for t in found] == [("a.mrc", "file"), ("s.ome.zarr", "ome-zarr"),
                                                 ("x/a.mrc", "file")]
    everything = discover_tomograms(tmp_path)
    names = assign_outputs(everything, {})
    assert names == {"a.mrc": "tomograms/a.mrc.ome.zarr", "a.tif": "tomograms/a.tif.ome.zarr",
                     "s.ome.zarr": "tomograms/s.ome.zarr", "x/a.mrc": "tomograms/x/a.ome.zarr"}
    # names recorded by an earlier run are kept; a newcomer does not take a claimed name
    t = Tomogram("b.mrc", tmp_path / "b.mrc", "file")
    assert assign_outputs([t], {"b.mrc": "tomograms/old.ome.zarr"}) == {"b.mrc": "tomograms/old.ome.zarr"}
    assert assign_outputs([t], {"gone.tif": "tomograms/b.ome.zarr"}) == {"b.mrc": "tomograms/b.mrc.ome.zarr"}


def test_plan_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        plan_archive(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no tomograms found"):
        plan_archive(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="inside the file"):
        plan_archive(tmp_path / "empty", tmp_path / "file" / "out")


# --------------------------------------------------------------------------- command line


def test_cli_exits_1_naming_the_failed_tomograms(inputs, client, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["archive", str(inputs), "--out", str(out), "--tasks", "isg-instances", "--method",
            "classical", "--chunks", "16,64,64", "--exclude", "*.gt.zarr", "--scheduler",
            client.scheduler.address, "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 5 tomogram(s) failed" in err and "bad.mrc" in err and "flat.tif" in err
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        **dict.fromkeys(GOOD, "done"), **dict.fromkeys(BAD, "failed")}
    summary = pd.read_csv(out / "summary.csv")
    assert summary["cell_volume_um3"].isna().all() and summary["isg_count"].notna().all()
    with dask.config.set(scheduler="sync"):
        labels = np.asarray(open_labels(out / rows["a.mrc"]["output"], "isg"))
    assert summary.set_index("input").loc["a.mrc", "isg_count"] == labels.max()


@pytest.mark.parametrize("case", ["missing input", "no tomograms", "out inside a file"])
def test_cli_one_line_errors(case, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    inp, out, text = {
        "missing input": (tmp_path / "nope", tmp_path / "out", "no such folder"),
        "no tomograms": (tmp_path / "empty", tmp_path / "out", "no tomograms found"),
        "out inside a file": (tmp_path / "empty", tmp_path / "file" / "out", "inside the file"),
    }[case]
    if case == "out inside a file":
        (tmp_path / "empty" / "a.mrc").write_bytes(b"\0")
    code = main(["archive", str(inp), "--out", str(out), "--tasks", "isg-instances", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sxtdask: error: ") and text in err and err.count("\n") == 1


def test_an_ome_zarr_input_keeps_its_voxel_size_through_the_archive(tmp_path, client):
    """The same 30 nm tomogram as an OME-Zarr and as an MRC: identical physical rows.

    (The OME-Zarr copy once lost its voxel size and was measured at 1 nm: µm³ 27,000× too small.)
    """
    from sxtdask.archive import SUMMARY_COLUMNS
    from sxtdask.io import open_volume

    image = make_phantom(SHAPE, seed=4).image
    for kind in ("zarr", "mrc"):
        d = tmp_path / f"in-{kind}"
        d.mkdir()
        if kind == "zarr":
            write_image(image, d / "t.ome.zarr", voxel_size_nm=(30, 30, 30))
        else:
            import mrcfile

            with mrcfile.new(d / "t.mrc") as mrc:
                mrc.set_data(image)
                mrc.voxel_size = 300.0  # Å
            with open_volume(d / "t.mrc") as vol:
                assert tuple(vol.voxel_size_nm) == pytest.approx((30, 30, 30))
    seg = CombinedSegmenter((ThresholdCell(), ClassicalISG()))
    rows, summaries = {}, {}
    for kind in ("zarr", "mrc"):
        out = tmp_path / f"out-{kind}"
        result = run_archive(plan_archive(tmp_path / f"in-{kind}", out), seg, client, chunks=CHUNKS)
        (rows[kind],) = result.rows
        assert rows[kind]["status"] == "done", rows[kind]["error"]
        summaries[kind] = pd.read_csv(out / "summary.csv")
    assert rows["zarr"]["voxel_size_nm"] == pytest.approx([30, 30, 30])
    physical = [c for c in SUMMARY_COLUMNS if c not in ("input", "output")]
    for col in ("voxel_size_nm", "shape", "instance_counts", *[c for c in physical if c in rows["mrc"]]):
        assert rows["zarr"][col] == rows["mrc"][col] or (
            isinstance(rows["mrc"][col], float) and np.isnan(rows["mrc"][col])
            and np.isnan(rows["zarr"][col])), col
    a, b = (summaries[k].drop(columns=[c for c in ("input", "output") if c in summaries[k]])
            for k in ("zarr", "mrc"))
    pd.testing.assert_frame_equal(a, b)
    # µm³ at 30 nm (about 1 µm³ of this small cell), not at 1 nm (27,000 times less)
    assert (summaries["mrc"]["cell_volume_um3"] > 0.1).all()
