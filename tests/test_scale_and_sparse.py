"""Physical scale (voxel sizes given, read or assumed) and sparse truth scored with an ignore label.

The real sample (tests/data/real_sxt/sample_12.rec) carries no voxel size, and its annotation
(sample_12.labels) is sparse: 0 void, 1 cell, 2 = not annotated (the AmiraMesh ``Materials`` say
``void``, ``cell``, ``ignore``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sxtdask.errors import ConfigError, InputError
from sxtdask.io import open_image, open_volume, write_image, write_labels
from sxtdask.metrics import evaluate_labels, evaluate_stores

DATA = Path(__file__).resolve().parent / "data" / "real_sxt"
SAMPLE, SPARSE = DATA / "sample_12.rec", DATA / "sample_12.labels"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def sxtdask(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sxtdask.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=300)


def write_amira_labels(path: Path, data: np.ndarray, materials: str, bbox: str | None = None) -> Path:
    nz, ny, nx = data.shape
    header = (f"# AmiraMesh BINARY-LITTLE-ENDIAN 2.1\ndefine Lattice {nx} {ny} {nz}\nParameters {{\n"
              f"    Materials {{\n{materials}\n    }}\n"
              f"BoundingBox {bbox or f'0 {nx - 1} 0 {ny - 1} 0 {nz - 1}'},\nCoordType \"uniform\"\n}}\n"
              "Lattice { byte Labels } @1\n# Data section follows\n@1\n")
    path.write_bytes(header.encode() + data.astype(np.uint8).tobytes() + b"\n")
    return path


# --------------------------------------------------------------------------- physical scale


def test_files_without_a_voxel_size_are_marked_assumed_with_one_warning(tmp_path, caplog):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((6, 8, 8), np.float32))
    with caplog.at_level(logging.WARNING, logger="sxtdask"):
        vol = open_volume(tmp_path / "a.npy")
        real = open_volume(SAMPLE)
    assert not caplog.records  # opening says nothing yet: a conversion may still fail
    assert vol.voxel_size_assumed and real.voxel_size_assumed
    with caplog.at_level(logging.WARNING, logger="sxtdask"):
        img = open_image(write_image(vol, tmp_path / "a.zarr"))
        open_image(write_image(real, tmp_path / "r.zarr"))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("assuming 1 nm" in w and "--voxel-size" in w for w in warned)
    assert ".npy files carry none" in warned[0] and "BoundingBox is the index range" in warned[1]
    assert img.voxel_size_assumed and img.voxel_size_nm == (1.0, 1.0, 1.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sxtdask"):  # a given size: no warning, not assumed
        given = open_volume(tmp_path / "a.npy", voxel_size_nm=(40, 30, 30))
    assert not caplog.records and not given.voxel_size_assumed
    img = open_image(write_image(given, tmp_path / "b.zarr"))
    assert (img.voxel_size_nm, img.voxel_size_assumed) == ((40.0, 30.0, 30.0), False)
    arr = open_image(write_image(np.zeros((4, 4, 4), np.float32), tmp_path / "c.zarr",
                                 voxel_size_nm=(25, 25, 25)))
    assert not arr.voxel_size_assumed


@pytest.mark.parametrize(("bbox", "units", "expected"), [
    ("0 70 0 100 0 150", "", (50.0, 20.0, 10.0)),                 # nanometres (spacing >= 1)
    ("0 0.07 0 0.1 0 0.15", "", (50.0, 20.0, 10.0)),              # micrometres (spacing < 1)
    ("0 0.07 0 0.1 0 0.15", 'Units { Coordinates "µm" }', (50.0, 20.0, 10.0)),
    ("0 70 0 100 0 150", 'Units { Coordinates "nm" }', (50.0, 20.0, 10.0)),
    ("0 700 0 1000 0 1500", 'Units { Coordinates "Å" }', (50.0, 20.0, 10.0)),
])
def test_amira_bounding_box_gives_the_voxel_size(tmp_path, bbox, units, expected):
    data = np.zeros((4, 6, 8), np.uint8)  # (z, y, x): spacings x 70/7, y 100/5, z 150/3
    path = write_amira_labels(tmp_path / "a.am", data, "void { }", bbox=bbox)
    if units:
        text = path.read_bytes().replace(b"CoordType", units.encode() + b"\nCoordType")
        path.write_bytes(text)
    vol = open_volume(path)
    assert vol.voxel_size_nm == pytest.approx(expected) and not vol.voxel_size_assumed


def test_convert_voxel_size_option_and_the_assumed_note(tmp_path):
    plain = sxtdask("convert", SAMPLE, "a.zarr", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "1×1×1 nm (assumed" in plain.stdout
    assert plain.stderr.count("assuming 1 nm") == 1 and len(plain.stderr.strip().splitlines()) == 1
    assert open_image(tmp_path / "a.zarr").voxel_size_assumed
    given = sxtdask("convert", SAMPLE, "b.zarr", "--voxel-size", "40,30,30", cwd=tmp_path)
    assert given.returncode == 0 and given.stderr == "" and "assumed" not in given.stdout
    img = open_image(tmp_path / "b.zarr")
    assert (img.voxel_size_nm, img.voxel_size_assumed) == ((40.0, 30.0, 30.0), False)
    iso = sxtdask("convert", SAMPLE, "c.zarr", "--voxel-size", "30", cwd=tmp_path)
    assert iso.returncode == 0 and open_image(tmp_path / "c.zarr").voxel_size_nm == (30.0, 30.0, 30.0)
    bad = sxtdask("convert", SAMPLE, "d.zarr", "--voxel-size", "30,-1,2", cwd=tmp_path)
    assert bad.returncode == 2 and "--voxel-size" in bad.stderr.splitlines()[-1]
    assert not (tmp_path / "d.zarr").exists()


def test_stats_says_when_its_physical_units_rest_on_an_assumed_scale(tmp_path):
    vol = np.zeros((8, 16, 16), np.float32)
    vol[2:5, 4:9, 4:9] = 1.0
    for name, size in (("assumed.zarr", None), ("known.zarr", (30.0, 30.0, 30.0))):
        write_image(vol, tmp_path / name, voxel_size_nm=size)
        write_labels(tmp_path / name, "isg", (vol > 0).astype(np.uint32))
    runs = {name: sxtdask("stats", name, "--labels", "isg", "--out", f"{name}.csv", "--workers", "1",
                          "--dashboard-address", "127.0.0.1:0", cwd=tmp_path)
            for name in ("assumed.zarr", "known.zarr")}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    assert "voxel size" in runs["assumed.zarr"].stderr and "not physical" in runs["assumed.zarr"].stderr
    assert "not physical" not in runs["known.zarr"].stderr


# --------------------------------------------------------------------------- sparse truth


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """sample_12 converted (30 nm), with a predicted cell image: the truth's cell with a fifth of
    its voxels missed and some void called cell, and nucleus (2) everywhere the truth is
    unannotated — which only an ignore label forgives.
    """
    root = tmp_path_factory.mktemp("sample")
    store = write_image(open_volume(SAMPLE, voxel_size_nm=(30, 30, 30)), root / "s.zarr")
    truth = np.asarray(open_volume(SPARSE, voxel_size_nm=(30, 30, 30))[:])
    noise = np.random.default_rng(12).random(truth.shape)
    cell = ((truth == 1) & (noise > 0.2)) | ((truth == 0) & (noise < 0.02))
    pred = np.where(truth == 2, 2, cell.astype(np.uint8)).astype(np.uint8)
    write_labels(store, "cell", pred)
    known = truth != 2
    t, p = truth[known] == 1, pred[known] > 0
    return store, truth, pred, 2 * np.sum(t & p) / (t.sum() + p.sum())


def test_sparse_annotation_is_scored_on_its_annotated_voxels_only(sample):
    store, truth, pred, expected = sample
    assert 0.5 < expected < 0.99  # the erosion costs something; 1.0 would test nothing
    res = evaluate_stores(store, SPARSE, coco=False)["labels"]
    (name, cell), = res.items()
    assert cell["ignored_label"] == 2  # from the file's Materials ("ignore")
    assert cell["classes"]["cell"]["dice"] == pytest.approx(expected, abs=1e-12)
    assert cell["classes"]["cell"]["true_voxels"] == int((truth == 1).sum())
    assert set(cell["classes"]) == {"cell"}  # the truth names no nucleus or cytoplasm
    assert cell["morphometrics"] == {}  # a sparse truth has no volume


def test_without_materials_the_ignore_label_must_be_given(sample, tmp_path):
    store, truth, _, expected = sample
    np.save(tmp_path / "truth.npy", truth)
    plain = evaluate_stores(store, tmp_path / "truth.npy", ["cell"], coco=False)["labels"]
    ignored = evaluate_stores(store, tmp_path / "truth.npy", ["cell"], coco=False,
                              ignore_label=2)["labels"]
    naive = next(iter(plain.values()))["classes"]["cell"]["dice"]
    assert naive != pytest.approx(expected, abs=0.05)  # 2 = unannotated scored as nucleus: wrong
    assert next(iter(ignored.values()))["classes"]["cell"]["dice"] == pytest.approx(expected, abs=1e-12)


def test_cli_scores_the_real_sparse_annotation(sample, tmp_path):
    store, _, _, expected = sample
    proc = sxtdask("evaluate", store, SPARSE, "--out", "m.json", "--no-coco", "--workers", "1",
                   "--dashboard-address", "127.0.0.1:0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    cell = result["labels"]["cell=sample_12.labels"]
    assert cell["classes"]["cell"]["dice"] == pytest.approx(expected, abs=1e-12)
    assert result["voxel_size_nm"] == [30.0, 30.0, 30.0] and result["voxel_size_assumed"] is False
    assert "unannotated truth value" in proc.stdout


def test_label_file_materials_that_do_not_fit_are_refused(sample, tmp_path):
    store, truth, _, _ = sample
    wrong = write_amira_labels(tmp_path / "w.labels", np.minimum(truth, 1),
                               "void { }\nnucleus { }")  # nucleus at 1: not a cell image's 2
    with pytest.raises(InputError, match="material 'nucleus' has the value 1"):
        evaluate_stores(store, wrong, coco=False)


def test_ignore_label_for_semantic_and_instances():
    truth = np.zeros((4, 8, 8), np.uint32)
    truth[:, :2] = 9  # unannotated rows
    truth[1:3, 3:5, 3:5] = 1
    pred = np.zeros_like(truth)
    pred[1:3, 3:5, 3:5] = 5   # matches the true instance
    pred[1:3, 0:2, 5:7] = 6   # lies only where nothing is annotated: no false positive
    res = evaluate_labels(pred, truth, "instances", coco=False, ignore_label=9).compute()
    assert (res["match_50"]["tp"], res["match_50"]["fp"], res["match_50"]["fn"]) == (1, 0, 0)
    plain = evaluate_labels(pred, truth, "instances", coco=False).compute()
    assert plain["match_50"]["f1"] < 1.0
    sem = evaluate_labels((pred > 0).astype(np.uint8), np.where(truth == 9, 9, truth > 0).astype(np.uint8),
                          "semantic", ignore_label=9).compute()
    assert sem["classes"]["1"]["dice"] == 1.0 and "9" not in sem["classes"]
    with pytest.raises(ConfigError, match="cell_parts"):
        evaluate_labels(pred, truth, "cell", cell_parts=("organelle",))


# --------------------------------------------------------------------------- errors in the caller's words


def test_errors_speak_python_to_python_and_flags_to_the_command_line(tmp_path):
    from sxtdask.errors import OutputError

    write_image(np.zeros((4, 8, 8), np.float32), tmp_path / "a.zarr", voxel_size_nm=(30, 30, 30))
    with pytest.raises(OutputError) as err:
        write_image(np.zeros((4, 8, 8), np.float32), tmp_path / "a.zarr", voxel_size_nm=(30, 30, 30))
    assert str(err.value).endswith("pass overwrite=True to replace it") and "--" not in str(err.value)
    assert err.value.for_cli().endswith("pass --overwrite to replace it")
    np.save(tmp_path / "v.npy", np.zeros((4, 8, 8), np.float32))
    proc = sxtdask("convert", "v.npy", "a.zarr", "--voxel-size", "30", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("exists; pass --overwrite to replace it")
    assert "overwrite=True" not in proc.stderr


def test_archive_records_and_says_an_assumed_voxel_size(tmp_path):
    import pandas as pd

    from sxtdask.phantoms import make_phantom

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = make_phantom((24, 48, 48), seed=1).image
    np.save(inputs / "raw.npy", image)  # carries no voxel size
    write_image(image, inputs / "known.ome.zarr", voxel_size_nm=(30, 30, 30))
    write_image(open_volume(inputs / "raw.npy"), inputs / "copied.ome.zarr")  # assumed, copied
    proc = sxtdask("archive", inputs, "--out", tmp_path / "out", "--tasks", "isg-instances",
                   "--method", "classical", "--workers", "1", "--dashboard-address", "127.0.0.1:0",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("input")
    assumed = manifest["voxel_size_assumed"].to_dict()
    assert assumed == {"raw.npy": True, "known.ome.zarr": False, "copied.ome.zarr": True}, assumed
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("input")
    assert summary["voxel_size_assumed"].to_dict() == assumed
    said = {line.split(":")[0]: line for line in proc.stdout.splitlines() if "→" in line}
    assert "voxel size assumed" in said["raw.npy"] and "voxel size assumed" not in said["known.ome.zarr"]


def test_segment_says_when_its_volumes_rest_on_an_assumed_scale(tmp_path):
    image = np.zeros((8, 32, 32), np.float32)
    image[2:6, 8:20, 8:20] = 1.0
    image += np.random.default_rng(1).normal(0, 0.02, image.shape).astype(np.float32)
    np.save(tmp_path / "v.npy", image)
    assert sxtdask("convert", "v.npy", "v.zarr", cwd=tmp_path).returncode == 0
    proc = sxtdask("segment", "v.zarr", "--task", "cell", "--device", "cpu", "--workers", "1",
                   "--dashboard-address", "127.0.0.1:0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "voxels (" in proc.stdout and "assumed 1 nm voxel" in proc.stdout
