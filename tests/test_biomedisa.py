"""Biomedisa 3-D U-Net files: built in Keras 3 (torch backend) as Biomedisa builds them, saved as
Biomedisa saves them, read through sxtdask with h5py alone; and NCXT UNet3D state dicts.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from sxtdask.models._biomedisa import BiomedisaUNet3D, read_biomedisa  # noqa: E402
from sxtdask.models._checkpoint import CheckpointError  # noqa: E402
from sxtdask.models._ncxt import NCXTUNet3D, infer_ncxt_config, load_ncxt  # noqa: E402

if keras.backend.backend() != "torch":  # pragma: no cover - another backend was configured
    pytest.skip("these tests build Keras models on the torch backend", allow_module_level=True)

from biomedisa_helpers import add_meta, keras_unet, to_tf2_layout  # noqa: E402

CASES = [((2, 3, 4, 5, 6), False), ((2, 3, 4, 5, 6), True), ((2, 2, 3, 3, 4, 4), False),
         ((2, 2, 3, 3, 4, 4), True)]


@pytest.mark.parametrize(("filters", "resnet"), CASES,
                         ids=["depth5", "depth5-resnet", "depth6", "depth6-resnet"])
@pytest.mark.parametrize("layout", ["keras3", "tf2"])
def test_forward_matches_keras(tmp_path, filters, resnet, layout):
    model = keras_unet(filters, resnet=resnet)
    path = tmp_path / "net.h5"
    model.save(path)
    add_meta(path, "2023" if layout == "tf2" else "2024")
    if layout == "tf2":
        to_tf2_layout(path)
    info = read_biomedisa(path)
    assert (info.filters, info.resnet, info.channels, info.n_labels) == (filters, resnet, 1, 3)
    assert info.keras_names == layout
    net = info.build()
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 32, 1)).astype(np.float32)
    want = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    with torch.no_grad():
        got = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert not np.allclose(want, want.mean())  # the comparison is not between constants


def test_meta_generations(tmp_path):
    model = keras_unet((2, 3), size=16)
    for gen in ("2023", "2024"):
        path = tmp_path / f"{gen}.h5"
        model.save(path)
        add_meta(path, gen, labels=(0, 5, 9), mu=0.3, sig=0.15)
        meta = read_biomedisa(path).meta
        assert meta.labels == (0, 5, 9)
        assert (meta.mu, meta.sig) == pytest.approx((0.3, 0.15))
        assert meta.generation == gen
        if gen == "2023":  # configuration's scales are x, y, z; sxtdask keeps z, y, x
            assert meta.scale == (64, 96, 128) and meta.normalize


def test_position_channel(tmp_path):
    model = keras_unet((2, 3), channels=2, size=16)
    path = tmp_path / "pos.h5"
    model.save(path)
    add_meta(path, "2023")
    assert read_biomedisa(path).channels == 2


def _saved(tmp_path, filters=(2, 3)):
    path = tmp_path / "net.h5"
    keras_unet(filters, size=16).save(path)
    add_meta(path, "2024")
    return path


def test_missing_layer_is_named(tmp_path):
    path = _saved(tmp_path)
    with h5py.File(path, "r+") as f:
        mw = f["model_weights"]
        del mw["batch_norm_2_1"]
        mw.attrs["layer_names"] = [n for n in mw.attrs["layer_names"]
                                   if (n.decode() if isinstance(n, bytes) else n) != "batch_norm_2_1"]
    with pytest.raises(CheckpointError, match="batch_norm_2_1"):
        read_biomedisa(path)


def test_misshaped_weight_is_named(tmp_path):
    path = _saved(tmp_path)
    with h5py.File(path, "r+") as f:
        g = f["model_weights/conv_2_2/conv_2_2"]
        del g["bias"]
        g.create_dataset("bias", data=np.zeros(7, np.float32))
    with pytest.raises(CheckpointError, match=r"conv_2_2"):
        read_biomedisa(path)


def test_label_count_must_match(tmp_path):
    path = tmp_path / "net.h5"
    keras_unet((2, 3), size=16).save(path)
    add_meta(path, "2024", labels=(0, 1))
    with pytest.raises(CheckpointError, match="meta/labels lists 2 values but the network has 3"):
        read_biomedisa(path)


def test_no_meta_and_not_hdf5(tmp_path):
    path = tmp_path / "net.h5"
    keras_unet((2, 3), size=16).save(path)
    with pytest.raises(CheckpointError, match="no meta group"):
        read_biomedisa(path)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        read_biomedisa(bad)


def test_cropping_weights_ignored_or_refused(tmp_path, caplog):
    path = _saved(tmp_path)
    with h5py.File(path, "r+") as f:
        f.create_group("cropping_weights").create_dataset("0", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="auto-cropping"):
        read_biomedisa(path, ignore_cropping=False)
    with caplog.at_level("WARNING"):
        assert read_biomedisa(path).filters == (2, 3)
    assert "cropping_weights" in caplog.text


def test_loader_never_reads_model_config(tmp_path):
    """A file whose model_config would run code (a Lambda layer) is read for its weights only."""
    path = _saved(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = '{"class_name": "Lambda", "config": {"function": "os.system"}}'
    assert read_biomedisa(path).n_labels == 3


# --------------------------------------------------------------------------------------- NCXT


def _reference_ncxt_state(depth, filts, classes, cin, prefix=""):
    """A state dict with NCXT's key names and shapes, written out independently of sxtdask."""
    g = torch.Generator().manual_seed(depth)
    state, outs = {}, cin
    for i in range(depth):
        ins, outs = outs, filts * 2 ** i
        for b, (a, o) in enumerate(((ins, outs), (outs, outs)), 1):
            state[f"down_convs.{i}.block{b}.conv.weight"] = torch.randn(o, a, 3, 3, 3, generator=g) * 0.2
            state[f"down_convs.{i}.block{b}.conv.bias"] = torch.randn(o, generator=g) * 0.1
    for j in range(depth - 1):
        ins, outs = outs, outs // 2
        state[f"up_convs.{j}.upconv.weight"] = torch.randn(ins, outs, 2, 2, 2, generator=g) * 0.2
        state[f"up_convs.{j}.upconv.bias"] = torch.randn(outs, generator=g) * 0.1
        for b, (a, o) in enumerate(((2 * outs, outs), (outs, outs)), 1):
            state[f"up_convs.{j}.block{b}.conv.weight"] = torch.randn(o, a, 3, 3, 3, generator=g) * 0.2
            state[f"up_convs.{j}.block{b}.conv.bias"] = torch.randn(o, generator=g) * 0.1
    state["conv_final.weight"] = torch.randn(classes, outs, 1, 1, 1, generator=g)
    state["conv_final.bias"] = torch.randn(classes, generator=g)
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("instancenorm", [True, False])
def test_ncxt_state_dict_loads_strictly(tmp_path, prefix, instancenorm):
    state = _reference_ncxt_state(3, 4, 3, 2, prefix)
    path = tmp_path / "ncxt.pt"
    torch.save(state, path)
    net = load_ncxt(path, instancenorm=instancenorm)
    assert infer_ncxt_config(state) == {"num_classes": 3, "in_channels": 2, "depth": 3,
                                        "start_filts": 4}
    same = NCXTUNet3D(3, 2, 3, 4, instancenorm=instancenorm)
    same.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    x = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), same.eval()(x))
        other = NCXTUNet3D(3, 2, 3, 4, instancenorm=not instancenorm)
        other.load_state_dict(net.state_dict())
        assert not torch.allclose(net(x), other.eval()(x))  # the norm option matters


def test_ncxt_extra_or_missing_key_is_refused(tmp_path):
    state = _reference_ncxt_state(2, 4, 2, 1)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_ncxt(state)
    state = _reference_ncxt_state(2, 4, 2, 1)
    del state["up_convs.0.upconv.bias"]
    with pytest.raises(CheckpointError, match="missing"):
        load_ncxt(state)


def test_ncxt_replicate_padding_differs_from_zeros():
    state = _reference_ncxt_state(2, 4, 2, 1)
    x = torch.rand(1, 1, 8, 8, 8) + 1.0
    with torch.no_grad():
        a = load_ncxt(state, padding="zeros")(x)
        b = load_ncxt(state, padding="replicate")(x)
    assert not torch.allclose(a, b)


def test_biomedisa_torch_shapes():
    net = BiomedisaUNet3D((2, 3, 4), channels=2, n_labels=4, resnet=True)
    out = net(torch.rand(1, 2, 8, 8, 8))
    assert out.shape == (1, 4, 8, 8, 8)
    assert torch.allclose(out.sum(1), torch.ones(1, 8, 8, 8), atol=1e-5)
    assert net.keras_names()["final"] == "conv_6_1"
