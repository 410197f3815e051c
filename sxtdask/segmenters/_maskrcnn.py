"""ISG instances with torchvision's Mask R-CNN, as in the reference pipeline, but linked in 3-D.

Every slice is cut into overlapping tiles (256×256 by default), detections above the score
threshold are kept and their masks thresholded, duplicates from overlapping tiles are merged
(``_tiles``); unlike the reference, which gives every 2-D detection a new ID, the 2-D instances
are then linked across slices into 3-D instances (``_linking``), and the engine's global relabel
stitches them across chunks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, SxtdaskError, option
from ..stats import IntensityStats
from ._base import OutputKind, OutputSpec, Segmenter
from ._linking import link_slices
from ._names import Method, Task
from ._oom import forward_batches
from ._tiles import Detections, stitch_tile_detections, tile_grid
from ._unet import LAC_FACTOR, checkpoint_model

__all__ = ["MaskRCNNISG", "maskrcnn_max_size", "prepare_maskrcnn_slices"]

logger = logging.getLogger(__name__)

#: The task name sxtdask's Mask R-CNN checkpoints record in their metadata.
CHECKPOINT_TASK = "isg-maskrcnn"

_PASS_WEIGHTS = option("load_model('path/to/isg_mask_rcnn_final.pth')", "--model PATH")


def prepare_maskrcnn_slices(block: np.ndarray) -> np.ndarray:
    """(Z, Y, X) LAC per voxel (µm⁻¹ × voxel size in µm, as reconstructions store it) → (Z, Y, X)
    float32 in [0, 1], the detector's input.

    LAC × 33.33 clipped to [0, 1] (the reference pipeline's scaling). Training
    (``sxtdask.train``) and ``sxtdask export-coco`` prepare their patches with this function.
    """
    return np.clip(block.astype(np.float32) * LAC_FACTOR, 0, 1)


def maskrcnn_max_size(min_size: int) -> int:
    """torchvision's resize cap ``max_size`` for ``min_size`` (its 1333:800 ratio)."""
    return max(min_size, 1333 * min_size // 800)


def _resize_of(path: Any, meta: dict[str, Any], min_size: int) -> dict[str, int]:
    """``min_size``/``max_size`` for the network of a checkpoint: those its metadata records
    (sxtdask's trainer), else ``min_size`` and its default cap; other tasks are refused.
    """
    task = meta.get("task")
    if task is not None and task != CHECKPOINT_TASK:
        raise SxtdaskError(f"{path} was trained for task {task!r}, not {CHECKPOINT_TASK!r}")
    model = meta.get("model") or {}
    if int(model.get("num_classes", 2)) != 2:
        raise SxtdaskError(f"{path} has {model['num_classes']} classes; the ISG detector needs 2 "
                           "(background and isg)")
    size = int(model.get("min_size", min_size))
    return {"min_size": size, "max_size": int(model.get("max_size") or maskrcnn_max_size(size))}


@dataclass(frozen=True)
class MaskRCNNISG(Segmenter):
    """Tiled Mask R-CNN ISG detection, linked across slices.

    Parameters
    ----------
    model_path : str
        A Mask R-CNN (ResNet-50 FPN, 2 classes) checkpoint, read weights-only.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        Tiles per forward pass.
    tile, overlap : int
        Tile size and overlap, pixels.
    score_threshold, mask_threshold : float
        Detection score and mask probability thresholds (the reference's 0.5 and 0.5).
    image_min_size : int
        torchvision's internal resize of each tile (its default, 800, unless the checkpoint
        was trained otherwise).
    min_overlap : float
        Slice-to-slice linking: least overlap, as a fraction of the smaller 2-D instance.
    """

    model_path: str | None = None
    device: str = "auto"
    batch_size: int = 4
    tile: int = 256
    overlap: int = 32
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    image_min_size: int = 800
    min_overlap: float = 0.3
    halo: tuple[int, int, int] = (8, 0, 0)

    task = Task.ISG_INSTANCES
    method = Method.MASKRCNN
    threshold_field = "score_threshold"
    outputs = (OutputSpec("isg", OutputKind.INSTANCES, "uint32"),)
    full_plane = True

    @property
    def model_files(self) -> tuple[str, ...]:
        return () if self.model_path is None else (self.model_path,)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size ({self.batch_size}) must be at least 1")
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a number in [0, 1)")
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise SxtdaskError(f"{self.model_path}: no such checkpoint file")

    def load_model(self, path: str | os.PathLike[str] | None = None) -> MaskRCNNISG:
        """Bind this segmenter to the checkpoint at ``path``, in place, and return it.

        The file is checked now (read weights-only on the CPU and matched, name for name and
        shape for shape, against a network on the ``meta`` device, which allocates nothing), so
        errors surface here, not on a worker; each worker builds the network once, on its device.
        An sxtdask checkpoint (``sxtdask train``) records the resize it was trained at
        (``meta["model"]``: ``min_size``, ``max_size``); the network is built with that, whatever
        ``image_min_size`` says. A checkpoint trained for another task is refused.
        """
        if path is None:
            raise SxtdaskError(
                "Mask R-CNN weights are not bundled (a ResNet-50 FPN checkpoint is ~170 MB): "
                f"pass one, {_PASS_WEIGHTS}"
            )
        self._check(str(path))
        self._update(model_path=str(path))
        return self

    def _check(self, path: str) -> None:
        import torch

        from ..models import build_maskrcnn, check_fit, read_checkpoint

        state, meta = read_checkpoint(path)
        with torch.device("meta"):
            net = build_maskrcnn(2, **_resize_of(path, meta or {}, self.image_min_size))
        check_fit(net, state, path, strict=True)

    @property
    def model(self) -> Any:
        """The torchvision ``MaskRCNN`` in eval mode (cached per process)."""
        if self.model_path is None:
            self.load_model(None)
        return checkpoint_model(("maskrcnn", self.image_min_size), self.model_path, self.device,
                                self._build)

    def _build(self, device: str) -> Any:
        from ..models import build_maskrcnn, load_weights, read_checkpoint

        assert self.model_path is not None  # model() builds only with a checkpoint
        state, meta = read_checkpoint(self.model_path)
        net = build_maskrcnn(2, **_resize_of(self.model_path, meta or {}, self.image_min_size))
        return load_weights(net, state).eval().to(device)

    def _detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Run the detector on tiles (each (h, w) in [0, 1]) in batches.

        Out of GPU memory, batches are halved and, at one tile, the chunk runs on the CPU
        (``forward_batches``; each step is logged as a warning).
        """
        import torch

        net = self.model
        device = str(next(net.parameters()).device)

        def run(tiles: list[np.ndarray], dev: str) -> list[Detections]:
            model = net if dev == device else self._model_on(dev)
            batch = [torch.from_numpy(np.repeat(im[None], 3, axis=0)).to(dev) for im in tiles]
            with torch.inference_mode():
                if dev.startswith("cuda"):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        results = model(batch)
                else:
                    results = model(batch)
            return [Detections(masks=r["masks"][:, 0].float().cpu().numpy(),
                               scores=r["scores"].float().cpu().numpy()) for r in results]

        return forward_batches(run, images, self.batch_size, device=device)

    def _model_on(self, device: str) -> Any:
        """The network on another device (the CPU fallback), cached per process like ``model``."""
        return checkpoint_model(("maskrcnn", self.image_min_size), self.model_path, device,
                                self._build)

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        x = prepare_maskrcnn_slices(block)
        tiles = tile_grid(block.shape[1:], self.tile, self.overlap)
        crops = [x[z][t.slices] for z in range(x.shape[0]) for t in tiles]
        dets = self._detect(crops)
        labels2d = np.zeros(block.shape, dtype=np.int32)
        for z in range(x.shape[0]):
            labels2d[z] = stitch_tile_detections(
                block.shape[1:], tiles, dets[z * len(tiles) : (z + 1) * len(tiles)],
                score_threshold=self.score_threshold, mask_threshold=self.mask_threshold,
            )
        return {"isg": link_slices(labels2d, min_overlap=self.min_overlap)}
