"""Cell geometry: one whole cell with its nucleus, plus partial neighbours at the volume's sides."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._body import Body, random_body
from ._stamp import CHROMATIN, CYTO, ENVELOPE, MEMBRANE, NUCLEUS

__all__ = ["NOMINAL_CYTOPLASM", "CellGeometry", "draw_cells", "render_cells"]

_SLAB = 8  # z-slices per signed-distance evaluation (bounds the temporaries)
_MARGIN = 2.0  # voxels kept free between the whole cell and the volume's faces

# cytoplasm volume (voxels) of the median cell drawn for a 128×256×256 volume; counts scale by it
NOMINAL_CYTOPLASM = 1.8e6


@dataclass(frozen=True, eq=False)
class CellGeometry:
    """The bodies of one phantom (voxels).

    cell, nucleus : the whole cell and its nucleus
    chromatin : inner boundary of the heterochromatin, a patchy layer under the envelope
    neighbours : partial cells centred outside the volume (two are always drawn; ``n_cells - 1``
        of them are rendered)
    membrane, envelope : thickness of the plasma membrane and nuclear envelope shells
    gap : ice kept between the whole cell and a neighbour
    """

    cell: Body
    nucleus: Body
    chromatin: Body
    neighbours: tuple[Body, ...]
    membrane: float
    envelope: float
    gap: float

    @property
    def cytoplasm_volume(self) -> float:
        """Approximate cytoplasm volume of the whole cell (voxels), without the nucleus."""
        return self.cell.volume() - self.nucleus.volume()

    def sampling_box(self, shape: tuple[int, int, int], n_cells: int) -> tuple[np.ndarray, ...]:
        """(lo, hi) corners of the box holding every rendered cell, float voxels."""
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        for body in (self.cell, *self.neighbours[: n_cells - 1]):
            box = body.box(shape)
            if box is not None:
                lo = np.minimum(lo, [s.start for s in box])
                hi = np.maximum(hi, [s.stop - 1 for s in box])
        return lo, hi


def draw_cells(rng: np.random.Generator, shape: tuple[int, int, int]) -> CellGeometry:
    """Draw the whole cell, its nucleus and two candidate neighbours for a volume of ``shape``."""
    dims = np.asarray(shape, float)
    membrane = rng.uniform(1.2, 2.2)
    cell = _draw_whole_cell(rng, dims)
    nucleus = _draw_nucleus(rng, cell, membrane)
    chromatin = _draw_chromatin(rng, nucleus)
    faces = rng.permutation(4)[:2]
    neighbours = tuple(_draw_neighbour(rng, dims, cell, int(face)) for face in faces)
    return CellGeometry(cell, nucleus, chromatin, neighbours, membrane, rng.uniform(1.0, 1.8),
                        rng.uniform(2.0, 6.0))


def _draw_whole_cell(rng: np.random.Generator, dims: np.ndarray) -> Body:
    side = min(dims[1], dims[2])
    semi = np.array([dims[0], side, side]) * rng.uniform([0.36, 0.34, 0.34], [0.47, 0.47, 0.47])
    center = dims / 2.0 + rng.uniform(-0.04, 0.04, 3) * dims
    body = random_body(rng, center, semi, roughness=rng.uniform(0.06, 0.14), tilt_deg=12.0)
    room = np.minimum(center, dims - 1.0 - center) - _MARGIN
    fit = float(np.min(room / body.half_extent()))
    return body.scaled(fit) if fit < 1.0 else body


def _draw_nucleus(rng: np.random.Generator, cell: Body, membrane: float) -> Body:
    semi = cell.semi * rng.uniform(0.45, 0.62, 3)
    offset = rng.standard_normal(3)
    offset *= rng.uniform(0.0, 0.2) / np.linalg.norm(offset)
    center = cell.center + (offset * cell.semi) @ cell.rot.T
    nucleus = random_body(rng, center, semi, roughness=rng.uniform(0.04, 0.10), tilt_deg=15.0)
    dirs = rng.standard_normal((400, 3))
    for _ in range(40):
        if cell.sdf_points(nucleus.surface_points(dirs)).min() >= membrane + 4.0:
            break
        nucleus = nucleus.scaled(0.93)
    return nucleus


def _draw_chromatin(rng: np.random.Generator, nucleus: Body) -> Body:
    """The nucleus shrunk by 7–15 % with extra bumps: the layer between them is heterochromatin.

    Where a bump reaches past the nuclear surface there is no heterochromatin, so the layer
    breaks into patches of varying thickness.
    """
    depth = rng.uniform(0.07, 0.15)
    bumps = random_body(rng, nucleus.center, nucleus.semi, roughness=depth * rng.uniform(1.5, 2.5),
                        freq_range=(3.0, 9.0))
    return Body(nucleus.center, nucleus.semi * (1.0 - depth), nucleus.rot,
                np.concatenate([nucleus.dirs, bumps.dirs]),
                np.concatenate([nucleus.amps, bumps.amps]),
                np.concatenate([nucleus.freqs, bumps.freqs]),
                np.concatenate([nucleus.phases, bumps.phases]))


def _draw_neighbour(rng: np.random.Generator, dims: np.ndarray, cell: Body, face: int) -> Body:
    """A cell centred beyond side face ``face`` (0: y=0, 1: y=max, 2: x=0, 3: x=max)."""
    axis, high = 1 + face // 2, bool(face % 2)
    semi = cell.semi * rng.uniform(0.8, 1.1, 3)
    center = dims * rng.uniform(0.2, 0.8, 3)
    body = random_body(rng, center, semi, roughness=rng.uniform(0.06, 0.14), tilt_deg=12.0)
    reach = body.half_extent()[axis]
    depth = rng.uniform(0.06, 0.18) * dims[axis]
    center[axis] = dims[axis] - 1.0 - depth + reach if high else depth - reach
    return Body(center, body.semi, body.rot, body.dirs, body.amps, body.freqs, body.phases)


def render_cells(region: np.ndarray, cells: CellGeometry, n_cells: int) -> None:
    """Write cytoplasm, membrane, nucleus and envelope codes of the cells into ``region``."""
    _render_body(region, cells.cell, cells.membrane, CYTO, MEMBRANE)
    for neighbour in cells.neighbours[: n_cells - 1]:
        _render_body(region, neighbour, cells.membrane, CYTO, MEMBRANE,
                     avoid=cells.cell, gap=cells.gap)
    _render_body(region, cells.nucleus, cells.envelope, NUCLEUS, ENVELOPE)
    _render_chromatin(region, cells.nucleus, cells.chromatin)


def _render_body(
    region: np.ndarray,
    body: Body,
    shell: float,
    inner: int,
    outer: int,
    *,
    avoid: Body | None = None,
    gap: float = 0.0,
) -> None:
    """Paint ``body``: ``outer`` within ``shell`` voxels of its surface, ``inner`` deeper.

    With ``avoid``, only voxels at least ``gap`` outside that body are painted, and a shell is
    drawn along the cut as well (two cells pressed against each other).
    """
    box = body.box(region.shape)
    if box is None:
        return
    for z0 in range(box[0].start, box[0].stop, _SLAB):
        slab = (slice(z0, min(z0 + _SLAB, box[0].stop)), box[1], box[2])
        sd = body.sdf_grid(slab)
        if avoid is not None:
            sd = np.minimum(sd, -gap - avoid.sdf_grid(slab))
        codes = np.where(sd > shell, np.uint8(inner), np.uint8(outer))
        np.copyto(region[slab], codes, where=sd > 0)


def _render_chromatin(region: np.ndarray, nucleus: Body, inner: Body) -> None:
    """Mark nucleoplasm outside ``inner`` as heterochromatin."""
    box = nucleus.box(region.shape)
    if box is None:
        return
    for z0 in range(box[0].start, box[0].stop, _SLAB):
        slab = (slice(z0, min(z0 + _SLAB, box[0].stop)), box[1], box[2])
        reg = region[slab]
        reg[(reg == NUCLEUS) & (inner.sdf_grid(slab) <= 0)] = CHROMATIN


def nominal_cytoplasm(n: int = 64) -> float:
    """Median cytoplasm volume of cells drawn for 128×256×256 (how NOMINAL_CYTOPLASM was set)."""
    volumes = [draw_cells(np.random.default_rng(s), (128, 256, 256)).cytoplasm_volume
               for s in range(n)]
    return float(np.median(volumes)) if volumes else math.nan
