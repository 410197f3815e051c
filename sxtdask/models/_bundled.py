"""sxtdask's bundled default weights: narrow U-Nets trained on its own synthetic phantoms.

They were trained with ``sxtdask train`` by ``benchmarks/train_bundled.sh`` (see the README for
the commands and their quality on phantoms of unseen seeds). They have never seen a real
tomogram: for real data, train on your own labelled tomograms (``sxtdask train``) or load a
reference checkpoint (``--model PATH``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SxtdaskError, option

__all__ = ["BUNDLED_DIR", "bundled_weights"]

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"
_KINDS = ("cell", "mito", "isg", "cascade")
_FILES = {"cascade": "cell_cascade.pt"}


def bundled_weights(kind: str) -> Path:
    """The bundled checkpoint of a U-Net kind (``cell``, ``mito`` or ``isg``) or of the 3-D
    cell cascade (``cascade``).

    Raises
    ------
    SxtdaskError
        No bundled weights for that kind (pass a checkpoint with ``--model PATH`` instead).
    """
    if kind not in _KINDS:
        raise SxtdaskError(f"no bundled weights for {kind!r} (bundled: {', '.join(_KINDS)})")
    path = BUNDLED_DIR / _FILES.get(kind, f"{kind}_unet.pt")
    if not path.is_file():
        raise SxtdaskError(f"the bundled {kind} weights are missing from this installation "
                           f"({path}); pass a checkpoint with {option('load_model(PATH)', '--model PATH')}")
    return path
