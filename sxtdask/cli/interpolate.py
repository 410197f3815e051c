"""``sxtdask interpolate IMAGE LABELS OUT``: fill in sparsely labelled slices (Biomedisa's smart
interpolation on CPUs, or shape-based interpolation) chunk by chunk on a Dask cluster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sxtdask import __version__

from ._cluster import cluster_config, open_cluster, span_name
from ._console import Console, write_json
from ._options import _positive, add_chunks_option, cluster_options, output_options

NAME = "interpolate"
EXAMPLES = """\
examples:
  # every 20th slice labelled by hand; Biomedisa's random walks fill in the rest, into the store:
  sxtdask interpolate cell.zarr sparse.tif cell.zarr
  # the same with the uncertainty map, under another name, replacing an earlier run:
  sxtdask interpolate cell.zarr sparse.tif cell.zarr --name cell-interp --uncertainty --overwrite
  # the recommended walk on CPUs (denoised, shorter walks, every 4th seed voxel in-plane
  # but every one within 4 voxels of a boundary):
  sxtdask interpolate c.mrc s.mrc o.tif --denoise --steps 1000 --reach 50 --seed-stride 4 --boundary-band 4
  # shape-based interpolation (deterministic, image-free), written as a NumPy file:
  sxtdask interpolate cell.mrc sparse.mrc labels.npy --method shape
  # NCXT's sparse AmiraMesh labels (value 2 = not annotated), slices labelled along every axis:
  sxtdask interpolate s12.rec s12.labels s12-interp.tif --axis all --unlabelled 2
"""

#: Material names (AmiraMesh ``Materials``, lower case) that mark unannotated voxels, as
#: ``sxtdask train`` and ``sxtdask evaluate`` read them.
_UNLABELLED_MATERIALS = frozenset({"ignore", "ignored", "unlabelled", "unlabeled", "unannotated",
                                   "unknown"})
DEFAULT_NAME = "interpolated"
#: ``sxtdask.interpolate``'s methods, axes and block depth, named here so that building the
#: parser imports no NumPy, Dask or numba (tests check that they agree).
METHODS = ("walk", "shape")
#: The walk options and their defaults (any other value asks for the walk method).
WALK_DEFAULTS = {"uncertainty": False, "denoise": False, "smooth": 0, "seed": 0, "walks": 10,
                 "steps": 4000, "seed_stride": 1, "boundary_band": 0, "reach": 100, "crop": 100}
AXES = ("z", "y", "x", "all")
DEFAULT_DEPTH = 64


def add_parser(sub: Any) -> None:
    """Add the ``interpolate`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("image", type=Path, metavar="IMAGE",
                     help="the tomogram: an OME-Zarr image (its level 0) or a file (.mrc, .rec, "
                          ".am, .tif, .npy)")
    own.add_argument("labels", type=Path, metavar="LABELS",
                     help="the sparse labels, same shape: a label file (.tif, .mrc, .npy, "
                          "AmiraMesh .labels) or an OME-Zarr label image STORE.zarr/labels/NAME; "
                          "labelled slices carry class values, 0 is the background")
    own.add_argument("out", type=Path, metavar="OUT",
                     help="an OME-Zarr image of that shape (the labels go to its labels/NAME; "
                          "IMAGE itself, typically), a new .zarr (a file IMAGE is converted into "
                          "it first), or a tomogram file (.tif, .npy, .mrc)")
    own.add_argument("--method", default="auto", choices=("auto", *METHODS),
                     help="walk: Biomedisa's smart interpolation (random walks guided by the "
                          "image); shape: signed distance maps of the labelled slices "
                          "interpolated across the others (PCHIP), image-free and deterministic; "
                          "auto: shape where at least 90%% of every class's labelled area lies "
                          "in cross-sections that overlap the class on a neighbouring labelled "
                          "slice (cells, nuclei), else walk (objects that begin and end between "
                          "labelled slices: mitochondria); walk with --axis all or any walk "
                          "option")
    own.add_argument("--axis", default="z", choices=AXES,
                     help="the orientation of the labelled slices; all: slices of every "
                          "orientation, with at least one unlabelled slice between two labelled "
                          "ones (walk only)")
    own.add_argument("--unlabelled", type=int, default=None, metavar="VALUE",
                     help="the value of unannotated voxels (e.g. 2 in NCXT's labels); then a "
                          "slice is labelled when it holds any other value, and 0 is a class "
                          "(default: Biomedisa's rule, a slice with no non-zero voxel is "
                          "unlabelled; or the value of a material named 'ignore' in an "
                          "AmiraMesh label file). Negative values are never seeds")
    own.add_argument("--name", default=DEFAULT_NAME, metavar="NAME",
                     help="the label image's name in an OME-Zarr OUT")
    own.add_argument("--uncertainty", action="store_true",
                     help="walk: also write Biomedisa's uncertainty 1 - (1 - h3/h1)(1 - h2/h1) of "
                          "the three largest hit counts, x 255 (uint8): labels/NAME-uncertainty, "
                          "or OUT's name + .uncertainty beside a file")
    walk = own.add_argument_group("random walks (--method walk)")
    walk.add_argument("--seed", type=int, default=0,
                      help="random seed: the same seed gives the same labels for any --chunks "
                           "and any number of workers")
    walk.add_argument("--walks", type=_positive, default=10, metavar="N",
                      help="walks from each seed voxel, as Biomedisa")
    walk.add_argument("--steps", type=_positive, default=4000, metavar="N",
                      help="steps per walk, as Biomedisa")
    walk.add_argument("--seed-stride", type=_positive, default=1, metavar="S",
                      help="walk from every S-th voxel of a labelled slice along both in-plane "
                           "axes (1: every voxel, as Biomedisa; S cuts the work by about S²)")
    walk.add_argument("--boundary-band", type=int, default=0, metavar="B",
                      help="with --seed-stride: still walk from every voxel within B voxels "
                           "(in-plane) of another label")
    walk.add_argument("--reach", type=_positive, default=100, metavar="R",
                      help="a walker stays within R voxels of its seed along each axis (a step "
                           "out is spent in place, as at the volume's edge): the blocks' halo")
    walk.add_argument("--crop", type=int, default=100, metavar="C",
                      help="voxels kept around the labelled objects' bounding box (Biomedisa's "
                           "crop); outside it the labels are 0")
    walk.add_argument("--denoise", action="store_true",
                      help="Biomedisa's 3x3x3 mean filter of the image before the walks")
    walk.add_argument("--smooth", type=int, default=0, metavar="K",
                      help="K iterations of Biomedisa's curvature smoothing of the hit maps "
                           "(Biomedisa's --smooth uses 100)")
    tail = argparse.ArgumentParser(add_help=False)
    add_chunks_option(tail)
    tail.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                      help="write the run's report here (timings, classes, seeds, blocks)")
    tail.add_argument("--overwrite", action="store_true",
                      help="replace an existing label image or file")
    sub.add_parser(
        NAME, help="fill in sparsely labelled slices (Biomedisa's random walks on CPUs, or "
                   "shape-based); writes labels/<name> or a file",
        description="Fill in the unlabelled slices of sparse labels. --method walk is Biomedisa's "
                    "smart interpolation (walks from every seed voxel of the labelled slices, "
                    "weights relative to the seed's grey value, the class with the most raw "
                    "hits wins), compiled for CPUs and split into blocks whose results do not "
                    "depend on the blocks or the workers (a counter-based random generator per "
                    "seed and walk; walkers confined to --reach of their seed). At Biomedisa's "
                    "defaults it costs 40,000 steps per seed voxel (every voxel of every "
                    "labelled slice): hours for 512^3 on two cores. Recommended on CPUs: "
                    "--denoise --steps 1000 --reach 50 --seed-stride 4 --boundary-band 4 (as "
                    "good on phantoms, about 20x less work). --method shape interpolates each "
                    "class's signed distance maps across the slices (PCHIP): seconds, no "
                    "image, best for large round objects (cell, nucleus), poor for thin "
                    "oblique ones (mitochondria).",
        parents=[own, tail, cluster_options(), output_options()])


def _walk_options(args: argparse.Namespace) -> list[str]:
    """The walk options given other values than their defaults."""
    return [f"--{k.replace('_', '-')}" for k, v in WALK_DEFAULTS.items() if getattr(args, k) != v]


def _config(args: argparse.Namespace, unlabelled: int | None, method: str | None = None) -> Any:
    from sxtdask.interpolate import InterpolationConfig, Method

    if method is None:  # before the labels are read: auto is checked as the walk
        method = "walk" if args.method == "auto" else args.method
    return InterpolationConfig(
        method=Method(method), axis=args.axis, unlabelled=unlabelled, seed=args.seed,
        walks=args.walks, steps=args.steps, reach=args.reach, crop=args.crop,
        seed_stride=args.seed_stride, boundary_band=args.boundary_band, denoise=args.denoise,
        smooth=args.smooth, uncertainty=args.uncertainty)


class _Inputs:
    """IMAGE and LABELS opened lazily (no voxel read yet), with what the output needs."""

    def __init__(self, args: argparse.Namespace) -> None:
        import dask.array as da
        from dask.base import tokenize

        from sxtdask.errors import InputError
        from sxtdask.io import label_classes, open_image, open_labels, open_volume

        self.image_volume: Any = None
        if _is_zarr(args.image):
            img = open_image(args.image)
            self.image, self.voxel_size_nm = img.data, img.voxel_size_nm
        else:
            vol = open_volume(args.image)
            chunks = (min(32, vol.shape[0]), vol.shape[1], vol.shape[2])
            self.image = da.from_array(vol, chunks=chunks, name=f"image-{tokenize(vol)}")
            self.voxel_size_nm, self.image_volume = vol.voxel_size_nm, vol
        self.materials: dict[int, str] = {}
        store, name = _label_image(args.labels)
        if store is not None:
            self.labels = open_labels(store, name)
            self.materials = label_classes(store, name)
        else:
            lab = open_volume(args.labels)
            if lab.dtype.kind not in "biu":
                raise InputError(f"{args.labels}: labels are integers; this file holds {lab.dtype}")
            chunks = (min(32, lab.shape[0]), lab.shape[1], lab.shape[2])
            self.labels = da.from_array(lab, chunks=chunks, name=f"labels-{tokenize(lab)}")
            self.materials = dict(lab.materials)
        if tuple(self.image.shape) != tuple(self.labels.shape):
            raise InputError(f"{args.image} is {tuple(self.image.shape)} voxels but {args.labels} is "
                             f"{tuple(self.labels.shape)}: the labels must have the image's shape")

    def unlabelled(self, given: int | None) -> tuple[int | None, str]:
        """The unlabelled value (given, or a material named 'ignore') and where it came from."""
        if given is not None:
            return given, "--unlabelled"
        named = sorted(v for v, n in self.materials.items() if n.strip().lower() in _UNLABELLED_MATERIALS)
        if named:
            return named[0], f"the material {self.materials[named[0]]!r} of the label file"
        return None, "Biomedisa's rule"


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


def _label_image(path: Path) -> tuple[Path | None, str]:
    """(store, name) for ``STORE.zarr/labels/NAME``, else (None, "")."""
    if path.is_dir() and path.parent.name == "labels" and _is_zarr(path.parent.parent):
        return path.parent.parent, path.name
    if _is_zarr(path):
        from sxtdask.errors import InputError

        raise InputError(f"{path}: is an OME-Zarr image; give its label image, "
                         f"{path}/labels/NAME, or a label file")
    return None, ""


class _Output:
    """Where the labels go, checked before any work: an OME-Zarr store's labels/NAME or a file."""

    def __init__(self, args: argparse.Namespace, inputs: _Inputs) -> None:
        from sxtdask._fs import check_new_path
        from sxtdask.errors import OVERWRITE, ConfigError, InputError, OutputError
        from sxtdask.interpolate import FILE_SUFFIXES, uncertainty_path
        from sxtdask.io import labels_complete, open_image

        self.out, self.name = args.out, args.name
        self.unc_name = f"{args.name}-uncertainty"
        self.convert = False
        suffix = args.out.suffix.lower()
        if _is_zarr(args.out):
            self.kind = "zarr"
            img = open_image(args.out, check_chunks=False)
            if tuple(img.data.shape) != tuple(inputs.labels.shape):
                raise InputError(f"{args.out} is {tuple(img.data.shape)} voxels but the labels are "
                                 f"{tuple(inputs.labels.shape)}")
            for name in [self.name] + ([self.unc_name] if args.uncertainty else []):
                if labels_complete(args.out, name) and not args.overwrite:
                    raise OutputError(f"{args.out}: label image {name!r} exists; pass {OVERWRITE} "
                                      "to replace it")
        elif suffix == ".zarr":
            self.kind, self.convert = "zarr", True
            if inputs.image_volume is None:
                raise ConfigError(f"{args.out}: a new OME-Zarr OUT is made from a tomogram file "
                                  f"IMAGE; {args.image} is already a store: give it (or another "
                                  "store of its shape) as OUT")
            check_new_path(args.out, args.overwrite, folder=True, what="OUT")
        elif suffix in FILE_SUFFIXES:
            self.kind = "file"
            check_new_path(args.out, args.overwrite, folder=False, what="OUT")
            if args.uncertainty:
                check_new_path(uncertainty_path(args.out), args.overwrite, folder=False,
                               what="the uncertainty map")
        else:
            raise ConfigError(f"OUT {args.out}: give an OME-Zarr store, a new .zarr or a file "
                              f"({', '.join(FILE_SUFFIXES)})")


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Interpolate the sparse labels ``args.labels`` of ``args.image`` into ``args.out``."""
    from contextlib import nullcontext

    from distributed import span

    from sxtdask._fs import check_new_path, write_lock

    t0 = time.perf_counter()
    inputs = _Inputs(args)  # one-line errors before any cluster starts
    unlabelled, rule = inputs.unlabelled(args.unlabelled)
    config = _config(args, unlabelled)
    output = _Output(args, inputs)
    if args.report is not None:
        check_new_path(args.report, args.overwrite, folder=False, what="--report")
    lock = write_lock(args.out, str(args.out)) if output.kind == "zarr" and not output.convert \
        else nullcontext()
    with lock, open_cluster(args, con, cluster_config(args)) as client, \
            span(span_name("interpolate", args.image)):
        report = _run(args, con, client, inputs, output, config)
    report["unlabelled"] = {"value": unlabelled, "rule": rule}
    report["total_seconds"] = round(time.perf_counter() - t0, 3)
    if args.report is not None:
        write_json(args.report, report)
    voxels = ", ".join(f"{c}: {n:,}" for c, n in report["voxels"].items())
    con.say(f"{args.image}: {report['method']} interpolation of {report['labelled_slices']} labelled "
            f"slices ({report['seeds']:,} seed voxels walked) into {', '.join(report['outputs'])}; "
            f"voxels per class {voxels} ({report['total_seconds']:.1f} s)")
    return report


def _run(args: argparse.Namespace, con: Console, client: Any, inputs: _Inputs, output: _Output,
         config: Any) -> dict[str, Any]:
    """Summary and checks, then the blocks (a bar over them), then the output made complete."""
    from distributed import as_completed

    from sxtdask.interpolate import block_grid, check_summary, interpolate_labels, summarize_labels

    t0 = time.perf_counter()
    with con.busy("reading the labelled slices"):
        summary = client.compute(summarize_labels(inputs.labels, config)).result()
        check_summary(summary, config, str(args.labels))
        choice = _choose(args, client, inputs, summary, config)
    if choice["method"] != config.method.value:
        config = _config(args, config.unlabelled, choice["method"])
        check_summary(summary, config, str(args.labels))
    slices = {"zyx"[a]: list(s) for a, s in summary.labelled.items()}
    con.say(f"labelled slices: {'; '.join(f'{a}: {len(s)}' for a, s in slices.items())}; classes "
            f"{', '.join(map(str, summary.classes))}; method {config.method.value} "
            f"({choice['why']})")
    grid = block_grid(tuple(inputs.labels.shape), _blocks(args.chunks, inputs.image.chunksize))
    interp = interpolate_labels(inputs.image if config.method.value == "walk" else None,
                                inputs.labels, config, chunks=grid, summary=summary,
                                name=_tomogram(args.image))
    t_summary = time.perf_counter() - t0
    store = args.out
    if output.kind == "zarr":
        writes, targets = _zarr_targets(args, con, inputs, output, interp, grid)
    n_blocks = len(interp.blocks)
    infos: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    if output.kind == "zarr":
        futures = client.compute(writes)
        with con.steps(f"interpolating {n_blocks} blocks ({config.method.value})", n_blocks) as tick:
            for k, future in enumerate(as_completed(futures), 1):
                infos.append(future.result())
                tick(k, n_blocks)
        with con.busy("writing label pyramids"):
            _finalize(store, output, inputs, summary, config)
        outputs = [f"{store}/labels/{n}" for n in targets]
    else:
        infos, outputs = _write_files(args, con, client, inputs, interp, n_blocks)
    seconds = time.perf_counter() - t1
    voxels: dict[int, int] = {}
    for info in infos:
        for c, n in info["voxels"].items():
            voxels[int(c)] = voxels.get(int(c), 0) + int(n)
    seeds = sum(int(i["seeds"]) for i in infos)
    return {
        "sxtdask_version": __version__, "image": str(args.image), "labels": str(args.labels),
        "method": config.method.value, "method_asked": args.method, "overlap": choice["overlap"],
        "axis": config.axis.value,
        "labelled_slices": sum(len(s) for s in summary.labelled.values()),
        "labelled": slices, "classes": list(summary.classes), "seeds": seeds,
        "steps_walked": seeds * config.seed_voxel_steps if config.method.value == "walk" else 0,
        "walks": config.walks, "steps": config.steps, "seed_stride": config.seed_stride,
        "boundary_band": config.boundary_band, "reach": config.reach, "crop": config.crop,
        "walkable_box": [list(b) for b in interp.walkable], "seed": config.seed,
        "blocks": n_blocks, "block_shape": [c[0] for c in grid],
        "voxels": {str(c): n for c, n in sorted(voxels.items())},
        "outputs": outputs, "stage_seconds": {"summary": round(t_summary, 3),
                                              "interpolation": round(seconds, 3)},
        "workers": len(client.scheduler_info().get("workers", {})),
        "dashboard": client.dashboard_link,
    }


def _choose(args: argparse.Namespace, client: Any, inputs: _Inputs, summary: Any,
            config: Any) -> dict[str, Any]:
    """The method ``--method auto`` stands for, and why (the cross-sections' overlap)."""
    import numpy as np

    from sxtdask.interpolate import choose_method, cross_section_overlap

    if args.method != "auto":
        return {"method": args.method, "why": "--method", "overlap": None}
    given = _walk_options(args)
    if given or args.axis == "all":
        why = f"auto: {', '.join(given) or '--axis all'} given"
        return {"method": "walk", "why": why, "overlap": None}
    (axis,) = config.axis.indices
    index: list[Any] = [slice(None)] * 3
    index[axis] = list(summary.labelled[axis])
    planes = np.moveaxis(client.compute(inputs.labels[tuple(index)]).result(), axis, 0)
    overlap = cross_section_overlap(planes, summary.classes)
    method = choose_method(overlap)
    text = ", ".join(f"class {c} {v:.2f}" for c, v in overlap.items())
    return {"method": method, "overlap": {str(c): round(v, 4) for c, v in overlap.items()},
            "why": f"auto: labelled area in cross-sections that overlap the next or the previous "
                   f"labelled slice: {text}"}


def _blocks(chunks: tuple[int, int, int] | None, image_chunks: tuple[Any, ...]) -> tuple[int, ...]:
    """The blocks of the work: ``--chunks``, else the image's chunks stacked along z to at least
    :data:`DEFAULT_DEPTH` slices (the walks' hits then reach at most two blocks beyond their own:
    the labels do not depend on the blocks, a walk task's memory does).
    """
    if chunks is not None:
        return chunks
    depth = int(image_chunks[0])
    return (depth * -(-DEFAULT_DEPTH // depth), *(int(c) for c in image_chunks[1:]))


def _tomogram(path: Path) -> str:
    from sxtdask.engine import tomogram_name

    return tomogram_name(path)


def _zarr_targets(args: argparse.Namespace, con: Console, inputs: _Inputs, output: _Output,
                  interp: Any, grid: Any) -> tuple[list[Any], list[str]]:
    """Create the label arrays (unlisted until finalized) and the per-block writes into them."""
    from sxtdask.interpolate import block_writes
    from sxtdask.io import create_labels, write_image

    if output.convert:
        vol = inputs.image_volume
        with con.steps(f"converting {args.image} into {args.out}", None) as tick:
            write_image(vol, args.out, overwrite=args.overwrite, progress=tick)
    chunks = args.chunks or tuple(int(c) for c in inputs.image.chunksize)  # whole chunks per block
    target = create_labels(args.out, output.name, shape=tuple(interp.labels.shape), chunks=chunks,
                           dtype=interp.labels.dtype, overwrite=True)
    names = [output.name]
    unc = None
    if interp.uncertainty is not None:
        unc = create_labels(args.out, output.unc_name, shape=tuple(interp.labels.shape),
                            chunks=chunks, dtype="uint8", overwrite=True)
        names.append(output.unc_name)
    return block_writes(interp, target, unc), names


def _finalize(store: Path, output: _Output, inputs: _Inputs, summary: Any, config: Any) -> None:
    from sxtdask.io import finalize_labels, list_label_images

    classes = {c: inputs.materials[c] for c in summary.classes if c in inputs.materials}
    finalize_labels(store, output.name, classes=classes or None, listed=False)
    names = [output.name]
    if config.uncertainty:
        finalize_labels(store, output.unc_name, listed=False)
        names.append(output.unc_name)
    list_label_images(store, names)


def _write_files(args: argparse.Namespace, con: Console, client: Any, inputs: _Inputs, interp: Any,
                 n_blocks: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Blocks computed on the workers, written by the client into temporary files that become
    OUT (and its uncertainty map) only when every block is in.
    """
    from contextlib import ExitStack

    import numpy as np
    from distributed import as_completed

    from sxtdask.interpolate import block_counts, tomogram_file, uncertainty_path

    labels, unc = interp.labels, interp.uncertainty
    futures = client.compute(interp.blocks)
    where = {f.key: n for n, f in enumerate(futures)}
    infos = []
    shape = tuple(labels.shape)
    outputs = [str(args.out)] + ([str(uncertainty_path(args.out))] if unc is not None else [])
    with ExitStack() as stack:
        target = stack.enter_context(tomogram_file(args.out, shape, labels.dtype, inputs.voxel_size_nm))
        unc_target = (stack.enter_context(tomogram_file(uncertainty_path(args.out), shape, np.uint8,
                                                        inputs.voxel_size_nm))
                      if unc is not None else None)
        with con.steps(f"interpolating {n_blocks} blocks ({interp.config.method.value})",
                       n_blocks) as tick:
            for k, future in enumerate(as_completed(futures), 1):
                lab, u, info = future.result()
                region = tuple(slice(lo, hi) for lo, hi in interp.boxes[where[future.key]])
                target[region] = lab
                if unc_target is not None:
                    unc_target[region] = u
                infos.append(block_counts(lab, info, interp.classes))
                del lab, u
                future.release()
                tick(k, n_blocks)
    return infos, outputs
