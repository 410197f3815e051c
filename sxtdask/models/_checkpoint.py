"""Checkpoint files: weights-only loading, shape-checked loading into a model, atomic saving.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)`` and nothing
else, so a file that needs arbitrary code to unpickle is refused before any of it runs. Accepted
layouts:

- a bare state dict (``torch.save(model.state_dict(), path)``), as iPA ships its U-Nets;
- a dict wrapping one under ``state_dict``, ``model`` or ``model_state_dict`` (training loops);
- sxtdask's own format, ``{"format": "sxtdask-checkpoint", "version": 1, "meta": {...},
  "state_dict": {...}}``, whose ``meta`` is JSON-able (task, width, channels, preprocessing, ...).

Everything is checked before it is used: a zip's records against their CRCs (PyTorch checks
none), every state dict entry (a dense, finite float or integer CPU tensor, no expanded view),
and an sxtdask checkpoint's ``meta`` field by field (:func:`._meta.check_meta`). Every failure is
one :class:`CheckpointError` line naming the file.

A ``module.`` prefix on every key (``torch.nn.DataParallel``) is removed. ``infer_config`` tells
which iPA U-Net a state dict holds (for the hints of a file that does not fit, and for
``_infer.load_unet``, which imports it from here: this module imports nothing of ``_infer``).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._fs import atomic_file, check_new_path
from ..errors import ConfigError, OutputError
from ._kinds import ModelKind, UNetConfig
from ._meta import MAX_CLASSES, MAX_IN_CHANNELS, MAX_WIDTH, CheckpointError, check_meta, show

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "load_state_dict_file",
    "load_weights",
    "read_checkpoint_meta",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT = "sxtdask-checkpoint"
VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIX = "module."
_SHOW = 3  # keys named per kind of mismatch
# (first conv, last conv, deepest block's first conv) per U-Net family
_CELL_KEYS = ("conv1.conv.0.weight", "Conv.weight", "conv5.conv.0.weight")
_UNET_KEYS = ("inc.double_conv.0.weight", "outc.conv.weight",
              "down4.maxpool_conv.1.double_conv.0.weight")

_MAX_KEY = 300  # characters of a state dict key
_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8,
                     torch.int8, torch.int16, torch.int32, torch.int64})

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------- reading


def load_state_dict_file(path: str | os.PathLike[str]) -> StateDict:
    """The state dict held in a checkpoint file, loaded weights-only onto the CPU.

    Parameters
    ----------
    path : str or path-like
        A ``.pth``/``.pt`` file: a bare state dict, a dict wrapping one (``state_dict``,
        ``model``, ``model_state_dict``), or sxtdask's own format.

    Returns
    -------
    dict of str → Tensor
        Parameter and buffer names (without a DataParallel ``module.`` prefix) → CPU tensors.

    Raises
    ------
    CheckpointError
        The file is missing, is not a PyTorch file, holds no state dict, or needs arbitrary code
        to unpickle (refused; nothing in it is run).
    """
    state, _ = read_checkpoint(path)
    return state


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``meta`` dict of an sxtdask checkpoint; None for any other (valid) checkpoint."""
    _, meta = read_checkpoint(path)
    return meta


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[StateDict, dict[str, Any] | None]:
    """The state dict and (for sxtdask's format) the metadata of a checkpoint, in one read."""
    return unwrap_checkpoint(_torch_load(Path(path)), str(path))


def _torch_load(path: Path) -> object:
    _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(f"{path} cannot be read (permission denied)") from None
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() and not _is_npy(path):
            raise CheckpointError(_refusal(path, str(exc))) from None
        raise CheckpointError(_not_torch(path, exc)) from None
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds on foreign files)
        raise CheckpointError(_not_torch(path, exc)) from None


def _check_archive(path: Path) -> None:
    """Refuse a damaged or foreign zip before PyTorch reads it (PyTorch checks no CRC).

    PyTorch's zip reader reads tensor data without checking its CRC, so a flipped byte would
    load as a different weight; here every record's CRC is checked, and compressed records
    (which PyTorch never writes, and which could expand without bound) are refused.
    """
    try:
        if not zipfile.is_zipfile(path):
            return  # not a zip (or unreadable): torch.load says which
        with zipfile.ZipFile(path) as archive:
            packed = next((i.filename for i in archive.infolist()
                           if i.compress_type != zipfile.ZIP_STORED), None)
            if packed is not None:
                raise CheckpointError(
                    f"{path} is not a readable PyTorch checkpoint: its zip record "
                    f"{show(packed)} is compressed (PyTorch stores records uncompressed)")
            bad = archive.testzip()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  (zipfile raises many kinds on damaged archives)
        raise CheckpointError(f"{path} is a damaged zip archive, not a readable PyTorch "
                              f"checkpoint ({_reason(exc)})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: its record {show(bad)} fails its CRC check "
                              "(a truncated or corrupted copy?)")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:120] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _refusal(path: Path, text: str) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        need = f"it needs {found.group(1)[:100]}"
    else:
        op = re.search(r"Unsupported operand (\d+)", text)
        need = (f"pickle operand {op.group(1)}" if op
                else "objects other than tensors and plain containers")
    return (f"{path} is not a weights-only checkpoint ({need}): unpickling it could run "
            "arbitrary code, so it was refused and nothing in it was run; if you trust it, "
            "re-save only its tensors with torch.save(state_dict, path)")


def _not_torch(path: Path, exc: BaseException) -> str:
    if _is_npy(path):
        return f"{path} is a NumPy .npy file, not a PyTorch checkpoint"
    return f"{path} is not a readable PyTorch checkpoint ({_reason(exc)})"


def _is_npy(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def unwrap_checkpoint(obj: object, source: str) -> tuple[StateDict, dict[str, Any] | None]:
    """Find the state dict (and sxtdask metadata) in a loaded checkpoint object.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned, or a state dict given in memory.
    source : str
        The file (or ``"the state dict"``), for error messages.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    meta: dict[str, Any] | None = None
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt == FORMAT:
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
            raise CheckpointError(f"{source} is sxtdask checkpoint format version "
                                  f"{show(version)}; this sxtdask reads version {VERSION}")
        if not isinstance(obj.get("meta"), dict):
            raise CheckpointError(
                f"{source} has no 'meta' dict although it is an sxtdask checkpoint")
        meta = check_meta(obj["meta"], source)
        inner = obj.get("state_dict")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = obj
    else:
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = ", ".join(k if isinstance(k, str) and k.isprintable() and len(k) <= 40
                             else show(k) for k in list(obj)[:8]) or "none"
            raise CheckpointError(f"{source} holds no state dict: its top-level keys ({keys}) "
                                  f"include none of {', '.join(_WRAPPER_KEYS)}")
        inner = obj[key]
    return _checked_state(inner, source), meta


def _checked_state(inner: object, source: str) -> StateDict:
    """Every entry a printable name → a dense, finite CPU tensor of a float or integer dtype
    whose elements its storage holds (no expanded views that would grow when copied).
    """
    if not isinstance(inner, Mapping) or not inner:
        raise CheckpointError(f"{source} holds an empty or missing state dict")
    for key, value in inner.items():
        if not isinstance(key, str) or not key.isprintable() or not 0 < len(key) <= _MAX_KEY:
            raise CheckpointError(f"{source}: state dict key {show(key)} is not a parameter "
                                  f"name (printable text of 1 to {_MAX_KEY} characters)")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: state dict entry {key!r} is a "
                                  f"{type(value).__name__}, not a tensor")
        problem = _tensor_problem(value)
        if problem:
            raise CheckpointError(f"{source}: state dict entry {key!r} {problem}")
    return strip_module_prefix(inner)


def _tensor_problem(t: torch.Tensor) -> str:
    """Why a loaded tensor cannot be a weight, or ``""``."""
    if t.layout is not torch.strided or t.is_quantized:
        return f"is a {t.layout} tensor; checkpoints hold dense tensors"
    if t.device.type != "cpu":
        return f"is on the {t.device.type} device and holds no data"
    if t.dtype not in _DTYPES:
        return f"has dtype {t.dtype}; weights are floating-point or integer tensors"
    if t.numel() * t.element_size() > t.untyped_storage().nbytes():
        return (f"claims shape {list(t.shape)} from a storage of "
                f"{t.untyped_storage().nbytes()} bytes (an expanded view)")
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        return "holds NaN or infinite values"
    return ""


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove DataParallel's ``module.`` from every key, when every key has it."""
    if state and all(k.startswith(_PREFIX) for k in state):
        return {k[len(_PREFIX):]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------------------- loading


def load_weights(model: nn.Module, path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
                 *, strict: bool = True) -> nn.Module:
    """Load a checkpoint's weights into ``model``, checking every name and shape first.

    Parameters
    ----------
    model : torch.nn.Module
        Possibly wrapped in ``DataParallel`` / ``DistributedDataParallel``.
    path_or_state_dict : path or mapping
        A checkpoint file (see :func:`load_state_dict_file`) or a state dict in memory (bare or
        wrapped; a ``module.`` prefix is removed).
    strict : bool
        If True, every key of the model must be in the file and every key of the file in the
        model. Mis-shaped keys are an error either way.

    Returns
    -------
    torch.nn.Module
        ``model`` itself, with the weights loaded (its mode is unchanged).

    Raises
    ------
    CheckpointError
        Naming the missing, unexpected and mis-shaped keys (the first few of each, and counts).
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "the state dict"
        state, _ = unwrap_checkpoint(path_or_state_dict, source)
    else:
        source = str(path_or_state_dict)
        state = load_state_dict_file(path_or_state_dict)
    target = _unwrap_parallel(model)
    check_fit(target, state, source, strict=strict)
    target.load_state_dict(state, strict=strict)
    logger.info("loaded %d tensors from %s into %s", len(state), source, describe_model(target))
    return model


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, *,
              strict: bool = True) -> None:
    """Raise :class:`CheckpointError` unless ``state`` fits ``model`` (names, then shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    mistyped = [k for k in own if k in state and k not in misshaped
                and own[k].is_floating_point() != state[k].is_floating_point()]
    if misshaped or mistyped or (strict and (missing or unexpected)):
        parts = [_listed(len(missing), "missing", missing),
                 _listed(len(unexpected), "unexpected", unexpected),
                 _listed(len(misshaped), "mis-shaped",
                         [f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
                          for k in misshaped])]
        if mistyped:
            parts.append(_listed(len(mistyped), "mis-typed",
                                 [f"{k}: file {state[k].dtype} vs model {own[k].dtype}"
                                  for k in mistyped]))
        raise CheckpointError(f"{source} does not fit {describe_model(model)}: "
                              + ", ".join(parts) + _hint(model, state))
    if missing or unexpected:
        logger.warning("%s: %d missing and %d unexpected keys ignored (strict=False)",
                       source, len(missing), len(unexpected))


def _listed(count: int, what: str, items: list[str]) -> str:
    if not count:
        return f"0 {what}"
    shown = ", ".join(items[:_SHOW]) + (", …" if count > _SHOW else "")
    return f"{count} {what} ({shown})"


def _hint(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Name the U-Net the file holds, when it is one and differs from ``model``."""
    from ._build import unet_config_of

    try:
        found = infer_config(state, "")
    except CheckpointError:
        return ""
    own = unet_config_of(model)
    if own is not None and (own.width, own.in_channels, own.n_classes) == (
            found.width, found.in_channels, found.n_classes):
        return ""
    return (f"; it holds a {found.kind.value} U-Net with width={found.width}, "
            f"in_channels={found.in_channels}, n_classes={found.n_classes} (load_unet rebuilds it)")


def infer_config(state: Mapping[str, torch.Tensor], source: str,
                 kind: ModelKind | None = None) -> UNetConfig:
    """:func:`~sxtdask.models.infer_unet_config` as a :class:`UNetConfig`; ``kind`` settles mito vs ISG."""
    family: tuple[ModelKind, ...]
    if _CELL_KEYS[0] in state and _CELL_KEYS[1] in state:
        keys, family = _CELL_KEYS, (ModelKind.CELL_NUCLEUS,)
    elif _UNET_KEYS[0] in state and _UNET_KEYS[1] in state:
        keys, family = _UNET_KEYS, (ModelKind.MITO, ModelKind.ISG)
        if "up1.up.weight" not in state:
            raise CheckpointError(f"{source} holds a U-Net with bilinear upsampling (no "
                                  "up1.up.weight); only the transposed-conv variant is supported")
    else:
        first = ", ".join(list(state)[:3])[:200]
        raise CheckpointError(
            f"{source} is not an iPA U-Net state dict: it has neither {_CELL_KEYS[0]} + "
            f"{_CELL_KEYS[1]} (cell/nucleus) nor {_UNET_KEYS[0]} + {_UNET_KEYS[1]} (mito/ISG); "
            f"first keys: {first}")
    head, tail, deep = (state.get(k) for k in keys)
    if head is None or tail is None or head.ndim != 4 or tail.ndim != 4:
        raise CheckpointError(f"{source}: {keys[0]} and {keys[1]} must be 4-d conv weights")
    width, in_channels, n_classes = int(head.shape[0]), int(head.shape[1]), int(tail.shape[0])
    for name, value, top in (("width", width, MAX_WIDTH), ("in_channels", in_channels,
                             MAX_IN_CHANNELS), ("n_classes", n_classes, MAX_CLASSES)):
        if not 1 <= value <= top:
            raise CheckpointError(f"{source}: its weights give {name}={value}; sxtdask builds "
                                  f"U-Nets with {name} from 1 to {top}")
    if deep is None or deep.ndim != 4 or int(deep.shape[0]) != 16 * width:
        found = "missing" if deep is None else f"{int(deep.shape[0])} channels"
        raise CheckpointError(f"{source}: the deepest block {keys[2]} is {found}; a U-Net of "
                              f"width {width} has {16 * width} there")
    if kind is not None and kind not in family:
        raise CheckpointError(f"{source} holds a {family[0].value} U-Net, not a {kind.value} one")
    if kind is None:
        kind = family[0] if len(family) == 1 else (
            ModelKind.MITO if in_channels == 3 else ModelKind.ISG)
    return UNetConfig(kind, width, in_channels, n_classes)


def describe_model(model: nn.Module) -> str:
    """``UNet(width=64, in_channels=1, n_classes=2)`` for sxtdask's U-Nets, else the class name."""
    from ._build import unet_config_of

    config = unet_config_of(model)
    name = type(model).__name__
    if config is None:
        return name
    return (f"{name}(width={config.width}, in_channels={config.in_channels}, "
            f"n_classes={config.n_classes})")


def _unwrap_parallel(model: nn.Module) -> nn.Module:
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, parallel) else model


# --------------------------------------------------------------------------------------- saving


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and JSON-able metadata in sxtdask's format, atomically.

    The file is written to a temporary name beside ``path`` and renamed over it, so ``path`` is
    either the old file or the complete new one. An existing file is replaced.

    Parameters
    ----------
    path : str or path-like
        Destination; its folder must exist.
    model : torch.nn.Module
        Weights are taken from ``model.state_dict()`` (unwrapped from DataParallel), on the CPU.
    meta : mapping, optional
        JSON-able metadata (``task``, ``preprocessing``, ...). For sxtdask's U-Nets,
        ``architecture``, ``kind``, ``width``, ``in_channels`` and ``n_classes`` are added from the
        model; a given value that contradicts the model is an error.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ConfigError
        ``meta`` is not JSON-able or contradicts the model.
    OutputError
        The folder does not exist or cannot be written.
    """
    path = Path(path)
    target = _unwrap_parallel(model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": checkpoint_meta(target, meta or {}),
        "state_dict": {k: v.detach().cpu() for k, v in target.state_dict().items()},
    }
    _atomic_save(payload, path)
    logger.info("saved %s to %s", describe_model(target), path)
    return path


def checkpoint_meta(model: nn.Module, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` made JSON-able, with the model's architecture fields added (and checked)."""
    from ._build import unet_config_of

    given = _jsonable(meta)
    config = unet_config_of(model)
    if config is None:
        return {"architecture": type(model).__name__, **given}
    auto: dict[str, Any] = {"architecture": type(model).__name__, "width": config.width,
                            "in_channels": config.in_channels, "n_classes": config.n_classes}
    kind_set = getattr(model, "kind", None) is not None
    if kind_set or "kind" not in given:
        auto["kind"] = config.kind.value
    for key, value in auto.items():
        if key in given and given[key] != value:
            raise ConfigError(f"checkpoint meta {key}={given[key]!r} contradicts the model "
                              f"({key}={value!r})")
    return {**auto, **given}


def _jsonable(meta: Mapping[str, Any]) -> dict[str, Any]:
    try:
        out = json.loads(json.dumps(dict(meta), default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint meta must be JSON-able: {exc}") from None
    return out


def _json_default(obj: object) -> object:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # NumPy scalars and arrays, tensors
        return obj.tolist()
    raise TypeError(f"{obj!r} ({type(obj).__name__}) is not JSON serializable")


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    check_new_path(path, True, folder=False, what="checkpoint")
    try:
        with atomic_file(path, fsync=True) as tmp, open(tmp, "wb") as fh:
            torch.save(payload, fh)
    except OSError as exc:
        raise OutputError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
