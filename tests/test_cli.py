"""End-to-end tests of the ``sxtdask`` command, each command run in a subprocess.

Error cases check the CLI contract for bad input: exit status 2, exactly one non-empty line on
stderr that names the file and the problem, no traceback, and nothing left behind that looks like a
complete output. Happy paths run synth → convert → segment → stats (and demo) on small phantoms and
check the report, the OME-Zarr label image, the tables and the agreement with the ground truth.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "data" / "real_sxt"  # see tests/data/README.md

# A small local cluster; port 0 so parallel runs never fight over the dashboard port.
CLUSTER = ("--workers", "1", "--dashboard-address", "127.0.0.1:0")
TABLE_COLUMNS = [
    "label", "volume_voxels", "volume_um3",
    "centroid_z_nm", "centroid_y_nm", "centroid_x_nm",
    "bbox_min_z_nm", "bbox_min_y_nm", "bbox_min_x_nm",
    "bbox_max_z_nm", "bbox_max_y_nm", "bbox_max_x_nm",
    "equivalent_diameter_nm", "mean_absorption",
]
SHAPE = (64, 64, 64)  # two pyramid levels (the smallest axis halves to 32), eight 8-slice chunks
SEED = 1  # checked: the classical ISG segmenter reaches F1 ≈ 0.96 on this phantom
VOXEL_NM = 30.0  # `synth`'s default voxel size

ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
# distributed's sampling profiler sometimes prints a tornado traceback from a worker
# ("'function' object has no attribute 'f_back'", an upstream race, cf. dask/distributed#8163); it is
# not sxtdask's output, so keep it out of the stderr these tests inspect.
ENV["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
ENV["COLUMNS"] = "200"
ENV.pop("PYTHONWARNINGS", None)
# Independent CLI runs go in parallel where a test has many (each one pays ~1.5 s of imports).
PARALLEL = min(4, max(2, os.cpu_count() or 2))


# --------------------------------------------------------------------------- helpers


def sxtdask(*args: object, cwd: Path | None = None, as_nobody: bool = False,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sxtdask.cli ARGS`` and capture its output (optionally as user ``nobody``)."""
    cmd = [sys.executable, "-m", "sxtdask.cli", *(str(a) for a in args)]
    if as_nobody:
        cmd = [_setpriv(), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout,
                          check=False)


def _setpriv() -> str:
    exe = shutil.which("setpriv")
    if exe is None:
        pytest.skip("running as root and `setpriv` is missing: cannot drop privileges to test permissions")
    return exe


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)


def assert_user_error(proc: subprocess.CompletedProcess[str], name: str, words: tuple[str, ...]) -> str:
    """Exit 2, one stderr line naming ``name`` and one of ``words``, no traceback; returns the line."""
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, describe(proc)
    line = lines[0].lower()
    assert name.lower() in line, f"the error does not name {name!r}\n{describe(proc)}"
    assert any(w.lower() in line for w in words), f"the error names none of {words}\n{describe(proc)}"
    return lines[0]


def assert_argparse_error(proc: subprocess.CompletedProcess[str], option: str) -> None:
    """argparse's own error: exit 2, usage plus one ``error:`` line naming the option, no traceback."""
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    errors = [line for line in stderr_lines(proc) if "error:" in line]
    assert len(errors) == 1 and option in errors[0], describe(proc)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> dict[str, str | None]:
    """Relative path → content hash (None for folders) of everything under ``path``."""
    if path.is_file():
        return {".": _sha(path)}
    return {str(p.relative_to(path)): (_sha(p) if p.is_file() else None) for p in sorted(path.rglob("*"))}


def leftovers(out: Path) -> list[str]:
    """Temporary siblings of ``out`` (``.NAME.partial-*``, ``.NAME.old-*``, ``.NAME.*.tmp``)."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def assert_no_output(out: Path) -> None:
    assert not out.exists(), f"{out} exists after a failed run"
    assert leftovers(out) == [], f"temporary siblings of {out} remain: {leftovers(out)}"


def read_labels(data: Path, name: str = "isg", level: int = 0) -> np.ndarray:
    return zarr.open_array(data / "labels" / name / str(level), mode="r")[...]


def listed_labels(data: Path) -> list[str]:
    """Names listed in ``labels/`` (the mark of a complete label image)."""
    if not (data / "labels" / "zarr.json").is_file():
        return []
    attrs = zarr.open_group(data / "labels", mode="r").attrs.asdict()
    return list(attrs.get("ome", {}).get("labels", []))


def match_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    from sxtdask.measure import match_instances

    return match_instances(truth, pred).f1


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.3, 0.05, shape).astype(np.float32)


def write_mrc(path: Path, data: np.ndarray) -> Path:
    import mrcfile

    with mrcfile.new(path, overwrite=True) as mrc, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about NaN data on purpose
        mrc.set_data(data)
        mrc.voxel_size = 300.0  # Å
    return path


def write_tiff(path: Path, data: np.ndarray, **kwargs: object) -> Path:
    import tifffile

    tifffile.imwrite(path, data, **kwargs)
    return path


def amira_bytes(data: np.ndarray) -> bytes:
    """A minimal AmiraMesh binary lattice (x fastest), as Amira writes it."""
    nz, ny, nx = data.shape
    header = (
        f"# AmiraMesh BINARY-LITTLE-ENDIAN 2.1\n\n\ndefine Lattice {nx} {ny} {nz}\n\n"
        f"Parameters {{\n    BoundingBox 0 {nx - 1} 0 {ny - 1} 0 {nz - 1},\n"
        f"    CoordType \"uniform\"\n}}\n\nLattice {{ float Data }} @1\n\n# Data section follows\n@1\n"
    )
    return header.encode() + data.astype("<f4").tobytes() + b"\n"


def truncate(path: Path, keep: float = 0.5) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


# --------------------------------------------------------------------------- bad input files
# Each maker writes a bad file into a folder and returns its path; the words name the problem.

GOOD = (16, 32, 32)


def _missing(d: Path) -> Path:
    return d / "nothing-here.mrc"


def _directory(d: Path) -> Path:
    (d / "stack.npy").mkdir()
    return d / "stack.npy"


def _empty(suffix: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / f"empty{suffix}").write_bytes(b"")
        return d / f"empty{suffix}"
    return make


def _truncated_npy(d: Path) -> Path:
    np.save(d / "cut.npy", rand(GOOD))
    return truncate(d / "cut.npy")


def _truncated_mrc(d: Path) -> Path:
    return truncate(write_mrc(d / "cut.mrc", rand(GOOD)))


def _truncated_amira(d: Path) -> Path:
    (d / "cut.rec").write_bytes(amira_bytes(rand(GOOD)))
    return truncate(d / "cut.rec")


def _truncated_tiff(d: Path) -> Path:
    return truncate(write_tiff(d / "cut.tif", rand(GOOD), imagej=True))


def _text_as(suffix: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / f"notes{suffix}").write_text("this is a lab notebook, not a tomogram\n" * 40)
        return d / f"notes{suffix}"
    return make


def _nan_amira(d: Path) -> Path:
    (d / "nan.rec").write_bytes(amira_bytes(_with(np.nan)))
    return d / "nan.rec"


def _npy(name: str, array: Callable[[], np.ndarray]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        np.save(d / name, array())
        return d / name
    return make


def _with(value: float, at: tuple[int, int, int] = (5, 3, 7)) -> np.ndarray:
    a = rand(GOOD)
    a[at] = value
    return a


def _mrc(name: str, array: Callable[[], np.ndarray]) -> Callable[[Path], Path]:
    return lambda d: write_mrc(d / name, array())


def _tif(name: str, array: Callable[[], np.ndarray], **kwargs: object) -> Callable[[Path], Path]:
    return lambda d: write_tiff(d / name, array(), **kwargs)


NOT_FORMAT = ("not a", "not an", "unknown", "unrecognised", "unsupported")
BAD_INPUTS: list[object] = [
    pytest.param(_missing, ("no such", "not found", "does not exist", "missing"), id="missing"),
    pytest.param(_directory, ("directory",), id="directory"),
    pytest.param(_empty(".npy"), ("empty",), id="empty-npy"),
    pytest.param(_empty(".mrc"), ("empty",), id="empty-mrc"),
    pytest.param(_truncated_npy, ("truncated",), id="truncated-npy"),
    pytest.param(_truncated_mrc, ("truncated",), id="truncated-mrc"),
    pytest.param(_truncated_amira, ("truncated",), id="truncated-amira-rec"),
    pytest.param(_truncated_tiff, ("truncated",), id="truncated-tif"),
    pytest.param(_text_as(".mrc"), NOT_FORMAT, id="text-as-mrc"),
    pytest.param(_text_as(".rec"), NOT_FORMAT, id="text-as-rec"),
    pytest.param(_text_as(".tif"), NOT_FORMAT, id="text-as-tif"),
    pytest.param(_text_as(".npy"), NOT_FORMAT, id="text-as-npy"),
    pytest.param(_text_as(".xyz"), NOT_FORMAT, id="unknown-extension"),
    pytest.param(_npy("flat.npy", lambda: rand((32, 32))), ("2-d",), id="2d-npy"),
    pytest.param(_mrc("flat.mrc", lambda: rand((32, 32))), ("2-d",), id="2d-mrc"),
    pytest.param(_npy("hyper.npy", lambda: rand((2, 4, 16, 32))), ("4-d",), id="4d-npy"),
    pytest.param(_tif("hyper.tif", lambda: rand((2, 5, 16, 32)), imagej=True, metadata={"axes": "TZYX"}),
                 ("4-d",), id="4d-tif"),
    pytest.param(_npy("void.npy", lambda: np.zeros((0, 32, 32), np.float32)), ("zero",),
                 id="zero-sized-axis"),
    pytest.param(_npy("phase.npy", lambda: rand(GOOD).astype(np.complex64)), ("complex",), id="complex-npy"),
    pytest.param(_npy("nan.npy", lambda: _with(np.nan)), ("nan",), id="nan-npy"),
    pytest.param(_npy("inf.npy", lambda: _with(-np.inf, (15, 31, 31))), ("inf",), id="inf-last-voxel-npy"),
    pytest.param(_mrc("nan.mrc", lambda: _with(np.nan)), ("nan",), id="nan-mrc"),
    pytest.param(_nan_amira, ("nan",), id="nan-amira-rec"),
]


# --------------------------------------------------------------------------- convert: bad input


Run = tuple[Path, Path, "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def bad_convert_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """``convert BAD out.zarr`` for every bad input, run in parallel: case id → (input, output, process)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    jobs: dict[str, tuple[Path, Path]] = {}
    for param in BAD_INPUTS:
        case = root / str(param.id)  # type: ignore[attr-defined]
        case.mkdir()
        jobs[str(param.id)] = (param.values[0](case), case / "out.zarr")  # type: ignore[attr-defined]
    with ThreadPoolExecutor(PARALLEL) as pool:
        procs = {k: pool.submit(sxtdask, "convert", src, out, "--chunks", "8,32,32", cwd=out.parent)
                 for k, (src, out) in jobs.items()}
        return {k: (*jobs[k], f.result()) for k, f in procs.items()}


@pytest.mark.parametrize(("make", "words"), BAD_INPUTS)
def test_convert_bad_input(request: pytest.FixtureRequest, bad_convert_runs: dict[str, Run],
                           make: Callable[[Path], Path], words: tuple[str, ...]) -> None:
    src, out, proc = bad_convert_runs[request.node.callspec.id]
    assert_user_error(proc, src.name, words)
    assert_no_output(out)


@pytest.fixture(scope="module")
def good_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image converted by the CLI (tests copy it before changing anything)."""
    d = tmp_path_factory.mktemp("good")
    np.save(d / "good.npy", rand(GOOD))
    assert_ok(sxtdask("convert", d / "good.npy", d / "good.zarr", "--chunks", "8,32,32", cwd=d))
    return d / "good.zarr"


def test_convert_bad_input_over_existing_output_keeps_it(good_zarr: Path, tmp_path: Path) -> None:
    """With --overwrite, a failed conversion must leave the old output as it was."""
    np.save(tmp_path / "nan.npy", _with(np.nan))
    out = tmp_path / "out.zarr"
    shutil.copytree(good_zarr, out)
    before = tree(out)
    proc = sxtdask("convert", tmp_path / "nan.npy", out, "--overwrite", cwd=tmp_path)
    assert_user_error(proc, "nan.npy", ("nan",))
    assert tree(out) == before
    assert leftovers(out) == []


@pytest.mark.parametrize("existing", ["zarr", "file"])
def test_convert_existing_output_without_overwrite_is_unchanged(good_zarr: Path, tmp_path: Path,
                                                                existing: str) -> None:
    np.save(tmp_path / "good.npy", rand(GOOD))
    out = tmp_path / "out.zarr"
    if existing == "zarr":
        shutil.copytree(good_zarr, out)
    else:
        out.write_text("someone else's file\n")
    before = tree(out)
    proc = sxtdask("convert", tmp_path / "good.npy", out, cwd=tmp_path)
    assert_user_error(proc, "out.zarr", ("exists",))
    assert "--overwrite" in proc.stderr
    assert tree(out) == before
    assert leftovers(out) == []


@pytest.mark.parametrize("where", ["missing-folder", "parent-is-a-file"])
def test_convert_output_location_cannot_be_written(tmp_path: Path, where: str) -> None:
    np.save(tmp_path / "good.npy", rand(GOOD))
    parent = tmp_path / "no" / "such" if where == "missing-folder" else tmp_path / "good.npy"
    out = parent / "out.zarr"
    proc = sxtdask("convert", tmp_path / "good.npy", out, cwd=tmp_path)
    assert_user_error(proc, "out.zarr", ("does not exist", "not a directory", "cannot write"))
    assert not out.exists()
    assert not (tmp_path / "no").exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can enter (for tests that run the CLI as ``nobody`` when we are root)."""
    d = Path(tempfile.mkdtemp(prefix="sxtdask-cli-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        for p in [d, *d.rglob("*")]:
            if p.is_dir():
                p.chmod(0o777)
        shutil.rmtree(d, ignore_errors=True)


def test_convert_unreadable_input(shared_dir: Path) -> None:
    src = shared_dir / "locked.npy"
    np.save(src, rand(GOOD))
    src.chmod(0)
    out = shared_dir / "out.zarr"
    proc = sxtdask("convert", src.name, out.name, cwd=shared_dir, as_nobody=os.geteuid() == 0)
    assert_user_error(proc, "locked.npy", ("permission", "not readable", "unreadable"))
    assert_no_output(out)


def test_convert_output_folder_not_writable(shared_dir: Path) -> None:
    src = shared_dir / "good.npy"
    np.save(src, rand(GOOD))
    src.chmod(0o644)
    ro = shared_dir / "readonly"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    out = ro / "out.zarr"
    proc = sxtdask("convert", src, out, cwd=shared_dir, as_nobody=os.geteuid() == 0)
    assert_user_error(proc, "out.zarr", ("not writable", "permission", "cannot write"))
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize(("chunks", "why"), [("0,1,1", "positive"), ("a,b", "integers")])
def test_convert_bad_chunks_is_an_argparse_error(tmp_path: Path, chunks: str, why: str) -> None:
    np.save(tmp_path / "good.npy", rand(GOOD))
    out = tmp_path / "out.zarr"
    proc = sxtdask("convert", tmp_path / "good.npy", out, "--chunks", chunks, cwd=tmp_path)
    assert_argparse_error(proc, "--chunks")
    assert why in proc.stderr
    assert_no_output(out)


# --------------------------------------------------------------------------- convert: known TIFF bugs


def _multipage_tiff(path: Path) -> tuple[Path, np.ndarray]:
    """16 pages written as separate TIFF pages (no shaped/ImageJ metadata); IFDs follow the data."""
    data = np.arange(16 * 32 * 32, dtype=np.float32).reshape(16, 32, 32)
    return write_tiff(path, data, metadata=None), data


def test_convert_tiff_truncated_inside_last_ifd(tmp_path: Path) -> None:
    src, _ = _multipage_tiff(tmp_path / "cut.tif")
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) - 29])
    out = tmp_path / "out.zarr"
    proc = sxtdask("convert", src, out, cwd=tmp_path)
    assert_user_error(proc, "cut.tif", ("truncated", "corrupt"))
    assert_no_output(out)


def test_convert_tiff_missing_last_page_is_refused(tmp_path: Path) -> None:
    src, data = _multipage_tiff(tmp_path / "cut.tif")
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) - 190])
    out = tmp_path / "out.zarr"
    proc = sxtdask("convert", src, out, cwd=tmp_path)
    if proc.returncode == 0:  # if it is accepted, it must at least hold every slice
        assert zarr.open_array(out / "0", mode="r").shape == data.shape, "slices were silently dropped"
    assert_user_error(proc, "cut.tif", ("truncated", "corrupt"))
    assert_no_output(out)


# --------------------------------------------------------------------------- synth


def test_synth_refuses_non_mrc_output(tmp_path: Path) -> None:
    proc = sxtdask("synth", tmp_path / "cell.tif", "--shape", "32,64,64", cwd=tmp_path)
    assert_user_error(proc, "cell.tif", (".mrc",))
    assert list(tmp_path.iterdir()) == []


def test_synth_bad_shape_is_an_argparse_error(tmp_path: Path) -> None:
    proc = sxtdask("synth", tmp_path / "cell.mrc", "--shape", "32,0,64", cwd=tmp_path)
    assert_argparse_error(proc, "--shape")
    assert list(tmp_path.iterdir()) == []


def test_synth_capillary_tilt_series_records_how_it_was_made(tmp_path: Path) -> None:
    """--mount/--tilt/--dose/--recon reach the phantom and are recorded in both outputs."""
    import mrcfile

    proc = sxtdask("-q", "synth", tmp_path / "cap.mrc", "--shape", "32,48,48", "--mount",
                   "capillary", "--tilt", "60", "--dose", "4000", "--seed", "2", cwd=tmp_path)
    assert_ok(proc)
    acq = zarr.open_group(tmp_path / "cap.gt.zarr", mode="r").attrs["sxtdask"]["acquisition"]
    assert acq["mount"] == "capillary" and acq["variation"] == "wide"
    assert acq["imaging"]["model"] == "tilt-series" and acq["imaging"]["recon"] == "fbp"
    assert acq["imaging"]["tilt_deg"] == 60 and acq["imaging"]["dose"] == 4000
    assert acq["imaging"]["n_projections"] == 121
    with mrcfile.open(tmp_path / "cap.mrc") as mrc:
        labels = [bytes(mrc.header.label[i]).decode().strip() for i in range(mrc.header.nlabl)]
    assert "sxtdask mount=capillary variation=wide" in labels
    assert any("tilt_deg=60" in line and "dose=4000" in line for line in labels)


def test_synth_tilt_series_options_refuse_direct_imaging(tmp_path: Path) -> None:
    proc = sxtdask("synth", tmp_path / "cell.mrc", "--shape", "32,64,64", "--imaging", "direct",
                   "--tilt", "60", cwd=tmp_path)
    assert_user_error(proc, "--tilt", ("--imaging tomo",))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def synth_again(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``synth`` onto the outputs of an earlier ``synth``, without --overwrite."""
    d = tmp_path_factory.mktemp("synth")
    assert_ok(sxtdask("-q", "synth", d / "cell.mrc", "--shape", "32,64,64", "--seed", "0", cwd=d))
    before = tree(d)
    proc = sxtdask("synth", d / "cell.mrc", "--shape", "32,64,64", "--seed", "5", cwd=d)
    return {"dir": d, "before": before, "proc": proc}


def test_synth_existing_output_without_overwrite_is_unchanged(synth_again: dict) -> None:
    assert_user_error(synth_again["proc"], "cell.mrc", ("exists",))
    assert tree(synth_again["dir"]) == synth_again["before"]


def test_synth_existing_output_hint_names_the_cli_option(synth_again: dict) -> None:
    proc = synth_again["proc"]
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and "overwrite=True" not in proc.stderr, describe(proc)


# --------------------------------------------------------------------------- the pipeline

_CLUSTER_SCRIPT = """
import sys
from distributed import LocalCluster
cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, processes=True)
print(cluster.scheduler_address, flush=True)
sys.stdin.read()
cluster.close()
"""


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A long-lived one-worker Dask cluster for ``--scheduler ADDRESS`` runs (saves a start per run)."""
    proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        assert proc.stdout is not None
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
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """synth → convert (8-slice chunks) → segment --report, once for the module."""
    d = tmp_path_factory.mktemp("pipeline")
    mrc, data, report = d / "cell.mrc", d / "cell.zarr", d / "run.json"
    shape = ",".join(map(str, SHAPE))
    procs = {
        "synth": sxtdask("synth", mrc, "--shape", shape, "--seed", SEED, cwd=d),
        "convert": sxtdask("convert", mrc, data, "--chunks", "8,64,64", cwd=d),
    }
    for proc in procs.values():
        assert_ok(proc)
    shutil.copytree(data, d / "unsegmented.zarr")
    procs["segment"] = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical",
                               "--report", report, *CLUSTER, cwd=d)
    assert_ok(procs["segment"])
    return {"dir": d, "mrc": mrc, "gt": d / "cell.mrc.gt.zarr", "data": data, "report": report,
            "procs": procs, "unsegmented": d / "unsegmented.zarr"}


def _gt_path(mrc: Path) -> Path:
    from sxtdask.phantoms import ground_truth_path

    return ground_truth_path(mrc)


def test_synth_writes_mrc_and_ground_truth(pipeline: dict) -> None:
    gt = _gt_path(pipeline["mrc"])
    assert pipeline["mrc"].is_file() and gt.is_dir()
    assert "isg" in listed_labels(gt)
    assert read_labels(gt).shape == SHAPE


def test_convert_writes_chunked_ome_zarr(pipeline: dict) -> None:
    from sxtdask.io import open_image

    img = open_image(pipeline["data"])
    assert img.data.shape == SHAPE
    assert img.data.chunksize == (8, 64, 64)
    assert img.voxel_size_nm == pytest.approx((VOXEL_NM,) * 3)
    assert img.levels == 2


def test_segment_report(pipeline: dict) -> None:
    report = json.loads(pipeline["report"].read_text())
    for key in ("chunk_count", "stage_seconds", "instance_count", "outputs", "model_loads_per_worker"):
        assert key in report, f"report lacks {key!r}: {sorted(report)}"
    assert report["chunk_count"] == math.ceil(SHAPE[0] / 8)
    assert report["stage_seconds"] and all(
        isinstance(v, (int, float)) and v >= 0 for v in report["stage_seconds"].values())
    n = report["instance_count"]["isg"]
    assert isinstance(n, int) and n > 0
    assert any(str(o).rstrip("/").endswith("labels/isg") for o in report["outputs"])
    loads = report["model_loads_per_worker"]
    assert isinstance(loads, dict) and len(loads) == 1  # --workers 1
    for per_worker in loads.values():
        assert isinstance(per_worker, dict)
        assert all(count == 1 for count in per_worker.values()), f"a model loaded more than once: {loads}"
    assert not (pipeline["data"] / "_sxtdask_scratch").exists(), "scratch labels left behind"


def test_segment_labels_are_uint32_with_consecutive_ids(pipeline: dict) -> None:
    labels = read_labels(pipeline["data"])
    assert labels.dtype == np.uint32
    assert labels.shape == SHAPE
    ids = np.unique(labels[labels > 0])
    n = len(ids)
    assert n > 0
    assert labels.max() == n
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))
    assert json.loads(pipeline["report"].read_text())["instance_count"]["isg"] == n


def test_segment_label_pyramid_is_nearest_neighbour(pipeline: dict) -> None:
    data = pipeline["data"]
    assert listed_labels(data) == ["isg"]
    attrs = zarr.open_group(data / "labels" / "isg", mode="r").attrs.asdict()["ome"]
    assert "image-label" in attrs
    datasets = attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1"]
    level0, level1 = read_labels(data, level=0), read_labels(data, level=1)
    np.testing.assert_array_equal(level1, level0[::2, ::2, ::2])
    assert level1.dtype == np.uint32


def test_segment_output_validates_with_ome_zarr_models_and_ome_zarr(pipeline: dict) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    data = pipeline["data"]
    model = Image.from_zarr(zarr.open_group(data, mode="r"))
    assert model.labels is not None and model.labels.label_paths == ["isg"]
    label = ImageLabel.from_zarr(zarr.open_group(data / "labels" / "isg", mode="r"))
    assert label.ome_attributes.image_label.source.image == "../../"
    nodes = list(Reader(parse_url(str(data)))())
    assert nodes[0].data[0].shape == SHAPE
    label_nodes = [node for node in nodes if "image-label" in node.zarr.root_attrs]
    assert len(label_nodes) == 1
    assert label_nodes[0].data[0].shape == SHAPE


def test_segment_matches_the_ground_truth(pipeline: dict) -> None:
    truth = read_labels(_gt_path(pipeline["mrc"]))
    pred = read_labels(pipeline["data"])
    assert truth.max() > 0
    f1 = match_f1(truth, pred)
    assert f1 >= 0.7, f"F1@IoU0.5 {f1:.3f} against the phantom's ISGs"


def test_segment_overwrite_is_idempotent(pipeline: dict, scheduler: str, tmp_path: Path) -> None:
    data = tmp_path / "again.zarr"
    shutil.copytree(pipeline["data"], data)
    before = tree(data / "labels")
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical", "--overwrite",
                   "--scheduler", scheduler, cwd=tmp_path)
    assert_ok(proc)
    assert tree(data / "labels") == before, "a second run changed the labels"
    assert not (data / "_sxtdask_scratch").exists()


def test_segment_is_nearly_invariant_to_chunking(pipeline: dict, tmp_path: Path) -> None:
    """Split in-plane too (16,32,32 vs 8,64,64), on two workers: nearly the same instances."""
    data = tmp_path / "rechunked.zarr"
    shutil.copytree(pipeline["unsegmented"], data)
    report = tmp_path / "run.json"
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical",
                   "--chunks", "16,32,32", "--report", report, "--workers", "2",
                   "--dashboard-address", "127.0.0.1:0", cwd=tmp_path)
    assert_ok(proc)
    rep = json.loads(report.read_text())
    assert rep["chunk_count"] == (math.ceil(SHAPE[0] / 16) * math.ceil(SHAPE[1] / 32)
                                  * math.ceil(SHAPE[2] / 32))
    assert len(rep["model_loads_per_worker"]) == 2
    assert all(isinstance(v, dict) for v in rep["model_loads_per_worker"].values())
    other = read_labels(data)
    assert other.dtype == np.uint32 and other.max() == len(np.unique(other[other > 0]))
    f1 = match_f1(read_labels(pipeline["data"]), other)
    assert f1 >= 0.95, f"F1 between 8,64,64 and 16,32,32 chunkings is {f1:.3f}"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_stats_table(pipeline: dict, scheduler: str, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"isg{suffix}"
    proc = sxtdask("stats", pipeline["data"], "--labels", "isg", "--out", out, "--scheduler", scheduler,
                   cwd=tmp_path)
    assert_ok(proc)
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(table.columns) == TABLE_COLUMNS
    labels = read_labels(pipeline["data"])
    n = int(labels.max())
    assert len(table) == n
    assert sorted(table["label"]) == list(range(1, n + 1))
    counts = np.bincount(labels.ravel())[1:]
    np.testing.assert_array_equal(table.sort_values("label")["volume_voxels"].to_numpy(), counts)
    np.testing.assert_allclose(table["volume_um3"], table["volume_voxels"] * VOXEL_NM**3 / 1e9, rtol=1e-9)
    assert np.isfinite(table.drop(columns="label").to_numpy(dtype=float)).all()
    assert leftovers(out) == []


# --------------------------------------------------------------------------- segment: bad input


def test_segment_on_a_file_that_is_not_ome_zarr(tmp_path: Path) -> None:
    np.save(tmp_path / "volume.npy", rand(GOOD))
    before = tree(tmp_path)
    proc = sxtdask("segment", tmp_path / "volume.npy", "--task", "isg-instances", "--method", "classical",
                   *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, "volume.npy", ("not an ome-zarr",))
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["plain-folder", "missing"])
def test_segment_on_a_folder_that_is_not_ome_zarr(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "cell.zarr"
    if kind == "plain-folder":
        data.mkdir()
        (data / "readme.txt").write_text("not zarr\n")
    before = tree(tmp_path)
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical",
                   "--report", tmp_path / "r.json", *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, "cell.zarr", ("not an ome-zarr", "no such"))
    assert tree(tmp_path) == before


@pytest.fixture(scope="module")
def existing_labels_run(pipeline: dict, scheduler: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``segment`` (no --overwrite) on a copy of the segmented image."""
    d = tmp_path_factory.mktemp("existing-labels")
    data = d / "cell.zarr"
    shutil.copytree(pipeline["data"], data)
    before = tree(data)
    report = d / "run.json"
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical", "--report", report,
                   "--scheduler", scheduler, cwd=d)
    return {"data": data, "before": before, "report": report, "proc": proc}


def test_segment_existing_labels_without_overwrite(existing_labels_run: dict) -> None:
    run = existing_labels_run
    line = assert_user_error(run["proc"], "cell.zarr", ("exists",))
    assert "--overwrite" in line
    assert tree(run["data"]) == run["before"]
    assert not run["report"].exists()


def test_segment_existing_labels_refused_before_any_cluster_starts(existing_labels_run: dict) -> None:
    proc = existing_labels_run["proc"]
    assert proc.returncode == 2
    assert "dashboard" not in proc.stdout and "global statistics" not in proc.stdout, describe(proc)


def test_segment_refuses_non_finite_voxels_in_the_zarr(good_zarr: Path, scheduler: str,
                                                        tmp_path: Path) -> None:
    """convert refuses NaN, but a Zarr written by another tool may hold some."""
    data = tmp_path / "cell.zarr"
    shutil.copytree(good_zarr, data)
    zarr.open_array(data / "0", mode="r+")[9, 4, 4] = np.nan
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical",
                   "--report", tmp_path / "r.json", "--scheduler", scheduler, cwd=tmp_path)
    assert_user_error(proc, "cell.zarr", ("nan", "non-finite", "infinite"))
    assert listed_labels(data) == []
    assert not (data / "_sxtdask_scratch").exists()
    assert not (tmp_path / "r.json").exists()


def test_segment_report_in_a_missing_folder(pipeline: dict, tmp_path: Path) -> None:
    data = tmp_path / "cell.zarr"
    shutil.copytree(pipeline["unsegmented"], data)
    before = tree(data)
    report = tmp_path / "nowhere" / "run.json"
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical", "--report", report,
                   *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, "run.json", ("does not exist", "cannot write", "not writable"))
    assert tree(data) == before


def test_segment_unknown_method(pipeline: dict, tmp_path: Path) -> None:
    data = tmp_path / "cell.zarr"
    shutil.copytree(pipeline["unsegmented"], data)
    before = tree(data)
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "telepathy", *CLUSTER,
                   cwd=tmp_path)
    assert_user_error(proc, "telepathy", ("not available",))
    assert tree(data) == before


# --------------------------------------------------------------------------- stats: bad input


def test_stats_missing_label_name(pipeline: dict, tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    proc = sxtdask("stats", pipeline["data"], "--labels", "nucleus", "--out", out, *CLUSTER, cwd=tmp_path)
    line = assert_user_error(proc, "cell.zarr", ("no label image",))
    assert "nucleus" in line and "isg" in line  # names the missing one and lists what exists
    assert_no_output(out)


@pytest.mark.parametrize("name", ["t.xlsx", "t", "t.csv.gz"])
def test_stats_bad_suffix(pipeline: dict, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    proc = sxtdask("stats", pipeline["data"], "--labels", "isg", "--out", out, *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, name, (".csv or .parquet",))
    assert_no_output(out)


def test_stats_existing_output_without_overwrite(pipeline: dict, tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.write_text("label\n42\n")
    proc = sxtdask("stats", pipeline["data"], "--labels", "isg", "--out", out, *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, "t.csv", ("exists",))
    assert out.read_text() == "label\n42\n"
    assert leftovers(out) == []


def test_stats_output_folder_missing(pipeline: dict, tmp_path: Path) -> None:
    out = tmp_path / "nowhere" / "t.parquet"
    proc = sxtdask("stats", pipeline["data"], "--labels", "isg", "--out", out, *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, "t.parquet", ("does not exist", "cannot write"))
    assert not out.parent.exists()


def test_stats_on_a_path_that_is_not_ome_zarr(tmp_path: Path) -> None:
    np.save(tmp_path / "volume.npy", rand(GOOD))
    out = tmp_path / "t.csv"
    proc = sxtdask("stats", tmp_path / "volume.npy", "--labels", "isg", "--out", out, *CLUSTER, cwd=tmp_path)
    assert_user_error(proc, "volume.npy", ("not an ome-zarr",))
    assert_no_output(out)


# --------------------------------------------------------------------------- constant volume


@pytest.mark.parametrize(("value", "dtype", "where"), [
    pytest.param(0, "uint16", "local", id="zeros-uint16-workers-1"),
    pytest.param(7.5, "float32", "scheduler", id="7.5-float32-scheduler"),
])
def test_constant_volume_gives_empty_labels_and_a_warning(request: pytest.FixtureRequest, tmp_path: Path,
                                                          value: float, dtype: str, where: str) -> None:
    cluster = CLUSTER if where == "local" else ("--scheduler", request.getfixturevalue("scheduler"))
    np.save(tmp_path / "flat.npy", np.full((24, 40, 40), value, dtype=dtype))
    data = tmp_path / "flat.zarr"
    assert_ok(sxtdask("convert", tmp_path / "flat.npy", data, "--chunks", "8,40,40", cwd=tmp_path))
    report = tmp_path / "run.json"
    proc = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical", "--report", report,
                   *cluster, cwd=tmp_path)
    assert_ok(proc)
    warning = [line for line in stderr_lines(proc) if "constant" in line.lower()]
    assert len(warning) == 1, describe(proc)
    assert "flat.zarr" in warning[0]
    assert "RuntimeWarning" not in proc.stderr and "divide" not in proc.stderr, describe(proc)
    assert listed_labels(data) == ["isg"]
    labels = read_labels(data)
    assert labels.dtype == np.uint32 and labels.shape == (24, 40, 40)
    assert not labels.any()
    assert json.loads(report.read_text())["instance_count"] == {"isg": 0}
    if where != "local":
        return
    out = tmp_path / "isg.csv"
    assert_ok(sxtdask("stats", data, "--labels", "isg", "--out", out, *cluster, cwd=tmp_path))
    table = pd.read_csv(out)
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 0


# --------------------------------------------------------------------------- a long-lived scheduler


def test_segment_rerun_with_other_chunks_on_a_long_lived_scheduler(pipeline: dict, scheduler: str,
                                                                    tmp_path: Path) -> None:
    data = tmp_path / "cell.zarr"
    shutil.copytree(pipeline["unsegmented"], data)
    common = ("segment", data, "--task", "isg-instances", "--method", "classical", "--scheduler", scheduler)
    assert_ok(sxtdask(*common, "--chunks", "8,64,64", cwd=tmp_path))
    proc = sxtdask(*common, "--chunks", "16,32,32", "--overwrite", cwd=tmp_path)
    assert_ok(proc)
    labels = read_labels(data)
    assert zarr.open_array(data / "labels" / "isg" / "0", mode="r").chunks == (16, 32, 32)
    assert match_f1(read_labels(pipeline["data"]), labels) >= 0.95


# --------------------------------------------------------------------------- demo and real files


def test_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = sxtdask("demo", "--out", out, "--shape", "48,112,112", *CLUSTER, cwd=tmp_path)
    assert_ok(proc)
    for name in ("demo.png", "isg.csv", "run.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = out / "phantom.zarr"
    assert sorted(listed_labels(data)) == ["cell", "isg", "mito"]  # the bundled U-Nets' route
    labels = read_labels(data)
    assert labels.shape == (48, 112, 112) and labels.dtype == np.uint32 and labels.max() > 0
    table = pd.read_csv(out / "isg.csv")
    assert list(table.columns) == TABLE_COLUMNS and len(table) == labels.max()
    report = json.loads((out / "run.json").read_text())
    assert report["instance_count"]["isg"] == labels.max()
    assert report["methods"] == ["UNetSegmenter", "UNetSegmenter", "UNetISGInstances"]
    assert "F1@IoU0.5" in proc.stdout and "nucleus dice" in proc.stdout


def test_demo_classical_route(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = sxtdask("demo", "--out", out, "--shape", "48,96,96", "--method", "classical", *CLUSTER,
                   cwd=tmp_path)
    assert_ok(proc)
    assert listed_labels(out / "phantom.zarr") == ["isg"]
    assert json.loads((out / "run.json").read_text())["methods"] == ["ClassicalISG"]


def test_convert_real_mrc_with_damaged_header_warns(tmp_path: Path) -> None:
    src = FIXTURES / "psftomo_phantom.mrc"
    out = tmp_path / "phantom.zarr"
    proc = sxtdask("convert", src, out, cwd=tmp_path)
    assert_ok(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "psftomo_phantom.mrc" in lines[0] and "header" in lines[0].lower(), \
        describe(proc)
    from sxtdask.io import open_image

    img = open_image(out)
    assert img.data.shape == (128, 128, 128)
    assert img.voxel_size_nm == (1.0, 1.0, 1.0)


def test_convert_real_amira_rec(tmp_path: Path) -> None:
    out = tmp_path / "sample_12.zarr"
    proc = sxtdask("convert", FIXTURES / "sample_12.rec", out, cwd=tmp_path)
    assert_ok(proc)
    from sxtdask.io import open_image

    img = open_image(out)
    assert img.data.shape == (58, 61, 58) and img.data.dtype == np.float32
    assert np.isfinite(np.asarray(img.data)).all()
