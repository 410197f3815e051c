"""Per-process model cache: a model is built once per worker, never once per chunk.

``cached_model(key, build)`` returns the object built for ``key`` in this process, building it on
first use. Dask workers are processes (or threads of one), so the count of builds per worker is the
number of distinct keys, whatever the number of chunks; ``load_counts()`` reports it (the run report
collects it from every worker).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["cached_model", "clear_models", "load_counts"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_models: dict[Hashable, Any] = {}
_loads: Counter[str] = Counter()


def cached_model(key: Hashable, build: Callable[[], Any]) -> Any:
    """The object built by ``build()`` for ``key`` in this process (built at most once)."""
    with _lock:
        if key not in _models:
            logger.info("loading model %s", key)
            _models[key] = build()
            _loads[str(key)] += 1
        return _models[key]


def load_counts() -> dict[str, int]:
    """How many times each model was built in this process."""
    with _lock:
        return dict(_loads)


def clear_models() -> None:
    """Free every cached model in this process (the counts stay)."""
    with _lock:
        _models.clear()
