"""Mask R-CNN ISG route: tiling, stitching and slice linking inside the engine; the real network."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy import ndimage  # noqa: E402

from sxtdask.engine import segment_array  # noqa: E402
from sxtdask.errors import SxtdaskError  # noqa: E402
from sxtdask.models import build_maskrcnn  # noqa: E402
from sxtdask.segmenters import MaskRCNNISG, create_segmenter  # noqa: E402
from sxtdask.stats import global_stats  # noqa: E402


class GroundTruthDetector(torch.nn.Module):
    """Stands in for a trained Mask R-CNN: every bright blob of a tile is one detection."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for im in images:
            lab, n = ndimage.label(im[0].numpy() > 0.5)
            masks = np.stack([lab == k for k in range(1, n + 1)]) if n else np.zeros((0, *lab.shape))
            out.append({"masks": torch.from_numpy(masks[:, None].astype(np.float32)),
                        "scores": torch.full((n,), 0.9), "labels": torch.ones(n, dtype=torch.int64),
                        "boxes": torch.zeros((n, 4))})
        return out


def _balls(shape, n, seed):
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.uint32)
    zz, yy, xx = np.indices(shape)
    k = 0
    for _ in range(n * 20):
        c = [rng.integers(3, s - 3) for s in shape]
        r = rng.uniform(2.0, 3.5)
        ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        grown = ndimage.binary_dilation(ball, iterations=2)
        if not (vol[grown] > 0).any():
            k += 1
            vol[ball] = k
        if k == n:
            break
    return vol


@pytest.fixture()
def fake_maskrcnn(tmp_path, monkeypatch):
    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"unused")
    monkeypatch.setattr(MaskRCNNISG, "_build", lambda self, device: GroundTruthDetector())
    monkeypatch.setattr(MaskRCNNISG, "_check", lambda self, path: None)  # the file is a stand-in
    return MaskRCNNISG(tile=48, overlap=16, device="cpu", batch_size=5).load_model(ckpt)


def test_tiles_stitched_and_slices_linked_into_the_true_instances(fake_maskrcnn):
    truth = _balls((16, 40, 130), 25, seed=1)
    image = np.where(truth > 0, 0.05, 0.004).astype(np.float32)  # ×33.33 → 1 inside, 0.13 outside
    got = fake_maskrcnn.predict(image)
    both = (truth > 0) & (got > 0)
    pairs = np.unique(np.stack([truth[both], got[both]]), axis=1)
    assert (got[truth == 0] == 0).all()
    assert pairs.shape[1] == truth.max() == got.max()  # one-to-one: no split, no merge
    assert both.sum() > 0.95 * (truth > 0).sum()  # only caps below min_pixels (4) are dropped
    stats = global_stats(da.from_array(image)).compute()
    for cz in (4, 7):
        chunked = segment_array(da.from_array(image, chunks=(cz, 40, 130)), fake_maskrcnn, stats)
        np.testing.assert_array_equal(chunked["isg"].compute(scheduler="sync"), got)


def test_untrained_torchvision_maskrcnn_runs_end_to_end(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "isg_mask_rcnn_final.pth"
    torch.save({"model": build_maskrcnn(2).state_dict()}, path)
    seg = create_segmenter("sxt", task="isg_maskrcnn", device="cpu", tile=64, overlap=16,
                           image_min_size=64).load_model(path)
    assert isinstance(seg.model, torch.nn.Module) and not seg.model.training
    vol = np.random.default_rng(0).uniform(0, 0.03, (2, 64, 96)).astype(np.float32)
    out = seg.predict(vol)
    assert out.shape == vol.shape and out.dtype == np.uint32
    ids = np.unique(out[out > 0])
    assert ids.size == 0 or (ids == np.arange(1, ids.size + 1)).all()


def test_maskrcnn_weights_are_not_bundled():
    with pytest.raises(SxtdaskError, match=r"pass one, load_model\('path/to/isg_mask_rcnn_final.pth'\)$"):
        MaskRCNNISG().load_model()
