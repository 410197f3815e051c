"""Tests of U-Net training (``sxtdask.train``, ``sxtdask train``), on CPU with narrow networks.

The data are tiny: bright disks in noise written as OME-Zarr stores (image + ``labels/``), pairs of
image and label files, and 24×64×64 phantoms from ``write_phantom`` for the command line. The
checks: the loop learns; the checkpoint rebuilds the trained network with its preprocessing; runs
repeat with a seed and an interrupted run resumes to the same weights; samples are read one slice
at a time; tomograms never straddle the split; the CLI's checkpoint is accepted by ``segment`` and
its user errors are one line with exit status 2.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import sxtdask.models as models_pkg
from sxtdask.errors import ConfigError, InputError, OutputError, SxtdaskError
from sxtdask.io import open_image, open_labels, write_image, write_labels
from sxtdask.models import read_checkpoint_meta
from sxtdask.models._checkpoint import read_checkpoint
from sxtdask.segmenters import Task
from sxtdask.segmenters._unet import UNetSegmenter, prepare_slices
from sxtdask.stats import IntensityStats
from sxtdask.train import (
    PatchSampler,
    TrainingVolume,
    UNetTrainConfig,
    open_training_data,
    split_by_tomogram,
    target_from_labels,
    train_unet,
)
from sxtdask.train._common import state_path
from sxtdask.train._data import validation_slices

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
ENV["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
ENV["COLUMNS"] = "200"
ENV.pop("PYTHONWARNINGS", None)
ENV["OMP_NUM_THREADS"] = "1"  # a shared two-core machine: torch's spinning threads only slow it

#: A few steps of a width-4 network on 32×32 patches: about a second on one CPU core.
TINY = UNetTrainConfig(width=4, epochs=2, steps_per_epoch=2, batch_size=2, patch=32,
                       val_slices=2, device="cpu")


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: these networks are tiny, and on a busy machine torch's thread pool
    spins for longer than the work takes.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def disks(shape: tuple[int, int, int], seed: int, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks (instance labels 1..n, straight through z) in Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    for k in range(1, n + 1):
        cy, cx = rng.integers(6, shape[1] - 6), rng.integers(6, shape[2] - 6)
        r = rng.uniform(3, 6)
        labels[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    image = (labels > 0).astype(np.float32) + rng.normal(0, 0.3, shape).astype(np.float32)
    return image, labels


def disk_store(folder: Path, seed: int, label_name: str = "isg",
               shape: tuple[int, int, int] = (8, 64, 64)) -> Path:
    image, labels = disks(shape, seed)
    path = write_image(image, folder / f"disks{seed}.zarr")
    write_labels(path, label_name, labels)
    return path


@pytest.fixture(scope="module")
def disk_data(tmp_path_factory) -> list[Path]:
    """Three disk tomograms as OME-Zarr stores with ``labels/isg`` and ``labels/mito``."""
    folder = tmp_path_factory.mktemp("disks")
    paths = []
    for seed in range(3):
        path = disk_store(folder, seed)
        write_labels(path, "mito", np.asarray(open_labels(path, "isg")))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def trained(disk_data, tmp_path_factory) -> dict[str, Any]:
    """An ISG U-Net trained for 32 steps on two disk tomograms, validated on the third; the
    network object as it was when its checkpoint was written is kept too.
    """
    out = tmp_path_factory.mktemp("trained") / "isg.pt"
    volumes = open_training_data(disk_data, "isg")
    train, val = volumes[:2], volumes[2:]
    # lr 1e-2: at width 4, 5 of 6 seeds end at validation Dice 0.94-0.97 (one collapses to
    # background); at the default 3e-3 only 4 of 6 learn in 32 steps.
    config = UNetTrainConfig(width=4, epochs=4, steps_per_epoch=8, batch_size=4, patch=32,
                             lr=1e-2, val_slices=4, device="cpu", seed=0)
    saved: list[torch.nn.Module] = []
    real_save = models_pkg.save_checkpoint

    def save_and_keep(path, net, meta=None):
        saved.append(copy.deepcopy(net).cpu().eval())
        return real_save(path, net, meta)

    mp = pytest.MonkeyPatch()
    mp.setattr(models_pkg, "save_checkpoint", save_and_keep)
    try:
        result = train_unet("isg", train, val, out, config)
    finally:
        mp.undo()
    return {"result": result, "path": out, "net": saved[-1], "val": val, "config": config}


def fake_volume(name: str, shape: tuple[int, int, int] = (4, 8, 8)) -> TrainingVolume:
    stats = IntensityStats(min=0.0, max=1.0, mean=0.5, std=0.1, p_low=0.0, p_high=1.0,
                           n_voxels=int(np.prod(shape)))
    return TrainingVolume(name, np.zeros(shape), np.zeros(shape, np.uint8), stats,
                          (1.0, 1.0, 1.0))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2 * np.sum(pred & truth) / (np.sum(pred) + np.sum(truth))


# --------------------------------------------------------------------------- the loop learns


def test_training_learns_disks_in_noise(trained, disk_data):
    history = trained["result"].history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    # The trivial answer (everything is a disk) scores 2f/(1+f) for a foreground share f.
    truth = np.asarray(open_labels(disk_data[2], "isg")) > 0
    f = truth.mean()
    assert 2 * f / (1 + f) < 0.5
    assert history[-1]["val_dice"] > 0.8
    assert history[-1]["val_dice"] > history[0]["val_dice"]
    assert history[-1]["loss"] < history[0]["loss"]
    best = max(history, key=lambda h: h["val_dice"])
    assert trained["result"].best == best
    meta = read_checkpoint_meta(trained["path"])
    assert meta["epoch"] == best["epoch"] and meta["metrics"] == best
    assert not state_path(trained["path"]).exists()  # the resume file goes once training ends


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_learns_and_its_checkpoint_loads_on_cpu(disk_data, tmp_path):
    """bfloat16 autocast on CUDA learns as well, and the checkpoint holds CPU float32 tensors."""
    volumes = open_training_data(disk_data, "isg")
    out = tmp_path / "cuda.pt"
    config = UNetTrainConfig(width=4, epochs=4, steps_per_epoch=8, batch_size=4, patch=32,
                             val_slices=4, device="cuda")
    result = train_unet("isg", volumes[:2], volumes[2:], out, config)
    assert result.history[-1]["val_dice"] > 0.8
    assert all(t.device.type == "cpu" and t.dtype != torch.bfloat16
               for t in weights(out).values())
    seg = UNetSegmenter(task=Task.ISG, device="cpu").load_model(out)
    inter = total = 0
    for image, labels, stats in validation_slices(volumes[2:], config.val_slices):
        pred = seg.segment_block(image[None], stats, (1.0, 1.0, 1.0))["isg-mask"][0] > 0
        truth = target_from_labels("isg", labels) > 0
        inter += np.sum(pred & truth)
        total += np.sum(pred) + np.sum(truth)
    assert 2 * inter / total == pytest.approx(read_checkpoint_meta(out)["metrics"]["val_dice"],
                                              abs=0.02)  # CPU float32 vs CUDA


# --------------------------------------------------------------------------- the checkpoint


def test_checkpoint_meta_rebuilds_the_network(trained):
    meta = read_checkpoint_meta(trained["path"])
    assert meta["task"] == "isg" and meta["kind"] == "isg"
    assert meta["width"] == 4 and meta["in_channels"] == 1 and meta["n_classes"] == 2
    assert meta["preprocessing"]["name"] == "percentile"
    assert meta["train_data"] == ["disks0.zarr", "disks1.zarr"]
    assert meta["val_data"] == ["disks2.zarr"]
    json.dumps(meta)  # JSON-able, as the format promises


def test_segmenter_reproduces_the_trained_network(trained):
    seg = UNetSegmenter(task=Task.ISG, device="cpu").load_model(trained["path"])
    assert seg.preprocessing == "percentile"
    vol = trained["val"][0]
    block = np.asarray(vol.image[:]).astype(np.float32)
    x = prepare_slices(block, vol.stats, task=Task.ISG, preprocessing="percentile", in_channels=1)
    with torch.inference_mode():
        expected = trained["net"](torch.from_numpy(x)).softmax(dim=1).numpy()
    prob = seg.probabilities(block, vol.stats)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    # The reference preprocessing would give another answer: the metadata matters.
    ref = UNetSegmenter(task=Task.ISG, device="cpu", model_path=str(trained["path"]))
    assert np.abs(ref.probabilities(block, vol.stats) - expected).max() > 0.05


def test_segmenter_scores_the_recorded_validation_dice(trained):
    """The segmenter's masks on the validation slices give the Dice the trainer recorded
    (scored against the training target: granule interiors without touching rims).
    """
    seg = UNetSegmenter(task=Task.ISG, device="cpu").load_model(trained["path"])
    inter = total = 0
    for image, labels, stats in validation_slices(trained["val"], trained["config"].val_slices):
        pred = seg.segment_block(image[None], stats, (1.0, 1.0, 1.0))["isg-mask"][0] > 0
        truth = target_from_labels("isg", labels) > 0
        inter += np.sum(pred & truth)
        total += np.sum(pred) + np.sum(truth)
    meta = read_checkpoint_meta(trained["path"])
    assert 2 * inter / total == pytest.approx(meta["metrics"]["val_dice"], abs=1e-9)


def test_checkpoint_of_another_task_is_refused(disk_data, tmp_path):
    out = tmp_path / "mito.pt"
    volumes = open_training_data(disk_data[:1], "mito")
    config = UNetTrainConfig(width=4, epochs=1, steps_per_epoch=1, batch_size=1, patch=32,
                             device="cpu")
    train_unet("mito", volumes, [], out, config)
    meta = read_checkpoint_meta(out)
    assert meta["task"] == "mito" and meta["in_channels"] == 3 and meta["width"] == 4
    assert UNetSegmenter(task=Task.MITO, device="cpu").load_model(out).preprocessing == "percentile"
    with pytest.raises(SxtdaskError, match="trained for task 'mito'"):
        UNetSegmenter(task=Task.ISG, device="cpu").load_model(out)


def test_reference_state_dict_gets_reference_preprocessing(tmp_path):
    from sxtdask.models import ModelKind, build_unet

    path = tmp_path / "isg_unet_best.pth"
    torch.save(build_unet(ModelKind.ISG, width=4).state_dict(), path)
    assert read_checkpoint_meta(path) is None
    seg = UNetSegmenter(task=Task.ISG, device="cpu").load_model(path)
    assert seg.preprocessing == "reference"


# --------------------------------------------------------------------------- seeds and resume


def test_seed_makes_runs_repeatable(disk_data, tmp_path):
    train, val = open_training_data(disk_data[:2], "isg")[:1], []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train_unet("isg", train, val, tmp_path / f"{name}.pt",
                   replace(TINY, seed=seed))
    assert same_weights(tmp_path / "a.pt", tmp_path / "b.pt")
    assert not same_weights(tmp_path / "a.pt", tmp_path / "c.pt")


def test_resume_after_interruption_equals_an_uninterrupted_run(disk_data, tmp_path):
    volumes = open_training_data(disk_data, "isg")
    train, val = volumes[:2], []  # no validation: the checkpoint is the last epoch's network
    config = replace(TINY, epochs=3)
    whole = train_unet("isg", train, val, tmp_path / "whole.pt", config)

    def interrupt(epoch: int, step: int, steps: int, info: dict[str, float]) -> None:
        if epoch == 2 and step == 1 and "loss" in info:
            raise KeyboardInterrupt

    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        train_unet("isg", train, val, out, config, progress=interrupt)
    assert state_path(out).is_file()
    assert read_checkpoint_meta(out)["epoch"] == 1
    with pytest.raises(OutputError, match="resume=True"):
        train_unet("isg", train, val, out, config)  # neither resume nor overwrite: refused
    resumed = train_unet("isg", train, val, out, config, resume=True)
    assert read_checkpoint_meta(out)["epoch"] == 3
    assert same_weights(out, tmp_path / "whole.pt")
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history]
    assert not state_path(out).exists()


def test_resume_with_another_configuration_is_refused(disk_data, tmp_path):
    train = open_training_data(disk_data[:1], "isg")
    out = tmp_path / "m.pt"

    def interrupt(epoch: int, step: int, steps: int, info: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_unet("isg", train, [], out, TINY, progress=interrupt)
    before = state_path(out).read_bytes()
    other = replace(TINY, lr=TINY.lr / 2)
    with pytest.raises(ConfigError, match="another configuration"):
        train_unet("isg", train, [], out, other, resume=True)
    with pytest.raises(ConfigError, match="another configuration"):
        train_unet("mito", open_training_data(disk_data[:1], "mito"), [], out, TINY, resume=True)
    assert state_path(out).read_bytes() == before  # still resumable with the right options
    with pytest.raises(InputError, match="nothing to resume"):
        train_unet("isg", train, [], tmp_path / "never.pt", TINY, resume=True)


# --------------------------------------------------------------------------- lazy data


class Recorder:
    """An array that records the keys it is indexed with."""

    def __init__(self, array: Any) -> None:
        self.array, self.keys = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getattr__(self, name: str) -> Any:  # chunks and the like, as the array has them
        return getattr(self.__dict__["array"], name)

    def __getitem__(self, key: Any) -> np.ndarray:
        self.keys.append(key)
        return np.asarray(self.array[key])


def _region(key: Any, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Extent (z, y, x) of the region a basic-indexing key selects."""
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    sizes = []
    for k, n in zip(key, shape, strict=True):
        sizes.append(1 if isinstance(k, int | np.integer) else len(range(*k.indices(n))))
    return tuple(sizes)  # type: ignore[return-value]


def test_sampler_reads_one_slice_region_per_sample(disk_data):
    vol = open_training_data(disk_data[:1], "isg")[0]
    vol.foreground_per_slice()  # the one whole-volume pass (chunk by chunk), done up front
    vol.image, vol.labels = Recorder(vol.image), Recorder(vol.labels)
    sampler = PatchSampler([vol], 32, np.random.default_rng(0))
    for _ in range(40):
        image, labels, stats = sampler.sample()
        assert image.shape == labels.shape == (32, 32) and stats is vol.stats
        # Image and labels come from the same place: the disks are bright.
        assert image[labels > 0].mean() > image[labels == 0].mean() + 0.5
    keys = vol.image.keys + vol.labels.keys
    assert len(vol.image.keys) == 40 and 40 <= len(vol.labels.keys) <= 80
    for key in keys:
        z, _, _ = _region(key, vol.shape)
        assert isinstance(key, int) or isinstance(key[0], int), key
        assert z == 1
    assert all(_region(k, vol.shape)[1:] == (32, 32) for k in vol.image.keys)
    # Validation reads whole slices, one at a time.
    vol.image.keys.clear()
    slices = validation_slices([vol], 3)
    assert len(slices) == 3 and all(im.shape == vol.shape[1:] for im, _, _ in slices)
    assert all(_region(k, vol.shape)[0] == 1 for k in vol.image.keys) and len(vol.image.keys) == 3


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), fraction=st.floats(0, 0.95), seed=st.integers(0, 2**32))
def test_split_by_tomogram_keeps_each_tomogram_on_one_side(n, fraction, seed):
    volumes = [fake_volume(f"t{i}") for i in range(n)]
    train, val = split_by_tomogram(volumes, fraction, seed)
    ids = {id(v) for v in train}
    assert ids.isdisjoint(id(v) for v in val)
    assert sorted(v.name for v in train + val) == sorted(v.name for v in volumes)
    assert train  # something always trains
    if n >= 2 and fraction > 0:
        assert val
    assert split_by_tomogram(volumes, fraction, seed) == (train, val)


def test_split_refuses_a_fraction_out_of_range():
    with pytest.raises(ConfigError, match="validation fraction"):
        split_by_tomogram([fake_volume("a"), fake_volume("b")], 1.0, 0)


@pytest.mark.parametrize("fmt", ["npy", "tif", "mrc"])
def test_image_label_pairs(tmp_path, fmt):
    import mrcfile
    import tifffile

    image, labels = disks((6, 40, 48), seed=5)
    paths = [tmp_path / f"img.{fmt}", tmp_path / f"lab.{fmt}"]
    for path, data in zip(paths, (image, labels.astype(np.int16)), strict=True):
        if fmt == "npy":
            np.save(path, data)
        elif fmt == "tif":
            tifffile.imwrite(path, data)
        else:
            with mrcfile.new(path) as mrc:
                mrc.set_data(data)
                mrc.voxel_size = 100.0
    (vol,) = open_training_data([f"{paths[0]},{paths[1]}"], "isg")
    assert vol.shape == image.shape and vol.name == f"img.{fmt}"
    assert vol.stats.min == pytest.approx(image.min()) and vol.stats.max == pytest.approx(image.max())
    np.testing.assert_array_equal(vol.foreground_per_slice(), (labels > 0).sum(axis=(1, 2)))
    sampler = PatchSampler([vol], 32, np.random.default_rng(1))
    for _ in range(10):
        patch, lab, _ = sampler.sample()
        assert patch.shape == lab.shape == (32, 32)
        assert patch[lab > 0].mean() > patch[lab == 0].mean() + 0.5


def test_pairs_of_different_shapes_are_refused(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((4, 16, 16), np.float32))
    np.save(tmp_path / "lab.npy", np.zeros((4, 16, 8), np.uint8))
    with pytest.raises(InputError, match="differ in shape"):
        open_training_data([f"{tmp_path / 'img.npy'},{tmp_path / 'lab.npy'}"], "isg")


def test_same_named_tomograms_in_different_folders_are_told_apart(tmp_path):
    paths = []
    for _seed, folder in ((1, "cell01"), (2, "cell02")):
        (tmp_path / folder).mkdir()
        paths.append(disk_store(tmp_path / folder, 0, shape=(2, 32, 32)).rename(
            tmp_path / folder / "tomo.zarr"))
    volumes = open_training_data(paths, "isg")
    assert [v.name for v in volumes] == ["cell01/tomo.zarr", "cell02/tomo.zarr"]
    again = tmp_path / "cell02" / ".." / "cell01" / "tomo.zarr"
    with pytest.raises(InputError, match="the same tomogram is given twice"):
        open_training_data([paths[0], again], "isg")


def test_slab_cache_reads_whole_chunks_once_and_answers_like_the_array(tmp_path):
    from sxtdask.train._data import SlabCache, _zarr_of

    image, _ = disks((10, 16, 16), seed=3)
    path = write_image(image, tmp_path / "s.zarr", chunks=(4, 16, 16))
    rec = Recorder(_zarr_of(open_image(path).data))
    cache = SlabCache(rec, max_slabs=2)
    for z in (0, 3, 1, 9, 8, -1, 5, 0):
        np.testing.assert_array_equal(cache[z, 2:7, 3:9], image[z, 2:7, 3:9])
    # Chunk-aligned slabs one chunk deep, each decoded once while cached; at most two are kept,
    # so slab 0 is read again after slabs 2 and 1.
    assert [(k.start, k.stop) for k in rec.keys] == [(0, 4), (8, 12), (4, 8), (0, 4)]


def test_store_without_the_label_image_is_refused(disk_data):
    with pytest.raises(InputError, match="no label image 'cell'"):
        open_training_data(disk_data[:1], "cell")


# --------------------------------------------------------------------------- targets


def test_isg_target_keeps_touching_granules_apart():
    labels = np.zeros((24, 24), np.uint16)
    labels[4:12, 4:12] = 1
    labels[4:12, 12:20] = 2  # touches granule 1 along a whole side
    labels[16:22, 2:8] = 3  # alone
    target = target_from_labels("isg", labels)
    assert set(np.unique(target)) == {0, 1}
    comps, n = ndimage.label(target, structure=np.ones((3, 3)))
    assert n == 3
    for k in (1, 2, 3):  # each component lies inside one granule
        assert len(np.unique(labels[comps == k])) == 1
    np.testing.assert_array_equal(target[16:22, 2:8], 1)  # a lone granule keeps all of it
    assert target[labels == 1].sum() > 0.5 * (labels == 1).sum()
    assert np.array_equal(target_from_labels("mito", labels), (labels > 0).astype(np.int64))


# --------------------------------------------------------------------------- command line


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sxtdask.cli", *(str(a) for a in args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from sxtdask.phantoms import write_phantom

    folder = tmp_path_factory.mktemp("phantoms")
    for seed in (1, 2, 3):
        write_phantom(folder / f"p{seed}.mrc", shape=(24, 64, 64), seed=seed)
    return folder


def test_cli_trains_a_checkpoint_that_segment_accepts(phantoms, tmp_path):
    model = tmp_path / "m.pt"
    proc = run_cli("train", "--task", "isg", "--data", phantoms / "p1.gt.zarr",
                   phantoms / "p2.gt.zarr", "--out", model, "--width", "4", "--epochs", "1",
                   "--steps-per-epoch", "2", "--patch", "32", "--batch-size", "2",
                   "--device", "cpu", "--json-log", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["checkpoint"] == str(model)
    assert len(summary["history"]) == 1
    bars = [e for e in events if e.get("stage") == "epoch 1/1" and e["event"] == "progress"]
    assert [e["done"] for e in bars] == [1, 2]  # one bar over the epoch's optimiser steps
    (line,) = [e for e in events if e["event"] == "message" and e.get("epoch") == 1]
    assert {"loss", "val_dice", "val_dice_isg"} <= line.keys()  # loss and validation metrics
    meta = read_checkpoint_meta(model)
    assert meta["task"] == "isg" and meta["width"] == 4
    assert sorted(meta["train_data"] + meta["val_data"]) == ["p1.gt.zarr", "p2.gt.zarr"]
    assert len(meta["val_data"]) == 1  # split by tomogram

    image = open_image(phantoms / "p3.gt.zarr").data.compute()
    data = write_image(image, tmp_path / "x.zarr")
    report = tmp_path / "run.json"
    proc = run_cli("-q", "segment", data, "--task", "isg", "--model", model, "--device", "cpu",
                   "--workers", "1", "--dashboard-address", "127.0.0.1:0", "--report", report,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["models"] == [str(model)]
    mask = open_labels(data, "isg-mask").compute()
    expected = UNetSegmenter(task=Task.ISG, device="cpu").load_model(model).predict(image)
    np.testing.assert_array_equal(mask, expected)


def main_in_process(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``sxtdask ARGV`` through the CLI's entry point in this process (no interpreter start-up),
    with the logging and warning settings it makes undone afterwards.
    """
    from sxtdask.cli import main

    log = logging.getLogger("sxtdask")
    saved = (log.handlers[:], log.level, log.propagate)
    capsys.readouterr()
    try:
        with warnings.catch_warnings():
            status = main([str(a) for a in argv])
    finally:
        log.handlers[:] = saved[0]
        log.setLevel(saved[1])
        log.propagate = saved[2]
    return status, capsys.readouterr().err


def test_cli_errors_are_one_line_with_exit_2(phantoms, tmp_path, capsys):
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"not to be clobbered")
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((4, 32, 32), np.float32))
    np.save(tmp_path / "lab.npy", np.zeros((4, 32, 16), np.uint8))
    store = disk_store(tmp_path, 7, label_name="mito")  # no labels/isg
    small = ("--width", "4", "--epochs", "1", "--steps-per-epoch", "1", "--patch", "32",
             "--device", "cpu")
    gt = phantoms / "p1.gt.zarr"
    outs = [tmp_path / n for n in ("fresh.pt", "a.pt", "b.pt", "c.pt", "d.pt")]
    cases = [
        (["--data", gt, "--out", taken], "taken.pt exists; pass --overwrite"),
        (["--data", gt, "--out", outs[0], "--resume"], "nothing to resume"),
        (["--data", tmp_path / "nope.gt.zarr", "--out", outs[1]], "nope.gt.zarr: no such"),
        (["--data", store, "--out", outs[2]], "no label image 'isg'"),
        (["--data", f"{tmp_path / 'img.npy'},{tmp_path / 'lab.npy'}", "--out", outs[3]],
         "differ in shape"),
        (["--data", gt, phantoms / "p2.gt.zarr", "--val-data", phantoms / "." / "p1.gt.zarr",
          "--out", outs[4]], "both as --data and as --val-data"),
    ]
    for args, message in cases:
        status, err = main_in_process(["train", "--task", "isg", *args, *small], capsys)
        lines = err.strip().splitlines()
        assert status == 2, err
        assert len(lines) == 1 and lines[0].startswith("sxtdask: error: "), err
        assert message in lines[0], lines[0]
    assert taken.read_bytes() == b"not to be clobbered"
    assert not any(p.exists() or state_path(p).exists() for p in outs)


@pytest.mark.parametrize("jitter, lo, hi", [("mild", 0.75, 1.25), ("strong", 0.4, 2.5)])
def test_intensity_jitter_spans_its_contrast_range(jitter: str, lo: float, hi: float) -> None:
    """Strong jitter moves contrast far beyond the mild range (a capillary wall or vacuum moves a
    tomogram's percentiles that much); labels move with the image either way.
    """
    from sxtdask.train._unet import _augment

    rng = np.random.default_rng(0)
    x = np.zeros((1, 8, 8), dtype=np.float32)
    x[0, :, 4:] = 1.0
    y = (x[0] > 0.5).astype(np.int64)
    gains = []
    for _ in range(400):
        xa, ya = _augment(x.copy(), y.copy(), rng, jitter)
        hi_mean, lo_mean = xa[0][ya == 1].mean(), xa[0][ya == 0].mean()
        gains.append(hi_mean - lo_mean)  # the step's height, noise averaged out
    gains = np.asarray(gains)
    # added noise (σ ≤ 0.15 per pixel, 32 pixels a side) moves a step by a few hundredths
    assert gains.min() >= lo - 0.12 and gains.max() <= hi + 0.12
    assert gains.min() <= lo + 0.1 and gains.max() >= hi - 0.25


def test_unknown_intensity_jitter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="jitter"):
        UNetTrainConfig(jitter="huge")
