"""Tiled 2-D detection with stitching, and linking 2-D instances across slices into 3-D ones.

The detector is a fake built from ground truth: the slice image encodes each pixel's position,
so the fake knows which window it was handed and returns, for every ground-truth object inside
or partly inside it, that object's mask cropped to the tile.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from sxtdask.errors import ConfigError
from sxtdask.segmenters._linking import link_slices
from sxtdask.segmenters._tiles import (
    Detections,
    Tile,
    raster_relabel,
    segment_slice_tiled,
    stitch_tile_detections,
    tile_grid,
)

# ---------------------------------------------------------------------------------------------
# helpers


def paint_balls(shape: tuple[int, ...], balls: list[tuple[tuple[float, ...], float]]) -> np.ndarray:
    """Label image of discs/spheres ``(centre, radius)``, IDs 1.. in list order.

    Where balls overlap, a pixel goes to the ball of least power distance ``d² - r²``, so touching
    balls meet on a flat interface (the radical plane) and keep two IDs.
    """
    grid = np.indices(shape, dtype=np.float64)
    best = np.full(shape, np.inf)
    out = np.zeros(shape, dtype=np.int32)
    for i, (centre, r) in enumerate(balls, start=1):
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        power = d2 - r * r
        win = (power <= 0) & (power < best)
        out[win], best[win] = i, power[win]
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label images are equal up to a renaming of their non-zero IDs."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == np.unique(a[fg]).size == np.unique(b[fg]).size


def position_image(shape: tuple[int, int]) -> np.ndarray:
    """A slice whose value at (y, x) is ``y * X + x``: a tile's first value gives its window."""
    return np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape)


def make_fake_detector(gt: np.ndarray, *, cut_score: float = 0.9, whole_score: float = 0.9,
                       cut_dilate: int = 0, false_positive: bool = False):
    """A detector reading ground truth ``gt`` (Y, X): one probability mask per object in the tile.

    Detections touching the tile's edge where the tile does not end at the slice's edge are *cut*
    views: they get ``cut_score`` and are dilated by ``cut_dilate`` pixels inside the tile (a
    sloppy cut view). ``false_positive`` adds a 0.3-score blob in every tile.
    """
    ny, nx = gt.shape

    def detect(tile_img: np.ndarray) -> Detections:
        y0, x0 = divmod(int(tile_img[0, 0]), nx)
        h, w = tile_img.shape
        crop = gt[y0 : y0 + h, x0 : x0 + w]
        edge = np.zeros((h, w), bool)
        edge[0, :], edge[-1, :], edge[:, 0], edge[:, -1] = y0 > 0, y0 + h < ny, x0 > 0, x0 + w < nx
        masks, scores = [], []
        for obj in np.unique(crop[crop > 0]):
            m = crop == obj
            cut = bool((m & edge).any())
            if cut and cut_dilate:
                m = ndimage.binary_dilation(m, iterations=cut_dilate)
            masks.append(np.where(m, 0.9, 0.1).astype(np.float32))
            scores.append(cut_score if cut else whole_score)
        if false_positive:
            fp = np.zeros((h, w), np.float32)
            fp[h // 2 : h // 2 + 5, w // 2 : w // 2 + 5] = 1.0
            masks.append(fp)
            scores.append(0.3)
        if not masks:
            return Detections.empty((h, w))
        return Detections(np.stack(masks), np.array(scores, np.float32))

    return detect


def scattered_discs(shape: tuple[int, int], fixed: list, n: int, seed: int) -> np.ndarray:
    """Ground truth: the ``fixed`` discs plus ``n`` random discs that touch nothing."""
    rng = np.random.default_rng(seed)
    balls = list(fixed)
    while len(balls) < len(fixed) + n:
        c = (rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8))
        r = rng.uniform(3, 8)
        if all(np.hypot(c[0] - b[0][0], c[1] - b[0][1]) > r + b[1] + 2 for b in balls):
            balls.append((c, r))
    return paint_balls(shape, balls)


# Slice 500×620 with tile 256 / overlap 32: tiles start at y 0, 224, 244 and x 0, 224, 364, so
# interior borders run at x = 224, 256, 364, 480 and y = 224, 244, 256, 480.
SHAPE = (500, 620)
BORDER_DISCS = [
    ((100, 256), 10),  # cut by tile 0's right border, whole in tile 1
    ((100, 224), 10),  # cut by tile 1's left border, whole in tile 0
    ((300, 240), 25),  # 50 px across, wider than the overlap: cut in every tile that sees it
    ((240, 240), 9),  # at the corner of four tiles
    ((400, 250), 9), ((400, 266), 9),  # two touching discs across x = 256
    ((150, 372), 8), ((150, 387), 8),  # two touching discs across x = 364
]


@pytest.fixture(scope="module")
def disc_gt() -> np.ndarray:
    return scattered_discs(SHAPE, BORDER_DISCS, n=40, seed=1)


# ---------------------------------------------------------------------------------------------
# tile_grid


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [((256, 256), 256, 32), ((257, 300), 256, 32), ((1000, 700), 256, 32), ((512, 1024), 256, 0),
     ((100, 300), 256, 32), ((50, 40), 256, 32), ((300, 900), 128, 120), ((1, 1), 1, 0)],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_tile_grid_covers_with_full_tiles_and_overlap(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    cover = np.zeros(shape, np.int32)
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= shape[0] and 0 <= t.x0 < t.x1 <= shape[1]
        assert t.shape == (min(tile, shape[0]), min(tile, shape[1]))
        cover[t.slices] += 1
    assert cover.min() >= 1
    ys = sorted({t.y0 for t in tiles})
    xs = sorted({t.x0 for t in tiles})
    assert [(t.y0, t.x0) for t in tiles] == [(y, x) for y in ys for x in xs]  # row-major grid
    for starts, size in ((ys, min(tile, shape[0])), (xs, min(tile, shape[1]))):
        assert all(size - (b - a) >= overlap for a, b in itertools.pairwise(starts))
        assert all(b - a == tile - overlap for a, b in itertools.pairwise(starts[:-1]))


def test_tile_grid_small_slice_is_one_tile_and_deterministic():
    assert tile_grid((100, 80)) == [Tile(0, 0, 100, 80)]
    assert tile_grid((700, 600), 256, 32) == tile_grid((700, 600), 256, 32)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "message"),
    [
        ((300, 300), 256, 256, r"overlap \(256\) must be smaller than the tile size \(256\)"),
        ((300, 300), 256, -1, r"overlap \(-1\) must be at least 0"),
        ((300, 300), 0, 0, r"tile \(0\) must be at least 1"),
        ((300, 300, 3), 256, 32, r"2-D slice shape"),
        ((0, 300), 256, 32, r"slice size along y \(0\) must be at least 1"),
        ((300, 300), 25.5, 3, r"tile \(25.5\) must be an integer"),
    ],
)
def test_tile_grid_rejects_bad_arguments(shape, tile, overlap, message):
    with pytest.raises(ConfigError, match=message):
        tile_grid(shape, tile, overlap)


# ---------------------------------------------------------------------------------------------
# stitching


def test_segment_recovers_discs_across_tile_borders(disc_gt):
    detect = make_fake_detector(disc_gt, false_positive=True)
    got = segment_slice_tiled(position_image(SHAPE), detect, tile=256, overlap=32)
    assert got.dtype == np.int32
    # exactly the discs, IDs in raster order: equal to the raster-relabelled ground truth
    np.testing.assert_array_equal(got, raster_relabel(disc_gt))


def test_touching_discs_across_a_border_keep_two_whole_ids(disc_gt):
    got = segment_slice_tiled(position_image(SHAPE), make_fake_detector(disc_gt))
    for first in (4, 6):  # indices of the touching pairs in BORDER_DISCS
        a, b = disc_gt == first + 1, disc_gt == first + 2
        assert np.unique(got[a]).size == 1 and np.unique(got[b]).size == 1
        assert got[a][0] != got[b][0] and got[a][0] > 0 and got[b][0] > 0


def test_whole_view_wins_over_a_sloppier_higher_scored_cut_view():
    # cut views are dilated by one pixel (bleeding into the touching neighbour) and score higher;
    # centre-ness discards them, so the whole views come out exactly
    fixed = [d for d in BORDER_DISCS if d[1] < 25]  # objects that fit in the overlap
    gt = paint_balls(SHAPE, fixed)
    detect = make_fake_detector(gt, cut_score=0.99, whole_score=0.6, cut_dilate=1)
    got = segment_slice_tiled(position_image(SHAPE), detect)
    np.testing.assert_array_equal(got, raster_relabel(gt))


def test_low_score_detections_and_specks_are_dropped():
    tile = Tile(0, 0, 32, 32)
    masks = np.zeros((3, 32, 32), np.float32)
    masks[0, 2:8, 2:8] = 0.8  # kept
    masks[1, 20:28, 20:28] = 0.8  # score below threshold
    masks[2, 14:16, 2] = 0.8  # 2 px < min_pixels
    det = Detections(masks, np.array([0.9, 0.49, 0.9]))
    got = stitch_tile_detections((32, 32), [tile], [det])
    expected = np.zeros((32, 32), np.int32)
    expected[2:8, 2:8] = 1
    np.testing.assert_array_equal(got, expected)
    masks[0, 2:8, 2:8] = 0.4  # below mask_threshold: nothing left of it
    assert stitch_tile_detections((32, 32), [tile], [Detections(masks, det.scores)]).max() == 0


def test_higher_score_keeps_contested_pixels():
    masks = np.zeros((2, 1, 10, 10), bool)  # torchvision's (N, 1, h, w) layout
    masks[0, 0, 2:6, 2:6] = True
    masks[1, 0, 4:8, 4:8] = True
    got = stitch_tile_detections((10, 10), [Tile(0, 0, 10, 10)],
                                 [Detections(masks, np.array([0.6, 0.9]))])
    assert got[5, 5] == got[7, 7] != got[2, 2] > 0
    assert (got > 0).sum() == 16 + 12


def test_batch_detector_and_small_slice():
    gt = paint_balls((100, 140), [((30, 30), 8), ((60, 100), 12), ((60, 122), 10)])
    detect = make_fake_detector(gt)
    tiles_seen = []

    def batch(stack: np.ndarray) -> list[Detections]:
        tiles_seen.append(stack.shape)
        return [detect(t) for t in stack]

    image = position_image(gt.shape)
    one = segment_slice_tiled(image, None, batch=batch)  # slice smaller than a tile
    assert tiles_seen == [(1, 100, 140)]
    np.testing.assert_array_equal(one, raster_relabel(gt))
    many = segment_slice_tiled(image, None, tile=64, overlap=30, batch=batch)
    assert tiles_seen[-1][1:] == (64, 64)
    np.testing.assert_array_equal(many, segment_slice_tiled(image, detect, tile=64, overlap=30))
    np.testing.assert_array_equal(many, one)


def test_stitching_is_deterministic(disc_gt):
    detect = make_fake_detector(disc_gt, cut_score=0.7, false_positive=True)
    image = position_image(SHAPE)
    first = segment_slice_tiled(image, detect)
    assert all(np.array_equal(first, segment_slice_tiled(image, detect)) for _ in range(2))


def test_stitch_rejects_bad_arguments():
    tile = Tile(0, 0, 16, 16)
    det = Detections.empty((16, 16))
    with pytest.raises(ConfigError, match="got 2 detections for 1 tiles"):
        stitch_tile_detections((16, 16), [tile], [det, det])
    with pytest.raises(ConfigError, match=r"tile 0 have shape \(8, 8\), but the tile is \(16"):
        stitch_tile_detections((16, 16), [tile], [Detections.empty((8, 8))])
    with pytest.raises(ConfigError, match=r"iou_merge \(0\) must lie in \(0, 1\]"):
        stitch_tile_detections((16, 16), [tile], [det], iou_merge=0)
    with pytest.raises(ConfigError, match=r"score_threshold \(1.5\)"):
        stitch_tile_detections((16, 16), [tile], [det], score_threshold=1.5)
    with pytest.raises(ConfigError, match="inside the slice"):
        stitch_tile_detections((8, 8), [tile], [det])
    with pytest.raises(ConfigError, match=r"masks \(N, h, w\) with scores \(N,\)"):
        Detections(np.zeros((2, 4, 4)), np.zeros(3))
    with pytest.raises(ConfigError, match="slice2d must be 2-D"):
        segment_slice_tiled(np.zeros((2, 4, 4)), lambda t: Detections.empty(t.shape))
    with pytest.raises(ConfigError, match="one of detect or batch"):
        segment_slice_tiled(np.zeros((4, 4)), None)


# ---------------------------------------------------------------------------------------------
# linking


def relabel_slices(gt: np.ndarray, seed: int) -> np.ndarray:
    """Each slice labelled on its own (skimage), then its IDs shuffled: 2-D instances only."""
    rng = np.random.default_rng(seed)
    out = np.zeros(gt.shape, np.int32)
    for z, sl in enumerate(gt):
        lab, n = sk_label(sl, background=0, connectivity=1, return_num=True)
        perm = np.r_[0, rng.permutation(n) + 1]
        out[z] = perm[lab]
    return out


VOLUME = (40, 64, 96)
ISOLATED = [((8, 12, 12), 5), ((30, 14, 84), 6), ((20, 50, 12), 4)]
SIDE_BY_SIDE = [((12, 20, 40), 7), ((12, 20, 52), 7)]  # touching in-plane (interface at x = 46)
OBLIQUE_STACK = [((22, 44, 44), 6), ((30, 44, 52), 6)]  # stacked in z, interface inclined 45°
COAXIAL_STACK = [((8, 48, 80), 6), ((18, 48, 80), 6)]  # stacked in z, interface parallel to slices


def cross_overlap_is_never_preferred(gt: np.ndarray, a: int, b: int) -> bool:
    """The documented condition for ``a`` and ``b`` to stay apart, checked on ground truth.

    Wherever a section of one overlaps a section of the other on neighbouring slices, at least
    one of the two overlaps its own object's section in the other slice by more pixels.
    """
    for z in range(gt.shape[0] - 1):
        s, t = gt[z], gt[z + 1]
        for x, y in ((a, b), (b, a)):  # section of x on z over section of y on z + 1
            cross = np.count_nonzero((s == x) & (t == y))
            x_own = np.count_nonzero((s == x) & (t == x))
            y_own = np.count_nonzero((s == y) & (t == y))
            if cross and cross >= x_own and cross >= y_own:
                return False
    return True


def test_link_slices_recovers_spheres_touching_side_by_side_and_obliquely_stacked():
    gt = paint_balls(VOLUME, ISOLATED + SIDE_BY_SIDE + OBLIQUE_STACK)
    for a in (4, 6):  # each touching pair really touches, and meets the documented condition
        assert np.any((gt[:, :, :-1] == a) & (gt[:, :, 1:] == a + 1))
        assert cross_overlap_is_never_preferred(gt, a, a + 1)
    got = link_slices(relabel_slices(gt, seed=0))
    assert got.dtype == np.uint32
    assert same_partition(got, gt)
    np.testing.assert_array_equal(got, raster_relabel(gt, 0, np.uint32))


def test_link_slices_chains_coaxially_stacked_spheres_as_documented():
    # the documented limit: one sphere ends on slice z, the other begins right below on z + 1,
    # nothing competes with the two caps, so they are mutual best and chain into one instance
    gt = paint_balls(VOLUME, COAXIAL_STACK)
    assert not cross_overlap_is_never_preferred(gt, 1, 2)
    got = link_slices(relabel_slices(gt, seed=1))
    np.testing.assert_array_equal(got, (gt > 0).astype(np.uint32))


def test_link_slices_links_one_partner_per_slice():
    # a wide 2-D object over two: it links to its larger overlap only, never sideways to both
    stack = np.zeros((3, 1, 12), np.int32)
    stack[0, 0, 0:10] = 1
    stack[1, 0, 0:6], stack[1, 0, 6:10] = 1, 2
    stack[2, 0, 6:10] = 1
    got = link_slices(stack)
    assert got[0, 0, 0] == got[1, 0, 0] != got[1, 0, 7] == got[2, 0, 7]
    assert got.max() == 2


def test_link_slices_keeps_a_tail_whose_best_partner_is_taken():
    # A's last section (x 0..1) overlaps B's next section (3 px) more than its own (2 px), but B's
    # own pair (9 px) is matched first; A's tail then matches A instead of splitting off
    stack = np.zeros((2, 1, 16), np.int32)
    stack[0, 0, 0:7], stack[0, 0, 7:16] = 1, 2
    stack[1, 0, 0:2], stack[1, 0, 4:16] = 1, 2
    got = link_slices(stack)
    np.testing.assert_array_equal(got[:, 0], stack[:, 0])


def test_link_slices_min_overlap_of_the_smaller_object():
    stack = np.zeros((2, 1, 20), np.int32)
    stack[0, 0, 0:10] = 1
    stack[1, 0, 7:17] = 1  # overlap 3 of 10 px
    assert link_slices(stack, min_overlap=0.3).max() == 1
    assert link_slices(stack, min_overlap=0.31).max() == 2


def test_link_slices_min_slices_drops_specks():
    gt = paint_balls(VOLUME, ISOLATED + SIDE_BY_SIDE)
    specks = gt.copy()
    specks[5, 40:43, 40:43] = 9
    specks[33, 2:4, 90:93] = 10
    labels2d = relabel_slices(specks, seed=2)
    assert link_slices(labels2d).max() == len(ISOLATED + SIDE_BY_SIDE) + 2
    dropped = link_slices(labels2d, min_slices=2)
    assert same_partition(dropped, gt)
    thick = link_slices(labels2d, min_slices=10)  # the radius-4 sphere spans 9 slices
    assert same_partition(thick, np.where(gt == 3, 0, gt))


def test_link_slices_is_deterministic_and_independent_of_2d_ids():
    gt = paint_balls(VOLUME, ISOLATED + SIDE_BY_SIDE + OBLIQUE_STACK + COAXIAL_STACK)
    first = link_slices(relabel_slices(gt, seed=3))
    np.testing.assert_array_equal(first, link_slices(relabel_slices(gt, seed=3)))
    np.testing.assert_array_equal(first, link_slices(relabel_slices(gt, seed=4).astype(np.uint64)))


def test_link_slices_edge_cases_and_bad_arguments():
    assert link_slices(np.zeros((0, 4, 4), np.int32)).shape == (0, 4, 4)
    one = np.zeros((1, 4, 4), np.int64)
    one[0, 1:3, 1:3] = 7
    np.testing.assert_array_equal(link_slices(one), (one > 0).astype(np.uint32))
    with pytest.raises(ConfigError, match=r"\(Z, Y, X\) integer array; got 2-D"):
        link_slices(np.zeros((4, 4), np.int32))
    with pytest.raises(ConfigError, match="float64"):
        link_slices(np.zeros((2, 4, 4)))
    with pytest.raises(ConfigError, match=r"must not be negative; found -1"):
        link_slices(-np.ones((2, 4, 4), np.int32))
    with pytest.raises(ConfigError, match=r"min_overlap \(1.5\) must lie in \[0, 1\]"):
        link_slices(one, min_overlap=1.5)
    with pytest.raises(ConfigError, match=r"min_slices \(0\) must be at least 1"):
        link_slices(one, min_slices=0)
