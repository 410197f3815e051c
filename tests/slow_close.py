"""A worker that is slow to close, as on a loaded machine (a Dask worker preload for the tests).

As ``DASK_DISTRIBUTED__WORKER__PRELOAD='["…/slow_close.py"]'``, its ``dask_teardown`` makes every
worker's close take ``SXTDASK_TEST_CLOSE_DELAY`` seconds and then leave one file in the folder
``SXTDASK_TEST_CLOSED``: a worker killed before its close ended leaves none. Importing the
module changes nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def dask_setup(worker) -> None:
    """Nothing to set up."""


def dask_teardown(worker) -> None:
    time.sleep(float(os.environ.get("SXTDASK_TEST_CLOSE_DELAY", "0")))
    folder = os.environ.get("SXTDASK_TEST_CLOSED")
    if folder:
        (Path(folder) / uuid.uuid4().hex).touch()
