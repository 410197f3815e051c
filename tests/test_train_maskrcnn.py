"""Mask R-CNN training on CPU: checkpoints the segmenter loads, seeding, resume, early stopping.

The runs are tiny (64-pixel patches resized to 64, 2 patches a step, 2 steps an epoch, few sampled
proposals), so the network learns nothing useful; what is checked is the machinery. torch runs on
one thread here: on a shared 2-core machine its thread pool otherwise spins for seconds per step.
"""

from __future__ import annotations

import dataclasses
import json

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image

from sxtdask.errors import ConfigError, InputError, OutputError
from sxtdask.models import load_state_dict_file, read_checkpoint_meta
from sxtdask.phantoms import write_phantom
from sxtdask.segmenters import MaskRCNNISG
from sxtdask.stats import global_stats
from sxtdask.train import (
    MaskRCNNTrainConfig,
    TrainingVolume,
    export_coco,
    open_training_data,
    train_maskrcnn,
)
from sxtdask.train import _maskrcnn as trainer
from sxtdask.train._coco import patch_grid, read_patch
from sxtdask.train._common import state_path

# pycocotools (annToMask) warns under NumPy 2 on every mask it decodes
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CFG = MaskRCNNTrainConfig(
    patch=64, batch_size=2, steps_per_epoch=2, epochs=3, eval_every=1, patience=1, save_every=2,
    val_patches=2, min_size=64, rpn_batch_size_per_image=32, box_batch_size_per_image=8,
    device="cpu", seed=7,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maskrcnn-data")
    stores = [write_phantom(folder / f"cell{s}.mrc", shape=(24, 96, 96), seed=s)[1] for s in (1, 4)]
    train, val = open_training_data(stores, "isg-maskrcnn")
    return [train], [val]


def _probe(net, images):
    """The network's outputs on ``images``, every detection kept (score threshold 0, top 5)."""
    heads = net.roi_heads
    saved = heads.score_thresh, heads.detections_per_img
    heads.score_thresh, heads.detections_per_img = 0.0, 5
    try:
        return trainer.predict_patches(net, images, "cpu", 2)
    finally:
        heads.score_thresh, heads.detections_per_img = saved


def _same_outputs(a, b):
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
               for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One uninterrupted run; the network's outputs on two validation patches at every validation."""
    train, val = data
    probes = [read_patch(val, ref)[0] for ref in patch_grid(val, CFG.patch)[:2]]
    outputs, calls = [], []
    original = trainer._validate

    def recording(net, *args, **kwargs):
        outputs.append(_probe(net, probes))
        return original(net, *args, **kwargs)

    out = tmp_path_factory.mktemp("maskrcnn-a") / "isg.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "_validate", recording)
        result = train_maskrcnn(train, val, out, CFG,
                                progress=lambda *call: calls.append(call))
    return result, outputs, probes, calls


def _stop_epoch(history, patience, epochs):
    """When the early-stopping rule ends a run whose validations scored ``history``."""
    best, stale = None, 0
    for e in history:
        if best is None or e["val_map"] > best:
            best, stale = e["val_map"], 0
        else:
            stale += 1
        if stale >= patience:
            return e["epoch"]
    return epochs


def test_checkpoints_load_in_the_segmenter_and_reproduce_the_trained_network(trained):
    result, outputs, probes, calls = trained
    out = result.checkpoint
    final, periodic = out.with_name("isg_final.pt"), out.with_name("isg_epoch002.pt")
    assert set(result.files) == {out, final, periodic} and all(f.is_file() for f in result.files)
    assert not state_path(out).exists()
    history = result.history
    assert all({"loss", "val_map", "val_map_50", "val_ar_100"} <= set(e) for e in history)
    # early stopping: the run ends where the rule says (patience: 1 validation)
    assert history[-1]["epoch"] == _stop_epoch(history, CFG.patience, CFG.epochs)
    assert len(outputs) == len(history)
    # progress: every step with its loss, and every epoch's end with its validation metrics
    steps = [c for c in calls if "loss" in c[3]]
    ends = [c for c in calls if "loss" not in c[3]]
    assert [(c[0], c[1]) for c in steps] == [(e, s) for e in range(1, len(history) + 1)
                                             for s in (1, 2)]
    assert [c[3]["val_map"] for c in ends] == [e["val_map"] for e in history]
    # the best checkpoint is the best validation's network; training changed it between epochs
    scores = [e["val_map"] for e in history]
    best_epoch = scores.index(max(scores)) + 1
    meta = read_checkpoint_meta(out)
    assert meta["task"] == "isg-maskrcnn" and meta["epoch"] == best_epoch == result.best["epoch"]
    assert meta["model"]["min_size"] == CFG.min_size and meta["preprocessing"]["name"] == "lac"
    assert read_checkpoint_meta(final)["epoch"] == len(history)
    assert not _same_outputs(outputs[0], outputs[-1])
    for path, epoch in ((out, best_epoch), (final, len(history))):
        seg = MaskRCNNISG(device="cpu").load_model(path)  # default image_min_size 800: meta wins
        assert _same_outputs(_probe(seg.model, probes), outputs[epoch - 1])


def test_same_seed_and_resume_give_the_uninterrupted_weights(trained, data, tmp_path):
    result, *_ = trained
    train, val = data
    out = tmp_path / "isg.pt"

    def interrupt(epoch, step, steps, info):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_maskrcnn(train, val, out, CFG, progress=interrupt)
    assert state_path(out).is_file()
    with pytest.raises(ConfigError, match="another configuration"):
        train_maskrcnn(train, val, out, dataclasses.replace(CFG, lr=0.01), resume=True)
    with pytest.raises(OutputError, match="overwrite=True"):
        train_maskrcnn(train, val, out, CFG)
    resumed = train_maskrcnn(train, val, out, CFG, resume=True)
    drop = ("seconds",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in resumed.history] == \
        [{k: v for k, v in e.items() if k not in drop} for e in result.history]
    for mine, theirs in ((out, result.checkpoint),
                         (out.with_name("isg_final.pt"), result.checkpoint.with_name("isg_final.pt"))):
        a, b = load_state_dict_file(mine), load_state_dict_file(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not state_path(out).exists()
    with pytest.raises(InputError, match="nothing to resume"):
        train_maskrcnn(train, val, out, CFG, resume=True)


def test_trainer_patches_are_the_exported_coco_patches(data, tmp_path):
    from pycocotools.coco import COCO

    train, _ = data
    refs = patch_grid(train, CFG.patch)
    export_coco(train, [], tmp_path / "coco", patch=CFG.patch)
    coco = COCO(str(tmp_path / "coco" / "train.json"))
    images = {(i["z"], i["y0"], i["x0"]): i for i in coco.dataset["images"]}
    assert sorted(images) == sorted((r.z, r.y0, r.x0) for r in refs)
    config = dataclasses.replace(CFG, augment=False)
    for ref in refs[:: max(1, len(refs) // 6)]:
        (x,), (target,) = trainer._batch(train, [ref], config, np.random.default_rng(0), "cpu")
        img = images[(ref.z, ref.y0, ref.x0)]
        png = np.asarray(Image.open(tmp_path / "coco" / "train" / img["file_name"]))
        np.testing.assert_array_equal(np.round(x[0].numpy() * 255).astype(np.uint8), png)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        want = sorted(coco.annToMask(a).tobytes() for a in anns)
        assert sorted(m.numpy().tobytes() for m in target["masks"]) == want
        boxes = sorted(target["boxes"].tolist())
        assert boxes == sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                a["bbox"][1] + a["bbox"][3]] for a in anns)


def _volume(image, labels, name="synthetic"):
    stats = global_stats(da.from_array(image)).compute()
    return TrainingVolume(name, image, labels, stats, (30.0, 30.0, 30.0))


def test_augmentation_moves_image_and_masks_together():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 0.03, (1, 64, 64)).astype(np.float32)  # unsaturated by × 33.33
    labels = np.zeros(image.shape, np.uint32)
    labels[0, 5:12, 8:30] = 1  # asymmetric shapes: each flip/rotation gives other masks
    labels[0, 40:60, 50:55] = 2
    vol = [_volume(image, labels)]
    (ref,) = patch_grid(vol, 64)
    x0, lab0 = read_patch(vol, ref)
    transforms = [lambda a, k=k, f=f: np.rot90(a, k)[:, ::-1] if f else np.rot90(a, k)
                  for k in range(4) for f in (False, True)]
    seen = set()
    for seed in range(8):
        (x,), (target,) = trainer._batch(vol, [ref], CFG, np.random.default_rng(seed), "cpu")
        fits = [i for i, t in enumerate(transforms) if np.array_equal(t(x0), x[0].numpy())]
        assert len(fits) == 1 and (x[0] == x[1]).all() and (x[0] == x[2]).all()
        moved = transforms[fits[0]](lab0)  # the image's transform, applied to the labels
        want = sorted((moved == i).tobytes() for i in (1, 2))
        assert sorted(m.numpy().astype(bool).tobytes() for m in target["masks"]) == want
        seen.add(fits[0])
    assert len(seen) > 2  # the augmentation does vary


def test_errors(data, tmp_path):
    train, val = data
    with pytest.raises(ConfigError, match="stride"):
        MaskRCNNTrainConfig(patch=64, stride=65)
    with pytest.raises(ConfigError, match="max_size"):
        MaskRCNNTrainConfig(min_size=64, max_size=32)
    with pytest.raises(ConfigError, match="trainable_backbone_layers"):
        MaskRCNNTrainConfig(trainable_backbone_layers=6)
    with pytest.raises(OutputError, match="does not exist"):
        train_maskrcnn(train, val, tmp_path / "no" / "isg.pt", CFG)
    image = np.random.default_rng(0).uniform(0, 0.03, (4, 64, 64)).astype(np.float32)
    empty = _volume(image, np.zeros(image.shape, np.uint32), "empty")
    with pytest.raises(ConfigError, match="holds an ISG"):
        train_maskrcnn([empty], [], tmp_path / "isg.pt", CFG)
    json.dumps(dataclasses.asdict(CFG))  # the configuration is recorded as JSON in checkpoints
