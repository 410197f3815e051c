"""Cleaning a semantic output over the whole volume (``OutputSpec.clean``): the connected parts of
its foreground of at most ``clean`` × the largest part are dropped, chunk by chunk, and the answer
equals the whole-volume one (``keep_large_parts``) for any chunking, in memory and on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from sxtdask.engine import segment_array
from sxtdask.engine._run import SCRATCH_DIR
from sxtdask.io import open_labels, write_image
from sxtdask.pipeline import segment_tomogram
from sxtdask.segmenters import OutputKind, OutputSpec, Segmenter, Task
from sxtdask.segmenters._base import keep_large_parts
from sxtdask.stats import global_stats


@dataclasses.dataclass(frozen=True)
class Labels(Segmenter):
    """The input holds the class values: a semantic output cleaned over the volume."""

    clean: float | None = 0.1
    halo: tuple[int, int, int] = (0, 0, 0)
    task = Task.CELL

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:  # type: ignore[override]
        return (OutputSpec("cell", OutputKind.SEMANTIC, "uint8", clean=self.clean),)

    def segment_block(self, block, stats, voxel_size_nm):
        return {"cell": np.asarray(block).astype(np.uint8)}


def _scene() -> np.ndarray:
    """A large two-class cell that crosses every chunk face, a second cell of 16 % its size, and
    debris: single voxels and small blobs, some on chunk faces.
    """
    v = np.zeros((30, 41, 47), np.uint8)
    v[3:25, 4:30, 5:40] = 1
    v[8:18, 10:22, 12:30] = 2                       # the nucleus: the same part as its cytoplasm
    v[20:29, 32:41, 5:45] = 1                       # another cell, about 0.16 × the first
    v[1, 1, 1] = v[28, 2, 45] = 2                   # single voxels
    v[12:14, 35:37, 2:4] = 1                        # a small blob
    v[15:17, 39:41, 44:47] = 1                      # on the volume's edge
    return v


@pytest.mark.parametrize("fraction", [0.1, 0.5])
@pytest.mark.parametrize("chunks", [(8, 41, 47), (7, 10, 13), (30, 20, 16)],
                         ids=["z-slabs", "uneven", "in-plane"])
def test_clean_in_memory_equals_the_whole_volume(chunks, fraction):
    v = _scene()
    ref = keep_large_parts(v, fraction)
    small = int((v > 0).sum() - (ref > 0).sum())
    assert small > 0  # something is dropped ...
    assert ref[v == 2].any() and (ref[8:18, 10:22, 12:30] == 2).all()  # ... never the nucleus
    if fraction == 0.1:
        assert (ref[20:29, 32:41, 5:45] == 1).all()  # the second cell stays at 0.1
    else:
        assert not ref[20:29, 32:41, 5:45].any()  # and goes at 0.5
    image = da.from_array(v, chunks=chunks)
    stats = global_stats(image).compute()
    out = segment_array(image, Labels(clean=fraction), stats)["cell"].compute()
    np.testing.assert_array_equal(out, ref)


def test_clean_on_disk_equals_the_whole_volume_and_counts_what_it_keeps(tmp_path: Path):
    v = _scene()
    ref = keep_large_parts(v, 0.1)
    store = write_image(v.astype(np.float32), tmp_path / "cell.zarr", chunks=(7, 10, 13),
                        voxel_size_nm=(30.0, 30.0, 30.0))
    for chunks in ((7, 10, 13), (8, 41, 47)):
        report = segment_tomogram(store, Labels(), chunks=chunks,
                                  overwrite=True).compute(scheduler="threads")
        np.testing.assert_array_equal(open_labels(store, "cell").compute(), ref)
        assert report["voxel_count"]["cell"] == int((ref > 0).sum())
        assert not (store / SCRATCH_DIR).exists()


def test_without_clean_nothing_is_dropped(tmp_path: Path):
    v = _scene()
    store = write_image(v.astype(np.float32), tmp_path / "cell.zarr", chunks=(7, 10, 13),
                        voxel_size_nm=(30.0, 30.0, 30.0))
    segment_tomogram(store, Labels(clean=None)).compute(scheduler="threads")
    np.testing.assert_array_equal(open_labels(store, "cell").compute(), v)


def test_clean_reaches_the_cell_methods_and_is_refused_elsewhere(cascade_checkpoint: Path):
    from sxtdask.errors import ConfigError
    from sxtdask.segmenters import make_segmenter

    seg = make_segmenter("cell", "cascade", models={"cell": cascade_checkpoint}, device="cpu",
                         options={"clean": 0.1})
    assert seg.outputs[0].clean == 0.1
    unet = make_segmenter("cell", "unet", device="cpu", options={"clean": 0.2})
    assert unet.outputs[0].clean == 0.2
    with pytest.raises(ConfigError):
        make_segmenter("mito", "unet", device="cpu", options={"clean": 0.2})
