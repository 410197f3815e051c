"""``write_phantom``: a phantom as an MRC tomogram plus an OME-Zarr holding its ground truth."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from sxtdask._fs import atomic_file, check_new_path
from sxtdask.errors import ConfigError, OutputError

from ._phantom import make_phantom

__all__ = ["ground_truth_path", "mrc_labels", "write_phantom"]

logger = logging.getLogger(__name__)


def ground_truth_path(mrc_path: str | os.PathLike[str]) -> Path:
    """Where the ground truth of ``mrc_path`` goes: ``cell.mrc`` -> ``cell.gt.zarr``."""
    return Path(mrc_path).with_suffix(".gt.zarr")


def write_phantom(
    out: str | os.PathLike[str],
    *,
    shape: tuple[int, int, int] = (128, 256, 256),
    seed: int = 0,
    voxel_size_nm: float = 30.0,
    overwrite: bool = False,
    **overrides: Any,
) -> tuple[Path, Path]:
    """Make a phantom and write it as ``out`` (MRC, float32) and ``out.gt.zarr`` (OME-Zarr).

    The OME-Zarr holds the image and the label images ``labels/cell``, ``labels/mito`` and
    ``labels/isg``; the MRC's voxel size is ``voxel_size_nm * 10`` Å. Both images hold per-voxel
    LAC (µm⁻¹ × ``voxel_size_nm / 1000``), like real reconstructions. ``overrides`` go to
    :func:`make_phantom`.

    Returns
    -------
    (mrc_path, gt_path)

    Raises
    ------
    ConfigError
        ``out`` does not end in ``.mrc``, or a phantom option is invalid.
    OutputError
        Either output exists and ``overwrite`` is false, or it cannot be written.
    """
    mrc_path = Path(out)
    if mrc_path.suffix.lower() != ".mrc":
        raise ConfigError(f"phantom output {mrc_path} must end in .mrc")
    gt_path = ground_truth_path(mrc_path)
    for path in (mrc_path, gt_path):
        check_new_path(path, overwrite, parent=False)  # the folder is created below
    phantom = make_phantom(shape, seed=seed, voxel_size_nm=voxel_size_nm, **overrides)
    try:
        mrc_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the folder of {mrc_path}: {err}") from err
    _write_mrc(mrc_path, phantom.image, phantom.voxel_size_nm, mrc_labels(phantom.metadata or {}))
    _write_ground_truth(gt_path, phantom, overwrite=overwrite)
    logger.info("phantom seed %d %s: %d ISGs -> %s, %s", seed, phantom.image.shape,
                phantom.n_isg, mrc_path, gt_path)
    return mrc_path, gt_path


def mrc_labels(metadata: dict[str, Any]) -> list[str]:
    """How a phantom was made, as MRC header labels (at most 9 of 80 ASCII characters).

    >>> mrc_labels({"mount": "grid", "variation": "wide",
    ...             "imaging": {"model": "tilt-series", "tilt_deg": 65, "dose": 5000}})
    ['sxtdask mount=grid variation=wide', 'sxtdask imaging=tilt-series tilt_deg=65 dose=5000']
    """
    lines = [f"sxtdask mount={metadata.get('mount', 'none')} "
             f"variation={metadata.get('variation', 'classic')}"]
    imaging = dict(metadata.get("imaging") or {})
    if imaging:
        words = [f"imaging={imaging.pop('model', '?')}"]
        words += [f"{k}={_short(v)}" for k, v in imaging.items() if k != "library"]
        line = "sxtdask"
        for word in words:
            if len(line) + 1 + len(word) > 80:
                lines.append(line)
                line = "sxtdask"
            line += " " + word
        lines.append(line)
    return [ln.encode("ascii", "replace").decode()[:80] for ln in lines[:9]]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_short(v) for v in value)
    return str(value).replace(" ", "_")


def _write_mrc(path: Path, image: np.ndarray, voxel_size_nm: float,
               labels: list[str] | tuple[str, ...] = ()) -> None:
    """Write ``image`` as MRC mode 2 through a temporary file renamed into place."""
    try:
        with atomic_file(path) as partial, mrcfile.new(partial, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(image, dtype=np.float32))
            mrc.voxel_size = voxel_size_nm * 10.0
            mrc.header.label[0] = f"sxtdask phantom: LAC per voxel ({voxel_size_nm:g} nm)".encode()
            for i, line in enumerate(labels[:9], start=1):
                mrc.header.label[i] = line.encode("ascii")
            mrc.header.nlabl = 1 + min(len(labels), 9)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err}") from err


def _write_ground_truth(path: Path, phantom: Any, *, overwrite: bool) -> None:
    from sxtdask.io import write_image, write_labels

    v = phantom.voxel_size_nm
    write_image(phantom.image, path, voxel_size_nm=(v, v, v), overwrite=overwrite,
                name=f"phantom-seed{phantom.seed}",
                acquisition={"phantom_seed": phantom.seed, **(phantom.metadata or {})})
    for name in ("cell", "mito", "isg"):
        write_labels(path, name, getattr(phantom, name), overwrite=overwrite)
