"""Local stamping: each object is drawn only inside its own bounding box.

The phantom is built in a ``region`` volume of uint8 codes; every organelle may only occupy
voxels that are still ``CYTO`` (free cytoplasm), and leaves a one-voxel ``HALO`` of cytoplasm
around itself so that later objects never touch it unless they are placed together.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CELL_LABEL",
    "CHROMATIN",
    "BEAD",
    "CYTO",
    "DEBRIS",
    "ENVELOPE",
    "HALO",
    "ICE",
    "ISG",
    "LIPID",
    "MEMBRANE",
    "MITO",
    "NUCLEUS",
    "N_CODES",
    "VACUOLE",
    "VOID",
    "WALL",
    "Box",
    "box_around",
    "distances",
    "sample_free_points",
]

ICE, CYTO, MEMBRANE, NUCLEUS, ENVELOPE, MITO, ISG, LIPID, VACUOLE, HALO, CHROMATIN = range(11)
# outside the cells: glass capillary wall, vacuum (beyond the capillary or the ice), beads, debris
WALL, VOID, BEAD, DEBRIS = range(11, 15)
N_CODES = 15

# region code -> ground-truth cell label (0 ice, 1 cytoplasm and all it holds, 2 nucleus)
CELL_LABEL = np.array([0, 1, 1, 2, 2, 1, 1, 1, 1, 1, 2, 0, 0, 0, 0], dtype=np.uint8)

Box = tuple[slice, slice, slice]


def box_around(
    lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...], *, clip: bool = False
) -> Box | None:
    """Voxel box holding the points between ``lo`` and ``hi`` (inclusive, float voxels).

    Returns None when the box leaves the volume, unless ``clip`` (then None only if empty).
    """
    start = np.floor(lo).astype(int)
    stop = np.ceil(hi).astype(int) + 1
    if clip:
        start, stop = np.maximum(start, 0), np.minimum(stop, shape)
        if np.any(stop <= start):
            return None
    elif np.any(start < 0) or np.any(stop > np.asarray(shape)):
        return None
    return (slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1])),
            slice(int(start[2]), int(stop[2])))


def distances(box: Box, center: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels, float32) from ``center`` to every voxel of ``box``."""
    axes = [(np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)) ** 2
            for s, c in zip(box, center, strict=False)]
    return np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])


def segment_distances(box: Box, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (voxels, float32) from the segment ``a``–``b`` to every voxel of ``box``."""
    rel = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c) for s, c in zip(box, a, strict=False)]
    grid = [rel[0][:, None, None], rel[1][None, :, None], rel[2][None, None, :]]
    d = (b - a).astype(np.float32)
    length2 = max(float(d @ d), 1e-12)
    t = (grid[0] * d[0] + grid[1] * d[1] + grid[2] * d[2]) / np.float32(length2)
    np.clip(t, 0.0, 1.0, out=t)
    squared = sum((g - t * np.float32(di)) ** 2 for g, di in zip(grid, d, strict=False))
    return np.sqrt(squared)


def sample_free_points(
    rng: np.random.Generator, region: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int
) -> np.ndarray:
    """Up to ``n`` uniform random points in the box [lo, hi) whose voxel is still ``CYTO``."""
    points = rng.uniform(lo, hi, size=(n, 3))
    idx = np.clip(np.rint(points).astype(int), 0, np.asarray(region.shape) - 1)
    keep = region[idx[:, 0], idx[:, 1], idx[:, 2]] == CYTO
    return points[keep]
