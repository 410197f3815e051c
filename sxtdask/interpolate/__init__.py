"""Interpolation of sparse labels: Biomedisa's smart interpolation (random walks) on CPUs, and a
deterministic shape-based interpolation, chunk by chunk on Dask.

:func:`summarize_labels` reads which slices are labelled (one lazy pass over the labels);
:func:`interpolate_labels` returns the interpolated labels (and Biomedisa's uncertainty map) as
lazy Dask arrays that do not depend on the chunking or the number of workers.

Decisions where Biomedisa says nothing, or where sxtdask departs from its code:

- **Reach.** A walker stays within ``reach`` voxels (default 100, Biomedisa's crop margin) of its
  seed along each axis; a step out of that box is spent in place without a hit, as Biomedisa
  spends steps at the volume's edge. Biomedisa's walkers are bounded only by the crop; at
  4,000 steps a free walker's displacement along an axis has a standard deviation of 37 voxels,
  so the box changes a fraction of a percent of the hits, and it is what makes a block with a
  halo of ``reach`` exact.
- **Blocks.** Walks are partitioned by seed: a block's walk task walks from its own seeds only
  and returns their hits on the block grown by the reach; a merge task adds up the hits its own
  and its neighbours' walk tasks left on its core. No walk is walked twice.
- **Random numbers.** SplitMix64's finaliser of (seed, the seed voxel's global index, its slice
  orientation, the walk, the step): counter-based, so a walk is the same in any block, worker
  or order (Biomedisa: MRG32k3a per GPU thread, seeded by its index). Hit counts are integers
  (Biomedisa adds floats, exact only to 2²⁴ hits), whose sums do not depend on order.
- **Weights.** exp(−(B − g)² / 2 var) with the neighbour's grey value g quantised to 1/16 of a
  grey level of the 0..255 scale, from a table computed once per seed (Biomedisa computes six
  exp() per step on float images, and quantises to whole levels for uint8 images).
- **Crop.** The annotated non-zero voxels' bounding box grown by ``crop`` voxels on every side,
  symmetric (Biomedisa's code grows it by 99 below and 98 above, and drops the seeds on its
  faces); outside it the labels are 0.
- **Result.** Ties go to the lowest class value (NumPy's argmax over ascending classes, as
  Biomedisa's code); a voxel no walk reached is 0. Class values are not limited to 255.
- **Unlabelled voxels.** Biomedisa's rule by default (a slice without a non-zero voxel is
  unlabelled, 0 is the background class in labelled slices, negatives are no seeds); with an
  ``unlabelled`` value V, V marks unannotated voxels and 0 is a class like any other. Along every
  axis (``all``), annotated lines one voxel thin in-plane are the traces of other orientations;
  beyond the volume's edge counts as unannotated (Biomedisa keeps lines along the edge).
- **Choosing.** ``sxtdask interpolate --method auto`` (the default) takes the shape method
  where at least 90 % of every class's labelled area lies in cross-sections that overlap the
  class on a neighbouring labelled slice (:func:`cross_section_overlap`): on phantoms it then
  matches or beats the walks on cells and nuclei in seconds; objects that begin and end between
  labelled slices (mitochondria labelled every 20th slice) get the walks, which follow the
  image.
- **Shape method.** Per class, the in-plane signed distance (0.5 − EDT inside, EDT − 0.5 outside;
  Y + X where a slice lacks the class) of each labelled slice, interpolated with PCHIP
  (SciPy's slopes and end conditions) and extended one spacing beyond the outermost labelled
  slices; each voxel takes the class of smallest distance. Labelled slices are reproduced.
"""

from ._choose import OVERLAP, choose_method, cross_section_overlap
from ._config import AXES, Axis, InterpolationConfig, Method
from ._graph import DEFAULT_DEPTH, Interpolation, block_grid, interpolate_labels
from ._output import FILE_SUFFIXES, block_counts, block_writes, tomogram_file, uncertainty_path
from ._slices import MAX_CLASSES, LabelSummary, check_summary, summarize_labels
from ._walk import uncertainty

__all__ = [
    "AXES",
    "DEFAULT_DEPTH",
    "FILE_SUFFIXES",
    "MAX_CLASSES",
    "OVERLAP",
    "Axis",
    "Interpolation",
    "InterpolationConfig",
    "LabelSummary",
    "Method",
    "block_counts",
    "block_grid",
    "block_writes",
    "check_summary",
    "choose_method",
    "cross_section_overlap",
    "interpolate_labels",
    "summarize_labels",
    "tomogram_file",
    "uncertainty",
    "uncertainty_path",
]
