"""The package version, in the bottom layer so that any module can name it without importing the
``sxtdask`` facade (which imports most of the package).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
