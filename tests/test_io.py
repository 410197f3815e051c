"""Tests of sxtdask.io: tomogram readers and the OME-Zarr 0.5 image/label writer and reader."""

from __future__ import annotations

import json
import logging
import os
import pickle
import tracemalloc
import warnings
from pathlib import Path

import dask
import dask.array as da
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sxtdask.errors import ConfigError, InputError, InvalidVolumeError, OutputError, UnsupportedFormatError
from sxtdask.io import (
    HeaderWarning,
    Volume,
    check_chunks_present,
    create_labels,
    finalize_labels,
    labels_complete,
    list_labels,
    open_image,
    open_labels,
    open_volume,
    read_block,
    write_image,
    write_labels,
)
from sxtdask.io._omezarr import pyramid_shapes

FIXTURES = Path(__file__).resolve().parent / "data" / "real_sxt"  # see tests/data/README.md
PHANTOM = FIXTURES / "psftomo_phantom.mrc"
SAMPLE12 = FIXTURES / "sample_12.rec"


# --- helpers --------------------------------------------------------------------------------------

def rand(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0.01, 0.003, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)


def write_mrc(path: Path, data: np.ndarray, voxel_angstrom: float = 25.0,
              unsigned_bytes: bool = False) -> Path:
    """Write an MRC file; uint8 data are stored as mode 0 with the IMOD unsigned-bytes convention."""
    stored = data.view(np.int8) if unsigned_bytes else data
    with mrcfile.new(path, overwrite=True) as mrc, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about NaN/Inf data on purpose
        mrc.set_data(stored)
        mrc.voxel_size = voxel_angstrom
    if unsigned_bytes:  # imodStamp (word 39) and imodFlags (word 40, bit 0 clear = unsigned)
        raw = bytearray(path.read_bytes())
        raw[152:160] = np.array([1146047817, 0], dtype="<i4").tobytes()
        path.write_bytes(bytes(raw))
    return path


def write_amira(
    path: Path, data: np.ndarray, *, big_endian: bool = False, bbox: tuple[float, ...] | None = None,
    kind: str = "float", encoding: str = "", mode: str | None = None,
) -> Path:
    """Write a minimal AmiraMesh lattice (x fastest), as Amira does."""
    nz, ny, nx = data.shape
    bbox = bbox or (0, nx - 1, 0, ny - 1, 0, nz - 1)
    mode = mode or ("BINARY" if big_endian else "BINARY-LITTLE-ENDIAN")
    header = (
        f"# AmiraMesh {mode} 2.1\n\n\ndefine Lattice {nx} {ny} {nz}\n\nParameters {{\n"
        f"    Content \"{nx}x{ny}x{nz} {kind}, uniform coordinates\",\n"
        f"    BoundingBox {' '.join(str(v) for v in bbox)},\n    CoordType \"uniform\"\n}}\n\n"
        f"Lattice {{ {kind} Data }} @1{encoding}\n\n# Data section follows\n@1\n"
    )
    raw = data.astype(data.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
    path.write_bytes(header.encode() + raw + b"\n")
    return path


def ome_validates(path: Path) -> object:
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(zarr.open_group(path, mode="r"))


def ome_zarr_nodes(path: Path) -> list:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --- fixtures from real files ---------------------------------------------------------------------

def test_psftomo_phantom_opens_with_header_warning_and_unit_voxel() -> None:
    with pytest.warns(HeaderWarning, match="psftomo_phantom.mrc.*voxel size of 1.0 nm is assumed"):
        vol = open_volume(PHANTOM)
    assert (vol.shape, vol.dtype, vol.voxel_size_nm) == ((128, 128, 128), np.dtype(np.int8), (1.0, 1.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(PHANTOM, permissive=True) as mrc:
            expected = np.array(mrc.data)
    np.testing.assert_array_equal(vol[:], expected)
    np.testing.assert_array_equal(vol.read(60, 70), expected[60:70])


def test_sample12_amira_is_z_y_x_with_x_fastest() -> None:
    vol = open_volume(SAMPLE12)
    assert (vol.format, vol.shape, vol.dtype) == ("amira", (58, 61, 58), np.dtype(np.float32))
    assert vol.voxel_size_nm == (1.0, 1.0, 1.0)  # BoundingBox 0..n-1 is the index range: unknown
    raw = SAMPLE12.read_bytes()
    marker = b"# Data section follows\n@1\n"
    flat = np.frombuffer(raw, "<f4", count=58 * 61 * 58, offset=raw.index(marker) + len(marker))
    data = vol[:]
    for z, y, x in [(0, 0, 0), (10, 20, 30), (29, 60, 5), (57, 33, 57), (40, 7, 44)]:
        assert data[z, y, x] == flat[(z * 61 + y) * 58 + x]
    np.testing.assert_array_equal(data, flat.reshape(58, 61, 58))
    assert np.isfinite(data).all() and np.abs(data).max() < 1.0 and data.std() > 1e-4  # absorption, 1/µm-ish


def test_sample12_converts_to_ome_zarr(tmp_path: Path) -> None:
    out = write_image(open_volume(SAMPLE12), tmp_path / "s12.ome.zarr")
    img = open_image(out)
    assert (img.data.shape, img.levels, img.name) == ((58, 61, 58), 1, "sample_12")
    ome_validates(out)


# --- Volume ---------------------------------------------------------------------------------------

def test_volume_pickles_cheaply_and_feeds_dask_processes(tmp_path: Path) -> None:
    data = rand((40, 64, 64))
    np.save(tmp_path / "v.npy", data)
    vol = open_volume(tmp_path / "v.npy")
    vol.read(0, 1)  # opened in this process: the handle must not be pickled
    assert len(pickle.dumps(vol)) < 2000
    clone = pickle.loads(pickle.dumps(vol))
    np.testing.assert_array_equal(clone.read(3, 9), data[3:9])
    arr = da.from_array(vol, chunks=(8, 64, 64))
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(arr.sum(axis=(1, 2)).compute(), data.sum(axis=(1, 2)))
    np.testing.assert_array_equal(vol[5, 2:9, ::3], data[5, 2:9, ::3])
    with pytest.raises(IndexError):
        vol.read(30, 41)


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("dtype", "unsigned_bytes", "mode"),
    [("int8", False, 0), ("uint8", True, 0), ("int16", False, 1), ("float32", False, 2),
     ("uint16", False, 6), ("float16", False, 12)],
    ids=["mode0-int8", "mode0-uint8-imod", "mode1-int16", "mode2-float32", "mode6-uint16", "mode12-float16"],
)
def test_mrc_round_trip(tmp_path: Path, dtype: str, unsigned_bytes: bool, mode: int) -> None:
    data = rand((20, 24, 28), dtype)
    if dtype == "uint8":
        data = np.random.default_rng(1).integers(0, 256, (20, 24, 28)).astype(np.uint8)
    path = write_mrc(tmp_path / "t.mrc", data, 25.0, unsigned_bytes)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == mode
    vol = open_volume(path)
    assert vol.dtype == np.dtype(dtype) and vol.voxel_size_nm == pytest.approx((2.5, 2.5, 2.5))
    img = open_image(write_image(vol, tmp_path / "t.ome.zarr"))
    expected_dtype = np.float32 if dtype == "float16" else np.dtype(dtype)
    assert img.data.dtype == expected_dtype
    np.testing.assert_array_equal(img.data.compute(), data.astype(expected_dtype))
    assert img.voxel_size_nm == pytest.approx((2.5, 2.5, 2.5))


def test_rec_extension_holding_mrc_opens_as_mrc(tmp_path: Path) -> None:
    data = rand((6, 7, 8))
    path = write_mrc(tmp_path / "t.mrc", data)
    rec = path.rename(tmp_path / "tomo.rec")
    vol = open_volume(rec)
    assert vol.format == "mrc"
    np.testing.assert_array_equal(vol[:], data)


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memmap", "compressed-pages"])
def test_tiff_imagej_round_trip(tmp_path: Path, compression: str | None) -> None:
    data = rand((12, 20, 24), "uint16")
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.025, 1 / 0.025),
                     metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"}, compression=compression)
    with open_volume(path) as vol:
        assert vol.shape == (12, 20, 24) and vol.voxel_size_nm == pytest.approx((30.0, 25.0, 25.0))
        np.testing.assert_array_equal(vol.read(3, 7), data[3:7])
        img = open_image(write_image(vol, tmp_path / "stack.ome.zarr", chunks=(5, 20, 24)))
    np.testing.assert_array_equal(img.data.compute(), data)
    assert img.voxel_size_nm == pytest.approx((30.0, 25.0, 25.0))


def test_compressed_tiff_slab_read_decodes_only_its_pages(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = rand((10, 16, 16), "int16")
    tifffile.imwrite(tmp_path / "c.tif", data, compression="zlib")
    vol = open_volume(tmp_path / "c.tif")
    decoded: list[int] = []
    for cls in (tifffile.TiffPage, tifffile.TiffFrame):
        original = cls.asarray

        def spy(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            decoded.append(self.index)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "asarray", spy)
    np.testing.assert_array_equal(vol.read(4, 6), data[4:6])
    assert sorted(set(decoded)) == [4, 5]  # only the slab's own pages


def test_npy_round_trip_fortran_order_and_singleton_squeeze(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    data = rand((9, 10, 11), "float64")
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    np.save(tmp_path / "s.npy", data[None])
    with caplog.at_level(logging.INFO, logger="sxtdask.io"):
        vol_f, vol_s = open_volume(tmp_path / "f.npy"), open_volume(tmp_path / "s.npy")
    assert "squeezed" in caplog.text and "(.npy files carry none); 1 nm is assumed" in caplog.text
    assert vol_f.voxel_size_nm == (1.0, 1.0, 1.0) and vol_s.shape == (9, 10, 11)
    np.testing.assert_array_equal(vol_f.read(2, 5), data[2:5])
    img = open_image(write_image(vol_s, tmp_path / "s.ome.zarr", voxel_size_nm=(3.0, 2.0, 2.0)))
    np.testing.assert_array_equal(img.data.compute(), data)
    assert img.data.dtype == np.float64 and img.voxel_size_nm == (3.0, 2.0, 2.0)


def test_amira_big_endian_ushort_with_bounding_box_spacing(tmp_path: Path) -> None:
    data = rand((5, 6, 7), "uint16")
    bbox = (0.0, 6 * 32.0, 0.0, 5 * 32.0, 100.0, 100 + 4 * 40.0)  # x, y spacing 32; z spacing 40
    vol = open_volume(write_amira(tmp_path / "b.am", data, big_endian=True, bbox=bbox, kind="ushort"))
    assert vol.dtype == np.dtype(np.uint16) and vol.dtype.isnative
    assert vol.voxel_size_nm == pytest.approx((40.0, 32.0, 32.0))
    np.testing.assert_array_equal(vol[:], data)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mode": "ASCII"}, "ASCII AmiraMesh"), ({"encoding": "(HxByteRLE,1234)"}, "HxByteRLE"),
     ({"encoding": "(HxZip,99)"}, "HxZip")],
    ids=["ascii", "rle", "zip"],
)
def test_amira_ascii_and_compressed_are_unsupported(tmp_path: Path, kwargs: dict, match: str) -> None:
    path = write_amira(tmp_path / "a.am", rand((3, 4, 5)), **kwargs)
    with pytest.raises(UnsupportedFormatError, match=match):
        open_volume(path)


# --- chunking and pyramid -------------------------------------------------------------------------

def test_uneven_chunks_round_trip(tmp_path: Path) -> None:
    data = rand((37, 50, 45), "int16")
    img = open_image(write_image(data, tmp_path / "u.ome.zarr", chunks=(8, 16, 20)))
    assert img.data.chunksize == (8, 16, 20) and img.levels == 1
    assert zarr.open_array(tmp_path / "u.ome.zarr" / "0").chunks == (8, 16, 20)
    np.testing.assert_array_equal(img.data.compute(), data)


def test_default_chunks_are_slice_stacks_and_large_chunks_clip(tmp_path: Path) -> None:
    data = rand((40, 30, 20))
    assert open_image(write_image(data, tmp_path / "d.ome.zarr")).data.chunksize == (32, 30, 20)
    written = write_image(data, tmp_path / "c.ome.zarr", chunks=(99, 99, 7))
    assert open_image(written).data.chunksize == (40, 30, 7)
    for bad in [(0, 8, 8), (8, -1, 8), (8, 8)]:
        with pytest.raises(ConfigError):
            write_image(data, tmp_path / "bad.ome.zarr", chunks=bad)
    assert not (tmp_path / "bad.ome.zarr").exists()


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((37, 50, 45), [(37, 50, 45)]),
     ((70, 66, 130), [(70, 66, 130), (35, 33, 65)]),
     ((128, 128, 128), [(128,) * 3, (64,) * 3, (32,) * 3]),
     ((1024, 1100, 1000), [(1024, 1100, 1000), (512, 550, 500), (256, 275, 250), (128, 138, 125),
                           (64, 69, 63)])],
    ids=["no-level", "one-level-odd", "cube", "capped-at-4"],
)
def test_pyramid_shapes(shape: tuple[int, int, int], expected: list[tuple[int, int, int]]) -> None:
    assert pyramid_shapes(shape) == expected


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8"])
def test_level1_is_2x2x2_mean(tmp_path: Path, dtype: str) -> None:
    data = rand((70, 66, 131), dtype)
    img = open_image(write_image(data, tmp_path / "p.ome.zarr", chunks=(10, 33, 64), voxel_size_nm=(2, 3, 4)))
    assert img.levels == 2
    level1 = img.level(1).compute()
    assert level1.shape == (35, 33, 66) and level1.dtype == np.dtype(dtype)
    mean = data[:, :, :130].reshape(35, 2, 33, 2, 65, 2).mean(axis=(1, 3, 5))
    if dtype == "float32":
        np.testing.assert_allclose(level1[:, :, :65], mean, rtol=1e-6)
    else:
        np.testing.assert_array_equal(level1[:, :, :65], np.rint(mean).astype(dtype))
    last = data[:, :, 130].reshape(35, 2, 33, 2).mean(axis=(1, 3))  # odd edge: mean of what exists
    np.testing.assert_allclose(level1[:, :, 65], np.rint(last) if dtype != "float32" else last, rtol=1e-6)
    scales = [d["coordinateTransformations"][0]["scale"] for d in
              zarr.open_group(tmp_path / "p.ome.zarr").attrs["ome"]["multiscales"][0]["datasets"]]
    assert scales == [[2, 3, 4], [4, 6, 8]]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 24), st.integers(1, 24)),
    chunks=st.tuples(st.integers(1, 50), st.integers(1, 30), st.integers(1, 30)),
)
def test_round_trip_for_any_chunking(tmp_path: Path, shape: tuple[int, int, int],
                                     chunks: tuple[int, int, int]) -> None:
    data = rand(shape, "int16")
    out = write_image(data, tmp_path / "h.ome.zarr", chunks=chunks, overwrite=True)
    img = open_image(out)
    assert img.data.chunksize == tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    np.testing.assert_array_equal(img.data.compute(), data)


def test_progress_counts_every_slab_of_every_level(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    write_image(rand((64, 64, 64)), tmp_path / "g.ome.zarr", chunks=(16, 64, 64),
                progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]  # 4 slabs at level 0, 2 at level 1 (32^3, chunk depth 16)


# --- validation by the reference implementations --------------------------------------------------

def test_image_and_labels_validate_with_ome_zarr_models_and_ome_zarr_reader(tmp_path: Path) -> None:
    data = rand((64, 70, 66))
    out = write_image(data, tmp_path / "v.ome.zarr", chunks=(16, 35, 66), voxel_size_nm=(30, 25, 25),
                      name="cell")
    model = ome_validates(out)
    assert model.ome_attributes.multiscales[0].name == "cell"
    assert len(model.datasets[0]) == 2
    nodes = ome_zarr_nodes(out)
    assert nodes[0].data[0].shape == (64, 70, 66) and nodes[0].data[1].shape == (32, 35, 33)

    labels = (data > 0.01).astype(np.uint16) * 7
    write_labels(out, "cells", labels, colors={7: (255, 0, 0)})
    model = ome_validates(out)
    assert model.labels is not None and model.labels.label_paths == ["cells"]
    from ome_zarr_models.v05.image_label import ImageLabel

    image_label = ImageLabel.from_zarr(zarr.open_group(out / "labels" / "cells", mode="r"))
    assert image_label.ome_attributes.image_label.source.image == "../../"
    label_nodes = [n for n in ome_zarr_nodes(out) if "image-label" in n.zarr.root_attrs]
    assert len(label_nodes) == 1 and label_nodes[0].data[0].shape == (64, 70, 66)


# --- streaming and memory -------------------------------------------------------------------------

def test_write_reads_slabs_no_deeper_than_the_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "v.npy", rand((45, 40, 40)))
    reads: list[tuple[int, int]] = []
    original = Volume.read

    def spy(self: Volume, z0: int, z1: int) -> np.ndarray:
        reads.append((z0, z1))
        return original(self, z0, z1)

    monkeypatch.setattr(Volume, "read", spy)
    write_image(open_volume(tmp_path / "v.npy"), tmp_path / "v.ome.zarr", chunks=(8, 20, 20))
    assert max(z1 - z0 for z0, z1 in reads) <= 8
    assert sorted(reads) == [(z, min(z + 8, 45)) for z in range(0, 45, 8)]  # each slice read once


def test_peak_memory_is_a_few_slabs(tmp_path: Path) -> None:
    data = rand((64, 256, 256))
    np.save(tmp_path / "big.npy", data)
    del data
    vol = open_volume(tmp_path / "big.npy")
    slab = 8 * 256 * 256 * 4
    tracemalloc.start()
    try:
        write_image(vol, tmp_path / "big.ome.zarr", chunks=(8, 256, 256))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4.5 * slab < vol.nbytes, f"peak {peak / 2**20:.1f} MiB vs slab {slab / 2**20:.1f} MiB"


# --- bad inputs -----------------------------------------------------------------------------------

def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.mrc: no such file"):
        open_volume(tmp_path / "nope.mrc")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        open_volume(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.mrc").write_bytes(b"")
    with pytest.raises(InputError, match=r"e.mrc: file is empty \(0 bytes\)"):
        open_volume(tmp_path / "e.mrc")


def test_truncated_mrc_names_expected_and_actual_bytes(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "t.mrc", rand((10, 16, 16)))
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=f"truncated MRC.*{full} bytes.*{full - 100} bytes"):
        open_volume(path)


def test_truncated_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", rand((10, 10, 10)))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-100])
    with pytest.raises(InputError, match=r"truncated .npy file.*4128 bytes.*4028 bytes"):
        open_volume(tmp_path / "t.npy")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_mrc(tmp_path / "locked.mrc", rand((4, 4, 4)))
    if os.geteuid() == 0:  # root reads any file: simulate the permission error instead

        def denied(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("sxtdask.io._readers.open", denied, raising=False)
    else:
        path.chmod(0)
    with pytest.raises(InputError, match=r"locked.mrc: not readable \(permission denied\)"):
        open_volume(path)


def test_truncated_amira(tmp_path: Path) -> None:
    path = write_amira(tmp_path / "t.am", rand((4, 5, 6)))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(InputError, match="truncated AmiraMesh"):
        open_volume(path)


def test_text_renamed_mrc(tmp_path: Path) -> None:
    (tmp_path / "notes.mrc").write_text("hello, this is not a tomogram\n" * 100)
    with pytest.raises(UnsupportedFormatError, match="notes.mrc: not an MRC file"):
        open_volume(tmp_path / "notes.mrc")


def test_npy_that_is_not_npy(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"PK\x03\x04 this is a zip, not npy" * 10)
    with pytest.raises(UnsupportedFormatError, match="x.npy: not a NumPy .npy file"):
        open_volume(tmp_path / "x.npy")


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "x.dat").write_bytes(b"\x01\x02" * 600)
    with pytest.raises(UnsupportedFormatError, match="unknown extension '.dat'"):
        open_volume(tmp_path / "x.dat")


def test_content_wins_over_extension(tmp_path: Path) -> None:
    data = rand((3, 4, 5))
    np.save(tmp_path / "x.npy", data)
    vol = open_volume((tmp_path / "x.npy").rename(tmp_path / "x.tif"))
    assert vol.format == "npy"
    np.testing.assert_array_equal(vol[:], data)


def test_2d_data(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "sample.mrc", rand((64, 64)))
    msg = r"sample.mrc: data are 2-D \(shape \(64, 64\)\); a tomogram must be 3-D \(Z, Y, X\)"
    with pytest.raises(InvalidVolumeError, match=msg):
        open_volume(path)


def test_4d_non_singleton(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", rand((2, 3, 4, 5)))
    with pytest.raises(InvalidVolumeError, match=r"data are 4-D \(shape \(2, 3, 4, 5\)\)"):
        open_volume(tmp_path / "x.npy")


def test_zero_sized_axis(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", np.zeros((0, 4, 5), np.float32))
    with pytest.raises(InvalidVolumeError, match="zero-sized axis"):
        open_volume(tmp_path / "z.npy")


@pytest.mark.parametrize(("array", "match"), [(np.zeros((2, 3, 4), np.complex64), "complex"),
                                              (np.zeros((2, 3, 4), "U3"), "not numeric")],
                         ids=["complex", "str"])
def test_non_real_dtype(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "c.npy", array)
    with pytest.raises(InvalidVolumeError, match=match):
        open_volume(tmp_path / "c.npy")


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "infinite")], ids=["nan", "inf"])
def test_non_finite_voxel_fails_and_leaves_nothing(tmp_path: Path, value: float, word: str) -> None:
    data = rand((40, 16, 16))
    data[21, 3, 4] = value
    path = write_mrc(tmp_path / "bad.mrc", data)
    before = siblings(path)
    with pytest.raises(InvalidVolumeError, match=f"bad.mrc: {word} voxel values at slice z=21"):
        write_image(open_volume(path), tmp_path / "bad.ome.zarr", chunks=(8, 16, 16))
    assert siblings(path) == before  # neither the output nor its .partial directory


def test_existing_output_without_overwrite_is_untouched(tmp_path: Path) -> None:
    out = write_image(rand((8, 8, 8), seed=1), tmp_path / "o.ome.zarr")
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(OutputError, match="o.ome.zarr: exists; pass overwrite=True to replace it"):
        write_image(rand((8, 8, 8), seed=2), out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    new = rand((8, 8, 8), seed=3)
    write_image(new, out, overwrite=True)
    np.testing.assert_array_equal(open_image(out).data.compute(), new)
    assert siblings(out) == ["o.ome.zarr"]  # no .old- or .partial- leftovers


def test_failed_overwrite_keeps_old_output(tmp_path: Path) -> None:
    old = rand((8, 8, 8), seed=1)
    out = write_image(old, tmp_path / "o.ome.zarr")
    bad = rand((8, 8, 8))
    bad[5] = np.nan
    with pytest.raises(InvalidVolumeError):
        write_image(bad, out, overwrite=True)
    np.testing.assert_array_equal(open_image(out).data.compute(), old)
    assert siblings(out) == ["o.ome.zarr"]


@pytest.mark.parametrize("where", ["parent-is-a-file", "parent-missing"])
def test_unwritable_output_fails_before_reading(tmp_path: Path, where: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "o.ome.zarr" if where == "parent-is-a-file" else tmp_path / "no" / "o.ome.zarr"
    np.save(tmp_path / "v.npy", rand((4, 4, 4)))
    vol = open_volume(tmp_path / "v.npy")
    monkeypatch.setattr(Volume, "read", lambda *a: pytest.fail("data read before the output was checked"))
    with pytest.raises(OutputError, match="o.ome.zarr: cannot write"):
        write_image(vol, out)


# --- OME-Zarr reading and labels ------------------------------------------------------------------

def test_open_image_rejects_non_ome(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    with pytest.raises(InputError, match="plain.zarr: not an OME-Zarr 0.5 image"):
        open_image(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match="no zarr.json"):
        open_image(tmp_path)


def test_create_then_finalize_labels(tmp_path: Path) -> None:
    out = write_image(rand((66, 64, 70)), tmp_path / "l.ome.zarr", chunks=(16, 32, 35))
    labels = np.random.default_rng(0).integers(0, 50, (66, 64, 70)).astype(np.uint32)
    arr = create_labels(out, "isg", shape=(66, 64, 70), chunks=(16, 32, 35))
    assert arr.chunks == (16, 32, 35) and arr.dtype == np.uint32
    for z0 in range(0, 66, 16):  # the engine writes chunk by chunk
        arr[z0:z0 + 16] = labels[z0:z0 + 16]
    assert list_labels(out) == [] and not labels_complete(out, "isg")
    with pytest.raises(InputError, match="no label image 'isg'; available: none"):
        open_labels(out, "isg")
    ome_validates(out)  # an unfinished label image does not break the image
    finalize_labels(out, "isg")
    assert list_labels(out) == ["isg"] and labels_complete(out, "isg")
    np.testing.assert_array_equal(open_labels(out, "isg").compute(), labels)
    level1 = zarr.open_array(out / "labels" / "isg" / "1")[:]
    np.testing.assert_array_equal(level1, labels[::2, ::2, ::2])
    with pytest.raises(InputError, match="no label image 'mito'; available: isg"):
        open_labels(out, "mito")


def test_existing_labels_need_overwrite_and_unfinished_ones_resume(tmp_path: Path) -> None:
    out = write_image(rand((8, 8, 8)), tmp_path / "l.ome.zarr")
    write_labels(out, "cells", da.ones((8, 8, 8), dtype=np.uint8, chunks=4))
    with pytest.raises(OutputError, match="label image 'cells' exists; pass overwrite=True"):
        create_labels(out, "cells", shape=(8, 8, 8), chunks=None, dtype="uint8")
    arr = create_labels(out, "cells", shape=(8, 8, 8), chunks=None, dtype="uint8", overwrite=True)
    assert list_labels(out) == [] and arr[:].max() == 0
    arr[:4] = 3
    again = create_labels(out, "cells", shape=(8, 8, 8), chunks=None, dtype="uint8")  # resumes
    assert again[:4].min() == 3
    with pytest.raises(ConfigError, match="label dtype float32"):
        write_labels(out, "bad", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(ConfigError, match="differs from the image shape"):
        create_labels(out, "bad", shape=(8, 8, 9), chunks=None)


# --- hostile and broken input (issue 16) ----------------------------------------------------------

def _write_pages(path: Path, pages: list[np.ndarray], metadata: dict | None) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for p in pages:
            tw.write(p, photometric="minisblack", metadata=metadata, contiguous=False)
    return path


@pytest.mark.parametrize("metadata", [None, {}], ids=["plain", "shaped"])
def test_tiff_odd_page_is_refused_naming_it(tmp_path: Path, metadata: dict | None) -> None:
    square, odd = np.ones((64, 64), np.uint16), np.ones((64, 80), np.uint8)
    pages = [square] * 17 + [odd] + [square] * 2
    path = _write_pages(tmp_path / "x.tif", pages, metadata)
    msg = (r"x.tif: page 17 is 64×80 uint8, pages 0–16 are 64×64 uint16; sxtdask reads TIFF stacks whose "
           r"pages all have one shape and dtype")
    with pytest.raises(UnsupportedFormatError, match=msg):
        open_volume(path)


def test_tiff_page_of_another_dtype_is_refused(tmp_path: Path) -> None:
    """Same shape, other dtype: tifffile makes one uint16 series of it (read as wrong numbers before)."""
    pages = [np.ones((8, 8), np.uint16)] * 5 + [np.ones((8, 8), np.uint8)] + [np.ones((8, 8), np.uint16)] * 2
    with pytest.raises(UnsupportedFormatError, match="page 5 is 8×8 uint8, pages 0–4 are 8×8 uint16"):
        open_volume(_write_pages(tmp_path / "x.tif", pages, None))


def test_tiff_pages_in_several_series_are_read_whole(tmp_path: Path) -> None:
    """One series per page (tifffile's shaped writes in a loop), or two 3-D writes: every page, in order."""
    data = rand((7, 6, 5), "uint16")
    vol = open_volume(_write_pages(tmp_path / "loop.tif", list(data), {}))
    assert vol.shape == (7, 6, 5)
    np.testing.assert_array_equal(vol[:], data)
    with tifffile.TiffWriter(tmp_path / "two.tif") as tw:
        tw.write(data[:4], photometric="minisblack")
        tw.write(data[4:], photometric="minisblack")
    assert len(tifffile.TiffFile(tmp_path / "two.tif").series) == 2
    np.testing.assert_array_equal(open_volume(tmp_path / "two.tif")[:], data)  # was 4 slices


@pytest.mark.parametrize("spacing", [float("nan"), -2.0, 0.0], ids=["nan", "negative", "zero"])
def test_tiff_bad_spacing_falls_back_to_one_nm(tmp_path: Path, spacing: float) -> None:
    tifffile.imwrite(tmp_path / "s.tif", rand((3, 4, 5)), imagej=True, resolution=(0.5, 0.5),
                     metadata={"spacing": spacing, "unit": "nm"})
    assert open_volume(tmp_path / "s.tif").voxel_size_nm == (1.0, 1.0, 1.0)


def test_mrc_axis_order_is_applied(tmp_path: Path) -> None:
    """(mapc, mapr, maps) = (2, 1, 3): columns are y, rows are x; the volume comes out (Z, Y, X)."""
    vol = rand((3, 4, 5))
    path = write_mrc(tmp_path / "p.mrc", np.ascontiguousarray(vol.transpose(0, 2, 1)))
    raw = bytearray(path.read_bytes())
    raw[64:76] = np.array([2, 1, 3], "<i4").tobytes()
    path.write_bytes(bytes(raw))
    got = open_volume(path)
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got[:], vol)


def test_mrc_axis_order_that_is_no_permutation_warns(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "z.mrc", rand((3, 4, 5)))
    raw = bytearray(path.read_bytes())
    raw[64:76] = bytes(12)
    path.write_bytes(bytes(raw))
    with pytest.warns(HeaderWarning, match=r"axis order \(mapc, mapr, maps\) = \(0, 0, 0\)"):
        np.testing.assert_array_equal(open_volume(path)[:], rand((3, 4, 5)))


@pytest.mark.parametrize(("text", "match"), [
    ("{'descr': '|O', 'fortran_order': False, 'shape': (2, 3, 4), }", "Python objects"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3, 4), }", "negative axis length"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), 'x': 1}", "not a valid .npy file"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4)", "not a valid .npy file"),
    ("__import__('os').system('true')", "not a valid .npy file"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 4), }",
     "truncated .npy file"),
], ids=["object", "negative", "extra-key", "unclosed", "code", "huge"])
def test_npy_bad_headers(tmp_path: Path, text: str, match: str) -> None:
    head = text.encode() + b" " * ((-(11 + len(text))) % 64) + b"\n"
    magic = b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little")
    (tmp_path / "h.npy").write_bytes(magic + head + bytes(96))
    with pytest.raises(InputError, match=match) as err:
        open_volume(tmp_path / "h.npy")
    assert "\n" not in str(err.value) and "h.npy" in str(err.value)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "BINARY-LITTLE"}, "unrecognised AmiraMesh header line"),
    ({"encoding": "(HxZip,12"}, "malformed AmiraMesh data encoding"),
    ({"kind": "float[0]"}, "0 components"),
], ids=["mode", "unclosed-encoding", "zero-components"])
def test_amira_malformed_headers(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=match):
        open_volume(write_amira(tmp_path / "m.am", rand((2, 3, 4)), **kwargs))


def test_amira_lattice_must_be_three_sizes_and_bad_bbox_is_ignored(tmp_path: Path) -> None:
    bbox: tuple = ("1.2.3", 4, 5, 6, 7, 8)
    path = write_amira(tmp_path / "b.am", rand((2, 3, 4)), bbox=bbox)
    assert open_volume(path).voxel_size_nm == (1.0, 1.0, 1.0)
    raw = path.read_bytes().replace(b"define Lattice 4 3 2", b"define Lattice 4 3 2 1")
    path.write_bytes(raw)
    with pytest.raises(UnsupportedFormatError, match="is not three sizes NX NY NZ"):
        open_volume(path)


def _ome_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())


def _set_ome_attrs(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    meta = _ome_attrs(path)
    edit(meta["attributes"]["ome"])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda o: o.update(multiscales={"a": 1}), "multiscales is dict, not a list"),
    (lambda o: o["multiscales"][0].update(datasets=["0"]), r"datasets\[0\] is str, not an object"),
    (lambda o: o["multiscales"][0]["datasets"][0].update(path=0), r"datasets\[0\].path is 0, not a string"),
    (lambda o: o["multiscales"][0]["datasets"][0].update(path="../x"), "not a relative path inside"),
    (lambda o: o["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(scale=[1, 1]),
     "is not a list of three positive finite numbers"),
    (lambda o: o["multiscales"][0]["datasets"][1]["coordinateTransformations"][0].update(
        scale=[1, float("nan"), 1]), "is not a list of three positive finite numbers"),
    (lambda o: o["multiscales"][0]["datasets"][0].update(coordinateTransformations={}), "is not a list"),
    (lambda o: o["multiscales"][0].update(axes="zyx"), "axes is not a list of objects"),
    (lambda o: o["multiscales"][0]["axes"][0].update(unit="parsec"), "has unit 'parsec'"),
    (lambda o: o["multiscales"][0]["datasets"].reverse(), r"level 1 \('0'\) has shape \(64, 64, 66\), "
                                                          "which does not halve"),
], ids=["multiscales", "dataset", "path-type", "path-escape", "scale-length", "scale-nan-level1",
        "transforms", "axes", "unit", "not-halving"])
def test_open_image_refuses_malformed_metadata(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    out = write_image(rand((64, 64, 66), "uint16"), tmp_path / "m.ome.zarr", chunks=(32, 32, 32))
    _set_ome_attrs(out, edit)
    with pytest.raises(InputError, match=match) as err:
        open_image(out)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(out))


def test_open_image_refuses_level_that_is_not_3d_or_not_json(tmp_path: Path) -> None:
    out = write_image(rand((64, 64, 66), "uint16"), tmp_path / "m.ome.zarr", chunks=(32, 32, 32))
    meta = json.loads((out / "1" / "zarr.json").read_text())
    meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"] = [32, 32], [32, 32]
    (out / "1" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"level 1 \('1'\)"):
        open_image(out)
    (out / "1" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match=r"level 1 \('1'\) cannot be opened"):
        open_image(out)


def test_open_image_follows_dataset_paths_and_units(tmp_path: Path) -> None:
    data = rand((64, 64, 66), "uint16")
    out = write_image(data, tmp_path / "p.ome.zarr", chunks=(32, 32, 32), voxel_size_nm=(2.0, 1.0, 1.0))
    (out / "0").rename(out / "s0")
    (out / "1").rename(out / "s1")

    def edit(o: dict) -> None:
        ms = o["multiscales"][0]
        for d, key in zip(ms["datasets"], ("s0", "s1"), strict=True):
            d["path"] = key
        for axis in ms["axes"]:
            axis["unit"] = "micrometer"

    _set_ome_attrs(out, edit)
    img = open_image(out)
    assert img.level_paths == ("s0", "s1") and img.voxel_size_nm == (2000.0, 1000.0, 1000.0)
    assert img.level0_path == (out / "s0").absolute() and img.array_path(1) == (out / "s1").absolute()
    np.testing.assert_array_equal(read_block(img.level0_path, (slice(3, 40),)), data[3:40])
    assert img.level(1).shape == (32, 32, 33)
    with pytest.raises(ConfigError, match="level 2 does not exist"):
        img.array_path(2)


def test_image_writes_every_chunk_and_refuses_a_missing_one(tmp_path: Path) -> None:
    data = rand((64, 64, 66), "uint16")
    data[:32, :32, :32] = 0  # an all-zero chunk is written too
    out = write_image(data, tmp_path / "c.ome.zarr", chunks=(32, 32, 32))
    assert len([p for p in (out / "0" / "c").rglob("*") if p.is_file()]) == 12
    assert len([p for p in (out / "1" / "c").rglob("*") if p.is_file()]) == 2
    write_labels(out, "empty", np.zeros(data.shape, np.uint8))  # labels keep absent-means-0
    assert not (out / "labels" / "empty" / "0" / "c").exists()
    np.testing.assert_array_equal(open_labels(out, "empty").compute(), 0)
    (out / "0" / "c" / "0" / "0" / "0").unlink()
    msg = (r"c.ome.zarr: 1 of 12 chunks of level 0 are missing \(e.g. chunk \(z, y, x\) = \(0, 0, 0\)\); "
           "the store is damaged")
    with pytest.raises(InputError, match=msg):
        open_image(out)
    with pytest.raises(InputError, match=r"chunk \(z, y, x\) = \(0, 0, 0\)\); the store is damaged"):
        read_block(out / "0", (slice(0, 8),))
    check_chunks_present(out / "1")  # level 1 is whole
    (out / "1" / "c" / "0" / "0" / "1").unlink()
    with pytest.raises(InputError, match="1 of 2 chunks of"):
        check_chunks_present(out / "1")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_damaged_chunk_is_one_input_error_naming_array_and_chunk(tmp_path: Path, damage: str) -> None:
    data = rand((64, 64, 66), "uint16")
    out = write_image(data, tmp_path / "d.ome.zarr", chunks=(32, 32, 32))
    chunk = out / "0" / "c" / "1" / "0" / "2"
    raw = bytearray(chunk.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(b"not a chunk" * 4)
    else:
        raw[len(raw) // 2] ^= 0x10  # zstd's checksum notices a flipped bit
    chunk.write_bytes(bytes(raw))
    img = open_image(out)  # every chunk is there
    np.testing.assert_array_equal(read_block(img.level0_path, (slice(0, 32),)), data[:32])
    msg = r"d.ome.zarr/0: chunk \(z, y, x\) = \(1, 0, 2\) cannot be decoded"
    with pytest.raises(InputError, match=msg) as err:
        read_block(img.level0_path, (slice(20, 50), slice(0, 64), slice(40, 66)))
    assert "\n" not in str(err.value)


def test_open_labels_follows_the_label_dataset_path(tmp_path: Path) -> None:
    out = write_image(rand((8, 8, 8)), tmp_path / "l.ome.zarr")
    labels = np.arange(512, dtype=np.uint16).reshape(8, 8, 8)
    write_labels(out, "cells", labels)
    (out / "labels" / "cells" / "0").rename(out / "labels" / "cells" / "full")
    _set_ome_attrs(out / "labels" / "cells",
                   lambda o: o["multiscales"][0]["datasets"][0].update(path="full"))
    np.testing.assert_array_equal(open_labels(out, "cells").compute(), labels)
    meta = _ome_attrs(out / "labels")
    meta["attributes"]["ome"]["labels"] = "cells"
    (out / "labels" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="ome.labels is not a list of names"):
        open_labels(out, "cells")
