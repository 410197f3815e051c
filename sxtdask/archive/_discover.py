"""Find the tomograms under an input folder and give each a stable output path.

A tomogram is a file whose extension one of sxtdask's readers knows (MRC/REC, AmiraMesh, TIFF,
NumPy) or a Zarr folder (an existing OME-Zarr image: a folder with ``zarr.json``, ``.zgroup`` or
``.zattrs``, or whose name ends in ``.zarr``); the walk does not descend into Zarr folders.
Hidden files and folders (``.name``) and the archive's own output folder are skipped.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sxtdask.io import SUPPORTED_SUFFIXES

__all__ = ["OUTPUT_FOLDER", "Tomogram", "assign_outputs", "discover_tomograms"]

logger = logging.getLogger(__name__)

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")
_ZARR_ENDINGS = (".ome.zarr", ".zarr")
OUTPUT_FOLDER = "tomograms"


@dataclass(frozen=True)
class Tomogram:
    """One input tomogram.

    Attributes
    ----------
    key : str
        Its path relative to the input folder, with ``/`` separators (the manifest's ``input``).
    path : Path
        Absolute path.
    kind : str
        ``"file"`` (read with :func:`sxtdask.io.open_volume`) or ``"ome-zarr"``
        (read with :func:`sxtdask.io.open_image`).
    """

    key: str
    path: Path
    kind: str

    @property
    def stem(self) -> str:
        """The name without its format ending: ``a/cell1.mrc`` → ``cell1``, ``b.ome.zarr`` → ``b``."""
        name = self.path.name
        if self.kind == "ome-zarr":
            for ending in _ZARR_ENDINGS:
                if name.lower().endswith(ending) and len(name) > len(ending):
                    return name[: -len(ending)]
            return name
        return Path(name).stem or name


def _is_zarr_dir(path: Path) -> bool:
    return path.name.lower().endswith(".zarr") or any((path / m).exists() for m in _ZARR_MARKERS)


def _excluded(key: str, patterns: Iterable[str]) -> bool:
    name = key.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(key, p) or fnmatch.fnmatch(name, p) for p in patterns)


def discover_tomograms(
    input_dir: str | os.PathLike[str], *, exclude: Iterable[str] = (),
    skip: Iterable[str | os.PathLike[str]] = (),
) -> list[Tomogram]:
    """The tomograms under ``input_dir``, sorted by relative path.

    Parameters
    ----------
    input_dir : str or Path
        Folder searched recursively.
    exclude : iterable of str
        Glob patterns (``fnmatch``) matched against the relative path and the name, e.g.
        ``"*.gt.zarr"``.
    skip : iterable of paths
        Folders not to enter (the archive's output folder when it lies inside ``input_dir``).

    Returns
    -------
    list of Tomogram
    """
    root = Path(input_dir).absolute()
    skipped = {Path(p).resolve() for p in skip}
    patterns = tuple(exclude)
    found: list[Tomogram] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            path = here / d
            if d.startswith(".") or path.resolve() in skipped:
                continue
            if _is_zarr_dir(path):
                key = path.relative_to(root).as_posix()
                if not _excluded(key, patterns):
                    found.append(Tomogram(key, path, "ome-zarr"))
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            path = here / f
            key = path.relative_to(root).as_posix()
            if f.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                logger.debug("%s: not a tomogram file; ignored", path)
                continue
            if not _excluded(key, patterns):
                found.append(Tomogram(key, path, "file"))
    found.sort(key=lambda t: t.key)
    logger.info("%s: %d tomogram(s) found", root, len(found))
    return found


def assign_outputs(tomograms: list[Tomogram], claimed: Mapping[str, str]) -> dict[str, str]:
    """Output paths (relative to the archive folder) for each tomogram key.

    ``claimed`` maps keys to outputs recorded in an earlier manifest: those are kept, so that a
    rerun finds its earlier work. Others get ``tomograms/<folder>/<stem>.ome.zarr``, or
    ``<name>.ome.zarr`` (the full file name, extension included) where two inputs share a stem.
    """
    taken = set(claimed.values())
    out: dict[str, str] = {k: v for k, v in claimed.items() if any(t.key == k for t in tomograms)}
    wanted: dict[str, int] = {}
    for t in tomograms:
        if t.key not in out:
            short = _short(t)
            wanted[short] = wanted.get(short, 0) + 1
    for t in tomograms:
        if t.key in out:
            continue
        candidate = _short(t)
        if candidate in taken or wanted[candidate] > 1:
            candidate = _long(t)
        base, n = candidate, 2
        while candidate in taken:
            candidate = base.replace(".ome.zarr", f"-{n}.ome.zarr")
            n += 1
        out[t.key] = candidate
        taken.add(candidate)
    return out


def _folder(t: Tomogram) -> str:
    parent = t.key.rsplit("/", 1)[0] if "/" in t.key else ""
    return f"{OUTPUT_FOLDER}/{parent}/" if parent else f"{OUTPUT_FOLDER}/"


def _short(t: Tomogram) -> str:
    return f"{_folder(t)}{t.stem}.ome.zarr"


def _long(t: Tomogram) -> str:
    return f"{_folder(t)}{t.path.name}.ome.zarr"
