"""Find the tomograms under an input folder and give each a stable output path.

A tomogram is a file whose extension one of sxtdask's readers knows (MRC/REC, AmiraMesh, TIFF,
NumPy) or a Zarr folder (an existing OME-Zarr image: a folder with ``zarr.json``, ``.zgroup`` or
``.zattrs``, or whose name ends in ``.zarr``); the walk does not descend into Zarr folders.
Hidden files and folders (``.name``) and the archive's own output folder are skipped.

Zarr folders that are not tomograms are ignored with a reason (:func:`scan_inputs`'s
``ignored``, a log record, and a manifest row with status ``ignored``): ground truth stores
(``*.gt.zarr``, as ``sxtdask synth`` writes them beside each tomogram) and stores whose metadata
declares no multiscale image (labels only, a bare Zarr array or group). A Zarr folder whose
metadata is missing or unreadable stays a tomogram, so that its conversion reports what is wrong.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sxtdask.io import SUPPORTED_SUFFIXES

__all__ = ["OUTPUT_FOLDER", "InputScan", "Tomogram", "assign_outputs", "discover_tomograms",
           "scan_inputs"]

logger = logging.getLogger(__name__)

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")
_ZARR_ENDINGS = (".ome.zarr", ".zarr")
_GROUND_TRUTH_ENDING = ".gt.zarr"
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


def _read_json(path: Path) -> dict[str, Any] | None:
    """A Zarr metadata document, or None if it is absent, unreadable or not a JSON object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _not_an_image(path: Path) -> str | None:
    """Why the Zarr folder ``path`` is not a tomogram, or None if it may be one.

    Only what its metadata states counts: a folder whose metadata is missing or unreadable may be
    a damaged image (its conversion then fails and says why), and so may metadata that names
    multiscales in a form sxtdask does not read (Zarr v2, another OME version).
    """
    if path.name.lower().endswith(_GROUND_TRUTH_ENDING):
        return "ground truth (a .gt.zarr store, as sxtdask synth writes), not a tomogram"
    if (path / "zarr.json").exists():  # Zarr v3
        doc = _read_json(path / "zarr.json")
        if doc is None:
            return None
        if doc.get("node_type") == "array":
            return "a Zarr array, not an OME-Zarr image"
        attrs = doc.get("attributes")
        ome = attrs.get("ome") if isinstance(attrs, dict) else None
        if isinstance(attrs, dict) and attrs.get("multiscales") or (
                isinstance(ome, dict) and ome.get("multiscales")):
            return None
    elif (path / ".zarray").exists():
        return "a Zarr v2 array, not an OME-Zarr image"
    elif (path / ".zattrs").exists() or (path / ".zgroup").exists():
        attrs = _read_json(path / ".zattrs") if (path / ".zattrs").exists() else {}
        if attrs is None or attrs.get("multiscales"):
            return None
    else:
        return None  # no metadata at all
    if (path / "labels").is_dir():
        return "labels only: an OME-Zarr store without a multiscale image"
    return "a Zarr group without a multiscale image, not an OME-Zarr image"


def _excluded(key: str, patterns: Iterable[str]) -> bool:
    name = key.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(key, p) or fnmatch.fnmatch(name, p) for p in patterns)


@dataclass(frozen=True)
class InputScan:
    """What :func:`scan_inputs` found.

    Attributes
    ----------
    tomograms : list of Tomogram
        Sorted by key.
    ignored : dict of str → str
        Zarr folders that are not tomograms: key (relative path) → the reason, in one line.
    """

    tomograms: list[Tomogram]
    ignored: dict[str, str]


def discover_tomograms(
    input_dir: str | os.PathLike[str], *, exclude: Iterable[str] = (),
    skip: Iterable[str | os.PathLike[str]] = (),
) -> list[Tomogram]:
    """The tomograms under ``input_dir``, sorted by relative path (:func:`scan_inputs`'s
    ``tomograms``).

    Parameters
    ----------
    input_dir : str or Path
        Folder searched recursively.
    exclude : iterable of str
        Glob patterns (``fnmatch``) matched against the relative path and the name, e.g.
        ``"raw/*"``.
    skip : iterable of paths
        Folders not to enter (the archive's output folder when it lies inside ``input_dir``).

    Returns
    -------
    list of Tomogram
    """
    return scan_inputs(input_dir, exclude=exclude, skip=skip).tomograms


def scan_inputs(
    input_dir: str | os.PathLike[str], *, exclude: Iterable[str] = (),
    skip: Iterable[str | os.PathLike[str]] = (),
) -> InputScan:
    """The tomograms under ``input_dir`` and the Zarr folders ignored as not tomograms.

    Parameters are those of :func:`discover_tomograms`. An ignored Zarr folder (ground truth, labels
    only, no multiscale image; see the module docs) is logged at INFO with its reason; an
    ``exclude`` match is left out silently, as are files of other types (logged at DEBUG).

    Returns
    -------
    InputScan
    """
    root = Path(input_dir).absolute()
    skipped = {Path(p).resolve() for p in skip}
    patterns = tuple(exclude)
    found: list[Tomogram] = []
    notes: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            path = here / d
            if d.startswith(".") or path.resolve() in skipped:
                continue
            if _is_zarr_dir(path):
                key = path.relative_to(root).as_posix()
                if _excluded(key, patterns):
                    continue
                reason = _not_an_image(path)
                if reason is None:
                    found.append(Tomogram(key, path, "ome-zarr"))
                else:
                    logger.info("%s: ignored: %s", key, reason)
                    notes[key] = reason
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
    logger.info("%s: %d tomogram(s) found, %d Zarr folder(s) ignored", root, len(found), len(notes))
    return InputScan(found, dict(sorted(notes.items())))


def assign_outputs(tomograms: list[Tomogram], claimed: Mapping[str, str]) -> dict[str, str]:
    """Output paths (relative to the archive folder) for each tomogram key.

    ``claimed`` maps keys to outputs recorded in an earlier manifest: those are kept, so that a
    rerun finds its earlier work. Others get ``tomograms/<folder>/<stem>.ome.zarr``, or
    ``<name>.ome.zarr`` (the full file name, extension included) where two inputs share a stem.
    """
    taken = set(claimed.values())
    keys = {t.key for t in tomograms}
    out: dict[str, str] = {k: v for k, v in claimed.items() if k in keys}
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
