"""torch and torchvision are installed as a matching pair: compiled operators load and run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def test_torchvision_compiled_ops_run():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    feats = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = torchvision.ops.roi_align(feats, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])], output_size=2,
                                       spatial_scale=1.0, sampling_ratio=2, aligned=True)
    assert pooled.shape == (1, 1, 2, 2)
    assert pooled[0, 0, 0, 0] < pooled[0, 0, 1, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nms_on_cuda():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], device="cuda")
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.5)
    assert keep.tolist() == [0]
