"""The shared file-system helpers: atomic file writes, folder swaps and the output-path check."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sxtdask._fs import (
    LOCK_FILE,
    atomic_directory,
    atomic_file,
    check_new_path,
    remove_path,
    remove_stale_partials,
    replace_directory,
    swap_directories,
    write_atomic,
    write_lock,
)
from sxtdask.errors import OutputError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- atomic_file / write_atomic -------------------------------------------------------------------

def test_atomic_file_has_the_usual_mode(tmp_path, umask_022) -> None:
    out = tmp_path / "t.csv"
    with atomic_file(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.exists()
        assert _mode(tmp) == 0o644  # 0666 less the umask, not mkstemp's 0600
        tmp.write_text("a\n")
        assert not out.exists()  # nothing at the final name until the block ends
    assert out.read_text() == "a\n" and _mode(out) == 0o644
    assert os.listdir(tmp_path) == ["t.csv"]


def test_atomic_file_follows_the_umask(tmp_path) -> None:
    old = os.umask(0o077)
    try:
        path = write_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


@pytest.mark.parametrize("data, expected", [(b"\x00\xffbytes", b"\x00\xffbytes"),
                                            ("tëxt\n", "tëxt\n".encode())], ids=["bytes", "text"])
def test_write_atomic_writes_bytes_and_utf8_text(tmp_path, umask_022, data, expected) -> None:
    out = write_atomic(tmp_path / "f", data)
    assert out == tmp_path / "f" and out.read_bytes() == expected and _mode(out) == 0o644
    assert write_atomic(str(tmp_path / "f"), b"new", fsync=True).read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_file_leaves_nothing_on_error(tmp_path, error) -> None:
    out = tmp_path / "new.json"
    with pytest.raises(error), atomic_file(out) as tmp:
        tmp.write_text("half")
        raise error("stop")
    assert os.listdir(tmp_path) == []


def test_atomic_file_keeps_old_content_on_error(tmp_path, umask_022) -> None:
    out = tmp_path / "keep.txt"
    out.write_text("old\n")
    out.chmod(0o640)
    with pytest.raises(OSError, match="disk full"), atomic_file(out) as tmp:
        tmp.write_text("new, half")
        raise OSError("disk full")
    assert out.read_text() == "old\n" and _mode(out) == 0o640
    assert os.listdir(tmp_path) == ["keep.txt"]
    write_atomic(out, "new\n")  # a successful write replaces the file (and its mode)
    assert out.read_text() == "new\n" and _mode(out) == 0o644


def test_write_atomic_needs_the_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"x")
    assert os.listdir(tmp_path) == []


# --- replace_directory / atomic_directory ---------------------------------------------------------

def _folder(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_replace_directory_swaps_folders(tmp_path) -> None:
    out = _folder(tmp_path / "out", old="1")
    replace_directory(_folder(tmp_path / "new", a="2"), out)
    assert sorted(p.name for p in out.iterdir()) == ["a"] and (out / "a").read_text() == "2"
    assert os.listdir(tmp_path) == ["out"]  # neither the new folder's name nor the old copy
    replace_directory(_folder(tmp_path / "fresh", b="3"), tmp_path / "absent")
    assert (tmp_path / "absent" / "b").read_text() == "3"


def test_replace_directory_without_overwrite_keeps_out(tmp_path) -> None:
    out = _folder(tmp_path / "out", old="1")
    new = _folder(tmp_path / "new", a="2")
    with pytest.raises(OutputError, match="out: exists .*overwrite=True"):
        replace_directory(new, out, overwrite=False)
    assert (out / "old").read_text() == "1" and (new / "a").read_text() == "2"


def test_replace_directory_restores_the_old_folder_when_the_rename_fails(tmp_path, monkeypatch) -> None:
    out = _folder(tmp_path / "out", old="1")
    real = os.replace

    def failing(src, dst):
        if Path(src).name == "new":
            raise OSError("rename refused")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="rename refused"):
        replace_directory(_folder(tmp_path / "new", a="2"), out)
    assert sorted(os.listdir(tmp_path)) == ["new", "out"] and (out / "old").read_text() == "1"


def test_atomic_directory_commits_or_leaves_the_old_folder(tmp_path) -> None:
    out = tmp_path / "store"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1"
    with pytest.raises(ValueError, match="boom"), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b").write_text("half")
        raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert os.listdir(tmp_path) == ["store"]
    with pytest.raises(OutputError, match="store exists; pass overwrite=True"), atomic_directory(out):
        pytest.fail("the check comes first")
    with atomic_directory(out, True, exists="{subject}: taken") as tmp:
        (tmp / "c").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["c"] and os.listdir(tmp_path) == ["store"]


def test_remove_path(tmp_path) -> None:
    folder = _folder(tmp_path / "d", a="1")
    link = tmp_path / "link"
    link.symlink_to(folder)
    remove_path(link)  # the link, not what it points to
    assert folder.is_dir() and not link.is_symlink()
    remove_path(folder)
    remove_path(tmp_path / "absent")
    (tmp_path / "f").write_text("x")
    remove_path(tmp_path / "f")
    assert os.listdir(tmp_path) == []


# --- check_new_path -------------------------------------------------------------------------------

def test_check_new_path_accepts_a_new_or_replaceable_path(tmp_path) -> None:
    assert check_new_path(tmp_path / "new.csv") == tmp_path / "new.csv"
    (tmp_path / "old.csv").write_text("x")
    assert check_new_path(str(tmp_path / "old.csv"), True) == tmp_path / "old.csv"


def test_check_new_path_messages(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match=r"file exists; pass overwrite=True to replace it$"):
        check_new_path(tmp_path / "file", False)
    with pytest.raises(OutputError, match=r"^table .*file: exists; pass overwrite=True$"):
        check_new_path(tmp_path / "file", what="table", exists="{subject}: exists; pass overwrite=True")
    with pytest.raises(OutputError, match="file exists and is not a folder"):
        check_new_path(tmp_path / "file", True, folder=True)
    with pytest.raises(OutputError, match="dir is a directory"):
        check_new_path(tmp_path / "dir", True, folder=False)
    check_new_path(tmp_path / "dir", True, folder=True)
    with pytest.raises(OutputError, match="x.csv: cannot write: the folder .*missing does not exist"):
        check_new_path(tmp_path / "missing" / "x.csv", False)
    with pytest.raises(OutputError, match="x.csv: cannot write: .*file is not a folder"):
        check_new_path(tmp_path / "file" / "x.csv", False)


def test_check_new_path_with_a_folder_to_create(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_new_path(tmp_path / "a" / "b" / "x.mrc", parent=False).name == "x.mrc"
    with pytest.raises(OutputError, match="cannot write: .*file is not a folder"):
        check_new_path(tmp_path / "file" / "a" / "x.mrc", parent=False)


def test_check_new_path_refuses_a_dangling_link(tmp_path) -> None:
    link = tmp_path / "out.zarr"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="exists"):
        check_new_path(link, False)


_CHECK_AS_NOBODY = """
import sys
import tempfile
from pathlib import Path
from sxtdask._fs import check_new_path
from sxtdask.errors import OutputError
try:
    check_new_path(Path(sys.argv[1]) / "x.csv", False)
except OutputError as err:
    print(err)
    sys.exit(3)
"""


def test_check_new_path_refuses_an_unwritable_folder(tmp_path) -> None:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        folder = _folder(tmp_path / "ro")
        folder.chmod(0o500)
        try:
            with pytest.raises(OutputError, match="x.csv: cannot write: the folder .*ro is not writable"):
                check_new_path(folder / "x.csv", False)
        finally:
            folder.chmod(0o700)
        return
    # root may write anywhere: check as the unprivileged user nobody, in a folder it may enter
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root needs setpriv (util-linux) to drop privileges"
    folder = Path(tempfile.mkdtemp(prefix="sxtdask-ro-"))
    try:
        folder.chmod(0o755)  # root's: nobody may enter it, not write in it
        done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-c", _CHECK_AS_NOBODY, str(folder)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 3, done.stderr
        assert re.search(r"x.csv: cannot write: the folder .*sxtdask-ro-\w+ is not writable", done.stdout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- write_lock ----------------------------------------------------------------------------------

_HOLD = """
import sys, time
from sxtdask._fs import write_lock
with write_lock(sys.argv[1], "store"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_write_lock_refuses_a_second_writer_and_names_the_holder(tmp_path) -> None:
    proc = _holder(tmp_path, 30)
    try:
        with pytest.raises(OutputError, match=rf"store: another sxtdask run is writing here "
                                              rf"\(host {socket.gethostname()}, process {proc.pid}, started"):
            with write_lock(tmp_path, "store"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog) -> None:
    proc = _holder(tmp_path, 30)
    proc.kill()  # kill -9: the lock file keeps its record, the kernel drops the flock
    proc.wait()
    assert str(proc.pid) in (tmp_path / LOCK_FILE).read_text()
    with caplog.at_level(logging.WARNING, logger="sxtdask"), write_lock(tmp_path, "store"):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert f"taking over the lock left by host {socket.gethostname()}, process {proc.pid}" in caplog.text
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly: nothing to take over
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sxtdask"), write_lock(tmp_path, "store"):
        pass
    assert "taking over" not in caplog.text


def test_write_lock_is_reentrant_in_one_process(tmp_path) -> None:
    with write_lock(tmp_path, "store"), write_lock(tmp_path, "store"):
        pass
    with write_lock(tmp_path, "store"):
        pass


def test_write_lock_does_not_follow_a_planted_link(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / LOCK_FILE).symlink_to(victim)
    with pytest.raises(OutputError, match="cannot create the lock file"):
        with write_lock(tmp_path / "store", "store"):
            pass
    assert victim.read_text() == "precious"


# --- temporary names and swaps --------------------------------------------------------------------

def test_temporary_names_are_unpredictable_and_a_planted_link_is_not_followed(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    seen = set()
    for _ in range(3):
        with atomic_file(tmp_path / "out.json") as tmp:
            assert tmp.parent == tmp_path and not tmp.is_symlink()
            seen.add(tmp.name)
            tmp.write_text("{}")
    assert len(seen) == 3
    (tmp_path / "link.json").symlink_to(victim)  # the target itself a link: replaced, not followed
    write_atomic(tmp_path / "link.json", "{}")
    assert victim.read_text() == "precious" and not (tmp_path / "link.json").is_symlink()


def test_swap_directories_exchanges_whole_folders(tmp_path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "a").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b").write_text("old")
    swap_directories(tmp_path / "new", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a"]


_WRITE_FOREVER = """
import sys, time
from sxtdask._fs import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "half").write_text("x")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_partial_folders_of_killed_writers_are_removed_and_live_ones_kept(tmp_path) -> None:
    out = tmp_path / "out.zarr"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITE_FOREVER, str(out)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "writing"
    dead, live = procs
    dead.kill()
    dead.wait()
    try:
        assert len(list(tmp_path.glob(".out.zarr.*.partial"))) == 2
        removed = remove_stale_partials(out)
        assert len(removed) == 1 and len(list(tmp_path.glob(".out.zarr.*.partial"))) == 1
        with atomic_directory(out) as tmp:  # the next writer cleans up too, then writes
            (tmp / "a").write_text("a")
        assert [p.name for p in out.iterdir()] == ["a"]
        assert len(list(tmp_path.glob(".out.zarr.*.partial"))) == 1  # the live writer's
    finally:
        live.kill()
        live.wait()
    assert len(remove_stale_partials(out)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
