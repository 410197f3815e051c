"""Chunk-level progress of a store run, so that an interrupted run redoes only missing chunks.

Everything lives in the store's scratch folder (``<store>/_sxtdask_scratch/``)::

    plan.json                      the plan's fingerprint (written once its arrays exist)
    provisional/<name>/            provisional instance IDs (a Zarr array per instance output)
    done/segment/<z>_<y>_<x>.npz   one block segmented: every output chunk written, plus the
                                   block's small stitching data (meta and face crops)
    done/relabel/<name>/<z>_<y>_<x>  one final instance chunk written

A record is created only after the data it vouches for is written, atomically (a temporary file
renamed into place), so a block is either complete or missing, whatever kills the run. A record is
valid only for the plan whose fingerprint ``plan.json`` holds; another plan discards them all.
The records hold NumPy arrays in ``.npz`` files (never pickles).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dask.base import tokenize

from .._fs import write_atomic  # re-exported: the one atomic write of the package
from ..relabel import BlockGrid, BlockMeta, Index
from ..segmenters import OutputSpec, Segmenter

__all__ = ["Progress", "load_record", "plan_fingerprint", "save_record", "touch_marker", "write_atomic"]

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
#: Bump when the layout or the record format changes: older progress is then discarded.
FORMAT = 1

#: What one block's segment task keeps for the relabel reduction: output name → (meta, crops).
Small = dict[str, tuple[BlockMeta, dict[int, np.ndarray]]]


def _model_files(segmenter: Segmenter) -> list[tuple[str, int | None, int | None]]:
    """Checkpoint files the segmenter reads, with their modification time and size."""
    found: list[tuple[str, int | None, int | None]] = []
    for path in segmenter.model_files:
        try:
            st = os.stat(path)
            found.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            found.append((str(path), None, None))
    return found


def plan_fingerprint(
    segmenter: Segmenter,
    stats: Any,
    grid: BlockGrid,
    voxel_size_nm: tuple[float, ...],
    image: tuple[Any, ...],
) -> str:
    """A token that changes whenever a rerun could write different chunks.

    It covers the segmenter's configuration and checkpoint files (path, modification time,
    size), the whole-volume statistics (so a changed image changes it too), the block grid
    and halo, the voxel size, the outputs (names, kinds, dtypes, matching) and ``image``
    (the level-0 array's shape, chunks and dtype).
    """
    outputs = [_spec_key(s) for s in segmenter.outputs]
    return tokenize(FORMAT, segmenter, _model_files(segmenter), stats, grid,
                    tuple(float(v) for v in voxel_size_nm), outputs, image)


def _spec_key(spec: OutputSpec) -> tuple[str, str, str, str]:
    return (spec.name, spec.kind.value, str(np.dtype(spec.dtype)), spec.match.value)


def touch_marker(path: Path) -> None:
    """Create the empty marker file ``path`` (creating an empty file is all-or-nothing)."""
    path.touch()


def _block_name(idx: Index) -> str:
    return "_".join(str(int(i)) for i in idx)


def _parse_block(name: str, grid: BlockGrid, suffix: str) -> Index | None:
    if name.startswith(".") or not name.endswith(suffix):
        return None
    parts = name[: len(name) - len(suffix)].split("_")
    if len(parts) != grid.ndim or not all(p.isdigit() for p in parts):
        return None
    idx = tuple(int(p) for p in parts)
    return idx if all(i < n for i, n in zip(idx, grid.numblocks, strict=True)) else None


def save_record(path: Path, small: Small, names: Iterable[str]) -> None:
    """Save one block's stitching data (pickle-free ``.npz``), atomically, as its record."""
    import io

    arrays: dict[str, np.ndarray] = {}
    for k, name in enumerate(names):
        meta, crops = small[name]
        arrays[f"{k}_count"] = np.array([meta.n_core, meta.n_total], dtype=np.int64)
        arrays[f"{k}_first"] = np.asarray(meta.first_index)
        for side, crop in crops.items():
            arrays[f"{k}_crop_{int(side)}"] = np.asarray(crop)
    buf = io.BytesIO()
    # numpy's stub types **kwds as ArrayLike but also matches them against allow_pickle: bool
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    write_atomic(path, buf.getvalue())


def load_record(path: Path, names: Iterable[str]) -> Small:
    """The stitching data saved by :func:`save_record` (read with ``allow_pickle=False``)."""
    small: Small = {}
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        for k, name in enumerate(names):
            n_core, n_total = (int(v) for v in npz[f"{k}_count"])
            meta = BlockMeta(n_core, n_total, npz[f"{k}_first"])
            prefix = f"{k}_crop_"
            crops = {int(f[len(prefix):]): npz[f] for f in sorted(files) if f.startswith(prefix)}
            small[name] = (meta, crops)
    return small


#: Errors that make a record unreadable (it is then recomputed).
RECORD_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile)


@dataclass(frozen=True)
class Progress:
    """The records of one store run, under the scratch folder ``root``."""

    root: Path

    @property
    def plan_file(self) -> Path:
        return self.root / PLAN_FILE

    def provisional(self, name: str) -> Path:
        return self.root / "provisional" / name

    def record(self, idx: Index) -> Path:
        """The record of block ``idx``'s segment stage."""
        return self.root / "done" / "segment" / f"{_block_name(idx)}.npz"

    def marker(self, name: str, idx: Index) -> Path:
        """The marker of block ``idx``'s final ``name`` chunk."""
        return self.root / "done" / "relabel" / name / _block_name(idx)

    def segmented(self, grid: BlockGrid) -> set[Index]:
        """Blocks whose segment stage is recorded complete."""
        return self._listed(self.root / "done" / "segment", grid, ".npz")

    def relabelled(self, name: str, grid: BlockGrid) -> set[Index]:
        """Blocks whose final ``name`` chunk is recorded written."""
        return self._listed(self.root / "done" / "relabel" / name, grid, "")

    @staticmethod
    def _listed(folder: Path, grid: BlockGrid, suffix: str) -> set[Index]:
        if not folder.is_dir():
            return set()
        found = (_parse_block(p.name, grid, suffix) for p in folder.iterdir())
        return {i for i in found if i is not None}

    def open(self, fingerprint: str, *, fresh: bool, why: str = "") -> bool:
        """Keep the recorded progress if it belongs to ``fingerprint``; else discard it.

        Returns True when earlier progress is kept (a resumed run). ``fresh`` discards it
        whatever the plan (``why`` says why, for the log).
        """
        if self.root.exists():
            old = self._read_plan()
            if fresh:
                logger.info("%s: discarding the progress of an earlier run (%s)", self.root, why)
            elif old is None:
                logger.info("%s: no plan recorded; starting afresh", self.root)
            elif old != fingerprint:
                logger.warning("%s: the plan changed since the interrupted run (segmenter, "
                               "statistics, chunks or outputs); discarding its progress",
                               self.root)
            else:
                return True
            shutil.rmtree(self.root)
        for sub in ("provisional", "done/segment", "done/relabel"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return False

    def _read_plan(self) -> str | None:
        plan = self.read_plan()
        return None if plan is None else str(plan.get("fingerprint"))

    def read_plan(self) -> dict[str, Any] | None:
        """The recorded plan (``fingerprint``, ``layout``, ...), or None if absent or unreadable."""
        try:
            plan = json.loads(self.plan_file.read_text())
            return plan if isinstance(plan, dict) and plan.get("format") == FORMAT else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def write_plan(self, fingerprint: str, description: dict[str, Any]) -> None:
        """Record the plan (last, once its scratch arrays exist)."""
        plan = {"format": FORMAT, "fingerprint": fingerprint, **description}
        write_atomic(self.plan_file, json.dumps(plan, indent=1, default=str).encode())
