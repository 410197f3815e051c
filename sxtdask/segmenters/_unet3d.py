"""``--method unet3d``: a Biomedisa 3-D U-Net (ACSeg's ``.h5`` file, unchanged), predicted as
Biomedisa predicts, at archive scale.

The steps (REFERENCE-3D §1): resize the tomogram to the file's grid (256³ unless it says
otherwise; area interpolation when any axis shrinks, else cubic); min–max to [0, 1]; with the
file's ``normalize``, standardise and map to its ``mu``, ``sig`` and clip to [0, 1]; predict
64³ patches at stride 32; sum the softmax outputs without weights; argmax; optional ``clean`` and
``fill``; resize label by label back to the tomogram (binary masks, threshold ½, later labels
overwrite earlier ones); map indices through ``meta/labels``.

On Dask (:meth:`UNet3DSegmenter.volume_context`): one task per 64³ block of the grid reads only
the input window it needs (:func:`._resize.resize_dask`), so no process holds the
full-resolution tomogram; one task makes the grid's statistics and the normalised grid; patch
batches are separate tasks (pinned to GPU workers when the network runs on CUDA); their outputs
are summed in patch order by a chain of tasks; the label grid (16 MiB at 256³) goes to every
engine block, which resizes its own part back. Every step is a fixed computation per voxel, so
the result equals a single-process run of the same steps (:meth:`segment_block`) for any
chunking.

Decided here where Biomedisa is silent or where archive scale asks for it: ``clean`` and
``fill`` run on the label grid before it is resized back (on the full-resolution volume they
would need one process to hold it); the resize is sxtdask's own with OpenCV's formulas (no
OpenCV dependency; values agree with ``cv2.resize`` to float rounding).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed
from scipy import ndimage

from ..errors import ConfigError, InputError, SxtdaskError, option
from ..stats import IntensityStats
from ._base import BlockContext, OutputKind, OutputSpec, Segmenter
from ._names import Method, Task
from ._resize import axis_taps, resize_block, resize_dask, resize_mode
from ._unet import checkpoint_model

__all__ = ["UNet3DSegmenter", "cell_masks", "clean_labels", "fill_labels", "grid_shape",
           "normalise_grid", "patch_starts"]


def grid_shape(scale: Sequence[int], patch: Sequence[int], stride: int) -> tuple[int, int, int]:
    """Biomedisa's grid: each scale reduced to ``scale − (scale − patch) % stride``."""
    out = tuple(int(s) - (int(s) - int(p)) % stride for s, p in zip(scale, patch, strict=True))
    if any(s < p for s, p in zip(out, patch, strict=True)):
        raise ConfigError(f"the grid {tuple(scale)} is smaller than the patch {tuple(patch)}")
    return out  # type: ignore[return-value]


def patch_starts(grid: Sequence[int], patch: Sequence[int], stride: int) -> list[tuple[int, ...]]:
    """Patch origins in raster order (z slowest), as Biomedisa lists them."""
    axes = [range(0, g - p + 1, stride) for g, p in zip(grid, patch, strict=True)]
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def clean_labels(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per label, keep the 6-connected components larger than ``threshold`` × the largest
    (0.9: only the largest); the rest become background (Biomedisa's ``clean``).
    """
    out = labels.copy()
    for k in np.unique(labels):
        if k == 0:
            continue
        comp, n = ndimage.label(labels == k)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        drop = np.flatnonzero(sizes <= threshold * sizes.max()) + 1
        out[np.isin(comp, drop)] = 0
    return out


def fill_labels(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per label, fill background holes (6-connected components of non-label voxels that do
    not touch the volume's border) up to ``threshold`` × the label's size (Biomedisa's ``fill``).
    """
    out = labels.copy()
    for k in np.unique(labels):
        if k == 0:
            continue
        mask = labels == k
        holes, n = ndimage.label(~mask)
        if n == 0:
            continue
        border = np.unique(np.concatenate([
            holes[0].ravel(), holes[-1].ravel(), holes[:, 0].ravel(), holes[:, -1].ravel(),
            holes[:, :, 0].ravel(), holes[:, :, -1].ravel()]))
        sizes = np.bincount(holes.ravel(), minlength=n + 1)
        small = np.flatnonzero(sizes <= threshold * mask.sum())
        small = np.setdiff1d(small[small > 0], border)
        fill = np.isin(holes, small) & (labels == 0)
        out[fill] = k
    return out


def cell_masks(labels: np.ndarray, classes: Sequence[tuple[int, str]]) -> dict[str, np.ndarray]:
    """A 3-D cell segmenter's answer as the reference's cell U-Net gives it: ``cell_mask`` (every
    voxel whose label is not 0) and ``nucleus_mask`` (the voxels of the class named ``nucleus``,
    whatever the case; none where no class is), both uint8 0/1 arrays.
    """
    nucleus = [int(v) for v, name in classes if str(name).strip().lower() == "nucleus"]
    return {"cell_mask": (labels != 0).astype(np.uint8),
            "nucleus_mask": np.isin(labels, nucleus).astype(np.uint8)}


def _position(grid: Sequence[int]) -> np.ndarray:
    """Biomedisa's position channel: distance from the grid's centre (``shape // 2``) over its
    largest value.
    """
    z, y, x = (np.arange(n, dtype=np.float32) - n // 2 for n in grid)
    d = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
    return (d / d.max()).astype(np.float32)


@dataclass(frozen=True)
class UNet3DSegmenter(Segmenter):
    """Biomedisa's 3-D U-Net on a resized grid (ACSeg).

    Parameters
    ----------
    task : Task
        ``Task.CELL``. The labels written are the file's ``meta/labels`` values (ACSeg:
        0 exterior and its cytoplasm value).
    model_path : str, optional
        A Biomedisa ``.h5`` file (:meth:`load_model`).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        64³ patches per forward pass (results do not depend on it).
    stride : int
        Patch stride on the grid (Biomedisa: 32).
    clean, fill : float, optional
        Biomedisa's post-processing thresholds (None: off; its command line's ``clean`` is 0.1,
        its web default 0.9; ``fill`` 0.9).
    """

    task: Task = Task.CELL
    model_path: str | None = None
    device: str = "auto"
    batch_size: int = 4
    stride: int = 32
    clean: float | None = None
    fill: float | None = None
    halo: tuple[int, int, int] = (0, 0, 0)
    # From the file's meta (load_model):
    scale: tuple[int, int, int] = (256, 256, 256)
    patch: tuple[int, int, int] = (64, 64, 64)
    normalize: bool = True
    mu: float = 0.0
    sig: float = 1.0
    labels: tuple[int, ...] = (0, 1)
    channels: int = 1
    materials: tuple[str, ...] = ()

    method = Method.UNET3D

    def __post_init__(self) -> None:
        if self.task is not Task.CELL:
            raise ConfigError(f"the unet3d method segments the cell task, not {self.task.value!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size ({self.batch_size}) must be at least 1")
        if self.stride < 1:
            raise ConfigError(f"stride ({self.stride}) must be at least 1")
        for name in ("clean", "fill"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} ({value}) must lie between 0 and 1")
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise InputError(f"{self.model_path}: no such model file")
        if any(self.stride > p for p in self.patch):
            raise ConfigError(f"stride ({self.stride}) exceeds the patch {self.patch}: grid voxels "
                              "between patches would get no prediction")

    @property
    def context_radius(self) -> tuple[int, int, int]:  # type: ignore[override]
        """Every block reads the whole tomogram's label grid (a per-tomogram task), never its
        neighbours' voxels: it needs no halo.
        """
        return (0, 0, 0)

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:  # type: ignore[override]
        dtype = "uint8" if max(self.labels) < 256 else "uint16" if max(self.labels) < 65536 \
            else "uint32"
        names = self.materials if len(self.materials) == len(self.labels) else ()
        classes = tuple((int(v), names[i] if names else f"label {v}")
                        for i, v in enumerate(self.labels) if v != 0)
        return (OutputSpec("cell", OutputKind.SEMANTIC, dtype, classes=classes),)

    #: Blocks only resize or fuse: the network runs in the per-tomogram tasks, pinned there.
    blocks_need_gpu = False

    @property
    def model_files(self) -> tuple[str, ...]:
        return () if self.model_path is None else (self.model_path,)

    @property
    def grid(self) -> tuple[int, int, int]:
        return grid_shape(self.scale, self.patch, self.stride)

    # ----------------------------------------------------------------- the model

    def load_model(self, path: str | os.PathLike[str] | None = None) -> UNet3DSegmenter:
        """Bind to a Biomedisa ``.h5`` file or an sxtdask unet3d checkpoint, in place: its
        architecture is checked and its meta (grid, patch size, normalisation, label values)
        read here, without Keras.
        """
        if path is None:
            raise ConfigError("the unet3d method has no bundled weights: give a Biomedisa .h5 "
                              "file (for example ACSeg.h5) or a checkpoint of `sxtdask train "
                              f"--arch unet3d` with {option('load_model(path)', '--model PATH')}")
        from ..models import read_unet3d

        if not os.path.isfile(path):
            raise InputError(f"{path}: no such model file")
        info = read_unet3d(path)
        meta = info.meta
        if meta.patch_normalization:
            raise SxtdaskError(f"{path} was trained with per-patch normalisation, which sxtdask's "
                               "unet3d predictor does not do")
        if not meta.scaling:
            raise SxtdaskError(f"{path} was trained without scaling to a grid, which sxtdask's "
                               "unet3d predictor does not do")
        if any(self.stride > p for p in meta.patch_size):
            raise ConfigError(f"{path}: its patches {tuple(meta.patch_size)} are smaller than the "
                              f"stride ({self.stride}), so grid voxels between patches would get "
                              "no prediction (set UNet3DSegmenter's stride to at most the "
                              "patch)")
        self._update(model_path=str(path), scale=meta.scale, patch=meta.patch_size,
                     normalize=meta.normalize, mu=meta.mu, sig=meta.sig, labels=meta.labels,
                     channels=info.channels, materials=meta.materials)
        self.grid  # noqa: B018 - a grid smaller than the patch is refused now
        return self

    @property
    def model(self) -> Any:
        return checkpoint_model(("unet3d",), self.model_path, self.device, self._build)

    def _build(self, device: str) -> Any:
        from ..models import read_unet3d

        assert self.model_path is not None
        return read_unet3d(self.model_path).build().to(device)

    # ----------------------------------------------------------------- the grid

    def plan_context(self, image: da.Array, stats: Any, *,
                     binned: dict[int, da.Array] | None = None) -> BlockContext:
        """The label-index grid of the whole tomogram, as a lazy graph (see the module)."""
        return _SameForAll(self.volume_context(image))

    def volume_context(self, image: da.Array) -> Delayed:
        """The label-index grid of the whole tomogram, as a lazy graph (see the module)."""
        if self.model_path is None:
            raise ConfigError("no unet3d model loaded: call load_model(path)")
        grid = self.grid
        token = tokenize(image.name, self)
        resized = resize_dask(image.astype(np.float32), grid)
        norm = delayed(normalise_grid, pure=True)(resized, self.normalize, self.mu, self.sig,
                                               dask_key_name=f"unet3d.normalise-{token}")
        starts = patch_starts(grid, self.patch, self.stride)
        batches = [starts[i:i + self.batch_size] for i in range(0, len(starts), self.batch_size)]
        annotations = {"resources": {"GPU": 1}} if self.needs_gpu else {}
        total: Any = None
        for n, batch in enumerate(batches):
            with dask.annotate(**annotations):
                probs = delayed(_predict, pure=True)(
                    self, norm, batch, dask_key_name=(f"unet3d.patches-{token}", n))
            total = delayed(_accumulate, pure=True)(
                total, probs, batch, grid, self.patch, dask_key_name=(f"unet3d.sum-{token}", n))
        return delayed(_vote, pure=True)(total, self.clean, self.fill,
                                         dask_key_name=f"unet3d.labels-{token}")

    def segment_block_in(self, block: np.ndarray, stats: IntensityStats,
                         voxel_size_nm: tuple[float, float, float], *, box: tuple[slice, ...],
                         shape: tuple[int, ...], context: Any,
                         core: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
        """The block's labels: the label grid resized back to the tomogram, label by label."""
        grid = context
        mode = resize_mode(grid.shape, shape)
        taps = [axis_taps(g, s, mode) for g, s in zip(grid.shape, shape, strict=True)]
        out_box = [(b.start, b.stop) for b in box]
        need = [t.needed(lo, hi) for t, (lo, hi) in zip(taps, out_box, strict=True)]
        window = grid[tuple(slice(a, b) for a, b in need)]
        values = np.asarray(self.labels)
        out = np.full(block.shape, values[0], self.outputs[0].dtype)
        for k in np.unique(window):
            if k == 0:
                continue
            mask = resize_block((window == k).astype(np.float32), [a for a, _ in need], taps,
                                out_box)
            out[mask >= 0.5] = values[k]
        return {"cell": out}

    def segment_block(self, block: np.ndarray, stats: IntensityStats,
                      voxel_size_nm: tuple[float, float, float]) -> dict[str, np.ndarray]:
        """The whole volume in one process: the same steps, run synchronously."""
        context = self.volume_context(da.from_array(np.asarray(block))).compute(scheduler="sync")
        box = tuple(slice(0, n) for n in block.shape)
        return self.segment_block_in(block, stats, voxel_size_nm, box=box, shape=block.shape,
                                     context=context)

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        """An engine block resizes one label mask at a time (a few float32 copies) beside the
        label grid; the patch tasks hold one batch's activations (not per block).
        """
        return 6 * 4 * int(np.prod(block_shape)) + int(np.prod(self.grid))

    def with_batch_size(self, batch_size: int) -> UNet3DSegmenter:
        return self if self.batch_size <= batch_size else dataclasses.replace(
            self, batch_size=batch_size)

    def predict(self, volume: np.ndarray,
                voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0), *,
                threshold: float | None = None) -> dict[str, np.ndarray]:
        """Whole-volume prediction, returned as the cell U-Net returns it: ``{"cell_mask",
        "nucleus_mask"}`` (:func:`cell_masks`; the label values themselves come from
        :meth:`segment_volume`). The method has no threshold.
        """
        labels = super().predict(volume, voxel_size_nm, threshold=threshold)
        return cell_masks(np.asarray(labels), self.outputs[0].classes)


@dataclass(frozen=True)
class _SameForAll(BlockContext):
    """Every block reads the same lazy value (the label grid: 16 MiB at 256³)."""

    value: Delayed

    def for_block(self, box: tuple[slice, ...]) -> Delayed:
        return self.value


def normalise_grid(grid: np.ndarray, normalize: bool, mu: float, sig: float) -> np.ndarray:
    """Min–max to [0, 1]; with ``normalize``, to the file's ``mu``, ``sig``, clipped to [0, 1]."""
    g = np.asarray(grid, np.float32)
    g = g - g.min()
    top = g.max()
    if top > 0:
        g = g / top
    if normalize:
        mean, std = float(g.mean(dtype=np.float64)), float(g.std(dtype=np.float64))
        g = (g - np.float32(mean)) / np.float32(std if std > 0 else 1.0)
        g = np.clip(g * np.float32(sig) + np.float32(mu), 0, 1)
    return g.astype(np.float32)


def _predict(seg: UNet3DSegmenter, grid: np.ndarray, starts: list[tuple[int, ...]]) -> np.ndarray:
    """Softmax outputs (B, labels, pz, py, px) of one batch of patches."""
    import torch

    pz, py, px = seg.patch
    chans = [np.stack([grid[z:z + pz, y:y + py, x:x + px] for z, y, x in starts])]
    if seg.channels == 2:
        pos = _position(grid.shape)
        chans.append(np.stack([pos[z:z + pz, y:y + py, x:x + px] for z, y, x in starts]))
    x = np.stack(chans, axis=1)
    net = seg.model
    device = next(net.parameters()).device
    with torch.inference_mode():
        return net(torch.from_numpy(x).to(device)).float().cpu().numpy()


def _accumulate(total: np.ndarray | None, probs: np.ndarray, starts: list[tuple[int, ...]],
                grid: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """Add one batch's softmax outputs in patch order (a chain: the same sums for any run)."""
    if total is None:
        total = np.zeros((probs.shape[1], *grid), np.float32)
    for p, (z, y, x) in zip(probs, starts, strict=True):
        total[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]] += p
    return total


def _vote(total: np.ndarray, clean: float | None, fill: float | None) -> np.ndarray:
    labels = np.argmax(total, axis=0).astype(np.uint8 if total.shape[0] < 256 else np.uint16)
    if clean is not None:
        labels = clean_labels(labels, clean)
    if fill is not None:
        labels = fill_labels(labels, fill)
    return labels
