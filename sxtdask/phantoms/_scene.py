"""Scenes as real samples have them: a glass capillary or a flat grid's ice, beads and debris.

``apply_scene`` runs after the cells are drawn and before any organelle is placed, so that
organelles only ever occupy what is left of a cell:

``capillary``
    A glass tube along y (the tilt axis), centred in (z, x). Cells are cut by its inner wall, as
    cells pressed against it are, with a membrane along the cut; the glass is bright
    (``lac_wall``) and beyond it is vacuum (``lac_void``). Cells follow each other along the tube.
``grid``
    A layer of ice whose mid-plane and thickness vary smoothly over (y, x) (``ice_thickness``,
    fractions of Z); vacuum above and below it. Cells thicker than the ice stay whole.
``none``
    The classic scene: the volume is filled with ice around the cells.

Every mount may hold ``n_beads`` polystyrene beads and ``n_debris`` clumps of broken cells in the
medium; neither is a cell in the ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._params import PhantomParams
from ._stamp import BEAD, CELL_LABEL, CYTO, DEBRIS, ICE, MEMBRANE, VOID, WALL, box_around, distances

__all__ = ["MOUNTS", "apply_scene"]

MOUNTS = ("none", "capillary", "grid")
_TRIES = 40


def apply_scene(rng: np.random.Generator, region: np.ndarray, params: PhantomParams, mount: str,
                membrane: float) -> dict[str, float]:
    """Paint the mount, beads and debris into ``region``; returns the scene's geometry."""
    geometry: dict[str, float] = {}
    if mount == "capillary":
        geometry = _capillary(rng, region, membrane)
    elif mount == "grid":
        geometry = _grid(rng, region, params.ice_thickness)
    geometry["beads"] = _beads(rng, region, params)
    geometry["debris"] = _debris(rng, region, params.n_debris)
    return geometry


def _capillary(rng: np.random.Generator, region: np.ndarray, membrane: float) -> dict[str, float]:
    nz, _, nx = region.shape
    side = min(nz, nx)
    cz = nz / 2 - 0.5 + rng.uniform(-0.03, 0.03) * side
    cx = nx / 2 - 0.5 + rng.uniform(-0.03, 0.03) * side
    inner = rng.uniform(0.40, 0.46) * side
    outer = inner + max(1.5, rng.uniform(0.02, 0.05) * inner)
    z = np.arange(nz, dtype=np.float32)[:, None] - np.float32(cz)
    x = np.arange(nx, dtype=np.float32)[None, :] - np.float32(cx)
    rho = np.sqrt(z * z + x * x)  # (Z, X), the same for every y
    for y in range(region.shape[1]):
        plane = region[:, y, :]
        in_cell = CELL_LABEL[plane] != 0
        np.copyto(plane, np.uint8(MEMBRANE), where=in_cell & (plane == CYTO) & (rho > inner - membrane))
        plane[rho > inner] = WALL
        plane[rho > outer] = VOID
    return {"capillary_inner_radius": float(inner), "capillary_outer_radius": float(outer)}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    """A smooth random field over (y, x) in [-1, 1]."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells))
    zoom = (shape[0] / cells, shape[1] / cells)
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    return np.clip(field, -1.0, 1.0).astype(np.float32)


def _grid(rng: np.random.Generator, region: np.ndarray, thickness: tuple[float, float]
          ) -> dict[str, float]:
    nz, ny, nx = region.shape
    lo, hi = thickness
    t = nz * (lo + (hi - lo) * (_smooth_field(rng, (ny, nx)) + 1.0) / 2)
    room = np.maximum(nz - t, 0.0) / 2
    mid = nz / 2 + 0.8 * room * _smooth_field(rng, (ny, nx))
    z = np.arange(nz, dtype=np.float32)[:, None, None]
    outside = np.abs(z - mid[None]) > t[None] / 2
    region[outside & (region == ICE)] = VOID
    return {"ice_thickness_min": float(t.min()), "ice_thickness_max": float(t.max())}


def _ball_in_medium(region: np.ndarray, center: np.ndarray, radius: float, code: int) -> bool:
    box = box_around(center - radius - 1.0, center + radius + 1.0, region.shape)
    if box is None:
        return False
    dist = distances(box, center)
    reg = region[box]
    if np.any(reg[dist <= radius + 1.0] != ICE):
        return False
    reg[dist <= radius] = code
    return True


def _medium_points(rng: np.random.Generator, region: np.ndarray, n: int) -> np.ndarray:
    points = rng.uniform(0, np.asarray(region.shape) - 1, size=(n, 3))
    idx = np.rint(points).astype(int)
    return points[region[idx[:, 0], idx[:, 1], idx[:, 2]] == ICE]


def _beads(rng: np.random.Generator, region: np.ndarray, params: PhantomParams) -> float:
    placed = 0
    for _ in range(params.n_beads):
        radius = rng.uniform(*params.bead_radius)
        for center in _medium_points(rng, region, _TRIES):
            if _ball_in_medium(region, center, radius, BEAD):
                placed += 1
                break
    return float(placed)


def _debris(rng: np.random.Generator, region: np.ndarray, n: int) -> float:
    """Clumps of broken cells: 3–6 overlapping balls of 3–9 voxels, on medium voxels only."""
    placed = 0
    for _ in range(n):
        points = _medium_points(rng, region, _TRIES)
        if not len(points):
            continue
        center = points[0]
        for _ in range(int(rng.integers(3, 7))):
            c = center + rng.normal(0.0, 5.0, 3)
            r = rng.uniform(3.0, 9.0)
            box = box_around(c - r, c + r, region.shape, clip=True)
            if box is None:
                continue
            reg = region[box]
            reg[(distances(box, c) <= r) & (reg == ICE)] = DEBRIS
        placed += 1
    return float(placed)
