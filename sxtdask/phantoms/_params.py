"""Phantom parameters: what varies from seed to seed, and the rules every value must follow.

Lengths are in voxels, linear absorption coefficients (LAC) in µm⁻¹ (water window, ~520 eV);
``noise_sigma`` and ``texture`` too. The phantom's image is these × the voxel size in µm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sxtdask.errors import ConfigError

__all__ = [
    "OVERRIDABLE",
    "VARIATIONS",
    "PhantomParams",
    "apply_overrides",
    "check_shape",
    "draw_params",
    "draw_wide_params",
]

MIN_SIDE = 16

# name -> (kind, low, high); kinds: int, float, range (low <= a <= b <= high), triple (3 floats)
_RULES: dict[str, tuple[str, float, float]] = {
    "n_cells": ("int", 1, 3),
    "n_isg": ("int", 0, 1_000_000),
    "isg_radius": ("range", 1.0, 12.0),
    "touching_fraction": ("float", 0.0, 1.0),
    "n_mito": ("int", 0, 100_000),
    "mito_radius": ("range", 1.0, 8.0),
    "mito_length": ("range", 2.0, 400.0),
    "branch_probability": ("float", 0.0, 1.0),
    "n_lipid": ("int", 0, 10_000),
    "n_vacuole": ("int", 0, 10_000),
    "noise_sigma": ("float", 0.0, 1.0),
    "psf_sigma": ("triple", 0.0, 5.0),
    "texture": ("float", 0.0, 0.1),
    "lac_ice": ("float", 0.0, 2.0),
    "lac_cytoplasm": ("float", 0.0, 2.0),
    "lac_membrane": ("float", 0.0, 2.0),
    "lac_nucleus": ("float", 0.0, 2.0),
    "lac_chromatin": ("float", 0.0, 2.0),
    "lac_mito": ("float", 0.0, 2.0),
    "lac_isg": ("range", 0.0, 2.0),
    "lac_lipid": ("float", 0.0, 2.0),
    "lac_vacuole": ("float", 0.0, 2.0),
    # scene and imaging (defaults below; the classic draw leaves them alone)
    "lac_wall": ("float", 0.0, 5.0),
    "lac_void": ("float", 0.0, 2.0),
    "lac_bead": ("float", 0.0, 5.0),
    "n_beads": ("int", 0, 10_000),
    "bead_radius": ("range", 1.0, 40.0),
    "n_debris": ("int", 0, 10_000),
    "ice_thickness": ("range", 0.1, 1.0),
    "dose": ("float", 0.0, 1e9),
}

OVERRIDABLE: tuple[str, ...] = tuple(_RULES)


@dataclass(frozen=True)
class PhantomParams:
    """The values one phantom was drawn with (lengths in voxels; LAC, noise, texture in µm⁻¹).

    Every field can be set through ``make_phantom(**overrides)``; values are checked here, and a
    value outside its rule raises :class:`~sxtdask.errors.ConfigError` naming the field.
    ``psf_sigma`` is ``(z, y, x)`` in voxels (a single number means isotropic); ``n_cells`` counts
    the whole cell plus partial neighbours cut by the volume's side faces.

    The scene's own values: ``lac_wall`` (a capillary's glass), ``lac_void`` (vacuum beyond the
    capillary or the ice), ``n_beads`` polystyrene beads of ``lac_bead`` and ``bead_radius``
    voxels in the medium, ``n_debris`` clumps of broken cells, ``ice_thickness`` (a grid's ice
    layer, as fractions of Z, thinnest to thickest), and ``dose`` (photons per detector pixel and
    projection, for the tilt-series imaging model).
    """

    n_cells: int
    n_isg: int
    isg_radius: tuple[float, float]
    touching_fraction: float
    n_mito: int
    mito_radius: tuple[float, float]
    mito_length: tuple[float, float]
    branch_probability: float
    n_lipid: int
    n_vacuole: int
    noise_sigma: float
    psf_sigma: tuple[float, float, float]
    texture: float
    lac_ice: float
    lac_cytoplasm: float
    lac_membrane: float
    lac_nucleus: float
    lac_chromatin: float
    lac_mito: float
    lac_isg: tuple[float, float]
    lac_lipid: float
    lac_vacuole: float
    lac_wall: float = 1.2
    lac_void: float = 0.0
    lac_bead: float = 0.8
    n_beads: int = 0
    bead_radius: tuple[float, float] = (7.0, 14.0)
    n_debris: int = 0
    ice_thickness: tuple[float, float] = (0.7, 0.95)
    dose: float = 10000.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _coerce(field.name, getattr(self, field.name)))


def _coerce(name: str, value: Any) -> Any:
    """Return ``value`` in its canonical type, or raise ConfigError naming ``name``."""
    kind, low, high = _RULES[name]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"phantom option {name} must be an integer, got {value!r}")
        numbers: tuple[float, ...] = (int(value),)
    elif kind == "float":
        numbers = (_number(name, value),)
    else:
        size = 3 if kind == "triple" else 2
        if kind == "triple" and _is_number(value):
            value = (value,) * 3
        if not isinstance(value, (tuple, list, np.ndarray)) or len(value) != size:
            raise ConfigError(f"phantom option {name} must be {size} numbers, got {value!r}")
        numbers = tuple(_number(name, v) for v in value)
        if kind == "range" and numbers[0] > numbers[1]:
            raise ConfigError(f"phantom option {name}={value!r}: the minimum exceeds the maximum")
    for number in numbers:
        if not low <= number <= high:
            raise ConfigError(f"phantom option {name}={value!r} is outside [{low:g}, {high:g}]")
    if kind == "int":
        return int(numbers[0])
    return numbers[0] if kind == "float" else numbers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _number(name: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"phantom option {name} must be a finite number, got {value!r}")
    return float(value)


def check_shape(shape: Any) -> tuple[int, int, int]:
    """Return ``shape`` as three ints, each at least 16, or raise ConfigError."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ConfigError(f"phantom shape must be (Z, Y, X), got {shape!r}") from None
    if len(dims) != 3 or not all(_is_number(d) and float(d) == int(d) for d in dims):
        raise ConfigError(f"phantom shape must be three integers (Z, Y, X), got {shape!r}")
    if min(int(d) for d in dims) < MIN_SIDE:
        raise ConfigError(f"phantom shape {shape!r} is too small: every side must be >= {MIN_SIDE}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def draw_params(rng: np.random.Generator, cyto_scale: float) -> PhantomParams:
    """Draw one phantom's parameters.

    ``cyto_scale`` is the cell's cytoplasm volume over that of a nominal cell in a 128×256×256
    volume; counts grow as ``cyto_scale ** 0.84`` (≈100–400 ISGs at 128×256×256, ≈1,500–3,000 at
    480×600×480). Every draw happens in a fixed order whatever is overridden later.
    """
    grow = cyto_scale**0.84
    u = rng.uniform
    cyto = u(0.20, 0.27)
    nucleus = _nucleus_lac(cyto, u(0.025, 0.05), darker=u() < 0.8)
    psf_xy = u(0.8, 1.05)
    isg_lo = u(0.35, 0.43)
    draws: dict[str, Any] = dict(  # noqa: C408
        n_cells=1 + int(u() < 0.35) + int(u() < 0.15),
        n_isg=round(u(170.0, 320.0) * grow),
        isg_radius=(2.5, 5.0),
        touching_fraction=u(0.15, 0.4),
        n_mito=round(u(20.0, 55.0) * grow),
        mito_radius=(2.0, 4.0),
        mito_length=(10.0, 40.0),
        branch_probability=u(0.1, 0.4),
        n_lipid=int(rng.integers(0, 3) * grow + 0.5),
        n_vacuole=int(rng.integers(0, 4) * grow + 0.5),
        noise_sigma=u(0.01, 0.03),
        psf_sigma=(psf_xy * u(1.15, 1.43), psf_xy, psf_xy),
        texture=u(0.008, 0.02),
        lac_ice=u(0.10, 0.12),
        lac_cytoplasm=cyto,
        lac_membrane=cyto + u(0.03, 0.07),
        lac_nucleus=nucleus,
        lac_chromatin=u(0.27, 0.30),
        lac_mito=max(u(0.27, 0.33), cyto + 0.045),
        lac_isg=(isg_lo, u(isg_lo + 0.05, 0.55)),
        lac_lipid=u(0.45, 0.60),
        lac_vacuole=u(0.13, 0.17),
    )
    return PhantomParams(**draws)


VARIATIONS = ("classic", "wide")


def draw_wide_params(rng: np.random.Generator, cyto_scale: float) -> PhantomParams:
    """Draw one phantom's parameters over the wide ranges real tomograms span.

    Every LAC varies per tomogram in the ranges published for the water window (cytoplasm
    0.16–0.34 µm⁻¹, water ice ≈0.11; granules the densest organelle, then mitochondria): the
    nucleus lighter or darker than the cytoplasm with equal odds, heterochromatin present in
    60 % of tomograms, granule contrast over the cytoplasm from 0.05 to 0.35 µm⁻¹. PSF (σ 0.6–1.8
    voxels in-plane, 1–1.6× that along z), noise (0.005–0.05 µm⁻¹ for the direct model; dose
    1,500–40,000 photons for the tilt series) and texture (0.004–0.035 µm⁻¹) cover blurrier, sharper,
    noisier and cleaner data than the classic draw. Scene clutter: 0–5 beads, 0–4 debris clumps.
    """
    grow = cyto_scale**0.84
    u = rng.uniform
    cyto = u(0.16, 0.34)
    delta = u(0.01, 0.07)
    nucleus = max(0.10, cyto - delta) if u() < 0.5 else cyto + delta
    chromatin = nucleus + u(0.02, 0.08) if u() < 0.6 else nucleus
    mito = cyto + u(0.03, 0.10)
    isg_lo = max(mito + u(0.01, 0.08), cyto + u(0.05, 0.25))
    isg_hi = isg_lo + u(0.02, 0.12)
    psf_xy = u(0.6, 1.8)
    draws: dict[str, Any] = dict(  # noqa: C408
        n_cells=1 + int(u() < 0.5) + int(u() < 0.3),
        n_isg=round(u(120.0, 360.0) * grow),
        isg_radius=(u(2.3, 3.2), u(4.2, 6.0)),
        touching_fraction=u(0.1, 0.45),
        n_mito=round(u(15.0, 60.0) * grow),
        mito_radius=(u(1.6, 2.4), u(3.0, 4.5)),
        mito_length=(10.0, u(30.0, 60.0)),
        branch_probability=u(0.05, 0.5),
        n_lipid=int(rng.integers(0, 4) * grow + 0.5),
        n_vacuole=int(rng.integers(0, 5) * grow + 0.5),
        noise_sigma=u(0.005, 0.05),
        psf_sigma=(psf_xy * u(1.0, 1.6), psf_xy, psf_xy),
        texture=u(0.004, 0.035),
        lac_ice=u(0.08, 0.13),
        lac_cytoplasm=cyto,
        lac_membrane=cyto + u(0.0, 0.06),
        lac_nucleus=nucleus,
        lac_chromatin=min(chromatin, 2.0),
        lac_mito=mito,
        lac_isg=(isg_lo, isg_hi),
        lac_lipid=u(max(isg_lo, 0.4), 0.75),
        lac_vacuole=u(0.08, 0.16),
        lac_wall=u(0.8, 2.0),
        lac_void=0.0,
        lac_bead=u(0.5, 1.0),
        n_beads=int(rng.integers(0, 6)),
        bead_radius=(u(5.0, 8.0), u(9.0, 14.0)),
        n_debris=int(rng.integers(0, 5)),
        ice_thickness=(u(0.55, 0.75), u(0.8, 1.0)),
        dose=float(np.exp(u(np.log(1500.0), np.log(40000.0)))),
    )
    return PhantomParams(**draws)


def _nucleus_lac(cyto: float, delta: float, *, darker: bool) -> float:
    """Nucleoplasm LAC in [0.18, 0.25], ``delta`` (at least 0.025) below or above ``cyto``."""
    room_down, room_up = cyto - 0.18, 0.25 - cyto
    if (darker and room_down >= delta) or (room_up < delta and room_down >= room_up):
        return cyto - min(delta, room_down)
    return cyto + min(delta, room_up)


def apply_overrides(params: PhantomParams, overrides: Mapping[str, Any]) -> PhantomParams:
    """Return ``params`` with ``overrides`` applied; unknown names raise ConfigError."""
    unknown = sorted(set(overrides) - set(_RULES))
    if unknown:
        raise ConfigError(
            f"unknown phantom option(s) {', '.join(unknown)}; expected some of {', '.join(_RULES)}"
        )
    return dataclasses.replace(params, **overrides)
