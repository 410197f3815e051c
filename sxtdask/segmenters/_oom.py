"""Batched forward passes that survive running out of GPU memory.

On a CUDA out-of-memory error the CUDA cache is emptied and the batch halved, down to one item;
if one item still does not fit, the whole chunk is run again on the CPU. Every step is logged as a
warning (and ``warnings.warn`` once per process), so a degraded run is never silent. Splitting
never changes the answer for networks in eval mode (each item's result does not depend on the
others in its batch); the CPU fallback gives the CPU's answer (float32 instead of bfloat16
autocast), for the whole chunk, so a chunk is never a mix of both.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["DeviceMemoryWarning", "forward_batches", "is_out_of_memory"]

logger = logging.getLogger(__name__)

_warned = threading.Event()


class DeviceMemoryWarning(UserWarning):
    """A forward pass ran out of GPU memory: batches were split or the chunk ran on the CPU."""


def is_out_of_memory(err: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and RuntimeErrors that report an allocation
    failure on the device (``"out of memory"``, cuDNN/cuBLAS ``ALLOC_FAILED``).
    """
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency of every caller
        pass
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text.lower() or "ALLOC_FAILED" in text
    )


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _degrade(message: str, *args: Any) -> None:
    logger.warning(message, *args)
    if not _warned.is_set():
        _warned.set()
        warnings.warn(
            "sxtdask ran out of GPU memory: batches are split or chunks run on the CPU "
            "(slower; see the log for each step)", DeviceMemoryWarning, stacklevel=3,
        )


def forward_batches(
    run: Callable[[Any, str], Sequence[Any]],
    inputs: Sequence[Any] | np.ndarray,
    batch_size: int,
    *,
    device: str,
    move_to_cpu: bool = True,
) -> list[Any]:
    """``run`` over ``inputs`` in batches, splitting batches or moving to the CPU on OOM.

    Parameters
    ----------
    run : callable ``(batch, device) -> results``
        Runs the network on ``batch`` (a slice of ``inputs``) on ``device`` (``"cuda..."`` or
        ``"cpu"``) and returns one result per item, on the host (NumPy arrays or objects holding
        them), so that finished batches hold no device memory. It must pick the network for the
        device it is given: the fallback calls it with ``"cpu"``.
    inputs : sequence
        Items (slices, tiles); anything that slices like a list or an ndarray along axis 0.
    batch_size : int
        Items per forward pass at first.
    device : str
        The device ``run`` is first called with.
    move_to_cpu : bool
        Run the whole chunk on the CPU when one item alone does not fit on a CUDA device;
        False re-raises the error instead.

    Returns
    -------
    list
        One result per item of ``inputs``, in order.

    Raises
    ------
    torch.cuda.OutOfMemoryError or RuntimeError
        Out of memory with one item per batch, and no CPU fallback (``device`` is the CPU or
        ``move_to_cpu`` is False). Other errors are never caught.

    Examples
    --------
    >>> forward_batches(lambda batch, dev: [2 * v for v in batch], [1, 2, 3], 2, device="cpu")
    [2, 4, 6]
    """
    if batch_size < 1:
        raise ValueError(f"batch size ({batch_size}) must be at least 1")
    n = len(inputs)
    out: list[Any] = []
    size = batch_size
    while len(out) < n:
        start = len(out)
        oom = False
        try:
            results = list(run(inputs[start : start + size], device))
        except Exception as err:  # only out-of-memory errors are handled; others re-raise
            if not is_out_of_memory(err):
                raise
            if size == 1 and not (move_to_cpu and device.startswith("cuda")):
                raise
            oom = True
        if not oom:
            _check_count(results, min(size, n - start))
            out.extend(results)
            continue
        # Outside the except block: the error's traceback, and the tensors its frames hold, are
        # released before the cache is emptied.
        _empty_cache()
        if size > 1:
            _degrade("out of GPU memory on %s with a batch of %d: retrying with batches of %d",
                     device, size, size // 2)
            size //= 2
            continue
        _degrade("out of GPU memory on %s with one item per batch: running this chunk's %d "
                 "items on the CPU", device, n)
        return _on_cpu(run, inputs, batch_size)
    return out


def _check_count(results: Sequence[Any], expected: int) -> None:
    if len(results) != expected:
        raise RuntimeError(f"forward pass returned {len(results)} results for {expected} items")


def _on_cpu(
    run: Callable[[Any, str], Sequence[Any]], inputs: Sequence[Any] | np.ndarray, batch_size: int
) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(inputs), batch_size):
        results = list(run(inputs[start : start + batch_size], "cpu"))
        _check_count(results, min(batch_size, len(inputs) - start))
        out.extend(results)
    return out
