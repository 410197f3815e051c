"""Evaluation metrics: chunked results against in-memory references (numpy, match_instances,
pycocotools), bounded memory, morphometrics on spheres, and the ``sxtdask evaluate`` command.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from dask.callbacks import Callback
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sxtdask.errors import ConfigError, InputError
from sxtdask.measure import match_instances
from sxtdask.metrics import (
    COCO_STATS,
    IOU_THRESHOLDS,
    LabelKind,
    average_precision,
    class_scores,
    coco_metrics,
    confusion_matrix,
    contingency_table,
    dice_iou,
    evaluate_labels,
    evaluate_stores,
    match_contingency,
    morphometrics,
    resolve_labels,
    slice_rles,
    surface_area,
)

CHUNKINGS = {
    "even": ((20, 30, 30), (10, 15, 15), (10, 15, 15)),
    "uneven-differing": ((17, 29, 31), (5, 7, 11), (4, 13, 6)),
    "one-block-vs-slabs": ((9, 12, 40), (9, 12, 40), (2, 12, 40)),
}


def _sync() -> contextlib.AbstractContextManager[None]:
    return dask.config.set(scheduler="synchronous")


def _dask(a: np.ndarray, chunks: tuple[int, ...]) -> da.Array:
    return da.from_array(a, chunks=chunks)


# --------------------------------------------------------------------------- semantic


def _numpy_scores(t: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    inter = np.count_nonzero(t & p)
    return 2 * inter / (t.sum() + p.sum()), inter / np.count_nonzero(t | p)


@pytest.mark.parametrize("shape,pc,gc", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_dice_iou_equal_numpy(shape, pc, gc) -> None:
    rng = np.random.default_rng(sum(shape))
    gt = rng.integers(0, 4, shape).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.7, gt, rng.integers(0, 3, shape)).astype(np.uint8)
    with _sync():
        cm = confusion_matrix(_dask(pred, pc), _dask(gt, gc)).compute()
    ref = np.zeros((4, 4), dtype=np.int64)
    np.add.at(ref, (gt.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(cm, ref)
    scores = dice_iou(cm)
    assert sorted(scores) == [1, 2, 3]
    for c, s in scores.items():
        assert (s["dice"], s["iou"]) == pytest.approx(_numpy_scores(gt == c, pred == c))
    merged = class_scores(cm, [1, 2, 3])
    assert (merged["dice"], merged["iou"]) == pytest.approx(_numpy_scores(gt > 0, pred > 0))


def test_confusion_binarises_instances_and_refuses_too_many_classes() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 1000, (8, 10, 12)).astype(np.uint32)  # instance IDs
    pred = (rng.random(gt.shape) < 0.5).astype(np.uint8)
    with _sync():
        cm = confusion_matrix(_dask(pred, (3, 5, 5)), _dask(gt, (4, 4, 4)), binarise_gt=True).compute()
        s = class_scores(cm, [1])
        assert (s["dice"], s["iou"]) == pytest.approx(_numpy_scores(gt > 0, pred > 0))
        with pytest.raises(ConfigError, match=r"instances=\[NAME\]"):
            confusion_matrix(_dask(pred, 4), _dask(gt, 4)).compute()


def test_absent_class_is_undefined_not_perfect() -> None:
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0] = 2
    with _sync():
        cm = confusion_matrix(gt, gt).compute()
    assert dice_iou(cm)[1]["dice"] is None and dice_iou(cm)[2]["dice"] == 1.0


# --------------------------------------------------------------------------- instances


def _perturbations(isg: np.ndarray) -> dict[str, np.ndarray]:
    ids = np.unique(isg[isg > 0])
    merged = isg.copy()
    merged[np.isin(merged, ids[1::3])] = ids[0]  # false merges
    dropped = np.where(np.isin(isg, ids[::4]), 0, isg)
    return {
        "identical-renumbered": np.where(isg > 0, isg.max() + 7 - isg, 0).astype(np.uint32),
        "shifted": ndi.shift(isg, (0, 2, 1), order=0),
        "eroded": ndi.grey_erosion(isg, size=(1, 3, 3)),
        "merged-and-dropped": np.where(dropped > 0, merged, 0),
    }


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.8])
@pytest.mark.parametrize("case", ["identical-renumbered", "shifted", "eroded", "merged-and-dropped"])
def test_match_equals_match_instances(small_phantom, case: str, threshold: float) -> None:
    gt = small_phantom.isg
    pred = _perturbations(gt)[case]
    with _sync():
        table = contingency_table(_dask(pred, (7, 40, 33)), _dask(gt, (10, 48, 48))).compute()
    assert match_contingency(table, threshold) == match_instances(gt, pred, threshold)


def test_contingency_with_ids_beyond_32_bits(small_phantom) -> None:
    gt = small_phantom.isg
    wide = np.where(gt > 0, gt.astype(np.uint64) + 2**40, 0)
    with _sync():
        table = contingency_table(_dask(wide, (10, 48, 48)), _dask(gt, (9, 50, 96))).compute()
    n = int(np.unique(gt[gt > 0]).size)
    assert (match_contingency(table).tp, table.pred_ids.min()) == (n, 2**40 + 1)


def test_average_precision_falls_with_threshold_for_eroded_prediction(small_phantom) -> None:
    gt = small_phantom.isg
    with _sync():
        eroded = contingency_table(ndi.grey_erosion(gt, size=(1, 2, 2)), gt).compute()
        perfect = contingency_table(gt, gt).compute()
    ap = average_precision(eroded)
    per = ap["ap_per_threshold"]
    assert ap["thresholds"] == list(IOU_THRESHOLDS)
    assert all(a >= b for a, b in itertools.pairwise(per)) and per[0] > per[-1]
    assert per[0] > 0.5 and ap["ap"] < per[0]
    assert average_precision(perfect)["ap_per_threshold"] == [1.0] * 10
    m = match_instances(gt, ndi.grey_erosion(gt, size=(1, 2, 2)), 0.75)
    assert per[IOU_THRESHOLDS.index(0.75)] == pytest.approx(m.tp / (m.tp + m.fp + m.fn))


# --------------------------------------------------------------------------- 2-D COCO


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (31, 17)])
def test_slice_rles_equal_pycocotools_encode(shape) -> None:
    rng = np.random.default_rng(shape[0])
    for _ in range(10):
        labels = rng.integers(0, 6, shape).astype(np.uint32)
        got = slice_rles(labels)
        assert [lab for lab, _, _ in got] == sorted(set(np.unique(labels)) - {0})
        for lab, rle, area in got:
            ref = mask_utils.encode(np.asfortranarray((labels == lab).astype(np.uint8)))
            assert (rle["counts"], rle["size"], area) == (ref["counts"], ref["size"],
                                                          int((labels == lab).sum()))


def _direct_coco(gt: np.ndarray, pred: np.ndarray, scores: dict[int, float] | None = None) -> np.ndarray:
    """COCOeval on whole-slice masks encoded one by one with pycocotools."""
    images = [{"id": z, "height": gt.shape[1], "width": gt.shape[2]} for z in range(gt.shape[0])]
    gts, dts = [], []
    for z in range(gt.shape[0]):
        for lab in np.unique(gt[z])[1:] if gt[z].any() else []:
            rle = mask_utils.encode(np.asfortranarray((gt[z] == lab).astype(np.uint8)))
            gts.append({"id": len(gts) + 1, "image_id": z, "category_id": 1, "segmentation": rle,
                        "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                        "iscrowd": 0})
        for lab in np.unique(pred[z])[1:] if pred[z].any() else []:
            rle = mask_utils.encode(np.asfortranarray((pred[z] == lab).astype(np.uint8)))
            dts.append({"image_id": z, "category_id": 1, "segmentation": rle,
                        "score": 1.0 if scores is None else scores[int(lab)]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "categories": [{"id": 1, "name": "isg"}], "annotations": gts}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dts), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _as_stats(result: dict) -> np.ndarray:
    return np.array([-1.0 if result[k] is None else result[k] for k in COCO_STATS])


@pytest.mark.parametrize("scored", [False, True], ids=["score-1", "scores-given"])
def test_coco_equals_direct_pycocotools(small_phantom, scored: bool) -> None:
    gt = small_phantom.isg
    pred = ndi.grey_erosion(ndi.shift(gt, (0, 1, 0), order=0), size=(1, 2, 2))
    ids = np.unique(pred[pred > 0])
    draws = np.random.default_rng(0).random(ids.size)
    scores = {int(i): float(s) for i, s in zip(ids, draws, strict=True)} if scored else None
    with _sync():
        got = coco_metrics(_dask(pred, (5, 30, 96)), _dask(gt, (8, 48, 48)), scores=scores).compute()
    np.testing.assert_allclose(_as_stats(got), _direct_coco(gt, pred, scores), rtol=0, atol=1e-12)
    assert 0 < got["map"] < got["map_50"] < 1


def test_coco_perfect_is_one_and_shift_is_less(small_phantom) -> None:
    gt = small_phantom.isg
    with _sync():
        perfect = coco_metrics(gt, gt).compute()
        shifted = coco_metrics(ndi.shift(gt, (0, 1, 1), order=0), gt).compute()
        empty = coco_metrics(np.zeros_like(gt), gt).compute()
    assert (perfect["map"], perfect["map_50"], perfect["ar_100"]) == (1.0, 1.0, 1.0)
    assert shifted["map"] < shifted["map_50"] <= 1.0 and shifted["map"] < 0.9
    assert (empty["map"], empty["ar_100"], empty["pred_objects"]) == (0.0, 0.0, 0)


# --------------------------------------------------------------------------- morphometrics


def _sphere(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    c = [(n - 1) / 2 for n in shape]
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius**2


def test_sphere_volume_and_surface_in_physical_units() -> None:
    r, nm = 14, 30.0
    sphere = _sphere((40, 40, 40), r)
    with _sync():
        m = morphometrics(sphere, sphere, (nm, nm, nm)).compute()
    r_um = r * nm / 1000
    truth = m["truth"]
    assert truth["volume_um3"] == pytest.approx(4 / 3 * np.pi * r_um**3, rel=0.01)
    # binary marching cubes overestimates a smooth surface by about 9 % (documented)
    assert 1.0 < truth["surface_um2"] / (4 * np.pi * r_um**2) < 1.12
    assert truth["surface_to_volume_per_um"] == pytest.approx(truth["surface_um2"] / truth["volume_um3"])
    assert m["volume_um3_rel_error"] == 0.0


@pytest.mark.parametrize("chunks", [(40, 40, 40), (7, 13, 40), (5, 6, 9), (40, 1, 40)])
def test_surface_area_is_chunk_additive(chunks) -> None:
    mask = _sphere((40, 40, 40), 12) | _sphere((40, 40, 40), 30)[::-1] & (np.indices((40, 40, 40))[0] > 30)
    mask[0, 0, 0] = mask[-1, -1, -1] = True  # objects touching the volume's edge are closed too
    spacing = (50.0, 20.0, 30.0)
    with _sync():
        whole = float(surface_area(_dask(mask, (40, 40, 40)), spacing).compute())
        chunked = float(surface_area(_dask(mask, chunks), spacing).compute())
    from skimage.measure import marching_cubes, mesh_surface_area

    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=spacing,
                                        method="lorensen")
    assert chunked == pytest.approx(whole, rel=1e-9)
    assert whole == pytest.approx(mesh_surface_area(verts, faces) / 1e6, rel=1e-9)


def test_relative_errors_of_a_grown_sphere() -> None:
    truth, grown = _sphere((32, 32, 32), 8), _sphere((32, 32, 32), 10)
    with _sync():
        m = morphometrics(_dask(grown, 11), _dask(truth, 16), (10.0, 10.0, 10.0)).compute()
    assert m["volume_um3_rel_error"] == pytest.approx(grown.sum() / truth.sum() - 1)
    assert m["surface_um2_rel_error"] > 0 > m["surface_to_volume_per_um_rel_error"]


# --------------------------------------------------------------------------- bounded memory


class ChunkReads:
    """An array that refuses any read larger than one chunk."""

    def __init__(self, data: np.ndarray, limit: int) -> None:
        self.data, self.limit = data, limit
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.largest = 0

    def __getitem__(self, key: object) -> np.ndarray:
        out = self.data[key]
        self.largest = max(self.largest, out.size)
        if out.size > self.limit:
            raise AssertionError(f"read of {out.shape} is larger than a chunk")
        return out


class LargestResult(Callback):
    """Records the largest array any task returns."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(result, np.ndarray):
            self.nbytes = max(self.nbytes, result.nbytes)


@pytest.mark.parametrize("kind", list(LabelKind), ids=lambda k: k.value)
def test_evaluation_never_holds_a_whole_volume(small_phantom, kind: LabelKind) -> None:
    truth = {LabelKind.CELL: small_phantom.cell, LabelKind.SEMANTIC: small_phantom.mito,
             LabelKind.INSTANCES: small_phantom.isg}[kind]
    pred = ndi.shift(truth, (1, 0, 2), order=0)
    chunks = (8, 32, 48)
    sources = [ChunkReads(a, int(np.prod(chunks))) for a in (pred, truth)]
    arrays = [da.from_array(s, chunks=chunks, meta=np.empty((0, 0, 0), s.dtype)) for s in sources]
    with _sync(), LargestResult() as largest:
        result = evaluate_labels(*arrays, kind, spacing_nm=(30, 30, 30)).compute()
    # no task returns a whole volume, not even as a boolean mask (blocks, halos and slices do)
    assert 0 < largest.nbytes < truth.size
    with _sync(), LargestResult() as control:  # the check sees a whole-volume task when there is one
        arrays[1].rechunk(-1).compute()
    assert control.nbytes >= truth.size
    assert all(0 < s.largest <= np.prod(chunks) for s in sources)
    assert result["kind"] == kind.value
    json.dumps(result)  # JSON-able without help


# --------------------------------------------------------------------------- stores and CLI


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, small_phantom) -> dict[str, Path]:
    """Ground truth from write_phantom, and a prediction store with perturbed labels."""
    from sxtdask.io import write_image, write_labels
    from sxtdask.phantoms import write_phantom

    d = tmp_path_factory.mktemp("evaluate")
    _, gt = write_phantom(d / "cell.mrc", shape=(48, 96, 96), seed=3)
    p = small_phantom
    pred = write_image(p.image, d / "pred.zarr", chunks=(16, 48, 48), voxel_size_nm=(30, 30, 30))
    ids = np.unique(p.isg[p.isg > 0])
    write_labels(pred, "cell", np.where(ndi.binary_erosion(p.cell > 0), p.cell, 0).astype(np.uint8))
    write_labels(pred, "mito", ndi.shift(p.mito, (0, 1, 0), order=0))
    write_labels(pred, "isg", np.where(p.isg == ids[0], 0, p.isg).astype(np.uint32))
    write_labels(pred, "isg-mask", (p.isg > 0).astype(np.uint8))
    small = write_image(p.image[:40], d / "small.zarr")
    write_labels(small, "isg", p.isg[:40])
    bare = write_image(p.image, d / "bare.zarr")
    write_labels(bare, "nuclei", (p.cell == 2).astype(np.uint8))
    return {"gt": gt, "pred": pred, "small": small, "bare": bare, "dir": d}


def test_resolve_labels_kinds_and_errors(stores) -> None:
    pairs = {p.name: p for p in resolve_labels(stores["pred"], stores["gt"])}
    assert {n: p.kind for n, p in pairs.items()} == {
        "cell": LabelKind.CELL, "mito": LabelKind.SEMANTIC, "isg": LabelKind.INSTANCES}
    (mask,) = resolve_labels(stores["pred"], stores["gt"], ["isg-mask=isg"])
    assert (mask.kind, mask.binarise_pred, mask.binarise_gt) == (LabelKind.SEMANTIC, False, True)
    (forced,) = resolve_labels(stores["pred"], stores["gt"], ["mito"], instances=["mito"])
    assert forced.kind is LabelKind.INSTANCES
    with pytest.raises(InputError, match="no label image 'nope'; available: cell, mito, isg"):
        resolve_labels(stores["pred"], stores["gt"], ["nope"])
    with pytest.raises(InputError, match="no label image name in common .*ground truth: cell, mito, isg"):
        resolve_labels(stores["bare"], stores["gt"])


def test_evaluate_stores_against_in_memory_references(stores, small_phantom) -> None:
    with _sync():
        res = evaluate_stores(stores["pred"], stores["gt"], ["cell", "isg", "isg-mask=isg"], coco=False)
    p = small_phantom
    cell = res["labels"]["cell"]
    pred_cell = np.where(ndi.binary_erosion(p.cell > 0), p.cell, 0)
    assert cell["classes"]["nucleus"]["dice"] == pytest.approx(_numpy_scores(p.cell == 2, pred_cell == 2)[0])
    assert cell["morphometrics"]["cell"]["volume_um3_rel_error"] == pytest.approx(
        np.count_nonzero(pred_cell) / np.count_nonzero(p.cell) - 1)
    isg = res["labels"]["isg"]
    n = int(np.unique(p.isg[p.isg > 0]).size)
    assert (isg["match_50"]["tp"], isg["match_50"]["fn"], isg["match_50"]["fp"]) == (n - 1, 1, 0)
    assert isg["coco_2d"] is None and res["voxel_size_nm"] == [30.0, 30.0, 30.0]
    assert res["labels"]["isg-mask=isg"]["classes"]["1"]["dice"] == 1.0


def _cli(*args: object) -> int:
    from sxtdask.cli import main

    return main([str(a) for a in args])


def test_cli_perfect_and_perturbed(stores, client, capsys) -> None:
    d, sched = stores["dir"], client.scheduler.address
    assert _cli("-q", "evaluate", stores["gt"], stores["gt"], "--out", d / "self.json",
                "--scheduler", sched) == 0
    perfect = json.loads((d / "self.json").read_text())["labels"]
    isg = perfect["isg"]
    assert isg["match_50"]["f1"] == isg["ap_3d"]["ap"] == isg["coco_2d"]["map"] == 1.0
    assert perfect["cell"]["classes"]["nucleus"]["dice"] == perfect["mito"]["classes"]["1"]["dice"] == 1.0
    assert perfect["cell"]["morphometrics"]["nucleus"]["surface_to_volume_per_um_rel_error"] == 0.0
    capsys.readouterr()
    assert _cli("evaluate", stores["pred"], stores["gt"], "--out", d / "pred.json", "--scheduler", sched) == 0
    table = capsys.readouterr().out
    assert "precision / recall / F1 @ IoU 0.5" in table and "nucleus: volume / S/V error" in table
    got = json.loads((d / "pred.json").read_text())["labels"]
    assert set(got) == {"cell", "mito", "isg"}
    assert got["isg"]["match_50"]["precision"] == 1.0 > got["isg"]["match_50"]["recall"]
    assert got["isg"]["coco_2d"]["map"] < 1.0 and got["mito"]["classes"]["1"]["dice"] < 1.0
    assert got["cell"]["morphometrics"]["cell"]["volume_um3_rel_error"] < 0


@pytest.mark.parametrize("case,words", [
    ("exists", ("self.json exists", "--overwrite")),
    ("no-store", ("missing.zarr", "no such OME-Zarr image")),
    ("no-label", ("no label image 'nope'", "available")),
    ("shape", ("shapes differ", "(40, 96, 96)", "(48, 96, 96)")),
])
def test_cli_one_line_errors(stores, capsys, case: str, words: tuple[str, ...]) -> None:
    d = stores["dir"]
    (d / "self.json").touch()
    args = {"exists": (stores["gt"], stores["gt"], "--out", d / "self.json"),
            "no-store": (d / "missing.zarr", stores["gt"]),
            "no-label": (stores["pred"], stores["gt"], "--labels", "nope"),
            "shape": (stores["small"], stores["gt"], "--labels", "isg")}[case]
    capsys.readouterr()
    assert _cli("evaluate", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sxtdask: error: ")
    assert all(w in err[0] for w in words), err[0]
