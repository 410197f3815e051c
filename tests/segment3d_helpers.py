"""Tiny 3-D cell networks for the ``unet3d`` and ``cascade`` methods: random weights whose final
layer is re-centred so that every class wins somewhere (a net that answers one class everywhere
could not show a chunking error), saved as sxtdask checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def blob_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Noise around a bright ellipsoid (a "cell") holding a brighter one (a "nucleus")."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    c = [n / 2 for n in shape]
    r = ((z - c[0]) / (0.35 * shape[0])) ** 2 + ((y - c[1]) / (0.4 * shape[1])) ** 2 + \
        ((x - c[2]) / (0.4 * shape[2])) ** 2
    vol = rng.normal(0.0, 0.4, shape) + 1.5 * (r < 1) + 1.5 * (r < 0.3)
    return vol.astype(np.float32)


def _recentre(final: Any, logits: Any, gain: float) -> None:
    """Scale the final 1×1×1 conv by ``gain`` and move its bias so that each class's logit has
    the same median over ``logits`` (N, K, ...): no class wins everywhere.
    """
    import torch

    with torch.no_grad():
        med = logits.transpose(0, 1).reshape(logits.shape[1], -1).median(dim=1).values
        final.weight.mul_(gain)
        final.bias.mul_(gain).sub_(gain * med)


def make_unet3d_checkpoint(path: Path, *, seed: int = 0, labels: tuple[int, ...] = (0, 5, 9),
                           materials: tuple[str, ...] = ("exterior", "cytoplasm", "nucleus"),
                           ) -> Path:
    """A Biomedisa U-Net (filters 4-8-16, 3 labels) on a 48³ grid of 32³ patches, as an sxtdask
    checkpoint (``biomedisa_checkpoint_meta``).
    """
    import torch

    from sxtdask.models import BiomedisaMeta, BiomedisaUNet3D, biomedisa_checkpoint_meta, save_checkpoint

    torch.manual_seed(seed)
    net = BiomedisaUNet3D([4, 8, 16], 1, len(labels)).eval()
    sample = torch.from_numpy(blob_volume((32, 32, 32), seed))[None, None]
    sample = (sample - sample.min()) / (sample.max() - sample.min())
    with torch.no_grad():
        _recentre(net.final, net(sample, logits=True), 8.0)
    meta = BiomedisaMeta(labels=labels, scale=(48, 48, 48), patch_size=(32, 32, 32), mu=0.3,
                         sig=0.2, materials=materials)
    return save_checkpoint(path, net, {"task": "cell", **biomedisa_checkpoint_meta(net, meta)})


def cascade_config(block1: int = 8, block2: int = 8) -> Any:
    from sxtdask.models import CascadeConfig, StageConfig

    return CascadeConfig(stage1=StageConfig(depth=2, start_filts=4, block=block1, binning=2),
                         stage2=StageConfig(depth=2, start_filts=4, block=block2))


def make_cascade_checkpoint(path: Path, *, seed: int = 0, config: Any = None) -> Path:
    """NCXT's cascade, both stages depth 2 with 4 filters; stage 1 on 8³ tiles binned ×2, stage 2
    on 8³ tiles (so its halo is 8 voxels), saved as sxtdask saves a cascade.
    """
    import torch

    from sxtdask.models import NCXTCascade, save_checkpoint

    config = config or cascade_config()
    torch.manual_seed(seed)
    net = NCXTCascade(config).eval()
    n = config.num_classes
    x1 = torch.from_numpy(blob_volume((config.stage1.block,) * 3, seed))[None, None]
    with torch.no_grad():
        _recentre(net.stage1.conv_final, net.stage1(x1), 4.0)
        s = config.stage2.block
        x2 = torch.cat([torch.from_numpy(blob_volume((s, s, s), seed))[None, None],
                        torch.rand(1, n - 1, s, s, s)], dim=1)
        _recentre(net.stage2.conv_final, net.stage2(x2), 4.0)
    return save_checkpoint(path, net, {"task": "cell", **config.as_meta()})
