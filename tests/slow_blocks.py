"""Slow, counted segmentation for the resume and fault tests (importable by worker processes).

- ``SlowISG``: ``ClassicalISG`` that sleeps ``delay`` seconds per block and, when ``calls`` names
  a folder, leaves one file there per block it starts (so a test counts the blocks segmented,
  across processes).
- As a Dask worker preload (``DASK_DISTRIBUTED__WORKER__PRELOAD='["…/slow_blocks.py"]'``), its
  ``dask_setup`` makes every ``ClassicalISG`` on that worker behave so, from the environment:
  ``SXTDASK_TEST_BLOCK_DELAY`` (seconds) and ``SXTDASK_TEST_CALLS`` (folder). That reaches the
  workers a ``sxtdask segment`` subprocess starts. Importing the module changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

from sxtdask.segmenters import ClassicalISG


def _note_and_wait(calls: str | None, delay: float) -> None:
    if calls:
        (Path(calls) / uuid.uuid4().hex).touch()
    time.sleep(delay)


@dataclasses.dataclass(frozen=True)
class SlowISG(ClassicalISG):
    """``ClassicalISG`` (same labels) taking at least ``delay`` seconds per block."""

    delay: float = 0.0
    calls: str | None = None

    def segment_block(self, block, stats, voxel_size_nm):
        _note_and_wait(self.calls, self.delay)
        return super().segment_block(block, stats, voxel_size_nm)


def count_calls(folder: Path) -> int:
    """Blocks started by segmenters that note their calls in ``folder``."""
    return sum(1 for p in folder.iterdir() if not p.name.startswith("."))


def dask_setup(worker) -> None:
    """Worker preload hook: slow down and count ``ClassicalISG`` on this worker."""
    original = ClassicalISG.segment_block

    def segment_block(self, block, stats, voxel_size_nm):
        _note_and_wait(os.environ.get("SXTDASK_TEST_CALLS"),
                       float(os.environ.get("SXTDASK_TEST_BLOCK_DELAY", "0")))
        return original(self, block, stats, voxel_size_nm)

    ClassicalISG.segment_block = segment_block
