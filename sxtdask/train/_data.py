"""Training data: labelled tomograms opened lazily, and patch samplers that read only what they need.

A training source is either an OME-Zarr store with an image and ``labels/`` (what ``sxtdask synth``
writes, or a converted image to which labels were added) or a pair of files, an image and a label
volume (MRC/REC/AmiraMesh/TIFF/npy), written ``IMAGE,LABELS`` on the command line. Samples are 2-D
patches read from one slice at a time, never whole volumes; the whole-volume intensity statistics
that the segmenters normalise with are computed once per tomogram, chunk by chunk.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from ..errors import ConfigError, InputError, option
from ..stats import IntensityStats

if TYPE_CHECKING:
    from ..io import Volume

__all__ = [
    "IGNORE",
    "IGNORE_MATERIALS",
    "LabelMap",
    "PatchSampler",
    "TrainingVolume",
    "class_target",
    "ignore_label_of",
    "open_training_data",
    "parse_label_map",
    "split_by_tomogram",
    "target_from_labels",
]

logger = logging.getLogger(__name__)

#: Label image each task learns from, in a store (``sxtdask synth`` names).
TASK_LABELS = {"cell": "cell", "mito": "mito", "isg": "isg", "isg-maskrcnn": "isg"}


@dataclass
class TrainingVolume:
    """One labelled tomogram, read lazily.

    Attributes
    ----------
    name : str
        Shown in logs and recorded in checkpoints.
    image : array-like (Z, Y, X)
        Supports basic slicing (a Zarr array or an ``sxtdask.io.Volume``).
    labels : array-like (Z, Y, X)
        The label volume of the task (classes or instance IDs), same shape.
    stats : IntensityStats
        Whole-volume statistics of ``image``.
    voxel_size_nm : (z, y, x)
    materials : dict of int to str
        Names of the label values, where the label file has them (AmiraMesh ``Materials``:
        ``{0: "void", 1: "cell", 2: "ignore"}``); empty otherwise.
    """

    name: str
    image: Any
    labels: Any
    stats: IntensityStats
    voxel_size_nm: tuple[float, float, float]
    materials: dict[int, str] = field(default_factory=dict)
    _fg_per_slice: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return cast(tuple[int, int, int], tuple(int(n) for n in self.image.shape))

    def foreground_per_slice(self) -> np.ndarray:
        """Labelled voxels per z slice (computed once, chunk by chunk)."""
        if self._fg_per_slice is None:
            import dask.array as da

            lab = self.labels if isinstance(self.labels, da.Array) else da.from_array(
                self.labels, chunks=(min(16, self.shape[0]), -1, -1))
            self._fg_per_slice = np.asarray(
                (lab > 0).sum(axis=(1, 2)).compute(scheduler="threads"), dtype=np.int64)
        return self._fg_per_slice


def open_training_data(sources: Sequence[str | os.PathLike[str]], task: str,
                       *, label_name: str | None = None) -> list[TrainingVolume]:
    """Open training tomograms for ``task`` (``cell``, ``mito``, ``isg``, ``isg-maskrcnn``).

    Parameters
    ----------
    sources : sequence of str or path
        OME-Zarr stores with ``labels/<name>``, or ``IMAGE,LABELS`` file pairs.
    task : str
    label_name : str, optional
        Label image to read from stores; default the task's (``cell``, ``mito``, ``isg``).

    Raises
    ------
    InputError
        A source is missing, unreadable, lacks the label image, or its label and image shapes differ.
    """
    if task not in TASK_LABELS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASK_LABELS)}")
    if not sources:
        raise ConfigError(f"no training data given ({option('data=[PATH, ...]', '--data PATH ...')})")
    keys = [source_key(src) for src in sources]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise InputError(f"the same tomogram is given twice: {sources[keys.index(key)]} "
                             f"and {sources[i]}")
    name = label_name or TASK_LABELS[task]
    volumes = [_open_one(str(src), name) for src in sources]
    _name_apart(volumes, keys)
    return volumes


def source_key(source: str | os.PathLike[str]) -> Path:
    """What identifies a training tomogram: its store's (or image file's) resolved path."""
    return Path(str(source).split(",", 1)[0]).resolve()


def _name_apart(volumes: Sequence[TrainingVolume], keys: Sequence[Path]) -> None:
    """Tomograms of one file name in different folders (``cell01/tomo.zarr``, ``cell02/tomo.zarr``)
    are named ``folder/name``: names label checkpoints' data lists and exported files.
    """
    counts = Counter(v.name for v in volumes)
    for v, key in zip(volumes, keys, strict=True):
        if counts[v.name] > 1:
            v.name = f"{key.parent.name}/{v.name}"
    names = [v.name for v in volumes]
    for n in names:
        if names.count(n) > 1:
            raise InputError(f"two training tomograms are both called {n!r}; rename one (names "
                             "identify tomograms in checkpoints and exports)")


def _open_one(source: str, label_name: str) -> TrainingVolume:
    import dask.array as da

    from ..io import open_image, open_labels, open_volume
    from ..stats import global_stats

    image: Volume | SlabCache  # image files are Volumes; a store's arrays are read through a cache
    labels: Volume | SlabCache
    if "," in source:
        image_path, label_path = (Path(p) for p in source.split(",", 1))
        image = open_volume(image_path)
        label_volume = open_volume(label_path)
        labels = label_volume
        if labels.shape != image.shape:
            raise InputError(f"{label_path}: labels {labels.shape} and image {image.shape} "
                             "differ in shape")
        chunks = (min(32, image.shape[0]), -1, -1)
        data = da.from_array(image, chunks=chunks)
        vs = image.voxel_size_nm
        name = image_path.name
        materials = dict(label_volume.materials)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such training store (give an OME-Zarr store with "
                             "labels/, or IMAGE,LABELS files)")
        img = open_image(path)
        lab = open_labels(path, label_name)
        if lab.shape != img.data.shape:
            raise InputError(f"{path}: labels/{label_name} {lab.shape} and image "
                             f"{img.data.shape} differ in shape")
        image, labels, data = SlabCache(_zarr_of(img.data)), SlabCache(_zarr_of(lab)), img.data
        vs = img.voxel_size_nm
        name = path.name
        materials = {}
    stats = global_stats(data).compute(scheduler="threads")
    if stats.is_constant:
        raise InputError(f"{source}: the image is constant; it cannot train a network")
    logger.info("training volume %s: shape %s, labels %r", name, tuple(data.shape), label_name)
    return TrainingVolume(name, image, labels, stats,
                          cast(tuple[float, float, float], tuple(float(v) for v in vs)),
                          materials)


def _zarr_of(arr: Any) -> Any:
    """The Zarr array behind a ``da.from_zarr`` array (direct slicing is cheaper per sample)."""
    import zarr

    for value in arr.dask.values():
        if isinstance(value, zarr.Array):
            return value
    return arr


class SlabCache:
    """A Zarr array read one chunk-aligned z slab at a time, keeping the last few decoded slabs.

    Training draws many patches from the same chunks; decoding a whole compressed chunk for every
    patch would cost more than the network step. Memory is bounded by ``max_slabs`` slabs.
    """

    def __init__(self, array: Any, max_slabs: int = 4) -> None:
        from collections import OrderedDict

        self.array = array
        self.shape = tuple(array.shape)
        self.ndim = len(self.shape)
        self.dtype = array.dtype
        self.slab = int(array.chunks[0]) if hasattr(array, "chunks") else 16
        self.max_slabs = max_slabs
        self._slabs: OrderedDict[int, np.ndarray] = OrderedDict()

    def _get(self, i: int) -> np.ndarray:
        slab = self._slabs.pop(i, None)
        if slab is None:
            slab = np.asarray(self.array[i * self.slab:(i + 1) * self.slab])
            while len(self._slabs) >= self.max_slabs:
                self._slabs.popitem(last=False)
        self._slabs[i] = slab
        return slab

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        z = key[0]
        if isinstance(z, (int, np.integer)):
            z = int(z) + (self.shape[0] if z < 0 else 0)
            return self._get(z // self.slab)[(z % self.slab, *key[1:])]
        return np.asarray(self.array[key])


def split_by_tomogram(volumes: Sequence[TrainingVolume], val_fraction: float,
                      seed: int) -> tuple[list[TrainingVolume], list[TrainingVolume]]:
    """Train and validation tomograms (never slices of one tomogram on both sides).

    With one tomogram there is nothing to validate on: all of it trains (logged).
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"validation fraction ({val_fraction}) must be in [0, 1)")
    vols = list(volumes)
    if len(vols) < 2 or val_fraction == 0:
        if val_fraction > 0:
            logger.warning("one training tomogram: no validation split (give two or more)")
        return vols, []
    order = np.random.default_rng(seed).permutation(len(vols))
    n_val = min(len(vols) - 1, max(1, round(val_fraction * len(vols))))
    val = [vols[i] for i in sorted(order[:n_val])]
    train = [vols[i] for i in sorted(order[n_val:])]
    return train, val


def target_from_labels(task: str, labels: np.ndarray) -> np.ndarray:
    """Class map a network learns from a label patch.

    ``cell``: the classes as they are (0 background, 1 cytoplasm, 2 nucleus). ``mito``: 0/1.
    ``isg``: 0/1 granule interiors, with the one-voxel rims where two granules touch set to
    background, so the predicted mask keeps touching granules apart for the watershed split.
    """
    if task == "cell":
        return np.clip(labels, 0, 2).astype(np.int64)
    if task == "mito":
        return (labels > 0).astype(np.int64)
    if task == "isg":
        return (labels > 0).astype(np.int64) & ~_touching_rims(labels)
    raise ConfigError(f"no class target for task {task!r}")


def _touching_rims(labels: np.ndarray) -> np.ndarray:
    """Voxels of an instance with an 8-neighbour (3×3, or 3×3×3 for a volume) of another instance.

    Background is masked with ``labels.max() + 1`` for the minimum filter, not with the dtype's
    maximum: scipy's filters overflow on ``int64`` extremes, which marked every granule's edge
    against background as a rim.
    """
    from scipy import ndimage

    lab = labels.astype(np.int64)
    hi = ndimage.maximum_filter(lab, size=3, mode="nearest")
    masked = np.where(lab > 0, lab, int(lab.max(initial=0)) + 1)
    lo = ndimage.minimum_filter(masked, size=3, mode="nearest")
    return (lab > 0) & ((hi != lab) | (lo != lab))


class PatchSampler:
    """Random 2-D patches (image, labels) from training volumes, read one slice at a time.

    Half of the patches (``foreground_fraction``) are centred on a labelled voxel, chosen from a
    slice drawn in proportion to its labelled voxels, so rare classes (granules, mitochondria) are
    seen; the rest are uniform over the volumes. Patches that overhang the image are padded by
    reflection.

    Parameters
    ----------
    volumes : sequence of TrainingVolume
    patch : int
        Patch side (voxels).
    rng : numpy.random.Generator
    foreground_fraction : float
    context : int
        Neighbouring slices on each side read with the patch (the image comes back as
        ``(2 * context + 1, p, p)``, nearest slice repeated at the volume's ends); 0 for one slice.
    """

    def __init__(self, volumes: Sequence[TrainingVolume], patch: int, rng: np.random.Generator,
                 foreground_fraction: float = 0.5, context: int = 0) -> None:
        if not volumes:
            raise ConfigError("no training volumes")
        self.context = int(context)
        self.volumes = list(volumes)
        self.patch = int(patch)
        self.rng = rng
        self.foreground_fraction = foreground_fraction
        sizes = np.array([v.shape[0] for v in self.volumes], dtype=float)
        self._vol_p = sizes / sizes.sum()

    def sample(self) -> tuple[np.ndarray, np.ndarray, IntensityStats]:
        """One (image patch float32, label patch, stats of its volume)."""
        v = self.volumes[int(self.rng.choice(len(self.volumes), p=self._vol_p))]
        nz, ny, nx = v.shape
        p = self.patch
        fg = v.foreground_per_slice() if self.rng.random() < self.foreground_fraction else None
        if fg is not None and fg.sum() > 0:
            z = int(self.rng.choice(nz, p=fg / fg.sum()))
            lab_slice = np.asarray(v.labels[z])
            ys, xs = np.nonzero(lab_slice)
            k = int(self.rng.integers(len(ys)))
            cy, cx = int(ys[k]), int(xs[k])
            y0 = cy - p // 2 + int(self.rng.integers(-p // 4, p // 4 + 1))
            x0 = cx - p // 2 + int(self.rng.integers(-p // 4, p // 4 + 1))
            y0, x0 = _clamp(y0, ny, p), _clamp(x0, nx, p)
            box = (slice(max(y0, 0), y0 + p), slice(max(x0, 0), x0 + p))
            image = _with_context(v.image, z, box, self.context)
            labels = lab_slice[box]
        else:
            z = int(self.rng.integers(nz))
            y0 = int(self.rng.integers(0, max(ny - p, 0) + 1))
            x0 = int(self.rng.integers(0, max(nx - p, 0) + 1))
            box = (slice(y0, y0 + p), slice(x0, x0 + p))
            image = _with_context(v.image, z, box, self.context)
            labels = np.asarray(v.labels[(z, *box)])
        return _pad_to(image.astype(np.float32), p), _pad_to(labels, p), v.stats

    def batch(self, n: int) -> list[tuple[np.ndarray, np.ndarray, IntensityStats]]:
        return [self.sample() for _ in range(n)]


def _with_context(image: Any, z: int, box: tuple[slice, slice], context: int) -> np.ndarray:
    """The patch of slice ``z`` (context 0) or of slices ``z - context .. z + context`` stacked
    (the nearest slice repeated beyond the volume), each read on its own.
    """
    if context == 0:
        return np.asarray(image[(z, *box)])
    nz = image.shape[0]
    return np.stack([np.asarray(image[(min(max(z + d, 0), nz - 1), *box)])
                     for d in range(-context, context + 1)])


def _clamp(start: int, size: int, patch: int) -> int:
    """A patch start inside the image when the image is at least a patch wide."""
    if size >= patch:
        return min(max(start, 0), size - patch)
    return 0


def _pad_to(a: np.ndarray, p: int) -> np.ndarray:
    """Pad the last two axes to ``p`` (reflecting where the patch is large enough)."""
    dy, dx = max(p - a.shape[-2], 0), max(p - a.shape[-1], 0)
    if dy == 0 and dx == 0:
        return a
    mode: Literal["reflect", "edge"] = "reflect" if min(a.shape[-2:]) > max(dy, dx) else "edge"
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, dy), (0, dx)], mode=mode)


def validation_slices(volumes: Sequence[TrainingVolume], n_slices: int, context: int = 0,
                      ) -> list[tuple[np.ndarray, np.ndarray, IntensityStats]]:
    """Whole slices spread evenly over the validation tomograms' labelled range (deterministic);
    with ``context``, each image is the stack of its neighbouring slices (see PatchSampler).
    """
    out = []
    per = max(1, n_slices // max(len(volumes), 1))
    for v in volumes:
        fg = v.foreground_per_slice()
        zs = np.nonzero(fg)[0]
        lo, hi = (int(zs[0]), int(zs[-1])) if len(zs) else (0, v.shape[0] - 1)
        for z in np.unique(np.linspace(lo, hi, per).round().astype(int)):
            full = (slice(None), slice(None))
            out.append((_with_context(v.image, int(z), full, context).astype(np.float32),
                        np.asarray(v.labels[int(z)]), v.stats))
    return out


# --------------------------------------------------------------------------- sparse labels

#: The class target's value for unannotated voxels (left out of losses and validation metrics).
IGNORE = -1
#: Material names (AmiraMesh ``Materials``, lower case) that mark unannotated voxels: the same
#: names ``sxtdask evaluate`` leaves out.
IGNORE_MATERIALS = frozenset({"ignore", "ignored", "unlabelled", "unlabeled", "unannotated",
                              "unknown"})
#: A label map: label value → class index, or None for "unannotated".
LabelMap = dict[int, int | None]


def parse_label_map(text: str, n_classes: int) -> LabelMap:
    """``"0:0,1:1,2:2,5:1,7:ignore"`` → ``{0: 0, 1: 1, 2: 2, 5: 1, 7: None}``.

    Each entry is ``VALUE:CLASS`` (a label value of the data and the task's class index it
    stands for, ``0 <= CLASS < n_classes``) or ``VALUE:ignore`` (unannotated voxels).

    Raises
    ------
    ConfigError
        An entry that is not ``VALUE:CLASS`` or ``VALUE:ignore``, a class out of range, or a
        value mapped twice.
    """
    out: LabelMap = {}
    for entry in (e.strip() for e in str(text).split(",")):
        value, sep, target = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            key = int(value)
            cls = None if target.strip().lower() == "ignore" else int(target)
        except ValueError:
            raise ConfigError(f"label map entry {entry!r} must be VALUE:CLASS or VALUE:ignore "
                              "(e.g. 0:0,1:1,2:2,5:1)") from None
        if key < 0:
            raise ConfigError(f"label map entry {entry!r}: label values are non-negative")
        if cls is not None and not 0 <= cls < n_classes:
            raise ConfigError(f"label map entry {entry!r}: the class must be from 0 to "
                              f"{n_classes - 1} (or 'ignore')")
        if key in out:
            raise ConfigError(f"label map maps the value {key} twice")
        out[key] = cls
    return out


def ignore_label_of(volume: TrainingVolume, ignore_label: int | None) -> int | None:
    """The label value of unannotated voxels: ``ignore_label`` when given, else the value of a
    material named ``ignore`` (or ``unlabelled``, ``unannotated``...) in the label file, else none.
    """
    if ignore_label is not None:
        return int(ignore_label)
    named = sorted(v for v, name in volume.materials.items()
                   if name.strip().lower() in IGNORE_MATERIALS)
    if named:
        logger.info("%s: label value %d (material %r) marks unannotated voxels", volume.name,
                    named[0], volume.materials[named[0]])
        return named[0]
    return None


def class_target(labels: np.ndarray, n_classes: int, *, label_map: LabelMap | None = None,
                 ignore_label: int | None = None, source: str = "the labels") -> np.ndarray:
    """The class of every voxel (int8), :data:`IGNORE` where it is unannotated.

    Parameters
    ----------
    labels : ndarray of int
        A label volume (any shape) of the data's own values.
    n_classes : int
        The task's classes (cell: 3, exterior, cytoplasm, nucleus).
    label_map : LabelMap, optional
        Value → class (None: unannotated); every value in ``labels`` other than
        ``ignore_label`` must be in it. Default: the values ``0 .. n_classes − 1`` are the classes.
    ignore_label : int, optional
        The value of unannotated voxels (an explicit ``label_map`` entry for it wins; without a
        map it is unannotated even where it is a class value).
    source : str
        Named in messages.

    Raises
    ------
    InputError
        ``labels`` holds values that are neither classes nor mapped (named, with the option that
        maps them), or no voxel is annotated.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise InputError(f"{source}: labels must be integers, not {labels.dtype}")
    values = [int(v) for v in np.unique(labels)]
    if not values:
        raise InputError(f"{source}: the label volume is empty")
    if values[0] < 0:
        raise InputError(f"{source}: negative label value {values[0]}")
    mapping: LabelMap = dict(label_map) if label_map is not None else {
        c: c for c in range(n_classes)}
    if ignore_label is not None and (label_map is None or ignore_label not in label_map):
        mapping[int(ignore_label)] = None
    unknown = [v for v in values if v not in mapping]
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        where = ("are not in the label map" if label_map is not None else
                 f"are not classes of the task (0 to {n_classes - 1})")
        raise InputError(f"{source}: label values {shown} {where}; map them with "
                         f"{option('label_map', '--label-map')} (VALUE:CLASS, or VALUE:ignore "
                         f"for unannotated voxels)")
    lut = np.full(values[-1] + 1, IGNORE, np.int8)
    for v in values:
        cls = mapping[v]
        lut[v] = IGNORE if cls is None else cls
    out = lut[labels.astype(np.int64, copy=False)]
    if not (out != IGNORE).any():
        raise InputError(f"{source}: no annotated voxel (every value is unannotated: "
                         f"{', '.join(map(str, values))})")
    return out
