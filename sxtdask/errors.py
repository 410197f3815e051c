"""One exception family for user-facing errors.

Every error a user can cause (bad input, bad options, an output that exists) raises a subclass of
:class:`SxtdaskError`. The CLI prints its message on one line, without a traceback, and exits
non-zero; library users catch ``SxtdaskError``. Messages name the rule and the value, and the file
where there is one.
"""

from __future__ import annotations

import re

__all__ = [
    "OVERWRITE",
    "option",
    "SxtdaskError",
    "InputError",
    "UnsupportedFormatError",
    "InvalidVolumeError",
    "OutputError",
    "ConfigError",
    "LabelOverflowError",
]


# An option named both ways inside a message: ``⟦python⟧⟦cli⟧``.
_OPTION = re.compile("\u27e6([^\u27e7]*)\u27e7\u27e6([^\u27e7]*)\u27e7")


def option(python: str, cli: str) -> str:
    """Name an option in an error message both ways: a Python caller reads ``python`` (e.g.
    ``overwrite=True``), the command line's one-line error reads ``cli`` (``--overwrite``).

    >>> str(OutputError(f"x.zarr exists; pass {option('overwrite=True', '--overwrite')}"))
    'x.zarr exists; pass overwrite=True'
    >>> OutputError(f"x.zarr exists; pass {option('overwrite=True', '--overwrite')}").for_cli()
    'x.zarr exists; pass --overwrite'
    """
    return f"\u27e6{python}\u27e7\u27e6{cli}\u27e7"


#: ``overwrite=True`` for Python callers, ``--overwrite`` on the command line.
OVERWRITE = option("overwrite=True", "--overwrite")


class SxtdaskError(Exception):
    """Base class of every error sxtdask raises on purpose.

    Its message speaks Python (``str(err)``: "pass overwrite=True"); :meth:`for_cli` gives the
    same message in the command line's words ("pass --overwrite"), for options named with
    :func:`option`.
    """

    def __str__(self) -> str:
        """The message in Python's words."""
        return _OPTION.sub(lambda m: m.group(1), super().__str__())

    def for_cli(self) -> str:
        """The message with every option in its command-line spelling."""
        return _OPTION.sub(lambda m: m.group(2), super().__str__())


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
