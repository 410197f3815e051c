"""Image formation: cytoplasm texture, a blurring PSF and additive noise, in float32."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._stamp import CELL_LABEL

__all__ = ["add_noise", "add_texture", "blur"]

_SLAB = 16  # z-slices per step when adding texture or noise (bounds the temporaries)
_OCTAVES = ((16, 1.0), (5, 0.6), (2, 0.5))  # (grid spacing in voxels, relative amplitude)


def add_texture(
    rng: np.random.Generator, lac: np.ndarray, region: np.ndarray, amplitude: float
) -> None:
    """Add smooth random density variation (std about ``amplitude`` µm⁻¹) inside the cells."""
    if amplitude <= 0:
        return
    fields = [_smooth_yx(rng, lac.shape, spacing) * np.float32(amplitude * weight)
              for spacing, weight in _OCTAVES]
    for z0 in range(0, lac.shape[0], _SLAB):
        zs = slice(z0, min(z0 + _SLAB, lac.shape[0]))
        total = sum(_upsample(f, 0, zs, spacing) for f, (spacing, _) in zip(fields, _OCTAVES, strict=True))
        total *= CELL_LABEL[region[zs]] != 0
        lac[zs] += total


def _smooth_yx(rng: np.random.Generator, shape: tuple[int, ...], spacing: int) -> np.ndarray:
    """Unit-variance value noise on a grid of ``spacing`` voxels, upsampled along y and x."""
    coarse_shape = tuple((n - 1) // spacing + 2 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), 0.7)
    coarse /= max(float(coarse.std()), 1e-6)
    half = _upsample(coarse, 2, slice(0, shape[2]), spacing)
    return _upsample(half, 1, slice(0, shape[1]), spacing)


def _upsample(coarse: np.ndarray, axis: int, wanted: slice, spacing: int) -> np.ndarray:
    """Linear interpolation of ``coarse`` (grid step ``spacing``) at voxels ``wanted`` of ``axis``."""
    pos = np.arange(wanted.start, wanted.stop, dtype=np.float32) / np.float32(spacing)
    i0 = np.floor(pos).astype(np.intp)
    shape = [1, 1, 1]
    shape[axis] = len(pos)
    w = (pos - i0).reshape(shape)
    low = np.take(coarse, i0, axis=axis)
    high = np.take(coarse, i0 + 1, axis=axis)
    high -= low
    high *= w
    high += low
    return high


def blur(lac: np.ndarray, sigma: tuple[float, float, float]) -> np.ndarray:
    """Anisotropic Gaussian PSF (``sigma`` in voxels, (z, y, x)); a new float32 array."""
    if max(sigma) <= 0:
        return lac.copy()
    return ndimage.gaussian_filter(lac, sigma, mode="nearest", truncate=3.0, output=np.float32)


def add_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> None:
    """Add white Gaussian noise of standard deviation ``sigma`` (µm⁻¹) in place, slab by slab."""
    if sigma <= 0:
        return
    for z0 in range(0, image.shape[0], _SLAB):
        slab = image[z0 : z0 + _SLAB]
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise *= np.float32(sigma)
        slab += noise
