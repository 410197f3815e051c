"""Segmenters: one interface (``Segmenter``) for every task and method."""

from ._base import OutputKind, OutputSpec, Segmenter, Task
from ._classical import ClassicalISG

__all__ = ["ClassicalISG", "OutputKind", "OutputSpec", "Segmenter", "Task"]
