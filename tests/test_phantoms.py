"""Synthetic SXT phantoms: determinism, ground-truth consistency, contrast, options, files."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from sxtdask.errors import ConfigError, OutputError
from sxtdask.phantoms import Phantom, make_phantom, write_phantom

SMALL = (48, 96, 96)


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def phantom(request: pytest.FixtureRequest) -> Phantom:
    return make_phantom((64, 128, 128), seed=request.param)


def touching_pairs(isg: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different granule IDs that share a voxel face."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(3):
        a = np.moveaxis(isg, axis, 0)[:-1]
        b = np.moveaxis(isg, axis, 0)[1:]
        hit = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
        pairs.update(zip(lo.tolist(), hi.tolist(), strict=True))
    return pairs


def mean_gradient(image: np.ndarray) -> float:
    return float(np.mean([np.abs(g).mean() for g in np.gradient(image)]))


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays() -> None:
    a, b = make_phantom(SMALL, seed=7), make_phantom(SMALL, seed=7)
    for name in ("image", "cell", "mito", "isg"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.params == b.params


def test_different_seeds_differ_in_content_and_counts() -> None:
    a, b = make_phantom(SMALL, seed=3), make_phantom(SMALL, seed=4)
    assert not np.array_equal(a.image, b.image)
    assert a.n_isg != b.n_isg
    assert np.count_nonzero(a.cell) != np.count_nonzero(b.cell)
    assert a.params.noise_sigma != b.params.noise_sigma


def test_seeds_vary_cell_size_counts_and_noise() -> None:
    many = [make_phantom((32, 64, 64), seed=s) for s in range(6)]
    cell_sizes = [np.count_nonzero(p.cell) for p in many]
    assert max(cell_sizes) > 1.2 * min(cell_sizes)
    assert len({p.n_isg for p in many}) >= 4
    assert len({round(p.params.noise_sigma, 4) for p in many}) == 6


def test_an_override_does_not_change_the_other_draws() -> None:
    base = make_phantom(SMALL, seed=5)
    fewer = make_phantom(SMALL, seed=5, n_isg=3)
    assert np.array_equal(base.cell, fewer.cell)
    assert np.array_equal(base.mito, fewer.mito)
    assert fewer.n_isg == 3
    assert fewer.params.noise_sigma == base.params.noise_sigma


# --- ground truth -----------------------------------------------------------------------------


def test_arrays_have_the_documented_types(phantom: Phantom) -> None:
    assert phantom.image.dtype == np.float32
    assert phantom.cell.dtype == np.uint8 and phantom.mito.dtype == np.uint8
    assert phantom.isg.dtype == np.uint32
    assert {a.shape for a in (phantom.image, phantom.cell, phantom.mito, phantom.isg)} == {
        (64, 128, 128)
    }
    assert set(np.unique(phantom.cell).tolist()) == {0, 1, 2}
    assert set(np.unique(phantom.mito).tolist()) == {0, 1}
    assert np.isfinite(phantom.image).all()


def test_isg_labels_are_consecutive(phantom: Phantom) -> None:
    ids = np.unique(phantom.isg)
    assert phantom.n_isg >= 15
    assert np.array_equal(ids, np.arange(phantom.n_isg + 1))
    assert phantom.n_isg == phantom.params.n_isg  # there is room for every granule


def test_isgs_lie_in_cytoplasm_only(phantom: Phantom) -> None:
    inside = phantom.isg > 0
    assert np.all(phantom.cell[inside] == 1)
    assert not np.any(phantom.mito[inside])


def test_isg_sizes_and_shapes(phantom: Phantom) -> None:
    counts = np.bincount(phantom.isg.ravel())[1:]
    radius = (3.0 * counts / (4.0 * np.pi)) ** (1.0 / 3.0)
    assert radius.min() >= 2.2 and radius.max() <= 5.3, (radius.min(), radius.max())
    assert radius.max() - radius.min() > 1.0  # sizes vary
    for label, box in enumerate(ndimage.find_objects(phantom.isg), start=1):
        _, n_parts = ndimage.label(phantom.isg[box] == label)
        assert n_parts == 1, f"ISG {label} is split into {n_parts} pieces"
        assert max(s.stop - s.start for s in box) <= 11


def test_some_isgs_touch_in_pairs_and_triples(phantom: Phantom) -> None:
    pairs = touching_pairs(phantom.isg)
    assert len(pairs) >= 2
    touching = {i for pair in pairs for i in pair}
    fraction = len(touching) / phantom.n_isg
    assert fraction == pytest.approx(phantom.params.touching_fraction, abs=0.06)
    graph = np.zeros((phantom.n_isg + 1,) * 2, dtype=bool)
    for a, b in pairs:
        graph[a, b] = graph[b, a] = True
    for cluster in _components(graph):
        assert 2 <= len(cluster) <= 3


def _components(graph: np.ndarray) -> list[set[int]]:
    from scipy.sparse.csgraph import connected_components

    n, labels = connected_components(graph, directed=False)
    groups = [set(np.flatnonzero(labels == k).tolist()) for k in range(n)]
    return [g for g in groups if len(g) > 1]


def test_mitochondria_lie_in_cytoplasm_only(phantom: Phantom) -> None:
    mito = phantom.mito.astype(bool)
    assert np.count_nonzero(mito) > 500
    assert np.all(phantom.cell[mito] == 1)
    _, n_tubes = ndimage.label(mito)
    assert n_tubes >= 3


def test_nucleus_is_enclosed_by_cytoplasm(phantom: Phantom) -> None:
    nucleus, ice = phantom.cell == 2, phantom.cell == 0
    assert not np.any(ndimage.binary_dilation(nucleus) & ice)
    assert 0.05 < np.count_nonzero(nucleus) / np.count_nonzero(phantom.cell) < 0.5


def test_default_shape_has_a_realistic_granule_count() -> None:
    p = make_phantom(seed=0)
    assert p.image.shape == (128, 256, 256)
    assert 100 <= p.n_isg <= 400
    assert len(touching_pairs(p.isg)) >= 10


def test_smallest_shape_works() -> None:
    p = make_phantom((16, 16, 16), seed=0)
    assert p.image.shape == (16, 16, 16)
    assert np.count_nonzero(p.cell) > 0
    assert np.array_equal(np.unique(p.isg), np.arange(p.n_isg + 1))


# --- image ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 11, 12, 13])
def test_contrast_isg_above_cytoplasm_above_ice(seed: int) -> None:
    p = make_phantom(SMALL, seed=seed)
    lac = p.image / p.lac_scale  # µm⁻¹, the unit of the drawn material values
    cytoplasm = (p.cell == 1) & (p.isg == 0) & (p.mito == 0)
    isg, ice = lac[p.isg > 0].mean(), lac[p.cell == 0].mean()
    cyto = lac[cytoplasm].mean()
    assert isg > cyto + 0.05 > ice + 0.1
    assert 0.09 < ice < 0.13 and 0.18 < cyto < 0.3


def test_noise_is_present_at_the_drawn_level() -> None:
    noisy = make_phantom(SMALL, seed=2)
    clean = make_phantom(SMALL, seed=2, noise_sigma=0.0)
    diff = (noisy.image - clean.image).astype(np.float64)
    sigma = noisy.params.noise_sigma * noisy.lac_scale  # drawn in µm⁻¹, imaged per voxel
    assert diff.std() == pytest.approx(sigma, rel=0.05)
    assert abs(diff.mean()) < 0.01 * sigma + 1e-4 * noisy.lac_scale


def test_psf_blurs_edges_and_keeps_the_mean() -> None:
    blurred = make_phantom(SMALL, seed=4, noise_sigma=0.0)
    sharp = make_phantom(SMALL, seed=4, noise_sigma=0.0, psf_sigma=0.0)
    assert np.array_equal(blurred.cell, sharp.cell)
    assert mean_gradient(blurred.image) < 0.8 * mean_gradient(sharp.image)
    assert blurred.image.mean() == pytest.approx(sharp.image.mean(), rel=1e-3)


def test_image_is_lac_per_voxel_and_only_its_scale_follows_the_voxel_size() -> None:
    at30 = make_phantom(SMALL, seed=8)
    at15 = make_phantom(SMALL, seed=8, voxel_size_nm=15.0)
    assert at30.lac_scale == pytest.approx(0.03) and at15.lac_scale == pytest.approx(0.015)
    for name in ("cell", "mito", "isg"):
        assert np.array_equal(getattr(at30, name), getattr(at15, name)), name
    assert at30.params == at15.params
    np.testing.assert_allclose(at30.image, 2.0 * at15.image, rtol=1e-6, atol=1e-9)
    # the drawn cytoplasm LAC (µm⁻¹) × 0.03 µm, within texture, blur and noise
    cytoplasm = (at30.cell == 1) & (at30.isg == 0) & (at30.mito == 0)
    expected = at30.params.lac_cytoplasm * 0.03
    assert np.median(at30.image[cytoplasm]) == pytest.approx(expected, rel=0.15)


def test_intensities_are_on_the_scale_of_a_real_tomogram(fixtures_dir) -> None:
    from sxtdask.io import open_volume

    real = np.asarray(open_volume(fixtures_dir / "real_sxt" / "sample_12.rec")[:])
    real_labels = np.asarray(open_volume(fixtures_dir / "real_sxt" / "sample_12.labels")[:])
    real_cell = np.median(real[real_labels == 1])
    for seed in (0, 1):
        p = make_phantom(SMALL, seed=seed)
        cyto = np.median(p.image[(p.cell == 1) & (p.isg == 0) & (p.mito == 0)])
        assert real_cell / 2 < cyto < real_cell * 2, (seed, cyto, real_cell)
        assert np.percentile(p.image, 99.5) < 4 * np.percentile(real, 99.5)


def test_reference_preprocessing_does_not_saturate_phantoms() -> None:
    from sxtdask.segmenters import Task
    from sxtdask.segmenters._maskrcnn import prepare_maskrcnn_slices
    from sxtdask.segmenters._unet import prepare_slices

    p = make_phantom(SMALL, seed=0)
    cytoplasm = (p.cell == 1) & (p.isg == 0) & (p.mito == 0)
    core = ndimage.binary_erosion(p.isg > 0)  # granule interiors, away from the blurred rims
    detector = prepare_maskrcnn_slices(p.image)
    unet = prepare_slices(p.image, None, task=Task.ISG, preprocessing="reference",
                          in_channels=1, isg_input_scale=1.0)[:, 0]
    for x in (detector, unet):
        assert np.mean(x == 1.0) < 0.01  # (× 33.33 saturated every voxel of µm⁻¹ phantoms)
        granule, cyto, ice = (float(np.median(x[m])) for m in (core, cytoplasm, p.cell == 0))
        assert granule < 0.8 and granule > cyto + 0.1 and cyto > ice + 0.05, (granule, cyto, ice)


def test_psf_is_longer_along_z() -> None:
    p = make_phantom(SMALL, seed=1)
    z, y, x = p.params.psf_sigma
    assert z > y == x and 0.8 <= y <= 1.5 and z <= 1.5


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"n_granules": 3}, "n_granules"),
        ({"n_isg": -1}, "n_isg"),
        ({"n_isg": True}, "n_isg"),
        ({"n_isg": 2.5}, "n_isg"),
        ({"isg_radius": (5.0, 3.0)}, "isg_radius"),
        ({"isg_radius": 4.0}, "isg_radius"),
        ({"touching_fraction": 1.5}, "touching_fraction"),
        ({"n_mito": -2}, "n_mito"),
        ({"noise_sigma": -0.1}, "noise_sigma"),
        ({"noise_sigma": float("nan")}, "noise_sigma"),
        ({"psf_sigma": (1.0, 2.0)}, "psf_sigma"),
        ({"psf_sigma": 9.0}, "psf_sigma"),
        ({"n_cells": 4}, "n_cells"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_overrides_raise_config_error_naming_them(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        make_phantom((16, 32, 32), seed=0, **overrides)


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [((8, 64, 64), {}), ((64, 64, 15), {}), ((64, 64), {}), ((32, 32, 32), {"seed": -1}),
     ((32, 32, 32), {"voxel_size_nm": 0.0})],
    ids=["z8", "x15", "2d", "negative-seed", "zero-voxel"],
)
def test_bad_shape_seed_or_voxel_size(shape: tuple, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_phantom(shape, **kwargs)


def test_overrides_take_effect() -> None:
    p = make_phantom(SMALL, seed=0, n_isg=12, isg_radius=(3.0, 3.0), touching_fraction=1.0,
                     n_mito=0, n_lipid=0, n_vacuole=0, noise_sigma=0.02, psf_sigma=[1.2, 1, 1])
    assert p.n_isg == 12
    assert not p.mito.any()
    counts = np.bincount(p.isg.ravel())[1:]
    assert np.all(np.abs((3.0 * counts / (4.0 * np.pi)) ** (1 / 3) - 3.0) < 0.6)
    touching = {i for pair in touching_pairs(p.isg) for i in pair}
    assert touching == set(range(1, 13))
    assert p.params.psf_sigma == (1.2, 1.0, 1.0) and p.params.noise_sigma == 0.02
    alone = make_phantom(SMALL, seed=0, n_isg=12, touching_fraction=0.0)
    assert touching_pairs(alone.isg) == set()


def test_neighbour_cells_add_cytoplasm_at_the_sides() -> None:
    one = make_phantom(SMALL, seed=6, n_cells=1)
    three = make_phantom(SMALL, seed=6, n_cells=3)
    assert np.count_nonzero(three.cell == 1) > np.count_nonzero(one.cell == 1)
    assert np.array_equal(three.cell == 2, one.cell == 2)
    side_faces = [three.cell[:, 0], three.cell[:, -1], three.cell[:, :, 0], three.cell[:, :, -1]]
    assert sum(np.any(face > 0) for face in side_faces) >= 2
    assert not any(np.any(face > 0) for face in
                   [one.cell[:, 0], one.cell[:, -1], one.cell[:, :, 0], one.cell[:, :, -1]])


# --- files ------------------------------------------------------------------------------------


def test_write_phantom_round_trip(tmp_path) -> None:
    from sxtdask.io import open_image, open_labels

    shape = (32, 48, 40)
    mrc_path, gt_path = write_phantom(tmp_path / "cell.mrc", shape=shape, seed=3,
                                      voxel_size_nm=25.0)
    assert (mrc_path, gt_path) == (tmp_path / "cell.mrc", tmp_path / "cell.gt.zarr")
    p = make_phantom(shape, seed=3, voxel_size_nm=25.0)
    with mrcfile.open(mrc_path, permissive=False) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.header.mode == 2
        assert np.array_equal(mrc.data, p.image)
        assert mrc.voxel_size.tolist() == pytest.approx((250.0, 250.0, 250.0))
    assert np.array_equal(np.asarray(open_image(gt_path).data), p.image)
    for name in ("cell", "mito", "isg"):
        assert np.array_equal(np.asarray(open_labels(gt_path, name)), getattr(p, name)), name


def test_write_phantom_refuses_to_overwrite(tmp_path) -> None:
    out = tmp_path / "p.mrc"
    write_phantom(out, shape=(16, 24, 24), seed=1)
    before = out.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        write_phantom(out, shape=(16, 24, 24), seed=2)
    assert out.read_bytes() == before
    out.unlink()
    with pytest.raises(OutputError, match="gt.zarr"):
        write_phantom(out, shape=(16, 24, 24), seed=2)
    assert not out.exists()
    write_phantom(out, shape=(16, 24, 24), seed=2, overwrite=True)
    with mrcfile.open(out) as mrc:
        assert np.array_equal(mrc.data, make_phantom((16, 24, 24), seed=2).image)


def test_write_phantom_needs_an_mrc_suffix(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"\.mrc"):
        write_phantom(tmp_path / "cell.tif", shape=(16, 16, 16))
    assert list(tmp_path.iterdir()) == []
