"""The per-worker model cache: a network is built once per worker, never once per chunk.

:class:`ModelCache` is a ``distributed`` ``WorkerPlugin``: registered on a client
(:func:`register_model_cache`, which the pipeline does before it computes), every worker gets one
in ``setup`` and frees its networks in ``teardown`` (when the worker closes or the plugin is
unregistered). Code running in a task asks :func:`cached_model` for a network; it uses the
plugin of the worker it runs on, or, outside a worker (the synchronous scheduler, a notebook),
one cache of the process. ``load_counts()`` tells how often each network was built (the run
report collects it from every worker).

:func:`cached_network` is the key every checkpoint-backed network uses: kind, file path, the
file's modification time and size (a rewritten checkpoint is loaded afresh) and the resolved
device.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ._device import resolve_device

__all__ = [
    "MODEL_CACHE_PLUGIN",
    "ModelCache",
    "cached_model",
    "cached_network",
    "clear_models",
    "load_counts",
    "register_model_cache",
]

logger = logging.getLogger(__name__)

#: The name the plugin is registered under on every worker.
MODEL_CACHE_PLUGIN = "sxtdask-model-cache"


class ModelCache(WorkerPlugin):
    """Networks built on one worker (or in one process), keyed by what identifies them."""

    name = MODEL_CACHE_PLUGIN

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[Hashable, Any] = {}
        self._loads: Counter[str] = Counter()

    def setup(self, worker: Any) -> None:
        logger.debug("model cache ready on %s", getattr(worker, "address", worker))

    def teardown(self, worker: Any) -> None:
        self.clear()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The object ``build()`` made for ``key`` here (built at most once)."""
        with self._lock:
            if key not in self._models:
                logger.info("loading model %s", key)
                self._models[key] = build()
                self._loads[str(key)] += 1
            return self._models[key]

    def loads(self) -> dict[str, int]:
        with self._lock:
            return dict(self._loads)

    def clear(self) -> None:
        """Free every network (the counts stay)."""
        with self._lock:
            self._models.clear()

    def __getstate__(self) -> dict[str, Any]:  # sent to workers empty
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self)


_process_cache = ModelCache()


def _current() -> ModelCache:
    """The plugin of the worker running this task, else the process's own cache."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not in a worker task
        return _process_cache
    plugin = worker.plugins.get(MODEL_CACHE_PLUGIN)
    return plugin if isinstance(plugin, ModelCache) else _process_cache


def register_model_cache(client: Any) -> None:
    """Give every worker of ``client`` (and every worker that joins later) a :class:`ModelCache`.

    Registering again keeps the caches the workers already have.
    """
    have = client.run(_has_plugin)
    if not have or not all(have.values()):
        client.register_plugin(ModelCache(), name=MODEL_CACHE_PLUGIN)


def _has_plugin(dask_worker: Any = None) -> bool:
    return isinstance(getattr(dask_worker, "plugins", {}).get(MODEL_CACHE_PLUGIN), ModelCache)


def cached_model(key: Hashable, build: Callable[[], Any]) -> Any:
    """The object built by ``build()`` for ``key`` on this worker (built at most once)."""
    return _current().get(key, build)


def cached_network(kind: tuple[Any, ...], path: str | os.PathLike[str], device: str,
                   build: Callable[[str], Any]) -> Any:
    """The network ``build(resolved_device)`` makes from the checkpoint at ``path``, once per worker.

    The key holds the file's modification time and size, so a rewritten checkpoint is loaded
    afresh, and the device resolved here (``auto`` becomes ``cuda`` or ``cpu``).
    """
    resolved = resolve_device(device)
    st = os.stat(path)
    key = (*kind, os.fspath(path), st.st_mtime_ns, st.st_size, resolved)
    return cached_model(key, lambda: build(resolved))


def _cache_of(dask_worker: Any) -> ModelCache:
    if dask_worker is None:
        return _current()
    plugin = getattr(dask_worker, "plugins", {}).get(MODEL_CACHE_PLUGIN)
    return plugin if isinstance(plugin, ModelCache) else _process_cache


def load_counts(dask_worker: Any = None) -> dict[str, int]:
    """How many times each model was built on this worker (or in this process).

    ``client.run(load_counts)`` passes each worker as ``dask_worker``.
    """
    return _cache_of(dask_worker).loads()


def clear_models(dask_worker: Any = None) -> None:
    """Free every cached model on this worker (or in this process); the counts stay."""
    _cache_of(dask_worker).clear()
