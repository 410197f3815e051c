"""File-system helpers every layer shares: atomic writes, directory swaps, output checks, locks.

The one place where "write to a temporary sibling, then rename into place" is implemented, so a
reader (or a rerun after ``kill -9``) sees either the old file or the complete new one, never half
of one. Files are created with the usual mode (``0666`` less the umask), not ``mkstemp``'s
private ``0600``.
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OVERWRITE, OutputError

__all__ = [
    "EXISTS",
    "LOCK_FILE",
    "atomic_directory",
    "atomic_file",
    "check_new_path",
    "remove_path",
    "remove_stale_partials",
    "replace_directory",
    "swap_directories",
    "write_atomic",
    "write_lock",
]

logger = logging.getLogger(__name__)

#: The lock file a writing run holds in the folder it writes (a store, an archive folder).
LOCK_FILE = ".sxtdask.lock"


def _partial_name(path: Path, what: str = "partial") -> Path:
    """An unpredictable hidden sibling name of ``path`` (``.<name>.<random>.<what>``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.{what}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    r"""Yield a temporary sibling of ``path`` to write; on success it is renamed to ``path``.

    The temporary file exists (empty, with mode ``0666`` less the umask) when the block starts,
    so writers that keep an existing file's mode keep that one. On any error (an exception, or
    ``KeyboardInterrupt``) it is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or PathLike
        The file to (re)place; its folder must exist.
    fsync : bool
        Flush the written file to disk before the rename (for files that must survive a power
        cut, e.g. checkpoints); a ``kill -9`` never leaves a half file either way.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> with atomic_file(out) as tmp:
    ...     _ = tmp.write_text("a,b\n1,2\n")
    >>> out.read_text()
    'a,b\n1,2\n'
    """
    target = Path(path)
    # tempfile's name in the target folder: unpredictable, created with O_EXCL (a link planted
    # under that name is never followed); then the usual mode instead of mkstemp's 0600.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_file`.

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    with atomic_file(target, fsync=fsync) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return target


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, a link or a folder tree (nothing if it is absent)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling link is in the way too


def replace_directory(partial: str | os.PathLike[str], out: str | os.PathLike[str], *,
                      overwrite: bool = True) -> None:
    """Move the finished folder ``partial`` to ``out``.

    An existing ``out`` is renamed aside first and removed only once the new folder is in place
    (restored if the rename fails), so ``out`` is always either the old folder or the new one.

    Raises
    ------
    OutputError
        ``out`` exists and ``overwrite`` is false.
    """
    partial, out = Path(partial), Path(out)
    old = None
    if _exists(out):
        if not overwrite:
            raise OutputError(f"{out}: exists (created while writing); pass {OVERWRITE} to replace it")
        old = _partial_name(out, "old")
        os.replace(out, old)
    try:
        os.replace(partial, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        remove_path(old)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system has no such call.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def swap_directories(new: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Put the finished folder ``new`` in the place of the existing folder ``out``, then remove the
    old one.

    On Linux the two are exchanged in one atomic step, so ``out`` is at every moment the old
    folder or the new one (a ``kill -9`` at any point leaves one of them, whole). Elsewhere
    this falls back to :func:`replace_directory` (two renames; the old folder is restored if
    the second fails).
    """
    new, out = Path(new), Path(out)
    if not _exists(out):
        os.replace(new, out)
        return
    if _exchange(new, out):
        remove_path(new)  # now the old folder
        return
    replace_directory(new, out, overwrite=True)


@contextmanager
def atomic_directory(out: str | os.PathLike[str], overwrite: bool = False,
                     **check: Any) -> Iterator[Path]:
    """Yield a new temporary sibling folder of ``out``; on success it replaces ``out``
    (:func:`replace_directory`), on any error it is deleted and ``out`` is left as it was.

    ``out`` is checked first with :func:`check_new_path` (``check`` holds its keyword options).

    Raises
    ------
    OutputError
        ``out`` may not be written, or the temporary folder cannot be created.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result"
    >>> with atomic_directory(out) as tmp:
    ...     _ = (tmp / "a.txt").write_text("a")
    >>> sorted(p.name for p in out.iterdir())
    ['a.txt']
    """
    out = Path(out)
    check_new_path(out, overwrite, **check)
    remove_stale_partials(out)
    partial = _partial_name(out)
    try:
        partial.mkdir()
        fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise OutputError(f"{out}: cannot create {partial.name} in {partial.parent} "
                          f"({err.strerror or err})") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "being written": what remove_stale_partials looks for
        yield partial
        if _exists(out) and not overwrite:
            raise OutputError(f"{out}: exists (created while writing); pass {OVERWRITE} to replace it")
        swap_directories(partial, out)  # one atomic exchange where there is an old one
    finally:
        if _exists(partial):
            remove_path(partial)
        os.close(fd)


def remove_stale_partials(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the half-written folders (``.<name>.<random>.partial``) that killed writers of
    ``out`` left beside it; returns them.

    A writer holds an ``flock`` on its folder while it writes (the kernel drops it when the
    process dies, however it dies), so a folder whose lock can be taken has no writer left: it is
    removed. A folder being written by a live process is left alone.
    """
    out = Path(out)
    removed = []
    for left in sorted(out.parent.glob(f".{glob.escape(out.name)}.*.partial")):
        if left.is_symlink() or not left.is_dir():
            continue
        try:
            fd = os.open(left, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer
        finally:
            os.close(fd)
        logger.info("%s: removing %s, left by an interrupted run", out, left.name)
        remove_path(left)
        removed.append(left)
    return removed


EXISTS = "{subject} exists; pass " + OVERWRITE + " to replace it"


def check_new_path(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    folder: bool | None = None,
    what: str = "",
    exists: str = EXISTS,
    parent: bool = True,
) -> Path:
    """Raise :class:`OutputError` unless ``path`` may be written.

    The one check of an output path before any work: ``path`` must be absent (or ``overwrite``),
    in an existing, writable folder. Messages start with ``path`` (after ``what``).

    Parameters
    ----------
    path : str or PathLike
        The output file or folder.
    overwrite : bool
        An existing ``path`` will be replaced.
    folder : bool, optional
        True: an existing ``path`` must be a folder (the output is one); False: it must not be
        one (the output is a file). None: either.
    what : str
        What the output is, put before the path in messages (e.g. ``"table"``).
    exists : str
        The message when ``path`` exists without ``overwrite``; ``{subject}`` is replaced by
        ``what`` and the path (e.g. ``"{subject}: exists; pass overwrite=True to replace it"``).
    parent : bool
        Check that the parent folder exists and is writable (False where the caller creates it;
        then only an ancestor that is a file is refused).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> check_new_path(d / "new.csv").name
    'new.csv'
    >>> check_new_path(d, folder=False, what="table")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sxtdask.errors.OutputError: table ... is a directory
    """
    path = Path(path)
    subject = f"{what} {path}" if what else str(path)
    present = _exists(path)
    if present and folder is True and not path.is_dir():
        raise OutputError(f"{subject} exists and is not a folder")
    if present and folder is False and path.is_dir():
        raise OutputError(f"{subject} is a directory")
    if present and not overwrite:
        raise OutputError(exists.format(subject=subject))
    where = path.parent
    if not parent:
        for up in (where, *where.parents):
            if up.exists() and not up.is_dir():
                raise OutputError(f"{subject}: cannot write: {up} is not a folder")
        return path
    if not where.exists():
        raise OutputError(f"{subject}: cannot write: the folder {where} does not exist")
    if not where.is_dir():
        raise OutputError(f"{subject}: cannot write: {where} is not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"{subject}: cannot write: the folder {where} is not writable")
    return path


_HELD: dict[str, int] = {}


def _lock_record(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _holder(record: dict[str, Any]) -> str:
    if not record:
        return "a run that recorded nothing"
    return (f"host {record.get('host', '?')}, process {record.get('pid', '?')}, "
            f"started {record.get('started', '?')}")


@contextmanager
def write_lock(folder: str | os.PathLike[str], what: str, kind: str = "sxtdask") -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (a store or an archive folder) while the block runs.

    The lock is the file ``folder/.sxtdask.lock``, held with ``flock`` (released by the kernel
    when the process ends, however it ends; over NFS through its lock manager) and recording the
    holder's host, process ID and start time. A lock file whose holder is gone (its process was
    killed) is taken over with a warning naming the run that left it. Re-entrant within one
    process (the archive driver and the pipeline may both take it).

    Raises
    ------
    OutputError
        Another process holds it: ``"{what}: another {kind} run is writing here (host …,
        process …, started …)"``.
    """
    path = Path(folder) / LOCK_FILE
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        raise OutputError(f"{what}: cannot create the lock file {path} "
                          f"({err.strerror or err})") from err
    with os.fdopen(fd, "r+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = _holder(_lock_record(fh.read()))
            raise OutputError(f"{what}: another {kind} run is writing here ({holder}); "
                              "wait for it to end") from err
        left = fh.read()
        if left.strip():
            logger.warning("%s: taking over the lock left by %s, which is no longer running",
                           what, _holder(_lock_record(left)))
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        fh.flush()
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
            fh.seek(0)
            fh.truncate()  # an empty lock file: released cleanly (nothing stale to report)
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
