"""Global intensity statistics: one reduction, equal to whole-array numbers for any chunking."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from sxtdask.errors import InvalidVolumeError
from sxtdask.stats import ConstantVolumeWarning, check_stats, global_stats
from sxtdask.stats._stats import _coprime_step


@pytest.mark.parametrize("chunks", [(40, 30, 20), (7, 30, 20), (5, 9, 11)],
                         ids=["one-chunk", "z-slabs", "uneven-cubes"])
def test_stats_match_numpy_for_any_chunking(chunks):
    x = np.random.default_rng(0).gamma(2.0, 0.05, (40, 30, 20)).astype(np.float32)
    s = global_stats(da.from_array(x, chunks=chunks)).compute(scheduler="sync")
    assert s.min == pytest.approx(float(x.min())) and s.max == pytest.approx(float(x.max()))
    assert s.mean == pytest.approx(float(x.mean(dtype=np.float64)), rel=1e-9)
    assert s.std == pytest.approx(float(x.std(dtype=np.float64)), rel=1e-6)
    lo, hi = np.percentile(x, [0.5, 99.5])
    assert s.p_low == pytest.approx(lo, rel=1e-6) and s.p_high == pytest.approx(hi, rel=1e-6)
    assert s.n_voxels == x.size and s.n_nonfinite == 0


def test_sampled_percentiles_are_close_and_do_not_alias_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (64, 100, 100)).astype(np.float32)
    x[:, 0, 0] = 50.0  # 0.01 % bright voxels, all in column 0: a stride of 100 samples 1 % of them
    s = global_stats(da.from_array(x, chunks=(16, 100, 100)), sample_size=6_400).compute()
    lo, hi = np.percentile(x, [0.5, 99.5])
    assert abs(s.p_low - lo) < 0.1
    assert abs(s.p_high - hi) < 5.0 and s.p_high < 50.0
    assert np.gcd(_coprime_step(100, x.shape), 100) == 1


@pytest.mark.parametrize("sample_size", [2_000, 100_000_000], ids=["sampled", "every-voxel"])
def test_sampled_statistics_are_the_same_for_any_chunking(sample_size):
    """The percentiles come from the same voxels (raster index a multiple of the stride in the
    whole volume) for any chunking, so a tomogram normalises identically whether its store is in
    z slabs or in-plane chunks (in-plane chunks once sampled other voxels: other thresholds).
    """
    x = np.random.default_rng(3).gamma(2.0, 0.05, (40, 30, 21)).astype(np.float32)
    one = global_stats(da.from_array(x, chunks=-1), sample_size=sample_size).compute(
        scheduler="sync")
    for chunks in [(7, 30, 21), (5, 9, 11), (40, 30, 4), (13, 7, 21)]:
        s = global_stats(da.from_array(x, chunks=chunks), sample_size=sample_size).compute(
            scheduler="sync")
        assert (s.p_low, s.p_high, s.noise_smooth) == (one.p_low, one.p_high, one.noise_smooth)
    step = _coprime_step(int(np.ceil(x.size / sample_size)), x.shape)
    lo, hi = np.percentile(x.ravel()[::step].astype(np.float64), [0.5, 99.5])
    assert (one.p_low, one.p_high) == (pytest.approx(lo, abs=0), pytest.approx(hi, abs=0))


def test_nonfinite_voxels_are_counted_and_refused():
    x = np.ones((4, 5, 6), np.float32)
    x[2, 1, 1] = np.nan
    x[3, 0, 0] = np.inf
    s = global_stats(da.from_array(x, chunks=2)).compute()
    assert s.n_nonfinite == 2 and s.max == 1.0
    with pytest.raises(InvalidVolumeError, match="2 voxels are NaN or infinite"):
        check_stats(s, "cell.zarr")


def test_constant_volume_normalises_to_zeros_with_a_warning():
    s = global_stats(da.full((4, 4, 4), 3.0, chunks=2)).compute()
    assert s.is_constant
    with pytest.warns(ConstantVolumeWarning, match="constant"):
        check_stats(s, "flat.zarr")
    out = s.normalize(np.full((2, 2, 2), 3.0))
    assert out.dtype == np.float32 and not out.any()
