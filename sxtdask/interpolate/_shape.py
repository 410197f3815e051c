"""Shape-based interpolation: per class, the signed distance maps of the labelled slices,
interpolated across the unlabelled slices with a monotone cubic (PCHIP).

For each labelled slice and each class, the in-plane signed distance to the class's boundary
(negative inside: ``0.5 − EDT(inside)``, positive outside: ``EDT(outside) − 0.5``; a class absent
from the slice is ``Y + X`` everywhere) is computed once. Between two labelled slices every
voxel takes the class whose interpolated distance is the smallest. The interpolant is
Fritsch–Carlson's piecewise cubic Hermite (SciPy's ``PchipInterpolator``: the same slopes and
end conditions), which keeps each distance monotone between two slices and, unlike linear
interpolation (Raya & Udupa 1990), follows the curvature of round shapes across three or four
labelled slices. Beyond the first and the last labelled slice the end cubic is extended for one
spacing (the distance to the neighbouring labelled slice); further out the result is 0.

Everything a block needs is the labelled slices around it (at most two on each side), so blocks
are exact by construction: the result does not depend on the chunking.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["needed_slices", "shape_block", "slice_sdf"]


def slice_sdf(plane: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Per class, the signed distance map of a labelled slice: (classes, P1, P2) float32."""
    far = np.float32(sum(plane.shape))
    out = np.empty((len(classes), *plane.shape), np.float32)
    for c, value in enumerate(classes):
        inside = plane == value
        if not inside.any():
            out[c] = far
        elif inside.all():
            out[c] = -far
        else:
            out[c] = np.where(inside, np.float32(0.5) - ndi.distance_transform_edt(inside),
                              ndi.distance_transform_edt(~inside) - np.float32(0.5))
    return out


def _interval(positions: np.ndarray, z: int) -> int:
    """The interval [positions[i], positions[i + 1]] whose cubic gives slice ``z``."""
    return int(np.clip(np.searchsorted(positions, z, side="right") - 1, 0, len(positions) - 2))


def needed_slices(positions: tuple[int, ...], lo: int, hi: int) -> list[int]:
    """Indices (into ``positions``) of the labelled slices the cubics of slices lo..hi-1 use."""
    n = len(positions)
    pos = np.asarray(positions)
    first, last = _interval(pos, lo), _interval(pos, hi - 1)
    need = set(range(first - 1, last + 3))
    if first == 0:
        need |= {0, 1, 2}
    if last + 1 == n - 1:
        need |= {n - 3, n - 2, n - 1}
    return sorted(i for i in need if 0 <= i < n)


def _edge(h0: float, h1: float, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
    """PCHIP's one-sided three-point end slope, shape-preserving (SciPy's ``_edge_case``)."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    flip = np.sign(d) != np.sign(m0)
    big = (np.sign(m0) != np.sign(m1)) & (np.abs(d) > 3.0 * np.abs(m0))
    d = np.where(flip, np.float32(0.0), d)
    return np.where(~flip & big, np.float32(3.0) * m0, d).astype(np.float32)


def _interior(h0: float, h1: float, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
    """PCHIP's slope at a slice between intervals h0 and h1 with secant slopes m0, m1: 0 at an
    extremum, else the weighted harmonic mean of m0 and m1 (Fritsch & Carlson).
    """
    w1, w2 = 2 * h1 + h0, h1 + 2 * h0
    flat = (np.sign(m0) != np.sign(m1)) | (m0 == 0) | (m1 == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        whmean = (w1 / m0 + w2 / m1) / (w1 + w2)
        d = np.where(flat, np.float32(0.0), np.float32(1.0) / whmean)
    return d.astype(np.float32)


class _Cubic:
    """The PCHIP pieces of one block: slopes computed once from the slices given."""

    def __init__(self, positions: tuple[int, ...], sdfs: dict[int, np.ndarray]) -> None:
        self.pos = np.asarray(positions)
        self.h = np.diff(self.pos).astype(np.float64)
        self.d = sdfs
        self._secant: dict[int, np.ndarray] = {}
        self._slope: dict[int, np.ndarray] = {}

    def secant(self, k: int) -> np.ndarray:
        if k not in self._secant:
            self._secant[k] = ((self.d[k + 1] - self.d[k]) / np.float32(self.h[k])).astype(np.float32)
        return self._secant[k]

    def slope(self, i: int) -> np.ndarray:
        if i not in self._slope:
            n, h = len(self.pos), self.h
            if n == 2:
                s = self.secant(0)
            elif i == 0:
                s = _edge(h[0], h[1], self.secant(0), self.secant(1))
            elif i == n - 1:
                s = _edge(h[n - 2], h[n - 3], self.secant(n - 2), self.secant(n - 3))
            else:
                s = _interior(h[i - 1], h[i], self.secant(i - 1), self.secant(i))
            self._slope[i] = s
        return self._slope[i]

    def at(self, z: int) -> np.ndarray | None:
        """The interpolated distances of slice ``z``, or None beyond the extended ends."""
        pos, h = self.pos, self.h
        if z < pos[0] - h[0] or z > pos[-1] + h[-1]:
            return None
        i = _interval(pos, z)
        t = (z - pos[i]) / h[i]
        h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
        h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
        return (np.float32(h00) * self.d[i] + np.float32(h10 * h[i]) * self.slope(i)
                + np.float32(h01) * self.d[i + 1] + np.float32(h11 * h[i]) * self.slope(i + 1))


def shape_block(sdfs: list[np.ndarray], indices: list[int], positions: tuple[int, ...],
                core: tuple[tuple[int, int], ...], axis: int, classes: tuple[int, ...],
                dtype: np.dtype) -> np.ndarray:
    """The interpolated labels of one block.

    Parameters
    ----------
    sdfs : list of (classes, P1, P2) float32
        :func:`slice_sdf` of the labelled slices ``indices`` (indices into ``positions``, as
        :func:`needed_slices` names them), whole planes.
    positions : tuple of int
        Every labelled slice along ``axis``, ascending.
    core : box
        The block, global [lo, hi) per axis.
    axis : int
        The axis across whose slices the labels are interpolated.
    classes : tuple of int
    dtype : numpy dtype of the labels
    """
    inplane = [a for a in range(3) if a != axis]
    crop = (slice(None), *(slice(*core[a]) for a in inplane))
    cubic = _Cubic(positions, {i: s[crop] for i, s in zip(indices, sdfs, strict=True)})
    values = np.asarray(classes, dtype=dtype)
    out = np.zeros(tuple(hi - lo for lo, hi in core), dtype)
    lo = core[axis][0]
    for z in range(lo, core[axis][1]):
        dist = cubic.at(z)
        if dist is None:
            continue
        index: list[Any] = [slice(None)] * 3
        index[axis] = z - lo
        out[tuple(index)] = values[np.argmin(dist, axis=0)]
    return out
