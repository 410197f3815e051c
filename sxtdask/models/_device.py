"""Where networks run: ``auto`` / ``cpu`` / ``cuda[:N]`` resolved once, in one place."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; validates the others.

    Raises
    ------
    ConfigError
        ``device`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or CUDA was asked for and no
        CUDA device is visible.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device {device!r} must be auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but no CUDA device is visible")
    return device
