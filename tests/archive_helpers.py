"""Segmenters for the archive tests (importable by worker processes).

- ``ThresholdCell`` / ``ThresholdMito``: fast stand-ins for the cell and mitochondria U-Nets
  (voxel-wise thresholds of the normalised image) that, like network segmenters, declare a model
  file (``model_files``).
- ``FlakyISG``: ``ClassicalISG`` (same labels) that, while the file ``armed`` exists, lets only the
  first block it meets through and fails every other block after a pause: a run that dies part-way
  with one block written, whose rerun (``armed`` removed) has the same plan.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from sxtdask.segmenters import ClassicalISG, OutputKind, OutputSpec, Segmenter, Task


@dataclasses.dataclass(frozen=True)
class ThresholdCell(Segmenter):
    """0 below ``low``, 1 (cytoplasm) up to ``high``, 2 (nucleus) above, of the normalised image."""

    model_path: str | None = None
    low: float = 0.25
    high: float = 0.45
    halo: tuple[int, int, int] = (0, 0, 0)
    task = Task.CELL
    outputs = (OutputSpec("cell", OutputKind.SEMANTIC, "uint8"),)

    @property
    def model_files(self) -> tuple[str, ...]:  # declared, as a network segmenter declares its checkpoint
        return () if self.model_path is None else (self.model_path,)

    def segment_block(self, block, stats, voxel_size_nm):
        x = stats.normalize(block)
        return {"cell": ((x > self.low).astype(np.uint8) + (x > self.high)).astype(np.uint8)}


@dataclasses.dataclass(frozen=True)
class ThresholdMito(Segmenter):
    """1 where the normalised image is above ``level``."""

    model_path: str | None = None
    level: float = 0.55
    halo: tuple[int, int, int] = (0, 0, 0)
    task = Task.MITO
    outputs = (OutputSpec("mito", OutputKind.SEMANTIC, "uint8"),)

    @property
    def model_files(self) -> tuple[str, ...]:
        return () if self.model_path is None else (self.model_path,)

    def segment_block(self, block, stats, voxel_size_nm):
        return {"mito": (stats.normalize(block) > self.level).astype(np.uint8)}


@dataclasses.dataclass(frozen=True)
class FlakyISG(ClassicalISG):
    """``ClassicalISG`` that fails all blocks but the first while ``armed`` exists."""

    armed: str = ""
    pause: float = 1.0

    def segment_block(self, block, stats, voxel_size_nm):
        if self.armed and os.path.exists(self.armed):
            try:
                os.close(os.open(self.armed + ".first", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                time.sleep(self.pause)
                raise RuntimeError("simulated crash") from None
        return super().segment_block(block, stats, voxel_size_nm)
