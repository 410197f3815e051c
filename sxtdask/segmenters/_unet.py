"""U-Net segmenters (cell/nucleus, mitochondria, ISG) with the reference pipeline's preprocessing.

The networks are 2-D: every slice is segmented on its own, so the answer at a voxel depends only on
its slice (no z halo is needed for masks) and, since the intensity scaling uses whole-volume
statistics, a chunked run equals a whole-volume run. The model is built once per worker process
(``sxtdask.engine.cached_model``); the segmenter object itself is a small picklable configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, SxtdaskError
from ..models import cached_network, resolve_device  # light: no torch until a network loads
from ..stats import IntensityStats
from ._base import OutputKind, OutputSpec, Segmenter
from ._names import Method, Task

__all__ = ["PREPROCESSING", "UNetSegmenter", "checkpoint_model", "prepare_slices",
           "resolve_device"]

logger = logging.getLogger(__name__)

# The reference pipeline's documented preprocessing.
CELL_SIZE = (288, 480)
IMAGENET_MEAN, IMAGENET_STD = 0.456, 0.224
LAC_FACTOR = 33.33


#: Input preprocessings: ``reference`` (iPA's, for its checkpoints) and ``percentile`` (sxtdask's
#: own networks: the volume's 0.5/99.5 percentiles → -1/1, no resizing).
PREPROCESSING = ("reference", "percentile")


def prepare_slices(block: np.ndarray, stats: IntensityStats, *, task: Task, preprocessing: str,
                   in_channels: int, isg_input_scale: float = 0.5, context: int = 0) -> np.ndarray:
    """(Z, Y, X) → (Z, C, Y, X) float32 network input (training and inference share it).

    ``reference``: the iPA pipeline's documented scaling (cell/mito: global min/max → 8 bit →
    ImageNet mean/std; ISG: LAC × 33.33 clipped → 8 bit, × ``isg_input_scale``). ``percentile``:
    the volume's robust range (``stats.p_low`` → -1, ``stats.p_high`` → 1, clipped to [-2, 2]),
    which neither saturates on dense granules nor depends on single outlier voxels.

    With ``context`` > 0 (sxtdask's mitochondria network) the channels of slice ``z`` are slices
    ``z - context .. z + context`` of the block (the nearest slice repeated beyond its ends; the
    engine gives the block a z halo of ``context``, so only the volume's own ends repeat).
    """
    if context:
        if in_channels != 2 * context + 1:
            raise ConfigError(f"{in_channels} input channels cannot hold ±{context} slices")
        one = prepare_slices(block, stats, task=task, preprocessing=preprocessing, in_channels=1,
                             isg_input_scale=isg_input_scale)[:, 0]
        z = np.arange(block.shape[0])
        idx = np.clip(z[:, None] + np.arange(-context, context + 1)[None, :], 0, block.shape[0] - 1)
        return np.ascontiguousarray(one[idx])
    if preprocessing == "percentile":
        x = np.clip(stats.normalize(block) * 2.0 - 1.0, -2.0, 2.0).astype(np.float32)[:, None]
    elif preprocessing == "reference":
        if task is Task.ISG:
            u8 = np.round(np.clip(block.astype(np.float32) * LAC_FACTOR, 0, 1) * 255)
            x = (u8 / 255.0 * isg_input_scale).astype(np.float32)[:, None]
        else:
            span = stats.max - stats.min
            scaled = (block.astype(np.float32) - stats.min) / (span if span > 0 else 1.0)
            u8 = np.round(np.clip(scaled, 0, 1) * 255)
            x = ((u8 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)[:, None]
    else:
        raise ConfigError(f"preprocessing {preprocessing!r} is not one of {', '.join(PREPROCESSING)}")
    return np.repeat(x, in_channels, axis=1) if in_channels > 1 else x


def pad_reflect(t: Any, pad: tuple[int, int]) -> Any:
    """Pad (N, C, H, W) at the bottom/right by ``pad`` = (dy, dx), reflecting (edge-replicating
    where the image is too small to reflect).
    """
    import torch.nn.functional as F

    dy, dx = pad
    mode = "reflect" if dy < t.shape[-2] and dx < t.shape[-1] else "replicate"
    return F.pad(t, (0, dx, 0, dy), mode=mode)


def checkpoint_model(kind: tuple[Any, ...], path: str | None, device: str, build: Any) -> Any:
    """The network built by ``build(device)`` from the checkpoint at ``path``, once per worker
    (:func:`sxtdask.models.cached_network`).
    """
    if path is None:
        raise ConfigError("no checkpoint loaded: call load_model()")
    return cached_network(kind, path, device, build)


_OUTPUTS = {
    Task.CELL: (OutputSpec("cell", OutputKind.SEMANTIC, "uint8",
                           classes=((1, "cytoplasm"), (2, "nucleus"))),),
    Task.MITO: (OutputSpec("mito", OutputKind.SEMANTIC, "uint8"),),
    Task.ISG: (OutputSpec("isg-mask", OutputKind.SEMANTIC, "uint8"),),
}
_KIND = {Task.CELL: "cell", Task.MITO: "mito", Task.ISG: "isg"}


@dataclass(frozen=True)
class UNetSegmenter(Segmenter):
    """A 2-D U-Net applied slice by slice.

    Parameters
    ----------
    task : Task
        ``Task.CELL`` (0 background, 1 cytoplasm/membrane, 2 nucleus), ``Task.MITO`` or
        ``Task.ISG`` (binary masks).
    model_path : str, optional
        Checkpoint (the reference's ``*_best.pth`` or sxtdask's own); read weights-only.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        Slices per forward pass (results do not depend on it).
    threshold : float, optional
        Foreground probability threshold. Default: 0.5 for the ISG mask; the most probable
        class (argmax) for cell and mito. Given for cell, voxels with P(cell) = P(cytoplasm) +
        P(nucleus) above it are cell and those with P(nucleus) above it nucleus.
    isg_input_scale : float
        The reference ISG model's input scaling (applied to the 8-bit input divided by 255).
    preprocessing : str
        ``reference`` (iPA checkpoints: their scaling, slices resized to 288×480 for cell and
        mito) or ``percentile`` (sxtdask-trained networks: see :func:`prepare_slices`; slices are
        not resized). :meth:`load_model` sets it from an sxtdask checkpoint's metadata.
    context : int
        Neighbouring slices on each side fed as input channels (sxtdask's mitochondria network:
        1, so its 3 channels are slices z-1, z, z+1); the z halo grows to match. From the
        checkpoint's metadata.
    clean : float, optional
        Cell only: set the connected parts of the cell (labels > 0) of at most ``clean`` × the
        largest part to background, over the whole volume (None: off).
    """

    task: Task = Task.CELL
    model_path: str | None = None
    device: str = "auto"
    batch_size: int = 8
    threshold: float | None = None
    isg_input_scale: float = 0.5
    halo: tuple[int, int, int] = (0, 0, 0)
    preprocessing: str = "reference"
    context: int = 0
    clean: float | None = None

    def __post_init__(self) -> None:
        if self.clean is not None and (self.task is not Task.CELL or not 0 <= self.clean < 1):
            raise ConfigError(f"clean ({self.clean}) is for the cell task, at least 0 and "
                              "below 1")
        if self.task not in _OUTPUTS:
            raise ConfigError(f"task {self.task.value!r} has no U-Net segmenter")
        if self.batch_size < 1:
            raise ConfigError(f"batch size ({self.batch_size}) must be at least 1")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(
                self.threshold, (int, float))):
            raise ConfigError(f"threshold ({self.threshold!r}) must be a number")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(f"threshold ({self.threshold}) must lie strictly between 0 and 1")
        if self.preprocessing not in PREPROCESSING:
            raise ConfigError(f"preprocessing {self.preprocessing!r} is not one of "
                              f"{', '.join(PREPROCESSING)}")
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise SxtdaskError(f"{self.model_path}: no such checkpoint file")

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:  # type: ignore[override]
        if self.clean is not None:
            return tuple(dataclasses.replace(o, clean=self.clean) for o in _OUTPUTS[self.task])
        return _OUTPUTS[self.task]

    full_plane = True  # slices are resized whole: chunks must not split the image plane
    method = Method.UNET
    threshold_field = "threshold"

    @property
    def model_files(self) -> tuple[str, ...]:
        return () if self.model_path is None else (self.model_path,)

    @property
    def context_radius(self) -> tuple[int, int, int]:  # type: ignore[override]
        """Slices each side that one slice's answer reads (the in-plane context is the slice)."""
        return (self.context, 0, 0)

    @property
    def isg_threshold(self) -> float:
        """The ISG probability threshold in force (0.5 unless set)."""
        return 0.5 if self.threshold is None else self.threshold

    # ----------------------------------------------------------------- the model

    def load_model(self, path: str | os.PathLike[str] | None = None) -> UNetSegmenter:
        """Bind this segmenter to the checkpoint at ``path``, in place, and return it.

        Without a path, sxtdask's bundled default weights for the task (narrow U-Nets trained
        on synthetic phantoms, see :func:`sxtdask.models.bundled_weights`) are used. The
        preprocessing is taken from an sxtdask checkpoint's metadata; files without it (iPA's)
        get the reference preprocessing. The file is checked here, name for name and shape for
        shape, without building the network (:func:`sxtdask.models.check_unet`); each worker
        builds it once, on its own device, when it first segments.
        """
        from ..models import (
            ModelKind,
            bundled_weights,
            check_unet,
            read_checkpoint_meta,
        )

        if path is None:
            path = bundled_weights(_KIND[self.task])
        meta = read_checkpoint_meta(path) or {}
        prep = meta.get("preprocessing", {})
        name = prep.get("name", "reference") if isinstance(prep, dict) else "reference"
        if name not in PREPROCESSING:
            raise SxtdaskError(f"{path}: unknown preprocessing {name!r} in its metadata")
        task = meta.get("task")
        if task is not None and task != _KIND[self.task]:
            raise SxtdaskError(f"{path} was trained for task {task!r}, not {_KIND[self.task]!r}")
        context = int(prep.get("context", 0)) if isinstance(prep, dict) else 0
        halo = (max(self.halo[0], context), *self.halo[1:])
        kind = {Task.CELL: ModelKind.CELL_NUCLEUS, Task.MITO: ModelKind.MITO,
                Task.ISG: ModelKind.ISG}[self.task]
        config = check_unet(path, kind=kind)  # errors surface here, not on a worker
        channels = 2 * context + 1 if context else 3 if self.task is Task.MITO else 1
        classes = 3 if self.task is Task.CELL else 2
        if (config.in_channels, config.n_classes) != (channels, classes):
            raise SxtdaskError(
                f"{path} holds a U-Net with {config.in_channels} input channel(s) and "
                f"{config.n_classes} classes; the {self.task.value} network takes {channels} and "
                f"gives {classes} (is it another task's checkpoint?)")
        self._update(model_path=str(path), preprocessing=name, context=context, halo=halo)
        return self

    @property
    def model(self) -> Any:
        """The ``torch.nn.Module`` in eval mode on the resolved device (cached per process)."""
        if self.model_path is None:
            raise ConfigError(f"no {_KIND[self.task]} U-Net loaded: call load_model() for the "
                              "bundled weights or load_model(path) for a checkpoint")
        return checkpoint_model(("unet", _KIND[self.task]), self.model_path, self.device,
                                self._build)

    def _build(self, device: str) -> Any:
        from ..models import load_unet

        assert self.model_path is not None  # model() builds only with a checkpoint
        net = load_unet(self.model_path)
        net.eval().to(device)
        if device.startswith("cuda"):
            import torch

            net = net.to(memory_format=torch.channels_last)
        return net

    # ----------------------------------------------------------------- inference

    def _prepare(self, block: np.ndarray, stats: IntensityStats) -> np.ndarray:
        """(Z, Y, X) → (Z, C, H, W) float32 network input, per the model's preprocessing."""
        return prepare_slices(block, stats, task=self.task, preprocessing=self.preprocessing,
                              in_channels=3 if self.task is Task.MITO else 1,
                              isg_input_scale=self.isg_input_scale, context=self.context)

    def _forward(self, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Class probabilities (Z, K, Y, X) for inputs (Z, C, Y, X), in batches.

        Out of GPU memory, batches are halved and retried, and a chunk whose single slices do not
        fit runs on the CPU, with a warning (:func:`forward_batches`); the answer is the same.
        """
        import torch
        import torch.nn.functional as F

        from ._oom import forward_batches

        net = self.model
        first = str(next(net.parameters()).device)
        resize = self.task is not Task.ISG and self.preprocessing == "reference"
        pad = (0, 0) if resize else (-size[0] % 16, -size[1] % 16)

        def run(batch: np.ndarray, device: str) -> list[np.ndarray]:
            model = net if device == first else dataclasses.replace(self, device=device).model
            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
                if resize:
                    t = F.interpolate(t, size=CELL_SIZE, mode="nearest")
                elif any(pad):
                    t = pad_reflect(t, pad)
                if device.startswith("cuda"):
                    t = t.contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        logits = model(t)
                else:
                    logits = model(t)
                prob = logits.float().softmax(dim=1)
                if resize:
                    prob = F.interpolate(prob, size=size, mode="nearest")
                elif any(pad):
                    prob = prob[..., : size[0], : size[1]]
                return list(prob.cpu().numpy())

        out = forward_batches(run, x, self.batch_size, device=first)
        return np.stack(out) if out else np.zeros((0, 1, *size), np.float32)

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        """Peak memory of one block: the block and its output, one batch's network input and
        probabilities (:meth:`stream`), and that batch's activations.

        A U-Net of base width ``w`` holds about ``12 w`` float32 values per pixel at its peak
        (skip connections, the concatenation and the convolutions of the last level; measured
        on CPU at 10–14 ``w``), counted here as ``16 w``.
        """
        z, y, x = (int(n) for n in block_shape)
        resize = self.task is not Task.ISG and self.preprocessing == "reference"
        h, w = CELL_SIZE if resize else (y + -y % 16, x + -x % 16)
        width, channels, classes = self._sizes()
        batch = min(self.batch_size, max(z, 1))
        block = 2 * z * y * x  # the block and its output (float32)
        arrays = (batch + 2 * self.context) * (channels * h * w + 2 * classes * (h * w + y * x))
        return 4 * (block + arrays + batch * 16 * width * h * w)

    def _sizes(self) -> tuple[int, int, int]:
        """(width, input channels, classes) of the loaded network; the reference's without one."""
        classes = 3 if self.task is Task.CELL else 2
        channels = 2 * self.context + 1 if self.context else 3 if self.task is Task.MITO else 1
        if self.model_path is None:
            return 64, channels, classes
        from ..models import check_unet

        config = check_unet(self.model_path)
        return config.width, config.in_channels, config.n_classes

    def probabilities(self, block: np.ndarray, stats: IntensityStats) -> np.ndarray:
        """Per-class probabilities (Z, K, Y, X) of a block (the reference's softmax output)."""
        return self._forward(self._prepare(block, stats), block.shape[1:])

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        return {self.outputs[0].name: self.stream(block, stats, self._decide, np.uint8)}

    def _decide(self, prob: np.ndarray) -> np.ndarray:
        """Labels (Z, Y, X) from probabilities (Z, K, Y, X)."""
        if self.task is Task.ISG:
            return (prob[:, 1] > self.isg_threshold).astype(np.uint8)
        if self.threshold is None:
            return prob.argmax(axis=1).astype(np.uint8)
        t = np.float32(self.threshold)
        if self.task is Task.CELL:
            cell = (prob[:, 1] + prob[:, 2]) > t
            return np.where(prob[:, 2] > t, 2, cell).astype(np.uint8)
        return (prob[:, 1] > t).astype(np.uint8)

    def stream(self, block: np.ndarray, stats: IntensityStats,
               reduce: Any, dtype: Any) -> np.ndarray:
        """``reduce(probabilities)`` of every slice, one batch of slices at a time.

        Only one batch's network input and probabilities exist at once (with ``context``
        slices each side, so every slice sees the neighbours it would in the whole block), so a
        block's memory is its input and output plus one batch, not its float32 probabilities.
        The answer equals ``reduce(self.probabilities(block, stats))``.
        """
        n, c = block.shape[0], self.context
        out = np.empty(block.shape, dtype)
        for z0 in range(0, n, self.batch_size):
            z1 = min(z0 + self.batch_size, n)
            lo, hi = max(0, z0 - c), min(n, z1 + c)
            prob = self.probabilities(block[lo:hi], stats)
            out[z0:z1] = reduce(prob[z0 - lo: z1 - lo])
        return out

    def predict(self, volume: np.ndarray, voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                *, threshold: float | None = None) -> Any:
        """Whole-volume prediction; ``Task.CELL`` returns ``{"cell_mask", "nucleus_mask"}`` like
        the reference, the others a binary (Z, Y, X) mask. ``threshold`` as the field.
        """
        out = super().predict(volume, voxel_size_nm, threshold=threshold)
        if self.task is Task.CELL:
            return {"cell_mask": (out > 0).astype(np.uint8), "nucleus_mask": (out == 2).astype(np.uint8)}
        return out
