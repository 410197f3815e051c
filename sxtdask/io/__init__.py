"""Tomogram readers (MRC, AmiraMesh, TIFF, NumPy) and the OME-Zarr 0.5 image and label writer/reader."""

from __future__ import annotations

from sxtdask.io._labels import (
    create_labels,
    finalize_labels,
    label_classes,
    labels_complete,
    list_label_images,
    list_labels,
    open_labels,
    write_labels,
)
from sxtdask.io._omezarr import (
    OmeImage,
    bin_mean,
    check_chunks_present,
    normalize_chunks,
    open_image,
    read_block,
    write_image,
)
from sxtdask.io._readers import SUPPORTED_SUFFIXES, open_volume
from sxtdask.io._volume import HeaderWarning, Volume

__all__ = [
    "SUPPORTED_SUFFIXES",
    "HeaderWarning",
    "OmeImage",
    "Volume",
    "bin_mean",
    "check_chunks_present",
    "create_labels",
    "finalize_labels",
    "label_classes",
    "labels_complete",
    "list_label_images",
    "list_labels",
    "normalize_chunks",
    "open_image",
    "open_labels",
    "open_volume",
    "read_block",
    "write_image",
    "write_labels",
]
