"""The segmenters that the ``segment``, ``archive`` and ``demo`` options choose, from the registry.

``--task`` values are :class:`sxtdask.segmenters.Task` words, ``--method`` values
:class:`~sxtdask.segmenters.Method` words; which methods each task offers and which is its
default come from :data:`sxtdask.segmenters.REGISTRY`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sxtdask.errors import ConfigError
from sxtdask.segmenters import REGISTRY, Task  # names only: no NumPy, Dask or torch for --help
from sxtdask.segmenters import make_segmenter as build

if TYPE_CHECKING:
    from sxtdask.segmenters import Segmenter

__all__ = ["METHOD_WORDS", "TASKS", "make_segmenter"]

#: ``--task`` words, in the registry's order.
TASKS: tuple[str, ...] = tuple(t.value for t in Task)
#: Options of ``--method unet3d`` alone (Biomedisa's post-processing thresholds).
_UNET3D_OPTIONS = ("clean", "fill")
#: ``--method`` words.
METHOD_WORDS: tuple[str, ...] = tuple(dict.fromkeys(e.method.value for e in REGISTRY))


def _models(values: list[str] | None, tasks: tuple[str, ...]) -> dict[str, Path | None]:
    """``--model`` values → a checkpoint per task (a bare PATH when there is one task)."""
    out: dict[str, Path | None] = dict.fromkeys(tasks)
    for value in values or []:
        task, sep, path = value.partition("=")
        if not sep and len(tasks) == 1:
            task, path = tasks[0], value
        elif task not in tasks:
            raise ConfigError(f"--model {value!r}: say which task it is for, as TASK=PATH "
                              f"(tasks: {', '.join(tasks)})")
        out[task] = Path(path)
    return out


def make_segmenter(args: argparse.Namespace) -> Segmenter:
    """The segmenter of the model options (``--task``, ``--method``, ``--model``, ``--device``,
    ``--batch-size``, ``--halo``, ``--clean``, ``--fill``): one task's, or a
    ``CombinedSegmenter`` of several.
    """
    models = _models(getattr(args, "model", None), args.task)
    method = getattr(args, "method", None)
    options = {k: v for k in _UNET3D_OPTIONS if (v := getattr(args, k, None)) is not None}
    if "fill" in options and method != "unet3d":
        raise ConfigError(f"--fill is an option of --method unet3d (Biomedisa's "
                          f"post-processing), not of --method {method or 'unet'}")
    if "clean" in options and (tuple(args.task) != ("cell",) or method == "classical"):
        raise ConfigError("--clean is an option of --task cell (methods unet, cascade and "
                          "unet3d)")
    seg = build(args.task, method, models=dict(models),
                device=args.device, batch_size=getattr(args, "batch_size", None),
                halo=getattr(args, "halo", None), options=options)
    from sxtdask.segmenters import rename_outputs

    return rename_outputs(seg, _names(getattr(args, "name", None), args.task, seg))


def _names(values: list[str] | None, tasks: tuple[str, ...], seg: Segmenter) -> dict[str, str]:
    """``--name`` values → {output name: label image name} (a bare NAME when there is one task)."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    by_task = {p.task.value: p for p in seg.parts}
    for value in values or []:
        task, sep, name = value.partition("=")
        if not sep and len(tasks) == 1:
            task, name = tasks[0], value
        elif task not in by_task:
            raise ConfigError(f"--name {value!r}: say which task it is for, as TASK=NAME "
                              f"(tasks: {', '.join(tasks)})")
        if task in seen:
            raise ConfigError(f"--name gives the task {task} two names")
        seen.add(task)
        outputs = by_task[task].outputs
        if len(outputs) != 1:  # every registered method writes one label image
            raise ConfigError(f"--name: the task {task} writes {len(outputs)} label images")
        out[outputs[0].name] = name.strip()
    return out
