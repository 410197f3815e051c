"""Synthetic soft X-ray tomograms of whole cells in ice, with ground truth.

A phantom is a deformed-ellipsoid cell with a membrane, a nucleus (heterochromatin, nucleolus),
curved and branching mitochondria, dense insulin secretory granules (some in touching pairs and
triples), optional lipid droplets and vacuoles, and optional partial neighbouring cells; imaged
through an anisotropic Gaussian PSF with additive Gaussian noise. Values are linear absorption
coefficients in µm⁻¹. Everything is drawn from ``np.random.default_rng(seed)``: the same seed,
shape and overrides give bit-identical arrays.
"""

from __future__ import annotations

from ._params import OVERRIDABLE, PhantomParams
from ._phantom import Phantom, make_phantom
from ._write import ground_truth_path, write_phantom

__all__ = [
    "OVERRIDABLE",
    "Phantom",
    "PhantomParams",
    "ground_truth_path",
    "make_phantom",
    "write_phantom",
]
