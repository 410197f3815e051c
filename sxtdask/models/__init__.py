"""Network definitions compatible with the iPA SXT pipeline's checkpoints, and their loading.

- ``build_unet(kind, width=...)``: the cell/nucleus, mitochondria and ISG U-Nets
  (:class:`ModelKind`); at the default width their state dicts equal iPA's
  ``*_unet_best.pth`` files name for name and shape for shape.
- ``build_maskrcnn``: an untrained torchvision Mask R-CNN; nothing is downloaded.
- ``load_state_dict_file``, ``load_weights``, ``load_unet``: weights-only checkpoint loading
  (a file that needs code to unpickle is refused with :class:`CheckpointError`).
- ``save_checkpoint``, ``read_checkpoint_meta``: sxtdask's own checkpoint format.
- ``infer_unet_config``: the kind and sizes of a U-Net from its state dict.
- ``ModelCache`` (a ``distributed`` worker plugin), ``cached_model``, ``cached_network``,
  ``load_counts``: networks built once per worker; ``resolve_device``: ``auto`` → ``cuda``/``cpu``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Light modules load now; those that need torch load on first use (PEP 562 ``__getattr__``), so
# ``import sxtdask`` and every Dask worker stay free of torch until a network is asked for.
from ._bundled import bundled_weights
from ._cache import (
    ModelCache,
    cached_model,
    cached_network,
    clear_models,
    load_counts,
    register_model_cache,
)
from ._device import resolve_device
from ._kinds import ModelKind

if TYPE_CHECKING:
    from ._biomedisa import (
        BiomedisaMeta,
        BiomedisaUNet3D,
        biomedisa_checkpoint_meta,
        read_biomedisa,
        read_unet3d,
    )
    from ._build import build_maskrcnn, build_unet
    from ._cell_unet import CellNucleusUNet
    from ._checkpoint import (
        CheckpointError,
        check_fit,
        load_state_dict_file,
        load_weights,
        read_checkpoint,
        read_checkpoint_meta,
        save_checkpoint,
    )
    from ._infer import check_unet, infer_unet_config, load_unet
    from ._ncxt import (
        CascadeConfig,
        NCXTCascade,
        NCXTUNet3D,
        StageConfig,
        cascade_from_ncxt,
        load_cascade,
        load_ncxt,
        read_cascade,
    )
    from ._unet import UNet

_LAZY = {
    "build_maskrcnn": "_build", "build_unet": "_build", "CellNucleusUNet": "_cell_unet",
    "CheckpointError": "_checkpoint", "check_fit": "_checkpoint",
    "load_state_dict_file": "_checkpoint", "load_weights": "_checkpoint",
    "read_checkpoint": "_checkpoint", "read_checkpoint_meta": "_checkpoint",
    "save_checkpoint": "_checkpoint", "check_unet": "_infer", "infer_unet_config": "_infer",
    "load_unet": "_infer", "UNet": "_unet",
    "BiomedisaMeta": "_biomedisa", "BiomedisaUNet3D": "_biomedisa",
    "biomedisa_checkpoint_meta": "_biomedisa", "read_biomedisa": "_biomedisa",
    "read_unet3d": "_biomedisa", "CascadeConfig": "_ncxt", "NCXTCascade": "_ncxt",
    "NCXTUNet3D": "_ncxt", "StageConfig": "_ncxt", "cascade_from_ncxt": "_ncxt",
    "load_cascade": "_ncxt", "load_ncxt": "_ncxt", "read_cascade": "_ncxt",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BiomedisaMeta",
    "BiomedisaUNet3D",
    "CascadeConfig",
    "CellNucleusUNet",
    "CheckpointError",
    "ModelCache",
    "ModelKind",
    "NCXTCascade",
    "NCXTUNet3D",
    "StageConfig",
    "UNet",
    "biomedisa_checkpoint_meta",
    "build_maskrcnn",
    "build_unet",
    "bundled_weights",
    "cached_model",
    "cached_network",
    "cascade_from_ncxt",
    "check_fit",
    "check_unet",
    "clear_models",
    "infer_unet_config",
    "load_cascade",
    "load_counts",
    "load_ncxt",
    "load_state_dict_file",
    "load_unet",
    "load_weights",
    "read_biomedisa",
    "read_cascade",
    "read_checkpoint",
    "read_checkpoint_meta",
    "read_unet3d",
    "register_model_cache",
    "resolve_device",
    "save_checkpoint",
]
