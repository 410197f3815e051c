"""Issue 16's numbered problems, each as a regression test: nothing written outside the output,
one writer per store, ``--overwrite`` that never destroys the previous result, no file clobbered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from sxtdask._fs import LOCK_FILE
from sxtdask.archive import plan_archive
from sxtdask.archive._manifest import write_manifest
from sxtdask.cli import main
from sxtdask.engine import staged_name
from sxtdask.errors import ConfigError, InputError, OutputError
from sxtdask.io import labels_complete, list_labels, open_labels, write_image
from sxtdask.pipeline import segment_tomogram
from sxtdask.segmenters import ClassicalISG

CHUNKS = (8, 64, 64)


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its SHA-256 (what "unchanged" means here)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture()
def store(tmp_path, small_phantom) -> Path:
    return write_image(small_phantom.image[:32, :64, :64], tmp_path / "t.zarr", chunks=CHUNKS,
                       voxel_size_nm=(30.0, 30.0, 30.0))


# --- 1. writes outside --out ----------------------------------------------------------------------

@pytest.fixture()
def archive_in(tmp_path, small_phantom) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "a.npy", small_phantom.image[:16, :32, :32])
    return d


@pytest.mark.parametrize("output", [
    "../victim", "tomograms/../../victim.ome.zarr", "/tmp/victim.ome.zarr", "victim.ome.zarr",
    "tomograms/./a.ome.zarr", 7, ["tomograms/a.ome.zarr"], "",
])
def test_a_manifest_pointing_outside_the_archive_folder_is_refused(tmp_path, archive_in, output):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    write_manifest([{"input": "a.npy", "output": output, "status": "done"}], out)
    with pytest.raises(InputError, match=r"manifest.json: the row of 'a.npy' has output .*; "
                                         r"restore the manifest or move it away") as err:
        plan_archive(archive_in, out)
    assert "\n" not in str(err.value)
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_manifest_output_that_escapes_through_a_link_or_names_an_input_is_refused(
        tmp_path, archive_in):
    out = tmp_path / "out"
    (out / "tomograms").mkdir(parents=True)
    (out / "tomograms" / "esc").symlink_to(tmp_path)  # tomograms/esc/… leads out of the folder
    write_manifest([{"input": "a.npy", "output": "tomograms/esc/victim.ome.zarr"}], out)
    with pytest.raises(InputError, match="leads outside --out"):
        plan_archive(archive_in, out)
    (out / "tomograms" / "inp").symlink_to(archive_in)  # inside, through a link, onto an input
    (archive_in / "z.ome.zarr").mkdir()
    write_manifest([{"input": "a.npy", "output": "tomograms/inp/z.ome.zarr"}], out)
    with pytest.raises(InputError, match="leads outside --out"):
        plan_archive(archive_in, out)


def test_the_archive_cli_refuses_an_edited_manifest_before_any_cluster(tmp_path, archive_in,
                                                                       capsys):
    out = tmp_path / "out"
    out.mkdir()
    write_manifest([{"input": "a.npy", "output": "../victim"}], out)
    assert main(["archive", str(archive_in), "--out", str(out), "--tasks", "isg-instances",
                 "--method", "classical"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has output '../victim'" in err and "dashboard" not in err


# --- 3. two runs on one store ---------------------------------------------------------------------

_HOLD = """
import sys, time
from sxtdask._fs import write_lock
with write_lock(sys.argv[1], sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture()
def held(store):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(store)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_segment_on_a_store_being_written_is_refused_before_any_cluster(
        store, held, capsys):
    before = _tree(store)
    code = main(["segment", str(store), "--task", "isg-instances", "--method", "classical"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "another sxtdask run is writing here (host" in err and f"process {held.pid}" in err
    assert "dashboard" not in err
    assert _tree(store) == before


def test_a_pipeline_run_computed_through_compute_holds_the_lock(store, held):
    run = segment_tomogram(store, ClassicalISG())
    with pytest.raises(OutputError, match="another sxtdask run is writing here"):
        run.compute(scheduler="sync")
    assert "isg" not in list_labels(store)


def test_the_lock_of_a_killed_run_is_taken_over(store, held, caplog):
    held.kill()
    held.wait()
    report = segment_tomogram(store, ClassicalISG()).compute(scheduler="sync")
    assert report["instance_count"]["isg"] > 0 and labels_complete(store, "isg")
    assert "taking over the lock" in caplog.text
    assert (store / LOCK_FILE).read_text() == ""


# --- 4. a failed --overwrite destroys the previous result -----------------------------------------

@dataclasses.dataclass(frozen=True)
class _BrokenISG(ClassicalISG):
    """Classical ISG that fails on the third block it meets (a crash or a full disk mid-run)."""

    def segment_block(self, block, stats, voxel_size_nm):
        _BrokenISG.seen = getattr(_BrokenISG, "seen", 0) + 1
        if _BrokenISG.seen == 3:
            raise OSError(28, "No space left on device")
        return super().segment_block(block, stats, voxel_size_nm)


def test_a_failed_overwrite_leaves_the_previous_labels_whole_and_listed(store):
    segment_tomogram(store, ClassicalISG()).compute(scheduler="sync")
    before = _tree(store / "labels")
    _BrokenISG.seen = 0
    run = segment_tomogram(store, _BrokenISG(threshold=0.3), overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        run.compute(scheduler="sync")
    after = {k: v for k, v in _tree(store / "labels").items()
             if not k.startswith(staged_name("isg"))}
    assert after == before  # the old label image: every byte, and still listed
    assert labels_complete(store, "isg") and list_labels(store) == ["isg"]
    # The next run (plain, refused; or --overwrite, finishing) clears the half-built replacement.
    report = segment_tomogram(store, ClassicalISG(threshold=0.3), overwrite=True).compute(
        scheduler="sync")
    assert not (store / "labels" / staged_name("isg")).exists()
    assert list_labels(store) == ["isg"] and labels_complete(store, "isg")
    new = open_labels(store, "isg").compute()
    assert int(new.max()) == report["instance_count"]["isg"]
    assert _tree(store / "labels") != before


def test_overwrite_gives_the_same_bytes_as_a_fresh_run(store, tmp_path, small_phantom):
    seg = ClassicalISG(threshold=0.3)
    segment_tomogram(store, ClassicalISG()).compute(scheduler="sync")
    segment_tomogram(store, seg, overwrite=True).compute(scheduler="sync")
    fresh = write_image(small_phantom.image[:32, :64, :64], tmp_path / "f.zarr", chunks=CHUNKS,
                        voxel_size_nm=(30.0, 30.0, 30.0))
    segment_tomogram(fresh, seg).compute(scheduler="sync")
    assert _tree(store / "labels") == _tree(fresh / "labels")
    ms = json.loads((store / "labels" / "isg" / "zarr.json").read_text())
    assert ms["attributes"]["ome"]["multiscales"][0]["name"] == "isg"


# --- 7. files clobbered ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--report", "--performance-report"])
def test_an_existing_report_file_is_not_replaced_without_overwrite(store, tmp_path, capsys, flag):
    precious = tmp_path / "precious.mrc"
    precious.write_bytes(b"a tomogram")
    code = main(["segment", str(store), "--task", "isg-instances", "--method", "classical",
                 flag, str(precious)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "exists; pass --overwrite" in err, err
    assert precious.read_bytes() == b"a tomogram"
    code = main(["segment", str(store), "--task", "isg-instances", "--method", "classical",
                 flag, str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a directory" in err, err


# --- 5. CPU memory is planned ---------------------------------------------------------------------

_GIB = 1024**3


def _mito():
    from sxtdask.segmenters import create_segmenter

    return create_segmenter("sxt", task="mito", method="unet", device="cpu").load_model()


def test_batches_shrink_to_fit_and_a_block_that_cannot_fit_is_refused_with_what_would():
    from sxtdask.engine import plan_grid, plan_memory
    from sxtdask.relabel import BlockGrid

    seg = _mito()
    full = BlockGrid.regular((64, 2048, 2048), (32, 2048, 2048), (0, 0, 0))
    grid = plan_grid(full.shape, full.chunks, seg.halo)
    block = (34, 2048, 2048)
    assert plan_memory(seg, grid, None) is seg  # no limit known: unchanged
    roomy = 4 * seg.memory_bytes(block) / 0.6
    assert plan_memory(seg, grid, int(roomy)).batch_size == seg.batch_size
    one = seg.with_batch_size(1).memory_bytes(block)
    tight = plan_memory(seg, grid, int(1.2 * one / 0.6))
    assert tight.batch_size < seg.batch_size and tight.memory_bytes(block) <= 1.2 * one
    assert seg.batch_size == 8  # the caller's segmenter is not changed
    with pytest.raises(ConfigError) as err:
        plan_memory(seg, grid, int(0.5 * one / 0.6))
    line = err.value.for_cli()  # the command line's words: --memory-limit
    assert "\n" not in line and "block, one slice at a time" in line
    suggested = float(re.search(r"--memory-limit (\d+\.\d)GiB", line).group(1))
    assert plan_memory(seg, grid, int((suggested + 0.1) * _GIB)).batch_size == 1  # it fits
    if (thinner := re.search(r"chunks of (\d+)×2048×2048", line)) is not None:
        depth = int(thinner.group(1))
        assert seg.with_batch_size(1).memory_bytes((depth + 2, 2048, 2048)) <= 0.5 * one
    with pytest.raises(ConfigError, match="fewer threads per worker") as err:
        plan_memory(seg, grid, int(1.2 * one / 0.6), threads=4)
    assert "--memory-limit" in err.value.for_cli()


_MEASURE = """
import sys, time, numpy as np, torch
from sxtdask.segmenters import create_segmenter
from sxtdask.stats import IntensityStats
torch.set_num_threads(1)
seg = create_segmenter("sxt", task="mito", method="unet", device="cpu").load_model()
seg = seg.with_batch_size(int(sys.argv[1]))
shape = tuple(int(v) for v in sys.argv[2].split(","))
stats = IntensityStats(min=0.0, max=1.0, mean=0.5, std=0.1, p_low=0.1, p_high=0.9, n_voxels=1)
seg.segment_block(np.full((3, 32, 32), 0.5, np.float32), stats, (30.0, 30.0, 30.0))  # warm up
block = np.random.default_rng(0).random(shape, dtype=np.float32)
import threading, psutil
me = psutil.Process()
base = me.memory_info().rss
peak = [base]
done = threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.002)
t = threading.Thread(target=watch)
t.start()
seg.segment_block(block, stats, (30.0, 30.0, 30.0))
done.set()
t.join()
print(peak[0] - base)
"""


@pytest.mark.parametrize("batch,shape", [(1, (3, 768, 768)), (4, (6, 512, 512))])
def test_the_memory_estimate_bounds_what_a_block_really_takes(batch, shape):
    measured = int(subprocess.run(
        [sys.executable, "-c", _MEASURE, str(batch), ",".join(map(str, shape))],
        capture_output=True, text=True, check=True).stdout.split()[-1])
    estimate = _mito().with_batch_size(batch).memory_bytes(shape)
    assert measured <= estimate <= 4 * measured, (measured, estimate)


def test_segment_refuses_a_block_that_cannot_fit_in_one_line(tmp_path, capsys):
    store = write_image(np.random.default_rng(1).random((4, 1024, 1024), dtype=np.float32),
                        tmp_path / "big.zarr", chunks=(4, 1024, 1024))
    code = main(["segment", str(store), "--task", "mito", "--method", "unet", "--device", "cpu",
                 "--workers", "1", "--memory-limit", "200MiB"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "needs about" in err and "--memory-limit" in err
    assert list_labels(store) == [] and not (store / "labels").exists()


def test_a_killed_worker_is_one_line_and_exit_2(monkeypatch, capsys):
    from distributed.scheduler import KilledWorker

    import sxtdask.cli.stats as stats_cli

    def die(args, con):
        raise KilledWorker("segment.isg.t-abc123", None, 3)

    monkeypatch.setattr(stats_cli, "run", die)
    assert main(["stats", "x.zarr", "--labels", "isg", "--out", "t.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the workers running segment.isg.t died 4 times" in err


# --- 6. stores read strictly ----------------------------------------------------------------------

def _rename_levels(store: Path) -> None:
    """Levels ``0, 1`` → ``s0, s1`` in the metadata and on disk (a valid OME-Zarr all the same)."""
    meta = json.loads((store / "zarr.json").read_text())
    for d in meta["attributes"]["ome"]["multiscales"][0]["datasets"]:
        (store / d["path"]).rename(store / f"s{d['path']}")
        d["path"] = f"s{d['path']}"
    (store / "zarr.json").write_text(json.dumps(meta))


def test_levels_come_from_the_metadata_and_a_stale_level_0_is_ignored(store, tmp_path):
    import shutil

    reference = write_image(np.asarray(open_image_data(store)), tmp_path / "r.zarr",
                            chunks=CHUNKS, voxel_size_nm=(30.0, 30.0, 30.0))
    segment_tomogram(reference, ClassicalISG()).compute(scheduler="sync")
    _rename_levels(store)
    stale = tmp_path / "stale.zarr"
    write_image(np.zeros((32, 64, 64), np.float32), stale, chunks=CHUNKS)
    shutil.copytree(stale / "0", store / "0")  # an old level 0 the metadata no longer names
    report = segment_tomogram(store, ClassicalISG()).compute(scheduler="sync")
    assert report["instance_count"]["isg"] > 0
    np.testing.assert_array_equal(open_labels(store, "isg").compute(),
                                  open_labels(reference, "isg").compute())


def open_image_data(path: Path) -> np.ndarray:
    from sxtdask.io import open_image

    return open_image(path).data.compute()


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_streamed_batches_give_the_whole_blocks_answer(small_phantom, batch):
    from sxtdask.stats import global_stats

    block = small_phantom.image[:7, :48, :48]
    stats = global_stats(da.from_array(small_phantom.image, chunks=16)).compute()
    seg = _mito()  # reads z-1, z, z+1: the batches must see their neighbours
    assert seg.context == 1
    whole = seg._decide(seg.probabilities(block, stats))
    streamed = seg.with_batch_size(batch).segment_block(block, stats, (30.0, 30.0, 30.0))
    np.testing.assert_array_equal(streamed["mito"], whole)


def _chunk_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "0").rglob("*") if p.is_file() and p.name != "zarr.json")


def test_a_missing_image_chunk_is_refused_before_any_cluster(store, capsys):
    _chunk_files(store)[1].unlink()
    code = main(["segment", str(store), "--task", "isg-instances", "--method", "classical"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "1 of 4 chunks of level 0 are missing" in err and "dashboard" not in err
    assert not (store / "labels").exists()


def test_a_corrupt_image_chunk_is_one_line_not_a_traceback(store, capsys):
    victim = _chunk_files(store)[2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    code = main(["segment", str(store), "--task", "isg-instances", "--method", "classical",
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err  # no worker-side "Compute Failed" log
    assert "cannot be decoded" in err and "store is damaged" in err
    assert "isg" not in list_labels(store)
