"""Global intensity statistics (one reduction before any per-chunk work)."""

from ._stats import (
    ConstantVolumeWarning,
    IntensityStats,
    check_stats,
    global_stats,
    refuse_nonfinite,
)

__all__ = [
    "ConstantVolumeWarning",
    "IntensityStats",
    "check_stats",
    "global_stats",
    "refuse_nonfinite",
]
