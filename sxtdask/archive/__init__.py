"""Archive runs: every tomogram under a folder → OME-Zarr + labels, a manifest and a summary.

``plan_archive(input_dir, out_dir)`` finds the tomograms (MRC/REC, AmiraMesh, TIFF, NumPy files
and existing OME-Zarr images) and reads the earlier manifest; ``run_archive(plan, segmenter,
client)`` keeps several tomograms in flight on a Dask client (each inside its own
``distributed.span``), records each one's outcome in ``manifest.csv``/``manifest.json`` and writes
``summary.csv``, ``summary.parquet``, ``summary.png`` and ``summary.html`` (interactive: each
point names its tomogram). Reruns skip finished tomograms and resume interrupted ones. Zarr
folders that are not tomograms (``*.gt.zarr`` ground truth, labels only) are ignored with a note.

Examples
--------
>>> from sxtdask import ClassicalISG, connect
>>> from sxtdask.archive import plan_archive, run_archive
>>> plan = plan_archive("tomograms/", "archive/")             # doctest: +SKIP
>>> with connect() as client:                                   # doctest: +SKIP
...     result = run_archive(plan, ClassicalISG(), client)
>>> result.counts                                               # doctest: +SKIP
{'done': 3, 'failed': 1}
"""

from __future__ import annotations

from sxtdask.archive._discover import (
    InputScan,
    Tomogram,
    assign_outputs,
    discover_tomograms,
    scan_inputs,
)
from sxtdask.archive._manifest import (
    MANIFEST_COLUMNS,
    STAGES,
    STATUSES,
    read_manifest,
    write_manifest,
)
from sxtdask.archive._run import (
    ArchivePlan,
    ArchiveProgress,
    ArchiveResult,
    plan_archive,
    run_archive,
)
from sxtdask.archive._summary import (
    METRIC_COLUMNS,
    SUMMARY_COLUMNS,
    summary_frame,
    tomogram_metrics,
    write_summary,
)
from sxtdask.archive._tasks import sha256_path

__all__ = [
    "MANIFEST_COLUMNS",
    "METRIC_COLUMNS",
    "STAGES",
    "STATUSES",
    "SUMMARY_COLUMNS",
    "ArchivePlan",
    "ArchiveProgress",
    "ArchiveResult",
    "InputScan",
    "Tomogram",
    "assign_outputs",
    "discover_tomograms",
    "plan_archive",
    "read_manifest",
    "run_archive",
    "scan_inputs",
    "sha256_path",
    "summary_frame",
    "tomogram_metrics",
    "write_manifest",
    "write_summary",
]
