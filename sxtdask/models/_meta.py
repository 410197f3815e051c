"""The metadata of sxtdask checkpoints: every field sxtdask reads is checked before it is used.

An sxtdask checkpoint's ``meta`` dict is JSON-like (``save_checkpoint`` writes it so), but a file
may have been edited, damaged or crafted, so :func:`check_meta` checks it as a whole before any
field is read: its structure (only JSON values, bounded in depth and size), then each field sxtdask
knows (:data:`RULES`: type and range), then the fields that must agree with each other, and the
architecture fields a U-Net checkpoint must record. Unknown fields are kept and not checked beyond
their structure. Every failure is one :class:`CheckpointError` line naming the file, the field,
its rule and the value found, e.g. ``model.pt: metadata 'preprocessing.std' must be a positive
finite number, not -1.0``.

The size limits (:data:`MAX_WIDTH`, ...) bound the networks a file can ask for, so an absurd
value is refused before anything is built. This module does not import torch.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputError

__all__ = [
    "MAX_CLASSES",
    "MAX_IN_CHANNELS",
    "MAX_WIDTH",
    "RULES",
    "CheckpointError",
    "check_meta",
    "show",
]

#: Largest U-Net base width sxtdask builds (the reference is 64; the deepest block has 16×).
MAX_WIDTH = 256
#: Most input channels (a slice context of ``c`` needs ``2c + 1``).
MAX_IN_CHANNELS = 64
#: Most output classes of a network.
MAX_CLASSES = 256
_MAX_CONTEXT = 16
_MAX_SIZE = 8192  # pixels: Mask R-CNN resizes, U-Net resizes
_MAX_DEPTH = 16  # nesting of the metadata
_MAX_NODES = 100_000  # values in the metadata, all levels
_MAX_TEXT = 200  # characters of a known text field

_KINDS = ("cell", "mito", "isg")
_UNET_ARCHITECTURES = {"CellNucleusUNet": ("cell",), "UNet": ("mito", "isg")}
_PREPROCESSING = ("reference", "percentile", "lac")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")


class CheckpointError(InputError):
    """A checkpoint file is missing, not a weights-only PyTorch file, or does not fit the model."""


# --------------------------------------------------------------------------------------- showing

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 40, 40
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 4


def show(value: object) -> str:
    """A short one-line rendering of a (possibly hostile) value for an error message.

    Numbers, None and short strings are shown as ``repr`` shows them; anything else is shortened
    (at most two levels, a few items, 40 characters a string) and followed by its type, e.g.
    ``'8' (a str)``. Tensors are described by dtype and shape, never printed.
    """
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**12 else (
            f"an integer of {value.bit_length()} bits")
        return text if not isinstance(value, bool) else f"{text} (a bool)"
    if type(value).__name__ in ("Tensor", "Parameter") and hasattr(value, "dtype"):
        shape = list(getattr(value, "shape", ()))
        return f"a {getattr(value, 'dtype', '?')} tensor of shape {shape}"
    text = " ".join(_repr.repr(value).split())
    return f"{text[:80]} (a {type(value).__name__})"


# --------------------------------------------------------------------------------------- rules

#: A rule: what it asks for (for the message) and a test that a value meets it.
Rule = tuple[str, Callable[[Any], bool]]


def _is_int(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool); ints beyond 10**15 count as absurd, not finite."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= 10**15
    return isinstance(value, float) and math.isfinite(value)


def _integer(lo: int, hi: int) -> Rule:
    return f"an integer from {lo} to {hi}", lambda v: _is_int(v, lo, hi)


def _text(what: str = "a non-empty one-line string") -> Rule:
    return (f"{what} of at most {_MAX_TEXT} characters",
            lambda v: isinstance(v, str) and 0 < len(v) <= _MAX_TEXT and v.isprintable())


def _choice(values: tuple[str, ...]) -> Rule:
    return "one of " + ", ".join(map(repr, values)), lambda v: isinstance(v, str) and v in values


def _positive() -> Rule:
    return "a positive finite number", lambda v: _is_number(v) and v > 0


def _numbers(what: str, test: Callable[[list[float]], bool], count: int | None = None) -> Rule:
    def ok(v: object) -> bool:
        if not isinstance(v, (list, tuple)) or (count is not None and len(v) != count):
            return False
        return all(_is_number(x) for x in v) and len(v) > 0 and test([float(x) for x in v])

    return what, ok


def _optional(rule: Rule) -> Rule:
    return f"{rule[0]} or None", lambda v: v is None or rule[1](v)


def _texts(what: str, distinct: bool = False) -> Rule:
    def ok(v: object) -> bool:
        if not isinstance(v, (list, tuple)) or not all(
                isinstance(s, str) and 0 < len(s) <= _MAX_TEXT and s.isprintable() for s in v):
            return False
        return not distinct or len(set(v)) == len(v)

    return what, ok


def _mapping() -> Rule:
    return "a mapping", lambda v: isinstance(v, Mapping)


def _mean(v: object) -> bool:
    return _is_number(v) or (isinstance(v, (list, tuple)) and 0 < len(v) <= MAX_IN_CHANNELS
                             and all(_is_number(x) for x in v))


def _std(v: object) -> bool:
    values = list(v) if isinstance(v, (list, tuple)) else [v]
    return _mean(v) and all(isinstance(x, (int, float)) and x > 0 for x in values)


#: Every metadata field sxtdask reads, by dotted path, with its rule. A field may be absent
#: (see :func:`check_meta` for those a U-Net checkpoint must record); present, it must obey.
RULES: dict[str, Rule] = {
    "architecture": ("a class name such as 'UNet'",
                     lambda v: isinstance(v, str) and bool(_IDENTIFIER.fullmatch(v))),
    "kind": _choice(_KINDS),
    "width": _integer(1, MAX_WIDTH),
    "in_channels": _integer(1, MAX_IN_CHANNELS),
    "n_classes": _integer(1, MAX_CLASSES),
    "num_classes": _integer(2, MAX_CLASSES),
    "task": _text(),
    "classes": _texts("a list of distinct non-empty one-line strings", distinct=True),
    "threshold": ("a number strictly between 0 and 1",
                  lambda v: _is_number(v) and 0 < v < 1),
    "voxel_size_nm": _optional(_numbers("three positive finite numbers (z, y, x), nanometres",
                                        lambda xs: min(xs) > 0, count=3)),
    "epoch": _integer(0, 10**9),
    "patch": _integer(1, 10**9),
    "stored_as": _choice(("float32", "float16", "bfloat16", "float64")),
    "trained_by": _text(),
    "train_data": _texts("a list of one-line strings"),
    "val_data": _texts("a list of one-line strings"),
    "metrics": _mapping(),
    "config": _mapping(),
    "preprocessing": _mapping(),
    "preprocessing.name": _choice(_PREPROCESSING),
    "preprocessing.context": _integer(0, _MAX_CONTEXT),
    "preprocessing.percentiles": _numbers("two numbers 0 <= low < high <= 100",
                                          lambda xs: 0 <= xs[0] < xs[1] <= 100, count=2),
    "preprocessing.resize": _optional(("two integers (height, width) from 1 to "
                                       f"{_MAX_SIZE}", lambda v: isinstance(v, (list, tuple))
                                       and len(v) == 2
                                       and all(_is_int(x, 1, _MAX_SIZE) for x in v))),
    "preprocessing.factor": _positive(),
    "preprocessing.clip": _numbers("two finite numbers low < high",
                                   lambda xs: xs[0] < xs[1], count=2),
    "preprocessing.channels": _integer(1, MAX_IN_CHANNELS),
    "preprocessing.mean": ("a finite number or a list of them (one per channel)", _mean),
    "preprocessing.std": ("a positive finite number or a list of them (one per channel)", _std),
    "model": _mapping(),
    "model.builder": _text(),
    "model.num_classes": _integer(2, MAX_CLASSES),
    "model.min_size": _integer(1, _MAX_SIZE),
    "model.max_size": _optional(_integer(1, 2 * _MAX_SIZE)),
}


# --------------------------------------------------------------------------------------- checking


def check_meta(meta: object, source: str) -> dict[str, Any]:
    """Check the ``meta`` of an sxtdask checkpoint and return it (unchanged, as a dict).

    Parameters
    ----------
    meta : object
        What the file holds under ``meta``.
    source : str
        The file, for the messages.

    Returns
    -------
    dict
        ``meta`` itself, every known field obeying its rule (:data:`RULES`).

    Raises
    ------
    CheckpointError
        One line naming the file, the field, the rule and the value: ``meta`` is not a mapping
        with string keys holding only JSON values (at most 16 levels, 100 000 values), a field
        breaks its rule, two fields disagree, or a U-Net checkpoint lacks ``kind``, ``width``,
        ``in_channels`` or ``n_classes``.
    """
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: its 'meta' must be a dict, not {show(meta)}")
    _check_structure(meta, source)
    for path, (rule, ok) in RULES.items():
        found, value = _lookup(meta, path)
        if found and not ok(value):
            raise CheckpointError(f"{source}: metadata {path!r} must be {rule}, not {show(value)}")
    _check_architecture(meta, source)
    _check_agreement(meta, source)
    return meta


def _lookup(meta: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted field; absent when a parent is absent (or not a mapping)."""
    node: Any = meta
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_structure(meta: dict[str, Any], source: str) -> None:
    """Only JSON values (tuples allowed), string keys, bounded depth and size; no recursion."""
    stack: list[tuple[str, object, int]] = [("", meta, 0)]
    seen = 0
    while stack:
        path, value, depth = stack.pop()
        seen += 1
        if seen > _MAX_NODES or depth > _MAX_DEPTH:
            what = f"{_MAX_NODES} values" if seen > _MAX_NODES else f"{_MAX_DEPTH} levels"
            raise CheckpointError(f"{source}: its metadata exceeds {what} (near {path!r})")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise CheckpointError(f"{source}: metadata {path or 'meta'!r} has a key "
                                          f"{show(key)}; keys must be strings")
                stack.append((f"{path}.{key}" if path else key, item, depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
        elif value is not None and not isinstance(value, (str, int, float)):
            raise CheckpointError(f"{source}: metadata {path!r} must hold only JSON values "
                                  f"(numbers, strings, lists, dicts), not {show(value)}")


def _check_architecture(meta: Mapping[str, Any], source: str) -> None:
    """A U-Net checkpoint records its kind and sizes, and its kind fits its class."""
    kinds = _UNET_ARCHITECTURES.get(meta.get("architecture", ""))
    if kinds is None:
        return
    for key in ("kind", "width", "in_channels", "n_classes"):
        if key not in meta:
            raise CheckpointError(f"{source}: metadata {key!r} is missing (an sxtdask "
                                  f"{meta['architecture']} checkpoint records it)")
    if meta["kind"] not in kinds:
        raise CheckpointError(f"{source}: metadata 'kind' must be "
                              f"{' or '.join(map(repr, kinds))} for architecture "
                              f"{meta['architecture']!r}, not {meta['kind']!r}")


def _check_agreement(meta: Mapping[str, Any], source: str) -> None:
    """Fields that describe the same thing twice must agree."""
    model = meta.get("model", {})
    counts = {key: value for key, value in (
        ("n_classes", meta.get("n_classes")), ("num_classes", meta.get("num_classes")),
        ("model.num_classes", model.get("num_classes"))) if value is not None}
    if len(set(counts.values())) > 1:
        said = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise CheckpointError(f"{source}: metadata class counts disagree ({said})")
    if "classes" in meta and counts and len(meta["classes"]) != next(iter(counts.values())):
        key, count = next(iter(counts.items()))
        raise CheckpointError(f"{source}: metadata 'classes' must name {count} classes "
                              f"({key}), not {len(meta['classes'])}")
    low, high = model.get("min_size"), model.get("max_size")
    if low is not None and high is not None and high < low:
        raise CheckpointError(f"{source}: metadata 'model.max_size' ({high}) must be at least "
                              f"'model.min_size' ({low})")
    context = meta.get("preprocessing", {}).get("context", 0)
    channels = meta.get("in_channels")
    if context and channels is not None and channels != 2 * context + 1:
        raise CheckpointError(f"{source}: metadata 'preprocessing.context' ({context}) needs "
                              f"in_channels {2 * context + 1}, not {channels}")
