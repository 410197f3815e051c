"""Segmenters: one interface (``Segmenter``) for every task and method."""

from ._base import OutputKind, OutputSpec, Segmenter, Task
from ._classical import ClassicalISG, split_granules
from ._factory import UNetISGInstances, create_segmenter
from ._unet import UNetSegmenter

__all__ = [
    "ClassicalISG",
    "OutputKind",
    "OutputSpec",
    "Segmenter",
    "Task",
    "UNetISGInstances",
    "UNetSegmenter",
    "create_segmenter",
    "split_granules",
]
