"""The one interface every segmenter implements, for in-memory volumes and for the engine."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass

import dask.array as da
import numpy as np

from ..relabel import Match
from ..stats import IntensityStats, check_stats, global_stats

__all__ = ["Task", "OutputKind", "OutputSpec", "Segmenter"]


class Task(enum.Enum):
    """What a segmenter finds (``sxtdask segment --task``)."""

    CELL = "cell"
    MITO = "mito"
    ISG = "isg"
    ISG_INSTANCES = "isg-instances"


class OutputKind(enum.Enum):
    """Semantic masks are written as they are; instances go through the global relabel."""

    SEMANTIC = "semantic"
    INSTANCES = "instances"


@dataclass(frozen=True)
class OutputSpec:
    """One label image a segmenter writes: ``labels/<name>``.

    ``match`` says how instances are stitched across chunk faces: ``Match.MUTUAL_BEST`` for
    instance segmenters (touching instances stay apart), ``Match.TOUCHING`` for connected
    components of a mask.
    """

    name: str
    kind: OutputKind
    dtype: str = "uint32"
    match: Match = Match.MUTUAL_BEST


class Segmenter(abc.ABC):
    """A per-block segmenter.

    Subclasses set ``task``, ``outputs`` and ``halo`` and implement :meth:`segment_block`. The
    engine calls ``segment_block`` on each chunk grown by ``halo`` (clipped at the volume's edge)
    with the *global* statistics, then trims the halo and stitches instances across chunks.
    Segmenters are small, picklable configuration objects: anything heavy (a network) is loaded
    through :func:`sxtdask.engine.cached_model`, once per worker process.
    """

    task: Task
    outputs: tuple[OutputSpec, ...]
    halo: tuple[int, int, int]
    #: True for segmenters that see whole slices (2-D networks resize the full plane): the
    #: engine then refuses chunks that split the image plane.
    full_plane = False

    def stitch_margin(self, halo: tuple[int, ...]) -> tuple[int, ...]:
        """How far beyond the core a block's answer is trusted, per axis (voxels).

        The answer near the edge of an extended block is wrong where the segmenter's context
        (smoothing, receptive field) is cut off. Instances are stitched on ``core ± margin``;
        the default is half the halo, at least 1 along split axes. A segmenter whose context
        radius ``r`` is known can return ``halo - r``.
        """
        return tuple(max(1, h // 2) if h > 0 else 0 for h in halo)

    @abc.abstractmethod
    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        """Segment one (halo-extended) block.

        Parameters
        ----------
        block : (z, y, x) ndarray
            Raw intensities (linear absorption coefficients) of the extended block.
        stats : IntensityStats
            Whole-volume statistics, for normalisation.
        voxel_size_nm : (z, y, x)

        Returns
        -------
        dict of name → (z, y, x) integer ndarray
            One array per output, the shape of ``block``. Instance IDs need only be unique within
            the block.
        """

    def predict(
        self, volume: np.ndarray, voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ) -> dict[str, np.ndarray]:
        """Segment a whole in-memory (Z, Y, X) volume in one piece (the reference for chunked runs).

        Instance IDs are numbered ``1..n`` in the raster order of each instance's first voxel,
        as the chunked engine numbers them.
        """
        from ..engine import segment_array

        vol = np.asarray(volume)
        stats = global_stats(da.from_array(vol)).compute(scheduler="sync")
        check_stats(stats, "volume")
        out = segment_array(da.from_array(vol), self, stats, voxel_size_nm=voxel_size_nm)
        return {k: v.compute(scheduler="sync") for k, v in out.items()}
