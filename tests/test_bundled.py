"""The bundled default weights: what they are, that the default routes use them, and that they work.

The full quality figures (against the issue's targets, on 128×256×256 phantoms of unseen seeds)
come from ``benchmarks/quality.py``; here a smaller unseen phantom checks that the shipped networks
are the trained ones, through the same segmenters a user gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sxtdask.measure import match_instances
from sxtdask.models import bundled_weights, read_checkpoint_meta
from sxtdask.phantoms import make_phantom
from sxtdask.segmenters import Task, UNetISGInstances, UNetSegmenter

KINDS = ("cell", "mito", "isg")
MITO_DICE = 0.7


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_bundled_weights_are_small_narrow_and_say_they_were_trained_on_phantoms():
    total = 0
    for kind in KINDS:
        path = bundled_weights(kind)
        total += path.stat().st_size
        meta = read_checkpoint_meta(path)
        assert meta["task"] == kind
        assert meta["preprocessing"]["name"] == "percentile"
        assert meta["width"] <= 16
        assert meta["stored_as"] == "float16"
        # trained on synthetic phantoms of the training seeds only (benchmarks/train_bundled.py)
        seeds = {int(name[len("train"):].split(".")[0]) for name in meta["train_data"] + meta["val_data"]}
        assert seeds and all(1000 <= s < 2000 for s in seeds)
    assert total < 5_000_000, f"bundled weights take {total / 1e6:.1f} MB"


def test_default_segmenters_load_the_bundled_networks():
    for task, kind in ((Task.CELL, "cell"), (Task.MITO, "mito"), (Task.ISG, "isg")):
        seg = UNetSegmenter(task=task, device="cpu").load_model()
        assert seg.model_path == str(bundled_weights(kind))
        assert seg.preprocessing == "percentile"
        assert next(seg.model.parameters()).dtype.is_floating_point


@pytest.fixture(scope="module")
def unseen() -> object:
    # A seed outside the training range, at the training phantoms' shape; the networks are 2-D
    # (the mito one sees ±1 slice), so a central slab of 40 slices is scored to keep this quick.
    p = make_phantom((128, 256, 256), seed=9100)
    z = slice(44, 84)
    return SimpleNamespace(image=p.image[z], cell=p.cell[z], mito=p.mito[z], isg=p.isg[z])


def test_bundled_networks_segment_an_unseen_phantom(unseen):
    image = unseen.image
    cell = UNetSegmenter(task=Task.CELL, device="cpu").load_model().predict(image)
    assert _dice(cell["cell_mask"] > 0, unseen.cell > 0) > 0.95
    assert _dice(cell["nucleus_mask"] > 0, unseen.cell == 2) > 0.85
    mito = UNetSegmenter(task=Task.MITO, device="cpu").load_model().predict(image)
    assert _dice(mito > 0, unseen.mito > 0) > MITO_DICE
    isg = UNetISGInstances().load_model().predict(image)["isg"]
    # granules cut by the slab's ends are partial in both truth and prediction
    assert match_instances(unseen.isg, isg).f1 > 0.85


def test_segment_without_model_or_method_uses_the_bundled_unet(tmp_path: Path, small_phantom):
    from sxtdask.cli import main
    from sxtdask.io import open_labels, write_image

    data = tmp_path / "p.zarr"
    write_image(small_phantom.image, data, voxel_size_nm=(30.0, 30.0, 30.0))
    report = tmp_path / "r.json"
    assert main(["-q", "segment", str(data), "--task", "isg-instances", "--workers", "1",
                 "--report", str(report), "--dashboard-address", ":0"]) == 0
    rep = json.loads(report.read_text())
    assert rep["methods"] == ["UNetISGInstances"]
    assert rep["models"] == [str(bundled_weights("isg"))]
    assert int(open_labels(data, "isg").max().compute()) > 0
