"""sxtdask against real Dask clusters, and the deployment recipes in ``cluster/``.

A scheduler and two workers run as separate processes (``dask scheduler``, ``dask worker``) on
127.0.0.1, over plain TCP and over TLS; ``sxtdask segment --scheduler ...`` runs against them in a
subprocess from another working folder than the workers', and its labels must equal a local run's.
The recipe files are loaded the way dask-jobqueue, the dask-kubernetes operator and distributed
read them, and their worker and scheduler arguments are parsed by distributed's own command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import pytest
import yaml
from signals_helpers import sigint_default

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "cluster"
ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
# distributed's sampling profiler sometimes prints an unrelated traceback from a worker (see
# test_cli.py); the workers' output is only read when a test fails.
ENV["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
ENV.pop("PYTHONWARNINGS", None)
for _name in list(ENV):
    if _name.startswith("DASK_DISTRIBUTED__COMM__"):
        ENV.pop(_name)  # the TLS tests set exactly what they test

SHAPE = (48, 64, 64)
CHUNKS = (8, 64, 64)  # six chunks: instances cross chunk faces, both workers get blocks


def _dask(*args: object) -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "dask"]
    return [*cmd, *(str(a) for a in args)]


def sxtdask(*args: object, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "sxtdask.cli", *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env or ENV,
                          timeout=timeout, check=False)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


# --------------------------------------------------------------------------- data and reference


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom as OME-Zarr with six 8-slice chunks."""
    from sxtdask.io import open_volume, write_image
    from sxtdask.phantoms import write_phantom

    d = tmp_path_factory.mktemp("store")
    mrc, _ = write_phantom(d / "cell.mrc", shape=SHAPE, seed=1)
    with open_volume(mrc) as vol:
        return write_image(vol, d / "cell.zarr", chunks=CHUNKS)


@pytest.fixture(scope="module")
def reference(store: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The labels of an in-process run (Dask's synchronous scheduler) on a copy of the store."""
    from sxtdask.engine import segment_store
    from sxtdask.io import open_image, open_labels
    from sxtdask.segmenters import ClassicalISG
    from sxtdask.stats import global_stats

    copy = tmp_path_factory.mktemp("reference") / "cell.zarr"
    shutil.copytree(store, copy)
    with dask.config.set(scheduler="synchronous"):
        stats = global_stats(open_image(copy).data).compute()
        run = segment_store(copy, ClassicalISG(), stats)
        run.graph.compute()
        run.finish()
        labels = np.asarray(open_labels(copy, "isg"))
    assert labels.max() >= 3, "the phantom should hold several granules"
    return labels


def _run_dir(tmp_path: Path, store: Path) -> Path:
    """A working folder for one sxtdask run holding its own copy of the store as ``cell.zarr``."""
    shutil.copytree(store, tmp_path / "cell.zarr")
    return tmp_path


def _labels(path: Path) -> np.ndarray:
    from sxtdask.io import open_labels

    return np.asarray(open_labels(path, "isg"))


# --------------------------------------------------------------------------- real clusters


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group we started (workers first), then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))


@contextmanager
def dask_cluster(folder: Path, certs: Path | None = None, n_workers: int = 2) -> Iterator[str]:
    """``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1; the address.

    ``certs``: a folder of TLS files (see ``certificates``) for a ``tls://`` cluster. The workers
    run in their own folder, so relative paths from the client would not resolve there.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workers").mkdir(exist_ok=True)
    sched_file = folder / "scheduler.json"
    tls_args = ["--protocol", "tls", *_tls_args(certs, "scheduler")] if certs else []
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str, cwd: Path) -> None:
        with open(folder / log, "wb") as out:
            procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                          env=ENV, start_new_session=True))

    try:
        start(_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
                    sched_file, "--dashboard-address", "127.0.0.1:0", *tls_args),
              "scheduler.log", folder)
        address = _wait_for_address(sched_file, procs[0], folder)
        for i in range(n_workers):
            start(_dask("worker", address, "--nworkers", "1", "--nthreads", "1", "--memory-limit",
                        "2GiB", "--no-dashboard", *(_tls_args(certs, "worker") if certs else [])),
                  f"worker{i}.log", folder / "workers")
        _wait_for_workers(address, n_workers, certs, folder)
        yield address
    finally:
        _stop(procs[1:] + procs[:1])


def _wait_for_address(sched_file: Path, proc: subprocess.Popen[bytes], folder: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dask scheduler exited ({proc.returncode})\n{_logs(folder)}")
        if sched_file.is_file():
            try:
                return str(json.loads(sched_file.read_text())["address"])
            except (ValueError, KeyError):
                pass  # being written
        time.sleep(0.2)
    pytest.fail(f"dask scheduler did not start in 60 s\n{_logs(folder)}")


def _tls_args(certs: Path, role: str) -> list[str]:
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{role}.pem"),
            "--tls-key", str(certs / f"{role}-key.pem")]


def _security(certs: Path | None) -> Any:
    """The test's own client settings (sxtdask gets its own through options or env)."""
    if certs is None:
        return None
    from distributed.security import Security

    return Security(tls_ca_file=str(certs / "ca.pem"), tls_client_cert=str(certs / "client.pem"),
                    tls_client_key=str(certs / "client-key.pem"), require_encryption=True)


def _wait_for_workers(address: str, n: int, certs: Path | None, folder: Path) -> None:
    from distributed import Client

    with Client(address, security=_security(certs), timeout="30s") as client:
        try:
            client.wait_for_workers(n, timeout=90)
        except TimeoutError:
            pytest.fail(f"{n} workers did not connect in 90 s\n{_logs(folder)}")


def _scheduler_spans(address: str, certs: Path | None) -> dict[str, list[str]]:
    """Span name → names of the task groups that ran in it, from the scheduler."""
    from distributed import Client

    def spans(dask_scheduler: Any) -> dict[str, list[str]]:
        ext = dask_scheduler.extensions["spans"]
        return {" / ".join(s.name): sorted(g.name for g in s.traverse_groups())
                for s in ext.spans.values()}

    with Client(address, security=_security(certs), timeout="30s") as client:
        return client.run_on_scheduler(spans)


def _check_run(proc: subprocess.CompletedProcess[str], run_dir: Path,
               reference: np.ndarray) -> dict[str, Any]:
    assert proc.returncode == 0, describe(proc)
    np.testing.assert_array_equal(_labels(run_dir / "cell.zarr"), reference)
    report = json.loads((run_dir / "r.json").read_text())
    assert report["workers"] == 2, report
    assert len(report["model_loads_per_worker"]) == 2, report
    return report


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dask_cluster(tmp_path_factory.mktemp("tcp")) as address:
        yield address


def test_segment_on_a_scheduler_and_two_worker_processes(
    tcp_cluster: str, store: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    run_dir = _run_dir(tmp_path, store)
    proc = sxtdask("segment", "cell.zarr", "--task", "isg-instances", "--method", "classical",
                   "--scheduler", tcp_cluster, "--report", "r.json", cwd=run_dir)
    report = _check_run(proc, run_dir, reference)
    assert report["instance_count"]["isg"] == int(reference.max())
    # The dashboard printed is the scheduler's, on this machine only.
    assert report["dashboard"].startswith("http://127.0.0.1:"), report["dashboard"]
    assert f"dashboard: {report['dashboard']}" in proc.stdout, describe(proc)
    # The run is one span on the scheduler, and the segment tasks ran inside it.
    spans = _scheduler_spans(tcp_cluster, None)
    assert "segment cell.zarr" in spans, spans
    assert any("segment" in g for g in spans["segment cell.zarr"]), spans


def test_two_runs_on_one_scheduler_do_not_disturb_each_other(
    tcp_cluster: str, store: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    """Two clients segment two stores on the same scheduler at once; one is interrupted
    (SIGINT) mid-run: the other still gets the reference labels (its task keys, span and
    scratch are its own), and the interrupted one's rerun gets them too.
    """
    dirs = [_run_dir(tmp_path / name, store) for name in ("a", "b")]
    cmd = [sys.executable, "-m", "sxtdask.cli", "segment", "cell.zarr", "--task", "isg-instances",
           "--method", "classical", "--chunks", "8,32,32", "--scheduler", tcp_cluster,
           "--report", "r.json"]
    procs = [subprocess.Popen(cmd, cwd=d, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
             for d in dirs]
    try:
        assert procs[0].stdout is not None
        for line in procs[0].stdout:  # interrupt run a once it is connected and working
            if line.startswith("dashboard:"):
                time.sleep(0.5)
                procs[0].send_signal(signal.SIGINT)
                break
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes[1] == 0, procs[1].stderr.read() if procs[1].stderr else ""
    assert codes[0] == 130, procs[0].stderr.read() if procs[0].stderr else ""
    np.testing.assert_array_equal(_labels(dirs[1] / "cell.zarr"), reference)
    rerun = sxtdask(*cmd[3:], cwd=dirs[0])
    _check_run(rerun, dirs[0], reference)


# --------------------------------------------------------------------------- TLS


_OPENSSL_RECIPE = """
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sxtdask-ca -keyout ca-key.pem -out ca.pem
for role in scheduler worker client; do
  openssl req -newkey rsa:2048 -nodes -subj /CN=sxtdask-$role -keyout $role-key.pem -out $role.csr
  openssl x509 -req -in $role.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -out $role.pem
done
chmod 600 *-key.pem
"""


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a certificate per role signed by it, made with cluster/README.md's openssl recipe."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    d = tmp_path_factory.mktemp("tls")
    proc = subprocess.run(["bash", "-euc", _OPENSSL_RECIPE], cwd=d, capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, describe(proc)
    return d


@pytest.fixture(scope="module")
def tls_cluster(certificates: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dask_cluster(tmp_path_factory.mktemp("tlscluster"), certs=certificates) as address:
        yield address


def test_segment_over_tls_with_options(tls_cluster: str, certificates: Path, store: Path,
                                       reference: np.ndarray, tmp_path: Path) -> None:
    assert tls_cluster.startswith("tls://")
    run_dir = _run_dir(tmp_path, store)
    proc = sxtdask("segment", "cell.zarr", "--task", "isg-instances", "--method", "classical",
                   "--scheduler", tls_cluster, *_tls_args(certificates, "client"),
                   "--report", "r.json", cwd=run_dir)
    _check_run(proc, run_dir, reference)


def test_segment_over_tls_with_dask_config_env(tls_cluster: str, certificates: Path, store: Path,
                                               reference: np.ndarray, tmp_path: Path) -> None:
    env = dict(ENV)
    env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] = str(certificates / "ca.pem")
    env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] = str(certificates / "client.pem")
    env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] = str(certificates / "client-key.pem")
    run_dir = _run_dir(tmp_path, store)
    proc = sxtdask("segment", "cell.zarr", "--task", "isg-instances", "--method", "classical",
                   "--scheduler", tls_cluster, "--report", "r.json", cwd=run_dir, env=env)
    _check_run(proc, run_dir, reference)


def test_tcp_client_is_refused_by_a_tls_scheduler(tls_cluster: str, store: Path,
                                                  tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, store)
    plain = tls_cluster.replace("tls://", "tcp://")
    proc = sxtdask("segment", "cell.zarr", "--task", "isg-instances", "--method", "classical",
                   "--scheduler", plain, cwd=run_dir)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.startswith(f"sxtdask: error: cannot reach the scheduler at {plain}")
    assert len(proc.stderr.strip().splitlines()) == 1, describe(proc)


@pytest.mark.parametrize(("scheduler", "files", "words"), [
    pytest.param("tls://127.0.0.1:9", {}, ("tls://127.0.0.1:9", "--tls-ca-file"),
                 id="tls-address-without-certificates"),
    pytest.param("tcp://127.0.0.1:9", {"tls_ca_file": "ca.pem", "tls_cert": "c.pem"},
                 ("tls://", "tcp://127.0.0.1:9"), id="certificates-without-tls-address"),
    pytest.param(None, {"tls_ca_file": "ca.pem", "tls_cert": "c.pem"},
                 ("tls://", "local cluster"), id="certificates-for-a-local-cluster"),
    pytest.param("tls://127.0.0.1:9", {"tls_ca_file": "ca.pem"}, ("--tls-cert",),
                 id="ca-without-certificate"),
    pytest.param("tls://127.0.0.1:9", {"tls_ca_file": "missing.pem", "tls_cert": "c.pem"},
                 ("missing.pem", "not found"), id="missing-file"),
])
def test_tls_misconfiguration_is_refused_before_connecting(
    scheduler: str | None, files: dict[str, str], words: tuple[str, ...], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sxtdask.engine import ClusterConfig, connect
    from sxtdask.errors import SxtdaskError

    monkeypatch.chdir(tmp_path)
    for name in ("ca.pem", "c.pem"):
        (tmp_path / name).write_text("never read: the settings are refused first\n")
    with pytest.raises(SxtdaskError) as err, connect(ClusterConfig(scheduler=scheduler, **files)):
        pass
    assert all(w in str(err.value) for w in words), str(err.value)


def test_tls_misconfiguration_is_one_line_in_the_cli(store: Path, tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, store)
    proc = sxtdask("segment", "cell.zarr", "--task", "isg-instances", "--method", "classical",
                   "--scheduler", "tls://127.0.0.1:9", cwd=run_dir)
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sxtdask: error: tls://127.0.0.1:9 needs TLS"), \
        describe(proc)
    assert not (run_dir / "cell.zarr" / "labels" / "isg").exists()


@pytest.mark.parametrize(("address", "warned"), [
    pytest.param("tcp://203.0.113.7:8786", True, id="remote-tcp"),
    pytest.param("203.0.113.7:8786", True, id="remote-bare-host-port"),
    pytest.param("tcp://scheduler.example.org:8786", True, id="remote-name"),
    pytest.param("tcp://[2001:db8::7]:8786", True, id="remote-ipv6"),
    pytest.param("ws://203.0.113.7:8786", True, id="remote-websocket"),
    pytest.param("tls://203.0.113.7:8786", False, id="remote-tls"),
    pytest.param("tcp://localhost:8786", False, id="localhost"),
    pytest.param("tcp://127.0.0.5:8786", False, id="loopback-127"),
    pytest.param("[::1]:8786", False, id="loopback-ipv6"),
    pytest.param("127.0.0.1:8786", False, id="bare-loopback"),
])
def test_plain_tcp_to_a_remote_scheduler_warns(address: str, warned: bool,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from sxtdask.engine._cluster import warn_if_plain_tcp

    with caplog.at_level("WARNING", logger="sxtdask.engine._cluster"):
        assert warn_if_plain_tcp(address) is warned
    records = [r for r in caplog.records if r.name == "sxtdask.engine._cluster"]
    assert len(records) == int(warned)
    if warned:
        message = records[0].getMessage()
        assert "\n" not in message and address in message and "tls://" in message
        assert "distributed.comm.tls" in message and "unencrypted" in message


def test_local_interface_address_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    import psutil

    from sxtdask.engine._cluster import warn_if_plain_tcp

    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family.name == "AF_INET"]
    for ip in own:
        assert not warn_if_plain_tcp(f"tcp://{ip}:8786"), ip
    assert not caplog.records


def test_connect_checks_the_address_before_connecting(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """``connect`` warns about a remote TCP scheduler, then connects (here: a stub that fails)."""
    import sxtdask.engine._cluster as cluster
    from sxtdask.errors import SxtdaskError

    calls: list[str] = []
    real = cluster.warn_if_plain_tcp

    def checked(address: str) -> bool:
        calls.append(f"check {address}")
        return real(address)

    def client(address: str, **kwargs: Any) -> None:
        calls.append(f"connect {address}")
        raise OSError("stub: no network in tests")

    monkeypatch.setattr(cluster, "warn_if_plain_tcp", checked)
    monkeypatch.setattr(cluster, "Client", client)
    address = "tcp://203.0.113.7:8786"
    with caplog.at_level("WARNING", logger="sxtdask.engine._cluster"):
        with pytest.raises(SxtdaskError, match="cannot reach the scheduler"), \
                cluster.connect(cluster.ClusterConfig(scheduler=address)):
            pass
    assert calls == [f"check {address}", f"connect {address}"]
    assert any("plain TCP" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- recipe files


def _yaml(name: str) -> Any:
    return yaml.safe_load((RECIPES / name).read_text())


# The keys dask-jobqueue 0.9 reads for these systems (its jobqueue.yaml); a misspelt key in a
# recipe would be silently ignored by dask-jobqueue, so the test refuses unknown ones.
_JOBQUEUE_COMMON = {
    "name", "cores", "memory", "processes", "python", "interface", "death-timeout",
    "local-directory", "shared-temp-directory", "extra", "worker-command", "worker-extra-args",
    "shebang", "queue", "account", "walltime", "env-extra", "job-script-prologue", "job-extra",
    "job-extra-directives", "job-directives-skip", "log-directory", "scheduler-options",
}
_JOBQUEUE_KEYS = {"slurm": _JOBQUEUE_COMMON | {"job-cpu", "job-mem"},
                  "pbs": _JOBQUEUE_COMMON | {"resource-spec"}}


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (``dask.config.set`` merges dotted keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _worker_cli_params(args: list[str]) -> dict[str, Any]:
    """Parse ``dask worker`` arguments with distributed's own command line (nothing runs)."""
    from distributed.cli.dask_worker import main as worker_main

    ctx = worker_main.make_context("dask-worker", list(args))
    assert not ctx.params["preload_argv"], f"dask worker does not know {ctx.params['preload_argv']}"
    return ctx.params


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_jobqueue_recipe_loads_into_dask_config(system: str) -> None:
    cfg = _yaml(f"{system}.yaml")
    merged = dask.config.update({}, cfg)
    section = dask.config.get(f"jobqueue.{system}", config=merged)
    unknown = set(section) - _JOBQUEUE_KEYS[system]
    assert not unknown, f"{system}.yaml: keys dask-jobqueue does not read: {unknown}"
    assert int(section["cores"]) > 0 and int(section["processes"]) == 1
    assert dask.utils.parse_bytes(section["memory"]) >= 2**30
    # One GPU per job, and the worker advertises the resource sxtdask's inference tasks ask for.
    params = _worker_cli_params(list(section["worker-extra-args"]))
    assert params["resources"] == "GPU=1"
    gpu_request = (" ".join(section["job-extra-directives"]) if system == "slurm"
                   else section["resource-spec"])
    assert ("--gres=gpu:1" if system == "slurm" else "ngpus=1") in gpu_request


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_jobqueue_recipe_job_script(system: str, tmp_path: Path) -> None:
    """The job script dask-jobqueue writes from the recipe asks for a GPU and starts a GPU worker."""
    jq = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (sxtdask[cluster]) not installed")
    cls = jq.SLURMCluster if system == "slurm" else jq.PBSCluster
    section = _yaml(f"{system}.yaml")["jobqueue"][system]
    settings = {f"jobqueue.{system}.{key}": value for key, value in section.items()}
    settings[f"jobqueue.{system}.log-directory"] = str(tmp_path / "logs")
    with dask.config.set(settings), cls() as cluster:
        script = cluster.job_script()
    assert ("#SBATCH --gres=gpu:1" if system == "slurm" else "ngpus=1") in script, script
    assert "--resources GPU=1" in script, script


def test_kubernetes_recipe_is_an_operator_daskcluster_with_gpu_workers() -> None:
    doc = _yaml("kubernetes/daskcluster.yaml")
    assert doc["apiVersion"] == "kubernetes.dask.org/v1" and doc["kind"] == "DaskCluster"
    name = doc["metadata"]["name"]
    spec = doc["spec"]
    # The operator's schema requires scheduler.spec, scheduler.service and worker.spec.
    scheduler, worker = spec["scheduler"], spec["worker"]
    service = scheduler["service"]
    assert service["selector"] == {"dask.org/cluster-name": name,
                                   "dask.org/component": "scheduler"}
    assert 8786 in {p["port"] for p in service["ports"]}
    (sched,) = scheduler["spec"]["containers"]
    named_ports = {p["name"] for p in sched["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= named_ports
    assert sched["args"][0] == "dask-scheduler"
    assert int(worker["replicas"]) >= 1
    (container,) = worker["spec"]["containers"]
    assert container["args"][0] == "dask-worker"
    params = _worker_cli_params(container["args"][1:])
    assert params["resources"] == "GPU=1"
    assert params["scheduler"] is None  # the operator passes DASK_SCHEDULER_ADDRESS
    for kind in ("limits", "requests"):
        assert int(container["resources"][kind]["nvidia.com/gpu"]) == 1
    # Every mounted volume is defined in the pod (the stores' shared volume in particular).
    volumes = {v["name"] for v in worker["spec"]["volumes"]}
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= volumes and "data" in mounts


def test_tls_recipe_sets_what_distributed_reads() -> None:
    from distributed.security import Security

    cfg = _yaml("tls.yaml")
    tls = cfg["distributed"]["comm"]["tls"]
    with dask.config.set(_dotted(cfg)):  # merged over distributed's defaults, as a config file is
        sec = Security()
    assert sec.require_encryption is True
    assert sec.tls_ca_file == tls["ca-file"]
    for role in ("scheduler", "worker", "client"):
        assert getattr(sec, f"tls_{role}_cert") == tls[role]["cert"]
        assert getattr(sec, f"tls_{role}_key") == tls[role]["key"]


@pytest.mark.parametrize("configured", [None, "1048576"], ids=["dask-default", "user-set"])
def test_local_workers_keep_glibc_malloc_unless_the_user_set_a_threshold(
        configured: str | None) -> None:
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 (1.7x slower cascade here) is replaced by glibc's own
    grown limits in sxtdask's local workers, even when an earlier Dask cluster of this process
    left Dask's value in os.environ; a threshold the user configured reaches them unchanged.
    """
    from sxtdask.engine import ClusterConfig, connect
    from sxtdask.engine._cluster import MALLOC_SETTINGS

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    assert str(env.get("MALLOC_TRIM_THRESHOLD_")) == "65536"  # what Dask ships
    if configured is not None:
        env["MALLOC_TRIM_THRESHOLD_"] = configured
    want = (configured, None) if configured else (
        str(MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"]), str(MALLOC_SETTINGS["MALLOC_MMAP_THRESHOLD_"]))
    with pytest.MonkeyPatch.context() as mp:
        if configured is None:  # what an earlier Dask cluster of this process leaves here
            mp.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
        else:
            mp.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
        mp.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}), \
                connect(ClusterConfig(workers=1, threads_per_worker=1,
                                      dashboard_address=None)) as client:
            seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                       os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                                       os.environ.get("OMP_NUM_THREADS")))
        after = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    assert list(seen.values()) == [(*want, "1")]
    assert after == ("65536" if configured is None else configured)  # the nanny's, not ours
