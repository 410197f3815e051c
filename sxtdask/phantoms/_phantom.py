"""``make_phantom``: a synthetic soft X-ray tomogram of a whole cell in ice, with ground truth."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from sxtdask.errors import ConfigError

from ._cells import NOMINAL_CYTOPLASM, CellGeometry, draw_cells, render_cells
from ._imaging import add_noise, add_texture, blur
from ._isg import place_isgs
from ._organelles import add_nucleolus, place_distractors, place_mitos
from ._params import (
    VARIATIONS,
    PhantomParams,
    apply_overrides,
    check_shape,
    draw_params,
    draw_wide_params,
)
from ._scene import MOUNTS, apply_scene
from ._stamp import BEAD, CELL_LABEL, CHROMATIN, DEBRIS, MITO, N_CODES, VOID, WALL
from ._tomo import TiltSeries, project_and_reconstruct

__all__ = ["Phantom", "lac_scale", "make_phantom"]

logger = logging.getLogger(__name__)

# independent random streams, so that overriding one option never changes the others' draws
_GEOMETRY, _PARAMS, _NUCLEUS, _DISTRACTORS, _MITO, _ISG, _TEXTURE, _NOISE, _SCENE = range(9)
IMAGING = ("direct", "tomo")


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic tomogram with its ground truth; every array is (Z, Y, X).

    image : float32, linear absorption coefficient per voxel after the PSF and noise: µm⁻¹ × the
        voxel size in µm (dimensionless, as real SXT reconstructions store it; ≈0.007 for
        cytoplasm at 30 nm). ``image / lac_scale`` is in µm⁻¹, the unit of ``params``.
    cell : uint8, 0 ice, 1 cytoplasm (with membrane, mitochondria, granules...), 2 nucleus
    mito : uint8, 1 inside mitochondria
    isg : uint32, granule instances 1..N, 0 elsewhere
    voxel_size_nm : isotropic voxel size in nanometres (metadata; geometry is in voxels)
    seed : the seed it was made with
    params : the values it was drawn with (after overrides)
    metadata : how it was made: mount, variation, imaging model (tilt range, projections, dose,
        reconstruction, library) and the scene's geometry; plain values, for the image's metadata
    """

    image: np.ndarray
    cell: np.ndarray
    mito: np.ndarray
    isg: np.ndarray
    voxel_size_nm: float
    seed: int
    params: PhantomParams | None = None
    metadata: dict[str, Any] | None = None

    @property
    def lac_scale(self) -> float:
        """µm⁻¹ → image units: the voxel size in µm (``image = LAC[µm⁻¹] × lac_scale``)."""
        return lac_scale(self.voxel_size_nm)

    @cached_property
    def n_isg(self) -> int:
        """Number of granule instances (labels are 1..n_isg)."""
        return int(self.isg.max()) if self.isg.size else 0


def make_phantom(
    shape: tuple[int, int, int] = (128, 256, 256),
    *,
    seed: int = 0,
    voxel_size_nm: float = 30.0,
    mount: str = "none",
    variation: str | None = None,
    imaging: str = "direct",
    tilt: float | None = None,
    tilt_step: float = 1.0,
    recon: str = "fbp",
    iterations: int = 40,
    **overrides: Any,
) -> Phantom:
    """Make a synthetic SXT tomogram of a cell in ice with its ground truth.

    Materials, texture and noise are drawn in µm⁻¹ (``params``); the image is then written as
    per-voxel LAC, µm⁻¹ × ``voxel_size_nm / 1000``, the scale of real reconstructions (and of the
    reference pipeline's ``× 33.33`` preprocessing). Geometry, labels and the relative size of
    noise and blur do not depend on ``voxel_size_nm``.

    Parameters
    ----------
    shape : (Z, Y, X) ints, each >= 16
    seed : non-negative int; the same seed, shape and overrides give bit-identical arrays
    voxel_size_nm : float, nanometres: sizes are drawn in voxels, and it only sets the image
        scale (per-voxel LAC) and the metadata
    mount : ``"none"`` (cells in ice filling the volume), ``"capillary"`` (a glass tube along y)
        or ``"grid"`` (a layer of ice of varying thickness); see ``_scene``
    variation : ``"classic"`` (the narrow ranges sxtdask's bundled weights were first trained
        on; the default for mount ``"none"``) or ``"wide"`` (every LAC, the PSF, noise, dose,
        granule contrast and clutter drawn over wide ranges; the default for other mounts)
    imaging : ``"direct"`` (the LAC volume blurred by ``psf_sigma`` plus Gaussian noise) or
        ``"tomo"`` (a tilt series about y, photon noise at ``dose``, then reconstruction)
    tilt : largest tilt in degrees for ``"tomo"``; default 90 (full rotation) in a capillary,
        65 otherwise (the missing wedge of a flat grid)
    tilt_step : degrees between projections
    recon : ``"fbp"`` or ``"sirt"`` (``iterations`` of it)
    **overrides : any field of :class:`PhantomParams` (``n_isg``, ``isg_radius=(lo, hi)``,
        ``touching_fraction``, ``n_mito``, ``noise_sigma``, ``psf_sigma``, ``n_cells``, ...);
        an unknown name or a value outside its rule raises ConfigError.

    Examples
    --------
    >>> p = make_phantom((32, 64, 64), seed=1, n_isg=5, noise_sigma=0.0)
    >>> p.image.dtype, p.n_isg
    (dtype('float32'), 5)
    """
    shape = check_shape(shape)
    seed = _check_seed(seed)
    if not (isinstance(voxel_size_nm, (int, float)) and 0 < voxel_size_nm < math.inf):
        raise ConfigError(f"voxel_size_nm must be a positive number, got {voxel_size_nm!r}")
    variation = _check_choices(mount, variation, imaging)
    series = None
    if imaging == "tomo":
        series = TiltSeries(tilt=(90.0 if mount == "capillary" else 65.0) if tilt is None else tilt,
                            step=tilt_step, recon=recon, iterations=iterations)
    elif tilt is not None or recon != "fbp":
        raise ConfigError("tilt and recon belong to the tilt-series imaging model (imaging='tomo')")
    streams = np.random.default_rng(seed).spawn(9)
    cells = draw_cells(streams[_GEOMETRY], shape)
    scale = max(cells.cytoplasm_volume, 0.0) / NOMINAL_CYTOPLASM
    draw = draw_params if variation == "classic" else draw_wide_params
    params = apply_overrides(draw(streams[_PARAMS], scale), overrides)
    if variation == "wide":  # neighbours may touch the whole cell
        cells = dataclasses.replace(cells, gap=float(streams[_SCENE].uniform(0.0, 2.0)))
    region, lac, isg, scene = _build(streams, shape, cells, params, mount)
    add_texture(streams[_TEXTURE], lac, region, params.texture)
    metadata: dict[str, Any] = {"mount": mount, "variation": variation, **scene}
    if series is None:
        image = blur(lac, params.psf_sigma)
        del lac
        add_noise(streams[_NOISE], image, params.noise_sigma)
        image *= np.float32(lac_scale(voxel_size_nm))
        metadata["imaging"] = {"model": "direct", "psf_sigma": list(params.psf_sigma),
                               "noise_sigma": params.noise_sigma}
    else:
        series = dataclasses.replace(series, dose=params.dose)
        lac *= np.float32(lac_scale(voxel_size_nm))
        image = project_and_reconstruct(lac, series, psf_sigma=params.psf_sigma[1:],
                                        rng=streams[_NOISE])
        del lac
        metadata["imaging"] = {**series.describe(), "psf_sigma_yx": list(params.psf_sigma[1:])}
    return Phantom(image=image, cell=CELL_LABEL[region], mito=(region == MITO).view(np.uint8),
                   isg=isg, voxel_size_nm=float(voxel_size_nm), seed=seed, params=params,
                   metadata=metadata)


def _check_choices(mount: Any, variation: Any, imaging: Any) -> str:
    """Refuse unknown choices; the variation (default by mount)."""
    if mount not in MOUNTS:
        raise ConfigError(f"mount {mount!r} must be one of {', '.join(MOUNTS)}")
    if imaging not in IMAGING:
        raise ConfigError(f"imaging {imaging!r} must be one of {', '.join(IMAGING)}")
    if variation is None:
        return "classic" if mount == "none" else "wide"
    if variation not in VARIATIONS:
        raise ConfigError(f"variation {variation!r} must be one of {', '.join(VARIATIONS)}")
    return str(variation)


def lac_scale(voxel_size_nm: float) -> float:
    """The factor from LAC in µm⁻¹ to LAC per voxel: the voxel size in µm.

    Phantoms are isotropic. For anisotropic voxels the in-plane (y, x) size is the one to use:
    a reconstruction's values are attenuation per detector pixel, the in-plane voxel length.
    """
    return float(voxel_size_nm) / 1000.0


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _build(
    streams: list[np.random.Generator],
    shape: tuple[int, int, int],
    cells: CellGeometry,
    params: PhantomParams,
    mount: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """The region codes, the noiseless LAC map, the granule labels and the scene's geometry."""
    region = np.zeros(shape, dtype=np.uint8)
    render_cells(region, cells, params.n_cells)
    scene: dict[str, float] = {}
    if mount != "none" or params.n_beads or params.n_debris:
        scene = apply_scene(streams[_SCENE], region, params, mount, cells.membrane)
    lac = _lac_table(params)[region]
    add_nucleolus(streams[_NUCLEUS], region, lac, cells.nucleus, params)
    lo, hi = cells.sampling_box(shape, params.n_cells)
    n_extra = place_distractors(streams[_DISTRACTORS], region, lac, params, lo, hi)
    n_mito = place_mitos(streams[_MITO], region, lac, params, lo, hi)
    isg = np.zeros(shape, dtype=np.uint32)
    n_isg = place_isgs(streams[_ISG], region, lac, isg, params, lo, hi)
    logger.debug("phantom %s: %d/%d ISGs, %d/%d mitochondria, %d/%d distractors", shape, n_isg,
                 params.n_isg, n_mito, params.n_mito, n_extra, params.n_lipid + params.n_vacuole)
    if n_isg < params.n_isg or n_mito < params.n_mito:
        logger.warning("phantom %s: room for only %d of %d ISGs and %d of %d mitochondria",
                       shape, n_isg, params.n_isg, n_mito, params.n_mito)
    return region, lac, isg, scene


def _lac_table(p: PhantomParams) -> np.ndarray:
    """LAC (µm⁻¹) of each region code before organelles get their own values."""
    table = np.full(N_CODES, p.lac_cytoplasm, dtype=np.float32)
    table[:5] = [p.lac_ice, p.lac_cytoplasm, p.lac_membrane, p.lac_nucleus, p.lac_membrane]
    table[CHROMATIN] = p.lac_chromatin
    table[[WALL, VOID, BEAD, DEBRIS]] = [p.lac_wall, p.lac_void, p.lac_bead, p.lac_cytoplasm]
    return table
