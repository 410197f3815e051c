"""Build the networks: the iPA U-Nets by kind, and an untrained Mask R-CNN (no downloads)."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..errors import ConfigError
from ._cell_unet import CellNucleusUNet
from ._kinds import REFERENCE_CONFIGS, ModelKind, UNetConfig
from ._unet import UNet

__all__ = ["build_maskrcnn", "build_unet", "unet_config_of"]

logger = logging.getLogger(__name__)

_MASKRCNN_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def build_unet(kind: ModelKind | str, *, width: int | None = None, in_channels: int | None = None,
               n_classes: int | None = None) -> nn.Module:
    """A freshly initialised iPA U-Net of ``kind``.

    Parameters
    ----------
    kind : ModelKind or its value (``"cell"``, ``"mito"``, ``"isg"``)
    width : int, optional
        Base channel count; default 64, the reference, whose state dict equals the iPA
        checkpoint's. Every channel count scales with it (``width=8`` for fast tests).
    in_channels, n_classes : int, optional
        Default to the reference: cell 1 → 3, mito 3 → 2, ISG 1 → 2.

    Returns
    -------
    torch.nn.Module
        :class:`CellNucleusUNet` for ``CELL_NUCLEUS``, :class:`UNet` otherwise, in training mode,
        with ``width``, ``in_channels``, ``n_classes`` and ``kind`` attributes.

    Examples
    --------
    >>> import torch
    >>> net = build_unet(ModelKind.ISG, width=8).eval()
    >>> net(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 2, 32, 32])
    """
    kind = _as_kind(kind)
    ref = REFERENCE_CONFIGS[kind]
    config = UNetConfig(
        kind,
        ref.width if width is None else width,
        ref.in_channels if in_channels is None else in_channels,
        ref.n_classes if n_classes is None else n_classes,
    )
    return _build_from_config(config)


def _build_from_config(config: UNetConfig) -> nn.Module:
    model: nn.Module
    if config.kind is ModelKind.CELL_NUCLEUS:
        model = CellNucleusUNet(config.in_channels, config.n_classes, width=config.width)
    else:
        model = UNet(config.in_channels, config.n_classes, width=config.width)
    model.kind = config.kind
    logger.debug("built %s", config)
    return model


def unet_config_of(model: nn.Module) -> UNetConfig | None:
    """The configuration of one of sxtdask's U-Nets, or None for any other module."""
    if not isinstance(model, (CellNucleusUNet, UNet)):
        return None
    kind = model.kind
    if kind is None:
        kind = ModelKind.CELL_NUCLEUS if isinstance(model, CellNucleusUNet) else (
            ModelKind.MITO if model.in_channels == 3 else ModelKind.ISG)
    return UNetConfig(kind, model.width, model.in_channels, model.n_classes)


def _as_kind(kind: ModelKind | str) -> ModelKind:
    if isinstance(kind, ModelKind):
        return kind
    try:
        return ModelKind(kind)
    except ValueError:
        choices = ", ".join(repr(k.value) for k in ModelKind)
        raise ConfigError(f"U-Net kind {kind!r} is not one of {choices}") from None


def build_maskrcnn(num_classes: int = 2, *, trainable_backbone_layers: int | None = None,
                   **kwargs: Any) -> nn.Module:
    """An untrained torchvision Mask R-CNN (ResNet-50 FPN); nothing is downloaded.

    Parameters
    ----------
    num_classes : int
        Including the background (2 for ISG instances).
    trainable_backbone_layers : int, optional
        How many ResNet stages, counted from the top (``layer4``, ``layer3``, ``layer2``,
        ``layer1``, ``conv1``), keep ``requires_grad``; 0 to 5, default all 5. Applied here
        because torchvision ignores it (with a warning) for an untrained backbone. The batch norms
        stay ordinary ``BatchNorm2d`` layers (their running statistics still update in training).
    **kwargs
        Passed to ``MaskRCNN`` (``min_size``, ``max_size``, ``box_detections_per_img``, ...).

    Returns
    -------
    torchvision.models.detection.MaskRCNN
        In training mode; in eval mode it maps a list of (3, H, W) float images in [0, 1] to a
        list of dicts with ``boxes`` (K, 4), ``labels`` (K,), ``scores`` (K,) and
        ``masks`` (K, 1, H, W).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    if num_classes < 2:
        raise ConfigError(f"num_classes ({num_classes}) must be at least 2 (background included)")
    if trainable_backbone_layers is not None and not 0 <= trainable_backbone_layers <= 5:
        raise ConfigError(
            f"trainable_backbone_layers ({trainable_backbone_layers}) must be between 0 and 5")
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                  **kwargs)
    if trainable_backbone_layers is not None:
        _freeze_backbone(model.backbone.body, trainable_backbone_layers)
    return model


def _freeze_backbone(body: nn.Module, trainable: int) -> None:
    """Switch off ``requires_grad`` outside the top ``trainable`` ResNet stages (as torchvision)."""
    train = list(_MASKRCNN_LAYERS[:trainable]) + (["bn1"] if trainable == 5 else [])
    for name, param in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in train):
            param.requires_grad_(False)
