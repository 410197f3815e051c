"""Networks and checkpoints: iPA state dicts load unchanged; unsafe or unfit files are refused.

The iPA weights are not public; ``fixtures/ipa_checkpoints/*.json`` hold their exact parameter
names and shapes, from which random state dicts are made and saved with ``torch.save``.
Reference-width (64) networks are built once per kind; forward passes run at width 8.
"""

from __future__ import annotations

import json
import pathlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from sxtdask.errors import ConfigError, InputError, OutputError
from sxtdask.models import (
    CellNucleusUNet,
    CheckpointError,
    ModelKind,
    UNet,
    build_maskrcnn,
    build_unet,
    check_unet,
    infer_unet_config,
    load_state_dict_file,
    load_unet,
    load_weights,
    read_checkpoint_meta,
    save_checkpoint,
)

MANIFESTS = {
    ModelKind.CELL_NUCLEUS: ("cell_nucleus_unet", 1, 3),
    ModelKind.MITO: ("mito_unet", 3, 2),
    ModelKind.ISG: ("isg_unet", 1, 2),
}
KINDS = list(MANIFESTS)
IDS = [k.value for k in KINDS]


def manifest(fixtures_dir: pathlib.Path, kind: ModelKind) -> dict[str, list[int]]:
    with open(fixtures_dir / "ipa_checkpoints" / f"{MANIFESTS[kind][0]}.json") as fh:
        return json.load(fh)["state_dict"]


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the given names and shapes, as a trained checkpoint holds them."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1234, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.05
    return state


def shapes_of(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(name, list(t.shape)) for name, t in model.state_dict().items()]


@pytest.fixture(scope="module", params=KINDS, ids=IDS)
def reference(request, fixtures_dir, tmp_path_factory):
    """Per kind: the manifest, a random state dict saved bare and with ``module.``, and one
    reference-width model.
    """
    kind = request.param
    shapes = manifest(fixtures_dir, kind)
    state = random_state(shapes, seed=KINDS.index(kind))
    folder = tmp_path_factory.mktemp(kind.value)
    bare, prefixed = folder / f"{kind.value}_unet_best.pth", folder / "dataparallel.pth"
    torch.save(state, bare)
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    model = build_unet(kind)
    return kind, shapes, state, {"bare": bare, "module.": prefixed}, model


# ----------------------------------------------------------------------------- iPA compatibility


def test_reference_state_dict_equals_manifest(reference):
    _, shapes, _, _, model = reference
    assert shapes_of(model) == list(shapes.items())  # names, shapes and order
    assert model.state_dict()[next(k for k in shapes if "num_batches" in k)].ndim == 0


@pytest.mark.parametrize("layout", ["bare", "module."])
def test_reference_checkpoint_loads_strict(reference, layout):
    _, shapes, state, files, model = reference
    loaded = load_state_dict_file(files[layout])
    assert list(loaded) == list(shapes)
    assert load_weights(model, files[layout], strict=True) is model
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in shapes)


def test_infer_config_recovers_reference(reference):
    kind, _, state, files, _ = reference
    _, in_channels, n_classes = MANIFESTS[kind]
    expected = {"kind": kind, "width": 64, "in_channels": in_channels, "n_classes": n_classes}
    assert infer_unet_config(state) == expected
    assert infer_unet_config(load_state_dict_file(files["module."])) == expected
    assert infer_unet_config({f"module.{k}": v for k, v in state.items()}) == expected


@pytest.mark.parametrize("layout", ["bare", "module."])
def test_load_unet_rebuilds_reference(reference, layout):
    kind, shapes, state, files, _ = reference
    model = load_unet(files[layout])
    assert not model.training
    assert model.kind is kind and model.width == 64
    assert isinstance(model, CellNucleusUNet if kind is ModelKind.CELL_NUCLEUS else UNet)
    assert shapes_of(model) == list(shapes.items())
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in shapes)
    assert read_checkpoint_meta(files[layout]) is None
    if layout == "bare":  # one small forward pass at the reference width
        with torch.no_grad():
            out = model(torch.rand(1, model.in_channels, 32, 32))
        assert out.shape == (1, MANIFESTS[kind][2], 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_width_scales_every_channel_count(fixtures_dir, kind):
    """At width 8 the structure is the manifest's with every width-derived size divided by 8."""
    expected = [(k, [d // 8 if d % 64 == 0 else d for d in s])
                for k, s in manifest(fixtures_dir, kind).items()]
    model = build_unet(kind, width=8)
    assert shapes_of(model) == expected
    _, in_channels, n_classes = MANIFESTS[kind]
    assert infer_unet_config(model.state_dict()) == {
        "kind": kind, "width": 8, "in_channels": in_channels, "n_classes": n_classes}


def test_build_unet_options():
    model = build_unet("isg", width=4, in_channels=3, n_classes=5)
    assert (model.kind, model.width, model.in_channels, model.n_classes) == (ModelKind.ISG, 4, 3, 5)
    with pytest.raises(ConfigError, match="'nuclei' is not one of"):
        build_unet("nuclei")
    with pytest.raises(ConfigError, match="width"):
        build_unet(ModelKind.MITO, width=0)


# ------------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize(("kind", "shape", "out"), [
    (ModelKind.CELL_NUCLEUS, (2, 1, 288, 480), (2, 3, 288, 480)),
    (ModelKind.MITO, (2, 3, 64, 64), (2, 2, 64, 64)),
    (ModelKind.ISG, (1, 1, 64, 64), (1, 2, 64, 64)),
    (ModelKind.ISG, (1, 1, 50, 70), (1, 2, 50, 70)),  # padded like the reference
], ids=["cell-288x480", "mito-64", "isg-64", "isg-50x70"])
def test_forward_shapes(kind, shape, out):
    torch.manual_seed(0)
    model = build_unet(kind, width=8).eval()
    with torch.no_grad():
        y = model(torch.rand(shape))
    assert y.shape == out and torch.isfinite(y).all()


def test_cell_unet_dropout_and_size_rule():
    torch.manual_seed(0)
    model = build_unet(ModelKind.CELL_NUCLEUS, width=8)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.5
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))  # no dropout in eval mode
        model.train()
        assert not torch.equal(model(x), model(x))  # dropout in training mode
        with pytest.raises(ConfigError, match=r"\(33, 48\) must be divisible by 16"):
            model(torch.rand(1, 1, 33, 48))


# ------------------------------------------------------------------------------- refusals


class _Evil:
    """Unpickling this calls ``Path.touch(marker)``: code run by merely loading the file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_pickle_is_refused_unrun(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil(marker)}, path)
    for call in (load_state_dict_file, read_checkpoint_meta, load_unet,
                 lambda p: load_weights(build_unet("isg", width=2), p)):
        with pytest.raises(CheckpointError) as err:
            call(path)
        msg = str(err.value)
        assert "not a weights-only checkpoint" in msg and "nothing in it was run" in msg
        assert str(path) in msg and "\n" not in msg
        assert not marker.exists()
    # the file really is armed: an unsafe load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_full_model_pickle_is_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(build_unet("isg", width=2), path)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        load_state_dict_file(path)


@pytest.mark.parametrize(("content", "match"), [
    (None, "no such checkpoint file"),
    (b"", "not a readable PyTorch checkpoint"),
    (b"hello, this is not a torch file\n", "not a readable PyTorch checkpoint"),
    ("truncated", "not a readable PyTorch checkpoint"),
    ("directory", "is a directory"),
    ("list", "holds a list, not a state dict"),
    ("no-state", r"holds no state dict: its top-level keys \(epoch, optimizer\)"),
    ("bad-entry", "entry 'b' is a str, not a tensor"),
    ("future", "format version 2; this sxtdask reads version 1"),
], ids=["missing", "empty", "text", "truncated", "directory", "list", "no-state", "bad-entry",
        "future"])
def test_unreadable_files_raise_checkpoint_error(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == "directory":
        path.mkdir()
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "no-state":
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    elif content == "bad-entry":
        torch.save({"state_dict": {"a": torch.zeros(1), "b": "x"}}, path)
    elif content == "future":
        torch.save({"format": "sxtdask-checkpoint", "version": 2, "meta": {},
                    "state_dict": {"a": torch.zeros(1)}}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_state_dict_file(path)
    assert isinstance(err.value, InputError)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dicts_are_found(tmp_path, wrapper):
    model = build_unet("isg", width=2)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "train.pth"
    torch.save({"epoch": 7, "best_dice": 0.9, wrapper: state, "optimizer": {"lr": 1e-3}}, path)
    assert list(load_state_dict_file(path)) == list(model.state_dict())
    load_weights(model, path)
    load_weights(model, {wrapper: state})  # in memory too


# ------------------------------------------------------------------------------- mismatches


def test_mismatch_names_missing_unexpected_and_misshaped(tmp_path):
    state = build_unet("mito", width=8).state_dict()  # 3 input channels
    del state["outc.conv.weight"], state["outc.conv.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "isg.pth"
    torch.save(state, path)
    model = build_unet("isg", width=8)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert msg.startswith(f"{path} does not fit UNet(width=8, in_channels=1, n_classes=2): ")
    assert "2 missing (outc.conv.weight, outc.conv.bias)" in msg
    assert "1 unexpected (extra.weight)" in msg
    assert "1 mis-shaped (inc.double_conv.0.weight: file [8, 3, 3, 3] vs model [8, 1, 3, 3])" in msg
    with pytest.raises(CheckpointError, match="1 mis-shaped"):  # shapes matter even if not strict
        load_weights(model, path, strict=False)


def test_mismatch_counts_and_hint_for_another_width(tmp_path):
    path = tmp_path / "cell16.pth"
    torch.save(build_unet("cell", width=16).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(build_unet("cell", width=8), path)
    msg = str(err.value)
    assert "0 missing, 0 unexpected, 133 mis-shaped (conv1.conv.0.weight: file [16, 1, 3, 3]" in msg
    assert msg.count(" vs model ") == 3 and ", …)" in msg
    assert "it holds a cell U-Net with width=16, in_channels=1, n_classes=3" in msg
    assert load_unet(path).width == 16


def test_non_strict_load_skips_missing_and_unexpected():
    model = build_unet("isg", width=4)
    state = dict(model.state_dict())
    state.pop("outc.conv.bias")
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="1 missing"):
        load_weights(model, state)
    load_weights(model, state, strict=False)


def test_infer_rejects_other_networks():
    with pytest.raises(CheckpointError, match="not an iPA U-Net state dict"):
        infer_unet_config({"fc.weight": torch.zeros(2, 2)})
    state = build_unet("isg", width=4).state_dict()
    state.pop("up1.up.weight")
    with pytest.raises(CheckpointError, match="bilinear"):
        infer_unet_config(state)


# ------------------------------------------------------------------------------- sxtdask format


def test_sxtdask_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_unet(ModelKind.MITO, width=8)
    model.eval()
    path = tmp_path / "mito.pth"
    meta = {"task": "mito", "preprocessing": {"clip_percentiles": (0.5, 99.5), "z_context": 1}}
    assert save_checkpoint(path, model, meta) == path
    assert [p.name for p in tmp_path.iterdir()] == ["mito.pth"]  # no temporary left behind
    assert read_checkpoint_meta(path) == {
        "architecture": "UNet", "kind": "mito", "width": 8, "in_channels": 3, "n_classes": 2,
        "task": "mito", "preprocessing": {"clip_percentiles": [0.5, 99.5], "z_context": 1}}
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "sxtdask-checkpoint" and raw["version"] == 1
    state = load_state_dict_file(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    again = load_unet(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_sxtdask_checkpoint_keeps_kind_and_checks_meta(tmp_path):
    isg3 = build_unet(ModelKind.ISG, width=4, in_channels=3)  # would be inferred as mito
    path = tmp_path / "isg3.pth"
    save_checkpoint(path, isg3, {"task": "isg"})
    assert load_unet(path).kind is ModelKind.ISG
    assert infer_unet_config(load_state_dict_file(path))["kind"] is ModelKind.MITO
    assert load_unet(path, kind="mito").kind is ModelKind.MITO
    with pytest.raises(CheckpointError, match="holds a mito U-Net, not a cell one"):
        load_unet(path, kind=ModelKind.CELL_NUCLEUS)
    with pytest.raises(ConfigError, match="width=16 contradicts the model"):
        save_checkpoint(path, isg3, {"width": 16})
    with pytest.raises(ConfigError, match="JSON-able"):
        save_checkpoint(path, isg3, {"spacing": {1, 2}})
    with pytest.raises(OutputError, match="does not exist"):
        save_checkpoint(tmp_path / "nowhere" / "x.pth", isg3, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["isg3.pth"]
    assert load_unet(path).kind is ModelKind.ISG  # the failed saves left the file intact


def _saved_with(tmp_path, change, kind="isg"):
    """An sxtdask checkpoint of a width-2 U-Net whose payload ``change`` edited before saving."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_unet(kind, width=2), {
        "task": kind, "preprocessing": {"name": "percentile", "context": 0}})
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def _meta_set(path, value):
    def change(payload):
        *parents, last = path.split(".")
        node = payload["meta"]
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return change


@pytest.mark.parametrize(("change", "match"), [
    (_meta_set("width", 10**9), "'width' must be an integer from 1 to 256, not 1000000000"),
    (_meta_set("width", "2"), r"'width' must be an integer from 1 to 256, not '2' \(a str\)"),
    (_meta_set("in_channels", True), r"'in_channels' must be an integer .*, not True \(a bool\)"),
    (_meta_set("n_classes", 2.0), "'n_classes' must be an integer .*, not 2.0"),
    (_meta_set("kind", "nuclei"), "'kind' must be one of 'cell', 'mito', 'isg', not 'nuclei'"),
    (_meta_set("kind", "cell"), "'kind' must be 'mito' or 'isg' for architecture 'UNet'"),
    (_meta_set("architecture", "Evil()"), "'architecture' must be a class name"),
    (_meta_set("architecture", "CellNucleusUNet"), "'kind' must be 'cell' for architecture"),
    (_meta_set("preprocessing.std", -1.0),
     "'preprocessing.std' must be a positive finite number .*, not -1.0"),
    (_meta_set("preprocessing.mean", [float("nan")]), "'preprocessing.mean' must be a finite"),
    (_meta_set("preprocessing.context", 1000), "'preprocessing.context' must be an integer"),
    (_meta_set("preprocessing.context", 1), r"'preprocessing.context' \(1\) needs in_channels 3"),
    (_meta_set("preprocessing.name", "magic"), "'preprocessing.name' must be one of"),
    (_meta_set("preprocessing.percentiles", [99.5, 0.5]), "'preprocessing.percentiles' must"),
    (_meta_set("preprocessing", [1, 2]), "'preprocessing' must be a mapping, not"),
    (_meta_set("voxel_size_nm", [30.0, float("inf"), 30.0]), "'voxel_size_nm' must be three"),
    (_meta_set("voxel_size_nm", [30.0, 0.0, 30.0]), "'voxel_size_nm' must be three positive"),
    (_meta_set("threshold", 1.5), "'threshold' must be a number strictly between 0 and 1"),
    (_meta_set("classes", ["background", "isg", "extra"]), "'classes' must name 2 classes"),
    (_meta_set("classes", "isg"), "'classes' must be a list"),
    (_meta_set("num_classes", 5), "class counts disagree"),
    (lambda p: p["meta"].update(model={"min_size": 64, "max_size": 8}),
     r"'model.max_size' \(8\) must be at least 'model.min_size' \(64\)"),
    (_meta_set("model.min_size", 10**6), "'model.min_size' must be an integer from 1 to 8192"),
    (_meta_set("task", "x" * 500), "'task' must be a non-empty one-line string"),
    (_meta_set("notes", torch.zeros(2, 2)), "'notes' must hold only JSON values .* tensor"),
    (_meta_set("notes", {3: "x"}), "has a key 3; keys must be strings"),
    (_meta_set("notes", [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]), "exceeds 16 levels"),
    (lambda p: p["meta"].pop("width"), "'width' is missing"),
    (lambda p: p.update(meta=[1]), "no 'meta' dict"),
    (lambda p: p.update(version=True), r"format version True \(a bool\)"),
    (lambda p: p.update(version=torch.ones(3)), "format version a torch.float32 tensor"),
    (lambda p: p["state_dict"]["outc.conv.bias"].fill_(float("nan")),
     "entry 'outc.conv.bias' holds NaN or infinite values"),
    (lambda p: p["state_dict"].update({"outc.conv.weight": torch.zeros(()).expand(2, 2, 1, 1)}),
     r"claims shape \[2, 2, 1, 1\] from a storage of 4 bytes \(an expanded view\)"),
    (lambda p: p["state_dict"].update({"outc.conv.bias": torch.zeros(2, dtype=torch.complex64)}),
     "has dtype torch.complex64"),
    (lambda p: p["state_dict"].update({"outc.conv.bias": torch.zeros(2).to_sparse()}),
     "is a torch.sparse_coo tensor"),
    (lambda p: p["state_dict"].update({"bad\nkey": torch.zeros(1)}), "is not a parameter name"),
], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_checkpoint_fields_are_checked_before_use(tmp_path, change, match):
    path = _saved_with(tmp_path, change)
    for call in (read_checkpoint_meta, load_unet):
        with pytest.raises(CheckpointError, match=match) as err:
            call(path)
        msg = str(err.value)
        assert msg.startswith(str(path)) and "\n" not in msg, msg


@pytest.mark.parametrize(("change", "match"), [
    (lambda p: p["state_dict"].update({"inc.double_conv.0.weight": torch.zeros(300, 1, 3, 3)}),
     "its weights give width=300; sxtdask builds U-Nets with width from 1 to 256"),
    (lambda p: p["state_dict"].update({"outc.conv.bias": torch.zeros(2, dtype=torch.int64)}),
     r"1 mis-typed \(outc.conv.bias: file torch.int64 vs model torch.float32\)"),
], ids=["absurd-width-from-shapes", "integer-weight"])
def test_weights_are_checked_before_building(tmp_path, change, match):
    path = _saved_with(tmp_path, change)
    for call in (load_unet, check_unet):
        with pytest.raises(CheckpointError, match=match) as err:
            call(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_metadata_architecture_must_match_the_weights(tmp_path):
    path = _saved_with(tmp_path, _meta_set("architecture", "ResNet"))
    assert read_checkpoint_meta(path)["architecture"] == "ResNet"  # a valid name ...
    with pytest.raises(CheckpointError, match="architecture='ResNet' but its weights are a UNet"):
        load_unet(path)  # ... that is not what the weights hold


def test_unknown_metadata_is_kept(tmp_path):
    path = _saved_with(tmp_path, _meta_set("preprocessing.z_context", "any"))
    assert read_checkpoint_meta(path)["preprocessing"]["z_context"] == "any"
    load_unet(path)


@pytest.mark.parametrize("damage", ["flip-data", "flip-pickle", "compressed"])
def test_damaged_zip_is_refused(tmp_path, damage):
    """PyTorch reads tensor data without checking its CRC: a flipped byte would load as another
    weight. sxtdask checks every record first.
    """
    import zipfile

    path = _saved_with(tmp_path, lambda p: None)
    if damage == "compressed":
        with zipfile.ZipFile(path) as src:
            records = [(i.filename, src.read(i)) for i in src.infolist()]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for name, data in records:
                dst.writestr(name, data)
        match = "is compressed"
    else:
        with zipfile.ZipFile(path) as z:
            info = next(i for i in z.infolist() if i.filename.endswith(
                "/data/0" if damage == "flip-data" else "/data.pkl"))
        raw = bytearray(path.read_bytes())
        name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:][:2], "little"), \
            int.from_bytes(raw[info.header_offset + 28:][:2], "little")
        raw[info.header_offset + 30 + name_len + extra_len + 3] ^= 0x10
        path.write_bytes(bytes(raw))
        match = "fails its CRC check"
    with pytest.raises(CheckpointError, match=match) as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_save_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    save_checkpoint(path, build_unet("isg", width=2), {"epoch": 1})
    import sxtdask.models._checkpoint as ckpt

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OutputError, match="No space left on device"):
        save_checkpoint(path, build_unet("isg", width=2), {"epoch": 2})
    monkeypatch.undo()
    assert read_checkpoint_meta(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def test_dataparallel_model_saves_and_loads_without_prefix(tmp_path):
    model = build_unet("isg", width=2)
    wrapped = torch.nn.DataParallel(model)
    path = tmp_path / "dp.pth"
    save_checkpoint(path, wrapped, {})
    assert all(not k.startswith("module.") for k in load_state_dict_file(path))
    torch.save(wrapped.state_dict(), tmp_path / "dp_raw.pth")  # keys start with module.
    load_weights(wrapped, tmp_path / "dp_raw.pth")
    load_weights(model, tmp_path / "dp_raw.pth")


# ------------------------------------------------------------------------------- Mask R-CNN


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import torch.hub
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args!r}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse, raising=False)


def test_maskrcnn_builds_offline_and_detects(no_downloads, recwarn):
    torch.manual_seed(0)
    model = build_maskrcnn(2, min_size=128, max_size=128)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 128, 128)])
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    k = out["boxes"].shape[0]
    assert out["boxes"].shape == (k, 4) and out["masks"].shape == (k, 1, 128, 128)
    assert not [w for w in recwarn if "trainable_backbone_layers" in str(w.message)]


def test_maskrcnn_trainable_backbone_layers(no_downloads):
    model = build_maskrcnn(trainable_backbone_layers=2)
    trainable = {n.split(".")[0] for n, p in model.backbone.body.named_parameters()
                 if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    with pytest.raises(ConfigError, match="between 0 and 5"):
        build_maskrcnn(trainable_backbone_layers=6)


def test_public_api():
    from sxtdask import models

    expected = {"ModelKind", "build_unet", "build_maskrcnn", "load_state_dict_file",
                "load_weights", "load_unet", "save_checkpoint", "read_checkpoint_meta",
                "infer_unet_config", "CheckpointError"}
    assert expected <= set(models.__all__)
    assert all(hasattr(models, name) for name in models.__all__)
    assert [k.value for k in ModelKind] == ["cell", "mito", "isg"]
    assert issubclass(CheckpointError, InputError)
