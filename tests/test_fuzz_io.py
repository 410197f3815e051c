"""Fuzz tests of every reader: hostile and broken input is read whole and right, or refused in one line.

Each example ends in exactly one of two outcomes: the reader returns the whole volume and it equals
what an independent reference reader (a few lines of NumPy per format) makes of the same bytes, or it
raises one :class:`~sxtdask.errors.SxtdaskError` whose message is one line naming the file. Any other
exception, a partial volume or different numbers fail the test. Strategies marked *benign* only make
inputs that must be read.

Example counts are set per test (``EXAMPLES``); ``SXTDASK_FUZZ_SCALE=10`` multiplies them for a
deeper local run. ``pytest tests/test_fuzz_io.py --hypothesis-show-statistics`` shows them.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sxtdask.errors import SxtdaskError
from sxtdask.io import (
    HeaderWarning,
    labels_complete,
    list_labels,
    open_image,
    open_labels,
    open_volume,
    read_block,
    write_image,
    write_labels,
)

SCALE = float(os.environ.get("SXTDASK_FUZZ_SCALE", "1"))
EXAMPLES = {
    "mrc_benign": 40, "mrc_hostile": 150, "amira": 150, "tiff_pages": 80, "tiff_damaged": 60,
    "npy": 150, "ome_attrs": 120, "ome_arrays": 100, "ome_chunks": 50, "ome_labels": 50,
}


def fuzz(name: str) -> Any:
    """Hypothesis settings for the fuzz test ``name`` (its example count from :data:`EXAMPLES`)."""
    return settings(max_examples=max(1, int(EXAMPLES[name] * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sxtdask-fuzz-") as d:
        yield Path(d)


def outcome(name: str, read: Callable[[], Any]) -> Any:
    """Run ``read``; return its value, or None after checking the SxtdaskError is one line naming ``name``.

    Any other exception propagates (and fails the test). HeaderWarning (a damaged header read with a
    fallback value) is allowed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HeaderWarning)
            value = read()
    except SxtdaskError as err:
        msg = str(err)
        assert msg.strip() and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
        assert name in msg, f"message does not name {name!r}: {msg!r}"
        event("refused", type(err).__name__)
        return None
    event("read")
    return value


def read_volume(path: Path) -> Callable[[], tuple[np.ndarray, tuple[float, ...]]]:
    def read() -> tuple[np.ndarray, tuple[float, ...]]:
        vol = open_volume(path)
        try:
            data = vol.read(0, vol.shape[0])
            assert data.shape == vol.shape and data.dtype == vol.dtype
            return data, vol.voxel_size_nm
        finally:
            vol.close()

    return read


def check_volume(path: Path, expected: np.ndarray | None, must_read: bool = False) -> bool:
    """Open and read ``path`` whole; compare with ``expected`` (None: nothing is well defined)."""
    got = outcome(path.name, read_volume(path))
    if got is None:
        assert not must_read, f"{path.name}: refused an input that must be read"
        return False
    data, voxel = got
    assert expected is not None, f"{path.name}: read {data.shape} {data.dtype} from an ill-defined input"
    assert len(voxel) == 3 and all(math.isfinite(v) and v > 0 for v in voxel), voxel
    assert data.shape == expected.shape, (data.shape, expected.shape)
    assert data.dtype == expected.dtype.newbyteorder("="), (data.dtype, expected.dtype)
    np.testing.assert_array_equal(data, expected)
    return True


def small_volume(draw: Any, dtypes: tuple[str, ...], max_side: int = 5) -> np.ndarray:
    shape = draw(st.tuples(*(st.integers(2, max_side),) * 3))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


# --- MRC ----------------------------------------------------------------------------------------

MRC_MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
IMOD_STAMP = 1146047817


def mrc_bytes(data: np.ndarray, voxel: float = 12.5) -> bytes:
    with scratch() as d:
        with mrcfile.new(d / "x.mrc") as mrc:
            mrc.set_data(data)
            mrc.voxel_size = voxel
        return (d / "x.mrc").read_bytes()


def mrc_reference(raw: bytes) -> tuple[np.ndarray | None, tuple[float, float, float]]:
    """What an MRC file holds, read with NumPy from the header words (None: no volume)."""
    if len(raw) < 1024:
        return None, (1.0, 1.0, 1.0)
    first = ">" if raw[212:214] == b"\x11\x11" else "<"
    for bo in (first, "<" if first == ">" else ">"):
        nx, ny, nz, mode = struct.unpack(bo + "4i", raw[:16])
        (nsymbt,) = struct.unpack(bo + "i", raw[92:96])
        if all(0 <= n <= 2**24 for n in (nx, ny, nz)) and (mode in MRC_MODES or mode in (3, 4, 101)) \
                and 0 <= nsymbt < 2**31 - 1024:
            break
    else:
        return None, (1.0, 1.0, 1.0)
    if mode not in MRC_MODES or min(nx, ny, nz) < 1:
        return None, (1.0, 1.0, 1.0)
    stamp, flags = struct.unpack(bo + "2i", raw[152:160])
    code = "u1" if mode == 0 and stamp == IMOD_STAMP and not flags & 1 else MRC_MODES[mode]
    dtype = np.dtype(code).newbyteorder(bo)
    n, offset = nx * ny * nz, 1024 + nsymbt
    if len(raw) < offset + n * dtype.itemsize:
        return None, (1.0, 1.0, 1.0)
    data = np.frombuffer(raw, dtype, count=n, offset=offset).reshape(nz, ny, nx)
    order = struct.unpack(bo + "3i", raw[64:76])
    if sorted(order) == [1, 2, 3]:
        letters = (order[2], order[1], order[0])
        data = data.transpose(letters.index(3), letters.index(2), letters.index(1))
    cell = np.array(struct.unpack(bo + "3f", raw[40:52])[::-1], np.float64)
    grid = np.array(struct.unpack(bo + "3i", raw[28:40])[::-1], np.float64)
    with np.errstate(all="ignore"):
        a = cell / grid
    voxel = tuple(float(v) / 10 for v in a) if np.all(np.isfinite(a) & (a > 0)) else (1.0, 1.0, 1.0)
    return data, voxel  # type: ignore[return-value]


def patch(raw: bytes, offset: int, fmt: str, *values: Any) -> bytes:
    out = bytearray(raw)
    out[offset: offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    return bytes(out)


@st.composite
def benign_mrc(draw: Any) -> tuple[bytes, np.ndarray, tuple[float, float, float]]:
    """A valid MRC file with harmless header changes: axis order, origin, extended header, cell."""
    vol = small_volume(draw, ("int8", "int16", "float32", "uint16", "float16"))
    raw = mrc_bytes(vol)
    order = tuple(draw(st.permutations([1, 2, 3])))
    if order != (1, 2, 3):  # store the same volume with columns, rows, sections along other axes
        letters = (order[2], order[1], order[0])
        stored = vol.transpose([2 - (letters[i] - 1) for i in range(3)])
        raw = mrc_bytes(np.ascontiguousarray(stored))
        raw = patch(raw, 64, "<3i", *order)
    raw = patch(raw, 16, "<3i", *draw(st.tuples(*(st.integers(-2**31, 2**31 - 1),) * 3)))
    cell = draw(st.tuples(*(st.floats(0.5, 1e4, width=32),) * 3))
    raw = patch(raw, 40, "<3f", *cell)
    ext = draw(st.integers(0, 300))
    if ext:
        raw = patch(raw[:1024], 92, "<i", ext) + bytes(ext) + raw[1024:]
    raw += bytes(draw(st.integers(0, 40)))  # trailing bytes (mrcfile notes them)
    if draw(st.booleans()):
        raw = patch(raw, 88, "<i", draw(st.sampled_from([0, 1])))
    expected, voxel = mrc_reference(raw)
    assert expected is not None
    np.testing.assert_array_equal(expected, vol)  # the reference agrees with the writer
    return raw, vol, voxel


@settings(parent=fuzz("mrc_benign"))
@given(benign_mrc())
def test_fuzz_mrc_benign_header_fields_read_exactly(case: tuple[bytes, np.ndarray, tuple]) -> None:
    raw, vol, voxel = case
    with scratch() as d:
        path = d / "benign.mrc"
        path.write_bytes(raw)
        got = outcome(path.name, read_volume(path))
        assert got is not None, "a valid MRC file was refused"
        np.testing.assert_array_equal(got[0], vol)
        np.testing.assert_allclose(got[1], voxel, rtol=1e-6)


INT32 = st.integers(-2**31, 2**31 - 1)
DIM = st.one_of(st.integers(-3, 12), st.sampled_from([0, 2**24, 2**24 + 1, 2**25, 2**31 - 1, -2**31]))
MRC_FIELDS = {
    "dims": (0, "<3i", st.tuples(DIM, DIM, DIM)),
    "mode": (12, "<i", st.one_of(st.integers(-2, 16), st.just(101))),
    "start": (16, "<3i", st.tuples(INT32, INT32, INT32)),
    "sampling": (28, "<3i", st.tuples(*(st.one_of(st.integers(-2, 8), INT32),) * 3)),
    "cell": (40, "<3f", st.tuples(*(st.floats(width=32),) * 3)),
    "axes": (64, "<3i", st.tuples(*(st.integers(-1, 4),) * 3)),
    "ispg": (88, "<i", st.sampled_from([0, 1, 401, 630, -1])),
    "nsymbt": (92, "<i", st.one_of(st.integers(-5, 400), st.sampled_from([2**31 - 1, 2**30, -2**31]))),
    "stamp": (212, "<4B", st.sampled_from([(0x44, 0x44, 0, 0), (0x11, 0x11, 0, 0), (0, 0, 0, 0)])),
    "imod": (152, "<2i", st.sampled_from([(IMOD_STAMP, 0), (IMOD_STAMP, 1), (0, 0)])),
}


@st.composite
def hostile_mrc(draw: Any) -> bytes:
    vol = small_volume(draw, ("int8", "int16", "float32", "uint16", "float16"), max_side=4)
    raw = mrc_bytes(vol)
    for name in draw(st.sets(st.sampled_from(sorted(MRC_FIELDS)), min_size=1, max_size=4)):
        offset, fmt, values = MRC_FIELDS[name]
        v = draw(values)
        raw = patch(raw, offset, fmt, *(v if isinstance(v, tuple) else (v,)))
    cut = draw(st.one_of(st.just(0), st.integers(1, len(raw))))
    return raw[: len(raw) - cut] if cut else raw + bytes(draw(st.integers(0, 64)))


@settings(parent=fuzz("mrc_hostile"))
@given(hostile_mrc())
def test_fuzz_mrc_header_fields_read_right_or_refused(raw: bytes) -> None:
    expected, voxel = mrc_reference(raw)
    with scratch() as d:
        path = d / "hostile.mrc"
        path.write_bytes(raw)
        got = outcome(path.name, read_volume(path))
        if got is not None:
            assert expected is not None, "read an MRC file whose header describes no volume"
            np.testing.assert_array_equal(got[0], expected)
            assert got[0].dtype == expected.dtype.newbyteorder("=")
            np.testing.assert_allclose(got[1], voxel, rtol=1e-6)


# --- AmiraMesh ------------------------------------------------------------------------------------

AMIRA_TYPES = {"byte": "u1", "sbyte": "i1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
               "float": "f4", "double": "f8"}
TOKEN = st.text(st.characters(codec="ascii", exclude_characters="\n\r"), max_size=8)


@st.composite
def amira_file(draw: Any) -> tuple[bytes, np.ndarray | None, bool]:
    """An AmiraMesh file with fuzzed header fields; (bytes, reference volume or None, must read)."""
    kind = draw(st.sampled_from(sorted(AMIRA_TYPES)))
    vol = small_volume(draw, (AMIRA_TYPES[kind],))
    nz, ny, nx = vol.shape
    mode = draw(st.sampled_from(["BINARY-LITTLE-ENDIAN", "BINARY"]))
    fields = {
        "mode": mode, "dims": f"{nx} {ny} {nz}", "kind": kind, "comps": "", "enc": "", "marker": "@1",
        "bbox": f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}",
    }
    mutations = {
        "mode": st.one_of(st.sampled_from(["ASCII", "BINARY-LITTLE", "BINARY-BIG-ENDIAN", "LITTLE",
                                           "BINARY-LITTLE-ENDIAN", "BINARY"]), TOKEN),
        "dims": st.one_of(
            st.lists(st.one_of(st.integers(-2, 8).map(str), st.sampled_from(["0", "99999999999", "1e3",
                                                                             "7" * 30, "x"])),
                     min_size=0, max_size=5).map(" ".join), TOKEN),
        "kind": st.one_of(st.sampled_from(sorted(AMIRA_TYPES) + ["complex", "Float", "long"]),
                          st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True)),
        "comps": st.sampled_from(["[0]", "[1]", "[2]", "[3]", "[99999999999]"]),
        "enc": st.sampled_from(["(HxByteRLE,12)", "(HxZip,5)", "(", "()", "(ascii", " (HxZip, 12)"]),
        "marker": st.sampled_from(["@2", "", "@1 ", "@ 1", "@01"]),
        "bbox": st.one_of(
            st.lists(st.one_of(st.floats().map(repr), TOKEN), min_size=0, max_size=7).map(" ".join),
            st.just("1.2.3 4 5 6 7 8")),
    }
    for name in draw(st.sets(st.sampled_from(sorted(mutations)), max_size=3)):
        fields[name] = draw(mutations[name])
    header = (
        f"# AmiraMesh {fields['mode']} 2.1\n\n\ndefine Lattice {fields['dims']}\n\nParameters {{\n"
        f"    BoundingBox {fields['bbox']},\n    CoordType \"uniform\"\n}}\n\n"
        f"Lattice {{ {fields['kind']}{fields['comps']} Data }} @1{fields['enc']}\n\n"
        f"# Data section follows\n{fields['marker']}\n"
    ).encode("latin-1")
    big = fields["mode"] == "BINARY"
    raw = header + vol.astype(vol.dtype.newbyteorder(">" if big else "<")).tobytes() + b"\n"
    cut = draw(st.one_of(st.just(0), st.integers(1, len(raw))))
    raw = raw[: len(raw) - cut] if cut else raw
    pristine = fields["mode"] == mode and fields["dims"] == f"{nx} {ny} {nz}" and fields["kind"] == kind \
        and fields["comps"] == "" and fields["enc"] == "" and fields["marker"] == "@1"
    return raw, amira_reference(raw, len(header), fields), pristine and cut <= 1


def amira_reference(raw: bytes, offset: int, f: dict[str, str]) -> np.ndarray | None:
    """The volume the header fields describe, from the bytes after the data marker (None: none)."""
    words = f["dims"].split()
    ok = (f["mode"] in ("BINARY-LITTLE-ENDIAN", "BINARY") and f["kind"] in AMIRA_TYPES
          and f["comps"] in ("", "[1]") and f["enc"] in ("", "()") and f["marker"] in ("@1", "@1 ")
          and len(words) == 3 and all(w.isascii() and w.isdigit() for w in words))
    if not ok:
        return None
    nx, ny, nz = (int(w) for w in words)
    dtype = np.dtype(AMIRA_TYPES[f["kind"]]).newbyteorder(">" if f["mode"] == "BINARY" else "<")
    n = nx * ny * nz
    if n == 0 or len(raw) < offset + n * dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype, count=n, offset=offset).reshape(nz, ny, nx)


@settings(parent=fuzz("amira"))
@given(amira_file())
def test_fuzz_amira_header_text_read_right_or_refused(case: tuple[bytes, np.ndarray | None, bool]) -> None:
    raw, expected, must_read = case
    with scratch() as d:
        path = d / "fuzz.am"
        path.write_bytes(raw)
        check_volume(path, expected, must_read=must_read)


# --- TIFF -----------------------------------------------------------------------------------------

PAGE_SHAPES = [(4, 5), (4, 6), (5, 5)]
PAGE_DTYPES = ["uint8", "uint16", "float32"]


@st.composite
def tiff_pages(draw: Any) -> tuple[list[np.ndarray], str, str | None]:
    """Pages (mostly one shape and dtype, some odd ones), a writer style and a compression."""
    n = draw(st.integers(1, 6))
    shape, dtype = draw(st.sampled_from(PAGE_SHAPES)), draw(st.sampled_from(PAGE_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    pages = []
    for _ in range(n):
        s, t = shape, dtype
        if draw(st.integers(0, 5)) == 0:  # an odd page
            s, t = draw(st.sampled_from(PAGE_SHAPES)), draw(st.sampled_from(PAGE_DTYPES))
        pages.append((rng.random(s) * 200).astype(t))
    style = draw(st.sampled_from(["plain", "shaped", "stack", "imagej"]))
    return pages, style, draw(st.sampled_from([None, "zlib"]))


def write_tiff(path: Path, pages: list[np.ndarray], style: str, compression: str | None) -> str:
    """Write ``pages``; return how: ``"imagej"`` / ``"stack"`` (one 3-D write) or ``"pages"``."""
    uniform = len({(p.shape, p.dtype) for p in pages}) == 1
    if style in ("stack", "imagej") and uniform:  # one 3-D write
        if style == "imagej" and pages[0].dtype == np.float32:
            tifffile.imwrite(path, np.stack(pages), imagej=True, compression=compression)
            return "imagej"
        tifffile.imwrite(path, np.stack(pages), photometric="minisblack", compression=compression)
        return "stack"
    with tifffile.TiffWriter(path) as tw:
        for p in pages:
            tw.write(p, photometric="minisblack", compression=compression,
                     metadata=None if style == "plain" else {}, contiguous=False)
    return "pages"


@settings(parent=fuzz("tiff_pages"))
@given(tiff_pages())
def test_fuzz_tiff_page_shapes_and_dtypes(case: tuple[list[np.ndarray], str, str | None]) -> None:
    """Pages of one shape and dtype are read whole, in order; any odd page is refused."""
    pages, style, compression = case
    uniform = len({(p.shape, p.dtype) for p in pages}) == 1
    with scratch() as d:
        path = d / "pages.tif"
        how = write_tiff(path, pages, style, compression)
        # one page is a 2-D image, unless written as a 3-D stack of one slice (ImageJ drops that axis)
        stacked = uniform and (len(pages) > 1 or how == "stack")
        expected = np.stack(pages) if stacked else None
        read = check_volume(path, expected, must_read=expected is not None)
        assert read == (expected is not None)


@st.composite
def damaged_tiff(draw: Any) -> tuple[bytes, np.ndarray]:
    """A TIFF stack cut short, with a bit flipped in compressed page data, or with a damaged IFD chain.

    Damage that makes another valid TIFF is left out, since no reader can tell it from the real
    thing: a flipped bit in uncompressed pixels, in a tag value (a strip moved, a width changed), or
    a chain cut or shortened to skip pages.
    """
    pages, style, _ = draw(tiff_pages())
    pages = [np.resize(p, pages[0].shape).astype(pages[0].dtype) for p in pages]
    pages = pages + [pages[0]] if len(pages) == 1 else pages
    compression = draw(st.sampled_from([None, "zlib"]))
    with scratch() as d:
        write_tiff(d / "x.tif", pages, style, compression)
        raw = bytearray((d / "x.tif").read_bytes())
        with tifffile.TiffFile(d / "x.tif") as tif:
            ifds = [page.offset for page in tif.pages]
            data = [(o, n) for page in tif.pages
                    for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
    kind = draw(st.sampled_from(["cut", "chain"] + (["flip"] if compression else [])))
    if kind == "cut":
        raw = raw[: draw(st.integers(8, len(raw) - 1))]
    elif kind == "flip":  # zlib's adler-32 notices damaged page data
        o, n = draw(st.sampled_from(data))
        i = draw(st.integers(o, o + n - 1))
        raw[i] ^= 1 << draw(st.integers(0, 7))
    else:  # point one page's next-IFD offset at itself or an earlier page (a loop), mid-file or past it
        k = draw(st.integers(0, len(ifds) - 1))
        where = ifds[k] + 2 + 12 * struct.unpack("<H", raw[ifds[k]: ifds[k] + 2])[0]
        target = draw(st.one_of(st.sampled_from(ifds[: k + 1]), st.integers(len(raw), 2**32 - 1),
                                st.integers(1, len(raw) - 1).filter(lambda t: t not in ifds)))
        raw[where: where + 4] = struct.pack("<I", target)
    return bytes(raw), np.stack(pages)


@settings(parent=fuzz("tiff_damaged"))
@given(damaged_tiff())
def test_fuzz_tiff_truncated_or_damaged(case: tuple[bytes, np.ndarray]) -> None:
    """A cut or damaged TIFF is refused, or (when the damage missed the data) read exactly."""
    raw, full = case
    with scratch() as d:
        path = d / "damaged.tif"
        path.write_bytes(raw)
        got = outcome(path.name, read_volume(path))
        if got is not None:
            assert got[0].shape == full.shape, (got[0].shape, full.shape)
            np.testing.assert_array_equal(got[0], full)


# --- NumPy .npy -----------------------------------------------------------------------------------

DESCRS = ["<f4", ">f4", "<u2", ">i2", "|u1", "|i1", "<f8", "<i8", "<f2", "|O", "<c8", "|b1", "<U3",
          "|V4", "<M8[s]", "<f4x", "f4"]


@st.composite
def npy_file(draw: Any) -> bytes:
    descr = draw(st.sampled_from(DESCRS))
    fortran = draw(st.sampled_from([False, True] * 3 + [0, 1, "no", None]))
    shape = draw(st.one_of(
        st.lists(st.integers(1, 5), min_size=3, max_size=3).map(tuple),
        st.lists(st.one_of(st.integers(-2, 6), st.sampled_from([2**40, 2**62, 2**63 - 1])),
                 min_size=0, max_size=5).map(tuple),
        st.sampled_from(["(3, 4, 5)", [3, 4, 5], (3.0, 4, 5), (True, 4, 5), None])))
    entries = {"descr": descr, "fortran_order": fortran, "shape": shape}
    text = "{" + ", ".join(f"'{k}': {v!r}" for k, v in entries.items()) + ", }"
    edit = draw(st.sampled_from(["none"] * 8 + ["drop", "extra", "garbage", "object", "pickle"]))
    if edit == "drop":
        text = text.replace(f"'{draw(st.sampled_from(sorted(entries)))}'", "'other'", 1)
    elif edit == "extra":
        text = text[:-1] + "'x': 1, }"
    elif edit == "garbage":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(TOKEN) + text[i:]
    elif edit == "object":
        text = text.replace(repr(descr), "[('a', '|O')]")
    elif edit == "pickle":
        text = "__import__('os').system('echo pwned')"
    version = draw(st.sampled_from([(1, 0)] * 4 + [(2, 0), (3, 0), (4, 0), (1, 1)]))
    head = text.encode("latin-1")
    prefix = 12 if version[0] >= 2 else 10
    pad = (-(prefix + len(head) + 1)) % 64
    head = head + b" " * pad + b"\n"
    length = len(head) + draw(st.sampled_from([0] * 12 + [-1, 1, -7, 64, 2**15]))
    size_field = struct.pack("<I" if version[0] >= 2 else "<H", max(0, min(length, 65535)))
    nbytes = draw(st.sampled_from([1000] * 3 + [999, 480, 0, 3, 240]))
    data = np.random.default_rng(draw(st.integers(0, 99))).bytes(nbytes)
    return b"\x93NUMPY" + bytes(version) + size_field + head + data


def npy_reference(raw: bytes) -> np.ndarray | None:
    """The array a .npy file holds, parsed with ast (never unpickling); None if it holds none."""
    if raw[:6] != b"\x93NUMPY" or raw[6] not in (1, 2, 3) or len(raw) < 12:
        return None
    wide = raw[6] >= 2
    (length,) = struct.unpack("<I" if wide else "<H", raw[8:12] if wide else raw[8:10])
    offset = (12 if wide else 10) + length
    try:
        header = ast.literal_eval(raw[(12 if wide else 10): offset].decode("latin-1"))
        assert isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}
        dtype = np.dtype(header["descr"])
        shape, fortran = header["shape"], header["fortran_order"]
        assert isinstance(fortran, bool) and isinstance(shape, tuple)
        assert all(type(n) is int and n >= 0 for n in shape)
    except Exception:
        return None
    if dtype.kind not in "iuf" or dtype.hasobject or len(raw) < offset + math.prod(shape) * dtype.itemsize:
        return None
    if math.prod(shape) == 0:
        return None
    data = np.frombuffer(raw, dtype, count=math.prod(shape), offset=offset)
    data = data.reshape(shape, order="F" if fortran else "C")
    if data.ndim > 3:
        data = data.reshape([n for n in shape if n != 1], order="A")
    return data if data.ndim == 3 else None


@settings(parent=fuzz("npy"))
@given(npy_file())
def test_fuzz_npy_headers_read_right_or_refused(raw: bytes) -> None:
    with scratch() as d:
        path = d / "fuzz.npy"
        path.write_bytes(raw)
        expected = npy_reference(raw)
        check_volume(path, expected)
        assert not (d / "pwned").exists()


# --- OME-Zarr -------------------------------------------------------------------------------------

TEMPLATE_SHAPE = (64, 64, 66)  # two levels; x has a part-filled edge chunk
TEMPLATE_CHUNKS = (32, 32, 32)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A written image (uint16, two levels) with one label image, and its levels as arrays."""
    rng = np.random.default_rng(5)
    vol = rng.integers(1, 60000, TEMPLATE_SHAPE).astype(np.uint16)
    vol[:32, :32, :32] = 0  # one all-zero chunk: it must be written too
    out = write_image(vol, tmp_path_factory.mktemp("tpl") / "img.ome.zarr", chunks=TEMPLATE_CHUNKS,
                      voxel_size_nm=(10.0, 5.0, 5.0))
    write_labels(out, "cells", (vol > 30000).astype(np.uint8))
    levels = {k: zarr.open_array(out / k, mode="r")[:] for k in ("0", "1")}
    levels["labels"] = (vol > 30000).astype(np.uint8)
    return out, levels


@contextmanager
def image_copy(template: tuple[Path, dict[str, np.ndarray]]) -> Iterator[Path]:
    with scratch() as d:
        yield Path(shutil.copytree(template[0], d / "img.ome.zarr"))


def read_image(path: Path) -> Callable[[], tuple[Any, np.ndarray]]:
    def read() -> tuple[Any, np.ndarray]:
        img = open_image(path)
        return img, read_block(img.array_path(0))

    return read


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["0", "1", "scale", "translation", "z", "y", "x", "nanometer", "micrometer", "0.5",
                       "", "../0", "/0", "space", "time"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["path", "type", "scale", "name", "unit", "axes", "datasets", "version"]), children,
        max_size=3),
    max_leaves=8)


@st.composite
def json_mutation(draw: Any, doc: Any) -> Any:
    """``doc`` with one node (found by walking down at random) replaced, deleted or added to."""
    if not isinstance(doc, (dict, list)) or not doc or draw(st.integers(0, 3)) == 0:
        return draw(JSON)
    keys = sorted(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = draw(st.sampled_from(keys))
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    action = draw(st.sampled_from(["descend"] * 4 + ["delete", "duplicate"]))
    if action == "delete":
        del out[key]
    elif action == "duplicate" and isinstance(out, list):
        out.append(out[key])
    else:
        out[key] = draw(json_mutation(doc[key]))
    return out


def zarr_json(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())


def encode(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def check_image(path: Path, levels: dict[str, np.ndarray],
                expect: Callable[[Any], np.ndarray | None] | None = None) -> Any:
    """Open and read level 0; equal to the array the metadata point at (or ``expect(img)``)."""
    got = outcome(path.name, read_image(path))
    if got is None:
        return None
    img, data = got
    assert len(img.voxel_size_nm) == 3 and all(math.isfinite(v) and v > 0 for v in img.voxel_size_nm)
    assert img.levels == len(img.level_paths) >= 1
    expected = expect(img) if expect is not None else levels.get(img.level_paths[0])
    assert expected is not None, f"read level 0 {img.level_paths[0]!r} of an ill-defined image"
    np.testing.assert_array_equal(data, expected)
    return img


def _benign_edits() -> dict[str, tuple[Callable[[dict[str, Any]], None], tuple[float, float, float], int]]:
    """Valid changes to the root's multiscale entry: (edit in place, level-0 voxel size nm, levels)."""

    def ms(a: dict[str, Any]) -> dict[str, Any]:
        return a["ome"]["multiscales"][0]

    def scale0(a: dict[str, Any]) -> dict[str, Any]:
        return ms(a)["datasets"][0]["coordinateTransformations"][0]

    def units(unit: str | None) -> Callable[[dict[str, Any]], None]:
        def edit(a: dict[str, Any]) -> None:
            for axis in ms(a)["axes"]:
                axis.pop("unit") if unit is None else axis.update(unit=unit)
        return edit

    return {
        "rename": (lambda a: ms(a).update(name="other"), (10.0, 5.0, 5.0), 2),
        "one level": (lambda a: ms(a)["datasets"].pop(), (10.0, 5.0, 5.0), 1),
        "micrometre": (units("micrometer"), (1e4, 5e3, 5e3), 2),
        "angstrom": (units("angstrom"), (1.0, 0.5, 0.5), 2),
        "no unit": (units(None), (10.0, 5.0, 5.0), 2),
        "new scale": (lambda a: scale0(a).update(scale=[2, 3.5, 4]), (2.0, 3.5, 4.0), 2),
        "translation": (lambda a: ms(a)["datasets"][0]["coordinateTransformations"].append(
            {"type": "translation", "translation": [-1.5, 0, 7]}), (10.0, 5.0, 5.0), 2),
        "global scale": (lambda a: ms(a).update(coordinateTransformations=[
            {"type": "scale", "scale": [2, 2, 0.5]}]), (20.0, 10.0, 2.5), 2),
        "extra keys": (lambda a: (a["ome"].update({"x-extra": [1]}), ms(a).update({"x-note": {}})),
                       (10.0, 5.0, 5.0), 2),
    }


BENIGN_EDITS = _benign_edits()


@settings(parent=fuzz("ome_attrs"))
@given(st.data())
def test_fuzz_ome_zarr_root_attributes(template: tuple[Path, dict[str, np.ndarray]], data: Any) -> None:
    """A changed root OME metadata is refused in one line or read as it says; valid changes are read."""
    with image_copy(template) as path:
        meta = zarr_json(path)
        benign = None
        kind = data.draw(st.integers(0, 9))
        if kind == 0:
            text = data.draw(st.sampled_from(["", "{", "not json", "[]", "null", '{"zarr_format": 3}']))
        elif kind <= 3:
            benign = data.draw(st.sampled_from(sorted(BENIGN_EDITS)))
            BENIGN_EDITS[benign][0](meta["attributes"])
            text = encode(meta)
        else:
            meta["attributes"] = data.draw(json_mutation(meta["attributes"]))
            text = encode(meta)
        (path / "zarr.json").write_text(text)
        img = check_image(path, template[1])
        if benign is not None:
            assert img is not None, f"refused a valid edit ({benign})"
            _, voxel, levels = BENIGN_EDITS[benign]
            np.testing.assert_allclose(img.voxel_size_nm, voxel, rtol=1e-12)
            assert img.levels == levels


ARRAY_FIELDS = {
    "shape": st.one_of(st.lists(st.integers(-1, 80), min_size=0, max_size=4), JSON),
    "chunk_grid": st.one_of(st.lists(st.integers(-1, 40), min_size=0, max_size=4).map(
        lambda c: {"name": "regular", "configuration": {"chunk_shape": c}}), JSON),
    "data_type": st.sampled_from(["uint8", "int16", "float16", "uint32", "float64", "complex64", "bool",
                                  "string", "nope"]),
    "fill_value": JSON,
    "dimension_names": st.one_of(st.sampled_from([["x", "y", "z"], ["z", "y"], None]), JSON),
    "node_type": st.sampled_from(["group", "nope"]),
    "zarr_format": st.sampled_from([2, 4, "3"]),
    "codecs": st.sampled_from(["drop_compressor", "big_endian", "garbage"]),
}


def mutate_array(meta: dict[str, Any], field: str, value: Any) -> tuple[dict[str, Any], Callable | None]:
    """``meta`` with ``field`` set to ``value``, and how the stored bytes then read (None: as before)."""
    meta = dict(meta)
    if field == "codecs":
        if value == "drop_compressor":
            meta["codecs"] = meta["codecs"][:1]
        elif value == "big_endian":
            meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "big"}}] + meta["codecs"][1:]
            return meta, lambda a: a.view(a.dtype.newbyteorder(">"))
        else:
            meta["codecs"] = [{"name": "nope"}]
        return meta, None
    meta[field] = value
    if field == "data_type" and isinstance(value, str):
        return meta, lambda a: a.view(np.dtype(value)) if np.dtype(value).itemsize == 2 else None
    return meta, None


def resized(level: np.ndarray, shape: Any) -> np.ndarray | None:
    """``level`` cropped or zero-extended to ``shape`` within its stored chunks (None: not a shape)."""
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and n >= 0 for n in shape)):
        return None
    grid = [-(-n // c) * c for n, c in zip(level.shape, TEMPLATE_CHUNKS, strict=True)]
    if any(n > g for n, g in zip(shape, grid, strict=True)):
        return None  # would need chunks that were never written
    out = np.zeros(shape, level.dtype)
    box = tuple(slice(0, min(a, b)) for a, b in zip(shape, level.shape, strict=True))
    out[box] = level[box]
    return out


@settings(parent=fuzz("ome_arrays"))
@given(st.data())
def test_fuzz_ome_zarr_level_array_metadata(template: tuple[Path, dict[str, np.ndarray]], data: Any) -> None:
    """A level's zarr.json changed (shape, chunks, type, codecs, or not JSON): refused, or read right."""
    key = data.draw(st.sampled_from(["0", "1"]))
    with image_copy(template) as path:
        meta = zarr_json(path / key)
        same_size_reshape = False
        if data.draw(st.integers(0, 7)) == 0:
            (path / key / "zarr.json").write_text(data.draw(st.sampled_from(["", "{", "[1, 2]", "null"])))
            view = None
        else:
            field = data.draw(st.sampled_from(sorted(ARRAY_FIELDS)))
            value = data.draw(ARRAY_FIELDS[field])
            if field == "chunk_grid":  # a same-size reshape of the chunks scrambles voxels undetectably
                c = value.get("configuration", {}).get("chunk_shape") if isinstance(value, dict) else None
                same_size_reshape = isinstance(c, list) and all(type(n) is int for n in c) \
                    and math.prod(c) == math.prod(TEMPLATE_CHUNKS) and c != list(TEMPLATE_CHUNKS)
            meta, view = mutate_array(meta, field, value)
            (path / key / "zarr.json").write_text(encode(meta))
        if same_size_reshape:
            return

        def expect(img: Any) -> np.ndarray | None:
            level = template[1][img.level_paths[0]]
            if key != img.level_paths[0]:
                return level
            stored = zarr_json(path / key)
            out = resized(level, stored.get("shape")) if stored.get("shape") != list(level.shape) else level
            return view(out) if view is not None and out is not None else out

        check_image(path, template[1], expect)


def chunk_files(level: Path) -> list[Path]:
    return sorted(p for p in (level / "c").rglob("*") if p.is_file())


@settings(parent=fuzz("ome_chunks"))
@given(st.data())
def test_fuzz_ome_zarr_missing_or_damaged_chunks(template: tuple[Path, dict[str, np.ndarray]],
                                                 data: Any) -> None:
    """A missing level-0 chunk is always refused; a damaged one is refused when read (never other data)."""
    with image_copy(template) as path:
        files = chunk_files(path / "0")
        assert len(files) == 12  # every chunk written, the all-zero one too
        chosen = data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=3, unique=True))
        action = data.draw(st.sampled_from(["delete", "truncate", "garbage", "flip", "empty"]))
        for f in chosen:
            raw = bytearray(f.read_bytes())
            if action == "delete":
                f.unlink()
            elif action == "truncate":
                f.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
            elif action == "garbage":
                f.write_bytes(data.draw(st.binary(min_size=0, max_size=64)))
            elif action == "empty":
                f.write_bytes(b"")
            else:
                i = data.draw(st.integers(0, len(raw) - 1))
                raw[i] ^= 1 << data.draw(st.integers(0, 7))
                f.write_bytes(bytes(raw))
        img = check_image(path, template[1])
        assert img is None or action in ("flip", "garbage"), f"a {action} chunk was not refused"
        if data.draw(st.booleans()):  # level 1: the image opens, the level is refused
            next(iter(chunk_files(path / "1"))).unlink()
            assert outcome(path.name, lambda: open_image(path).level(1)) is None


@settings(parent=fuzz("ome_labels"))
@given(st.data())
def test_fuzz_ome_zarr_label_metadata(template: tuple[Path, dict[str, np.ndarray]], data: Any) -> None:
    """labels/ and labels/<name> metadata changed: readers refuse in one line or read the labels right."""
    with image_copy(template) as path:
        where = data.draw(st.sampled_from([path / "labels", path / "labels" / "cells"]))
        meta = zarr_json(where)
        meta["attributes"] = data.draw(json_mutation(meta["attributes"]))
        (where / "zarr.json").write_text(encode(meta))
        names = outcome(path.name, lambda: list_labels(path))
        complete = outcome(path.name, lambda: labels_complete(path, "cells"))
        assert complete in (None, True, False)
        got = outcome(path.name, lambda: open_labels(path, "cells").compute())
        if got is not None:
            assert names is not None and "cells" in names
            np.testing.assert_array_equal(got, template[1]["labels"])
