"""``sxtdask export-coco`` and the COCO patch code it shares with the Mask R-CNN trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from sxtdask.cli import main
from sxtdask.io import open_image, open_labels
from sxtdask.phantoms import write_phantom
from sxtdask.segmenters import tile_grid
from sxtdask.segmenters._unet import LAC_FACTOR
from sxtdask.train._coco import patch_objects

# pycocotools (annToMask) warns under NumPy 2 on every mask it decodes
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PATCH, STRIDE, MIN_AREA = 64, 48, 16
EIGHT = np.ones((3, 3), dtype=bool)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco-data")
    gts = []
    for seed in (1, 4):
        _, gt = write_phantom(folder / f"cell{seed}.mrc", shape=(24, 96, 96), seed=seed)
        gts.append(gt)
    return gts


@pytest.fixture(scope="module")
def exported(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco-out") / "coco"
    code = main(["-q", "export-coco", *map(str, stores), "--out", str(out), "--patch", str(PATCH),
                 "--stride", str(STRIDE), "--min-area", str(MIN_AREA), "--val-fraction", "0.5"])
    assert code == 0
    return out


def _expected_objects(labels):
    """Independent reference: (instance id, component mask) of every object a patch must hold."""
    h, w = labels.shape
    out = []
    for i in np.unique(labels[labels > 0]):
        comps, n = ndimage.label(labels == i, structure=EIGHT)
        for k in range(1, n + 1):
            comp = comps == k
            ys, xs = np.nonzero(comp)
            cut = ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1
            if not (cut and comp.sum() < MIN_AREA):
                out.append((int(i), comp))
    return out


def test_export_loads_in_pycocotools_with_masks_equal_to_the_labels(stores, exported):
    by_name = {gt.name: gt for gt in stores}
    seen_tomograms = []
    for split in ("train", "val"):
        coco = COCO(str(exported / f"{split}.json"))  # pycocotools loads it
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["isg"]
        tomograms = {img["tomogram"] for img in coco.dataset["images"]}
        assert len(tomograms) == 1  # two tomograms, fraction 0.5: one per split, never mixed
        (name,) = tomograms
        seen_tomograms.append(name)
        image = open_image(by_name[name]).data.compute()
        labels = open_labels(by_name[name], "isg").compute()
        listed = {(img["z"], img["y0"], img["x0"]): img for img in coco.dataset["images"]}
        for z in range(labels.shape[0]):
            for tile in tile_grid(labels.shape[1:], PATCH, PATCH - STRIDE):
                lab = labels[z][tile.slices]
                expected = _expected_objects(lab)
                img = listed.pop((z, tile.y0, tile.x0), None)
                assert (img is not None) == bool(expected)  # every patch with objects, no other
                if img is None:
                    continue
                pixels = np.asarray(Image.open(exported / split / img["file_name"]))
                want = np.round(np.clip(image[z][tile.slices] * LAC_FACTOR, 0, 1) * 255)
                np.testing.assert_array_equal(pixels, want.astype(np.uint8))
                anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
                got = sorted((a["instance_id"], coco.annToMask(a).astype(bool).tobytes(), a)
                             for a in anns)
                assert [(i, m.tobytes()) for i, m in sorted(
                    expected, key=lambda e: (e[0], e[1].tobytes()))] == [g[:2] for g in got]
                for a in anns:
                    mask = coco.annToMask(a)
                    ys, xs = np.nonzero(mask)
                    assert a["area"] == mask.sum() and a["iscrowd"] == 0
                    assert a["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
        assert not listed
    assert sorted(seen_tomograms) == sorted(by_name)


def test_patch_objects_split_cut_fragments_and_keep_touching_granules_apart():
    lab = np.zeros((20, 20), np.int32)
    lab[5:10, 5:10] = 1  # whole, interior
    lab[5:10, 10:14] = 2  # touches granule 1: a separate object
    lab[15:17, 2:4] = 3  # small but whole: kept
    lab[0:2, 15:17] = 4  # 4-pixel sliver cut by the patch's top edge: dropped
    lab[12:14, 10:14] = 5
    lab[17:20, 10:14] = 5  # one granule in two pieces: two objects
    objs = patch_objects(lab, min_area=5)
    assert sorted(o.instance_id for o in objs) == [1, 2, 3, 5, 5]
    for o in objs:
        assert (lab[o.mask] == o.instance_id).all() and o.area == o.mask.sum()
    assert not patch_objects(lab == 4, min_area=5) and len(patch_objects(lab == 4, 4)) == 1


def test_tif_images_equal_the_png_ones(stores, exported, tmp_path):
    import tifffile

    out = tmp_path / "tif"
    assert main(["-q", "export-coco", *map(str, stores), "--out", str(out), "--patch", str(PATCH),
                 "--stride", str(STRIDE), "--val-fraction", "0.5", "--format", "tif"]) == 0
    png = json.loads((exported / "train.json").read_text())
    tif = json.loads((out / "train.json").read_text())
    assert len(png["images"]) == len(tif["images"]) > 0
    for a, b in zip(png["images"][:5], tif["images"][:5], strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(exported / "train" / a["file_name"])),
                                      tifffile.imread(out / "train" / b["file_name"]))


def test_one_tomogram_has_no_val_split(stores, tmp_path):
    out = tmp_path / "one"
    assert main(["-q", "export-coco", str(stores[0]), "--out", str(out), "--patch", "64"]) == 0
    assert (out / "train.json").is_file() and not (out / "val.json").exists()


def test_nothing_half_written_when_the_export_fails(stores, tmp_path, monkeypatch):
    from sxtdask.train import _coco

    calls = []

    def failing(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(path, image)

    original = _coco._write_image
    monkeypatch.setattr(_coco, "_write_image", failing)
    out = tmp_path / "coco"
    with pytest.raises(OSError, match="disk full"):
        main(["-q", "export-coco", str(stores[0]), "--out", str(out), "--patch", "64"])
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder


def test_existing_output_needs_overwrite(stores, tmp_path, capsys):
    out = tmp_path / "coco"
    out.mkdir()
    (out / "old.txt").write_text("x")
    args = ["-q", "export-coco", str(stores[0]), "--out", str(out), "--patch", "64"]
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train", "train.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["coco"]  # the old copy is gone too


@pytest.mark.parametrize("extra, message", [
    (["--stride", "80"], "stride (80) must be between 1 and the patch size (64)"),
    (["--patch", "8"], "patch (8) must be an integer of at least 16"),
    (["--val-fraction", "1"], "validation fraction (1.0) must be in [0, 1)"),
    (["--labels", "nope"], "nope"),
], ids=["stride", "patch", "val-fraction", "labels"])
def test_errors_are_one_line(stores, tmp_path, capsys, extra, message):
    code = main(["-q", "export-coco", str(stores[0]), "--out", str(tmp_path / "o"), "--patch",
                 "64", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert err.startswith("sxtdask: error: ")
    assert not (tmp_path / "o").exists()


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["-q", "export-coco", str(tmp_path / "none.zarr"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "none.zarr: no such training store" in capsys.readouterr().err


def test_image_and_label_files_export_like_the_store(stores, tmp_path):
    import tifffile

    gt = stores[0]
    mrc = gt.with_name(gt.name.removesuffix(".gt.zarr") + ".mrc")
    tif = tmp_path / "isg.tif"
    tifffile.imwrite(tif, open_labels(gt, "isg").compute())
    common = ["--patch", str(PATCH), "--stride", str(STRIDE)]
    assert main(["-q", "export-coco", f"{mrc},{tif}", "--out", str(tmp_path / "pair"), *common]) == 0
    assert main(["-q", "export-coco", str(gt), "--out", str(tmp_path / "store"), *common]) == 0
    pair, store = (json.loads((tmp_path / n / "train.json").read_text()) for n in ("pair", "store"))
    assert len(store["annotations"]) > 0
    assert pair["annotations"] == store["annotations"]
    assert [i["z"] for i in pair["images"]] == [i["z"] for i in store["images"]]
    for a, b in zip(pair["images"], store["images"], strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pair/train" / a["file_name"])),
                                      np.asarray(Image.open(tmp_path / "store/train" / b["file_name"])))
