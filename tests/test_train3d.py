"""Tests of the 3-D cell trainers (``sxtdask train --arch cascade|unet3d``), on CPU with tiny
networks and volumes.

The checks: the masked losses and the validation Dice ignore whatever the unannotated voxels'
labels say (and do not ignore annotated ones); label maps, ignore labels and AmiraMesh materials
become class targets, and bad labels are one clear error; labels are binned and resized as
documented; a cascade and a Biomedisa U-Net trained for a few steps are read and run by their
segmenters (the cascade's stage 2 learns from the segmenter's own stage-1 probabilities of the
checkpoint's stage 1); runs repeat with a seed and resume to the same weights; the command line
trains end to end and its user errors are one line.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch

from sxtdask.errors import ConfigError, InputError, OutputError
from sxtdask.models import read_checkpoint_meta
from sxtdask.models._checkpoint import read_checkpoint
from sxtdask.phantoms import make_phantom, write_phantom
from sxtdask.segmenters._cascade import CascadeSegmenter
from sxtdask.segmenters._unet3d import UNet3DSegmenter
from sxtdask.stats import global_stats
from sxtdask.train import (
    IGNORE,
    CascadeTrainConfig,
    TrainingVolume,
    UNet3DTrainConfig,
    class_target,
    open_training_data,
    parse_label_map,
    train_cascade,
    train_unet3d,
)
from sxtdask.train._common import state_path
from sxtdask.train._train3d import (
    BlockSampler,
    augment_block,
    bin_mode,
    ce_dice_loss,
    dice_counts,
    dice_metrics,
    masked_cross_entropy,
)
from sxtdask.train._unet3d import resize_target

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "real_sxt"
ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
ENV["COLUMNS"] = "200"
ENV.pop("PYTHONWARNINGS", None)
ENV["OMP_NUM_THREADS"] = "1"

#: A few steps of width-4, depth-2 stages on 16³ blocks: about a second per stage.
TINY = CascadeTrainConfig(depth=2, width=4, block=16, epochs=2, steps_per_epoch=3, batch_size=2,
                          val_blocks=3, lr=1e-3, device="cpu")
#: A 3-level Biomedisa U-Net of 4-8-16 filters on a 64³ grid of 32³ patches (8 per grid).
TINY3D = UNet3DTrainConfig(filters=(4, 8, 16), scale=(64, 64, 64), patch=32, epochs=2,
                           batch_size=4, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def volume(seed: int, shape: tuple[int, int, int] = (32, 48, 48), **labels_kw) -> TrainingVolume:
    """A phantom as a training volume (cell labels 0 exterior, 1 cytoplasm, 2 nucleus)."""
    logging.getLogger("sxtdask.phantoms").setLevel(logging.ERROR)  # "room for only 1 of 4 ISGs"
    p = make_phantom(shape, seed=seed)
    stats = global_stats(da.from_array(p.image)).compute()
    return TrainingVolume(f"p{seed}", p.image, p.cell, stats, (30.0, 30.0, 30.0), **labels_kw)


@pytest.fixture(scope="module")
def vols() -> list[TrainingVolume]:
    return [volume(1), volume(2)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def strip(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# --------------------------------------------------------------------------- masked loss, Dice


def _masked_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 6, 6, 6, generator=g)
    target = torch.randint(0, 3, (2, 6, 6, 6), generator=g)
    known = torch.rand(2, 6, 6, 6, generator=g) < 0.4
    return logits, target, known


@pytest.mark.parametrize("loss", [ce_dice_loss, masked_cross_entropy], ids=["ce+dice", "ce"])
def test_loss_ignores_the_labels_of_unannotated_voxels(loss):
    logits, target, known = _masked_case()
    base = loss(logits, target, known)
    other = torch.where(known, target, (target + 1) % 3)  # every unannotated label changed
    assert torch.equal(loss(logits, other, known), base)
    assert torch.equal(loss(logits, torch.where(known, target, 0), known), base)
    flipped = target.clone()
    k = torch.nonzero(known.flatten())[0].item()
    flipped.view(-1)[k] = (flipped.view(-1)[k] + 1) % 3  # one annotated voxel changed
    assert not torch.allclose(loss(logits, flipped, known), base)
    # the gradient does not reach unannotated voxels either
    x = logits.clone().requires_grad_(True)
    loss(x, target, known).backward()
    assert x.grad is not None and torch.all(x.grad.movedim(1, -1)[~known] == 0)


def test_ce_dice_loss_is_ce_plus_one_minus_the_mean_dice_over_every_class():
    logits, target, _ = _masked_case(1)
    known = torch.ones_like(target, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(logits, target)
    prob = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    dims = (0, 2, 3, 4)
    dice = (2 * (prob * onehot).sum(dims) + 1) / (prob.sum(dims) + onehot.sum(dims) + 1)
    assert torch.allclose(ce_dice_loss(logits, target, known), ce + 1 - dice.mean())


def test_validation_dice_ignores_unannotated_voxels():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (8, 8, 8))
    target = rng.integers(0, 3, (8, 8, 8))
    known = rng.random((8, 8, 8)) < 0.5
    base = dice_metrics(dice_counts(pred, target, known, 3), ("a", "b", "c"))
    changed = np.where(known, target, (target + 1) % 3)
    assert dice_metrics(dice_counts(pred, changed, known, 3), ("a", "b", "c")) == base
    perfect = dice_metrics(dice_counts(np.where(known, target, 0), target, known, 3),
                           ("a", "b", "c"))
    assert perfect["val_dice"] == 1.0 and base["val_dice"] < 0.6
    assert set(base) == {"val_dice_a", "val_dice_b", "val_dice_c", "val_dice_cell", "val_dice"}


# --------------------------------------------------------------------------- labels → classes


def test_label_map_and_ignore_label_make_the_class_target():
    labels = np.array([[[0, 1, 2, 5, 7]]])
    t = class_target(labels, 3, label_map=parse_label_map("0:0,1:1,2:2,5:1,7:ignore", 3))
    assert t.tolist() == [[[0, 1, 2, 1, IGNORE]]]
    t = class_target(np.array([[[0, 1, 2, 2, 9]]]), 3, ignore_label=9)
    assert t.tolist() == [[[0, 1, 2, 2, IGNORE]]]
    # an explicit map entry wins over the ignore label
    t = class_target(np.array([[[0, 1, 4]]]), 3, label_map={0: 0, 1: 1, 4: 2}, ignore_label=4)
    assert t.tolist() == [[[0, 1, 2]]]


def test_unknown_label_values_are_one_error_naming_them():
    ins1e = np.array([[[0, 1, 2, 5]]])  # INS-1E's 0 exterior, 1 cell, 2 nucleus, 5 mitochondria
    with pytest.raises(InputError, match=r"ins1e: label values 5 are not classes of the task "
                                         r"\(0 to 2\); map them with label_map"):
        class_target(ins1e, 3, source="ins1e")
    with pytest.raises(InputError, match="label values 2, 5 are not in the label map"):
        class_target(ins1e, 3, label_map=parse_label_map("0:0,1:1", 3))
    with pytest.raises(InputError, match="no annotated voxel"):
        class_target(np.full((2, 2, 2), 3), 3, ignore_label=3)


@pytest.mark.parametrize("text, message", [
    ("0:0,1", "must be VALUE:CLASS"), ("0:0,x:1", "must be VALUE:CLASS"),
    ("0:0,1:3", "class must be from 0 to 2"), ("0:0,0:1", "maps the value 0 twice"),
    ("-1:0", "non-negative"),
])
def test_bad_label_maps_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_label_map(text, 3)
    with pytest.raises(ConfigError, match=message):
        CascadeTrainConfig(label_map=text)


def test_amira_materials_name_the_ignore_label():
    pair = f"{FIXTURES / 'sample_12.rec'},{FIXTURES / 'sample_12.labels'}"
    (v,) = open_training_data([pair], "cell")
    assert v.materials == {0: "void", 1: "cell", 2: "ignore"}
    from sxtdask.train._train3d import load_labelled

    (lab,) = load_labelled([v], 3)
    raw = np.asarray(v.labels[:])
    assert np.array_equal(lab.target == IGNORE, raw == 2)
    assert np.array_equal(lab.target[raw != 2], raw[raw != 2])
    # --ignore-label overrides the material: then 2 is the nucleus class
    (lab,) = load_labelled([v], 3, ignore_label=0)
    assert np.array_equal(lab.target == IGNORE, raw == 0)
    assert (lab.target == 2).sum() == (raw == 2).sum()


def test_bin_mode_takes_the_majority_of_annotated_voxels():
    t = np.full((4, 4, 6), IGNORE, np.int8)
    t[0, 0, 0], t[0, 1, 1] = 1, 2  # bin (0,0,0): one 1, one 2 -> the lower class on a tie
    t[1, 0, 0] = 2
    t[0:2, 2:4, 0:2] = 1
    t[0, 2, 0] = 2  # bin (0,1,0): seven 1s, one 2
    t[2, :, 2:4] = 0  # bins (1, *, 1): half annotated (a labelled slice) -> 0
    t[:, :, 5] = 2  # bins (*, *, 2) of the odd x size: a one-voxel-wide last bin
    b = bin_mode(t, 2, 3)
    assert b.shape == (2, 2, 3)
    assert b[0, 0, 0] == 2 and b[0, 1, 0] == 1
    assert (b[1, :, 1] == 0).all() and (b[:, :, 2] == 2).all()
    assert b[1, 0, 0] == IGNORE and b[0, 0, 1] == IGNORE


def test_resize_target_inverts_the_predictors_rule_and_keeps_sparse_slices():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 3, (8, 8, 8)).astype(np.int8)
    big = small.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert np.array_equal(resize_target(big, (8, 8, 8), 3), small)
    assert np.array_equal(resize_target(small, (8, 8, 8), 3), small)
    sparse = np.full_like(big, IGNORE)
    sparse[::4] = big[::4]  # every 4th slice annotated
    got = resize_target(sparse, (8, 8, 8), 3)
    assert np.array_equal(got[::2], small[::2]) and (got[1::2] == IGNORE).all()


def test_blocks_hold_annotated_voxels_and_augmentation_moves_labels_with_the_image():
    t = np.full((20, 24, 24), IGNORE, np.int8)
    t[3, 5:9, 5:9] = 1  # a few annotated voxels only
    x = np.stack([np.where(t == 1, 5.0, 0.0), np.zeros(t.shape)]).astype(np.float32)
    sampler = BlockSampler([(x, t)], 8, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(30):
        xb, tb = sampler.sample()
        assert xb.shape == (2, 8, 8, 8) and tb.shape == (8, 8, 8) and (tb != IGNORE).any()
        xa, ta = augment_block(xb, tb, rng)
        assert np.array_equal(ta == 1, xa[0] > xa[0].min())  # the bright voxels are the labelled
        assert (xa[1] == 0).all()  # only the image (channel 0) is jittered


def test_foreground_blocks_are_centred_on_each_foreground_class_alike():
    t = np.zeros((32, 32, 32), np.int8)
    t[2:4, 2:4, 2:4] = 2  # a small "nucleus"
    t[20:30, 20:30, 20:30] = 1
    x = t[None].astype(np.float32)
    uniform = BlockSampler([(x, t)], 8, np.random.default_rng(0))
    centred = BlockSampler([(x, t)], 8, np.random.default_rng(0), foreground=1.0)
    seen_uniform = sum((uniform.sample()[1] == 2).any() for _ in range(200))
    seen_centred = [centred.sample()[1] for _ in range(200)]
    assert seen_uniform < 30  # the nucleus is rare in uniform blocks ...
    with_nucleus = sum((b == 2).any() for b in seen_centred)
    assert 70 < with_nucleus < 130  # ... and in half of the centred ones
    assert all((b > 0).any() for b in seen_centred)


# --------------------------------------------------------------------------- the cascade


@pytest.fixture(scope="module")
def cascade(vols, tmp_path_factory):
    """A cascade trained on p1, validated on p2; stage 2's inputs recorded as computed."""
    out = tmp_path_factory.mktemp("cascade") / "cascade.pt"
    seen: list[np.ndarray] = []
    real = CascadeSegmenter.stage1_probabilities

    def record(self, volume, stats):
        result = real(self, volume, stats)
        seen.append(result)
        return result

    mp = pytest.MonkeyPatch()
    mp.setattr(CascadeSegmenter, "stage1_probabilities", record)
    try:
        result = train_cascade(vols[:1], vols[1:], out, TINY)
    finally:
        mp.undo()
    return {"path": out, "result": result, "stage2_inputs": seen}


def test_cascade_checkpoint_is_read_by_the_segmenter_and_segments(cascade, vols):
    seg = CascadeSegmenter(device="cpu").load_model(cascade["path"])
    assert seg.config.stage1.binning == 2 and seg.config.stage1.start_filts == 4
    assert seg.config.preprocessing == {"name": "percentile"}
    v = vols[1]
    labels = seg.segment_block(v.image, v.stats, v.voxel_size_nm)["cell"]
    assert labels.shape == v.shape and set(np.unique(labels)) <= {0, 1, 2}
    meta = read_checkpoint_meta(cascade["path"])
    result = cascade["result"]
    assert meta["task"] == "cell" and meta["train_data"] == ["p1"] and meta["val_data"] == ["p2"]
    assert meta["metrics"] == result.best and result.best["stage"] == 2
    assert [(h["stage"], h["epoch"]) for h in result.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert meta["stage1_metrics"]["stage"] == 1
    assert {"val_dice_exterior", "val_dice_cytoplasm", "val_dice_nucleus"} <= result.best.keys()
    json.dumps(meta)
    assert not state_path(cascade["path"]).exists()


def test_stage2_learned_from_the_segmenters_stage1_of_the_checkpoint(cascade, vols):
    """The inputs stage 2 trained on are what the finished checkpoint's segmenter computes."""
    train_in, val_in = cascade["stage2_inputs"]
    seg = CascadeSegmenter(device="cpu").load_model(cascade["path"])
    for got, v in ((train_in, vols[0]), (val_in, vols[1])):
        assert got.shape == (3, *v.shape)
        np.testing.assert_array_equal(got, seg.stage1_probabilities(v.image, v.stats))
        assert 0 <= got[1:].min() and got[1:].max() <= 1


def test_cascade_runs_repeat_with_a_seed(vols, tmp_path):
    config = replace(TINY, epochs=1, steps_per_epoch=2)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_cascade(vols[:1], [], tmp_path / f"{name}.pt", replace(config, seed=seed))
    assert same_weights(tmp_path / "a.pt", tmp_path / "b.pt")
    assert not same_weights(tmp_path / "a.pt", tmp_path / "c.pt")


@pytest.mark.parametrize("stop", [(1, 2), (2, 2)], ids=["in-stage-1", "in-stage-2"])
def test_cascade_resumes_to_the_weights_of_an_uninterrupted_run(vols, tmp_path, stop):
    config = replace(TINY, epochs=3, steps_per_epoch=2)
    whole = train_cascade(vols[:1], vols[1:], tmp_path / "whole.pt", config)

    def interrupt(epoch, step, steps, info):
        if (info.get("stage"), epoch) == stop and step == 1 and "loss" in info:
            raise KeyboardInterrupt

    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        train_cascade(vols[:1], vols[1:], out, config, progress=interrupt)
    assert state_path(out).is_file() and out.exists() == (stop[0] == 2)
    with pytest.raises(OutputError, match="resume=True"):
        train_cascade(vols[:1], vols[1:], out, config)
    with pytest.raises(ConfigError, match="another configuration"):
        train_cascade(vols[:1], vols[1:], out, replace(config, lr=1e-2), resume=True)
    resumed = train_cascade(vols[:1], vols[1:], out, config, resume=True)
    assert same_weights(out, tmp_path / "whole.pt")
    assert strip(resumed.history) == strip(whole.history)
    assert not state_path(out).exists()


def test_cascade_records_lac_preprocessing(vols, tmp_path):
    out = tmp_path / "lac.pt"
    train_cascade(vols[:1], [], out, replace(TINY, epochs=1, steps_per_epoch=1,
                                             preprocessing="lac", binning=1, block2=8))
    seg = CascadeSegmenter(device="cpu").load_model(out)
    assert seg.config.preprocessing == {"name": "lac", "factor": 100.0}
    assert seg.config.stage1.binning == 1 and seg.config.stage2.block == 8


def test_cascade_on_amira_labels_ignores_the_ignore_material(tmp_path):
    """sample_12.labels names value 2 'ignore': training is that of --ignore-label 2 (and not
    that of 2 as the nucleus class).
    """
    pair = f"{FIXTURES / 'sample_12.rec'},{FIXTURES / 'sample_12.labels'}"
    volumes = open_training_data([pair], "cell")
    config = replace(TINY, epochs=1, steps_per_epoch=2)
    runs = {}
    for name, ignore in (("material", None), ("explicit", 2), ("as-nucleus", 255)):
        runs[name] = train_cascade(volumes, volumes, tmp_path / f"{name}.pt",
                                   replace(config, ignore_label=ignore))
    assert same_weights(tmp_path / "material.pt", tmp_path / "explicit.pt")
    assert not same_weights(tmp_path / "material.pt", tmp_path / "as-nucleus.pt")
    assert strip(runs["material"].history) == strip(runs["explicit"].history)
    # without a nucleus in the annotated voxels, validation scores none there
    assert runs["as-nucleus"].best["val_dice_nucleus"] != runs["material"].best["val_dice_nucleus"] \
        or runs["as-nucleus"].best["val_dice"] != runs["material"].best["val_dice"]


# --------------------------------------------------------------------------- the Biomedisa U-Net


def test_unet3d_checkpoint_is_read_by_the_segmenter_and_segments(vols, tmp_path):
    out = tmp_path / "u.pt"
    result = train_unet3d(vols[:1], vols[1:], out, TINY3D)
    seg = UNet3DSegmenter(device="cpu").load_model(out)
    assert seg.labels == (0, 1, 2) and seg.patch == (32, 32, 32) and seg.grid == (64, 64, 64)
    assert seg.materials == ("exterior", "cytoplasm", "nucleus")
    # mu, sig: the first training image on the grid after min-max
    from sxtdask.train._unet3d import _resize

    g = _resize(vols[0].image, (64, 64, 64))
    g = (g - g.min()) / (g.max() - g.min())
    assert seg.mu == pytest.approx(float(g.mean()), rel=1e-4)
    assert seg.sig == pytest.approx(float(g.std()), rel=1e-4)
    v = vols[1]
    labels = seg.segment_block(v.image, v.stats, v.voxel_size_nm)["cell"]
    assert labels.shape == v.shape and set(np.unique(labels)) <= {0, 1, 2}
    assert len(result.history) == 2 and "val_dice_nucleus" in result.history[0]
    # one epoch is a pass over the 8 patches of the 64³ grid, 4 at a time
    assert read_checkpoint_meta(out)["config"]["batch_size"] == 4


def test_unet3d_seed_and_resume(vols, tmp_path):
    config = replace(TINY3D, epochs=3, steps_per_epoch=1)
    whole = train_unet3d(vols[:1], [], tmp_path / "whole.pt", config)
    train_unet3d(vols[:1], [], tmp_path / "again.pt", config)
    train_unet3d(vols[:1], [], tmp_path / "other.pt", replace(config, seed=1))
    assert same_weights(tmp_path / "whole.pt", tmp_path / "again.pt")
    assert not same_weights(tmp_path / "whole.pt", tmp_path / "other.pt")

    def interrupt(epoch, step, steps, info):
        if epoch == 2 and "loss" in info:
            raise KeyboardInterrupt

    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        train_unet3d(vols[:1], [], out, config, progress=interrupt)
    assert read_checkpoint_meta(out)["epoch"] == 1
    resumed = train_unet3d(vols[:1], [], out, config, resume=True)
    assert same_weights(out, tmp_path / "whole.pt")
    assert strip(resumed.history) == strip(whole.history)


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": 16}, "at least the stride"), ({"patch": 34}, "multiple of 4"),
    ({"filters": (4,)}, "2 to 8 integers"), ({"scale": (16, 64, 64)}, "smaller than the patch"),
])
def test_unet3d_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        replace(TINY3D, **kwargs)


# --------------------------------------------------------------------------- command line


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sxtdask.cli", *(str(a) for a in args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    for seed in (1, 2):
        write_phantom(folder / f"p{seed}.mrc", shape=(24, 48, 48), seed=seed)
    return folder


def test_cli_trains_a_cascade_that_its_segmenter_reads(stores, tmp_path):
    model = tmp_path / "c.pt"
    proc = run_cli("train", "--task", "cell", "--arch", "cascade", "--data", stores / "p1.gt.zarr",
                   stores / "p2.gt.zarr", "--out", model, "--width", "4", "--depth", "2",
                   "--block", "16,8", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size",
                   "2", "--val-blocks", "2", "--device", "cpu", "--json-log", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["checkpoint"] == str(model)
    assert [h["stage"] for h in summary["history"]] == [1, 2]
    lines = [e for e in events if e["event"] == "message" and "epoch" in e]
    assert [e["stage"] for e in lines] == [1, 2] and "val_dice_nucleus" in lines[-1]
    meta = read_checkpoint_meta(model)
    assert meta["cascade"]["stage2"]["block"] == 8 and meta["cascade"]["stage1"]["block"] == 16
    # the segmenter that `segment --method cascade --model` builds reads it and segments
    from sxtdask.io import open_image

    image = open_image(stores / "p2.gt.zarr").data.compute()
    stats = global_stats(da.from_array(image)).compute()
    seg = CascadeSegmenter(device="cpu").load_model(model)
    assert seg.segment_block(image, stats, (30.0, 30.0, 30.0))["cell"].shape == image.shape


def test_cli_trains_a_unet3d(stores, tmp_path):
    model = tmp_path / "u.pt"
    proc = run_cli("-q", "train", "--task", "cell", "--arch", "unet3d", "--data",
                   stores / "p1.gt.zarr", "--out", model, "--filters", "4-8-16", "--scale", "64",
                   "--patch", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                   "--label-map", "0:0,1:1,2:2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert UNet3DSegmenter(device="cpu").load_model(model).grid == (64, 64, 64)
    assert read_checkpoint_meta(model)["config"]["label_map"] == "0:0,1:1,2:2"


def main_in_process(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
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


def test_cli_errors_are_one_line_with_exit_2(stores, tmp_path, capsys):
    gt = stores / "p1.gt.zarr"
    ins = tmp_path / "ins"
    ins.mkdir()
    np.save(ins / "img.npy", np.random.default_rng(0).random((8, 16, 16), np.float32))
    lab = np.zeros((8, 16, 16), np.uint8)
    lab[2:6, 4:12, 4:12], lab[3:5, 6:9, 6:9] = 1, 5
    np.save(ins / "lab.npy", lab)
    pair = f"{ins / 'img.npy'},{ins / 'lab.npy'}"
    small = ("--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu", "--val-fraction", "0")
    out = tmp_path / "x.pt"
    cases = [
        (["--task", "isg", "--arch", "cascade", "--data", gt], "--arch cascade trains the cell"),
        (["--task", "cell", "--arch", "cascade", "--data", gt, "--patch", "32"], "--block"),
        (["--task", "cell", "--data", gt, "--depth", "2"], "--depth is an option of --arch "
                                                          "cascade"),
        (["--task", "cell", "--arch", "unet3d", "--data", gt, "--block", "8"], "--block is an"),
        (["--task", "cell", "--arch", "cascade", "--data", gt, "--label-map", "0:0,1"],
         "must be VALUE:CLASS"),
        (["--task", "cell", "--arch", "cascade", "--data", pair],
         "img.npy: label values 5 are not classes of the task (0 to 2); map them with --label-map"),
        (["--task", "cell", "--arch", "cascade", "--data", pair, "--label-map", "0:0,1:1"],
         "label values 5 are not in the label map"),
        (["--task", "cell", "--arch", "cascade", "--data", pair, "--label-map", "0:ignore,1:ignore,"
          "5:ignore"], "no annotated voxel"),
        (["--task", "cell", "--arch", "unet3d", "--data", gt, "--scale", "1,2"], "N or Z,Y,X"),
    ]
    for args, message in cases:
        status, err = main_in_process(["train", *args, "--out", out, *small], capsys)
        lines = err.strip().splitlines()
        assert status == 2, err
        assert len(lines) == 1 and lines[0].startswith("sxtdask: error: "), err
        assert message in lines[0], lines[0]
    assert not out.exists() and not state_path(out).exists()
    # the INS-1E mapping trains
    status, err = main_in_process(["-q", "train", "--task", "cell", "--arch", "cascade", "--data",
                                   pair, "--label-map", "0:0,1:1,2:2,5:1", "--out", out,
                                   "--width", "2", "--depth", "2", "--block", "8",
                                   "--binning", "1", *small], capsys)
    assert status == 0, err
    assert read_checkpoint_meta(out)["config"]["label_map"] == "0:0,1:1,2:2,5:1"


def test_precise_batchnorm_makes_eval_mode_use_the_patches_statistics():
    """Keras's BatchNorm momentum (0.99) leaves a short run's running statistics stale, and a
    net in eval mode then answers with them (seen: a run predicting only exterior). PreciseBN
    replaces them by the patches' own: eval mode then matches train mode on those patches.
    """
    from sxtdask.models import BiomedisaUNet3D
    from sxtdask.train._unet3d import UNet3DTrainConfig, _Grid, precise_batchnorm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = (rng.normal(size=(32, 32, 32)) * 0.2 + 3.0).astype(np.float32)  # far from N(0, 1)
    grids = [_Grid("v", image, np.zeros(image.shape, np.int64))]
    patches = [(0, (0, 0, 0))]
    config = UNet3DTrainConfig(scale=(32, 32, 32), patch=32, filters=(4, 8), batch_size=4)
    net = BiomedisaUNet3D((4, 8), 1, 3)
    x = torch.from_numpy(image[None, None])

    def outputs() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            net.train()
            trained = net(x, logits=True)
            net.eval()
            return trained, net(x, logits=True)

    before = outputs()
    assert (before[0] - before[1]).abs().max() > 0.5  # stale (initial) statistics differ
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    precise_batchnorm(net, grids, patches, config, "cpu")
    after = outputs()
    assert (after[0] - after[1]).abs().max() < 0.05
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # weights kept
