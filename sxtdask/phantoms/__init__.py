"""Synthetic soft X-ray tomograms of whole cells in ice, with ground truth.

A phantom is a deformed-ellipsoid cell with a membrane, a nucleus (heterochromatin, nucleolus),
curved and branching mitochondria, dense insulin secretory granules (some in touching pairs and
triples), optional lipid droplets and vacuoles, and optional partial neighbouring cells; imaged
through an anisotropic Gaussian PSF with additive Gaussian noise. Image values are linear
absorption coefficients per voxel (µm⁻¹ × the voxel size in µm, dimensionless, like real SXT
reconstructions: cytoplasm ≈0.007, granules ≈0.01–0.016 at 30 nm); the drawn material values in
``Phantom.params`` stay in µm⁻¹ (``Phantom.lac_scale`` converts). Everything is drawn from
``np.random.default_rng(seed)``: the same seed, shape and overrides give bit-identical arrays.
"""

from __future__ import annotations

from ._params import OVERRIDABLE, PhantomParams
from ._phantom import Phantom, lac_scale, make_phantom
from ._write import ground_truth_path, write_phantom

__all__ = [
    "OVERRIDABLE",
    "Phantom",
    "PhantomParams",
    "ground_truth_path",
    "lac_scale",
    "make_phantom",
    "write_phantom",
]
