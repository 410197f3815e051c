"""The numba kernels of Biomedisa's smart interpolation on CPUs: the random walks, the 3×3×3 mean
and the curvature smoothing of hit maps.

Why numba: a walk is a chain of dependent steps (each step's weights depend on where the walker
stands), so it does not vectorise across steps; numpy would run one Python-level loop per step,
and torch's scatter-add helps only when millions of walkers step in lock-step, which costs a
position, key and bounds per walker and gains nothing on two cores. Compiled scalar loops walk
~2·10⁷ steps per second per core here, with no temporary arrays. No ``fastmath``: the float
operations are IEEE's, so every CPU computes the same weights.

Everything a walk draws comes from a counter-based generator (SplitMix64's finaliser applied to
a key and a counter): the key of a walk is a hash of (the run's seed, the seed voxel's global
index, its slice orientation, the walk's number) and step ``s`` uses counter ``s // 2`` (32 bits
per step). A walk is therefore the same whichever block, worker or order runs it, and hit counts
are integers, whose sums do not depend on order: the result is exactly chunk-invariant.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["GREY_STEPS", "box_mean", "curvature_step", "seed_keys", "walk_seeds"]

#: Neighbour intensities are quantised to 1/GREY_STEPS of a grey level of Biomedisa's 0..255
#: scale, so that each seed's six weights per step come from a table of exp() values computed
#: once per seed (4,081 entries) instead of six exp() per step.
GREY_STEPS = 16
#: exp(-x) for x beyond this is 0 in float32: table entries past it are left 0.
_EXP_CUT = 110.0
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@nb.njit(inline="always", cache=True)
def _mix64(x: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective 64-bit hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seed_keys(seed: int, flat: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """The random key of each seed voxel: a hash of the run's ``seed``, the voxel's global flat
    index and the orientation (0 z, 1 y, 2 x) of the labelled slice it lies on.
    """
    return _seed_keys(np.uint64(seed), flat.astype(np.uint64), orientation.astype(np.uint64))


@nb.njit(cache=True)
def _seed_keys(seed: np.uint64, flat: np.ndarray, orientation: np.ndarray) -> np.ndarray:  # pragma: no cover
    base = _mix64(seed + _GOLDEN)
    out = np.empty(flat.shape[0], np.uint64)
    for i in range(flat.shape[0]):
        out[i] = _mix64(base ^ _mix64(flat[i] * np.uint64(4) + orientation[i]))
    return out


@nb.njit(nogil=True, cache=True)
def walk_seeds(  # pragma: no cover - compiled
    q: np.ndarray, q_origin: np.ndarray, seeds: np.ndarray, seed_class: np.ndarray,
    seed_value: np.ndarray, seed_div: np.ndarray, keys: np.ndarray, walks: int, steps: int,
    reach: int, w_lo: np.ndarray, w_hi: np.ndarray, hits: np.ndarray, h_origin: np.ndarray,
) -> None:
    """Walk from every seed and add the hits into ``hits``.

    Parameters
    ----------
    q : (z, y, x) uint16
        The image on 0..255 × GREY_STEPS, covering every voxel a walker can stand on and its six
        neighbours (0 outside the volume: Biomedisa's zero pad), starting at global ``q_origin``.
    seeds : (n, 3) int64
        Global coordinates of the seed voxels.
    seed_class : (n,) int64
        Index of each seed's class into ``hits``' first axis.
    seed_value : (n,) float64
        B, the seed's grey value (0..255): weights are relative to it.
    seed_div : (n,) float64
        1 / (2 var), var the seed's clamped in-plane variance.
    keys : (n,) uint64
        :func:`seed_keys`.
    walks, steps : int
        Walks per seed and steps per walk.
    reach : int
        A walker stays within ``reach`` voxels of its seed along each axis.
    w_lo, w_hi : (3,) int64
        The walkable box [lo, hi), global (the crop within the volume).
    hits : (classes, z, y, x) uint32
        Hit counts from global ``h_origin``; must cover every voxel a walker can reach.
    """
    qz, qy, qx = q.shape
    sq_y, sq_z = qx, qx * qy
    hy, hx = hits.shape[2], hits.shape[3]
    sh_y, sh_z = hx, hx * hy
    qflat = q.ravel()
    nq = 255 * 16 + 1
    lut = np.zeros(nq, np.float32)
    dq = np.array([sq_z, -sq_z, sq_y, -sq_y, 1, -1], np.int64)
    dh = np.array([sh_z, -sh_z, sh_y, -sh_y, 1, -1], np.int64)
    axis_of = np.array([0, 0, 1, 1, 2, 2], np.int64)
    sign_of = np.array([1, -1, 1, -1, 1, -1], np.int64)
    pos = np.zeros(3, np.int64)
    lo = np.zeros(3, np.int64)
    hi = np.zeros(3, np.int64)
    m32 = np.uint64(0xFFFFFFFF)
    scale = np.float32(2.3283064365386963e-10)  # 2**-32
    for i in range(seeds.shape[0]):
        b = seed_value[i]
        d = seed_div[i]
        # the seed's weight table: exp(-(B - g)^2 / (2 var)) for every quantised grey g
        half = math.sqrt(_EXP_CUT / d) * 16.0
        g0 = max(0, int(b * 16.0 - half) - 1)
        g1 = min(nq, int(b * 16.0 + half) + 2)
        lut[:] = 0.0
        for g in range(g0, g1):
            t = b - g * (1.0 / 16.0)
            lut[g] = math.exp(-t * t * d)
        for a in range(3):
            lo[a] = max(w_lo[a], seeds[i, a] - reach)
            hi[a] = min(w_hi[a], seeds[i, a] + reach + 1)
        hrow = hits[seed_class[i]].ravel()
        p0 = ((seeds[i, 0] - q_origin[0]) * qy + seeds[i, 1] - q_origin[1]) * qx + seeds[i, 2] - q_origin[2]
        h0 = ((seeds[i, 0] - h_origin[0]) * hy + seeds[i, 1] - h_origin[1]) * hx + seeds[i, 2] - h_origin[2]
        for w in range(walks):
            wkey = _mix64(keys[i] ^ _mix64(np.uint64(w + 1)))
            pos[0], pos[1], pos[2] = seeds[i, 0], seeds[i, 1], seeds[i, 2]
            p = p0
            h = h0
            u = np.uint64(0)
            for s in range(steps):
                w0 = lut[qflat[p + sq_z]]
                w1 = w0 + lut[qflat[p - sq_z]]
                w2 = w1 + lut[qflat[p + sq_y]]
                w3 = w2 + lut[qflat[p - sq_y]]
                w4 = w3 + lut[qflat[p + 1]]
                w5 = w4 + lut[qflat[p - 1]]
                if s & 1 == 0:
                    u = _mix64(wkey + np.uint64(s // 2 + 1) * _GOLDEN)
                    v = u & m32
                else:
                    v = u >> np.uint64(32)
                r = np.float32(v) * scale * w5
                k = 0  # no weight anywhere: Biomedisa's draw of 0 goes to +z
                if w5 > 0:
                    k = (int(r >= w0) + int(r >= w1) + int(r >= w2) + int(r >= w3) + int(r >= w4))
                a = axis_of[k]
                c = pos[a] + sign_of[k]
                if c >= lo[a] and c < hi[a]:
                    pos[a] = c
                    p += dq[k]
                    h += dh[k]
                    hrow[h] += np.uint32(1)


@nb.njit(nogil=True, cache=True)
def box_mean(img: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Biomedisa's denoising: the mean of each voxel's 3×3×3 neighbourhood within the array.

    Read the array one voxel beyond the region needed (or to the volume's edge, where the
    neighbours beyond do not exist and are left out of the mean, as in Biomedisa). The sum runs
    in a fixed order: a voxel's mean is the same in every block that holds its neighbourhood.
    """
    nz, ny, nx = img.shape
    out = np.empty_like(img)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                acc = np.float32(0.0)
                n = 0
                for k in range(max(0, z - 1), min(nz, z + 2)):
                    for j in range(max(0, y - 1), min(ny, y + 2)):
                        for m in range(max(0, x - 1), min(nx, x + 2)):
                            acc += img[k, j, m]
                            n += 1
                out[z, y, x] = acc / np.float32(n)
    return out


@nb.njit(nogil=True, cache=True)
def curvature_step(phi: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """One step of Biomedisa's curvature smoothing of a hit map: ``phi += 0.01 κ|∇φ|`` at the
    interior voxels (the array's faces stay as they are: Biomedisa's fixed crop border).
    """
    nz, ny, nx = phi.shape
    out = phi.copy()
    eps = np.float32(1e-10)
    for z in range(1, nz - 1):
        for y in range(1, ny - 1):
            for x in range(1, nx - 1):
                c = phi[z, y, x]
                dx = (phi[z, y, x - 1] - phi[z, y, x + 1]) / np.float32(2.0)
                dxx = phi[z, y, x - 1] - np.float32(2.0) * c + phi[z, y, x + 1]
                dy = (phi[z, y - 1, x] - phi[z, y + 1, x]) / np.float32(2.0)
                dyy = phi[z, y - 1, x] - np.float32(2.0) * c + phi[z, y + 1, x]
                dz = (phi[z - 1, y, x] - phi[z + 1, y, x]) / np.float32(2.0)
                dzz = phi[z - 1, y, x] - np.float32(2.0) * c + phi[z + 1, y, x]
                dxy = (phi[z, y - 1, x - 1] + phi[z, y + 1, x + 1] - phi[z, y - 1, x + 1]
                       - phi[z, y + 1, x - 1]) / np.float32(4.0)
                dxz = (phi[z + 1, y, x - 1] + phi[z - 1, y, x + 1] - phi[z + 1, y, x + 1]
                       - phi[z - 1, y, x - 1]) / np.float32(4.0)
                dyz = (phi[z + 1, y - 1, x] + phi[z - 1, y + 1, x] - phi[z + 1, y + 1, x]
                       - phi[z - 1, y - 1, x]) / np.float32(4.0)
                dx2, dy2, dz2 = dx * dx, dy * dy, dz * dz
                kappa = ((dxx * (dy2 + dz2) + dyy * (dx2 + dz2) + dzz * (dx2 + dy2)
                          - np.float32(2.0) * dx * dy * dxy - np.float32(2.0) * dx * dz * dxz
                          - np.float32(2.0) * dy * dz * dyz) / (dx2 + dy2 + dz2 + eps))
                out[z, y, x] = c + np.float32(0.01) * kappa
    return out
