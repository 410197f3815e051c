"""Recognise a U-Net from its state dict, and rebuild it from a checkpoint file."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._build import _as_kind, _build_from_config
from ._checkpoint import (
    CheckpointError,
    check_fit,
    infer_config,
    read_checkpoint,
    strip_module_prefix,
)
from ._kinds import ModelKind, UNetConfig

__all__ = ["check_unet", "infer_config", "infer_unet_config", "load_unet"]

logger = logging.getLogger(__name__)


def infer_unet_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The kind and sizes of the U-Net a state dict belongs to, from key names and shapes.

    Parameters
    ----------
    state_dict : mapping of str → Tensor
        With or without a DataParallel ``module.`` prefix.

    Returns
    -------
    dict
        ``kind`` (:class:`ModelKind`), ``width``, ``in_channels``, ``n_classes``. The cell/nucleus
        U-Net is recognised by its names; the mito and ISG U-Nets share one layout, so a
        3-channel one is taken for ``MITO`` and any other for ``ISG`` (sxtdask checkpoints
        record their kind, which :func:`load_unet` prefers).

    Raises
    ------
    CheckpointError
        The keys are not those of an iPA U-Net.
    """
    return infer_config(strip_module_prefix(state_dict), "the state dict").as_dict()


def load_unet(path: str | os.PathLike[str], *, kind: ModelKind | str | None = None,
              device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a U-Net from a checkpoint (iPA's or sxtdask's) and load its weights.

    The width, channels and classes come from the file's shapes; no random initialisation is
    spent (the network is built on the ``meta`` device, then takes the file's tensors).

    Parameters
    ----------
    path : str or path-like
    kind : ModelKind or str, optional
        Needed only to tell a 3-channel ISG U-Net from a mito one in a file without sxtdask
        metadata; otherwise the file's metadata, then the input channels decide.
    device : str or torch.device

    Returns
    -------
    torch.nn.Module
        In eval mode, float32, on ``device``.

    Raises
    ------
    CheckpointError
        The file cannot be read weights-only, is not an iPA U-Net, or does not fit it.
    """
    source = str(path)
    model, config, state = _checked(path, kind)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source} leaves {', '.join(left[:3])} unset")
    logger.info("loaded %s U-Net (width %d) from %s", config.kind.value, config.width, source)
    return model.to(device).eval()


def check_unet(path: str | os.PathLike[str], *, kind: ModelKind | str | None = None) -> UNetConfig:
    """Check that a checkpoint holds a U-Net that loads, without building it anywhere.

    The file is read weights-only on the CPU and its tensors are checked, name for name and
    shape for shape, against a network built on the ``meta`` device (which allocates nothing):
    the client can refuse a bad file before any worker (or GPU) sees it.

    Returns
    -------
    UNetConfig
        The kind and sizes of the network the file holds.

    Raises
    ------
    CheckpointError
        As :func:`load_unet`.
    """
    return _checked(path, kind)[1]


def _checked(path: str | os.PathLike[str], kind: ModelKind | str | None
             ) -> tuple[nn.Module, UNetConfig, Any]:
    source = str(path)
    state, meta = read_checkpoint(path)
    hint = _as_kind(kind) if kind is not None else _meta_kind(meta)
    config = infer_config(state, source, hint)  # sizes bounded before anything is built
    with torch.device("meta"):
        model = _build_from_config(config)
    _check_meta(meta, config, type(model).__name__, source)
    check_fit(model, state, source, strict=True)
    return model, config, state


def _meta_kind(meta: Mapping[str, Any] | None) -> ModelKind | None:
    if not meta:
        return None
    for key in ("kind", "task"):
        value = meta.get(key)
        if value in {k.value for k in ModelKind}:
            return ModelKind(value)
    return None


def _check_meta(meta: Mapping[str, Any] | None, config: UNetConfig, architecture: str,
                source: str) -> None:
    """The (already validated) metadata must describe the network the weights hold."""
    if not meta:
        return
    if meta.get("architecture", architecture) != architecture:
        raise CheckpointError(f"{source}: its metadata says architecture="
                              f"{meta['architecture']!r} but its weights are a {architecture}")
    for key in ("width", "in_channels", "n_classes"):
        if key in meta and meta[key] != getattr(config, key):
            raise CheckpointError(f"{source}: its metadata says {key}={meta[key]!r} but its "
                                  f"weights have {key}={getattr(config, key)}")
