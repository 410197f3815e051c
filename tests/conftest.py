"""Shared fixtures: small phantoms, the test data folder (tests/data), a local Dask client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Small public files the tests read (tests/data/README.md names their sources and licences).
FIXTURES = Path(__file__).resolve().parent / "data"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the long end-to-end tests marked slow (or SXTDASK_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or os.environ.get("SXTDASK_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (or SXTDASK_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def small_phantom():
    """A 48×96×96 phantom (seed 3), made once per session."""
    from sxtdask.phantoms import make_phantom

    return make_phantom((48, 96, 96), seed=3)


@pytest.fixture(scope="module")
def client():
    """A two-process local cluster (no dashboard) for tests that need real workers."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", memory_limit="2GiB") as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="session")
def unet3d_checkpoint(tmp_path_factory):
    """A tiny Biomedisa 3-D U-Net as an sxtdask checkpoint (labels 0, 5, 9 named exterior,
    cytoplasm, nucleus; 48³ grid, 32³ patches): ``tests/segment3d_helpers.py``.
    """
    pytest.importorskip("torch")
    from segment3d_helpers import make_unet3d_checkpoint

    return make_unet3d_checkpoint(tmp_path_factory.mktemp("unet3d") / "unet3d.pt")


@pytest.fixture(scope="session")
def cascade_checkpoint(tmp_path_factory):
    """A tiny NCXT cascade checkpoint (8³ tiles, stage 1 binned ×2, halo 8):
    ``tests/segment3d_helpers.py``.
    """
    pytest.importorskip("torch")
    from segment3d_helpers import make_cascade_checkpoint

    return make_cascade_checkpoint(tmp_path_factory.mktemp("cascade") / "cascade.pt")
