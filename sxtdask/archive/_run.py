"""Run an archive: many tomograms in flight on one Dask client, each in its own span.

Each tomogram goes through checksum → convert → the pipeline (statistics → segment → pyramids →
measure, one lazy graph: :func:`sxtdask.pipeline.segment_tomogram`; see
:data:`~sxtdask.archive.STAGES`). Every step is a future (``client.submit`` for the one-task
steps, ``client.compute`` for the pipeline's graph, with one more future per block for the chunk
progress), and the client keeps up to ``in_flight`` tomograms going, advancing each when its
future completes (``distributed.as_completed``); nothing polls the scheduler. A failure ends only
its own tomogram. The manifest is rewritten atomically whenever a tomogram
finishes (and after each conversion, so that an interrupted run can reuse it).

What a rerun reuses (so reruns are idempotent and interrupted tomograms resume):

- the converted image, when the manifest records that it was made from an input with the
  input's current checksum (``image_sha256``, set only once a conversion finished) and the chunks
  match;
- a label image, when it is complete and the manifest records that it was made with the same
  task configuration (method, parameters, model checksum; device and batch size do not count);
  an unfinished one is resumed by :func:`sxtdask.engine.segment_store` (never deleted);
- the whole tomogram (status ``skipped``), when every label image is reused, the earlier run
  finished it and ran the same tasks.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import dask
import distributed

from sxtdask._fs import write_lock
from sxtdask._version import __version__
from sxtdask.engine import worker_memory
from sxtdask.errors import InputError, InvalidVolumeError, OutputError, SxtdaskError
from sxtdask.io import labels_complete, normalize_chunks, open_image
from sxtdask.pipeline import METRIC_COLUMNS, segment_tomogram
from sxtdask.segmenters import CombinedSegmenter, OutputKind, Segmenter

from ._discover import OUTPUT_FOLDER, Tomogram, assign_outputs, scan_inputs
from ._manifest import STAGES, ManifestLog, read_manifest
from ._summary import tomogram_metrics, write_summary
from ._tasks import TaskError, convert_tomogram, guarded, sha256_path

__all__ = ["ArchivePlan", "ArchiveProgress", "ArchiveResult", "plan_archive", "run_archive"]

logger = logging.getLogger(__name__)

_POLL_S = 0.25
#: Seconds between looks at the workers' thread count (for the tomograms kept in flight).
_IN_FLIGHT_REFRESH_S = 5.0
_IGNORED_FIELDS = frozenset({"device", "batch_size"})


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ArchivePlan:
    """What an archive run will process (from :func:`plan_archive`).

    Attributes
    ----------
    input_dir, out_dir : Path
    tomograms : list of Tomogram
        Sorted by key (relative path).
    outputs : dict of str → str
        Output image per key, relative to ``out_dir``.
    previous : dict of str → dict
        Rows of the earlier manifest, by key.
    ignored : dict of str → str
        Zarr folders found that are not tomograms (ground truth, labels only, no image): key →
        the reason. Each gets a manifest row with status ``ignored`` and the reason in ``note``.
    """

    input_dir: Path
    out_dir: Path
    tomograms: list[Tomogram]
    outputs: dict[str, str]
    previous: dict[str, dict[str, Any]]
    ignored: dict[str, str] = field(default_factory=dict)


def _make_out_dir(out_dir: Path) -> None:
    for parent in (out_dir, *out_dir.parents):
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == out_dir else "would be inside"
            raise OutputError(f"--out {out_dir}: {where} the file {parent}; give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"--out {out_dir}: cannot create the folder ({err.strerror or err})") from err
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out_dir}: the folder is not writable")


def plan_archive(
    input_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
    exclude: Iterable[str] = (),
) -> ArchivePlan:
    """Check the folders, find the tomograms and read the earlier manifest (creates ``out_dir``).

    Raises
    ------
    InputError
        ``input_dir`` is missing or not a folder, holds no tomograms, or ``out_dir`` holds a
        manifest that is not sxtdask's.
    OutputError
        ``out_dir`` is (or lies inside) a file, or cannot be created or written.
    """
    inp, out = Path(input_dir).absolute(), Path(out_dir).absolute()
    if not inp.exists():
        raise InputError(f"{input_dir}: no such folder")
    if not inp.is_dir():
        raise InputError(f"{input_dir}: not a folder; give the folder that holds the tomograms")
    if out.exists() and out.resolve() == inp.resolve():
        raise OutputError(f"--out {out_dir}: must differ from the input folder")
    _make_out_dir(out)
    scan = scan_inputs(inp, exclude=exclude, skip=[out])
    tomograms = scan.tomograms
    if not tomograms:
        also = ""
        if scan.ignored:
            key, reason = next(iter(scan.ignored.items()))
            more = f" and {len(scan.ignored) - 1} more" if len(scan.ignored) > 1 else ""
            also = f"; ignored {key} ({reason}){more}"
        raise InputError(f"{input_dir}: no tomograms found (looked for .mrc, .rec, .map, .st, .am, "
                         f".tif, .tiff, .npy files and OME-Zarr images){also}")
    previous = read_manifest(out)
    inputs = _InputPaths(tomograms)
    claimed = {k: _confined(out, k, r.get("output"), inputs) for k, r in previous.items()
               if r.get("output") is not None}
    return ArchivePlan(inp, out, tomograms, assign_outputs(tomograms, claimed), previous,
                       ignored=dict(scan.ignored))


class _InputPaths:
    """The inputs' resolved paths and every folder above them, resolved once (a rerun checks
    each earlier row against all inputs: a set lookup each, not a pass over the archive).
    """

    def __init__(self, tomograms: list[Tomogram]) -> None:
        self.key: dict[Path, str] = {}
        self.above: dict[Path, str] = {}
        for t in tomograms:
            source = t.path.resolve()
            self.key[source] = t.key
            for parent in source.parents:
                self.above.setdefault(parent, t.key)

    def hit(self, target: Path) -> str | None:
        """The key of an input that ``target`` is, or holds."""
        return self.key.get(target) or self.above.get(target)


def _confined(out: Path, key: str, output: Any, inputs: _InputPaths) -> str:
    """An earlier manifest's ``output`` for ``key``, checked before anything uses it.

    It must be what sxtdask writes: a relative ``tomograms/.../<name>.ome.zarr`` path that stays
    inside ``out`` once every link is followed and is none of the inputs (nor holds one). Anything
    else (an edited manifest: ``../victim``, an absolute path, an input tomogram) is refused, so
    a rerun never replaces or deletes anything outside the archive folder.
    """
    where = f"{out / 'manifest.json'}: the row of {key!r}"
    fix = "restore the manifest or move it away to start afresh"
    if not isinstance(output, str) or not output:
        raise InputError(f"{where} has output {output!r}, not a path; {fix}")
    rel = PurePosixPath(output)
    if (rel.is_absolute() or "\\" in output or ".." in rel.parts or "." in output.split("/")
            or rel.parts[:1] != (OUTPUT_FOLDER,) or len(rel.parts) < 2
            or not rel.name.endswith(".ome.zarr")):
        raise InputError(f"{where} has output {output!r}, which is not a "
                         f"{OUTPUT_FOLDER}/…/<name>.ome.zarr path inside --out {out}; {fix}")
    target = (out / rel).resolve()
    top = out.resolve()
    if top not in target.parents:
        raise InputError(f"{where} has output {output!r}, which leads outside --out {out} "
                         f"(to {target}); {fix}")
    hit = inputs.hit(target)
    if hit is not None:
        raise InputError(f"{where} has output {output!r}, which is the input {hit}; {fix}")
    return output


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the archive folder (released when the process ends)."""
    with write_lock(out_dir, str(out_dir), "sxtdask archive"):
        yield


# --------------------------------------------------------------------------- segmenter description


def _file_sha256(path: str, cache: dict[str, str]) -> str:
    if path not in cache:
        cache[path] = sha256_path(path)
    return cache[path]


def _describe(obj: Any, cache: dict[str, str]) -> Any:
    """A JSON-able description of a segmenter's settings, model files by checksum."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"class": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.name in _IGNORED_FIELDS:
                continue
            value = getattr(obj, f.name)
            if f.name == "model_path" and value is not None:
                out["model_sha256"] = _file_sha256(str(value), cache)
            else:
                out[f.name] = _describe(value, cache)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [_describe(v, cache) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


@dataclass(frozen=True)
class _Part:
    task: str
    segmenter: Any
    outputs: tuple[str, ...]
    instances: tuple[str, ...]
    method: str
    model: str | None
    model_sha256: str | None
    config: str


def _parts(segmenter: Segmenter) -> tuple[_Part, ...]:
    cache: dict[str, str] = {}
    parts = []
    for seg in segmenter.parts:
        info = seg.describe()
        model = info.model_files[0] if info.model_files else None
        desc = json.dumps(_describe(seg, cache), sort_keys=True)
        parts.append(_Part(
            task=info.task.value, segmenter=seg, outputs=tuple(o.name for o in info.outputs),
            instances=tuple(o.name for o in info.outputs if o.kind is OutputKind.INSTANCES),
            method=info.name, model=model,
            model_sha256=None if model is None else _file_sha256(model, cache),
            config=hashlib.sha256(desc.encode()).hexdigest(),
        ))
    return tuple(parts)


def _combined(parts: list[_Part]) -> Segmenter:
    if len(parts) == 1:
        return parts[0].segmenter
    return CombinedSegmenter(tuple(p.segmenter for p in parts))


# --------------------------------------------------------------------------- progress and result


@dataclass(frozen=True)
class ArchiveProgress:
    """A snapshot for progress displays.

    Attributes
    ----------
    total : int
        Tomograms in this run.
    counts : dict of str → int
        Finished tomograms by status (``done``, ``skipped``, ``failed``).
    stages : dict of str → (int, int)
        Per stage: tomograms that finished it, tomograms that entered it.
    chunks : (int, int)
        Segmentation chunks done and planned so far (each block's own future).
    """

    total: int
    counts: dict[str, int]
    stages: dict[str, tuple[int, int]]
    chunks: tuple[int, int]

    @property
    def finished(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`run_archive` did.

    Attributes
    ----------
    rows : list of dict
        This run's manifest rows (one per tomogram found, and one with status ``ignored`` per
        Zarr folder skipped as not a tomogram), sorted by input.
    manifest : Path
        ``manifest.csv`` (``manifest.json`` beside it).
    summary : list of Path
        ``summary.csv``, ``summary.parquet``, ``summary.png``, ``summary.html``.
    """

    rows: list[dict[str, Any]]
    manifest: Path
    summary: list[Path]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, SxtdaskError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_") or "tomogram"


# --------------------------------------------------------------------------- one tomogram


@dataclass(eq=False)
class _Job:
    tomo: Tomogram
    out: Path
    row: dict[str, Any]
    prev: dict[str, Any] | None
    span: dict[str, Any] | None = None
    stage: str = ""
    stage_open: bool = False
    t_stage: float = 0.0
    t_start: float = 0.0
    parts: list[_Part] = field(default_factory=list)
    overwrite: bool = False
    config: dict[str, str] = field(default_factory=dict)
    run: Any = None
    t_submit: float = 0.0
    measured: bool = False
    blocks_left: int = 0


class _Driver:
    """The client-side loop: submits each tomogram's next stage when its last one completes."""

    def __init__(self, plan: ArchivePlan, segmenter: Any, client: Any, *,
                 chunks: tuple[int, int, int] | None, in_flight: int | None,
                 progress: Callable[[ArchiveProgress], None] | None,
                 on_row: Callable[[dict[str, Any]], None] | None) -> None:
        self.plan, self.client, self.chunks = plan, client, chunks
        self.fixed_in_flight, self.progress, self.on_row = in_flight, progress, on_row
        self._in_flight, self._in_flight_at = 2, -math.inf
        self.parts = _parts(segmenter)
        self.memory = worker_memory(client)  # batches sized to fit each worker
        self.tasks = [p.task for p in self.parts]
        # which label image feeds which summary metric: by the task that makes it (--name may
        # have renamed it)
        by_task = {p.task: p.outputs[0] for p in self.parts if p.outputs}
        self.metric_labels = {k: by_task.get(task) for k, task in
                              (("cell", "cell"), ("mito", "mito"), ("isg", "isg-instances"))}
        self.rows: dict[str, dict[str, Any]] = {k: dict(v) for k, v in plan.previous.items()}
        self.manifest = ManifestLog(plan.out_dir, self.rows)
        self.ac = distributed.as_completed()
        self.waiting: dict[int, tuple[Any, _Job]] = {}  # one stage future per tomogram
        self.blocks: dict[int, tuple[Any, _Job]] = {}  # the pipeline's per-block futures
        self.counts: dict[str, int] = {}
        self.stage_counts = {s: [0, 0] for s in STAGES}
        self.chunks_done = 0
        self.chunks_planned = 0
        self.nonce = uuid.uuid4().hex

    # ----- bookkeeping

    def _new_row(self, t: Tomogram) -> dict[str, Any]:
        return {
            "input": t.key, "input_sha256": None, "input_bytes": None, "status": "incomplete",
            "stage": "checksum", "error": None, "note": None, "output": self.plan.outputs[t.key],
            "shape": None, "voxel_size_nm": None, "voxel_size_assumed": None,
            **{f"seconds_{s}": None for s in STAGES}, "seconds_total": None,
            "chunks_total": None, "chunks_recomputed": None, "chunks_skipped": None,
            "instance_counts": None, "started": _now(), "finished": None,
            "sxtdask_version": __version__, "tasks": list(self.tasks),
            "methods": {p.task: p.method for p in self.parts},
            "models": {p.task: p.model for p in self.parts},
            "model_sha256": {p.task: p.model_sha256 for p in self.parts},
            "image_sha256": None, "config": {},
            **{k: float("nan") for k in METRIC_COLUMNS},
        }

    def ignore(self, key: str, reason: str) -> None:
        """Record a Zarr folder found that is not a tomogram (status ``ignored``, ``note``)."""
        row = {"input": key, "status": "ignored", "stage": None, "error": None, "note": reason,
               "output": None, "started": _now(), "finished": _now(),
               "sxtdask_version": __version__, **{k: float("nan") for k in METRIC_COLUMNS}}
        self.rows[key] = row
        if self.on_row is not None:
            self.on_row(dict(row))

    def _snapshot(self) -> ArchiveProgress:
        return ArchiveProgress(
            total=len(self.plan.tomograms), counts=dict(self.counts),
            stages={s: (c[1], c[0]) for s, c in self.stage_counts.items()},
            chunks=(self.chunks_done, self.chunks_planned),
        )

    @property
    def in_flight(self) -> int:
        """Tomograms at once: the fixed number asked for, else the workers' threads (at least 2),
        looked up again every few seconds, so that it follows workers that batch jobs add or
        take away. A tomogram in flight holds on the workers only its running blocks (each
        sized by the engine to fit a worker's memory) and a few small results, so threads, not
        the archive's size, bound what the cluster holds.
        """
        if self.fixed_in_flight is not None:
            return self.fixed_in_flight
        now = time.monotonic()
        if now - self._in_flight_at > _IN_FLIGHT_REFRESH_S:
            self._in_flight, self._in_flight_at = _default_in_flight(self.client), now
        return self._in_flight

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self._snapshot())

    def _save(self, row: dict[str, Any] | None = None) -> None:
        """Record ``row`` in the manifest's journal (O(1)); without one, write the whole
        manifest (the start and end of a run).
        """
        if row is None:
            self.manifest.compact()
        else:
            self.manifest.record(row)

    def _submit(self, job: _Job, stage: str, make: Callable[[], Any]) -> None:
        """Run ``make`` (which builds the stage's graph and submits it) inside the tomogram's span:
        graph layers keep the annotations current when they are built, so building counts too.
        """
        job.stage, job.stage_open, job.t_stage = stage, True, time.perf_counter()
        job.row["stage"] = stage
        self.stage_counts[stage][0] += 1
        if job.span is None:
            with distributed.span(f"tomogram {job.tomo.key}"):
                job.span = dask.get_annotations().get("span")
                fut = make()
        else:
            with dask.annotate(span=job.span):
                fut = make()
        self.waiting[id(fut)] = (fut, job)
        self.ac.add(fut)
        self._report()

    def _key(self, stage: str, job: _Job) -> str:
        """``stage.tomogram-token``: one dash-free word before the token, so the dashboard
        (``dask.utils.key_split``) shows stage and tomogram, as the engine's keys do.
        """
        return f"{stage}.{_safe(job.tomo.key)}-{self.nonce[:8]}{uuid.uuid4().hex[:24]}"

    def _end(self, job: _Job, status: str, error: str | None = None) -> None:
        self._close_stage(job)
        row = job.row
        row["status"], row["error"] = status, error
        if status != "failed":
            row["stage"] = None
        row["config"] = dict(job.config)
        if status != "skipped":
            row["finished"] = _now()
            row["seconds_total"] = round(time.perf_counter() - job.t_start, 3)
        self.rows[job.tomo.key] = row
        self.counts[status] = self.counts.get(status, 0) + 1
        self._save(row)
        if status == "failed":
            logger.info("%s: failed at %s: %s", job.tomo.key, job.stage, error)
        else:
            logger.info("%s: %s", job.tomo.key, status)
        if self.on_row is not None:
            self.on_row(dict(row))
        self._report()

    # ----- stages

    def start(self, tomo: Tomogram) -> None:
        prev = self.plan.previous.get(tomo.key)
        out = self.plan.out_dir / self.plan.outputs[tomo.key]
        job = _Job(tomo, out, self._new_row(tomo), prev, t_start=time.perf_counter())
        self.rows[tomo.key] = job.row
        self._submit(job, "checksum", lambda: self.client.submit(
            guarded, sha256_path, str(tomo.path), key=self._key("checksum", job), pure=False))

    def advance(self, job: _Job, result: Any) -> None:
        self._close_stage(job)
        getattr(self, f"_after_{job.stage}")(job, result)

    def _close_stage(self, job: _Job) -> None:
        if job.stage_open:
            job.row[f"seconds_{job.stage}"] = round(time.perf_counter() - job.t_stage, 3)
            self.stage_counts[job.stage][1] += 1
            job.stage_open = False

    def _after_checksum(self, job: _Job, sha: str) -> None:
        job.row["input_sha256"] = sha
        job.row["input_bytes"] = _size(job.tomo.path)
        prev = job.prev
        if not (prev and prev.get("image_sha256") == sha and self._image_ok(job.out)):
            job.parts, job.overwrite, job.config = list(self.parts), False, {}
            self._submit(job, "convert", lambda: self.client.submit(
                guarded, convert_tomogram, str(job.tomo.path), job.tomo.kind, str(job.out), self.chunks,
                key=self._key("convert", job), pure=False))
            return
        job.config = dict(prev.get("config") or {})
        for k in ("image_sha256", "shape", "voxel_size_nm", "voxel_size_assumed", "instance_counts",
                  "chunks_total"):  # of the reused image
            job.row[k] = prev.get(k, job.row.get(k))
        job.parts, job.overwrite = self._parts_to_run(job)
        if job.parts:
            self._start_pipeline(job)
        elif prev.get("status") in ("done", "skipped") and prev.get("tasks") == self.tasks:
            job.row = {**prev, "input_sha256": sha}  # as it was made: timings, versions, metrics
            self._end(job, "skipped")
        else:
            self._start_measure(job)

    def _image_ok(self, out: Path) -> bool:
        try:
            img = open_image(out)
        except InputError:
            return False
        if self.chunks is None:
            return True
        return tuple(normalize_chunks(self.chunks, img.data.shape)) == tuple(img.data.chunksize)

    def _parts_to_run(self, job: _Job) -> tuple[list[_Part], bool]:
        """Parts whose labels are missing, unfinished or made otherwise; overwrite if any of those
        is complete (made with another configuration).
        """
        need, overwrite = [], False
        for part in self.parts:
            complete = [labels_complete(job.out, name) for name in part.outputs]
            if all(complete) and job.config.get(part.task) == part.config:
                continue
            need.append(part)
            overwrite = overwrite or any(complete)
        return need, overwrite

    def _after_convert(self, job: _Job, info: dict[str, Any]) -> None:
        job.row["shape"], job.row["voxel_size_nm"] = info["shape"], info["voxel_size_nm"]
        job.row["voxel_size_assumed"] = info.get("voxel_size_assumed", False)
        job.row["image_sha256"] = job.row["input_sha256"]  # what the image at job.out was made from
        job.row["stage"] = "statistics"
        job.row["config"] = {}
        self._save(job.row)  # the checksum of the image now at job.out, for a rerun after an
        # interruption
        self._start_pipeline(job)

    def _start_pipeline(self, job: _Job) -> None:
        """The pipeline's one graph for this tomogram: statistics → segment → pyramids, and the
        metrics too when every label image is made now (else they are measured after, from the
        store, with the labels an earlier run made).
        """
        for part in job.parts:
            job.config.pop(part.task, None)
        job.measured = any(self.metric_labels.values()) and len(job.parts) == len(self.parts)

        def make() -> Any:
            limit, threads = self.memory
            run = segment_tomogram(job.out, _combined(job.parts), overwrite=job.overwrite,
                                   measure=job.measured, memory_limit=limit, threads=threads)
            job.run = run
            job.row["chunks_total"] = run.n_chunks
            job.row["chunks_recomputed"] = run.store.chunks_computed
            job.row["chunks_skipped"] = run.store.chunks_reused
            self.chunks_planned += run.n_chunks
            job.blocks_left = run.n_chunks
            job.t_submit = time.time()
            futures = self.client.compute([run.result, *run.blocks])
            for fut in futures[1:]:
                self.blocks[id(fut)] = (fut, job)
                self.ac.add(fut)
            return futures[0]

        for stage in ("statistics", "pyramids", *(("measure",) if job.measured else ())):
            self.stage_counts[stage][0] += 1
        self._submit(job, "segment", make)

    def _after_segment(self, job: _Job, report: dict[str, Any]) -> None:
        """The pipeline's report: stage times (from the workers' clocks), counts, metrics."""
        self._blocks_finished(job)
        ended = report["stage_ended"]
        start = job.t_submit
        for stage, key in (("statistics", "statistics"), ("segment", "segment_and_relabel"),
                           ("pyramids", "pyramids"), ("measure", "measure")):
            if key in ended:
                job.row[f"seconds_{stage}"] = round(max(0.0, ended[key] - start), 3)
                if stage != "segment":  # the segment stage was closed as the future returned
                    self.stage_counts[stage][1] += 1
                start = ended[key]
        job.row["chunks_recomputed"] = report["chunks_computed"]
        job.row["chunks_skipped"] = report["chunks_reused"]
        old = job.row.get("instance_counts") or {}
        ours = {n for p in job.parts for n in p.instances}
        counts = report["instance_count"]
        job.row["instance_counts"] = {**old, **{k: int(v) for k, v in counts.items() if k in ours}}
        for part in job.parts:
            job.config[part.task] = part.config
        job.run = None
        if job.measured:
            job.row.update(report["metrics"])
            self._end(job, "done")
        else:
            self._start_measure(job)

    def _start_measure(self, job: _Job) -> None:
        if not any(self.metric_labels.values()):
            self._end(job, "done")
            return
        self._submit(job, "measure", lambda: self.client.compute(tomogram_metrics(
            job.out, key_name=f"measure.{_safe(job.tomo.key)}", **self.metric_labels)))

    def _after_measure(self, job: _Job, metrics: dict[str, float]) -> None:
        job.row.update(metrics)
        self._end(job, "done")

    # ----- chunk progress

    def _blocks_finished(self, job: _Job) -> None:
        """Count a tomogram's blocks whose futures have not reported as done (it ended)."""
        for key, (fut, owner) in list(self.blocks.items()):
            if owner is job:
                del self.blocks[key]
                fut.release()
        self.chunks_done += job.blocks_left
        job.blocks_left = 0

    def block_done(self, fut: Any, job: _Job) -> None:
        fut.release()
        if job.blocks_left > 0:
            job.blocks_left -= 1
            self.chunks_done += 1
            self._report()

    # ----- loop

    def fail(self, job: _Job, err: BaseException) -> None:
        if job.stage == "segment":
            if isinstance(err, InvalidVolumeError):
                job.stage = "statistics"
            self.chunks_planned -= job.blocks_left  # a failed run's unfinished blocks
            job.blocks_left = 0
            self._blocks_finished(job)
        job.run = None
        self._end(job, "failed", _one_line(err))

    def step(self, fut: Any, job: _Job) -> None:
        try:
            result = fut.result()
        except Exception as err:  # noqa: BLE001 - any error of its tasks ends only this tomogram
            self.fail(job, err)
            return
        finally:
            fut.release()
        if isinstance(result, TaskError):
            self._end(job, "failed", result.message)
            return
        try:
            self.advance(job, result)
        except Exception as err:  # noqa: BLE001 - client-side steps (planning, checks) alike
            self.fail(job, err)

    def run(self) -> None:
        queue = deque(self.plan.tomograms)
        self._save()  # the journal of an earlier, killed run folded in: this run's starts empty
        for key, reason in self.plan.ignored.items():
            self.ignore(key, reason)
        try:
            while queue or self.waiting:
                while queue and len(self.waiting) < self.in_flight:  # one future per tomogram
                    tomo = queue.popleft()
                    try:
                        self.start(tomo)
                    except Exception as err:  # noqa: BLE001 - this tomogram only
                        job = _Job(tomo, self.plan.out_dir, self._new_row(tomo), None,
                                   t_start=time.perf_counter())
                        self._end(job, "failed", _one_line(err))
                if not self.waiting:
                    continue
                for fut in self.ac.next_batch(block=True):
                    entry = self.waiting.pop(id(fut), None)
                    if entry is not None:
                        self.step(fut, entry[1])
                        continue
                    block = self.blocks.pop(id(fut), None)
                    if block is not None:
                        self.block_done(fut, block[1])
            self._tidy_failed()  # nothing in flight now
        finally:
            for fut, _ in self.blocks.values():
                fut.cancel()
            self.blocks.clear()
            for fut, job in self.waiting.values():
                fut.cancel()
                job.row["status"], job.row["config"] = "incomplete", dict(job.config)
                self.rows[job.tomo.key] = job.row
            if self.waiting:
                logger.warning("interrupted with %d tomogram(s) in flight; a rerun resumes them",
                                              len(self.waiting))
            self.waiting.clear()
            self._save()

    def _tidy_failed(self) -> None:
        """Remove the empty folders left on the way to the outputs of this run's failed
        tomograms, so that a failure leaves nothing under ``tomograms/`` for its input.
        """
        for t in self.plan.tomograms:
            if self.rows.get(t.key, {}).get("status") == "failed":
                _remove_empty_folders(self.plan.out_dir, self.plan.outputs[t.key])


def _remove_empty_folders(out_dir: Path, output: str) -> None:
    """``output`` (relative to ``out_dir``) and its parents up to ``tomograms/`` itself, each only
    while it is an empty folder (``rmdir``: a folder with anything in it stays).
    """
    top = out_dir / OUTPUT_FOLDER
    path = out_dir / output
    while path == top or top in path.parents:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # not empty, or not a folder: it and its parents stay
            return
        else:
            logger.debug("%s: removed the empty folder", path)
        path = path.parent


def _size(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return None


# --------------------------------------------------------------------------- entry point


def _default_in_flight(client: Any) -> int:
    try:
        threads = sum(client.nthreads().values())
    except Exception:  # noqa: BLE001 - an unusual client: fall back to a small number
        threads = 2
    return max(2, int(threads))


def run_archive(
    plan: ArchivePlan, segmenter: Any, client: Any, *, chunks: tuple[int, int, int] | None = None,
    in_flight: int | None = None, progress: Callable[[ArchiveProgress], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> ArchiveResult:
    """Convert, segment and measure every tomogram of ``plan`` on ``client``.

    Parameters
    ----------
    plan : ArchivePlan
        From :func:`plan_archive`.
    segmenter : Segmenter
        One segmenter or a ``CombinedSegmenter`` (several tasks sharing each chunk read).
    client : distributed.Client
    chunks : (cz, cy, cx), optional
        Chunk (and block) shape of the converted images; default 32 full slices.
    in_flight : int, optional
        Tomograms processed at once; default the workers' thread count (at least 2), followed
        as workers join and leave.
    progress : callable, optional
        Called with an :class:`ArchiveProgress` whenever something changes.
    on_row : callable, optional
        Called with each tomogram's manifest row when it finishes (done, skipped or failed).

    Returns
    -------
    ArchiveResult
        A failed tomogram is a row with status ``failed`` and a one-line ``error``; it raises
        nothing. ``manifest.csv``/``.json`` and ``summary.csv``/``.parquet``/``.png``/``.html`` are
        written in ``plan.out_dir`` (also when interrupted).

    Raises
    ------
    OutputError
        Another archive run holds the output folder.
    """
    if in_flight is not None and in_flight < 1:
        from sxtdask.errors import ConfigError

        raise ConfigError(f"in-flight tomograms ({in_flight}) must be at least 1")
    with _locked(plan.out_dir):
        driver = _Driver(plan, segmenter, client, chunks=chunks, in_flight=in_flight,
                         progress=progress, on_row=on_row)
        try:
            with distributed.span(f"archive {plan.input_dir.name}"):
                driver.run()
        finally:
            done = [r for r in driver.rows.values() if r.get("status") in ("done", "skipped")]
            summary = write_summary(sorted(done, key=lambda r: r["input"]), plan.out_dir)
    keys = {t.key for t in plan.tomograms} | set(plan.ignored)
    rows = sorted((r for k, r in driver.rows.items() if k in keys), key=lambda r: r["input"])
    return ArchiveResult(rows, plan.out_dir / "manifest.csv", summary)
