"""What ``predict`` returns, for every task and method of the registry (the README's table):
instance tasks a uint32 label array numbered 1..n by first voxel, ``cell`` the reference's dict of
two binary masks (the 3-D methods too), ``mito`` and ``isg`` a binary mask.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from sxtdask.segmenters import REGISTRY, MaskRCNNISG, Method, Task, create_segmenter


class BlobDetector(torch.nn.Module):
    """A stand-in Mask R-CNN: every bright blob of a tile is one detection."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for im in images:
            lab, n = ndimage.label(im[0].numpy() > 0.6)
            masks = np.stack([lab == k for k in range(1, n + 1)]) if n else np.zeros((0, *lab.shape))
            out.append({"masks": torch.from_numpy(masks[:, None].astype(np.float32)),
                        "scores": torch.full((n,), 0.9), "labels": torch.ones(n, dtype=torch.int64),
                        "boxes": torch.zeros((n, 4))})
        return out


def _binary(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and set(np.unique(a).tolist()) <= {0, 1}


@pytest.mark.parametrize("row", REGISTRY, ids=lambda r: f"{r.task.value}-{r.method.value}")
def test_predict_returns_the_reference_type(row, small_phantom, tmp_path, monkeypatch, request):
    volume = small_phantom.image[:16]
    if row.method in (Method.UNET3D, Method.CASCADE):  # tiny checkpoints (no bundled weights)
        checkpoint = request.getfixturevalue(f"{row.method.value}_checkpoint")
        threads = torch.get_num_threads()  # tiny 3-D convolutions: fastest on one thread
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
        seg = create_segmenter("sxt", task=row.reference, device="cpu").load_model(checkpoint)
    elif row.method is Method.MASKRCNN:
        monkeypatch.setattr(MaskRCNNISG, "_build", lambda self, device: BlobDetector())
        monkeypatch.setattr(MaskRCNNISG, "_check", lambda self, path: None)
        (tmp_path / "fake.pth").write_bytes(b"unused")
        seg = create_segmenter("sxt", task=row.reference, device="cpu", tile=64, overlap=16)
        seg.load_model(tmp_path / "fake.pth")
    else:
        seg = create_segmenter("sxt", task=row.reference).load_model()
    out = seg.predict(volume)
    if row.task is Task.CELL:
        assert isinstance(out, dict) and set(out) == {"cell_mask", "nucleus_mask"}
        assert all(_binary(m) and m.shape == volume.shape for m in out.values())
        assert not (out["nucleus_mask"] & ~out["cell_mask"].astype(bool)).any()  # nucleus ⊂ cell
    elif row.task in (Task.MITO, Task.ISG):
        assert isinstance(out, np.ndarray) and out.shape == volume.shape and _binary(out)
    else:
        assert isinstance(out, np.ndarray) and out.shape == volume.shape and out.dtype == np.uint32
        ids = np.unique(out[out > 0])
        assert (ids == np.arange(1, ids.size + 1)).all()
        firsts = [np.flatnonzero(out.ravel() == i)[0] for i in ids]
        assert firsts == sorted(firsts)  # numbered by first voxel in raster order
    # the phantom's crop holds a cell and granules (the stand-in detector's answers are tested
    # in test_maskrcnn.py)
    if row.task is not Task.MITO and row.method is not Method.MASKRCNN:
        found = out["cell_mask"] if isinstance(out, dict) else out
        assert found.any()


def test_every_registry_row_has_a_reference_name():
    assert len({r.reference for r in REGISTRY}) == len(REGISTRY)
