"""Classical ISG instances that adapt to each tomogram: local contrast, the tomogram's own noise,
blob shape, and each granule's own half maximum.

Insulin secretory granules are small, dense, nearly spherical bodies. A fixed absorption threshold
does not follow another blur, contrast or reconstruction (granules came out 2.4× too large under
another PSF), so no step here uses one fixed intensity:

1. **Local contrast.** The tomogram is smoothed (Gaussian, ``sigma``) and its local background is
   a grey opening (a ``background``-voxel cube, larger than any granule) of a smoother copy; what
   stands above it (the top-hat) is small and bright, whatever the cytoplasm, nucleus or ice.
2. **Seeds from the tomogram's own noise.** Candidate centres are the maxima of the
   scale-normalised Laplacian of Gaussian at ``scale`` (σ², which separates touching granules that
   one smoothed maximum would merge) whose dynamic is at least ``dynamics`` × the noise, where the
   top-hat is at least ``detect`` × the noise. The noise is the smoothed tomogram's
   (``IntensityStats.noise_smooth``): one whole-volume figure that follows the correlation of FBP's
   and SIRT's noise. A seed must be blob-shaped: all three curvatures of the smoother copy there
   are negative, the weakest at least ``blobness`` of the strongest (membranes, walls and
   mitochondrial tubes have one or two near zero).
3. **Each granule's own extent.** The Laplacian's basins are flooded from the seeds and a granule
   keeps the voxels of its basin whose top-hat is at least ``threshold`` (0.5: the half maximum) of
   its own peak, so its boundary follows its blur and contrast.
4. A size filter drops specks and large bodies (beads, nucleoli).

Every step looks a bounded distance away (``halo`` covers it), so chunked results equal a
whole-volume run but for rare borderline seeds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from ..errors import ConfigError
from ..stats import IntensityStats
from ._base import OutputKind, OutputSpec, Segmenter
from ._names import Method, Task

__all__ = ["ClassicalISG", "blob_like", "split_granules"]

logger = logging.getLogger(__name__)

#: Noise of white noise after a unit 3-D Gaussian, relative to the voxel noise: (2√π)^(-3/2).
_WHITE_GAIN = (2.0 * math.sqrt(math.pi)) ** -1.5
_CUBE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class ClassicalISG(Segmenter):
    """Adaptive classical ISG instance segmentation (local contrast, noise, shape, half maximum).

    Parameters
    ----------
    sigma : float
        Gaussian smoothing of the top-hat, voxels.
    scale : float
        σ of the Laplacian of Gaussian whose maxima are the candidate centres, voxels.
    background : int
        Side of the cube whose grey opening is the local background, voxels; larger than the
        largest granule's diameter.
    detect : float
        Least top-hat at a seed, in units of the smoothed tomogram's noise.
    dynamics : float
        Least dip between two seeds' maxima, in the same units (noise bumps on one granule do
        not split it).
    threshold : float
        A granule keeps the voxels of its basin at or above this fraction of its own peak
        contrast (0 < threshold < 1; 0.5 is the half maximum).
    blobness : float
        Least ratio of the weakest to the strongest curvature at a seed (0 accepts tubes and
        sheets, 1 only perfect spheres).
    min_voxels, max_voxels : int
        Size filter: smaller or larger objects are dropped (noise specks, beads, nucleoli).
    halo : (int, int, int)
        Voxels read around every chunk; covers the background cube, the filters and a granule.
    """

    sigma: float = 1.0
    scale: float = 2.0
    background: int = 15
    detect: float = 10.0
    dynamics: float = 2.0
    threshold: float = 0.5
    blobness: float = 0.25
    min_voxels: int = 20
    max_voxels: int = 1500
    halo: tuple[int, int, int] = (32, 32, 32)

    task = Task.ISG_INSTANCES
    method = Method.CLASSICAL
    threshold_field = "threshold"
    outputs = (OutputSpec("isg", OutputKind.INSTANCES, "uint32"),)

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 < self.threshold < 1:
            raise ConfigError(f"threshold ({self.threshold!r}) must lie strictly between 0 and 1 "
                              "(the fraction of each granule's own peak contrast; 0.5 is the half "
                              "maximum)")
        for name in ("sigma", "scale", "detect"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be positive")
        if self.dynamics < 0:
            raise ConfigError(f"dynamics ({self.dynamics}) must not be negative")
        if self.background < 3:
            raise ConfigError(f"background ({self.background}) must be at least 3 voxels")
        if not 0 <= self.blobness <= 1:
            raise ConfigError(f"blobness ({self.blobness}) must lie in 0..1")
        if not 0 <= self.min_voxels <= self.max_voxels:
            raise ConfigError(
                f"min_voxels ({self.min_voxels}) must lie in 0..max_voxels ({self.max_voxels})"
            )
        if len(self.halo) != 3 or any(h < 0 for h in self.halo):
            raise ConfigError(f"halo {self.halo} must be three non-negative integers")

    def noise_level(self, stats: IntensityStats) -> float:
        """The noise of the tomogram smoothed by ``sigma`` (image units)."""
        if np.isfinite(stats.noise_smooth) and stats.noise_smooth > 0:
            return float(stats.noise_smooth) * self.sigma ** -1.5
        if np.isfinite(stats.noise) and stats.noise > 0:
            return float(stats.noise) * _WHITE_GAIN * self.sigma ** -1.5
        return 1e-3 * float(stats.p_high - stats.p_low)

    def contrast(self, block: np.ndarray,
                 voxel_size_nm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """The top-hat (smoothed block minus its local background) and the smoother copy."""
        x = np.asarray(block, dtype=np.float32)
        spacing = _spacing(voxel_size_nm)
        fine = ndimage.gaussian_filter(x, self.sigma / spacing, mode="nearest", truncate=3.0)
        coarse = ndimage.gaussian_filter(x, 2.0 * self.sigma / spacing, mode="nearest",
                                         truncate=3.0)
        size = tuple(max(3, int(round(self.background / s)) | 1) for s in spacing)
        background = ndimage.maximum_filter(ndimage.minimum_filter(coarse, size=size), size=size)
        return fine - background, coarse

    def centres(self, block: np.ndarray, voxel_size_nm: tuple[float, float, float]) -> np.ndarray:
        """The scale-normalised Laplacian of Gaussian, negated (bright blobs are maxima)."""
        s = self.scale / _spacing(voxel_size_nm)
        log = ndimage.gaussian_laplace(np.asarray(block, dtype=np.float32), s, mode="nearest")
        return log * np.float32(-self.scale * self.scale)

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        """ISG instance labels of one block (IDs unique within the block)."""
        empty = {"isg": np.zeros(block.shape, dtype=np.uint32)}
        if stats.is_constant or min(block.shape) < 3:
            return empty
        noise = self.noise_level(stats)
        top, coarse = self.contrast(block, voxel_size_nm)
        relief = self.centres(block, voxel_size_nm)
        # maxima whose dynamic (the dip to a higher maximum) is at least `dynamics` × the noise
        found = h_maxima(relief, np.float32(self.dynamics * noise)).astype(bool)
        found &= top >= np.float32(self.detect * noise)
        regions, n = ndimage.label(found, structure=_CUBE)
        if not n:
            return empty
        coords = np.asarray(ndimage.maximum_position(relief, regions, np.arange(1, n + 1)),
                            dtype=np.intp).reshape(-1, 3)
        coords = coords[blob_like(coarse, coords, self.blobness)]
        if not len(coords):
            return empty
        seeds = np.zeros(top.shape, dtype=np.int32)
        seeds[tuple(coords.T)] = np.arange(1, len(coords) + 1)
        peaks = top[tuple(coords.T)]
        labels = watershed(-relief, seeds, mask=top >= np.float32(self.threshold * peaks.min()))
        own = np.concatenate([[np.inf], self.threshold * peaks]).astype(np.float32)
        labels[top < own[labels]] = 0
        sizes = np.bincount(labels.ravel(), minlength=len(coords) + 1)
        drop = (sizes < self.min_voxels) | (sizes > self.max_voxels)
        drop[0] = True
        return {"isg": np.where(drop, 0, np.arange(sizes.size))[labels].astype(np.uint32)}


def _spacing(voxel_size_nm: tuple[float, float, float]) -> np.ndarray:
    """Voxel size relative to the finest axis (filters are given in voxels of that axis)."""
    v = np.asarray(voxel_size_nm, dtype=float)
    return v / v.min()


def blob_like(image: np.ndarray, coords: np.ndarray, blobness: float) -> np.ndarray:
    """Which points are blob centres: all three curvatures negative, the weakest ≥ ``blobness``
    of the strongest (central differences of ``image`` at each point, edges clamped).
    """
    if blobness <= 0:
        return np.ones(len(coords), dtype=bool)
    shape = np.asarray(image.shape)
    c = coords.astype(np.intp)

    def at(offset: tuple[int, int, int]) -> np.ndarray:
        q = np.clip(c + np.asarray(offset), 0, shape - 1)
        return image[q[:, 0], q[:, 1], q[:, 2]].astype(np.float64)

    centre = at((0, 0, 0))
    hess = np.empty((len(c), 3, 3))
    units = np.eye(3, dtype=int)
    for i in range(3):
        e = tuple(units[i])
        hess[:, i, i] = at(e) + at(tuple(-units[i])) - 2 * centre
        for j in range(i + 1, 3):
            f = units[i] + units[j]
            g = units[i] - units[j]
            hess[:, i, j] = hess[:, j, i] = (at(tuple(f)) + at(tuple(-f)) - at(tuple(g))
                                             - at(tuple(-g))) / 4
    eig = np.linalg.eigvalsh(hess)  # ascending: eig[:, 0] the strongest (most negative)
    return (eig[:, 2] < 0) & (eig[:, 2] <= blobness * eig[:, 0])


def split_granules(
    mask: np.ndarray,
    density: np.ndarray,
    voxel_size_nm: tuple[float, float, float],
    *,
    min_distance: int = 3,
    min_voxels: int = 24,
    max_voxels: int = 800,
) -> np.ndarray:
    """Split a granule mask into instances: distance-transform watershed seeded at its maxima.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
    density : (Z, Y, X) float ndarray
        Smoothed absorption or granule probability; breaks ties between equal distance maxima
        in favour of the denser granule centre.
    voxel_size_nm : (z, y, x)

    Returns
    -------
    (Z, Y, X) uint32 ndarray
        Instances (IDs unique, not consecutive) outside ``min_voxels..max_voxels`` removed.
    """
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.uint32)
    spacing = np.asarray(voxel_size_nm, dtype=float) / min(voxel_size_nm)
    relief = ndimage.distance_transform_edt(mask, sampling=spacing) + 0.1 * density
    coords = peak_local_max(relief, min_distance=min_distance, labels=mask.astype(np.uint8),
                            exclude_border=False)
    seeds = np.zeros(relief.shape, dtype=np.int32)
    seeds[tuple(coords.T)] = np.arange(1, len(coords) + 1)
    labels = watershed(-relief, seeds, mask=mask)
    sizes = np.bincount(labels.ravel())
    drop = (sizes < min_voxels) | (sizes > max_voxels)
    drop[0] = True
    return np.where(drop, 0, np.arange(sizes.size))[labels].astype(np.uint32)
