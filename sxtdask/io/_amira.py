"""AmiraMesh binary lattices (``.am``, and the ``.rec`` files NCXT/ALS reconstructions come in).

A file starts ``# AmiraMesh BINARY-LITTLE-ENDIAN 2.1`` (or ``BINARY`` for big-endian), declares
``define Lattice NX NY NZ`` and a field ``Lattice { float Data } @1``; the raw voxels follow the line
``@1`` after ``# Data section follows``, x fastest, so they map to a (Z, Y, X) array directly.
ASCII files and compressed fields (``@1(HxByteRLE,n)``, ``@1(HxZip,n)``) are not supported.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from sxtdask.errors import InputError, UnsupportedFormatError
from sxtdask.io._checks import check_shape, voxel_size_or_default
from sxtdask.io._volume import ByteOrder, RawLayout, Volume

__all__ = ["AMIRA_MAGIC", "AMIRA_SUFFIXES", "AmiraHeader", "open_amira", "parse_amira_header"]

logger = logging.getLogger(__name__)

AMIRA_MAGIC = (b"# AmiraMesh", b"# Avizo")
AMIRA_SUFFIXES = frozenset({".am", ".rec", ".amiramesh", ".labels"})
HEADER_MAX_BYTES = 1 << 20
_TYPES = {"byte": "u1", "sbyte": "i1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
          "float": "f4", "double": "f8"}
_FIRST_LINE = re.compile(r"#\s*(?:AmiraMesh|Avizo)\s+(?:3D\s+)?(BINARY-LITTLE-ENDIAN|BINARY|ASCII)(?=\s|$)")
_LATTICE = re.compile(r"define[ \t]+Lattice\b([^\n]*)")
_FIELD = re.compile(r"Lattice\s*\{\s*(\w+)\s*(?:\[(\d{1,9})\])?\s+(\w+)\s*\}\s*@(\d{1,9})[ \t]*(\([^\n]*)?")
_BBOX = re.compile(r"\bBoundingBox\b([^\n]*)")
# Amira 6+ writes the unit in the parameters: ``Units { Coordinates "nm" }``.
_UNIT = re.compile(r"\bCoordinates\s+\"([^\"\n]{1,16})\"")
#: Length units an AmiraMesh header may name, in nanometres.
_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3,
            "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometers": 1e3, "mm": 1e6,
            "millimeter": 1e6, "m": 1e9, "meter": 1e9, "a": 0.1, "å": 0.1, "angstrom": 0.1,
            "angstroms": 0.1}
_DATA_FOLLOWS = re.compile(rb"# Data section follows[^\n]*\n")


@dataclass(frozen=True)
class AmiraHeader:
    """What the header of a binary AmiraMesh lattice says about its data block."""

    dims_xyz: tuple[int, ...]
    dtype: str
    components: int
    offset: int
    bbox: tuple[float, ...] | None
    unit: str | None = None  # the header's ``Units { Coordinates "..." }``, if any
    materials: tuple[tuple[int, str], ...] = ()  # a label field's ``Materials``: (value, name)

    @property
    def shape(self) -> tuple[int, ...]:
        """Stored shape, slowest axis first: (Z, Y, X) or (Z, Y, X, C)."""
        return tuple(reversed(self.dims_xyz)) + ((self.components,) if self.components > 1 else ())


def _split_header(path: Path, buf: bytes, index: int) -> tuple[str, int]:
    """Return the header text and the byte offset where the data of field ``@index`` start."""
    follows = _DATA_FOLLOWS.search(buf)
    marker = re.compile(rb"^@%d[ \t]*\r?\n" % index, re.M).search(buf, follows.end() if follows else 0)
    if marker is None:
        raise InputError(f"{path}: AmiraMesh header without the data marker '@{index}' "
                         f"(file truncated or header longer than {HEADER_MAX_BYTES} bytes)")
    return buf[: marker.start()].decode("latin-1"), marker.end()


def _byteorder(path: Path, text: str) -> ByteOrder:
    m = _FIRST_LINE.match(text)
    if m is None:
        first = text.splitlines()[0] if text else ""
        raise UnsupportedFormatError(f"{path}: unrecognised AmiraMesh header line {first[:60]!r}")
    if m.group(1) == "ASCII":
        raise UnsupportedFormatError(
            f"{path}: ASCII AmiraMesh is not supported; save it as BINARY-LITTLE-ENDIAN in Amira/Avizo")
    return "<" if m.group(1) == "BINARY-LITTLE-ENDIAN" else ">"


def _field(path: Path, text: str) -> tuple[str, int, int]:
    """Return (numpy type code, components, @index) of the first lattice field."""
    m = _FIELD.search(text)
    if m is None:
        raise UnsupportedFormatError(
            f"{path}: AmiraMesh file without a 'Lattice {{ <type> <name> }} @N' field")
    kind, comps, _name, index, encoding = m.groups()
    if encoding:
        enc = re.fullmatch(r"\(\s*([^,)]*)[^)]*\)\s*", encoding)
        if enc is None:
            raise UnsupportedFormatError(
                f"{path}: malformed AmiraMesh data encoding {encoding.strip()[:40]!r} after '@{index}'")
        if enc.group(1).strip():
            raise UnsupportedFormatError(
                f"{path}: compressed AmiraMesh data ({enc.group(1).strip()}) are not supported; "
                "save uncompressed")
    if kind not in _TYPES:
        raise UnsupportedFormatError(f"{path}: AmiraMesh data type {kind!r} is not supported "
                                     f"(supported: {', '.join(_TYPES)})")
    if comps is not None and int(comps) < 1:
        raise UnsupportedFormatError(f"{path}: AmiraMesh field with {int(comps)} components per voxel")
    return _TYPES[kind], int(comps or 1), int(index)


def _lattice(path: Path, header: str) -> tuple[int, int, int]:
    """(NX, NY, NZ) from ``define Lattice NX NY NZ``."""
    m = _LATTICE.search(header)
    if m is None:
        raise UnsupportedFormatError(f"{path}: AmiraMesh file without 'define Lattice NX NY NZ'")
    words = m.group(1).split()
    if len(words) != 3 or not all(w.isdigit() and len(w) <= 12 for w in words):
        raise UnsupportedFormatError(
            f"{path}: AmiraMesh 'define Lattice{m.group(1)[:60]}' is not three sizes NX NY NZ; "
            "a tomogram is a 3-D lattice")
    nx, ny, nz = (int(w) for w in words)
    return nx, ny, nz


def _bbox(path: Path, header: str) -> tuple[float, ...] | None:
    """The six BoundingBox numbers (xmin xmax ymin ymax zmin zmax); None if absent or malformed."""
    m = _BBOX.search(header)
    if m is None:
        return None
    words = m.group(1).replace(",", " ").split()[:6]
    try:
        values = tuple(float(w) for w in words)
    except ValueError:
        values = ()
    if len(values) != 6:
        logger.info("%s: malformed AmiraMesh BoundingBox %r; ignoring it", path, m.group(1).strip()[:80])
        return None
    return values


def parse_amira_header(path: Path, buf: bytes) -> AmiraHeader:
    """Parse a binary AmiraMesh lattice header from the first bytes ``buf`` of ``path``."""
    text = buf[:4096].decode("latin-1")
    byteorder = _byteorder(path, text)
    follows = _DATA_FOLLOWS.search(buf)
    code, comps, index = _field(path, buf[: follows.start() if follows else len(buf)].decode("latin-1"))
    header, offset = _split_header(path, buf, index)
    return AmiraHeader(
        dims_xyz=_lattice(path, header),
        dtype=np.dtype(code).newbyteorder(byteorder).str,
        components=comps,
        offset=offset,
        bbox=_bbox(path, header),
        unit=(_text(m.group(1)).strip() if (m := _UNIT.search(header)) else None),
        materials=_materials(header),
    )


def _text(latin1: str) -> str:
    """A header word decoded as UTF-8 when it is (the header is read as Latin-1: "µm" in UTF-8)."""
    try:
        return latin1.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return latin1


def _materials(header: str) -> tuple[tuple[int, str], ...]:
    """The ``Materials { name { Id N, Color ... } ... }`` list of a label field, as (value, name).

    A material's value is its ``Id`` when it has one, else its place in the list (Amira numbers
    them from 0 in order). An absent or malformed list gives ().
    """
    start = re.search(r"\bMaterials\s*\{", header)
    if start is None:
        return ()
    depth, i, body_start = 1, start.end(), start.end()
    while i < len(header) and depth:
        depth += {"{": 1, "}": -1}.get(header[i], 0)
        i += 1
    if depth:
        return ()
    body = header[body_start: i - 1]
    out: list[tuple[int, str]] = []
    for k, m in enumerate(re.finditer(r"([^\s{},]+)\s*\{([^{}]*)\}", body)):
        ident = re.search(r"\bId\s+(-?\d+)", m.group(2))
        out.append((int(ident.group(1)) if ident else k, m.group(1).strip('"')))
    return tuple(out)


def _bbox_voxel_size(path: Path, hdr: AmiraHeader) -> tuple[tuple[float, float, float] | None, str]:
    """(z, y, x) spacing from the BoundingBox (None if unknown), and why it is unknown."""
    if hdr.bbox is None:
        return None, "the AmiraMesh header has no BoundingBox"
    x0, x1, y0, y1, z0, z1 = hdr.bbox
    spans = [(z0, z1, hdr.dims_xyz[2]), (y0, y1, hdr.dims_xyz[1]), (x0, x1, hdr.dims_xyz[0])]
    if all(lo == 0 and hi == n - 1 for lo, hi, n in spans):
        return None, "the AmiraMesh BoundingBox is the index range"
    steps = [(hi - lo) / (n - 1) for lo, hi, n in spans if n > 1]
    if not steps or not all(np.isfinite(s) and s > 0 for s in steps):
        return None, f"the AmiraMesh BoundingBox {hdr.bbox} gives no positive spacing"
    sizes = tuple(float((hi - lo) / (n - 1)) if n > 1 else float(np.mean(steps)) for lo, hi, n in spans)
    factor, how = _unit_factor(hdr.unit, max(sizes))
    if factor is None:
        return None, f"the AmiraMesh length unit {hdr.unit!r} is not one sxtdask knows"
    nm = tuple(s * factor for s in sizes)
    logger.info("%s: voxel size %s nm from the AmiraMesh BoundingBox (%s)", path, nm, how)
    return cast(tuple[float, float, float], nm), ""  # one size per axis of the 3-D lattice


def _unit_factor(unit: str | None, spacing: float) -> tuple[float | None, str]:
    """Nanometres per BoundingBox unit, and how it was decided.

    The header's ``Coordinates`` unit when it names one. Without it (most files: AmiraMesh stores
    no unit by default), the spacing's size decides: soft X-ray voxels are 10–100 nm, so a
    spacing below 1 is read as micrometres (0.03 = 30 nm), one of 1 or more as nanometres.
    """
    if unit is not None:
        return _UNIT_NM.get(unit.lower()), f"unit {unit!r} from the header"
    if spacing < 1.0:
        return 1e3, "no unit in the header; a spacing below 1 is read as micrometres"
    return 1.0, "no unit in the header; read as nanometres"


def open_amira(path: Path, size: int) -> Volume:
    """Open a binary AmiraMesh lattice as a memory-mapped (Z, Y, X) :class:`Volume`.

    Parameters
    ----------
    path : Path
        The file.
    size : int
        Its size, bytes.
    """
    with open(path, "rb") as fh:
        buf = fh.read(HEADER_MAX_BYTES)
    hdr = parse_amira_header(path, buf)
    shape = check_shape(path, hdr.shape)
    nbytes = math.prod(hdr.shape) * np.dtype(hdr.dtype).itemsize
    if size < hdr.offset + nbytes:
        raise InputError(
            f"{path}: truncated AmiraMesh file: the header describes {hdr.shape[::-1]} (x, y, z) voxels of "
            f"{np.dtype(hdr.dtype).name} ({hdr.offset + nbytes} bytes with the header), "
            f"but the file has {size} bytes")
    voxel, why = voxel_size_or_default(path, *_bbox_voxel_size(path, hdr))
    layout = RawLayout(hdr.offset, hdr.dtype, hdr.shape, shape)
    return Volume(path, layout, voxel, "amira", voxel_size_assumed=why is not None,
                  voxel_size_note=why or "", materials=dict(hdr.materials))
