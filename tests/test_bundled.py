"""The bundled default weights: what they are, that the default routes use them, and that they work.

The full quality figures (against the issue's targets, on 128×256×256 phantoms of unseen seeds)
come from ``benchmarks/quality.py``; here a smaller unseen phantom checks that the shipped networks
are the trained ones, through the same segmenters a user gets.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
        seeds = {int(re.findall(r"\d+", name)[-1]) for name in meta["train_data"] + meta["val_data"]}
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
    isg = UNetISGInstances().load_model().predict(image)
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


def test_slice_context_network_gives_the_same_masks_chunked_as_whole(tmp_path: Path):
    """A mito network reading z-1, z, z+1: its chunks get a one-slice z halo, so any z chunking
    equals the whole-volume answer, and the answer depends on the neighbouring slices.
    """
    import dask.array as da
    import torch

    from sxtdask.engine import segment_array
    from sxtdask.models import build_unet, save_checkpoint
    from sxtdask.stats import global_stats

    torch.manual_seed(3)
    net = build_unet("mito", width=4)
    with torch.no_grad():  # a bias that puts the random network's decision inside the data's range
        net.outc.conv.bias.copy_(torch.tensor([0.0, 0.0]))
    path = save_checkpoint(tmp_path / "mito.pt", net, {
        "task": "mito", "preprocessing": {"name": "percentile", "context": 1}})
    seg = UNetSegmenter(task=Task.MITO, device="cpu").load_model(path)
    assert seg.context == 1 and seg.halo[0] == 1
    image = make_phantom((20, 64, 64), seed=4).image
    stats = global_stats(da.from_array(image)).compute()
    whole = seg.segment_block(image, stats, (30.0, 30.0, 30.0))["mito"]
    assert 0 < whole.mean() < 1, "a constant mask would make the comparison empty"
    for chunks in ((7, 64, 64), (3, 64, 64)):
        chunked = segment_array(da.from_array(image, chunks=chunks), seg, stats)["mito"].compute()
        np.testing.assert_array_equal(chunked, whole)
    # the neighbouring slices matter: without them (context 0) the answer differs
    flat = dataclasses.replace(seg, context=0, halo=(0, 0, 0))
    assert not np.array_equal(flat.segment_block(image, stats, (30.0, 30.0, 30.0))["mito"], whole)
