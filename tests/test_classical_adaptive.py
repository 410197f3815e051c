"""The adaptive classical ISG route: it follows each tomogram's blur, contrast and noise.

The old route thresholded the normalised absorption at one fixed level; under another PSF its
granules came out 2.4× too large. These tests hold what replaced it to what matters: granule
sizes that follow the blur, labels unchanged by any contrast and offset, tubes and sheets refused,
and chunked answers equal to whole-volume ones.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from sxtdask.engine import segment_array
from sxtdask.errors import ConfigError
from sxtdask.metrics._instances import block_contingency, match_contingency
from sxtdask.phantoms import make_phantom
from sxtdask.segmenters import ClassicalISG
from sxtdask.stats import global_stats

SHAPE = (48, 96, 96)


def _stats(image: np.ndarray, chunks: tuple[int, int, int] = (16, 96, 96)):
    return global_stats(da.from_array(image, chunks=chunks)).compute()


def _segment(image: np.ndarray, seg: ClassicalISG | None = None) -> np.ndarray:
    return (seg or ClassicalISG()).segment_block(image, _stats(image), (30.0, 30.0, 30.0))["isg"]


def _volume_ratios(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Predicted / true volume of every granule matched at IoU 0.5."""
    out = []
    for g in np.unique(gt)[1:]:
        inside = pred[gt == g]
        inside = inside[inside > 0]
        if inside.size:
            p = np.bincount(inside).argmax()
            both = np.count_nonzero(inside == p)
            vp, vg = np.count_nonzero(pred == p), np.count_nonzero(gt == g)
            if both / (vp + vg - both) >= 0.5:
                out.append(vp / vg)
    return np.asarray(out)


@pytest.mark.parametrize("psf", [0.7, 1.6])
def test_granule_sizes_follow_the_blur(psf: float) -> None:
    """Under a sharp and a broad PSF the granules are found with their own size (not 2.4×)."""
    ph = make_phantom(SHAPE, seed=31, psf_sigma=(psf, psf, psf), noise_sigma=0.01)
    pred = _segment(ph.image)
    m = match_contingency(block_contingency(pred, ph.isg), 0.5)
    assert m.f1 >= 0.8, (psf, m)
    ratios = _volume_ratios(pred, ph.isg)
    assert 0.6 <= np.median(ratios) <= 1.4, (psf, np.median(ratios))


def test_labels_do_not_change_with_contrast_or_offset() -> None:
    """Every number is relative to the tomogram: a·x + b gives the same granules."""
    ph = make_phantom(SHAPE, seed=32, variation="wide")
    base = _segment(ph.image)
    assert base.max() > 5
    for a, b in ((3.0, 0.0), (0.25, 0.05), (40.0, -0.3)):
        other = _segment((ph.image * np.float32(a) + np.float32(b)).astype(np.float32))
        m = match_contingency(block_contingency(other, base), 0.9)
        assert m.f1 >= 0.99, (a, b, m)


def test_tubes_and_sheets_are_not_granules() -> None:
    """Bright balls are found; a tube and a sheet as bright are refused by the shape test."""
    z, y, x = np.mgrid[:40, :64, :64].astype(np.float32)
    rng = np.random.default_rng(0)
    vol = np.full((40, 64, 64), 0.01, dtype=np.float32)
    balls = [(12, 14, 14), (28, 14, 48), (20, 50, 20)]
    for c in balls:
        vol[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 16] = 0.02
    vol[((y - 40) ** 2 + (x - 48) ** 2 <= 4)] = 0.02  # a tube along z
    vol[:, 28:30, 30:40] = 0.02                      # a sheet
    from scipy import ndimage

    vol = ndimage.gaussian_filter(vol, 1.0) + rng.normal(0, 2e-4, vol.shape).astype(np.float32)
    labels = _segment(vol)
    found = {tuple(int(round(v)) for v in ndimage.center_of_mass(labels == i))
             for i in np.unique(labels)[1:]}
    assert len(found) == len(balls), found
    for c in balls:
        assert any(np.abs(np.subtract(f, c)).max() <= 1 for f in found), (c, found)


def test_in_plane_chunks_give_the_instances_of_z_slabs() -> None:
    """The issue's contract: F1 ≥ 0.995 at IoU 0.9 between z-slab and in-plane chunks."""
    ph = make_phantom(SHAPE, seed=33, mount="grid", imaging="tomo", n_isg=40)
    stats = _stats(ph.image)
    seg = ClassicalISG()
    with dask.config.set(scheduler="synchronous"):
        slabs = segment_array(da.from_array(ph.image, chunks=(16, 96, 96)), seg, stats)["isg"]
        tiles = segment_array(da.from_array(ph.image, chunks=(48, 48, 48)), seg, stats)["isg"]
        slabs, tiles = slabs.compute(), tiles.compute()
    assert slabs.max() > 5
    m = match_contingency(block_contingency(tiles, slabs), 0.9)
    assert m.f1 >= 0.995, m


def test_smoothed_noise_is_measured_alike_for_any_chunking() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0.01, 0.002, (48, 80, 80)).astype(np.float32)
    a = _stats(noise, (16, 80, 80)).noise_smooth
    b = _stats(noise, (48, 40, 40)).noise_smooth
    # white noise after a unit Gaussian keeps (2√π)^(-3/2) ≈ 0.150 of its standard deviation
    assert a == pytest.approx(0.002 * 0.150, rel=0.08)
    assert b == pytest.approx(a, rel=0.03)


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.0}, {"threshold": 1.5},
                                 {"detect": 0}, {"dynamics": -1}, {"blobness": 2},
                                 {"background": 1}, {"scale": 0}])
def test_bad_options_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ClassicalISG(**bad)
