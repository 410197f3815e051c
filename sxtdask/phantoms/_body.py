"""Deformed ellipsoids: the shapes of cells and nuclei.

A body is an ellipsoid whose radius along each direction ``u`` (in the body's frame, scaled by its
semi-axes) is multiplied by a smooth random factor ``f(u) = 1 + Σ a_k sin(w_k d_k·u + φ_k)``.
Its approximate signed distance (voxels, positive inside) at a point ``p`` is the radial one,
``(f(u) - r) · |p - c| / r`` with ``r`` the normalised ellipsoid radius of ``p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Body", "random_body", "random_rotation"]

_N_LOBES = 8


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly evenly spread unit vectors (n, 3)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth),
                     np.sin(polar) * np.cos(azimuth)], axis=1)


_SPHERE = _fibonacci_sphere(4000)


@dataclass(frozen=True, eq=False)
class Body:
    """A deformed ellipsoid in (z, y, x) voxel coordinates.

    center : (3,) float, voxels
    semi : (3,) float, semi-axes in voxels, along the body's own axes
    rot : (3, 3) float, columns are the body's axes in volume coordinates
    dirs, amps, freqs, phases : (K, 3), (K,), (K,), (K,) the surface perturbation
    """

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray
    dirs: np.ndarray
    amps: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray

    def scaled(self, factor: float) -> Body:
        """The same body with semi-axes multiplied by ``factor``."""
        return Body(self.center, self.semi * factor, self.rot, self.dirs, self.amps, self.freqs,
                    self.phases)

    def volume(self) -> float:
        """Volume of the undeformed ellipsoid, voxels."""
        return 4.0 / 3.0 * math.pi * float(np.prod(self.semi))

    def half_extent(self) -> np.ndarray:
        """(3,) half-size of the axis-aligned box that holds the body, voxels (1 % to spare)."""
        reach = np.abs(self.surface_points(_SPHERE) - self.center).max(axis=0)
        return reach * 1.01 + 0.5

    def box(self, shape: tuple[int, int, int]) -> tuple[slice, ...] | None:
        """Slices of the volume that hold the body (clipped), or None if it lies outside."""
        half = self.half_extent()
        lo = np.maximum(np.floor(self.center - half).astype(int), 0)
        hi = np.minimum(np.ceil(self.center + half).astype(int) + 1, shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    def factor(self, u: np.ndarray) -> np.ndarray:
        """Radius factor ``f(u)`` for unit vectors ``u`` (..., 3) in the body frame."""
        f = np.ones(u.shape[:-1])
        for d, a, w, phi in zip(self.dirs, self.amps, self.freqs, self.phases, strict=True):
            f += a * np.sin(w * (u @ d) + phi)
        return f

    def surface_points(self, u: np.ndarray, depth: np.ndarray | float = 0.0) -> np.ndarray:
        """Points (N, 3) at ``depth`` voxels inside the surface along body-frame directions ``u``."""
        u = u / np.linalg.norm(u, axis=-1, keepdims=True)
        rho = np.linalg.norm(u * self.semi, axis=-1)
        scale = self.factor(u) - np.asarray(depth) / rho
        return self.center + (u * self.semi * scale[:, None]) @ self.rot.T

    def sdf_points(self, p: np.ndarray) -> np.ndarray:
        """Approximate signed distance (voxels, positive inside) at points ``p`` (N, 3)."""
        rel = np.atleast_2d(p) - self.center
        q = (rel @ self.rot) / self.semi
        r = np.maximum(np.linalg.norm(q, axis=-1), 1e-6)
        f = self.factor(q / r[:, None])
        return (f - r) * np.linalg.norm(rel, axis=-1) / r

    def sdf_grid(self, box: tuple[slice, ...]) -> np.ndarray:
        """Approximate signed distance (voxels, positive inside) on the voxels of ``box``, float32."""
        axes = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)
                for s, c in zip(box, self.center, strict=False)]
        rel = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
        q = [_combine(rel, self.rot[:, i] / self.semi[i]) for i in range(3)]
        dist = np.sqrt(_combine([r * r for r in rel], np.ones(3)))
        r = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        np.maximum(r, np.float32(1e-6), out=r)
        inv_r = np.float32(1.0) / r
        f = np.ones_like(r)
        for d, a, w, phi in zip(self.dirs, self.amps, self.freqs, self.phases, strict=True):
            s = _combine(q, w * d)
            s *= inv_r
            s += np.float32(phi)
            np.sin(s, out=s)
            s *= np.float32(a)
            f += s
        f -= r
        f *= dist
        f *= inv_r
        return f


def _combine(parts: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """``Σ weights[i] * parts[i]`` broadcast to a full float32 array."""
    out = parts[0] * np.float32(weights[0]) + parts[1] * np.float32(weights[1])
    return out + parts[2] * np.float32(weights[2])


def random_rotation(rng: np.random.Generator, tilt_deg: float) -> np.ndarray:
    """A rotation: any angle in the (y, x) plane, then tilts of up to ``tilt_deg`` out of it."""
    yaw = rng.uniform(0.0, 2.0 * math.pi)
    tilt_a, tilt_b = np.radians(rng.uniform(-tilt_deg, tilt_deg, size=2))
    return _rot(1, 2, yaw) @ _rot(0, 1, tilt_a) @ _rot(0, 2, tilt_b)


def _rot(i: int, j: int, angle: float) -> np.ndarray:
    m = np.eye(3)
    c, s = math.cos(angle), math.sin(angle)
    m[i, i] = m[j, j] = c
    m[i, j], m[j, i] = -s, s
    return m


def random_body(
    rng: np.random.Generator,
    center: np.ndarray,
    semi: np.ndarray,
    *,
    roughness: float,
    tilt_deg: float = 10.0,
    freq_range: tuple[float, float] = (1.0, 5.0),
) -> Body:
    """A body with a smooth random surface whose radius changes by at most ``roughness``.

    ``freq_range`` bounds the angular frequencies of the lobes (higher: smaller bumps).
    """
    dirs = rng.standard_normal((_N_LOBES, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = rng.uniform(*freq_range, _N_LOBES)
    weights = rng.uniform(0.3, 1.0, _N_LOBES) / freqs
    amps = roughness * weights / weights.sum()
    phases = rng.uniform(0.0, 2.0 * math.pi, _N_LOBES)
    rot = random_rotation(rng, tilt_deg)
    return Body(np.asarray(center, float), np.asarray(semi, float), rot, dirs, amps, freqs, phases)
