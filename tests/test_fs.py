"""The shared file-system helpers: atomic file writes, folder swaps and the output-path check."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sxtdask._fs import (
    atomic_directory,
    atomic_file,
    check_new_path,
    exclusive_lock,
    remove_path,
    replace_directory,
    write_atomic,
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
    with pytest.raises(OutputError, match="out: exists .*--overwrite"):
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
    with pytest.raises(OutputError, match="store exists; pass --overwrite"), atomic_directory(out):
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
    with pytest.raises(OutputError, match=r"file exists; pass --overwrite to replace it$"):
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


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_check_new_path_refuses_an_unwritable_folder(tmp_path) -> None:
    folder = _folder(tmp_path / "ro")
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="x.csv: cannot write: the folder .*ro is not writable"):
            check_new_path(folder / "x.csv", False)
    finally:
        folder.chmod(0o700)


# --- exclusive_lock -------------------------------------------------------------------------------

def test_exclusive_lock_refuses_a_second_holder(tmp_path) -> None:
    lock = tmp_path / ".lock"
    with exclusive_lock(lock, "out"):
        with pytest.raises(OutputError, match="out: another sxtdask run is writing here"):
            with exclusive_lock(lock, "out"):
                pass
    with exclusive_lock(lock, "out"):  # released
        pass
