"""The one registry of tasks and methods: which segmenter class does what, and under which names.

Every layer that names a task or a method reads this table: the command line (``--task``,
``--method`` and their defaults), :func:`create_segmenter` (the reference API's task names),
``sxtdask train`` (which networks can be trained), the archive and the run report. Adding a method
is one :class:`MethodEntry` here plus its class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, option
from ._names import Method, Task

if TYPE_CHECKING:
    from ._base import Segmenter

# The table names the methods' classes without importing them (they need NumPy, SciPy, Dask):
# a class is imported when a segmenter is made, so the command line reads the names cheaply.

__all__ = [
    "REGISTRY",
    "MethodEntry",
    "create_segmenter",
    "default_method",
    "entry",
    "make_segmenter",
    "methods_for",
    "trainable",
]


def _unet(task: Task) -> Callable[..., Segmenter]:
    def make(**options: Any) -> Segmenter:
        from ._unet import UNetSegmenter

        return UNetSegmenter(task=task, **options)

    return make


def _unet_instances(**options: Any) -> Segmenter:
    from ._unet import UNetSegmenter
    from ._unet_instances import UNetISGInstances

    unet_opts = {k: options.pop(k) for k in ("device", "batch_size", "threshold", "model_path")
                 if k in options}
    return UNetISGInstances(unet=UNetSegmenter(task=Task.ISG, **unet_opts), **options)


def _maskrcnn(**options: Any) -> Segmenter:
    from ._maskrcnn import MaskRCNNISG

    return MaskRCNNISG(**options)


def _unet3d(**options: Any) -> Segmenter:
    from ._unet3d import UNet3DSegmenter

    return UNet3DSegmenter(**options)


def _cascade(**options: Any) -> Segmenter:
    from ._cascade import CascadeSegmenter

    return CascadeSegmenter(**options)


def _classical(**options: Any) -> Segmenter:
    from ._classical import ClassicalISG

    return ClassicalISG(**options)


@dataclass(frozen=True)
class MethodEntry:
    """One way to do one task.

    Attributes
    ----------
    task : Task
    method : Method
    make : callable
        ``make(**options)`` → an unloaded segmenter (options are the class's fields).
    reference : str
        The reference API's task name (``create_segmenter("sxt", task=reference)``).
    default : bool
        The task's default method.
    network : str or None
        What ``sxtdask train --task`` calls the network it trains for this method (None: no
        network, or none sxtdask trains).
    needs_model : bool
        A checkpoint is required (no bundled weights).
    summary : str
        One line for help texts.
    """

    task: Task
    method: Method
    make: Callable[..., Segmenter]
    reference: str
    default: bool
    network: str | None
    needs_model: bool
    summary: str


REGISTRY: tuple[MethodEntry, ...] = (
    MethodEntry(Task.CELL, Method.UNET, _unet(Task.CELL), "cell", True, "cell", False,
                "2-D U-Net: background, cytoplasm, nucleus"),
    MethodEntry(Task.CELL, Method.CASCADE, _cascade, "cell_cascade", False, "cell", False,
                "NCXT's 3-D U-Net cascade: binned stage 1, full-resolution stage 2"),
    MethodEntry(Task.CELL, Method.UNET3D, _unet3d, "cell_unet3d", False, "cell", True,
                "Biomedisa's 3-D U-Net (ACSeg's .h5) on a 256³ grid"),
    MethodEntry(Task.MITO, Method.UNET, _unet(Task.MITO), "mito", True, "mito", False,
                "2-D U-Net: mitochondria mask"),
    MethodEntry(Task.ISG, Method.UNET, _unet(Task.ISG), "isg", True, "isg", False,
                "2-D U-Net: granule mask"),
    MethodEntry(Task.ISG_INSTANCES, Method.UNET, _unet_instances, "isg_instances", True, "isg",
                False, "ISG U-Net probability, then a seeded watershed split"),
    MethodEntry(Task.ISG_INSTANCES, Method.MASKRCNN, _maskrcnn, "isg_maskrcnn", False,
                "isg-maskrcnn", True, "tiled Mask R-CNN, linked across slices"),
    MethodEntry(Task.ISG_INSTANCES, Method.CLASSICAL, _classical, "isg_classical", False, None,
                False, "smoothing, a global threshold and a seeded watershed (no network)"),
)


def _task(task: Task | str) -> Task:
    try:
        return Task(task)
    except ValueError:
        raise ConfigError(f"task {task!r} is not one of {', '.join(Task)}") from None


def methods_for(task: Task | str) -> tuple[Method, ...]:
    """The methods registered for ``task``, the default first."""
    t = _task(task)
    rows = sorted((e for e in REGISTRY if e.task is t), key=lambda e: not e.default)
    return tuple(e.method for e in rows)


def default_method(task: Task | str) -> Method:
    """The task's default method."""
    return methods_for(task)[0]


def entry(task: Task | str, method: Method | str | None = None) -> MethodEntry:
    """The registry row of ``task`` done by ``method`` (default: the task's default method)."""
    t = _task(task)
    m = default_method(t) if method is None else method
    for e in REGISTRY:
        if e.task is t and e.method == m:
            return e
    raise ConfigError(f"method {str(m)!r} is not available for task {t.value!r} (available: "
                      f"{', '.join(methods_for(t))})")


def trainable() -> tuple[str, ...]:
    """The networks ``sxtdask train --task`` trains, in registry order."""
    return tuple(dict.fromkeys(e.network for e in REGISTRY if e.network))


def make_segmenter(
    tasks: Task | str | Sequence[Task | str], method: Method | str | None = None, *,
    models: dict[str, str | Path | None] | None = None, device: str = "auto",
    batch_size: int | None = None, halo: tuple[int, int, int] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Segmenter:
    """Segmenters for one or several tasks, their models loaded (several share each chunk read).

    Parameters
    ----------
    tasks : Task or str, or a sequence of them
    method : Method or str, optional
        For a single task (default: each task's default method).
    models : dict of task → path, optional
        Checkpoints; a network task without one uses the bundled weights.
    device : str
        ``auto``, ``cpu`` or ``cuda`` for network methods.
    batch_size : int, optional
        Slices (U-Nets) or tiles (Mask R-CNN) per forward pass; default the class's.
    halo : (hz, hy, hx), optional
        Voxels read around each block (default the method's).
    options : mapping, optional
        Further fields of the method's class, set before its model is loaded (e.g. unet3d's
        ``clean`` and ``fill``); with several tasks, each must have them.

    Raises
    ------
    ConfigError
        An unknown task or method, ``method`` with several tasks, a model for a method that has
        none, a missing required model, or an option the method does not have.
    """
    names = [_task(t) for t in ([tasks] if isinstance(tasks, str) else tasks)]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"tasks must be distinct values of {', '.join(Task)}")
    if method is not None and len(names) > 1:
        raise ConfigError(f"{option('method', '--method')} applies to one task; with several, each uses its "
                          "default")
    given = {_task(k): v for k, v in (models or {}).items() if v is not None}
    extra = sorted(t.value for t in set(given) - set(names))
    if extra:
        raise ConfigError(f"a model is given for {', '.join(extra)}, which is not among the tasks "
                          f"({', '.join(t.value for t in names)})")
    parts = [_one(entry(t, method), given.get(t), device=device, batch_size=batch_size, halo=halo,
                  extra=dict(options or {})) for t in names]
    if len(parts) == 1:
        return parts[0]
    from ._combined import CombinedSegmenter

    return CombinedSegmenter(tuple(parts))


def _one(row: MethodEntry, model: str | Path | None, *, device: str, batch_size: int | None,
         halo: tuple[int, int, int] | None, extra: dict[str, Any] | None = None) -> Segmenter:
    options: dict[str, Any] = {}
    if row.network is not None:
        options["device"] = device
        if batch_size is not None:
            if batch_size < 1:
                raise ConfigError(f"{option('batch_size', '--batch-size')} ({batch_size}) must be at least 1")
            options["batch_size"] = batch_size
    elif model is not None:
        raise ConfigError(f"{option('a model', '--model')} is for network methods; the "
                          f"{row.method.value} method has no model")
    seg = row.make(**options)
    if extra:
        known = {f.name for f in dataclasses.fields(seg)} - {"task", "model_path", "device",
                                                            "batch_size", "halo"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ConfigError(f"the {row.method.value} method of the {row.task.value} task has no "
                              f"option {', '.join(unknown)}")
        seg._update(**extra)
    if row.network is not None:
        seg.load_model(model)
    if halo is not None:
        from ._unet import UNetSegmenter

        z = max(halo[0], seg.context) if isinstance(seg, UNetSegmenter) else halo[0]
        seg._update(halo=(z, *halo[1:]))  # a U-Net's slice context stays inside its z halo
    return seg


def create_segmenter(modality: str = "sxt", task: str = "cell", method: str | None = None,
                     **options: Any) -> Segmenter:
    """A segmenter, as the reference API makes one.

    ``task`` is a reference name (``cell``, ``mito``, ``isg``, ``isg_instances``,
    ``isg_maskrcnn``, ``isg_classical``) or a task with an optional ``method``
    (``task="isg-instances", method="maskrcnn"``). ``options`` go to the segmenter (``device``,
    ``batch_size``, ``threshold``, ...). Network segmenters need ``.load_model()`` (the bundled
    weights) or ``.load_model(path)`` before ``.predict(volume)``; ``load_model`` loads in place
    and returns the segmenter.

    Examples
    --------
    >>> seg = create_segmenter("sxt", task="isg_classical")
    >>> seg.task.value, seg.method.value
    ('isg-instances', 'classical')
    """
    if modality != "sxt":
        raise ConfigError(f"modality {modality!r} is not supported (only 'sxt')")
    for row in REGISTRY:
        if row.reference == task and method in (None, row.method):
            return row.make(**options)
    names = ", ".join(e.reference for e in REGISTRY)
    if task in set(Task):
        return entry(task, method).make(**options)
    named = next((e for e in REGISTRY if e.reference == task), None)
    if named is not None:
        raise ConfigError(f"task {task!r} is done by the {named.method.value} method, not "
                          f"{method!r}; for another method, name the task ({named.task.value!r}) "
                          "with method=")
    raise ConfigError(f"task {task!r} is not one of {names} (or {', '.join(Task)} with a method)")
