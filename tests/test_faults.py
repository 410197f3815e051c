"""Faults: a worker killed mid-run, and GPU out-of-memory (split batches, CPU fallback)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from slow_blocks import SlowISG, count_calls

from sxtdask.engine import segment_store
from sxtdask.engine._run import SCRATCH_DIR
from sxtdask.io import open_labels, write_image
from sxtdask.phantoms import make_phantom
from sxtdask.segmenters import ClassicalISG
from sxtdask.stats import global_stats

torch = pytest.importorskip("torch")

from sxtdask.segmenters import _oom
from sxtdask.segmenters._oom import DeviceMemoryWarning, forward_batches

# --------------------------------------------------------------------------- a worker dies


def _store_run(path: Path, seg, **kw):
    stats = global_stats(da.from_zarr(str(path / "0"))).compute(scheduler="sync")
    return segment_store(path, seg, stats, chunks=(8, 32, 32), **kw)


def _label_files(path: Path) -> dict[str, bytes]:
    root = path / "labels"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_killing_a_worker_mid_run_gives_the_undisturbed_labels(tmp_path, client):
    image = make_phantom((32, 64, 64), seed=3).image
    ref = write_image(image, tmp_path / "ref.zarr", chunks=(8, 64, 64))
    run = _store_run(ref, ClassicalISG())
    ref_counts = run.graph.compute(scheduler="sync")
    run.finish()

    path = write_image(image, tmp_path / "a.zarr", chunks=(8, 64, 64))
    calls = tmp_path / "calls"
    calls.mkdir()
    run = _store_run(path, SlowISG(delay=0.3, calls=str(calls)))
    assert run.chunks_total == 16
    records = path / SCRATCH_DIR / "done" / "segment"
    before = set(client.run(os.getpid).values())
    future = client.compute(run.graph)
    t0 = time.monotonic()
    while len(list(records.glob("*.npz"))) < 3:
        assert time.monotonic() - t0 < 60 and not future.done(), "no progress to interrupt"
        time.sleep(0.01)
    victim = next(iter(before))
    os.kill(victim, signal.SIGKILL)  # a real worker process, in the middle of its blocks
    done_at_kill = len(list(records.glob("*.npz")))
    counts = future.result(timeout=120)
    run.finish()
    assert done_at_kill < 16 and victim not in set(client.run(os.getpid).values())
    assert counts == ref_counts
    np.testing.assert_array_equal(open_labels(path, "isg").compute(),
                                  open_labels(ref, "isg").compute())
    assert _label_files(path) == _label_files(ref)
    # Blocks whose record was written are never segmented again (a rerun task loads the record):
    # at most the blocks in flight on the dead worker (one thread) start twice.
    assert 16 <= count_calls(calls) <= 17


# --------------------------------------------------------------------------- GPU out of memory


@pytest.fixture()
def fresh_warning(monkeypatch):
    """Forget that this process already warned (the warning comes once per process)."""
    monkeypatch.setattr(_oom, "_warned", threading.Event())


class FakeNet:
    """A 'network' that runs out of memory above ``limit`` items (on a fake CUDA device, or on
    any device).
    """

    def __init__(self, limit: int, error: type[Exception] = torch.cuda.OutOfMemoryError,
                 anywhere: bool = False):
        self.limit, self.error, self.anywhere, self.calls = limit, error, anywhere, []

    def __call__(self, batch, device: str) -> list[np.ndarray]:
        self.calls.append((len(batch), device))
        if (self.anywhere or device.startswith("cuda")) and len(batch) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        x = torch.from_numpy(np.stack(batch))
        return list(torch.tanh(x * 3.0 + 0.5).numpy())


def _items(n: int) -> list[np.ndarray]:
    return list(np.random.default_rng(0).normal(size=(n, 5, 7)).astype(np.float32))


def test_out_of_memory_halves_the_batch_and_the_answer_does_not_change(fresh_warning, caplog):
    items = _items(11)
    whole = FakeNet(limit=100)(items, "cpu")
    net = FakeNet(limit=2)
    with pytest.warns(DeviceMemoryWarning), caplog.at_level(logging.WARNING, "sxtdask"):
        got = forward_batches(net, items, 8, device="cuda")
    np.testing.assert_array_equal(np.stack(got), np.stack(whole))
    assert [n for n, _ in net.calls] == [8, 4, 2, 2, 2, 2, 2, 1]  # kept at 2 once it fits
    assert {d for _, d in net.calls} == {"cuda"}
    steps = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert steps == [
        "out of GPU memory on cuda with a batch of 8: retrying with batches of 4",
        "out of GPU memory on cuda with a batch of 4: retrying with batches of 2",
    ]


def test_out_of_memory_with_one_item_runs_the_chunk_on_the_cpu(fresh_warning, caplog):
    items = _items(5)
    net = FakeNet(limit=0, error=RuntimeError)  # "CUDA out of memory" as a plain RuntimeError
    with pytest.warns(DeviceMemoryWarning), caplog.at_level(logging.WARNING, "sxtdask"):
        got = forward_batches(net, items, 4, device="cuda:0")
    np.testing.assert_array_equal(np.stack(got), np.stack(FakeNet(100)(items, "cpu")))
    assert net.calls == [(4, "cuda:0"), (2, "cuda:0"), (1, "cuda:0"), (4, "cpu"), (1, "cpu")]
    assert "running this chunk's 5 items on the CPU" in caplog.text


def test_the_warning_comes_once_per_process_the_log_every_time(fresh_warning, caplog):
    with pytest.warns(DeviceMemoryWarning) as first:
        forward_batches(FakeNet(limit=1), _items(4), 2, device="cuda")
    import warnings

    with warnings.catch_warnings(record=True) as second, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        forward_batches(FakeNet(limit=1), _items(4), 2, device="cuda")
    assert len(first) == 1 and not [w for w in second if w.category is DeviceMemoryWarning]
    assert "retrying with batches of 1" in caplog.text


def test_what_cannot_be_helped_is_raised_never_hidden(fresh_warning):
    with pytest.raises(torch.cuda.OutOfMemoryError), pytest.warns(DeviceMemoryWarning):
        forward_batches(FakeNet(limit=0), _items(3), 2, device="cuda", move_to_cpu=False)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # on the CPU: nowhere to fall back
        forward_batches(FakeNet(limit=0, anywhere=True), _items(3), 2, device="cpu")

    def broken(batch, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        forward_batches(broken, _items(3), 2, device="cuda")
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        forward_batches(lambda batch, device: batch[:1], _items(3), 2, device="cpu")


def test_mask_rcnn_splits_its_batches_on_out_of_memory(fresh_warning, tmp_path, monkeypatch):
    """The real Mask R-CNN route: a detector that fails above one tile per batch gives the same
    labels as one that takes four.
    """
    from test_maskrcnn import GroundTruthDetector, _balls

    from sxtdask.engine import clear_models
    from sxtdask.segmenters import MaskRCNNISG

    class Limited(GroundTruthDetector):
        def forward(self, images):
            if len(images) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super().forward(images)

    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"unused")
    vol = (_balls((10, 96, 96), 6, seed=2) > 0).astype(np.float32) * 0.03
    seg = MaskRCNNISG(model_path=str(ckpt), device="cpu", batch_size=4, tile=48, overlap=16)
    out = {}
    for name, net in (("whole", GroundTruthDetector), ("split", Limited)):
        clear_models()
        monkeypatch.setattr(MaskRCNNISG, "_build", lambda self, device, net=net: net())
        with pytest.warns(DeviceMemoryWarning) if name == "split" else nullcontext():
            out[name] = seg.segment_block(vol, None, (1.0, 1.0, 1.0))["isg"]
    clear_models()
    assert out["whole"].max() >= 4
    np.testing.assert_array_equal(out["split"], out["whole"])
