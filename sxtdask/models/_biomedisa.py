"""Biomedisa's 3-D U-Net (ACSeg's network) in PyTorch, and its Keras ``.h5`` files read through h5py.

The architecture follows the facts in the project's REFERENCE-3D §1 (written here from them, not
from Biomedisa's EUPL code): a filter list ``f1-…-fL`` whose first ``L − 1`` entries are encoder
levels and whose last is the bottleneck; each block is twice [Conv3D 3×3×3 'same' with ReLU →
BatchNorm → ReLU]; decoder levels upsample by nearest repetition and concatenate
[upsampled, skip]; a 1×1×1 convolution to the labels; softmax over labels. The ResNet variant
adds a bias-free 1×1×1 ``Identity{b}_1`` convolution to [conv + ReLU → BN → ReLU → conv → BN],
then a ReLU. Keras BatchNorm's epsilon (1e-3) is kept.

:func:`read_biomedisa` reads a file with h5py alone: no Keras, no TensorFlow, nothing from the
file's ``model_config`` is run or even parsed. The depth, the filters and the input channels come
from the layer names and kernel shapes; label values and normalisation constants from ``meta/``
(either generation: the ACSeg era's ``configuration`` vector, or the later ``normalization``,
``patch_normalization``, ``scaling`` and ``patch_size`` datasets).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checkpoint import CheckpointError, check_fit

__all__ = ["BiomedisaFile", "BiomedisaMeta", "BiomedisaUNet3D", "biomedisa_checkpoint_meta",
           "load_biomedisa", "read_biomedisa", "read_biomedisa_checkpoint", "read_unet3d"]

logger = logging.getLogger(__name__)

#: Keras BatchNormalization's default epsilon.
KERAS_BN_EPS = 1e-3


class _Block(nn.Module):
    """Two [conv 3³ + ReLU → BN → ReLU] stages, or the ResNet variant."""

    def __init__(self, cin: int, cout: int, resnet: bool) -> None:
        super().__init__()
        self.resnet = resnet
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(cout, eps=KERAS_BN_EPS, momentum=0.01)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(cout, eps=KERAS_BN_EPS, momentum=0.01)
        self.identity = nn.Conv3d(cin, cout, 1, bias=False) if resnet else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(torch.relu(self.conv1(x))))
        if self.identity is None:
            return torch.relu(self.bn2(torch.relu(self.conv2(y))))
        return torch.relu(self.identity(x) + self.bn2(self.conv2(y)))


class BiomedisaUNet3D(nn.Module):
    """Biomedisa's 3-D U-Net.

    Parameters
    ----------
    filters : sequence of int
        ``f1, …, fL``: ``L − 1`` encoder levels (``L − 1`` poolings) and the bottleneck.
        ACSeg-era default 32-64-128-256-512-1024; from July 2023 32-64-128-256-512.
    channels : int
        Input channels: 1, or 2 with Biomedisa's "position" channel.
    n_labels : int
        Output classes (label indices; their values are in the file's ``meta/labels``).
    resnet : bool
        The ResNet block variant.

    Input ``(N, C, z, y, x)``, each spatial size a multiple of ``2**(L-1)``; output the softmax
    over labels ``(N, n_labels, z, y, x)`` (``logits=True`` in :meth:`forward` skips it).
    """

    def __init__(self, filters: Sequence[int], channels: int = 1, n_labels: int = 2,
                 resnet: bool = False) -> None:
        super().__init__()
        filters = [int(f) for f in filters]
        if len(filters) < 2 or min(filters) < 1:
            raise ValueError(f"filters {filters} must list at least two positive counts")
        self.filters, self.channels, self.n_labels, self.resnet = filters, channels, n_labels, resnet
        enc = filters[:-1]
        self.down = nn.ModuleList()
        cin = channels
        for f in enc:
            self.down.append(_Block(cin, f, resnet))
            cin = f
        self.bottleneck = _Block(cin, filters[-1], resnet)
        cin = filters[-1]
        self.up = nn.ModuleList()
        for f in enc[::-1]:
            self.up.append(_Block(cin + f, f, resnet))
            cin = f
        self.final = nn.Conv3d(cin, n_labels, 1)

    @property
    def levels(self) -> int:
        return len(self.filters)

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool3d(x, 2)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, skips[::-1], strict=True):
            x = torch.repeat_interleave(torch.repeat_interleave(torch.repeat_interleave(
                x, 2, dim=2), 2, dim=3), 2, dim=4)
            x = block(torch.cat([x, skip], dim=1))
        x = self.final(x)
        return x if logits else torch.softmax(x, dim=1)

    def keras_names(self) -> dict[str, str]:
        """torch parameter/buffer prefix → Keras layer name (``conv_{block}_{stage}``, ...)."""
        blocks: list[tuple[str, int]] = [(f"down.{i}", i + 1) for i in range(len(self.down))]
        blocks.append(("bottleneck", self.levels))
        blocks += [(f"up.{j}", self.levels + 1 + j) for j in range(len(self.up))]
        names = {}
        for prefix, b in blocks:
            for s in (1, 2):
                names[f"{prefix}.conv{s}"] = f"conv_{b}_{s}"
                names[f"{prefix}.bn{s}"] = f"batch_norm_{b}_{s}"
            if self.resnet:
                names[f"{prefix}.identity"] = f"Identity{b}_1"
        names["final"] = f"conv_{2 * self.levels}_1"
        return names


# ----------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class BiomedisaMeta:
    """What a Biomedisa file's ``meta/`` group says about preprocessing and labels.

    Attributes
    ----------
    labels : tuple of int
        Label index → the original label value (``meta/labels``).
    scale : (z, y, x)
        The grid every tomogram is resized to (``configuration``'s x, y, z scales; 256³ default).
    normalize : bool
        Whether intensities are standardised to ``mu``, ``sig`` after the min–max step.
    mu, sig : float
        The normalisation constants (first channel).
    patch_size : (z, y, x)
    scaling : bool
        Whether the tomogram is resized at all (later files; True in ACSeg-era files).
    patch_normalization : bool
        Min–max per patch instead of per tomogram (later files; refused by sxtdask's predictor).
    materials : tuple of str
        Material names from an AmiraMesh ``header``, when the training labels had one.
    generation : str
        ``"2023"`` (``configuration`` only) or ``"2024"`` (``normalization`` and friends).
    """

    labels: tuple[int, ...]
    scale: tuple[int, int, int] = (256, 256, 256)
    normalize: bool = True
    mu: float = 0.0
    sig: float = 1.0
    patch_size: tuple[int, int, int] = (64, 64, 64)
    scaling: bool = True
    patch_normalization: bool = False
    materials: tuple[str, ...] = ()
    generation: str = "2023"


@dataclass(frozen=True)
class BiomedisaFile:
    """A Biomedisa ``.h5`` file as read: its architecture, weights (torch layout) and meta."""

    path: str
    filters: tuple[int, ...]
    channels: int
    n_labels: int
    resnet: bool
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    meta: BiomedisaMeta
    keras_names: str = "keras3"  # or "tf2" (":0" suffixes)

    def build(self) -> BiomedisaUNet3D:
        net = BiomedisaUNet3D(self.filters, self.channels, self.n_labels, self.resnet)
        check_fit(net, self.state_dict, self.path)
        net.load_state_dict(self.state_dict)
        return net.eval()


def _attr_list(attrs: Any, name: str) -> list[str] | None:
    """An h5 string-list attribute, also when split into ``name0``, ``name1``, …."""
    if name in attrs:
        values = list(attrs[name])
    elif f"{name}0" in attrs:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values += list(attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


_CONV = re.compile(r"^conv_(\d+)_([12])$")
_BN = re.compile(r"^batch_norm_(\d+)_([12])$")
_ID = re.compile(r"^Identity(\d+)_1$")
_KERAS_TO_TORCH = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                   "moving_mean": "running_mean", "moving_variance": "running_var"}


def _layer_weights(group: Any, layer: str, source: str) -> tuple[dict[str, np.ndarray], bool]:
    """One layer's arrays by short name (``kernel``, ``gamma``, …) and whether names had ``:0``."""
    g = group[layer]
    names = _attr_list(g.attrs, "weight_names")
    if names is None:
        raise CheckpointError(f"{source}: layer {layer!r} has no weight_names attribute")
    out: dict[str, np.ndarray] = {}
    suffixed = False
    for name in names:
        if name not in g:
            raise CheckpointError(f"{source}: layer {layer!r} lists weight {name!r}, which is "
                                  "not in the file")
        short = name.rsplit("/", 1)[-1]
        if short.endswith(":0"):
            short, suffixed = short[:-2], True
        ds = g[name]
        if not hasattr(ds, "shape"):
            raise CheckpointError(f"{source}: weight {layer}/{name} is not an array")
        out[short] = np.asarray(ds[()], dtype=np.float32)
    return out, suffixed


def read_biomedisa(path: str | os.PathLike[str], *, ignore_cropping: bool = True) -> BiomedisaFile:
    """Read a Biomedisa Keras ``.h5`` file with h5py alone.

    Parameters
    ----------
    path : path
    ignore_cropping : bool
        Files trained with Biomedisa's auto-cropping also hold ``cropping_weights`` (a 2-D
        Keras classifier that crops the tomogram before the 3-D network). sxtdask does not run
        it: by default its weights are ignored with a warning (the 3-D network then sees the
        whole tomogram, as with cropping off); False refuses such a file.

    Raises
    ------
    CheckpointError
        Not an HDF5 file, no ``model_weights``, a missing or mis-shaped layer (named), an
        unexpected layer, missing ``meta/labels``, or (``ignore_cropping=False``) cropping
        weights.
    """
    import h5py

    source = os.fspath(path)
    try:
        f = h5py.File(source, "r")
    except OSError as err:
        raise CheckpointError(f"{source} is not a readable HDF5 file ({err})") from None
    with f:
        if "cropping_weights" in f:
            if not ignore_cropping:
                raise CheckpointError(f"{source} holds Biomedisa auto-cropping weights "
                                      "(cropping_weights), which sxtdask does not run")
            logger.warning("%s: its auto-cropping network (cropping_weights) is ignored: the "
                           "3-D network sees the whole tomogram", source)
        group = f.get("model_weights", f)
        layers = _attr_list(group.attrs, "layer_names")
        if layers is None:
            raise CheckpointError(f"{source} is not a Keras HDF5 model: no model_weights group "
                                  "with layer_names")
        weights: dict[str, dict[str, np.ndarray]] = {}
        suffixed = False
        for layer in layers:
            if layer not in group:
                raise CheckpointError(f"{source}: layer {layer!r} is listed but not stored")
            w, sfx = _layer_weights(group, layer, source)
            suffixed = suffixed or sfx
            if w:
                weights[layer] = w
        meta = _read_meta(f, source)
    return _assemble(source, weights, meta, "tf2" if suffixed else "keras3")


def _assemble(source: str, weights: dict[str, dict[str, np.ndarray]], meta: BiomedisaMeta,
              naming: str) -> BiomedisaFile:
    convs = {(int(m[1]), int(m[2])) for n in weights if (m := _CONV.match(n))}
    if not convs:
        raise CheckpointError(f"{source} holds no conv_<block>_<stage> layers: not a Biomedisa "
                              "U-Net")
    last = max(b for b, _ in convs)
    if last % 2 or (last, 1) not in convs:
        raise CheckpointError(f"{source}: the final layer conv_{last}_1 does not end a U-Net of "
                              "2L blocks")
    levels = last // 2
    for b in range(1, 2 * levels):
        for s in (1, 2):
            for name in (f"conv_{b}_{s}", f"batch_norm_{b}_{s}"):
                if name not in weights:
                    raise CheckpointError(f"{source}: layer {name!r} is missing (a {levels}-level "
                                          f"U-Net ends with conv_{last}_1)")
    filters = [int(weights[f"conv_{b}_1"]["kernel"].shape[-1]) for b in range(1, levels + 1)]
    first = weights["conv_1_1"]["kernel"]
    channels = int(first.shape[3])
    n_labels = int(weights[f"conv_{last}_1"]["kernel"].shape[-1])
    resnet = any(_ID.match(n) for n in weights)
    if len(meta.labels) != n_labels:
        raise CheckpointError(f"{source}: meta/labels lists {len(meta.labels)} values but the "
                              f"network has {n_labels} outputs")
    net = BiomedisaUNet3D(filters, channels, n_labels, resnet)
    known = set(net.keras_names().values())
    unexpected = sorted(n for n in weights if n not in known)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected layers for a {levels}-level "
                              f"{'ResNet ' if resnet else ''}U-Net: {', '.join(unexpected[:5])}")
    state: dict[str, torch.Tensor] = {}
    own = net.state_dict()
    for prefix, layer in net.keras_names().items():
        if layer not in weights:
            raise CheckpointError(f"{source}: layer {layer!r} is missing")
        for short, arr in weights[layer].items():
            if short not in _KERAS_TO_TORCH:
                raise CheckpointError(f"{source}: layer {layer!r} has an unknown weight {short!r}")
            key = f"{prefix}.{_KERAS_TO_TORCH[short]}"
            value = torch.from_numpy(np.ascontiguousarray(
                arr.transpose(4, 3, 0, 1, 2) if short == "kernel" else arr))
            if key not in own or tuple(own[key].shape) != tuple(value.shape):
                want = list(own[key].shape) if key in own else "none"
                raise CheckpointError(f"{source}: {layer}/{short} has shape {list(arr.shape)}; "
                                      f"the network expects {want} (torch layout)")
            state[key] = value
    for key, value in own.items():  # BatchNorm's step counter is not in Keras files
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    check_fit(net, state, source)
    return BiomedisaFile(source, tuple(filters), channels, n_labels, resnet, state, meta, naming)


def _scalar(f: Any, key: str, default: Any) -> Any:
    return np.asarray(f[key][()]).reshape(-1)[0] if key in f else default


def _read_meta(f: Any, source: str) -> BiomedisaMeta:
    if "meta" not in f:
        raise CheckpointError(f"{source} has no meta group: label values and normalisation are "
                              "unknown (not a Biomedisa file?)")
    m = f["meta"]
    if "labels" not in m:
        raise CheckpointError(f"{source}: meta/labels is missing")
    labels = tuple(int(v) for v in np.asarray(m["labels"][()]).reshape(-1))
    kwargs: dict[str, Any] = {"labels": labels}
    if "configuration" in m:
        conf = np.asarray(m["configuration"][()], dtype=float).reshape(-1)
        if conf.size < 7:
            raise CheckpointError(f"{source}: meta/configuration has {conf.size} values, not 7 "
                                  "(channels, x, y, z scale, normalize, mu, sig)")
        _, xs, ys, zs, norm, mu, sig = conf[:7]
        kwargs.update(scale=(int(zs), int(ys), int(xs)), normalize=bool(norm), mu=float(mu),
                      sig=float(sig))
    elif "normalization" not in m:
        raise CheckpointError(f"{source}: meta has neither configuration nor normalization")
    if "normalization" in m:  # the later generation: (2, C) mean / std per channel
        norm_arr = np.asarray(m["normalization"][()], dtype=float).reshape(2, -1)
        kwargs.update(mu=float(norm_arr[0, 0]), sig=float(norm_arr[1, 0]), generation="2024")
        kwargs["patch_normalization"] = bool(_scalar(m, "patch_normalization", 0))
        kwargs["scaling"] = bool(_scalar(m, "scaling", 1))
        if "patch_size" in m:
            kwargs["patch_size"] = tuple(int(v) for v in np.asarray(m["patch_size"][()]).reshape(-1)[:3])
    if "header" in m:
        text = bytes(np.asarray(m["header"][()]).reshape(-1).astype(np.uint8)).decode(
            "latin-1", "replace") if np.asarray(m["header"][()]).dtype.kind in "iu" else str(
            m["header"][()])
        kwargs["materials"] = tuple(re.findall(r"^\s*(\w+)\s*\{", text.split("Materials", 1)[-1],
                                               flags=re.M)) if "Materials" in text else ()
    return BiomedisaMeta(**kwargs)


def load_biomedisa(path: str | os.PathLike[str], device: str = "cpu") -> tuple[BiomedisaUNet3D,
                                                                               BiomedisaMeta]:
    """The network (eval mode, on ``device``) and the meta of a Biomedisa ``.h5`` file."""
    info = read_biomedisa(path)
    return info.build().to(device), info.meta


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the HDF5 signature."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


# ------------------------------------------------------------------- sxtdask's own checkpoints


def biomedisa_checkpoint_meta(net: BiomedisaUNet3D, meta: BiomedisaMeta) -> dict[str, Any]:
    """The ``meta`` of an sxtdask checkpoint of a Biomedisa U-Net (``sxtdask train --arch
    unet3d``): the architecture and everything Biomedisa keeps in its ``meta/`` group.
    """
    return {"architecture": "BiomedisaUNet3D", "filters": list(net.filters),
            "channels": net.channels, "n_labels": net.n_labels, "resnet": net.resnet,
            "labels": list(meta.labels), "classes": list(meta.materials),
            "biomedisa": {"scale": list(meta.scale), "patch_size": list(meta.patch_size),
                          "normalize": meta.normalize, "mu": meta.mu, "sig": meta.sig}}


def _meta_of_checkpoint(meta: dict[str, Any], source: str) -> tuple[dict[str, Any], BiomedisaMeta]:
    try:
        arch: dict[str, Any] = {"filters": [int(f) for f in meta["filters"]],
                                "channels": int(meta["channels"]),
                                "n_labels": int(meta["n_labels"]), "resnet": bool(meta["resnet"])}
        b = meta["biomedisa"]
        info = BiomedisaMeta(labels=tuple(int(v) for v in meta["labels"]),
                             scale=tuple(int(v) for v in b["scale"]),  # type: ignore[arg-type]
                             patch_size=tuple(int(v) for v in b["patch_size"]),  # type: ignore[arg-type]
                             normalize=bool(b["normalize"]), mu=float(b["mu"]),
                             sig=float(b["sig"]), generation="sxtdask",
                             materials=tuple(str(c) for c in meta.get("classes", ())))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: not an sxtdask Biomedisa U-Net checkpoint (its "
                              f"metadata lacks or mis-states {err})") from None
    if not 2 <= len(arch["filters"]) <= 8 or min(arch["filters"]) < 1 or max(arch["filters"]) > 4096:
        raise CheckpointError(f"{source}: metadata 'filters' {arch['filters']} must list 2 to 8 "
                              "counts from 1 to 4096")
    if arch["channels"] not in (1, 2) or not 2 <= arch["n_labels"] <= 256:
        raise CheckpointError(f"{source}: metadata channels ({arch['channels']}) must be 1 or 2 "
                              f"and n_labels ({arch['n_labels']}) from 2 to 256")
    if len(info.labels) != arch["n_labels"] or len(info.scale) != 3 or len(info.patch_size) != 3:
        raise CheckpointError(f"{source}: metadata 'labels' must list n_labels values and "
                              "'biomedisa.scale' / 'patch_size' three sizes")
    if min(info.scale + info.patch_size) < 1 or max(info.scale + info.patch_size) > 4096 or not \
            info.sig > 0:
        raise CheckpointError(f"{source}: metadata scale {info.scale}, patch {info.patch_size} "
                              f"or sig {info.sig} out of range")
    return arch, info


def read_biomedisa_checkpoint(path: str | os.PathLike[str]) -> BiomedisaFile:
    """An sxtdask checkpoint of a Biomedisa U-Net (``sxtdask train --arch unet3d``), read
    weights-only and checked against the architecture its metadata records.
    """
    from ._checkpoint import read_checkpoint

    source = os.fspath(path)
    state, meta = read_checkpoint(source)
    if meta is None or meta.get("architecture") != "BiomedisaUNet3D":
        raise CheckpointError(f"{source} is neither a Biomedisa .h5 file nor an sxtdask "
                              "unet3d checkpoint (train one with `sxtdask train --arch unet3d`)")
    arch, info = _meta_of_checkpoint(meta, source)
    net = BiomedisaUNet3D(arch["filters"], arch["channels"], arch["n_labels"], arch["resnet"])
    check_fit(net, state, source)
    return BiomedisaFile(source, tuple(arch["filters"]), arch["channels"], arch["n_labels"],
                         arch["resnet"], dict(state), info, "sxtdask")


def read_unet3d(path: str | os.PathLike[str]) -> BiomedisaFile:
    """A Biomedisa U-Net from a Keras ``.h5`` file (HDF5) or an sxtdask checkpoint."""
    return read_biomedisa(path) if is_hdf5(path) else read_biomedisa_checkpoint(path)
