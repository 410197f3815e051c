"""Insulin secretory granules: dense spheres, some placed in touching pairs and triples.

A cluster's spheres overlap by about a voxel as continuous balls; each voxel in an overlap goes to
the sphere it lies deepest in (smallest ``|v - c| - r``), so touching granules meet along a
flattened contact face, every voxel belongs to exactly one granule, and each member of a cluster
shares at least one face with another (checked before the cluster is drawn). Clusters and single
granules keep a one-voxel halo of free cytoplasm, so granules of different clusters never touch.
"""

from __future__ import annotations

import numpy as np

from ._organelles import GIVE_UP, free_points
from ._params import PhantomParams
from ._stamp import CYTO, HALO, ISG, box_around, distances

__all__ = ["cluster_sizes", "place_isgs"]

_TRIES = 100  # start points tried per cluster before giving up on it
_CORE = 0.08  # relative extra density at a granule's centre


def cluster_sizes(rng: np.random.Generator, n: int, touching_fraction: float) -> list[int]:
    """Sizes (1, 2 or 3) of the clusters of ``n`` granules; 2s and 3s first."""
    n_touching = round(touching_fraction * n)
    if n_touching == 1:
        n_touching = 2 if n >= 2 else 0
    sizes: list[int] = []
    left = n_touching
    while left > 0:
        size = 3 if left == 3 or (left >= 5 and rng.uniform() < 0.3) else 2
        sizes.append(size)
        left -= size
    return sizes + [1] * (n - n_touching)


def place_isgs(
    rng: np.random.Generator,
    region: np.ndarray,
    lac: np.ndarray,
    isg: np.ndarray,
    p: PhantomParams,
    lo: np.ndarray,
    hi: np.ndarray,
) -> int:
    """Place up to ``p.n_isg`` granules on free cytoplasm; returns how many were placed.

    Labels are written to ``isg`` as 1..N in placement order.
    """
    points = free_points(rng, region, lo, hi)
    next_id = 1
    failures = {1: 0, 2: 0, 3: 0}  # clusters of each size in a row that found no room
    for size in cluster_sizes(rng, p.n_isg, p.touching_fraction):
        if failures[size] >= GIVE_UP:  # no room left for clusters of this size
            continue
        radii = p.isg_radius[0] + (p.isg_radius[1] - p.isg_radius[0]) * rng.beta(2.0, 2.0, size)
        values = rng.uniform(*p.lac_isg, size)
        failures[size] += 1
        for _, start in zip(range(_TRIES), points, strict=False):
            centers = _grow_cluster(rng, start, radii)
            if centers is not None and _stamp(region, lac, isg, centers, radii, values, next_id):
                next_id, failures[size] = next_id + size, 0
                break
    return next_id - 1


def _grow_cluster(
    rng: np.random.Generator, start: np.ndarray, radii: np.ndarray
) -> np.ndarray | None:
    """Centres for a chain or triangle of spheres, each overlapping an earlier one slightly."""
    centers = [start]
    for k in range(1, len(radii)):
        for _ in range(8):
            anchor = int(rng.integers(0, k))
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            overlap = min(rng.uniform(0.7, 1.4), 0.4 * float(radii.min()))
            center = centers[anchor] + (radii[anchor] + radii[k] - overlap) * direction
            gaps = [np.linalg.norm(center - centers[j]) - radii[j] - radii[k] for j in range(k)]
            if min(gaps) >= -1.5:
                centers.append(center)
                break
        else:
            return None
    return np.asarray(centers)


def _stamp(region: np.ndarray, lac: np.ndarray, isg: np.ndarray, centers: np.ndarray,
           radii: np.ndarray, values: np.ndarray, first_id: int) -> bool:
    """Draw one cluster if all its voxels are free cytoplasm and its members touch."""
    reach = radii[:, None] + 2.0
    box = box_around((centers - reach).min(0), (centers + reach).max(0), region.shape)
    if box is None:
        return False
    depth = np.stack([distances(box, c) - np.float32(r) for c, r in zip(centers, radii, strict=False)])
    owner = np.argmin(depth, axis=0)
    nearest = np.take_along_axis(depth, owner[None], axis=0)[0]
    inside = nearest <= 0
    reg = region[box]
    if np.any(reg[inside] != CYTO) or np.bincount(owner[inside], minlength=len(radii)).min() == 0:
        return False
    if not _all_touch(owner, inside, len(radii)):
        return False
    reg[(nearest <= 1.0) & ~inside & (reg == CYTO)] = HALO
    reg[inside] = ISG
    isg[box][inside] = (first_id + owner[inside]).astype(isg.dtype)
    rel = 1.0 + nearest[inside] / radii[owner[inside]]  # |v - c| / r of the owning sphere
    lac[box][inside] = values[owner[inside]] * (1.0 + _CORE * (1.0 - rel * rel))
    return True


def _all_touch(owner: np.ndarray, inside: np.ndarray, size: int) -> bool:
    """Whether every one of ``size`` members shares a voxel face with another member."""
    if size == 1:
        return True
    touching: set[int] = set()
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        both = inside[tuple(a)] & inside[tuple(b)]
        differ = both & (owner[tuple(a)] != owner[tuple(b)])
        touching.update(np.unique(owner[tuple(a)][differ]).tolist())
        touching.update(np.unique(owner[tuple(b)][differ]).tolist())
    return len(touching) == size
