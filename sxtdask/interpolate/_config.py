"""What an interpolation run does: the method, the slice rule and the walks' knobs, validated once."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sxtdask.errors import ConfigError, option

__all__ = ["AXES", "Axis", "InterpolationConfig", "Method"]


class Method(enum.StrEnum):
    """How unlabelled voxels get their class.

    ``WALK``: Biomedisa's smart interpolation (random walks from every seed voxel, seed-relative
    weights, most raw hits wins). ``SHAPE``: shape-based interpolation (per class, the in-plane
    signed distance maps of the labelled slices interpolated across the unlabelled ones with a
    monotone cubic, PCHIP; image-free and deterministic).
    """

    WALK = "walk"
    SHAPE = "shape"


class Axis(enum.StrEnum):
    """The orientation of the labelled slices: z (Biomedisa's default), y, x, or all three."""

    Z = "z"
    Y = "y"
    X = "x"
    ALL = "all"

    @property
    def indices(self) -> tuple[int, ...]:
        """The array axes (0 = z, 1 = y, 2 = x) whose slices may be labelled."""
        return (0, 1, 2) if self is Axis.ALL else ("zyx".index(self.value),)


#: Every axis value, in the command line's order.
AXES = tuple(a.value for a in Axis)


@dataclass(frozen=True)
class InterpolationConfig:
    """How to interpolate sparse labels.

    Attributes
    ----------
    method : Method
        ``walk`` (Biomedisa's random walks) or ``shape`` (signed distance maps, PCHIP).
    axis : Axis
        The orientation of the labelled slices (``all``: walk only; labelled slices of every
        orientation, at least one unlabelled slice between two labelled ones).
    unlabelled : int or None
        None: Biomedisa's rule (a slice with no non-zero voxel is unlabelled; 0 is the background
        class inside labelled slices). A value: voxels of this value are unannotated (a slice is
        labelled when it holds any other value, and 0 is then a class like any other). Negative
        values are never seeds.
    seed : int
        The walks' random seed: the same seed gives the same labels for any chunking and any
        number of workers.
    walks, steps : int
        Walks per seed voxel and steps per walk (Biomedisa: 10 and 4,000).
    reach : int
        A walker stays within ``reach`` voxels of its seed along each axis (a step that would
        leave that box is spent in place, as at the volume's edge); the blocks' halo.
    crop : int
        Voxels kept around the bounding box of the labelled objects (Biomedisa: 100); outside
        it the result is 0.
    seed_stride : int
        Walk from every ``seed_stride``-th voxel of a labelled slice along both in-plane axes
        (1: every voxel, as Biomedisa) ...
    boundary_band : int
        ... but from every voxel within this many voxels (in-plane) of another label.
    denoise : bool
        Biomedisa's 3×3×3 mean of the image before the walks.
    smooth : int
        Iterations of Biomedisa's curvature smoothing of the hit maps (0: none).
    uncertainty : bool
        Also make the map 1 − (1 − h3/h1)(1 − h2/h1) of the three largest hit counts (× 255).
    """

    method: Method = Method.WALK
    axis: Axis = Axis.Z
    unlabelled: int | None = None
    seed: int = 0
    walks: int = 10
    steps: int = 4000
    reach: int = 100
    crop: int = 100
    seed_stride: int = 1
    boundary_band: int = 0
    denoise: bool = False
    smooth: int = 0
    uncertainty: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", Method(self.method))
            object.__setattr__(self, "axis", Axis(self.axis))
        except ValueError as err:
            raise ConfigError(f"{err}: method is one of {', '.join(m.value for m in Method)}, "
                              f"axis one of {', '.join(AXES)}") from None
        for name, low in (("walks", 1), ("steps", 1), ("reach", 1), ("crop", 0),
                          ("seed_stride", 1), ("boundary_band", 0), ("smooth", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = option(f"{name}=", f"--{name.replace('_', '-')}")
                raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.unlabelled is not None and (isinstance(self.unlabelled, bool)
                                            or not isinstance(self.unlabelled, int)):
            raise ConfigError(f"{option('unlabelled=', '--unlabelled')} must be an integer label "
                              f"value, got {self.unlabelled!r}")
        if self.method is Method.SHAPE:
            if self.axis is Axis.ALL:
                raise ConfigError(f"{option('method=', '--method')} shape interpolates across "
                                  f"the slices of one axis; {option('axis=', '--axis')} all needs "
                                  "the walk method")
            if self.uncertainty or self.smooth or self.denoise:
                which = option("uncertainty, smooth and denoise", "--uncertainty, --smooth and --denoise")
                raise ConfigError(f"{which} belong to {option('method=', '--method')} walk (the "
                                  "shape method counts no hits and reads no image)")

    @property
    def seed_voxel_steps(self) -> int:
        """Steps walked from one seed voxel (walks × steps)."""
        return self.walks * self.steps

    @property
    def halo(self) -> int:
        """Image voxels a walk block reads beyond its seeds: the reach, the weights' neighbour and
        the denoising filter's.
        """
        return self.reach + 1 + int(self.denoise)
