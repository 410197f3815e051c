"""The one interface every segmenter implements, for in-memory volumes and for the engine.

A segmenter describes itself through typed attributes (:class:`SegmenterInfo`, from
:meth:`Segmenter.describe`): its task and method, the label images it writes, its halo and
context radius, whether it needs whole slices, the model files it reads and the device it runs
on. The engine, the pipeline, the archive and the run report read only these; nothing inspects a
segmenter's private fields.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Self, cast

import dask.array as da
import numpy as np

from ..errors import ConfigError
from ..relabel import Match
from ..stats import IntensityStats, check_stats, global_stats
from ._names import Method, Task
from ._tiles import raster_relabel

__all__ = ["BlockContext", "OutputKind", "OutputSpec", "Segmenter", "SegmenterInfo", "Task",
           "keep_large_parts"]


def keep_large_parts(labels: np.ndarray, fraction: float) -> np.ndarray:
    """``labels`` with the connected parts of its foreground (> 0, faces connectivity) of at most
    ``fraction`` × the largest part's voxels set to 0 (``fraction`` 0 keeps every part; just
    under 1 keeps the largest only): debris and false fragments go, every large part (several
    cells) stays.
    """
    from scipy import ndimage

    parts, n = ndimage.label(np.asarray(labels) > 0)
    if n <= 1:
        return np.asarray(labels).copy()
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    keep = sizes > fraction * sizes.max()
    keep[0] = False
    return np.where(keep[parts], labels, 0).astype(np.asarray(labels).dtype)


class OutputKind(enum.StrEnum):
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
    #: What each label value of a semantic output means, ``((value, class name), ...)``; written
    #: into the label image's ``image-label`` properties.
    classes: tuple[tuple[int, str], ...] = ()
    #: A semantic output's clean-up: the connected parts of its foreground (values > 0, faces
    #: connectivity) smaller than ``clean`` × the largest part are set to 0, over the whole volume
    #: (:func:`keep_large_parts`; the engine does it chunk by chunk with the global relabel).
    clean: float | None = None
    #: ``Match.TOUCHING`` outputs: the connectivity of their components, as in
    #: ``skimage.measure.label`` (1: faces, scipy.ndimage.label's default; up to the number of
    #: axes). A block's labels are split into parts of this connectivity where they are trusted,
    #: so that nothing stays joined through the untrusted rim — by a diagonal step either.
    connectivity: int = 1


@dataclass(frozen=True)
class SegmenterInfo:
    """What a segmenter is, as the engine, the pipeline and the run report see it.

    Attributes
    ----------
    task : Task
    method : Method or None
        None for a user's own segmenter class that names no registered method.
    name : str
        The class name.
    outputs : tuple of OutputSpec
    halo : (hz, hy, hx)
        Voxels read around each block.
    context_radius : (rz, ry, rx) or None
        How far the answer at a voxel looks (None: unknown; the engine then trusts half the halo).
    full_plane : bool
        Needs whole (Y, X) slices.
    model_files : tuple of str
        Checkpoints it reads (their checksums go into plans and manifests).
    device : str or None
        ``auto``, ``cpu`` or ``cuda[:N]`` as asked; None without a network.
    needs_gpu : bool
        Its inference runs on CUDA (tasks are pinned to workers with a ``GPU`` resource).
    """

    task: Task
    method: Method | None
    name: str
    outputs: tuple[OutputSpec, ...]
    halo: tuple[int, ...]
    context_radius: tuple[int, ...] | None
    full_plane: bool
    model_files: tuple[str, ...]
    device: str | None
    needs_gpu: bool


class BlockContext(abc.ABC):
    """Work a segmenter does once per tomogram, before (or beside) its blocks, as a lazy graph.

    3-D methods that see the whole tomogram (Biomedisa's resized grid, NCXT's binned stage 1)
    plan it in :meth:`Segmenter.plan_context`; the engine asks :meth:`for_block` for the piece
    each block needs and hands its value to :meth:`Segmenter.segment_block_in`. A block's piece
    is a ``Delayed`` (or a plain value), so the engine's graph depends only on the parts of the
    per-tomogram work that the block reads.
    """

    @abc.abstractmethod
    def for_block(self, box: tuple[slice, ...]) -> Any:
        """The lazy value (a ``Delayed`` or a plain object) the block reading ``box`` needs."""


class Segmenter(abc.ABC):
    """A per-block segmenter.

    Subclasses set ``task``, ``method``, ``outputs`` and ``halo`` and implement
    :meth:`segment_block`. The engine calls ``segment_block`` on each chunk grown by ``halo``
    (clipped at the volume's edge) with the *global* statistics, then trims the halo and stitches
    instances across chunks. Segmenters are small, picklable configuration objects: anything
    heavy (a network) is built on the worker through :func:`sxtdask.models.cached_model`, once
    per worker.

    Network segmenters override ``model_files`` and have a ``device``; ``threshold_field`` names
    the field that ``predict(volume, threshold=...)`` sets.
    """

    task: Task
    #: The registered method this class implements (None for a user's own class).
    method: ClassVar[Method | None] = None
    outputs: tuple[OutputSpec, ...]
    halo: tuple[int, int, int]
    #: True for segmenters that see whole slices (2-D networks resize the full plane): the
    #: engine then refuses chunks that split the image plane.
    full_plane = False
    #: Where the network runs (``auto``/``cpu``/``cuda``); None for segmenters without one.
    device: str | None = None
    #: How far (voxels, per axis) the answer at a voxel depends on the image; None if unknown.
    context_radius: tuple[int, int, int] | None = None
    #: The field ``predict(..., threshold=t)`` sets (None: the method has no threshold).
    threshold_field: ClassVar[str | None] = None
    #: Segmenters are dataclasses (``dataclasses.replace`` copies them); declared for the type
    #: checker only, the ``@dataclass`` decorator of each subclass sets it.
    __dataclass_fields__: ClassVar[dict[str, Any]]

    # ----------------------------------------------------------------- self-description

    @property
    def parts(self) -> tuple[Segmenter, ...]:
        """The single-task segmenters this one runs (itself, or a combination's parts)."""
        return (self,)

    @property
    def model_files(self) -> tuple[str, ...]:
        """The checkpoint files this segmenter reads (none by default)."""
        return ()

    @property
    def needs_gpu(self) -> bool:
        """True when its network is to run on CUDA."""
        if self.device is None:
            return False
        from ..models import resolve_device

        return resolve_device(self.device).startswith("cuda")

    @property
    def blocks_need_gpu(self) -> bool:
        """True when its per-block work runs a network on CUDA (the engine pins block tasks to
        workers with a ``GPU`` resource). Methods whose network runs in their per-tomogram work
        (:meth:`plan_context`) pin those tasks themselves and say False here.
        """
        return self.needs_gpu

    def describe(self) -> SegmenterInfo:
        """The segmenter's typed description."""
        return SegmenterInfo(
            task=self.task, method=self.method, name=type(self).__name__, outputs=self.outputs,
            halo=tuple(self.halo), context_radius=self.context_radius,
            full_plane=self.full_plane, model_files=self.model_files, device=self.device,
            needs_gpu=self.needs_gpu,
        )

    def stitch_margin(self, halo: tuple[int, ...]) -> tuple[int, ...]:
        """How far beyond the core a block's answer is trusted, per axis (voxels).

        The answer near the edge of an extended block is wrong where the segmenter's context
        (smoothing, receptive field) is cut off. Instances are stitched on ``core ± margin``;
        the default is half the halo, at least 1 along split axes. A segmenter whose context
        radius ``r`` is known can return ``halo - r``.
        """
        return tuple(max(1, h // 2) if h > 0 else 0 for h in halo)

    # ----------------------------------------------------------------- memory

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        """Estimated peak memory (bytes) of :meth:`segment_block` on one extended block of
        ``block_shape``, at this segmenter's batch size.

        The default, for classical methods, is 16 float32 copies of the block (the normalised
        image, filters, masks, labels and scikit-image's work arrays); network segmenters
        count their batches' activations.
        """
        return 16 * 4 * int(np.prod(block_shape))

    @property
    def max_batch(self) -> int:
        """The most slices or tiles one forward pass takes (1 for methods without batches)."""
        return int(getattr(self, "batch_size", 1) or 1)

    def with_batch_size(self, batch_size: int) -> Self:
        """A copy whose batches are at most ``batch_size`` (itself where it has no batches)."""
        if "batch_size" not in self.__dataclass_fields__ or self.max_batch <= batch_size:
            return self
        return dataclasses.replace(self, **{"batch_size": batch_size})

    # ----------------------------------------------------------------- the reference API

    def load_model(self, path: Any = None) -> Self:
        """Load the network in place and return the segmenter (``seg.load_model(); seg.predict(v)``
        and ``seg = create_segmenter(...).load_model()`` both work).

        Methods without a network accept no path.
        """
        if path is not None:
            raise ConfigError(f"{type(self).__name__} has no model: it takes no checkpoint")
        return self

    def _update(self, **changes: Any) -> None:
        """Change fields of this (frozen) configuration in place, validating the result."""
        new = dataclasses.replace(self, **changes)  # runs __post_init__
        for name in changes:
            object.__setattr__(self, name, getattr(new, name))

    def with_threshold(self, threshold: float | None) -> Self:
        """A copy whose threshold is ``threshold`` (None: this segmenter as it is)."""
        if threshold is None:
            return self
        if self.threshold_field is None:
            raise ConfigError(f"{type(self).__name__} has no threshold to set")
        return dataclasses.replace(self, **{self.threshold_field: threshold})

    # ----------------------------------------------------------------- per-tomogram work

    def plan_context(self, image: da.Array, stats: Any, *,
                     binned: dict[int, da.Array] | None = None) -> BlockContext | None:
        """The per-tomogram work this segmenter needs before its blocks, as a lazy graph over
        ``image`` (the level-0 (Z, Y, X) Dask array; ``stats`` its whole-volume
        :class:`IntensityStats` or the ``Delayed`` that computes them; ``binned`` the pyramid
        levels that equal :func:`sxtdask.io.bin_mean` of level 0, by factor). None (the
        default): each block is segmented from its own voxels alone.
        """
        return None

    def segment_block_in(self, block: np.ndarray, stats: IntensityStats,
                         voxel_size_nm: tuple[float, float, float], *, box: tuple[slice, ...],
                         shape: tuple[int, ...], context: Any,
                         core: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
        """Segment one extended block that lies at ``box`` in a volume of ``shape``, given its
        piece of :meth:`plan_context`'s work (``context``); ``core`` (default ``box``) is the
        part of the block whose answer is kept. The default ignores them all and calls
        :meth:`segment_block`.
        """
        return self.segment_block(block, stats, voxel_size_nm)

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

    def segment_volume(
        self, volume: np.ndarray, voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ) -> dict[str, np.ndarray]:
        """Every output of a whole in-memory (Z, Y, X) volume segmented in one piece.

        The reference for chunked runs: statistics of the whole volume, one block, instance IDs
        numbered ``1..n`` in the raster order of each instance's first voxel (as the chunked
        engine numbers them; connected-component outputs split into their connected parts).
        """
        from skimage import measure

        vol = np.asarray(volume)
        stats = global_stats(da.from_array(vol)).compute(scheduler="sync")
        check_stats(stats, "volume")
        out = self.segment_block(vol, stats, cast(tuple[float, float, float], tuple(voxel_size_nm)))
        result: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            arr = np.asarray(out[spec.name])
            if spec.kind is OutputKind.SEMANTIC:
                if spec.clean is not None:
                    arr = keep_large_parts(arr, spec.clean)
                result[spec.name] = arr.astype(spec.dtype)
                continue
            if spec.match is Match.TOUCHING:
                arr = measure.label(arr, background=0, connectivity=spec.connectivity)
            result[spec.name] = raster_relabel(arr, 0, spec.dtype)
        return result

    def predict(
        self, volume: np.ndarray, voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
        *, threshold: float | None = None,
    ) -> Any:
        """Segment a whole in-memory (Z, Y, X) volume, as the reference API does.

        Parameters
        ----------
        volume : (Z, Y, X) array-like
        voxel_size_nm : (z, y, x)
        threshold : float, optional
            The method's probability or score threshold for this call (U-Nets: the foreground
            probability; Mask R-CNN: the detection score; classical: the fraction of each granule's
            own peak contrast, in (0, 1)).

        Returns
        -------
        ndarray or dict
            One output: its (Z, Y, X) array (instances numbered ``1..n`` by first voxel).
            Several: a dict of name → array.
        """
        seg = self.with_threshold(threshold)
        out = seg.segment_volume(volume, voxel_size_nm)
        return next(iter(out.values())) if len(out) == 1 else out
