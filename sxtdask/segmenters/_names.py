"""The names of what sxtdask segments and how: the vocabulary every layer above shares.

``Task`` values are the command line's ``--task`` words and the label images' defaults; ``Method``
values are ``--method`` words. Both are ``StrEnum``: ``Task.CELL == "cell"``, and
``Task("isg-instances")`` parses a command-line word. Which methods exist for which task is the
registry's table (``sxtdask.segmenters.REGISTRY``).
"""

from __future__ import annotations

import enum

__all__ = ["Method", "Task"]


class Task(enum.StrEnum):
    """What a segmenter finds (``sxtdask segment --task``)."""

    CELL = "cell"
    MITO = "mito"
    ISG = "isg"
    ISG_INSTANCES = "isg-instances"


class Method(enum.StrEnum):
    """How it is found (``sxtdask segment --method``)."""

    UNET = "unet"
    MASKRCNN = "maskrcnn"
    CLASSICAL = "classical"
    UNET3D = "unet3d"
    CASCADE = "cascade"
