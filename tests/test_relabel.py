"""The global relabel: ``sxtdask.label`` against scipy, face matching rules, the reduction."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from dask.core import get_dependencies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from sxtdask import label
from sxtdask.errors import ConfigError, LabelOverflowError
from sxtdask.relabel import BlockGrid, Match
from sxtdask.relabel._edges import face_edges, mutual_best_pairs
from sxtdask.relabel._local import renumber_block
from sxtdask.relabel._resolve import FaceEdges, resolve


@st.composite
def volumes(draw, max_ndim: int = 3, max_side: int = 12):
    """A random binary volume, an uneven chunking of it and a connectivity."""
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    chunks = []
    for n in shape:
        sizes, left = [], n
        while left:
            c = draw(st.integers(1, left))
            sizes.append(c)
            left -= c
        chunks.append(tuple(sizes))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.floats(0.1, 0.8))
    x = np.random.default_rng(seed).random(shape) < density
    connectivity = draw(st.integers(1, ndim))
    return x, tuple(chunks), ndimage.generate_binary_structure(ndim, connectivity)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volumes())
def test_label_equals_scipy_for_any_chunking(case):
    x, chunks, structure = case
    expected, n_expected = ndimage.label(x, structure)
    labels, n = label(da.from_array(x, chunks=chunks), structure)
    got = labels.compute(scheduler="sync")
    # Not only the same partition: the same IDs, because objects are numbered by first voxel.
    np.testing.assert_array_equal(got, expected)
    assert int(n.compute(scheduler="sync")) == n_expected
    assert got.dtype == np.int32


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((40, 50, 45), (8, 50, 45)),
        ((40, 50, 45), (7, 13, 11)),
        ((40, 50, 45), (1, 50, 45)),
        ((40, 50, 45), (40, 1, 45)),
        ((33, 20, 20), (32, 20, 20)),
    ],
    ids=["z-slabs", "uneven-cubes", "single-slices", "single-rows", "one-slice-edge-chunk"],
)
@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_label_blobs(shape, chunks, connectivity):
    rng = np.random.default_rng(7)
    x = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52
    s = ndimage.generate_binary_structure(3, connectivity)
    expected, n_expected = ndimage.label(x, s)
    labels, n = label(da.from_array(x, chunks=chunks), s)
    np.testing.assert_array_equal(labels.compute(), expected)
    assert int(n.compute()) == n_expected


def test_diagonal_contact_across_a_block_corner_joins():
    """Two voxels that touch only at a corner shared by eight blocks are one object (26-conn)."""
    x = np.zeros((4, 4, 4), bool)
    x[1, 1, 1] = x[2, 2, 2] = True
    labels, n = label(da.from_array(x, chunks=2), np.ones((3, 3, 3), bool))
    assert int(n.compute()) == 1
    labels, n = label(da.from_array(x, chunks=2))  # face connectivity: two objects
    assert int(n.compute()) == 2


def test_label_accepts_numpy_and_validates_structure():
    x = np.array([[1, 1, 0, 1], [0, 1, 0, 1]])
    labels, n = label(x)
    assert labels.compute().tolist() == [[1, 1, 0, 2], [0, 1, 0, 2]]
    with pytest.raises(ConfigError, match="structure must have shape"):
        label(x, np.ones((3, 3, 3)))
    with pytest.raises(ConfigError, match="centrosymmetric"):
        label(x, np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0]]))


def test_graph_is_linear_and_each_block_is_labelled_once(monkeypatch):
    x = np.random.default_rng(0).random((24, 24, 24)) < 0.3
    counts = {}
    for chunk in (12, 6, 4):
        labels, _ = label(da.from_array(x, chunks=chunk))
        blocks = int(np.prod(labels.numblocks))
        counts[blocks] = len(dict(labels.__dask_graph__()))
    # Tasks per block stay constant (dask-image's face graph grows ~12.5·B²).
    per_block = {b: t / b for b, t in counts.items()}
    assert max(per_block.values()) < 11, per_block

    calls = []
    real = ndimage.label
    monkeypatch.setattr(ndimage, "label", lambda *a, **k: calls.append(1) or real(*a, **k))
    labels, _ = label(da.from_array(x, chunks=6))
    labels.compute(scheduler="sync")
    assert len(calls) == 64  # dask-image recomputes each block's labels ~2.7·B times


def test_each_relabel_task_gets_only_its_lookup_slice():
    x = np.random.default_rng(0).random((16, 16, 16)) < 0.4
    labels, _ = label(da.from_array(x, chunks=8))
    graph = dict(labels.__dask_graph__())
    resolve_keys = {k for k in graph if isinstance(k, str) and "resolve" in k}
    assert len(resolve_keys) == 1
    finals = [k for k in graph if isinstance(k, tuple) and k[0] == labels.name]
    assert len(finals) == 8
    for key in finals:
        deps = get_dependencies(graph, key)
        assert not deps & resolve_keys
        assert sum(1 for d in deps if "lookup" in str(d)) == 1


# --------------------------------------------------------------------------- instance matching


def test_mutual_best_keeps_touching_instances_apart_despite_boundary_disagreement():
    """Blocks disagree on the boundary between two touching granules by 5 voxels."""
    a = np.zeros((8, 30), np.uint32)
    b = np.zeros((8, 30), np.uint32)
    a[:, 0:15], a[:, 15:30] = 1, 2  # block A puts the boundary at x = 15
    b[:, 0:20], b[:, 20:30] = 1, 2  # block B at x = 20
    la, lb = mutual_best_pairs(a, b)
    assert sorted(zip(la.tolist(), lb.tolist(), strict=True)) == [(1, 1), (2, 2)]
    # Any-contact merging (what cellpose does) would also link A's 2 with B's 1: one object.
    la, lb = face_edges(a, b, Match.TOUCHING)
    assert (2, 1) in set(zip(la.tolist(), lb.tolist(), strict=True))


def test_mutual_best_ignores_a_piece_that_mostly_meets_background():
    a = np.zeros((4, 20), np.uint32)
    b = np.zeros((4, 20), np.uint32)
    a[:, 0:18] = 1  # a large false positive on one side
    b[:, 16:20] = 1  # a small object on the other
    la, lb = mutual_best_pairs(a, b)
    assert la.size == 0


def _instances_two_blocks(labels_z: np.ndarray, cut: int, halo: int) -> np.ndarray:
    """Stitch an instance volume split in two along z with a halo, through the reduction."""
    grid = BlockGrid((labels_z.shape[0], *labels_z.shape[1:]),
                     ((cut, labels_z.shape[0] - cut), (labels_z.shape[1],), (labels_z.shape[2],)),
                     (halo, 0, 0))
    results = [renumber_block(labels_z[grid.ext(i)], grid, i) for i in grid.indices()]
    ia, ib = face_edges(results[0].crops[1], results[1].crops[-1], Match.MUTUAL_BEST)
    res = resolve([r.meta for r in results], [FaceEdges(0, 1, ia, ib)], np.uint32)
    return np.concatenate([lut[r.core] for lut, r in zip(res.luts, results, strict=True)])


def test_instance_crossing_a_face_keeps_one_id_and_touching_pair_keeps_two():
    vol = np.zeros((20, 12, 24), np.uint32)
    zz, yy, xx = np.mgrid[:20, :12, :24]
    vol[(zz - 10) ** 2 + (yy - 6) ** 2 + (xx - 5) ** 2 <= 16] = 7  # crosses the face at z = 10
    vol[(zz < 10) & (xx >= 14) & (xx < 20) & (yy >= 3) & (yy < 9)] = 3  # two boxes that touch
    vol[(zz >= 10) & (xx >= 14) & (xx < 20) & (yy >= 3) & (yy < 9)] = 4  # across the face
    out = _instances_two_blocks(vol, cut=10, halo=4)
    assert len(np.unique(out[vol == 7])) == 1
    assert len(np.unique(out[vol == 3])) == 1 and len(np.unique(out[vol == 4])) == 1
    assert out[vol == 3][0] != out[vol == 4][0]
    assert sorted(np.unique(out).tolist()) == [0, 1, 2, 3]


def test_ids_are_64_bit_provisional_and_overflow_is_an_error():
    grid = BlockGrid((2, 300), ((2,), (300,)), (0, 0))
    raw = np.zeros((2, 300), np.int64)
    raw[0, ::2] = np.arange(1, 151)
    raw[1, 1::2] = np.arange(151, 301)
    res = renumber_block(raw, grid, (0, 0))
    assert res.meta.n_core == 300
    with pytest.raises(LabelOverflowError, match="300 objects do not fit in uint8"):
        resolve([res.meta], [], np.uint8)


def test_label_runs_on_a_distributed_cluster(client):
    x = ndimage.gaussian_filter(np.random.default_rng(3).random((30, 40, 40)), 1.2) > 0.52
    expected, n_expected = ndimage.label(x)
    labels, n = label(da.from_array(x, chunks=(7, 20, 13)))
    got, n_got = dask.compute(labels, n, scheduler=client)
    np.testing.assert_array_equal(got, expected)
    assert int(n_got) == n_expected


def test_the_count_works_like_dask_images():
    """``int(n)``, ``n.compute()`` and ``n.item()`` after compute, as with ``dask_image.ndmeasure.label``."""
    x = da.from_array(np.array([[1, 0, 1, 0], [1, 0, 0, 1]]), chunks=(1, 2))
    labels, n = label(x)
    assert int(n) == 3
    computed = n.compute()
    assert isinstance(computed, np.ndarray) and computed.shape == () and computed.item() == 3
    assert n.dtype == computed.dtype == np.intp
    ref_labels, ref_n = ndimage.label(x.compute())
    assert int(n) == ref_n and np.array_equal(labels.compute(), ref_labels)


def test_the_count_enters_further_dask_expressions():
    x = da.from_array(np.array([[1, 0, 1, 0], [1, 0, 0, 1]]), chunks=(1, 2))
    labels, n = label(x)
    assert int((n + 1).compute()) == 4
    assert int((labels == n).sum().compute()) == 1
    assert da.stack([n, n]).compute().tolist() == [3, 3]
    both = dask.compute(labels, n)
    assert int(both[1]) == 3 and both[0].max() == 3
