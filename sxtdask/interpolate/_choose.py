"""Which method suits a set of sparse labels: shape-based interpolation assumes that an object's
cross-sections on two consecutive labelled slices overlap (Raya & Udupa's premise); where they
do not — thin, short or oblique objects such as mitochondria labelled every 20th slice — only
the image can say where the object goes, and the walks are the method.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OVERLAP", "choose_method", "cross_section_overlap"]

#: The smallest share of a class's labelled area, in cross-sections that have a partner on a
#: neighbouring labelled slice, for which the shape method is chosen.
OVERLAP = 0.9


def cross_section_overlap(planes: np.ndarray, classes: tuple[int, ...]) -> dict[int, float]:
    """Per class other than 0, the share of its area on the labelled slices that lies in
    cross-sections (connected in-plane) overlapping the class on the previous or the next
    labelled slice: 1 for a cell or a nucleus, low for objects that start and end between two
    labelled slices.

    Parameters
    ----------
    planes : (n, P1, P2) integer ndarray
        The labelled slices, in order along their axis.
    classes : tuple of int
    """
    from scipy import ndimage as ndi

    out: dict[int, float] = {}
    full = np.ones((3, 3), bool)
    for c in classes:
        if c == 0:
            continue
        inside = planes == c
        matched = total = 0
        for k in range(len(planes)):
            parts, n = ndi.label(inside[k], structure=full)
            if not n:
                continue
            partner = np.zeros(inside[k].shape, bool)
            for j in (k - 1, k + 1):
                if 0 <= j < len(planes):
                    partner |= inside[j]
            hit = np.unique(parts[partner & inside[k]])
            matched += int(np.isin(parts, hit[hit > 0]).sum())
            total += int(inside[k].sum())
        out[int(c)] = matched / total if total else 0.0
    return out


def choose_method(overlap: dict[int, float]) -> str:
    """``"shape"`` when every class has at least :data:`OVERLAP` of its area in cross-sections
    with a partner (and there is some class to judge), else ``"walk"``.
    """
    return "shape" if overlap and min(overlap.values()) >= OVERLAP else "walk"
