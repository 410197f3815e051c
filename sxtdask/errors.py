"""One exception family for user-facing errors.

Every error a user can cause (bad input, bad options, an output that exists) raises a subclass of
:class:`SxtdaskError`. The CLI prints its message on one line, without a traceback, and exits
non-zero; library users catch ``SxtdaskError``. Messages name the rule and the value, and the file
where there is one.
"""

from __future__ import annotations

__all__ = [
    "SxtdaskError",
    "InputError",
    "UnsupportedFormatError",
    "InvalidVolumeError",
    "OutputError",
    "ConfigError",
    "LabelOverflowError",
]


class SxtdaskError(Exception):
    """Base class of every error sxtdask raises on purpose."""


class InputError(SxtdaskError):
    """An input path is missing, unreadable, empty or truncated."""


class UnsupportedFormatError(InputError):
    """A file is not what its extension says, or its format is not supported."""


class InvalidVolumeError(InputError):
    """The data are readable but not a usable tomogram (not 3-D, NaN/Inf voxels, ...)."""


class OutputError(SxtdaskError):
    """An output exists without ``overwrite``, or its location cannot be written."""


class ConfigError(SxtdaskError, ValueError):
    """An option has a value outside its rule (chunk sizes, halos, worker counts, ...)."""


class LabelOverflowError(SxtdaskError, OverflowError):
    """More instances than the label dtype can hold."""
