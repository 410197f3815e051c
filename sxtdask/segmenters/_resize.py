"""Separable resizing with OpenCV's interpolation rules, computed voxel by voxel from fixed taps.

Biomedisa resizes a tomogram to its grid with OpenCV: area interpolation when any axis shrinks,
else cubic, the same mode on all axes. Here each axis is resized by a table of taps (input
indices and weights per output index) built from OpenCV's formulas: cubic with a = −0.75 and
half-pixel centres, area as the exact overlap of pixel footprints when shrinking and OpenCV's
"area upsampling" weights when enlarging, borders replicated. Every output voxel is the same
fixed sum over its taps whatever block it is computed in, so a volume resized block by block
(on Dask, never holding the whole tomogram) is bit-identical to one resized whole. Values
agree with ``cv2.resize`` up to float rounding (OpenCV runs the same formulas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import dask.array as da
import numpy as np
from dask import delayed

__all__ = ["Taps", "axis_taps", "resize_block", "resize_dask", "resize_mode"]

_A = -0.75  # OpenCV's cubic coefficient


@dataclass(frozen=True)
class Taps:
    """Input indices ``idx`` (n_out, T) and float32 weights ``w`` (n_out, T) of one axis."""

    idx: np.ndarray
    w: np.ndarray

    def needed(self, lo: int, hi: int) -> tuple[int, int]:
        """The input range [a, b) that outputs [lo, hi) read."""
        sub = self.idx[lo:hi]
        return int(sub.min()), int(sub.max()) + 1


def resize_mode(shape_in: Sequence[int], shape_out: Sequence[int]) -> str:
    """``area`` when any axis shrinks, else ``cubic`` (Biomedisa's rule)."""
    return "area" if any(o < i for i, o in zip(shape_in, shape_out, strict=True)) else "cubic"


@lru_cache(maxsize=64)
def axis_taps(n_in: int, n_out: int, mode: str) -> Taps:
    """The taps that resize one axis from ``n_in`` to ``n_out`` samples."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize {n_in} samples to {n_out}")
    scale = n_in / n_out
    d = np.arange(n_out, dtype=np.float64)
    if mode == "cubic":
        fx = (d + 0.5) * scale - 0.5
        sx = np.floor(fx)
        f = fx - sx
        w0 = ((_A * (f + 1) - 5 * _A) * (f + 1) + 8 * _A) * (f + 1) - 4 * _A
        w1 = ((_A + 2) * f - (_A + 3)) * f * f + 1
        w2 = ((_A + 2) * (1 - f) - (_A + 3)) * (1 - f) * (1 - f) + 1
        w = np.stack([w0, w1, w2, 1 - w0 - w1 - w2], axis=1)
        idx = sx[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]
    elif mode == "area" and n_out < n_in:  # footprint overlaps
        taps = math.ceil(scale) + 1
        start = np.floor(d * scale).astype(np.int64)
        idx = start[:, None] + np.arange(taps)[None, :]
        left = np.maximum(idx, d[:, None] * scale)
        right = np.minimum(idx + 1, (d[:, None] + 1) * scale)
        w = np.clip(right - left, 0, None) / scale
    elif mode == "area":  # OpenCV's area upsampling: a one-sample linear step
        inv = n_out / n_in
        sx = np.floor(d * scale)
        f = (d + 1) - (sx + 1) * inv
        f = np.where(f <= 0, 0.0, f - np.floor(f))
        w = np.stack([1 - f, f], axis=1)
        idx = sx[:, None].astype(np.int64) + np.arange(2)[None, :]
    else:
        raise ValueError(f"unknown interpolation {mode!r}")
    return Taps(np.clip(idx, 0, n_in - 1), w.astype(np.float32))


def _apply(arr: np.ndarray, axis: int, taps: Taps, lo: int, hi: int, offset: int) -> np.ndarray:
    """Outputs [lo, hi) along ``axis`` from ``arr`` whose index 0 is input index ``offset``."""
    idx, w = taps.idx[lo:hi] - offset, taps.w[lo:hi]
    shape = [1] * arr.ndim
    shape[axis] = hi - lo
    out = np.zeros(arr.shape[:axis] + (hi - lo,) + arr.shape[axis + 1:], np.float32)
    for t in range(idx.shape[1]):  # a fixed order: the same sum in every block
        out += np.take(arr, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def resize_block(window: np.ndarray, offsets: Sequence[int], taps: Sequence[Taps],
                 box: Sequence[tuple[int, int]]) -> np.ndarray:
    """The output voxels in ``box`` ((lo, hi) per axis) from an input ``window`` starting at
    input index ``offsets``; axes resized x, then y, then z.
    """
    out = np.asarray(window, np.float32)
    for axis in (2, 1, 0):
        lo, hi = box[axis]
        out = _apply(out, axis, taps[axis], lo, hi, offsets[axis])
    return out


def resize_dask(image: da.Array, shape_out: Sequence[int], *, chunk: int = 64,
                mode: str | None = None) -> da.Array:
    """``image`` resized to ``shape_out``, one task per output block of ``chunk``³.

    Each task reads only the input window its outputs' taps cover, so no task holds the whole
    input; the result does not depend on ``image``'s chunks.
    """
    shape_in = tuple(int(s) for s in image.shape)
    shape_out = tuple(int(s) for s in shape_out)
    mode = mode or resize_mode(shape_in, shape_out)
    taps = [axis_taps(i, o, mode) for i, o in zip(shape_in, shape_out, strict=True)]
    edges = [list(range(0, n, chunk)) + [n] for n in shape_out]
    blocks: list = []
    for z0, z1 in zip(edges[0][:-1], edges[0][1:], strict=True):
        plane: list = []
        for y0, y1 in zip(edges[1][:-1], edges[1][1:], strict=True):
            row: list = []
            for x0, x1 in zip(edges[2][:-1], edges[2][1:], strict=True):
                box = ((z0, z1), (y0, y1), (x0, x1))
                need = [t.needed(lo, hi) for t, (lo, hi) in zip(taps, box, strict=True)]
                window = image[tuple(slice(a, b) for a, b in need)]
                part = delayed(resize_block, pure=True)(window, [a for a, _ in need], taps, box)
                row.append(da.from_delayed(part, (z1 - z0, y1 - y0, x1 - x0), dtype=np.float32))
            plane.append(row)
        blocks.append(plane)
    return da.block(blocks)
