"""Image formation as soft X-ray tomography does it: a tilt series, photon noise, reconstruction.

The beam is parallel, the tilt axis is y and the beam runs along z at 0°. For every y the (Z, X)
slice of per-voxel LAC is projected over the tilt angles (its sinogram holds optical depths,
``∫ μ dl``), every projection is blurred by the objective's PSF in its own plane (y and the
detector axis), photon counts are drawn at ``dose`` photons per detector pixel and projection
(Beer-Lambert, Poisson), and the slice is reconstructed from ``-log(counts / dose)`` by filtered
back-projection or SIRT. A capillary mount rotates fully (±90°, every ray direction); a flat grid
reaches only ±60–70°, and the missing wedge elongates everything along z, the beam.

astra-toolbox does the projections and reconstructions: it is maintained, on PyPI as a wheel, has
CPU projectors for 2-D parallel beams and CUDA ones for the same geometry, so the same code runs on
a GPU when astra finds one. (scikit-image's ``radon`` is pure Python per angle and ~20× slower.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from sxtdask.errors import ConfigError

__all__ = ["RECONS", "TiltSeries", "project_and_reconstruct"]

logger = logging.getLogger(__name__)

RECONS = ("fbp", "sirt")


@dataclass(frozen=True)
class TiltSeries:
    """How a phantom is imaged: tilt range and step (degrees), dose, reconstruction.

    tilt : the largest tilt, degrees; 90 is a full rotation (a capillary), 60–70 a flat grid
    step : degrees between projections
    dose : photons per detector pixel per projection before the sample (0: no photon noise)
    recon : ``"fbp"`` (filtered back-projection, Shepp-Logan filter) or ``"sirt"``
    iterations : SIRT iterations
    """

    tilt: float = 90.0
    step: float = 1.0
    dose: float = 10000.0
    recon: str = "fbp"
    iterations: int = 40

    def __post_init__(self) -> None:
        if not (isinstance(self.tilt, (int, float)) and 5.0 <= self.tilt <= 90.0):
            raise ConfigError(f"tilt {self.tilt!r} must be between 5 and 90 degrees")
        if not (isinstance(self.step, (int, float)) and 0.1 <= self.step <= 10.0):
            raise ConfigError(f"tilt step {self.step!r} must be between 0.1 and 10 degrees")
        if not (isinstance(self.dose, (int, float)) and 0.0 <= self.dose < math.inf):
            raise ConfigError(f"dose {self.dose!r} must be a non-negative number of photons")
        if self.recon not in RECONS:
            raise ConfigError(f"recon {self.recon!r} must be one of {', '.join(RECONS)}")
        if not (isinstance(self.iterations, int) and 1 <= self.iterations <= 10_000):
            raise ConfigError(f"iterations {self.iterations!r} must be an integer in 1..10000")

    @property
    def angles(self) -> np.ndarray:
        """Projection angles, radians; a full rotation covers [-90°, 90°) once."""
        if self.tilt >= 90.0:
            n = max(2, round(180.0 / self.step))
            return np.deg2rad(np.linspace(-90.0, 90.0, n, endpoint=False))
        n = round(2 * self.tilt / self.step) + 1
        return np.deg2rad(np.linspace(-self.tilt, self.tilt, n))

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (for metadata), with the library that reconstructed."""
        return {"model": "tilt-series", "tilt_deg": float(self.tilt), "step_deg": float(self.step),
                "n_projections": int(self.angles.size), "dose": float(self.dose),
                "recon": self.recon, **({"iterations": self.iterations} if self.recon == "sirt"
                                        else {"filter": "shepp-logan"}),
                "library": _library()}


def _astra() -> Any:
    try:
        import astra  # type: ignore[import-untyped]
    except ImportError as err:  # pragma: no cover - astra-toolbox is a dependency
        raise ConfigError("the tilt-series imaging model needs astra-toolbox: "
                          "pip install astra-toolbox") from err
    return astra


def _library() -> str:
    astra = _astra()
    return f"astra-toolbox {astra.__version__} ({'CUDA' if _use_cuda(astra) else 'CPU'})"


def _use_cuda(astra: Any) -> bool:
    try:
        return bool(astra.use_cuda())
    except Exception:  # noqa: BLE001 - astra raises its own errors when no driver is present
        return False


def project_and_reconstruct(
    lac: np.ndarray,
    series: TiltSeries,
    *,
    psf_sigma: tuple[float, float] = (0.0, 0.0),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Image a (Z, Y, X) volume of per-voxel LAC through ``series``; a new float32 volume.

    ``psf_sigma`` is the (y, detector) Gaussian blur of every projection, voxels. ``rng`` draws
    the photon noise (required when ``series.dose > 0``).
    """
    astra = _astra()
    nz, ny, nx = lac.shape
    angles = series.angles
    n_det = int(math.ceil(math.hypot(nz, nx))) + 2
    cuda = _use_cuda(astra)
    vol_geom = astra.create_vol_geom(nz, nx)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n_det, angles)
    projector = astra.create_projector("cuda" if cuda else "linear", proj_geom, vol_geom)
    try:
        sino = np.empty((ny, angles.size, n_det), dtype=np.float32)
        for y in range(ny):
            sid, data = astra.create_sino(np.ascontiguousarray(lac[:, y, :]), projector)
            sino[y] = data
            astra.data2d.delete(sid)
        if max(psf_sigma) > 0:
            ndimage.gaussian_filter(sino, (psf_sigma[0], 0.0, psf_sigma[1]), mode="nearest",
                                    truncate=3.0, output=sino)
        if series.dose > 0:
            if rng is None:
                raise ConfigError("photon noise needs a random generator")
            _photon_noise(rng, sino, series.dose)
        out = np.empty(lac.shape, dtype=np.float32)
        for y in range(ny):
            out[:, y, :] = _reconstruct(astra, sino[y], projector, proj_geom, vol_geom, series,
                                        cuda=cuda)
    finally:
        astra.projector.delete(projector)
    logger.debug("tilt series %s: %d projections, %s", lac.shape, angles.size, series.recon)
    return out


def _photon_noise(rng: np.random.Generator, sino: np.ndarray, dose: float) -> None:
    """Replace optical depths by ``-log`` of Poisson counts at ``dose``, one y at a time."""
    floor = np.float32(0.5 / dose)  # a pixel that counts no photon reads as half of one
    for y in range(sino.shape[0]):
        expected = np.exp(-sino[y].astype(np.float64)) * dose
        counts = rng.poisson(expected).astype(np.float32) / np.float32(dose)
        np.maximum(counts, floor, out=counts)
        sino[y] = -np.log(counts)


def _reconstruct(astra: Any, sino: np.ndarray, projector: int, proj_geom: Any, vol_geom: Any,
                 series: TiltSeries, *, cuda: bool) -> np.ndarray:
    sid = astra.data2d.create("-sino", proj_geom, sino)
    rid = astra.data2d.create("-vol", vol_geom, 0.0)
    name = ("FBP" if series.recon == "fbp" else "SIRT") + ("_CUDA" if cuda else "")
    cfg = astra.astra_dict(name)
    cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = sid, rid
    if not cuda:
        cfg["ProjectorId"] = projector
    cfg["option"] = {"FilterType": "shepp-logan"} if series.recon == "fbp" else {"MinConstraint": 0.0}
    alg = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(alg, 1 if series.recon == "fbp" else series.iterations)
        return np.asarray(astra.data2d.get(rid), dtype=np.float32)
    finally:
        astra.algorithm.delete(alg)
        astra.data2d.delete([sid, rid])
