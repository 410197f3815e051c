"""Organelles other than ISGs: chromatin and nucleolus, lipid droplets and vacuoles, mitochondria."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ._body import Body
from ._params import PhantomParams
from ._stamp import (
    CYTO,
    HALO,
    LIPID,
    MITO,
    NUCLEUS,
    VACUOLE,
    Box,
    box_around,
    distances,
    sample_free_points,
    segment_distances,
)

__all__ = ["GIVE_UP", "add_nucleolus", "free_points", "place_distractors", "place_mitos"]

_HALO = 1.0  # voxels of free cytoplasm kept around each organelle
_STEP = 1.0  # voxels between points of a mitochondrion's centre line
_TRIES = 30  # start points tried per organelle before giving up on it
GIVE_UP = 20  # organelles in a row that found no room: the cytoplasm is full, stop placing


def free_points(
    rng: np.random.Generator, region: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> Iterator[np.ndarray]:
    """Endless uniform random points in [lo, hi] whose voxel is free cytoplasm when drawn."""
    misses = 0
    while misses < 64:
        batch = sample_free_points(rng, region, lo, hi + 1.0, 512)
        misses = misses + 1 if len(batch) == 0 else 0
        yield from batch


def add_nucleolus(
    rng: np.random.Generator, region: np.ndarray, lac: np.ndarray, nucleus: Body, p: PhantomParams
) -> None:
    """A nucleolus: one to three overlapping dense balls deep in the nucleoplasm (LAC only)."""
    n_lobes = int(rng.integers(1, 4))
    surface = nucleus.surface_points(rng.standard_normal((1, 3)))[0]
    core = nucleus.center + rng.uniform(0.0, 0.4) * (surface - nucleus.center)
    for _ in range(n_lobes):
        radius = rng.uniform(0.10, 0.18) * float(nucleus.semi.min()) + 1.0
        center = core + rng.standard_normal(3) * radius * 0.5
        _paint_ball(region, lac, center, radius, p.lac_chromatin + rng.uniform(-0.01, 0.01))


def _paint_ball(
    region: np.ndarray, lac: np.ndarray, center: np.ndarray, radius: float, value: float
) -> None:
    """Set the LAC of nucleoplasm voxels within ``radius`` of ``center`` to ``value``."""
    box = box_around(center - radius, center + radius, region.shape, clip=True)
    if box is None:
        return
    where = (distances(box, center) <= radius) & (region[box] == NUCLEUS)
    lac[box][where] = value


def place_distractors(
    rng: np.random.Generator,
    region: np.ndarray,
    lac: np.ndarray,
    p: PhantomParams,
    lo: np.ndarray,
    hi: np.ndarray,
) -> int:
    """Lipid droplets (dense) and vacuoles (light, with a rim): larger, fewer spheres than ISGs."""
    points = free_points(rng, region, lo, hi)
    kinds = [(LIPID, 5.0, 9.0)] * p.n_lipid + [(VACUOLE, 5.0, 11.0)] * p.n_vacuole
    placed = failures = 0
    for code, r_lo, r_hi in kinds:
        radius = rng.uniform(r_lo, r_hi)
        value = p.lac_lipid if code == LIPID else p.lac_vacuole
        for _, center in zip(range(_TRIES), points, strict=False):
            if _stamp_ball(region, lac, center, radius, code, value, rim=p.lac_membrane):
                placed, failures = placed + 1, 0
                break
        else:
            failures += 1
            if failures == GIVE_UP:
                break
    return placed


def _stamp_ball(region: np.ndarray, lac: np.ndarray, center: np.ndarray, radius: float,
                code: int, value: float, *, rim: float) -> bool:
    """Stamp a ball on free cytoplasm only; a vacuole gets a one-voxel rim of ``rim`` LAC."""
    box = box_around(center - radius - 2.0, center + radius + 2.0, region.shape)
    if box is None:
        return False
    dist = distances(box, center)
    inside = dist <= radius
    reg = region[box]
    if np.any(reg[dist <= radius + _HALO] != CYTO):
        return False
    reg[(dist <= radius + _HALO) & ~inside] = HALO
    reg[inside] = code
    values = np.where(dist > radius - 1.0, rim, value) if code == VACUOLE else value
    lac[box][inside] = np.broadcast_to(values, dist.shape)[inside]
    return True


def place_mitos(
    rng: np.random.Generator,
    region: np.ndarray,
    lac: np.ndarray,
    p: PhantomParams,
    lo: np.ndarray,
    hi: np.ndarray,
) -> int:
    """Curved tubes (sometimes branched) of free cytoplasm; returns how many were placed."""
    points = free_points(rng, region, lo, hi)
    placed = failures = 0
    for _ in range(p.n_mito):
        radius = rng.uniform(*p.mito_radius)
        length = rng.uniform(*p.mito_length)
        value = p.lac_mito + rng.uniform(-0.01, 0.01)
        for _, start in zip(range(_TRIES), points, strict=False):
            tube = _grow_tube(rng, region, start, length, radius, p)
            if tube is not None:
                _commit(region, lac, tube, value)
                placed, failures = placed + 1, 0
                break
        else:
            failures += 1
            if failures == GIVE_UP:  # the cytoplasm is full
                break
    return placed


Piece = tuple[Box, np.ndarray, np.ndarray]  # (box, inside mask, halo mask)


def _grow_tube(rng: np.random.Generator, region: np.ndarray, start: np.ndarray, length: float,
               radius: float, p: PhantomParams) -> list[Piece] | None:
    """The pieces of one mitochondrion, or None if it could not reach its minimum length."""
    direction = _unit(rng.standard_normal(3))
    line = _centre_line(rng, region, start, direction, length, radius)
    pieces = _capsules(region, line, radius)
    if (len(pieces) * 2 * _STEP) + 2.0 * radius < p.mito_length[0]:
        return None
    if rng.uniform() < p.branch_probability and len(pieces) >= 6:
        at = int(rng.integers(len(pieces) // 3, 2 * len(pieces) // 3 + 1)) * 2
        turn = _unit(np.cross(line[at + 1] - line[at], rng.standard_normal(3)))
        angle = rng.uniform(math.radians(35.0), math.radians(80.0))
        heading = math.cos(angle) * _unit(line[at + 1] - line[at]) + math.sin(angle) * turn
        branch = _centre_line(rng, region, line[at], heading, rng.uniform(0.3, 0.6) * length,
                              0.8 * radius)
        pieces += _capsules(region, branch, 0.8 * radius)
    return pieces


def _centre_line(rng: np.random.Generator, region: np.ndarray, start: np.ndarray,
                 direction: np.ndarray, length: float, radius: float) -> np.ndarray:
    """A smoothly curving path from ``start``, turning away from anything but free cytoplasm."""
    line = [start]
    for _ in range(int(length / _STEP)):
        for attempt in range(6):
            turned = _unit(direction + (0.2 + 0.25 * attempt) * rng.standard_normal(3))
            nxt = line[-1] + _STEP * turned
            if _free(region, nxt) and _free(region, nxt + (radius + 1.5) * turned):
                break
        else:
            break
        direction = turned
        line.append(nxt)
    return np.asarray(line)


def _capsules(region: np.ndarray, line: np.ndarray, radius: float) -> list[Piece]:
    """Capsules along every second step of ``line``, stopping at the first that is not free."""
    pieces: list[Piece] = []
    for a, b in zip(line[:-2:2], line[2::2], strict=True):
        reach = radius + _HALO + 1.0
        box = box_around(np.minimum(a, b) - reach, np.maximum(a, b) + reach, region.shape)
        if box is None:
            break
        dist = segment_distances(box, a, b)
        inside = dist <= radius
        if np.any(region[box][inside] != CYTO):
            break
        pieces.append((box, inside, dist <= radius + _HALO))
    return pieces


def _commit(region: np.ndarray, lac: np.ndarray, pieces: list[Piece], value: float) -> None:
    for box, _, near in pieces:
        reg = region[box]
        reg[near & (reg == CYTO)] = HALO
    for box, inside, _ in pieces:
        region[box][inside] = MITO
        lac[box][inside] = value


def _free(region: np.ndarray, point: np.ndarray) -> bool:
    idx = np.rint(point).astype(int)
    if np.any(idx < 0) or np.any(idx >= region.shape):
        return False
    return bool(region[idx[0], idx[1], idx[2]] == CYTO)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)
