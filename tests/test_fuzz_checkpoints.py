"""Fuzzed checkpoints: a broken or hostile file is one ``SxtdaskError`` line, never a traceback.

Every test starts from a valid narrow U-Net checkpoint in sxtdask's format (width 2, ISG and
mito) and breaks something: metadata fields (wrong types, out-of-range values, deletions), state
dict entries, the top-level object, the file's bytes (truncated, flipped, padded), or the whole
file (foreign formats, pickles with hostile globals). Exactly one of two outcomes is allowed:

- the file loads (``check_unet``, ``read_checkpoint_meta``, ``load_unet`` and, for metadata, the
  segmenter's ``load_model``) and the network predicts bit for bit what the original predicts on a
  small input (the change was equivalent: a ``module.`` prefix, a float64 copy, ...), or
- loading raises one :class:`~sxtdask.errors.SxtdaskError` whose message is one line naming
  the file.

Anything else (another exception, a different prediction, code run from the file) fails.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import InvalidArgument  # noqa: E402

from sxtdask.errors import SxtdaskError  # noqa: E402
from sxtdask.models import (  # noqa: E402
    build_unet,
    check_unet,
    load_unet,
    read_checkpoint_meta,
    save_checkpoint,
)
from sxtdask.segmenters import Task, UNetSegmenter  # noqa: E402

WIDTH = 2
# torch's own notes on what it meets in a fuzzed file (a sparse tensor, a foreign pickle protocol)
pytestmark = [pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants"),
              pytest.mark.filterwarnings("ignore:Detected pickle protocol")]
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def fuzz(examples: int) -> settings:
    """Hypothesis settings of these tests: ``examples`` cases, no deadline (torch I/O varies)."""
    return settings(deadline=None, max_examples=examples, suppress_health_check=_HEALTH)

_counter = itertools.count()


@dataclass(frozen=True)
class Base:
    """A valid checkpoint: its file, its loaded payload, and what its network predicts."""

    path: Path
    payload: dict[str, Any]
    task: Task
    x: Any
    expected: Any

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing case
        return f"Base({self.path.name})"


def _meta(kind: str, context: int) -> dict[str, Any]:
    classes = ["background", kind]
    return {
        "task": kind, "classes": classes,
        "preprocessing": {"name": "percentile", "percentiles": [0.5, 99.5], "resize": None,
                          "context": context},
        "trained_by": "sxtdask (fuzz fixture)", "train_data": ["a.zarr"], "val_data": [],
        "voxel_size_nm": [30.0, 30.0, 30.0], "epoch": 3, "stored_as": "float32",
        "metrics": {"epoch": 3, "val_dice": 0.5}, "config": {"task": kind, "lr": 0.004},
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Base]:
    folder = tmp_path_factory.mktemp("bases")
    out = {}
    for seed, (kind, task, context) in enumerate([("isg", Task.ISG, 0),
                                                  ("mito", Task.MITO, 1)]):
        torch.manual_seed(seed)
        net = build_unet(kind, width=WIDTH)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        path = save_checkpoint(folder / f"{kind}.pt", net.eval(), _meta(kind, context))
        x = torch.rand(2, net.in_channels, 16, 16, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            expected = load_unet(path)(x)
        payload = torch.load(path, map_location="cpu", weights_only=True)
        out[kind] = Base(path, payload, task, x, expected)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed")


def _fresh(work: Path) -> Path:
    return work / f"case{next(_counter)}.pt"


def _copy(payload: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the containers; tensors are shared (mutations replace, never edit them)."""
    def copy(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: copy(i) for k, i in v.items()}
        if isinstance(v, list):
            return [copy(i) for i in v]
        return v

    return copy(payload)


def outcome(path: Path, base: Base, *, segmenter: bool = False) -> str:
    """``"loaded"`` (and predicting as the original) or ``"refused"`` (one SxtdaskError line)."""
    try:
        check_unet(path)
        read_checkpoint_meta(path)
        net = load_unet(path)
        if segmenter:
            UNetSegmenter(task=base.task, device="cpu").load_model(path)
    except SxtdaskError as err:
        message = str(err)
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert str(path) in message, f"the message does not name the file: {message!r}"
        assert len(message) < 1000, f"message of {len(message)} characters"
        _event(f"refused: {type(err).__name__}")
        return "refused"
    with torch.no_grad():
        got = net(base.x)
    assert torch.equal(got, base.expected), "loaded, but predicts differently from the original"
    _event("loaded")
    return "loaded"


def _event(text: str) -> None:
    """Count an outcome in hypothesis' statistics (outside a hypothesis test, nothing)."""
    with contextlib.suppress(InvalidArgument):
        event(text)


# ----------------------------------------------------------------------------- metadata fields

FIELDS = [
    "architecture", "kind", "width", "in_channels", "n_classes", "num_classes", "task",
    "classes", "threshold", "voxel_size_nm", "epoch", "patch", "stored_as", "trained_by",
    "train_data", "val_data", "metrics", "config", "preprocessing", "preprocessing.name",
    "preprocessing.context", "preprocessing.percentiles", "preprocessing.resize",
    "preprocessing.factor", "preprocessing.clip", "preprocessing.channels", "preprocessing.mean",
    "preprocessing.std", "model", "model.num_classes", "model.min_size", "model.max_size",
    "notes", "preprocessing.extra", "config.lr", "metrics.val_dice",  # unknown: kept, unchecked
]


def _deep(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth):
        value = [value]
    return value


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(-2**70, 2**70),
    st.floats(), st.floats(0, 1), st.text(max_size=12),
    st.sampled_from(["cell", "mito", "isg", "percentile", "reference", "lac", "UNet",
                     "CellNucleusUNet", "MaskRCNN", "float16", "a\nb", ""]),
)
values = st.one_of(
    st.recursive(scalars, lambda c: st.one_of(
        st.lists(c, max_size=4), st.tuples(c, c),
        st.dictionaries(st.text(max_size=6), c, max_size=3)), max_leaves=8),
    st.builds(lambda n: torch.zeros(n), st.integers(0, 3)),
    st.builds(_deep, st.integers(10, 40)),
    st.text(min_size=250, max_size=300),
    st.dictionaries(st.integers(0, 3), scalars, min_size=1, max_size=2),
    st.sampled_from([b"bytes", complex(1, 2), torch.float32, torch.Size([2]),
                     [0.5, float("nan")], [30.0, -30.0, 30.0], [1e308, 1e308, 1e308],
                     [99.5, 0.5], 10**9, 2**63, -1.0, float("inf")]),
)
mutation = st.tuples(st.sampled_from(["set", "delete"]), st.sampled_from(FIELDS), values)


def _apply(meta: dict[str, Any], op: str, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = meta
    for part in parents:
        if not isinstance(node.get(part), dict):
            if op == "delete":
                return
            node[part] = {}
        node = node[part]
    if op == "delete":
        node.pop(last, None)
    else:
        node[last] = value


@fuzz(100)
@given(kind=st.sampled_from(["isg", "mito"]), mutations=st.lists(mutation, min_size=1, max_size=3))
def test_fuzzed_metadata(bases, work, kind, mutations):
    base = bases[kind]
    payload = _copy(base.payload)
    for op, path, value in mutations:
        _apply(payload["meta"], op, path, value)
    path = _fresh(work)
    torch.save(payload, path)
    outcome(path, base, segmenter=True)


@pytest.mark.parametrize(("field", "value"), [
    ("width", 10**9), ("width", "8"), ("width", True), ("in_channels", 0), ("n_classes", 2.0),
    ("kind", "nuclei"), ("preprocessing.std", -1.0), ("preprocessing.context", 1000),
    ("voxel_size_nm", [30.0, float("nan"), 30.0]), ("threshold", 1.5), ("classes", "isg"),
], ids=lambda v: str(v)[:12])
def test_known_bad_metadata_is_refused(bases, work, field, value):
    """Sanity of the fuzzing: these values are refused, naming the field."""
    payload = _copy(bases["isg"].payload)
    _apply(payload["meta"], "set", field, value)
    path = _fresh(work)
    torch.save(payload, path)
    assert outcome(path, bases["isg"], segmenter=True) == "refused"
    with pytest.raises(SxtdaskError, match=f"metadata '{field}'"):
        read_checkpoint_meta(path)


# ----------------------------------------------------------------------------- state dict entries

STATE_OPS = ["non-tensor", "reshape", "int64", "int32", "bool", "complex", "float64", "nan",
             "inf", "delete", "extra", "rename", "expand", "sparse", "meta-device", "permuted",
             "module-prefix", "empty", "key-type", "key-newline"]


def _expected(op: str, t: Any) -> str | None:
    """What a state dict change must give: an equivalent one loads, a breaking one is refused."""
    integer = not t.is_floating_point()  # num_batches_tracked
    if op in ("permuted", "module-prefix") or op == ("int64" if integer else "float64") or (
            op == "int32" and integer):
        return "loaded"
    if op == "expand" and t.numel() <= 1:
        return None  # one element: the same shape, another value, unused in eval mode
    return "refused"


def _mutate_state(state: dict[str, Any], op: str, key: str, data: st.DataObject) -> dict[str, Any]:
    t = state[key]
    if op == "non-tensor":
        state[key] = data.draw(st.one_of(scalars, st.lists(st.floats(), max_size=3)))
    elif op == "reshape":
        shape = data.draw(st.lists(st.integers(0, 5), max_size=4).filter(
            lambda s: s != list(t.shape)))
        state[key] = torch.zeros(shape)
    elif op in ("int64", "int32", "bool", "complex", "float64"):
        dtype = {"int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
                 "complex": torch.complex64, "float64": torch.float64}[op]
        state[key] = t.to(dtype)
    elif op in ("nan", "inf"):
        bad = t.double().clone().reshape(-1)
        bad[data.draw(st.integers(0, max(0, bad.numel() - 1)))] = float(op)
        state[key] = bad.reshape(t.shape).to(t.dtype if t.is_floating_point() else torch.float32)
    elif op == "delete":
        del state[key]
    elif op == "extra":
        state[data.draw(st.text(min_size=1, max_size=8)) + ".extra"] = torch.zeros(2)
    elif op == "rename":
        state[key + "_renamed"] = state.pop(key)
    elif op == "expand":
        state[key] = torch.zeros((), dtype=t.dtype).expand(t.shape)  # one stored element
    elif op == "sparse":
        state[key] = t.to_sparse()
    elif op == "meta-device":
        state[key] = torch.empty_like(t, device="meta")
    elif op == "permuted":  # the same values in another memory layout
        order = list(range(t.ndim))[::-1]
        state[key] = t.permute(order).contiguous().permute(order)
    elif op == "module-prefix":
        return {f"module.{k}": v for k, v in state.items()}
    elif op == "empty":
        return {}
    elif op == "key-type":
        state[data.draw(st.one_of(st.integers(), st.none()))] = state.pop(key)
    elif op == "key-newline":
        state[key + "\nfake"] = state.pop(key)
    return state


@fuzz(60)
@given(kind=st.sampled_from(["isg", "mito"]), op=st.sampled_from(STATE_OPS), data=st.data())
def test_fuzzed_state_dict(bases, work, kind, op, data):
    base = bases[kind]
    payload = _copy(base.payload)
    key = data.draw(st.sampled_from(sorted(payload["state_dict"])))
    payload["state_dict"] = _mutate_state(payload["state_dict"], op, key, data)
    path = _fresh(work)
    try:
        torch.save(payload, path)
    except (RuntimeError, TypeError, NotImplementedError):  # torch cannot save it: nothing to load
        return
    result = outcome(path, base)
    expected = _expected(op, base.payload["state_dict"][key])
    assert expected in (None, result), f"{op} of {key}: {result}, not {expected}"


# ----------------------------------------------------------------------------- top-level object

TOP_OPS = ["list", "tensor", "text", "number", "none", "bare", "wrapped", "version", "format",
           "meta", "state_dict", "drop-format", "drop-version", "drop-meta", "drop-state_dict"]


@fuzz(40)
@given(kind=st.sampled_from(["isg", "mito"]), op=st.sampled_from(TOP_OPS), value=values)
def test_fuzzed_top_level(bases, work, kind, op, value):
    base = bases[kind]
    payload: Any = _copy(base.payload)
    state = payload["state_dict"]
    if op == "list":
        payload = [state]
    elif op == "tensor":
        payload = torch.zeros(3)
    elif op == "text":
        payload = "state_dict"
    elif op == "number":
        payload = 1
    elif op == "none":
        payload = None
    elif op == "bare":
        payload = state
    elif op == "wrapped":
        payload = {"epoch": 3, "model": state, "optimizer": {"lr": 0.1}}
    elif op in ("version", "format", "meta", "state_dict"):
        payload[op] = value
    else:
        payload.pop(op.removeprefix("drop-"))
    path = _fresh(work)
    torch.save(payload, path)
    outcome(path, base)


# ----------------------------------------------------------------------------- the file's bytes

byte_edits = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                  st.integers(1, 255)), min_size=1, max_size=3)),
    st.tuples(st.just("zero"), st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 64))),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("insert"), st.tuples(st.floats(0, 1, exclude_max=True),
                                           st.binary(min_size=1, max_size=8))),
)


def _edit(raw: bytes, edit: tuple[str, Any]) -> bytes:
    op, arg = edit
    b = bytearray(raw)
    if op == "truncate":
        return bytes(b[: int(arg * len(b))])
    if op == "flip":
        for where, mask in arg:
            b[int(where * len(b))] ^= mask
    elif op == "zero":
        start = int(arg[0] * len(b))
        b[start: start + arg[1]] = bytes(len(b[start: start + arg[1]]))
    elif op == "append":
        b += arg
    elif op == "insert":
        at = int(arg[0] * len(b))
        b[at:at] = arg[1]
    return bytes(b)


@fuzz(80)
@given(kind=st.sampled_from(["isg", "mito"]), edit=byte_edits)
def test_fuzzed_bytes(bases, work, kind, edit):
    base = bases[kind]
    path = _fresh(work)
    path.write_bytes(_edit(base.path.read_bytes(), edit))
    result = outcome(path, base)
    if edit[0] == "truncate":
        assert result == "refused"


# ----------------------------------------------------------------------------- foreign and hostile


def _hostile_pickle(module: str, name: str, marker: Path, protocol: int) -> bytes:
    """A pickle that calls ``module.name("touch marker")`` when unpickled (GLOBAL + REDUCE)."""
    arg = f"touch {marker}".encode()
    head = b"\x80" + bytes([protocol]) if protocol >= 2 else b""
    return (head + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(arg)) + arg + b"\x85R.")


def _in_torch_zip(pickled: bytes, base: Path) -> bytes:
    """The base checkpoint's zip with its ``data.pkl`` replaced (CRCs consistent)."""
    out = io.BytesIO()
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


@fuzz(40)
@given(target=st.sampled_from([("os", "system"), ("posix", "system"), ("builtins", "eval"),
                               ("builtins", "exec"), ("subprocess", "getoutput"),
                               ("torch", "load"), ("pathlib", "Path")]),
       protocol=st.sampled_from([0, 2, 4]), in_zip=st.booleans())
def test_hostile_pickles_are_refused_unrun(bases, work, target, protocol, in_zip):
    marker = work / f"MARKER{next(_counter)}"
    raw = _hostile_pickle(*target, marker, protocol)
    path = _fresh(work)
    path.write_bytes(_in_torch_zip(raw, bases["isg"].path) if in_zip else raw)
    assert outcome(path, bases["isg"]) == "refused"
    assert not marker.exists(), "code from the file ran"


foreign = st.one_of(
    st.binary(max_size=512).map(lambda b: ("raw", b)),
    st.lists(st.tuples(st.text("abcdef/._", min_size=1, max_size=12), st.binary(max_size=64),
                       st.booleans()), min_size=1, max_size=4, unique_by=lambda m: m[0],
             ).map(lambda m: ("zip", m)),
    st.sampled_from(["npy", "npz", "pickle-list", "pickle-dict", "json"]).map(lambda k: (k, None)),
)


def _foreign_bytes(kind: str, arg: Any) -> bytes:
    import numpy as np

    if kind == "raw":
        return arg
    out = io.BytesIO()
    if kind == "zip":  # a zip that is not a torch archive (some records compressed)
        with zipfile.ZipFile(out, "w") as z:
            for name, data, packed in arg:
                z.writestr(name, data, zipfile.ZIP_DEFLATED if packed else zipfile.ZIP_STORED)
    elif kind == "npy":
        np.save(out, np.zeros((2, 2)))
    elif kind == "npz":
        np.savez_compressed(out, a=np.zeros(3))
    elif kind == "pickle-list":
        pickle.dump([1.0, 2.0], out)
    elif kind == "pickle-dict":
        pickle.dump({"state_dict": {"w": [1.0]}}, out)
    else:
        out.write(b'{"state_dict": {}}')
    return out.getvalue()


@fuzz(40)
@given(content=foreign)
def test_foreign_files_are_refused(bases, work, content):
    path = _fresh(work)
    path.write_bytes(_foreign_bytes(*content))
    assert outcome(path, bases["isg"]) == "refused"
