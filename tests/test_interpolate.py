"""sxtdask interpolate: Biomedisa's rules for labelled slices and seeds, the walks on a case that
can be checked by hand, the uncertainty formula, chunk and worker invariance of both methods,
quality floors on a phantom, the command's outputs and one-line errors, and training on sparse
and on interpolated labels.
"""

from __future__ import annotations

import json
import logging
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile

from sxtdask.errors import ConfigError, InputError
from sxtdask.interpolate import (
    Axis,
    InterpolationConfig,
    Method,
    block_grid,
    check_summary,
    choose_method,
    cross_section_overlap,
    interpolate_labels,
    summarize_labels,
    uncertainty,
)
from sxtdask.io import open_volume

#: Few, short walks: the tests check rules and invariance, not Biomedisa's statistics.
QUICK = {"walks": 2, "steps": 150, "reach": 12, "crop": 6}


def run(image, labels, chunks=None, scheduler="sync", **kw):
    cfg = InterpolationConfig(**{**QUICK, **kw})
    img = None if image is None else da.from_array(image, chunks=chunks or image.shape)
    lab = da.from_array(labels, chunks=chunks or labels.shape)
    res = interpolate_labels(img, lab, cfg, chunks=chunks)
    arrays = [res.labels] + ([res.uncertainty] if res.uncertainty is not None else [])
    out = dask.compute(*arrays, res.blocks, scheduler=scheduler)
    return out[0], (out[1] if res.uncertainty is not None else None), out[-1], res


def summary_of(labels, **kw):
    cfg = InterpolationConfig(**kw)
    return summarize_labels(da.from_array(labels, chunks=(5, 7, 6)), cfg).compute(scheduler="sync"), cfg


@pytest.fixture(scope="module")
def phantom():
    from sxtdask.phantoms import make_phantom

    logging.getLogger("sxtdask.phantoms").setLevel(logging.ERROR)
    return make_phantom((40, 64, 64), seed=7)


@pytest.fixture(scope="module")
def sparse(phantom):
    """The phantom's cell truth on every 8th slice (3, 11, ...), 0 elsewhere."""
    out = np.zeros_like(phantom.cell)
    out[3::8] = phantom.cell[3::8]
    return out


# ----------------------------------------------------------------------------- Biomedisa's rules


def test_a_slice_without_a_non_zero_voxel_is_unlabelled_and_negatives_are_not_seeds():
    lab = np.zeros((12, 10, 9), np.int16)
    lab[2, 3:6, 3:6] = 1  # labelled: 0 around the square are background seeds
    lab[7] = 0  # all background: unlabelled under Biomedisa's rule
    lab[9, :, :] = -1  # only negatives: labelled (non-zero) but no seed at all ...
    lab[9, 4, 4] = 2  # ... but this one voxel of class 2
    s, cfg = summary_of(lab)
    assert s.labelled == {0: (2, 9)}
    assert s.seeded == (0, 1, 2) and s.bbox == ((2, 10), (0, 10), (0, 9))
    # every voxel >= 0 of the labelled slices inside the crop walks: slice 2 all, slice 9 one
    img = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    _, _, parts, _ = run(img, lab, crop=20)
    assert sum(p[2]["seeds"] for p in parts) == 10 * 9 + 1


def test_unlabelled_value_makes_0_a_class_and_its_voxels_no_seeds():
    lab = np.full((10, 8, 8), 5, np.uint8)
    lab[1] = 0  # a labelled slice of background only
    lab[6, :4], lab[6, 4:] = 1, 5  # half annotated
    s, cfg = summary_of(lab, unlabelled=5)
    assert s.labelled == {0: (1, 6)} and s.seeded == (0, 1)
    img = np.random.default_rng(1).random(lab.shape).astype(np.float32)
    _, _, parts, _ = run(img, lab, unlabelled=5, crop=20)
    assert sum(p[2]["seeds"] for p in parts) == 64 + 32
    # Biomedisa's rule on the same volume: every slice but the background one is labelled
    assert summary_of(lab)[0].labelled == {0: (0, *range(2, 10))}


def test_all_axes_discount_the_traces_of_other_orientations():
    lab = np.zeros((9, 9, 9), np.uint8)
    lab[2, 1:8, 1:8] = 1  # a labelled z slice ...
    lab[1:8, 6, 1:8] = 2  # ... and a labelled y slice crossing it
    s, _ = summary_of(lab, axis="all")
    assert s.labelled[0] == (2,) and s.labelled[1] == (6,) and s.labelled[2] == ()
    # along z only, every z slice the y slice crosses counts
    assert summary_of(lab)[0].labelled == {0: tuple(range(1, 8))}


# ----------------------------------------------------------------------------- the walks by hand


def test_walks_do_not_cross_a_strong_edge_and_stay_within_their_reach():
    """Left half dark, right half bright: exp(-(255)^2 / 2) is 0, so no walker crosses; a
    walker stays within 3 voxels of its slice; Biomedisa's result is then exact.
    """
    img = np.zeros((15, 8, 16), np.float32)
    img[:, :, 8:] = 1.0
    lab = np.zeros(img.shape, np.uint8)
    lab[7, :, :8], lab[7, :, 8:] = 1, 2
    out, unc, parts, res = run(img, lab, walks=4, steps=400, reach=3, crop=50, uncertainty=True)
    expect = np.zeros_like(lab)
    expect[4:11, :, :8], expect[4:11, :, 8:] = 1, 2
    np.testing.assert_array_equal(out, expect)
    assert res.classes == (1, 2) and unc.max() == 0  # one class hits each voxel


def test_the_crop_keeps_the_walks_near_the_labelled_objects():
    img = np.zeros((20, 20, 20), np.float32)
    img[:, 8:12, 8:12] = 1.0  # a bright column: class 1's walkers stay in it, class 0's out
    lab = np.zeros(img.shape, np.uint8)
    lab[10, 8:12, 8:12] = 1
    out, _, _, res = run(img, lab, crop=2, reach=8, walks=4, steps=300)
    assert res.walkable == ((8, 13), (6, 14), (6, 14))
    expect = np.zeros_like(lab)
    expect[8:13, 6:14, 6:14] = 0
    expect[8:13, 8:12, 8:12] = 1
    np.testing.assert_array_equal(out, expect)


def test_uncertainty_is_one_minus_the_product_of_the_top_three_ratios():
    hits = np.array([[4, 0, 10, 9], [2, 0, 10, 3], [0, 0, 5, 1]], np.uint32)[:, :, None, None]
    u = uncertainty(hits)[:, 0, 0]
    h1, h2, h3 = np.float32([4, 1, 10, 9]), np.float32([2, 0, 10, 3]), np.float32([0, 0, 5, 1])
    expect = ((1 - (1 - h3 / h1) * (1 - h2 / h1)) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(u, expect)
    assert list(u) == [127, 0, 255, 103]  # 1 - 1·(1 - 2/4); nothing hit; a tie; 1 - (8/9)(6/9)


# ----------------------------------------------------------------------------- invariance


@pytest.mark.parametrize("method", ["walk", "shape"])
def test_chunked_and_distributed_results_equal_one_block(phantom, sparse, method, client):
    image = phantom.image if method == "walk" else None
    kw = {"uncertainty": True, "smooth": 2, "denoise": True} if method == "walk" else {}
    one, unc1, _, _ = run(image, sparse, method=method, **kw)
    for chunks in [(7, 23, 64), (11, 30, 17)]:  # uneven edges, blocks thinner than the reach
        many, unc2, _, _ = run(image, sparse, chunks=chunks, method=method, scheduler=client, **kw)
        np.testing.assert_array_equal(many, one)
        if unc1 is not None:
            np.testing.assert_array_equal(unc2, unc1)
    assert len(np.unique(one)) == 3


def test_seeds_repeat_and_differ(phantom, sparse):
    a, *_ = run(phantom.image, sparse, seed=3, chunks=(9, 64, 64))
    b, *_ = run(phantom.image, sparse, seed=3, chunks=(40, 32, 64))
    c, *_ = run(phantom.image, sparse, seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_thinned_seeds_keep_the_boundary_band(phantom, sparse):
    _, _, full, _ = run(phantom.image, sparse)
    _, _, thin, _ = run(phantom.image, sparse, seed_stride=3)
    _, _, band, _ = run(phantom.image, sparse, seed_stride=3, boundary_band=2)
    n = [sum(p[2]["seeds"] for p in parts) for parts in (full, thin, band)]
    assert n[1] < n[2] < n[0] and abs(n[1] - n[0] / 9) < n[0] / 30
    a, *_ = run(phantom.image, sparse, seed_stride=3, boundary_band=2, chunks=(13, 21, 64))
    b, *_ = run(phantom.image, sparse, seed_stride=3, boundary_band=2)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- quality


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_both_methods_recover_the_phantom_cell(phantom, sparse):
    truth = phantom.cell
    walk, *_ = run(phantom.image, sparse, walks=10, steps=1000, reach=40, crop=40, denoise=True)
    shape, *_ = run(None, sparse, method="shape")
    # measured 0.991 / 0.541 (a nucleus little darker than the cytoplasm: walkers cross into
    # it) and 0.904 / 0.859
    for out, cell, nucleus in ((walk, 0.97, 0.45), (shape, 0.88, 0.80)):
        assert dice(out > 0, truth > 0) > cell
        assert dice(out == 2, truth == 2) > nucleus
    # the labelled slices themselves are kept by the shape method
    np.testing.assert_array_equal(shape[11:28:8], sparse[11:28:8])


def test_auto_takes_shape_for_objects_whose_cross_sections_have_partners():
    planes = np.zeros((3, 20, 20), np.uint8)
    planes[:, 4:16, 4:16] = 1  # a cell on every labelled slice, shifted a little
    planes[1, 5:17, 3:15] = 1
    planes[0, 8:11, 8:11] = 2  # a small object on the first slice only ...
    planes[2, 9:12, 9:12] = 2  # ... and another, not overlapping it, on the last
    overlap = cross_section_overlap(planes, (0, 1, 2))
    assert overlap == {1: 1.0, 2: 0.0} and choose_method(overlap) == "walk"
    planes[1, 8:12, 8:12] = 2  # a partner between them
    assert cross_section_overlap(planes, (0, 1, 2)) == {1: 1.0, 2: 1.0}
    assert choose_method(cross_section_overlap(planes, (0, 1, 2))) == "shape"


# ----------------------------------------------------------------------------- errors


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="walks=") as err:
        InterpolationConfig(walks=0)
    assert "--walks must be an integer >= 1" in err.value.for_cli()
    with pytest.raises(ConfigError, match="needs the walk method"):
        InterpolationConfig(method=Method.SHAPE, axis=Axis.ALL)
    with pytest.raises(ConfigError, match="belong to"):
        InterpolationConfig(method="shape", uncertainty=True)


@pytest.mark.parametrize("case, message", [
    ("empty", "no labelled slice along z"),
    ("one-class", "only class 1 has seeds"),
    ("adjacent", "labelled z slices 4 and 5 are adjacent"),
    ("no-seed", "class 3 has no seed"),
])
def test_summary_errors(case, message):
    lab = np.zeros((10, 9, 9), np.uint8)
    kw = {}
    if case == "one-class":
        lab[3] = 1
    if case == "adjacent":
        lab[4, 2:5, 2:5], lab[5, 2:5, 2:5] = 1, 1
        kw = {"axis": "all"}
    if case == "no-seed":  # along all axes, a one-voxel-thin line seeds nothing
        lab[2, 2:7, 2:7] = 1
        lab[6, 4, 1:8] = 3
        kw = {"axis": "all"}
    s, cfg = summary_of(lab, **kw)
    with pytest.raises(InputError, match=message):
        check_summary(s, cfg)


# ----------------------------------------------------------------------------- the command


def main(argv, capsys):
    from sxtdask.cli import main as cli_main

    log = logging.getLogger("sxtdask")
    saved = (log.handlers[:], log.level, log.propagate)
    capsys.readouterr()
    try:
        with warnings.catch_warnings():
            status = cli_main([str(a) for a in argv])
    finally:
        log.handlers[:], log.level, log.propagate = saved
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def files(phantom, sparse, tmp_path_factory):
    folder = tmp_path_factory.mktemp("interp")
    np.save(folder / "img.npy", phantom.image)
    tifffile.imwrite(folder / "sparse.tif", sparse)
    return folder


CLUSTER = ("--workers", "2", "--dashboard-address", ":0", "--walks", "2", "--steps", "150",
           "--reach", "12", "--crop", "6")


def test_cli_writes_a_label_image_and_files_alike(files, sparse, tmp_path, capsys):
    from sxtdask.io import label_classes, list_labels, open_labels

    store = tmp_path / "cell.zarr"
    status, out, err = main(["-q", "interpolate", files / "img.npy", files / "sparse.tif", store,
                             "--uncertainty", "--chunks", "16,64,64", *CLUSTER], capsys)
    assert status == 0, err
    assert list_labels(store) == ["interpolated", "interpolated-uncertainty"]
    assert label_classes(store, "interpolated") == {}
    z = open_labels(store, "interpolated").compute()
    status, out, err = main(["interpolate", store, files / "sparse.tif", tmp_path / "o.tif",
                             "--uncertainty", "--json-log", *CLUSTER], capsys)
    assert status == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["method_asked"] == "auto" and summary["method"] == "walk"  # walk options given
    labelled = [int(z) for z in np.nonzero(sparse.any(axis=(1, 2)))[0]]  # slices 3 and 35 are empty
    assert summary["labelled"] == {"z": labelled} and summary["classes"] == [0, 1, 2]
    assert summary["seeds"] > 0 and summary["outputs"][1].endswith("o.uncertainty.tif")
    np.testing.assert_array_equal(open_volume(tmp_path / "o.tif")[:], z)
    np.testing.assert_array_equal(open_volume(tmp_path / "o.uncertainty.tif")[:],
                                  open_labels(store, "interpolated-uncertainty").compute())
    # an existing label image needs --overwrite; a file too
    status, _, err = main(["interpolate", files / "img.npy", files / "sparse.tif", store, *CLUSTER],
                          capsys)
    assert status == 2 and "exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    for suffix, method in ((".npy", "shape"), (".mrc", "auto")):  # auto: the cell and nucleus
        status, out, err = main(["interpolate", files / "img.npy", files / "sparse.tif",  # overlap
                                 tmp_path / f"s{suffix}", "--method", method, "--json-log",
                                 *CLUSTER[:4]], capsys)
        assert status == 0, err
        assert json.loads(out.splitlines()[-1])["method"] == "shape"
    np.testing.assert_array_equal(open_volume(tmp_path / "s.npy")[:], open_volume(tmp_path / "s.mrc")[:])
    assert not list(tmp_path.glob(".*partial"))


def test_cli_errors_are_one_line(files, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "small.npy", np.zeros((4, 5, 6), np.uint8))
    np.save(bad / "empty.npy", np.zeros((40, 64, 64), np.uint8))
    one = np.zeros((40, 64, 64), np.uint8)
    one[3, 10:20, 10:20], one[30, 4, 2:60] = 1, 3
    np.save(bad / "thin.npy", one)
    close = np.zeros((40, 64, 64), np.uint8)
    close[3:5, 10:20, 10:20] = 1
    np.save(bad / "close.npy", close)
    img = files / "img.npy"
    cases = [
        ([img, bad / "small.npy", tmp_path / "a.tif"], "the labels must have the image's shape"),
        ([img, bad / "empty.npy", tmp_path / "a.tif"], "no labelled slice along z"),
        ([img, bad / "thin.npy", tmp_path / "a.tif", "--axis", "all"], "class 3 has no seed"),
        ([img, bad / "close.npy", tmp_path / "a.tif", "--axis", "all"], "slices 3 and 4 are adjacent"),
        ([img, files / "sparse.tif", tmp_path / "a.png"], "give an OME-Zarr store"),
        ([img, files / "sparse.tif", tmp_path / "a.tif", "--method", "shape", "--axis", "all"],
         "needs the walk method"),
    ]
    for argv, message in cases:
        status, _, err = main(["interpolate", *argv, *CLUSTER[:4]], capsys)
        assert status == 2, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a.tif").exists()


def test_cli_constants_match_the_library():
    from sxtdask.cli import interpolate as cmd
    from sxtdask.interpolate import AXES, DEFAULT_DEPTH

    assert cmd.METHODS == tuple(m.value for m in Method) and cmd.AXES == AXES
    assert cmd.DEFAULT_DEPTH == DEFAULT_DEPTH
    assert block_grid((100, 8, 8)) == ((64, 36), (8,), (8,))


def test_ncxt_sparse_labels_interpolate_along_every_axis(fixtures_dir, tmp_path, capsys):
    """sample_12.labels: planes annotated along z, y and x, value 2 (material 'ignore') elsewhere."""
    out = tmp_path / "s12.tif"
    status, stdout, err = main(["interpolate", fixtures_dir / "real_sxt" / "sample_12.rec",
                                fixtures_dir / "real_sxt" / "sample_12.labels", out, "--axis", "all",
                                "--json-log", *CLUSTER], capsys)
    assert status == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["unlabelled"]["value"] == 2 and "ignore" in summary["unlabelled"]["rule"]
    assert summary["labelled"]["z"] == [0, 11, 22, 34, 45, 57] and summary["classes"] == [0, 1]
    got = open_volume(out)[:]
    truth = open_volume(fixtures_dir / "real_sxt" / "sample_12.labels")[:]
    annotated = truth != 2
    assert (got[annotated] == truth[annotated]).mean() > 0.9


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("route", ["sparse", "interpolated"])
def test_train_takes_sparse_or_interpolated_labels(route, phantom, sparse, tmp_path, capsys):
    """The cascade learns from the sparse slices (unannotated voxels = 3, --ignore-label 3) or
    from their interpolation, as it is.
    """
    np.save(tmp_path / "img.npy", phantom.image)
    if route == "sparse":
        lab = np.full_like(sparse, 3)
        lab[3::8] = sparse[3::8]
        extra = ["--ignore-label", "3"]
    else:
        lab, *_ = run(None, sparse, method="shape")
        extra = []
    np.save(tmp_path / "lab.npy", lab)
    pair = f"{tmp_path / 'img.npy'},{tmp_path / 'lab.npy'}"
    status, _, err = main(["-q", "train", "--task", "cell", "--arch", "cascade", "--data", pair,
                           "--out", tmp_path / "c.pt", "--width", "4", "--depth", "2", "--block",
                           "16,8", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                           "--val-fraction", "0", "--device", "cpu", *extra], capsys)
    assert status == 0, err
    assert (tmp_path / "c.pt").exists()
