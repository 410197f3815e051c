"""sxtdask: segment soft X-ray tomograms of whole cells at archive scale, on Dask."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
