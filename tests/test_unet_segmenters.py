"""U-Net segmenters: batch-size invariance, chunked equals whole, cache, CLI (narrow widths, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sxtdask.engine import load_counts, segment_array  # noqa: E402
from sxtdask.errors import ConfigError, SxtdaskError  # noqa: E402
from sxtdask.io import open_labels, write_image  # noqa: E402
from sxtdask.models import ModelKind, build_unet  # noqa: E402
from sxtdask.segmenters import Task, UNetISGInstances, UNetSegmenter, create_segmenter  # noqa: E402
from sxtdask.stats import global_stats  # noqa: E402

WIDTH = 4


def _checkpoint(tmp_path: Path, kind: ModelKind, seed: int = 0) -> Path:
    """Random narrow network weights with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    net = build_unet(kind, width=WIDTH)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{kind.value}-w{WIDTH}.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def volume(small_phantom) -> np.ndarray:
    return small_phantom.image[:12, :64, :80].copy()


def _stats(x: np.ndarray):
    return global_stats(da.from_array(x)).compute(scheduler="sync")


@pytest.mark.parametrize("task,kind", [(Task.CELL, ModelKind.CELL_NUCLEUS), (Task.MITO, ModelKind.MITO),
                                       (Task.ISG, ModelKind.ISG)], ids=["cell", "mito", "isg"])
def test_batch_size_does_not_change_the_answer(tmp_path, volume, task, kind):
    path = _checkpoint(tmp_path, kind)
    stats = _stats(volume)
    one = UNetSegmenter(task=task, device="cpu", batch_size=1).load_model(path)
    eight = UNetSegmenter(task=task, device="cpu", batch_size=8).load_model(path)
    p1 = one.probabilities(volume, stats)
    p8 = eight.probabilities(volume, stats)
    np.testing.assert_allclose(p1, p8, atol=1e-5)
    name = one.outputs[0].name
    np.testing.assert_array_equal(one.segment_block(volume, stats, (30.0,) * 3)[name],
                                  eight.segment_block(volume, stats, (30.0,) * 3)[name])


@pytest.mark.parametrize("task,kind", [(Task.CELL, ModelKind.CELL_NUCLEUS), (Task.MITO, ModelKind.MITO),
                                       (Task.ISG, ModelKind.ISG)], ids=["cell", "mito", "isg"])
@pytest.mark.parametrize("cz", [3, 5], ids=["slabs-of-3", "slabs-of-5"])
def test_chunked_equals_whole(tmp_path, volume, task, kind, cz):
    seg = UNetSegmenter(task=task, device="cpu", batch_size=4).load_model(_checkpoint(tmp_path, kind))
    whole = UNetSegmenter.segment_block(seg, volume, _stats(volume), (30.0,) * 3)
    out = segment_array(da.from_array(volume, chunks=(cz, 64, 80)), seg, _stats(volume))
    name = seg.outputs[0].name
    np.testing.assert_array_equal(out[name].compute(scheduler="sync"), whole[name])


def test_isg_instances_chunked_equals_whole(tmp_path, volume):
    seg = UNetISGInstances(unet=UNetSegmenter(task=Task.ISG, device="cpu", threshold=0.5))
    seg = seg.load_model(_checkpoint(tmp_path, ModelKind.ISG, seed=3))
    whole = seg.predict(volume)
    for cz in (4, 6):
        got = segment_array(da.from_array(volume, chunks=(cz, 64, 80)), seg, _stats(volume))
        np.testing.assert_array_equal(got["isg"].compute(scheduler="sync"), whole)


def test_in_plane_chunks_are_refused(tmp_path, volume):
    seg = UNetSegmenter(task=Task.CELL, device="cpu").load_model(
        _checkpoint(tmp_path, ModelKind.CELL_NUCLEUS))
    with pytest.raises(ConfigError, match="whole slices"):
        segment_array(da.from_array(volume, chunks=(4, 32, 80)), seg, _stats(volume))


def test_reference_api_shapes_and_model(tmp_path, volume):
    seg = create_segmenter("sxt", task="cell", device="cpu").load_model(
        _checkpoint(tmp_path, ModelKind.CELL_NUCLEUS))
    assert isinstance(seg.model, torch.nn.Module) and not seg.model.training
    out = seg.predict(volume)
    assert set(out) == {"cell_mask", "nucleus_mask"}
    assert out["cell_mask"].shape == volume.shape
    assert not (out["nucleus_mask"] & ~out["cell_mask"]).any()
    isg = create_segmenter("sxt", task="isg", device="cpu").load_model(_checkpoint(tmp_path, ModelKind.ISG))
    mask = isg.predict(volume)
    assert mask.shape == volume.shape and set(np.unique(mask)) <= {0, 1}


def test_top_level_create_segmenter_is_the_reference_style_api():
    import sxtdask

    seg = sxtdask.create_segmenter(modality="sxt", task="isg")
    assert isinstance(seg, UNetSegmenter) and seg.task is Task.ISG
    with pytest.raises(ConfigError, match="not one of"):
        sxtdask.create_segmenter(modality="sxt", task="golgi")


def test_without_a_checkpoint_the_error_says_how_to_pass_one(tmp_path, monkeypatch):
    import sxtdask.models._bundled as bundled

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)  # an installation without the weights
    with pytest.raises(SxtdaskError, match=r"load_model\(PATH\)"):
        UNetSegmenter(task=Task.MITO).load_model()
    with pytest.raises(ConfigError, match="load_model"):
        UNetSegmenter(task=Task.MITO).model  # noqa: B018 (no silent fallback to any weights)
    with pytest.raises(SxtdaskError, match="no such checkpoint"):
        UNetSegmenter(task=Task.MITO, model_path="/nonexistent/mito.pth")


def test_model_is_built_once_per_process(tmp_path, volume):
    path = _checkpoint(tmp_path, ModelKind.ISG, seed=7)
    seg = UNetSegmenter(task=Task.ISG, device="cpu").load_model(path)
    before = sum(v for k, v in load_counts().items() if str(path) in k)
    stats = _stats(volume)
    out = segment_array(da.from_array(volume, chunks=(2, 64, 80)), seg, stats)
    dask.compute(out, scheduler="threads")
    after = sum(v for k, v in load_counts().items() if str(path) in k)
    # load_model checks the file without building the network (the client never holds it);
    # six chunks, then, make exactly one build in this process.
    assert before == 0 and after == 1


def test_cli_segment_cell_with_a_checkpoint(tmp_path, volume):
    path = _checkpoint(tmp_path, ModelKind.CELL_NUCLEUS)
    data = write_image(volume, tmp_path / "v.zarr", chunks=(4, 64, 80))
    report = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sxtdask.cli", "-q", "segment", str(data), "--task", "cell",
         "--model", str(path), "--device", "cpu", "--batch-size", "2", "--workers", "1",
         "--dashboard-address", ":0", "--report", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    labels = open_labels(data, "cell").compute()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    rep = json.loads(report.read_text())
    assert rep["chunk_count"] == 3 and rep["models"] == [str(path)]
    loads = [sum(v.values()) for v in rep["model_loads_per_worker"].values()]
    assert loads == [1]


def test_cli_several_tasks_share_one_read_of_each_chunk(tmp_path, volume):
    cell = _checkpoint(tmp_path, ModelKind.CELL_NUCLEUS)
    isg = _checkpoint(tmp_path, ModelKind.ISG)
    data = write_image(volume, tmp_path / "m.zarr", chunks=(6, 64, 80))
    report = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sxtdask.cli", "-q", "segment", str(data), "--task",
         "cell,isg,isg-instances", "--model", f"cell={cell}", "--model", f"isg={isg}",
         "--device", "cpu", "--workers", "1", "--dashboard-address", ":0", "--report", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    assert rep["tasks"] == ["cell", "isg", "isg-instances"]
    assert rep["methods"] == ["UNetSegmenter", "UNetSegmenter", "UNetISGInstances"]  # default: U-Net
    for name in ("cell", "isg-mask", "isg"):
        assert open_labels(data, name).shape == volume.shape
    # The ISG mask equals the single-task run's: sharing the read changes nothing.
    alone = UNetSegmenter(task=Task.ISG, device="cpu").load_model(isg).predict(volume)
    np.testing.assert_array_equal(open_labels(data, "isg-mask").compute(), alone)


def test_cli_model_needs_a_task_when_several(tmp_path, volume):
    data = write_image(volume, tmp_path / "n.zarr", chunks=(6, 64, 80))
    proc = subprocess.run(
        [sys.executable, "-m", "sxtdask.cli", "segment", str(data), "--task", "cell,mito",
         "--model", str(tmp_path / "x.pth")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "TASK=PATH" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_agrees_with_cpu(tmp_path, volume):
    path = _checkpoint(tmp_path, ModelKind.CELL_NUCLEUS)
    cpu = UNetSegmenter(task=Task.CELL, device="cpu").load_model(path).predict(volume)
    gpu = UNetSegmenter(task=Task.CELL, device="cuda", batch_size=8).load_model(path).predict(volume)
    agree = (cpu["cell_mask"] == gpu["cell_mask"]).mean()
    assert agree > 0.99  # bf16 autocast may flip near-ties only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_size_invariance(tmp_path, volume):
    path = _checkpoint(tmp_path, ModelKind.ISG)
    stats = _stats(volume)
    p1 = UNetSegmenter(task=Task.ISG, device="cuda", batch_size=1).load_model(path).probabilities(
        volume, stats)
    p8 = UNetSegmenter(task=Task.ISG, device="cuda", batch_size=8).load_model(path).probabilities(
        volume, stats)
    assert np.mean(np.abs(p1 - p8) < 1e-2) > 0.999
