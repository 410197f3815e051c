"""A new user's first hour with ``archive`` and ``demo`` (issue "A new user's first hour").

- ``archive`` ignores the ``*.gt.zarr`` ground truth that ``synth`` writes beside each tomogram,
  and Zarr folders without a multiscale image, with a note (log, CLI line, manifest row);
- a failed input leaves nothing under ``OUT/tomograms/``;
- ``summary.html`` names every point (bokeh, self-contained);
- ``demo`` refuses a non-empty ``--out`` without ``--overwrite`` and replaces it whole with it;
- the demo figure has a scale bar and a panel of the ISG errors against the truth, classified by
  the package's 3-D instance matcher.

Inputs are tiny phantoms (16×32×32 to 16×64×64) so each run takes seconds.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import zarr

from sxtdask.archive import plan_archive, run_archive, scan_inputs, write_summary
from sxtdask.cli import main
from sxtdask.errors import InputError
from sxtdask.metrics import block_contingency, instance_outcomes, match_contingency
from sxtdask.phantoms import make_phantom, write_phantom
from sxtdask.segmenters import ClassicalISG

SMALL = (16, 32, 32)


def _rows(out: Path) -> dict[str, dict]:
    return {r["input"]: r for r in json.loads((out / "manifest.json").read_text())["rows"]}


def _write_mrc(path: Path, image: np.ndarray) -> None:
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ascontiguousarray(image, dtype=np.float32))
        mrc.voxel_size = 300.0  # Å: 30 nm, so the reader has no header to complain about


def _image_less_stores(d: Path) -> None:
    """A labels-only OME-Zarr store, a plain Zarr group and a bare Zarr array."""
    root = zarr.open_group(d / "labels-only.zarr", mode="w", zarr_format=3)
    labels = root.create_group("labels")
    labels.create_array("isg", shape=SMALL, dtype="uint32")
    zarr.open_group(d / "plain.zarr", mode="w", zarr_format=3).attrs["note"] = "not an image"
    zarr.create_array(d / "array.zarr", shape=(4, 4), dtype="uint8", zarr_format=3)


# --------------------------------------------------------------------------- 1. what is a tomogram


def test_ground_truth_and_image_less_zarr_folders_are_ignored_with_a_reason(tmp_path, caplog):
    write_phantom(tmp_path / "a.mrc", shape=SMALL, seed=1)  # writes a.gt.zarr beside it
    _image_less_stores(tmp_path)
    (tmp_path / "damaged.zarr").mkdir()  # no metadata at all: stays a tomogram (its conversion says why)
    with caplog.at_level(logging.INFO, logger="sxtdask.archive"):
        scan = scan_inputs(tmp_path)
    assert [t.key for t in scan.tomograms] == ["a.mrc", "damaged.zarr"]
    assert sorted(scan.ignored) == ["a.gt.zarr", "array.zarr", "labels-only.zarr", "plain.zarr"]
    assert "ground truth" in scan.ignored["a.gt.zarr"]
    assert "labels only" in scan.ignored["labels-only.zarr"]
    assert "array" in scan.ignored["array.zarr"]
    assert "without a multiscale image" in scan.ignored["plain.zarr"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"{key}: ignored: " in logged for key in scan.ignored)


def test_only_ground_truth_is_no_tomograms_and_says_what_it_ignored(tmp_path):
    (tmp_path / "in").mkdir()
    write_phantom(tmp_path / "in" / "a.mrc", shape=SMALL, seed=1)
    (tmp_path / "in" / "a.mrc").unlink()
    with pytest.raises(InputError, match=r"no tomograms found .*ignored a\.gt\.zarr \(ground truth"):
        plan_archive(tmp_path / "in", tmp_path / "out")


def test_archive_of_synth_outputs_ignores_the_ground_truth(tmp_path, client, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    for name, seed in (("a.mrc", 1), ("sub/b.mrc", 2)):
        write_phantom(inp / name, shape=(16, 48, 48), seed=seed)
    _image_less_stores(inp)
    argv = ["archive", str(inp), "--out", str(out), "--tasks", "isg-instances", "--method",
            "classical", "--scheduler", client.scheduler.address]
    assert main(argv) == 0
    said = capsys.readouterr().out
    rows = _rows(out)
    ignored = {"a.gt.zarr", "sub/b.gt.zarr", "labels-only.zarr", "plain.zarr", "array.zarr"}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a.mrc": "done", "sub/b.mrc": "done", **dict.fromkeys(ignored, "ignored")}
    for key in ignored:
        assert rows[key]["note"] and rows[key]["error"] is None and rows[key]["output"] is None
        assert f"{key}: ignored: {rows[key]['note']}" in said  # one line each
    assert "ground truth" in rows["sub/b.gt.zarr"]["note"]
    table = pd.read_csv(out / "manifest.csv")
    assert set(table.loc[table["status"] == "ignored", "input"]) == ignored
    assert table.loc[table["input"] == "a.gt.zarr", "note"].item() == rows["a.gt.zarr"]["note"]
    assert sorted(pd.read_csv(out / "summary.csv")["input"]) == ["a.mrc", "sub/b.mrc"]
    made = sorted(p.relative_to(out).as_posix() for p in (out / "tomograms").rglob("*.ome.zarr"))
    assert made == ["tomograms/a.ome.zarr", "tomograms/sub/b.ome.zarr"]
    assert "2 done, 5 ignored" in said
    # a rerun skips the tomograms and notes the same folders again
    assert main([*argv, "-q"]) == 0
    assert {k: r["status"] for k, r in _rows(out).items()} == {
        "a.mrc": "skipped", "sub/b.mrc": "skipped", **dict.fromkeys(ignored, "ignored")}


# --------------------------------------------------------------------------- 2. failures leave nothing


def test_failed_inputs_leave_nothing_under_tomograms(tmp_path, client, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    (inp / "deep" / "er").mkdir(parents=True)
    _write_mrc(inp / "good.mrc", make_phantom(SMALL, seed=1).image)
    _write_mrc(inp / "sub" / "truncated.mrc", make_phantom(SMALL, seed=2).image)
    data = (inp / "sub" / "truncated.mrc").read_bytes()
    (inp / "sub" / "truncated.mrc").write_bytes(data[: len(data) // 2])
    nan = make_phantom(SMALL, seed=3).image.astype(np.float32)
    nan[5, 6, 7] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's own warning as it writes
        _write_mrc(inp / "deep" / "er" / "nan.mrc", nan)
    argv = ["archive", str(inp), "--out", str(out), "--tasks", "isg-instances", "--method",
            "classical", "--scheduler", client.scheduler.address, "-q"]
    assert main(argv) == 1  # after finishing the good one
    err = capsys.readouterr().err
    assert "2 of 3 tomogram(s) failed" in err
    rows = _rows(out)
    assert rows["good.mrc"]["status"] == "done"
    for key, text in (("sub/truncated.mrc", "truncated"), ("deep/er/nan.mrc", "NaN")):
        row = rows[key]
        assert row["status"] == "failed" and text in row["error"] and "\n" not in row["error"]
    left = sorted(p.relative_to(out).as_posix() for p in (out / "tomograms").iterdir())
    assert left == ["tomograms/good.ome.zarr"]  # no empty sub/ nor deep/er/


def test_an_archive_whose_only_input_fails_has_no_tomograms_folder(tmp_path, client):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "a" / "b").mkdir(parents=True)
    (inp / "a" / "b" / "bad.mrc").write_bytes(b"not a tomogram " * 100)
    result = run_archive(plan_archive(inp, out), ClassicalISG(), client)
    assert result.counts == {"failed": 1}
    assert not (out / "tomograms").exists()
    assert (out / "manifest.csv").is_file()


# --------------------------------------------------------------------------- 3. summary.html


def test_summary_html_names_every_point_and_needs_no_network(tmp_path):
    rows = [{"input": inp, "output": f"tomograms/{out}.ome.zarr", "cell_volume_um3": v,
             "nucleus_volume_um3": v / 4, "isg_count": 3 * i, "isg_mean_diameter_nm": 200.0 + i,
             "isg_median_diameter_nm": 190.0 + i, "isg_density_per_um3": 0.5 * i,
             "mito_volume_fraction": math.nan}
            for i, (inp, out, v) in enumerate((("cellA.mrc", "cellA", 10.0),
                                               ("day2/cellB.tif", "day2/cellB", 12.0),
                                               ("x/y/cellC.ome.zarr", "x/y/cellC", 9.0)))]
    paths = write_summary(rows, tmp_path)
    html_path = tmp_path / "summary.html"
    assert html_path in paths
    html = html_path.read_text(encoding="utf-8")
    for name in ("cellA", "cellB", "cellC", "day2/cellB.tif", "x/y/cellC.ome.zarr"):
        assert f'"{name}"' in html, name
    assert '"HoverTool"' in html and "@name" in html and "@input" in html
    assert "cdn.bokeh.org" not in html and "Bokeh" in html  # BokehJS inlined
    assert not list(tmp_path.glob(".*partial"))


def test_archive_writes_summary_html(tmp_path, client):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "day1").mkdir(parents=True)
    _write_mrc(inp / "first.mrc", make_phantom(SMALL, seed=1).image)
    _write_mrc(inp / "day1" / "second.mrc", make_phantom(SMALL, seed=2).image)
    result = run_archive(plan_archive(inp, out), ClassicalISG(), client)
    assert result.counts == {"done": 2}
    assert out / "summary.html" in result.summary
    html = (out / "summary.html").read_text(encoding="utf-8")
    assert '"first"' in html and '"second"' in html and '"day1/second.mrc"' in html


# --------------------------------------------------------------------------- 4. demo --overwrite


def test_demo_refuses_a_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(out), "--method", "classical", "--shape", "16,64,64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sxtdask: error: ") and err.count("\n") == 1
    assert "--overwrite" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # nothing built beside it


def test_demo_refuses_to_replace_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ".", "--overwrite", "--method", "classical"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_demo_into_an_empty_folder_then_overwrite_replaces_it_whole(tmp_path, client, capsys):
    out = tmp_path / "demo"
    out.mkdir()  # an existing empty folder is fine without --overwrite
    argv = ["demo", "--out", str(out), "--method", "classical", "--shape", "16,64,64",
            "--scheduler", client.scheduler.address, "-q"]
    assert main(argv) == 0
    (out / "mine.txt").write_text("old")
    assert main(argv) == 2 and (out / "mine.txt").exists()
    assert main([*argv, "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["demo.png", "isg.csv", "phantom.gt.zarr", "phantom.mrc", "phantom.zarr",
                     "run.json"]  # the old folder is gone whole, mine.txt with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no build folder left
    report = json.loads((out / "run.json").read_text())
    assert report["input"] == str((out / "phantom.zarr").absolute())
    capsys.readouterr()


# --------------------------------------------------------------------------- 5. the demo figure


def _ball(shape, centre, r):
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def _known_case():
    """Truth: granules 1 (found), 2 (missed), 3 (split in three); prediction adds a false one."""
    shape = (12, 40, 60)
    truth = np.zeros(shape, np.uint16)
    pred = np.zeros(shape, np.uint32)
    truth[_ball(shape, (6, 10, 10), 4)] = 1
    truth[_ball(shape, (6, 10, 30), 4)] = 2
    truth[_ball(shape, (6, 30, 30), 5)] = 3
    pred[_ball(shape, (6, 10, 10), 4)] = 7  # matched, with another ID
    ball, x = _ball(shape, (6, 30, 30), 5), np.arange(60)
    pred[ball & (x < 29)] = 8  # granule 3 in three pieces, each entirely inside it, none IoU > 0.5
    pred[ball & (x >= 29) & (x < 32)] = 9
    pred[ball & (x >= 32)] = 10
    pred[_ball(shape, (6, 30, 50), 3)] = 4  # nothing true there
    return truth, pred


def test_instance_outcomes_find_the_matched_missed_false_and_split_granules():
    truth, pred = _known_case()
    table = block_contingency(pred, truth)
    o = instance_outcomes(table)
    assert (o.matched_gt.tolist(), o.matched_pred.tolist()) == ([1], [7])
    assert o.missed.tolist() == [2]
    assert o.false.tolist() == [4]
    assert (o.split_gt.tolist(), o.split_pred.tolist()) == ([3], [8, 9, 10])
    m = match_contingency(table)  # the classes part the matcher's own counts
    assert (m.tp, m.fn, m.fp) == (o.matched_gt.size, o.missed.size + o.split_gt.size,
                                  o.false.size + o.split_pred.size)
    masks = o.masks(truth[6], pred[6])
    assert np.array_equal(masks["missed"], truth[6] == 2)
    assert np.array_equal(masks["split"], np.isin(pred[6], [8, 9, 10]))
    assert np.array_equal(masks["false"], pred[6] == 4)
    assert np.array_equal(masks["matched"], pred[6] == 7)


def test_a_granule_found_whole_with_an_extra_piece_is_matched_not_split():
    truth, pred = _known_case()
    pred[(pred == 7) & (np.arange(60) > 12)] = 5  # a small piece of granule 1 gets its own ID
    o = instance_outcomes(block_contingency(pred, truth))
    assert o.matched_gt.tolist() == [1] and 5 in o.false.tolist() and 1 not in o.split_gt.tolist()


def test_demo_figure_has_the_error_panel_and_a_scale_bar(tmp_path):
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from sxtdask._demo import make_figure, save_figure

    truth, pred = _known_case()
    image = np.random.default_rng(0).normal(size=truth.shape[1:]).astype(np.float32)
    o = instance_outcomes(block_contingency(pred, truth))
    masks = o.masks(truth[6], pred[6])
    fig = make_figure(image, isg=pred[6], errors=masks, error_counts={"matched": 1, "missed": 1},
                      pixel_nm=30.0)
    assert len(fig.axes) == 4
    bars = [a for a in fig.axes[0].artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1 and bars[0].txt_label.get_text() == "200 nm"  # 60 px × 30 nm = 1.8 µm
    legend = [t.get_text() for t in fig.axes[3].get_legend().get_texts()]
    assert [t.split(" ")[0] for t in legend] == ["matched", "missed", "false", "split"]
    assert legend[0].endswith(": 1")
    assert len(make_figure(image, isg=pred[6]).axes) == 3  # without the truth: as before
    png = save_figure(image, tmp_path / "demo.png", isg=pred[6], errors=masks, pixel_nm=30.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]
