"""Scenes (capillary, grid, beads, debris), wide draws and the tilt-series imaging model."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from sxtdask.errors import ConfigError
from sxtdask.phantoms import make_phantom
from sxtdask.phantoms._tomo import TiltSeries, project_and_reconstruct
from sxtdask.stats import global_stats

SHAPE = (32, 48, 48)


def test_capillary_scene_has_a_bright_wall_and_vacuum_beyond_it_and_no_cell_there():
    p = make_phantom(SHAPE, seed=3, mount="capillary", noise_sigma=0.0, texture=0.0)
    r_in = p.metadata["capillary_inner_radius"]
    r_out = p.metadata["capillary_outer_radius"]
    z = np.arange(SHAPE[0])[:, None] - (SHAPE[0] / 2 - 0.5)
    x = np.arange(SHAPE[2])[None, :] - (SHAPE[2] / 2 - 0.5)
    rho = np.sqrt(z * z + x * x)
    beyond = np.broadcast_to((rho > r_out + 3)[:, None, :], SHAPE)
    assert not p.cell[beyond].any()  # nothing of a cell beyond the glass
    wall = np.broadcast_to((np.abs(rho - (r_in + r_out) / 2) < 0.3)[:, None, :], SHAPE)
    if wall.any():  # glass is brighter than any cytoplasm and than the vacuum beyond it
        assert np.median(p.image[wall]) > np.median(p.image[p.cell == 1])
        assert np.median(p.image[beyond]) < np.median(p.image[wall])
    assert p.metadata["variation"] == "wide"


def test_grid_scene_leaves_vacuum_above_and_below_the_ice():
    p = make_phantom(SHAPE, seed=4, mount="grid", noise_sigma=0.0, texture=0.0,
                     ice_thickness=(0.3, 0.4), psf_sigma=0.0)
    vacuum = p.image <= 1e-6
    assert vacuum.any()
    assert not (vacuum & (p.cell > 0)).any()


def test_classic_phantoms_are_unchanged_by_the_new_options():
    a = make_phantom(SHAPE, seed=5)
    b = make_phantom(SHAPE, seed=5, mount="none", variation="classic", imaging="direct")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.isg, b.isg)
    assert a.metadata["imaging"]["model"] == "direct"


def test_wide_variation_draws_nuclei_lighter_and_darker_and_granules_denser_than_mitochondria():
    signs = set()
    for seed in range(12):
        p = make_phantom((16, 32, 32), seed=seed, variation="wide", n_isg=0, n_mito=0)
        q = p.params
        signs.add(np.sign(q.lac_nucleus - q.lac_cytoplasm))
        assert q.lac_isg[0] > q.lac_mito > q.lac_cytoplasm
    assert signs == {-1.0, 1.0}


@pytest.mark.parametrize("recon", ["fbp", "sirt"])
def test_tilt_series_reconstructs_a_ball_and_the_missing_wedge_elongates_it_along_z(recon):
    vol = np.zeros((40, 4, 40), np.float32)
    z, x = np.mgrid[:40, :40] - 19.5
    vol[:, :, :][np.broadcast_to((z * z + x * x < 36)[:, None, :], vol.shape)] = 0.01
    full = project_and_reconstruct(vol, TiltSeries(tilt=90, step=2, dose=0, recon=recon,
                                                    iterations=60))
    assert abs(float(full[20, 1, 20]) - 0.01) < 0.002  # values stay LAC per voxel
    wedge = project_and_reconstruct(vol, TiltSeries(tilt=45, step=2, dose=0, recon=recon,
                                                     iterations=60))

    def extent(img: np.ndarray, axis: int) -> int:
        profile = img[:, 1, 20] if axis == 0 else img[20, 1, :]
        return int((profile > 0.005).sum())

    assert extent(wedge, 0) > extent(full, 0)  # along the beam
    assert abs(extent(wedge, 2) - extent(full, 2)) <= 2  # across it, much as before


def test_photon_noise_falls_with_dose_and_is_reproducible():
    vol = np.full((24, 3, 24), 0.005, np.float32)

    def noise(dose: float, seed: int) -> np.ndarray:
        return project_and_reconstruct(vol, TiltSeries(tilt=90, step=3, dose=dose),
                                       rng=np.random.default_rng(seed))

    low, high = noise(500, 0)[6:18, :, 6:18].std(), noise(50000, 0)[6:18, :, 6:18].std()
    assert high < low / 4
    assert np.array_equal(noise(500, 1), noise(500, 1))


def test_tomo_phantom_records_its_imaging_in_metadata():
    p = make_phantom((16, 24, 24), seed=1, imaging="tomo", tilt=60, tilt_step=5, dose=1e4)
    im = p.metadata["imaging"]
    assert (im["model"], im["tilt_deg"], im["n_projections"], im["dose"]) == \
        ("tilt-series", 60.0, 25, 1e4)
    assert "astra-toolbox" in im["library"]


@pytest.mark.parametrize("bad", [dict(mount="tube"), dict(imaging="xray"), dict(variation="x"),
                                 dict(tilt=45), dict(imaging="tomo", tilt=120),
                                 dict(imaging="tomo", recon="art")])
def test_bad_scene_and_imaging_options_raise_config_errors(bad):
    with pytest.raises(ConfigError):
        make_phantom((16, 16, 16), seed=0, **bad)


def test_global_noise_estimate_follows_the_added_noise():
    rng = np.random.default_rng(0)
    img = np.zeros((32, 64, 64), np.float32)
    img[8:24, 16:48, 16:48] = 1.0  # structure barely moves the median
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    stats = global_stats(da.from_array(img, chunks=(16, 64, 64))).compute()
    assert stats.noise == pytest.approx(0.05, rel=0.1)
