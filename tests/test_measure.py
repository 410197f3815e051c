"""Tests of sxtdask.measure: chunked per-instance statistics against skimage, tree shape, writing."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import dask
import dask.array as da
import dask.core
import numpy as np
import pandas as pd
import pytest
from dask.utils import key_split
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.measure import label as cc_label
from skimage.measure import regionprops

from sxtdask.errors import ConfigError, OutputError
from sxtdask.measure import TABLE_COLUMNS, instance_table, regionprops_table, write_table
from sxtdask.measure._partials import block_partial, combine_partials

AXES = ("z", "y", "x")


@pytest.fixture(autouse=True)
def _synchronous_scheduler() -> Iterator[None]:
    """Small graphs run fastest without threads; one test below uses threads explicitly."""
    with dask.config.set(scheduler="synchronous"):
        yield


def reference_table(
    labels: np.ndarray, image: np.ndarray | None, spacing: tuple[float, float, float]
) -> pd.DataFrame:
    """The expected table, from whole-volume skimage.measure.regionprops."""
    rows = []
    intensity = None if image is None else image.astype(np.float64)  # table means are float64
    for p in regionprops(labels, intensity_image=intensity, spacing=spacing):
        row = {
            "label": p.label,
            "volume_voxels": p.num_pixels,
            "volume_um3": p.area / 1e9,
            "equivalent_diameter_nm": p.equivalent_diameter_area,
            "mean_absorption": p.intensity_mean if image is not None else np.nan,
        }
        for i, axis in enumerate(AXES):
            row[f"centroid_{axis}_nm"] = p.centroid[i]  # physical: index * spacing
            row[f"bbox_min_{axis}_nm"] = p.bbox[i] * spacing[i]
            row[f"bbox_max_{axis}_nm"] = p.bbox[i + 3] * spacing[i]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return frame.astype({"label": np.int64, "volume_voxels": np.int64})


def assert_tables_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert tuple(actual.columns) == TABLE_COLUMNS
    assert actual["label"].dtype == np.int64 and actual["volume_voxels"].dtype == np.int64
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True),
        expected.reset_index(drop=True),
        check_exact=False,
        rtol=1e-10,
        atol=1e-12,
    )


def blobs(shape: tuple[int, int, int], seed: int, dtype: type = np.int32) -> np.ndarray:
    """Connected-component labels of a thresholded noise volume (many small, some large)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) > 0.55
    return cc_label(mask, connectivity=1).astype(dtype)


def random_image(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).normal(1.0, 0.3, shape).astype(np.float32)


CASES = [
    pytest.param((12, 13, 14), (5, 6, 7), id="uneven-edges-12x13x14-by-5x6x7"),
    pytest.param((9, 10, 11), (1, 10, 11), id="one-slice-chunks-9x10x11"),
    pytest.param((8, 9, 10), (8, 9, 10), id="single-chunk-8x9x10"),
    pytest.param((7, 16, 15), (3, 5, 16), id="xy-tiles-7x16x15-by-3x5x16"),
    pytest.param((6, 7, 5), (1, 2, 3), id="tiny-chunks-6x7x5-by-1x2x3"),
    pytest.param((10, 12, 9), ((4, 1, 5), (7, 5), (2, 2, 2, 3)), id="irregular-chunks-10x12x9"),
]


@pytest.mark.parametrize(("shape", "chunks"), CASES)
@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0, 1.0), (30.0, 10.0, 12.5)], ids=["isotropic-1nm", "anisotropic-30x10x12.5nm"]
)
def test_matches_skimage_regionprops(shape, chunks, spacing) -> None:
    labels = blobs(shape, seed=sum(shape))
    image = random_image(shape, seed=sum(shape))
    assert labels.max() > 3, "fixture should contain several instances"
    table = instance_table(
        da.from_array(labels, chunks=chunks), da.from_array(image, chunks=chunks), spacing_nm=spacing
    ).compute()
    assert_tables_equal(table, reference_table(labels, image, spacing))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint64, np.int64])
def test_label_dtypes_and_no_image(dtype) -> None:
    labels = blobs((6, 8, 7), seed=3, dtype=np.int64) % 200  # keep labels within uint8
    labels = labels.astype(dtype)
    table = regionprops_table(da.from_array(labels, chunks=(2, 3, 4)), spacing_nm=(5, 6, 7))
    assert table["mean_absorption"].isna().all()
    assert_tables_equal(table, reference_table(labels, None, (5.0, 6.0, 7.0)))


def test_non_contiguous_label_values_are_one_row_each() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=(9, 8, 7)).astype(np.uint16) * 1000  # labels 1000..4000
    image = rng.random((9, 8, 7))
    table = regionprops_table(da.from_array(labels, chunks=(4, 3, 5)), image)
    assert table["label"].tolist() == [1000, 2000, 3000, 4000]
    assert_tables_equal(table, reference_table(labels, image, (1.0, 1.0, 1.0)))


def test_instance_crossing_chunk_faces_is_one_row_with_full_volume() -> None:
    labels = np.zeros((12, 12, 12), dtype=np.uint32)
    labels[2:10, 3:11, 1:9] = 5  # crosses faces at 4 and 8 along every axis: 27 blocks
    labels[0, 0, 0] = 2
    spacing = (20.0, 10.0, 10.0)
    table = regionprops_table(da.from_array(labels, chunks=4), spacing_nm=spacing)
    assert table["label"].tolist() == [2, 5]
    row = table.set_index("label").loc[5]
    assert row["volume_voxels"] == 8 * 8 * 8
    assert row["volume_um3"] == pytest.approx(512 * 20 * 10 * 10 / 1e9)
    assert row[["centroid_z_nm", "centroid_y_nm", "centroid_x_nm"]].tolist() == pytest.approx(
        [5.5 * 20, 6.5 * 10, 4.5 * 10]
    )
    assert row[["bbox_min_z_nm", "bbox_min_y_nm", "bbox_min_x_nm"]].tolist() == [40, 30, 10]
    assert row[["bbox_max_z_nm", "bbox_max_y_nm", "bbox_max_x_nm"]].tolist() == [200, 110, 90]
    assert row["equivalent_diameter_nm"] == pytest.approx((6 * 512 * 2000 / np.pi) ** (1 / 3))


def test_image_with_other_chunks_is_rechunked() -> None:
    labels = blobs((10, 11, 12), seed=11)
    image = random_image((10, 11, 12), seed=11)
    table = regionprops_table(
        da.from_array(labels, chunks=(3, 4, 5)), da.from_array(image, chunks=(7, 2, 12))
    )
    assert_tables_equal(table, reference_table(labels, image, (1.0, 1.0, 1.0)))


def test_numpy_inputs_and_threaded_scheduler() -> None:
    labels = blobs((8, 8, 8), seed=5)
    image = random_image((8, 8, 8), seed=5)
    with dask.config.set(scheduler="threads"):
        table = regionprops_table(labels, image, spacing_nm=(2.0, 3.0, 4.0))
    assert_tables_equal(table, reference_table(labels, image, (2.0, 3.0, 4.0)))


@pytest.mark.parametrize(
    "labels",
    [np.zeros((5, 6, 7), dtype=np.uint16), np.zeros((0, 4, 4), dtype=np.int32)],
    ids=["all-background", "zero-slices"],
)
def test_empty_labels_give_empty_table_with_columns(labels) -> None:
    table = regionprops_table(da.from_array(labels, chunks=2), np.ones(labels.shape))
    assert len(table) == 0
    assert tuple(table.columns) == TABLE_COLUMNS
    assert table["label"].dtype == np.int64 and table["volume_voxels"].dtype == np.int64
    assert all(table[c].dtype == np.float64 for c in TABLE_COLUMNS[2:])


@st.composite
def chunked_volumes(draw: st.DrawFn) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    shape = tuple(draw(st.integers(1, 7)) for _ in range(3))
    labels = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 4)))
    chunks = []
    for size in shape:
        cuts = draw(st.sets(st.integers(1, size - 1), max_size=3)) if size > 1 else set()
        edges = [0, *sorted(cuts), size]
        chunks.append(tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True)))
    return labels, tuple(chunks)


@settings(max_examples=150, deadline=None)
@given(volume=chunked_volumes(), seed=st.integers(0, 2**16))
def test_chunking_does_not_change_the_table(volume, seed) -> None:
    labels, chunks = volume
    image = np.random.default_rng(seed).random(labels.shape)
    spacing = (3.0, 2.0, 1.5)
    whole = instance_table(
        da.from_array(labels, chunks=labels.shape), da.from_array(image, chunks=labels.shape),
        spacing_nm=spacing,
    ).compute()
    chunked = instance_table(
        da.from_array(labels, chunks=chunks), da.from_array(image, chunks=chunks), spacing_nm=spacing
    ).compute()
    assert_tables_equal(chunked, whole)
    assert whole["volume_voxels"].sum() == np.count_nonzero(labels)


def _dependency_counts(delayed) -> dict[str, list[int]]:
    graph = dict(delayed.__dask_graph__())
    counts: dict[str, list[int]] = {}
    for key in graph:
        counts.setdefault(key_split(key), []).append(len(dask.core.get_dependencies(graph, key)))
    return counts


@pytest.mark.parametrize("nblocks_per_axis", [4, 8], ids=["64-blocks", "512-blocks"])
def test_tree_reduction_has_bounded_fan_in(nblocks_per_axis) -> None:
    n = nblocks_per_axis
    labels = da.ones((2 * n, 2 * n, 2 * n), dtype=np.uint16, chunks=2)
    image = da.ones(labels.shape, chunks=2)
    delayed = instance_table(labels, image)
    counts = _dependency_counts(delayed)
    nblocks = n**3
    assert len(counts["sxtdask-stats-partial"]) == nblocks
    assert max(counts["sxtdask-stats-partial"]) <= 2  # one labels block, one image block
    combine = counts["sxtdask-stats-combine"]
    assert max(combine) <= 8
    assert len(combine) > nblocks // 8  # more than one level: no task sees every partial
    assert counts["sxtdask-stats-table"] == [1]
    assert max(max(v) for v in counts.values()) <= 8
    table = delayed.compute()
    assert table["volume_voxels"].tolist() == [8 * nblocks]


def test_graph_keys_have_readable_prefixes() -> None:
    delayed = instance_table(da.ones((4, 4, 4), dtype=np.uint8, chunks=2))
    prefixes = {key_split(k) for k in dict(delayed.__dask_graph__())}
    assert {"sxtdask-stats-partial", "sxtdask-stats-combine", "sxtdask-stats-table"} <= prefixes
    assert key_split(delayed.key) == "sxtdask-stats-table"


def test_partials_combine_exactly() -> None:
    left = np.zeros((2, 3, 3), dtype=np.int64)
    left[1, 1:, :2] = 4
    right = np.zeros((2, 3, 3), dtype=np.int64)
    right[0, :2, 1] = 4
    right[1, 2, 2] = 9
    merged = combine_partials(block_partial(left, None, (0, 0, 0)), block_partial(right, None, (2, 0, 0)))
    assert merged["label"].tolist() == [4, 9]
    assert merged["count"].tolist() == [6, 1]
    assert merged["sum_z"].tolist() == [1 * 4 + 2 * 2, 3]
    assert merged["min_z"].tolist() == [1, 3] and merged["max_z"].tolist() == [2, 3]
    assert merged["min_y"].tolist() == [0, 2] and merged["max_y"].tolist() == [2, 2]
    assert merged["min_x"].tolist() == [0, 2] and merged["max_x"].tolist() == [1, 2]


# --- validation -------------------------------------------------------------------------------


def test_negative_labels_are_refused_at_compute() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[3, 3, 3] = -2
    delayed = instance_table(da.from_array(labels, chunks=2))
    with pytest.raises(ConfigError, match=r"non-negative.*-2"):
        delayed.compute()


@pytest.mark.parametrize(
    ("labels", "image", "spacing", "match"),
    [
        (np.zeros((4, 4), dtype=np.int32), None, (1, 1, 1), "3-D"),
        (np.zeros((2, 4, 4, 4), dtype=np.int32), None, (1, 1, 1), "3-D"),
        (np.zeros((4, 4, 4), dtype=np.float32), None, (1, 1, 1), "integer dtype"),
        (np.zeros((4, 4, 4), dtype=bool), None, (1, 1, 1), "integer dtype"),
        (np.zeros((4, 4, 4), dtype=np.int32), np.zeros((4, 4, 5)), (1, 1, 1), "shape"),
        (np.zeros((4, 4, 4), dtype=np.int32), np.zeros((4, 4, 4), dtype="U1"), (1, 1, 1), "numeric"),
        (np.zeros((4, 4, 4), dtype=np.int32), None, (1, 1), "spacing_nm"),
        (np.zeros((4, 4, 4), dtype=np.int32), None, (1, 0, 1), "spacing_nm"),
        (np.zeros((4, 4, 4), dtype=np.int32), None, (1, float("nan"), 1), "spacing_nm"),
    ],
    ids=["2d", "4d", "float-labels", "bool-labels", "shape-mismatch", "string-image",
         "two-spacings", "zero-spacing", "nan-spacing"],
)
def test_bad_inputs_raise_config_error(labels, image, spacing, match) -> None:
    with pytest.raises(ConfigError, match=match):
        instance_table(labels, image, spacing_nm=spacing)


# --- write_table ------------------------------------------------------------------------------


@pytest.fixture
def table() -> pd.DataFrame:
    labels = blobs((6, 7, 8), seed=2)
    return regionprops_table(labels, random_image((6, 7, 8), seed=2), spacing_nm=(30.0, 10.0, 10.0))


def test_write_csv_round_trip(tmp_path, table) -> None:
    out = write_table(table, tmp_path / "isg.csv")
    assert out == tmp_path / "isg.csv"
    back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, table, check_exact=False, rtol=1e-12)
    assert os.listdir(tmp_path) == ["isg.csv"]  # no temporary sibling left behind


def test_write_parquet_round_trip(tmp_path, table) -> None:
    out = write_table(table, str(tmp_path / "isg.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)
    assert os.listdir(tmp_path) == ["isg.parquet"]


def test_write_empty_table_parquet_keeps_dtypes(tmp_path) -> None:
    empty = regionprops_table(np.zeros((2, 2, 2), dtype=np.uint8))
    back = pd.read_parquet(write_table(empty, tmp_path / "empty.parquet"))
    assert tuple(back.columns) == TABLE_COLUMNS and len(back) == 0
    pd.testing.assert_series_equal(back.dtypes, empty.dtypes)


def test_write_refuses_to_overwrite_unless_asked(tmp_path, table) -> None:
    out = tmp_path / "isg.csv"
    out.write_text("keep me\n")
    with pytest.raises(OutputError, match=r"isg\.csv.*exists"):
        write_table(table, out)
    assert out.read_text() == "keep me\n"
    write_table(table, out, overwrite=True)
    assert len(pd.read_csv(out)) == len(table)


@pytest.mark.parametrize("name", ["isg.xlsx", "isg", "isg.csv.gz"])
def test_write_bad_suffix_is_config_error(tmp_path, table, name) -> None:
    suffix = os.path.splitext(name)[1] or "(none)"
    with pytest.raises(ConfigError, match="suffix '?" + re.escape(suffix)):
        write_table(table, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_write_unwritable_location_is_output_error(tmp_path, table) -> None:
    with pytest.raises(OutputError, match="missing"):
        write_table(table, tmp_path / "missing" / "isg.csv")
    (tmp_path / "adir.csv").mkdir()
    with pytest.raises(OutputError, match="directory"):
        write_table(table, tmp_path / "adir.csv", overwrite=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="file"):
        write_table(table, blocker / "isg.parquet")


def test_written_tables_are_readable_like_any_new_file(tmp_path):
    """The atomic write must not leave the table private (mode 0600) to its owner."""
    import stat

    old = os.umask(0o022)
    try:
        for name in ("t.csv", "t.parquet"):
            out = write_table(pd.DataFrame({"label": [1, 2]}), tmp_path / name)
            assert stat.S_IMODE(out.stat().st_mode) == 0o644, name
    finally:
        os.umask(old)
