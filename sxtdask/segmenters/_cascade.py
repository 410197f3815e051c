"""``--method cascade``: NCXT's 3-D U-Net cascade (Ekman et al. 2020; ncxt/ncxt_sxtcnn), at
archive scale and chunk-invariant.

The steps (REFERENCE-3D §3):

1. **Stage 1** on the binned tomogram (factor ``b``, 2 by default: a ``mean`` pyramid level of
   the OME-Zarr where one equals it, else the 2×2×2... mean of level 0, computed per task). NCXT's
   tiling: per axis ``n = ceil(1.5 L / block)`` tiles starting at ``round(linspace(0, L − block,
   n))`` (one zero-padded tile when ``L ≤ block``). Each tile's softmax is upsampled ×b by
   nearest repetition and the tiles are fused by a weighted average with the window
   ``0.01 + triang ⊗ triang ⊗ triang``, then smoothed by a Gaussian of σ = b / 2.355.
2. Stage 1's probabilities are smoothed by a Gaussian of σ = 2 voxels (``sigma``) and **channel 0
   is replaced by the image** — NCXT's code, which this follows (the paper's text says the image
   and all n probability fields; the code feeds the image and n − 1 of them).
3. **Stage 2** at full resolution, tiled and fused the same way, reading that n-channel volume;
   the class of each voxel is the argmax of the fused probabilities, written as the checkpoint's
   label value.

Both tilings are fixed by the tomogram's shape, never by its chunks, and NCXT's networks use
InstanceNorm (statistics of the whole tile), so a tile's answer depends on the whole tile: that
is why the answer at a voxel is built from whole tiles, never from a chunk's own crop. On Dask,
stage 1 is one task per row of tiles (all tiles of one z and y origin), stage 2 one task per z
band of tiles (all tiles of one z origin):

- ``cascade.stage1`` reads only its binned window (the pyramid level, or level 0 binned in the
  task) and returns its tiles' softmax of classes 1..n−1;
- ``cascade.prior`` fuses and smooths stage 1 over a z slab of whole planes (two stage-2 tiles
  deep) from the stage-1 rows that reach it, over the slab plus the Gaussians' reach (every
  value equals the whole-volume one: the same tiles, added in the same order, the same Gaussian
  taps), so each voxel's prior is computed once;
- ``cascade.stage2`` reads its band of full-resolution planes and the prior slabs under it,
  predicts the band's tiles row by row and returns their window-weighted sums over the band
  (K × band × Y × X: about 0.6× the memory of the tiles themselves, and one task per band
  instead of one per row);
- each engine block adds the bands over its chunk (no halo), in z order, and takes the argmax.

Every tile is predicted once, whatever the chunking; its batch is its row and the sums' order
is fixed by the tomogram's shape, so the result equals :meth:`CascadeSegmenter.segment_block`
on the whole volume (the same steps in one process), for any chunking.

Decided here where NCXT is silent: tiles beyond a short axis are zero-padded after
normalisation; the window is taken at full resolution (``block · b`` samples); sxtdask's own
checkpoints normalise with the volume's percentiles (``percentile``, as the 2-D networks) —
NCXT's ``LAC × 100`` (``lac``) is there for networks trained on calibrated LACs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed
from scipy import ndimage

from ..errors import ConfigError, SxtdaskError
from ..stats import IntensityStats
from ._base import BlockContext, OutputKind, OutputSpec, Segmenter
from ._names import Method, Task
from ._unet import checkpoint_model
from ._unet3d import cell_masks

__all__ = ["CascadeSegmenter", "fuse_tiles", "gaussian_radius", "tile_starts", "tile_window"]

_CELL_CLASSES = ((1, "cytoplasm"), (2, "nucleus"))
#: FWHM → σ of the Gaussian that follows a ×b nearest upsampling (NCXT: σ = b / 2.355).
FWHM = 2.355
_TRUNCATE = 4.0  # scipy's default: the Gaussian's taps reach int(4σ + 0.5) voxels


def tile_starts(length: int, size: int) -> list[int]:
    """NCXT's tile origins along one axis of ``length`` samples for tiles of ``size``."""
    if length <= size:
        return [0]
    n = math.ceil(1.5 * length / size)
    return sorted({int(v) for v in np.round(np.linspace(0, length - size, n))})


@lru_cache(maxsize=16)
def tile_window(size: int) -> np.ndarray:
    """NCXT's fusion weights of a ``size``³ tile: ``0.01 + triang ⊗ triang ⊗ triang``."""
    from scipy.signal.windows import triang

    t = triang(size).astype(np.float64)
    w = 0.01 + t[:, None, None] * t[None, :, None] * t[None, None, :]
    return w.astype(np.float32)


def gaussian_radius(sigma: float) -> int:
    """How far scipy's Gaussian of ``sigma`` reaches (0 for no smoothing)."""
    return int(_TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    return ndimage.gaussian_filter(a, sigma, truncate=_TRUNCATE, mode="reflect")


def fuse_tiles(tiles: Sequence[tuple[tuple[int, int, int], np.ndarray]], region: Sequence[tuple[int, int]],
               shape: Sequence[int], extent: int, binning: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The weighted sums of tile outputs over ``region`` ((lo, hi) per axis, full resolution).

    ``tiles`` are ``(origin, probs)`` with ``origin`` the tile's full-resolution corner and
    ``probs`` (K, e/b, e/b, e/b) at the tile's own scale (upsampled ×``binning`` by nearest
    repetition), added in the given order (callers pass raster order, so a voxel's sum is the
    same float sum in any region). Returns (numerator (K, *region), weights (*region)).
    """
    rshape = tuple(hi - lo for lo, hi in region)
    k = tiles[0][1].shape[0] if tiles else 0
    num = np.zeros((k, *rshape), np.float32)
    den = np.zeros(rshape, np.float32)
    add_tiles(num, den, tiles, region, shape, extent, binning)
    return num, den


def add_tiles(num: np.ndarray, den: np.ndarray | None,
              tiles: Sequence[tuple[tuple[int, int, int], np.ndarray]],
              region: Sequence[tuple[int, int]], shape: Sequence[int], extent: int,
              binning: int = 1) -> None:
    """Add the window-weighted ``tiles`` to ``num`` (K, *region) and their weights to ``den``
    (*region; None: not kept), in the given order (see :func:`fuse_tiles`).
    """
    window = tile_window(extent)
    for origin, probs in tiles:
        box = [(max(o, lo, 0), min(o + extent, hi, n)) for o, (lo, hi), n in
               zip(origin, region, shape, strict=True)]
        if any(a >= b for a, b in box):
            continue
        # the tile's samples over the box, each repeated ×binning (basic slices, no gathers)
        local = [(a - o, b - o) for (a, b), o in zip(box, origin, strict=True)]
        up = probs[(slice(None), *(slice(a // binning, (b - 1) // binning + 1) for a, b in local))]
        for axis, (a, b) in enumerate(local, start=1):
            if binning > 1:
                up = np.repeat(up, binning, axis=axis)
                up = up[(slice(None),) * axis + (slice(a % binning, a % binning + b - a),)]
        w = window[tuple(slice(a, b) for a, b in local)]
        dst = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in zip(box, region, strict=True))
        target = num[(slice(None), *dst)]
        target += up * w
        if den is not None:
            den[dst] += w


def _stage_tiles(shape: Sequence[int], block: int, binning: int) -> list[list[int]]:
    """Full-resolution tile origins per axis of a stage (its tiling is on the binned grid)."""
    return [[s * binning for s in tile_starts(-(-n // binning), block)] for n in shape]


def _overlapping(starts: Sequence[int], extent: int, lo: int, hi: int) -> list[int]:
    return [s for s in starts if s < hi and s + extent > lo]


@dataclass(frozen=True)
class CascadeSegmenter(Segmenter):
    """NCXT's two-stage 3-D U-Net cascade for the cell task (see the module).

    Parameters
    ----------
    task : Task
        ``Task.CELL``; the labels written are the checkpoint's values (sxtdask's: 0 exterior,
        1 cytoplasm, 2 nucleus).
    model_path : str, optional
        An sxtdask cascade checkpoint (``sxtdask train --arch cascade``, or NCXT stage files
        assembled by :func:`sxtdask.models.cascade_from_ncxt`); default the bundled one.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        Tiles per forward pass (the answer does not depend on it).
    binning : int, optional
        Stage 1's binning factor (default the checkpoint's, NCXT's 2).
    clean : float, optional
        Set the connected parts of the cell (labels > 0) of at most ``clean`` × the largest part
        to exterior, over the whole volume (e.g. 0.1: debris and false fragments go, several
        cells stay); None (NCXT's): off.
    """

    task: Task = Task.CELL
    model_path: str | None = None
    device: str = "auto"
    batch_size: int = 8
    binning: int | None = None
    clean: float | None = None
    halo: tuple[int, int, int] = (0, 0, 0)
    config: Any = None  # the checkpoint's CascadeConfig (load_model)

    method = Method.CASCADE

    def __post_init__(self) -> None:
        if self.task is not Task.CELL:
            raise ConfigError(f"the cascade method segments the cell task, not {self.task.value!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size ({self.batch_size}) must be at least 1")
        if self.binning is not None and not 1 <= self.binning <= 16:
            raise ConfigError(f"binning ({self.binning}) must be from 1 to 16")
        if self.clean is not None and not 0 <= self.clean < 1:
            raise ConfigError(f"clean ({self.clean}) must be at least 0 and below 1")
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise SxtdaskError(f"{self.model_path}: no such model file")

    # ----------------------------------------------------------------- description

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:  # type: ignore[override]
        if self.config is None:
            return (OutputSpec("cell", OutputKind.SEMANTIC, "uint8", classes=_CELL_CLASSES,
                               clean=self.clean),)
        labels, names = self.config.labels, self.config.classes
        top = max(labels)
        dtype = "uint8" if top < 256 else "uint16" if top < 65536 else "uint32"
        classes = tuple((int(v), str(c)) for v, c in zip(labels, names, strict=True) if v != 0)
        return (OutputSpec("cell", OutputKind.SEMANTIC, dtype, classes=classes, clean=self.clean),)

    #: Blocks only resize or fuse: the network runs in the per-tomogram tasks, pinned there.
    blocks_need_gpu = False

    @property
    def model_files(self) -> tuple[str, ...]:
        return () if self.model_path is None else (self.model_path,)

    #: A block reads no image around its chunk: its answer comes from whole tiles of the
    #: per-tomogram work (:meth:`plan_context`).
    context_radius = (0, 0, 0)

    @property
    def _cfg(self) -> Any:
        if self.config is None:
            raise ConfigError("no cascade loaded: call load_model() for the bundled weights or "
                              "load_model(path) for a checkpoint")
        return self.config

    @property
    def factor(self) -> int:
        """Stage 1's binning factor in force."""
        return self.binning if self.binning is not None else self._cfg.stage1.binning

    @property
    def margin(self) -> int:
        """How far the stage-1 Gaussians reach (voxels)."""
        up = self.factor / FWHM if self.factor > 1 else 0.0
        return gaussian_radius(up) + gaussian_radius(self._cfg.sigma)

    # ----------------------------------------------------------------- the model

    def load_model(self, path: str | os.PathLike[str] | None = None) -> CascadeSegmenter:
        """Bind to a cascade checkpoint, in place (checked here, built once per worker)."""
        from ..models import bundled_weights, read_cascade

        if path is None:
            path = bundled_weights("cascade")
        if not os.path.isfile(path):
            raise SxtdaskError(f"{path}: no such model file")
        config, _ = read_cascade(path)
        self._update(model_path=str(path), config=config)
        return self

    @property
    def model(self) -> Any:
        return checkpoint_model(("cascade",), self.model_path, self.device, self._build)

    def _build(self, device: str) -> Any:
        from ..models import load_cascade

        assert self.model_path is not None
        return load_cascade(self.model_path, device)[0]

    # ----------------------------------------------------------------- inputs

    def normalise(self, x: np.ndarray, stats: IntensityStats) -> np.ndarray:
        """Network input of raw intensities, per the checkpoint's preprocessing."""
        prep = self._cfg.preprocessing
        if prep["name"] == "lac":
            return (np.asarray(x, np.float32) * np.float32(prep.get("factor", 100.0)))
        return np.clip(stats.normalize(x) * 2.0 - 1.0, -2.0, 2.0).astype(np.float32)

    def _forward(self, stage: str, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Softmax outputs of one stage's network on ``tiles`` (each (C, s, s, s)), batched;
        out of GPU memory, batches are halved (and the CPU used at the end).
        """
        import torch

        from ._oom import forward_batches

        net = self.model
        first = str(next(net.parameters()).device)

        def run(batch: np.ndarray, device: str) -> list[np.ndarray]:
            model = net if device == first else dataclasses.replace(self, device=device).model
            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
                prob = getattr(model, stage)(t).float().softmax(dim=1)
                return list(prob.cpu().numpy())

        if not tiles:
            return []
        return forward_batches(run, np.stack(tiles), self.batch_size, device=first)

    # ----------------------------------------------------------------- stage 1

    def plan_context(self, image: da.Array, stats: Any, *,
                     binned: dict[int, da.Array] | None = None) -> BlockContext:
        """Both stages as one task per row of tiles (see the module)."""
        stage1 = self._plan_stage1(image, stats, binned)
        e2 = self._cfg.stage2.extent
        shape = stage1.shape
        zs, ys, xs = _stage_tiles(shape, e2, 1)
        token = tokenize(stage1.token, "stage2")
        annotations = {"resources": {"GPU": 1}} if self.needs_gpu else {}
        # stage 1's smoothed probabilities, once per z slab of whole planes (a row of stage 2
        # reads the one or two slabs under it: each voxel's prior is computed once)
        slab = 2 * e2
        priors: dict[int, Delayed] = {}
        for z0 in range(0, shape[0], slab):
            box = (slice(z0, min(z0 + slab, shape[0])), slice(0, shape[1]), slice(0, shape[2]))
            priors[z0] = delayed(_prior_slab, pure=True)(
                self, stage1.for_block(box), box[0].start, box[0].stop, shape,
                dask_key_name=(f"cascade.prior-{token}", z0 // slab))
        bands: dict[int, Delayed] = {}
        for iz, tz in enumerate(zs):
            under = [z0 for z0 in sorted(priors) if z0 < tz + e2 and z0 + slab > tz]
            box = (slice(tz, min(tz + e2, shape[0])), slice(0, shape[1]), slice(0, shape[2]))
            # read anywhere: only the network's task asks for a GPU
            window = delayed(image[box], pure=True)
            with dask.annotate(**annotations):
                bands[tz] = delayed(_stage2_band, pure=True)(
                    self, window, stats, tz, ys, xs, shape, under[0],
                    *(priors[z0] for z0 in under),
                    dask_key_name=(f"cascade.stage2-{token}", iz))
        return _Bands(bands, shape, e2, token)

    def _plan_stage1(self, image: da.Array, stats: Any,
                     binned: dict[int, da.Array] | None) -> _Rows:
        """Stage 1 as one task per row of tiles (see the module)."""
        cfg, b = self._cfg, self.factor
        shape = tuple(int(n) for n in image.shape)
        s1 = cfg.stage1.block
        small = tuple(-(-n // b) for n in shape)
        level = (binned or {}).get(b) if b > 1 else image
        token = tokenize(image.name, self, b, level is not None and level.name)
        zs, ys, xs = (tile_starts(n, s1) for n in small)
        rows: dict[tuple[int, int], Delayed] = {}
        annotations = {"resources": {"GPU": 1}} if self.needs_gpu else {}
        for iz, tz in enumerate(zs):
            for iy, ty in enumerate(ys):
                box = (slice(tz, min(tz + s1, small[0])), slice(ty, min(ty + s1, small[1])),
                       slice(0, small[2]))
                if level is not None:
                    window, raw = delayed(level[box], pure=True), False
                else:  # bin the full-resolution rows in the task
                    window = delayed(image[tuple(slice(s.start * b, min(s.stop * b, n))
                                                 for s, n in zip(box, shape, strict=True))],
                                     pure=True)
                    raw = True
                with dask.annotate(**annotations):
                    rows[(tz, ty)] = delayed(_stage1_row, pure=True)(
                        self, window, raw, stats, (tz, ty), xs,
                        dask_key_name=(f"cascade.stage1-{token}", iz, iy))
        return _Rows(rows, shape, cfg.stage1.block * b, b, self.margin, token)

    def _stage1_tiles(self, window: np.ndarray, raw: bool, stats: IntensityStats,
                      origin: tuple[int, int], xs: Sequence[int]) -> dict[tuple[int, ...], np.ndarray]:
        from ..io import bin_mean

        s1 = self._cfg.stage1.block
        if raw and self.factor > 1:
            window = bin_mean(np.asarray(window), self.factor)
        x = self.normalise(window, stats)
        probs = self._forward("stage1", [_pad(x[None, :, :, tx:tx + s1], s1) for tx in xs])
        # classes 1..n−1 only: stage 2 reads the image in place of class 0 (held until the prior
        # slabs are built, so a third less to hold)
        return {(origin[0], origin[1], tx): np.ascontiguousarray(p[1:])
                for tx, p in zip(xs, probs, strict=True)}

    # ----------------------------------------------------------------- stage 2

    def _stage2_band(self, window: np.ndarray, z0: int, slabs: Sequence[np.ndarray],
                     stats: IntensityStats, tz: int, ys: Sequence[int], xs: Sequence[int],
                     shape: tuple[int, ...]) -> np.ndarray:
        """Stage 2 over one z band of tiles (all tiles with z origin ``tz``), fused: the
        window-weighted sums of their softmax over slices ``tz:tz + len(window)`` of whole
        planes, (K, slices, Y, X), tiles added in raster order. The network reads the band's
        image and stage 1's smoothed probabilities, cut from the prior ``slabs`` under it
        ((n−1, slices, Y, X) each, in z order, the first starting at slice ``z0``).
        """
        e2 = self._cfg.stage2.extent
        # the band's slices of each slab (no copy of the slabs themselves)
        pieces, start, stop = [], tz, tz + window.shape[0]
        for slab in slabs:
            lo, hi = max(start, z0), min(stop, z0 + slab.shape[1])
            if lo < hi:
                pieces.append(slab[:, lo - z0:hi - z0])
            z0 += slab.shape[1]
        prior = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
        x = np.concatenate([self.normalise(window, stats)[None], prior], axis=0)
        del pieces, prior
        region = [(tz, tz + window.shape[0]), (0, shape[1]), (0, shape[2])]
        num = np.zeros((self._cfg.num_classes, *window.shape), np.float32)
        for ty in ys:  # a row of tiles per forward batch group
            tiles = [_pad(x[:, :, ty:ty + e2, tx:tx + e2], e2) for tx in xs]
            out = self._forward("stage2", tiles)
            add_tiles(num, None, [((tz, ty, tx), p) for tx, p in zip(xs, out, strict=True)],
                      region, shape, e2)
        return num

    def segment_block_in(self, block: np.ndarray, stats: IntensityStats,
                         voxel_size_nm: tuple[float, float, float], *, box: tuple[slice, ...],
                         shape: tuple[int, ...], context: Any,
                         core: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
        """The classes of the block's core from the stage-2 bands over it (``context``, a list
        of (first slice, fused sums (K, slices, Y, X)) in z order); zero elsewhere in the block.
        """
        core = box if core is None else core
        region = [(c.start, c.stop) for c in core]
        num = np.zeros((self._cfg.num_classes, *(hi - lo for lo, hi in region)), np.float32)
        for tz, band in context:
            lo, hi = max(tz, region[0][0]), min(tz + band.shape[1], region[0][1])
            if lo < hi:
                num[:, lo - region[0][0]:hi - region[0][0]] += band[
                    :, lo - tz:hi - tz, core[1], core[2]]
        values = np.asarray(self._cfg.labels, dtype=self.outputs[0].dtype)
        out = np.zeros(block.shape, self.outputs[0].dtype)
        dst = out[tuple(slice(c.start - b.start, c.stop - b.start)
                        for c, b in zip(core, box, strict=True))]
        for z in range(0, num.shape[1], 8):  # argmax's int64 indices a few slices at a time
            dst[z:z + 8] = values[num[:, z:z + 8].argmax(axis=0)]
        return {"cell": out}

    def _stage1_probabilities(self, rows: dict[tuple[int, ...], np.ndarray],
                              union: Sequence[tuple[int, int]], shape: Sequence[int]) -> np.ndarray:
        """Stage 1's fused, smoothed probabilities of classes 1..n−1 over ``union``."""
        m, b = self.margin, self.factor
        region = [(max(0, lo - m), min(n, hi + m)) for (lo, hi), n in zip(union, shape, strict=True)]
        tiles = [((k[0] * b, k[1] * b, k[2] * b), p) for k, p in sorted(rows.items())]
        num, den = fuse_tiles(tiles, region, shape, self._cfg.stage1.block * b, b)
        fused = num / np.maximum(den, np.float32(1e-12))
        up = b / FWHM if b > 1 else 0.0
        smooth = np.stack([_smooth(_smooth(c, up), self._cfg.sigma) for c in fused])
        crop = tuple(slice(lo - r_lo, hi - r_lo) for (lo, hi), (r_lo, _) in
                     zip(union, region, strict=True))
        return smooth[(slice(None), *crop)].astype(np.float32)

    def _whole_rows(self, vol: np.ndarray, stats: IntensityStats, stage: int
                    ) -> dict[tuple[int, ...], np.ndarray]:
        """Every tile of one stage of a whole in-memory volume, computed here."""
        from ..io import bin_mean

        b = self.factor
        binned = {b: da.from_array(bin_mean(vol, b))} if b > 1 else {}
        image = da.from_array(vol)
        context = self._plan_stage1(image, stats, binned) if stage == 1 else \
            self.plan_context(image, stats, binned=binned)
        box = tuple(slice(0, n) for n in vol.shape)
        return context.for_block(box).compute(scheduler="sync")

    def stage1_probabilities(self, volume: np.ndarray, stats: IntensityStats) -> np.ndarray:
        """Stage 2's input of a whole (Z, Y, X) volume: (n, Z, Y, X) float32, channel 0 the
        normalised image and channels 1..n−1 stage 1's fused, smoothed probabilities (what
        ``sxtdask train --arch cascade`` trains stage 2 on; inference builds the same values
        block by block).
        """
        vol = np.asarray(volume)
        rows = self._whole_rows(vol, stats, 1)
        probs = self._stage1_probabilities(rows, [(0, n) for n in vol.shape], vol.shape)
        return np.concatenate([self.normalise(vol, stats)[None], probs], axis=0)

    def segment_block(self, block: np.ndarray, stats: IntensityStats,
                      voxel_size_nm: tuple[float, float, float]) -> dict[str, np.ndarray]:
        """The whole volume in one process: the same steps, run synchronously."""
        vol = np.asarray(block)
        box = tuple(slice(0, n) for n in vol.shape)
        return self.segment_block_in(vol, stats, voxel_size_nm, box=box, shape=vol.shape,
                                     context=self._whole_rows(vol, stats, 2))

    # ----------------------------------------------------------------- memory

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        """An engine block: its chunk, the stage-2 bands over it (n classes over its slices
        plus a tile each side, 1.5× for the bands' overlap; whole planes, here taken as the
        block's plane, exact for z slabs) and their sum. The band tasks of the per-tomogram
        work hold one band's input, its sums and one batch's activations.
        """
        n = self._cfg.num_classes
        vox = int(np.prod(block_shape))
        e = self._cfg.stage2.extent
        bands = int(1.5 * (block_shape[0] + 2 * e) * np.prod(block_shape[1:]))
        return 4 * (2 * vox + bands * n + vox * (n + 1))

    def with_batch_size(self, batch_size: int) -> CascadeSegmenter:
        return self if self.batch_size <= batch_size else dataclasses.replace(
            self, batch_size=batch_size)

    def predict(self, volume: np.ndarray,
                voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0), *,
                threshold: float | None = None) -> dict[str, np.ndarray]:
        """Whole-volume prediction, returned as the cell U-Net returns it: ``{"cell_mask",
        "nucleus_mask"}`` (:func:`cell_masks`; the label values themselves come from
        :meth:`segment_volume`). The method has no threshold.
        """
        labels = super().predict(volume, voxel_size_nm, threshold=threshold)
        return cell_masks(np.asarray(labels), self.outputs[0].classes)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` (C, z, y, x) zero-padded at the end of each spatial axis to ``size``."""
    pad = [(0, 0)] + [(0, size - n) for n in a.shape[1:]]
    return np.pad(a, pad) if any(p for _, p in pad) else a


def _stage2_band(seg: CascadeSegmenter, window: np.ndarray, stats: IntensityStats, tz: int,
                 ys: Sequence[int], xs: Sequence[int], shape: tuple[int, ...], z0: int,
                 *slabs: np.ndarray) -> np.ndarray:
    """Stage 2's fused sums over one z band of tiles; ``slabs``: the prior slabs under it, the
    first starting at slice ``z0``.
    """
    return seg._stage2_band(np.asarray(window), z0, slabs, stats, tz, ys, xs, shape)


def _prior_slab(seg: CascadeSegmenter, rows: dict[tuple[int, ...], np.ndarray], z0: int, z1: int,
                shape: tuple[int, ...]) -> np.ndarray:
    """Stage 1's fused, smoothed probabilities of classes 1..n−1 over slices ``z0:z1``."""
    return seg._stage1_probabilities(rows, [(z0, z1), (0, shape[1]), (0, shape[2])], shape)


def _stage1_row(seg: CascadeSegmenter, window: np.ndarray, raw: bool, stats: IntensityStats,
                origin: tuple[int, int], xs: Sequence[int]) -> dict[tuple[int, ...], np.ndarray]:
    """Stage 1's softmax of one row of tiles (binned origins ``(tz, ty, tx)``)."""
    return seg._stage1_tiles(window, raw, stats, origin, xs)


def _merge(*rows: dict[tuple[int, ...], np.ndarray]) -> dict[tuple[int, ...], np.ndarray]:
    out: dict[tuple[int, ...], np.ndarray] = {}
    for row in rows:
        out.update(row)
    return out


@dataclass(frozen=True)
class _Rows(BlockContext):
    """One stage's rows of tiles; a block (or a row of the next stage) gets those whose tiles
    reach its region, grown by ``margin``.
    """

    rows: dict[tuple[int, int], Delayed]
    shape: tuple[int, ...]
    extent: int  # a tile's side at full resolution
    binning: int
    margin: int
    token: str

    def for_block(self, box: tuple[slice, ...]) -> Delayed:
        lo = [max(0, s.start - self.margin) for s in box]
        hi = [min(n, s.stop + self.margin) for s, n in zip(box, self.shape, strict=True)]
        keys = sorted(k for k in self.rows
                      if k[0] * self.binning < hi[0] and k[0] * self.binning + self.extent > lo[0]
                      and k[1] * self.binning < hi[1] and k[1] * self.binning + self.extent > lo[1])
        name = f"cascade.rows-{tokenize(self.token, [(s.start, s.stop) for s in box])}"
        return delayed(_merge, pure=True)(*(self.rows[k] for k in keys), dask_key_name=name)


def _band_list(tzs: Sequence[int], *bands: np.ndarray) -> list[tuple[int, np.ndarray]]:
    return list(zip(tzs, bands, strict=True))


@dataclass(frozen=True)
class _Bands(BlockContext):
    """Stage 2's z bands of fused sums; a block gets those that reach its slices, in z order."""

    bands: dict[int, Delayed]
    shape: tuple[int, ...]
    extent: int
    token: str

    def for_block(self, box: tuple[slice, ...]) -> Delayed:
        tzs = sorted(t for t in self.bands if t < box[0].stop and t + self.extent > box[0].start)
        name = f"cascade.bands-{tokenize(self.token, [(s.start, s.stop) for s in box])}"
        return delayed(_band_list, pure=True)(tzs, *(self.bands[t] for t in tzs),
                                              dask_key_name=name)
