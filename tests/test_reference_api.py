"""The reference API as the iPA documentation writes it, and the one registry behind every name.

``seg = create_segmenter(modality='sxt', task='cell'); seg.load_model(); seg.predict(volume)``,
``predict(volume, threshold=0.5)``, ``SXTCellSegmenter(device=...)`` and friends; the registry is
what the CLI, ``create_segmenter``, ``train`` and the run report read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sxtdask
from sxtdask.errors import ConfigError, SxtdaskError
from sxtdask.models import ModelKind, build_unet, bundled_weights, save_checkpoint
from sxtdask.segmenters import (
    REGISTRY,
    ClassicalISG,
    CombinedSegmenter,
    MaskRCNNISG,
    Method,
    Task,
    UNetISGInstances,
    UNetSegmenter,
    create_segmenter,
    default_method,
    make_segmenter,
    methods_for,
    trainable,
)


@pytest.fixture(scope="module")
def volume(small_phantom) -> np.ndarray:
    return small_phantom.image[:8, :64, :64].copy()


def test_documented_sequence_loads_in_place(volume):
    """``seg.load_model(); seg.predict(volume)``: load_model loads in place and returns the
    segmenter (it once returned a new object and left ``seg`` without a model).
    """
    seg = sxtdask.create_segmenter(modality="sxt", task="cell", device="cpu")
    returned = seg.load_model()
    assert returned is seg and seg.model_path == str(bundled_weights("cell"))
    masks = seg.predict(volume)
    assert set(masks) == {"cell_mask", "nucleus_mask"}
    assert masks["cell_mask"].shape == volume.shape
    chained = sxtdask.create_segmenter("sxt", task="cell", device="cpu").load_model()
    np.testing.assert_array_equal(chained.predict(volume)["cell_mask"], masks["cell_mask"])


@pytest.mark.parametrize("cls,task,kind", [
    (sxtdask.SXTCellSegmenter, Task.CELL, "cell"),
    (sxtdask.SXTMitoSegmenter, Task.MITO, "mito"),
    (sxtdask.SXTISGSegmenter, Task.ISG, "isg"),
], ids=["cell", "mito", "isg"])
def test_reference_classes_take_device_and_fix_their_task(cls, task, kind, volume):
    seg = cls(device="cpu")
    assert seg.task is task and seg.device == "cpu"
    assert seg.load_model() is seg and seg.model_files == (str(bundled_weights(kind)),)
    out = seg.predict(volume)
    plain = UNetSegmenter(task=task, device="cpu").load_model().predict(volume)
    if task is Task.CELL:
        np.testing.assert_array_equal(out["nucleus_mask"], plain["nucleus_mask"])
    else:
        np.testing.assert_array_equal(out, plain)
    other = Task.ISG if task is not Task.ISG else Task.MITO
    with pytest.raises(TypeError, match="task"):  # the task is the class's, not an option
        cls(task=other)


def test_reference_mask_rcnn_class_needs_its_weights():
    seg = sxtdask.SXTISGMaskRCNNSegmenter(device="cpu")
    assert isinstance(seg, MaskRCNNISG) and seg.device == "cpu" and seg.method is Method.MASKRCNN
    with pytest.raises(SxtdaskError, match="not bundled"):
        seg.load_model()


def test_predict_threshold_changes_the_mask_and_default_is_half(volume):
    seg = sxtdask.SXTISGSegmenter(device="cpu").load_model()
    default = seg.predict(volume)
    np.testing.assert_array_equal(seg.predict(volume, threshold=0.5), default)
    low, high = seg.predict(volume, threshold=0.05), seg.predict(volume, threshold=0.95)
    assert low.sum() >= default.sum() >= high.sum()
    assert low.sum() > high.sum()  # the threshold really reaches the network's output
    assert seg.threshold is None  # predict's threshold is for that call only


def test_predict_threshold_for_cell_thresholds_the_class_probabilities(volume):
    seg = sxtdask.SXTCellSegmenter(device="cpu").load_model()
    import dask.array as da

    stats = sxtdask.global_stats(da.from_array(volume)).compute(scheduler="sync")
    prob = seg.probabilities(volume, stats)
    for t in (0.2, 0.8):
        out = seg.predict(volume, threshold=t)
        np.testing.assert_array_equal(out["cell_mask"], (prob[:, 1] + prob[:, 2] > t) | (prob[:, 2] > t))
        np.testing.assert_array_equal(out["nucleus_mask"], prob[:, 2] > t)


def test_predict_threshold_for_the_other_methods(volume, small_phantom):
    image = small_phantom.image[:24]
    classical = ClassicalISG()
    assert classical.predict(image, threshold=0.95).max() < classical.predict(image).max()
    inst = UNetISGInstances().load_model()
    assert inst.predict(image, threshold=0.5).max() == inst.predict(image).max()
    with pytest.raises(ConfigError, match="between 0 and 1"):
        inst.predict(image, threshold=1.5)


def test_instance_predict_returns_a_label_array_numbered_by_first_voxel(small_phantom):
    labels = ClassicalISG().predict(small_phantom.image[:24])
    assert isinstance(labels, np.ndarray) and labels.dtype == np.uint32
    ids = labels[labels > 0]
    first = [int(ids[np.flatnonzero(ids == i)[0]]) for i in np.unique(ids)]
    assert sorted(set(first)) == list(range(1, labels.max() + 1))
    order = np.unique(ids, return_index=True)[1]
    assert list(ids[np.sort(order)]) == list(range(1, labels.max() + 1))


def test_load_model_checks_the_file_without_building_it(tmp_path, monkeypatch):
    """The client validates a checkpoint from its names and shapes; no network is built."""
    import sxtdask.models._infer as infer

    net = build_unet(ModelKind.ISG, width=4)
    path = tmp_path / "isg.pt"
    save_checkpoint(path, net, {"task": "isg"})
    built = []
    real = infer._build_from_config

    def spy(config):
        built.append(str(torch.empty(0).device))
        return real(config)

    monkeypatch.setattr(infer, "_build_from_config", spy)
    seg = UNetSegmenter(task=Task.ISG, device="cpu").load_model(path)
    assert built == ["meta"]  # inside `with torch.device("meta")`: allocates nothing
    bad = tmp_path / "cell-as-isg.pt"
    torch.save(build_unet(ModelKind.CELL_NUCLEUS, width=4).state_dict(), bad)
    with pytest.raises(SxtdaskError, match="cell"):
        UNetSegmenter(task=Task.ISG, device="cpu").load_model(bad)
    assert seg.model_path == str(path)  # a refused file changes nothing


def test_one_registry_names_every_task_and_method():
    assert {e.task for e in REGISTRY} == set(Task)
    for task in Task:
        assert default_method(task) == methods_for(task)[0]
        assert sum(e.default for e in REGISTRY if e.task is task) == 1
    assert methods_for("isg-instances") == (Method.UNET, Method.MASKRCNN, Method.CLASSICAL)
    assert trainable() == ("cell", "mito", "isg", "isg-maskrcnn")
    refs = [e.reference for e in REGISTRY]
    assert len(refs) == len(set(refs))
    for e in REGISTRY:  # every reference name builds the class the registry says
        seg = create_segmenter("sxt", task=e.reference)
        assert seg.task is e.task and seg.method is e.method
    seg = create_segmenter("sxt", task="isg-instances", method="classical")
    assert isinstance(seg, ClassicalISG)
    with pytest.raises(ConfigError, match="not one of"):
        create_segmenter("sxt", task="golgi")
    with pytest.raises(ConfigError, match="not available"):
        make_segmenter("cell", "classical")


def test_make_segmenter_loads_models_and_combines_tasks():
    seg = make_segmenter(["cell", "mito", "isg-instances"], device="cpu", batch_size=2)
    assert isinstance(seg, CombinedSegmenter)
    info = seg.describe()
    assert [o.name for o in info.outputs] == ["cell", "mito", "isg"]
    assert info.model_files == tuple(str(bundled_weights(k)) for k in ("cell", "mito", "isg"))
    assert [p.method for p in seg.parts] == [Method.UNET] * 3
    assert info.halo[0] == 12 and not info.needs_gpu and info.device == "cpu"
    classical = make_segmenter("isg-instances", "classical", halo=(4, 4, 4))
    assert classical.halo == (4, 4, 4) and classical.describe().model_files == ()
    with pytest.raises(ConfigError, match="no model"):
        make_segmenter("isg-instances", "classical", models={"isg-instances": Path("x.pt")})
    with pytest.raises(ConfigError, match="one task"):
        make_segmenter(["cell", "mito"], "unet")


def test_segmenters_describe_themselves_without_guessing():
    for seg in (ClassicalISG(), UNetISGInstances(), MaskRCNNISG(device="cpu")):
        info = seg.describe()
        assert info.task is Task.ISG_INSTANCES and info.name == type(seg).__name__
        assert info.outputs == seg.outputs and info.halo == seg.halo
    assert ClassicalISG().describe().device is None
    assert UNetISGInstances(unet=UNetSegmenter(task=Task.ISG, device="cpu")).describe().device == "cpu"


def test_training_reads_the_registry_s_networks():
    from sxtdask.cli.train import TASKS
    from sxtdask.train._data import TASK_LABELS

    assert TASKS == trainable() and set(TASK_LABELS) == set(trainable())


def test_a_planned_run_keeps_its_segmenter_when_load_model_changes_it_after(tmp_path, small_phantom):
    """load_model works in place, so a plan holds its own copy: loading another checkpoint after
    planning changes neither the planned graph nor what it computes.
    """
    from sxtdask.io import open_labels, write_image
    from sxtdask.pipeline import segment_tomogram

    store = write_image(small_phantom.image[:16, :64, :64], tmp_path / "a.zarr", chunks=(8, 64, 64))
    seg = sxtdask.SXTISGSegmenter(device="cpu").load_model()
    run = segment_tomogram(store, seg)
    key = run.result.key
    other = tmp_path / "isg-other.pt"
    torch.manual_seed(5)
    save_checkpoint(other, build_unet(ModelKind.ISG, width=4), {"task": "isg"})
    seg.load_model(other)
    assert seg.model_files == (str(other),) and run.segmenter.model_files == (str(bundled_weights("isg")),)
    assert run.result.key == key
    run.result.compute(scheduler="sync")
    expected = sxtdask.SXTISGSegmenter(device="cpu").load_model().predict(small_phantom.image[:16, :64, :64])
    np.testing.assert_array_equal(open_labels(store, "isg-mask").compute(), expected)


def test_another_task_s_bare_state_dict_is_refused_at_load(tmp_path):
    """A mito state dict (3 input channels) and an ISG one (1) share a layout: the channel count
    tells them apart before any worker runs them.
    """
    mito = tmp_path / "mito_raw.pt"
    torch.save(build_unet(ModelKind.MITO, width=4).state_dict(), mito)
    isg = tmp_path / "isg_raw.pt"
    torch.save(build_unet(ModelKind.ISG, width=4).state_dict(), isg)
    with pytest.raises(SxtdaskError, match="input channel"):
        sxtdask.SXTISGSegmenter(device="cpu").load_model(mito)
    with pytest.raises(SxtdaskError, match="input channel"):
        sxtdask.SXTMitoSegmenter(device="cpu").load_model(isg)
    assert sxtdask.SXTISGSegmenter(device="cpu").load_model(isg).model_files == (str(isg),)


def test_a_halo_smaller_than_the_context_is_refused(small_phantom):
    import dask.array as da

    from sxtdask.engine import segment_array

    mito = sxtdask.SXTMitoSegmenter(device="cpu").load_model()
    assert mito.context_radius[0] >= 1
    image = da.from_array(small_phantom.image[:16, :64, :64], chunks=(4, 64, 64))
    stats = sxtdask.global_stats(image).compute()
    with pytest.raises(ConfigError, match="smaller than .*context along z"):
        segment_array(image, mito, stats, halo=(0, 0, 0))
    with pytest.raises(ConfigError, match="non-negative"):
        segment_array(image, ClassicalISG(), stats, halo=(-3, 0, 0))


def test_combined_load_model_keeps_the_checkpoints_given(tmp_path):
    cell = tmp_path / "cell.pt"
    save_checkpoint(cell, build_unet(ModelKind.CELL_NUCLEUS, width=4), {"task": "cell"})
    seg = make_segmenter(["cell", "mito"], models={"cell": cell}, device="cpu")
    assert seg.load_model() is seg
    assert seg.model_files == (str(cell), str(bundled_weights("mito")))
    with pytest.raises(ConfigError, match="not among the tasks"):
        make_segmenter(["cell"], models={"mito": cell})


@pytest.mark.parametrize("make", [
    lambda t: MaskRCNNISG(score_threshold=t), lambda t: ClassicalISG(threshold=t),
    lambda t: UNetSegmenter(task=Task.ISG, threshold=t)], ids=["maskrcnn", "classical", "unet"])
def test_thresholds_are_checked_for_every_method(make):
    for bad in (float("nan"), "0.5", True):
        with pytest.raises(ConfigError, match="threshold"):
            make(bad)


def test_cli_halo_takes_zero_where_a_method_needs_none():
    from sxtdask.cli import build_parser

    args = build_parser().parse_args(["segment", "x.zarr", "--task", "isg-instances", "--halo", "12,0,0"])
    assert args.halo == (12, 0, 0) and args.batch_size is None
