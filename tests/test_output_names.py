"""``--name``: results of several methods side by side in one store, with stats, evaluate and
archive following the names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sxtdask.cli import main
from sxtdask.errors import ConfigError
from sxtdask.io import list_labels, open_labels
from sxtdask.phantoms import write_phantom
from sxtdask.segmenters import ClassicalISG, RenamedSegmenter, make_segmenter, rename_outputs

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
CLUSTER = ("--workers", "1", "--dashboard-address", "127.0.0.1:0")


def sxtdask(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sxtdask.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    mrc, gt = write_phantom(root / "c.mrc", shape=(24, 64, 64), seed=4, voxel_size_nm=30.0)
    proc = sxtdask("convert", mrc, "c.zarr", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root, root / "c.zarr", gt


def test_two_methods_sit_side_by_side_and_stats_evaluate_follow(store):
    root, data, gt = store
    first = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical", *CLUSTER,
                    cwd=root)
    named = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical",
                    "--name", "isg-classical", "--report", "r.json", *CLUSTER, cwd=root)
    assert first.returncode == 0 and named.returncode == 0, (first.stderr, named.stderr)
    assert {"isg", "isg-classical"} <= set(list_labels(data))
    np.testing.assert_array_equal(open_labels(data, "isg").compute(),
                                  open_labels(data, "isg-classical").compute())
    report = json.loads((root / "r.json").read_text())
    assert list(report["instance_count"]) == ["isg-classical"]
    assert "isg-classical:" in named.stdout and "instances" in named.stdout
    again = sxtdask("segment", data, "--task", "isg-instances", "--method", "classical",
                    "--name", "isg-classical", *CLUSTER, cwd=root)
    assert again.returncode == 2 and "'isg-classical' exists" in again.stderr
    table = sxtdask("stats", data, "--labels", "isg-classical", "--out", "t.csv", *CLUSTER, cwd=root)
    assert table.returncode == 0, table.stderr
    assert len(pd.read_csv(root / "t.csv")) == int(open_labels(data, "isg-classical").max().compute())
    ev = sxtdask("evaluate", data, gt, "--labels", "isg-classical=isg", "isg", "--no-coco", "--out",
                 "m.json", *CLUSTER, cwd=root)
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((root / "m.json").read_text())["labels"]
    assert metrics["isg-classical=isg"]["kind"] == "instances"
    assert metrics["isg-classical=isg"]["match_50"] == metrics["isg"]["match_50"]
    assert metrics["isg"]["gt_instances"] > 0


def test_several_tasks_take_task_equals_name(store, capsys):
    root, data, _ = store
    proc = sxtdask("segment", data, "--task", "cell,isg-instances", "--name", "cell=cell-unet",
                   "--name", "isg-instances=isg-unet", "--device", "cpu", *CLUSTER, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert {"cell-unet", "isg-unet"} <= set(list_labels(data))
    assert "isg-unet:" in proc.stdout and "labels/cell-unet" in proc.stdout
    for bad, says in ((["--name", "isg-x"], "say which task"),
                      (["--name", "mito=m"], "say which task"),
                      (["--name", "cell=a/b"], "must be 1-100 letters"),
                      (["--name", "cell=isg-instances-unused", "--name", "cell=b"], "two names")):
        # in this process (the refusal comes before any cluster or file)
        assert main(["segment", str(data), "--task", "cell,isg-instances", *bad, *CLUSTER]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1], err


def test_rename_outputs_in_python():
    seg = rename_outputs(ClassicalISG(), {"isg": "granules"})
    assert isinstance(seg, RenamedSegmenter) and [o.name for o in seg.outputs] == ["granules"]
    assert seg.describe().outputs[0].name == "granules" and seg.halo == ClassicalISG().halo
    vol = np.zeros((8, 32, 32), np.float32)
    vol[3:6, 10:14, 10:14] = 1.0
    vol += np.random.default_rng(0).normal(0, 0.01, vol.shape).astype(np.float32)
    np.testing.assert_array_equal(seg.predict(vol), ClassicalISG().predict(vol))
    assert rename_outputs(ClassicalISG(), {"isg": "isg"}) == ClassicalISG()
    both = rename_outputs(make_segmenter(["cell", "isg-instances"], device="cpu"), {"cell": "c2"})
    assert [o.name for o in both.outputs] == ["c2", "isg"]
    with pytest.raises(ConfigError, match="no output mito"):
        rename_outputs(ClassicalISG(), {"mito": "m"})
    with pytest.raises(ConfigError, match="must be 1-100 letters"):
        rename_outputs(ClassicalISG(), {"isg": "../x"})
    with pytest.raises(ConfigError, match="one name"):
        rename_outputs(make_segmenter(["cell", "isg-instances"], device="cpu"), {"cell": "isg"})


def test_archive_summary_follows_renamed_outputs(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_phantom(inputs / "a.mrc", shape=(48, 96, 96), seed=3, voxel_size_nm=30.0)
    proc = sxtdask("archive", inputs, "--out", tmp_path / "out", "--tasks", "isg-instances",
                   "--method", "classical", "--name", "isg-c", "--exclude", "*.gt.zarr", *CLUSTER,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    store = next((tmp_path / "out" / "tomograms").rglob("*.ome.zarr"))
    assert "isg-c" in list_labels(store) and "isg" not in list_labels(store)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert int(summary["isg_count"].iloc[0]) == int(open_labels(store, "isg-c").max().compute()) > 0
