"""A sweep on a real two-node Ray cluster, as on a multi-machine cluster but on one machine: a head and a worker made
by `ray start` (one CPU each, so that two trials cannot share a node), a real `mlflow server`, and the unchanged smoke
sweep joining the cluster with --ray-address. Every trial ends FINISHED in that server, the trials ran on both nodes,
and every process the test started listens on loopback only and is gone after teardown.

And a sweep pointed at a store or storage it cannot use fails in one line, before it joins any cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers_testkit import (
    LOOPBACK,
    MlflowServer,
    descendants,
    free_port,
    kill_and_wait,
    listening_sockets,
    processes_with_env,
    stop_group,
)

from dmh.sweep.ray_session import reachable
from dmh.vocabulary import Tag

REPO = Path(__file__).resolve().parent.parent
RAY_CLI = str(Path(sys.executable).with_name("ray"))
SWEEP = str(REPO / "sweeps" / "c_sensitivity.py")
MARKER = "DMH_TEST_PROCESSES"  # in the environment of every process this module starts, and so of all they start

# Waits for two alive nodes in the cluster at argv[1] and prints their node ids (a client, like the sweep's driver).
ALIVE_NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while True:
    alive = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(alive))
"""


# `ray start` for a worker node on the head's machine. Ray's CLI refuses a worker node where
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps Ray on 127.0.0.1), and without that setting it would turn the head's
# address 127.0.0.1 into this machine's external address, where nothing listens. This runs the same CLI with just those
# two single-machine behaviours lifted, in the CLI's process only: the node's processes inherit the setting.
WORKER_START = """
import sys
from ray._private import ray_constants, services
from ray.scripts.scripts import main

ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
sys.argv = ["ray", "start", *sys.argv[1:]]
sys.exit(main())
"""


def cluster_env(marker: str, ray_tmp: Path, data_dir: Path) -> dict[str, str]:
    """What the Ray CLI and the sweep need here: loopback only, no usage stats, token authentication with a token of
    this test's own (not ~/.ray/auth_token), Ray's files under ``ray_tmp`` instead of /tmp/ray."""
    env = {**os.environ, MARKER: marker, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
           "RAY_TMPDIR": str(ray_tmp), "MLFLOW_DISABLE_TELEMETRY": "true", "DMH_DATA_DIR": str(data_dir)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def short_temp_dir() -> Path:
    """A folder for Ray's files with a short path: Ray's Unix sockets live below it (about 70 more characters), and
    a socket path longer than 107 characters fails; pytest's tmp_path is too long for that."""
    return Path(tempfile.mkdtemp(prefix="dmh-ray-"))


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start --block ...` (for a worker node: :data:`WORKER_START`) in its own session: the process group holds
    the node's processes, and SIGTERM to `ray start` makes it stop what it started."""
    cli = [RAY_CLI, "start"] if "--head" in args else [sys.executable, "-c", WORKER_START]
    with log.open("w") as handle:
        return subprocess.Popen([*cli, "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}", *args],
                                env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, what: str, nodes: list[subprocess.Popen], logs: list[Path], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for node, log in zip(nodes, logs, strict=True):
            assert node.poll() is None, f"{log.name} exited:\n{log.read_text()[-3000:]}"
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout_s} s:\n" + "\n".join(log.read_text()[-2000:] for log in logs))
        time.sleep(0.3)


def trial_and_parent_runs(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id], max_results=1000)
    return ([r for r in runs if Tag.SWEEP_PARENT not in r.data.tags],
            [r for r in runs if r.data.tags.get(Tag.SWEEP_PARENT) == "true"])


@pytest.mark.slow
def test_smoke_sweep_runs_trials_on_both_nodes_of_a_two_node_cluster(tmp_path, tmp_path_factory, monkeypatch):
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)  # the MLflow server inherits it too
    ray_tmp = short_temp_dir()
    env = cluster_env(marker, ray_tmp, tmp_path_factory.getbasetemp() / "sweep-data")
    server = MlflowServer(tmp_path / "mlflow")
    server.folder.mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = [tmp_path / "head.log", tmp_path / "worker.log"]
    nodes: list[subprocess.Popen] = []
    try:
        server.start()
        nodes.append(start_node(["--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                                 f"--dashboard-port={free_port()}"],
                                env, logs[0]))
        wait_for(lambda: reachable(address, timeout=1), "the head's GCS does not answer", nodes, logs[:1])
        nodes.append(start_node([f"--address={address}"], env, logs[1]))
        alive = subprocess.run([sys.executable, "-c", ALIVE_NODES, address], env=env, capture_output=True, text=True,
                               timeout=150)
        assert alive.returncode == 0, alive.stderr[-3000:]
        node_ids = set(json.loads(alive.stdout.splitlines()[-1]))
        assert len(node_ids) == 2, (node_ids, [log.read_text()[-2000:] for log in logs])
        server.wait_healthy()

        sweep = subprocess.run([sys.executable, SWEEP, "--preset", "smoke", "--ray-address", address,
                                "--tracking-uri", server.uri, "--storage", str(tmp_path / "storage"),
                                "--max-concurrent", "2"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                               start_new_session=True)
        assert sweep.returncode == 0, sweep.stderr[-5000:]

        trials, parents = trial_and_parent_runs(server.uri, "c_sensitivity")
        assert sorted(r.data.params["c"] for r in trials) == ["1", "5"]
        assert {r.info.status for r in trials} == {"FINISHED"}
        assert [r.info.status for r in parents] == ["FINISHED"]
        assert {r.data.tags[Tag.RAY_CLUSTER] for r in trials} == {address}
        assert {r.data.tags[Tag.RAY_NODE] for r in trials} == node_ids  # one trial on each node

        # Everything the test started, and what those processes started (Ray's daemons, its workers), while the
        # cluster still runs: at least both GCS and raylets listen, and nothing beyond loopback.
        started = descendants(*(p.pid for p in nodes), server.proc.pid) | processes_with_env(MARKER, marker)
        sockets = listening_sockets(started - {os.getpid()})
        names = {name for name, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert {ip for _, ip in sockets} <= LOOPBACK, sockets
    finally:
        for node in reversed(nodes):
            # `ray start --block` stops the processes it started, then exits: within a second or two, when it
            # alone gets the signal (to its whole group at once, the node waits 30 s to drain through a dead raylet).
            stop_group(node, timeout_s=40, leader_only=True)
        server.stop()
        left = processes_with_env(MARKER, marker) - {os.getpid()}
        survivors = kill_and_wait(left)  # so that nothing outlives the test, even when the assertion below fails
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"still running after their process groups were stopped: {sorted(left)} ({survivors})"


@pytest.mark.parametrize("bad", ["tracking server", "storage"])
def test_a_cluster_sweep_with_an_unusable_tracking_server_or_storage_fails_in_one_line_before_joining(tmp_path, bad):
    """The cluster's address is given, but nothing is joined (nor started): the store and the storage are checked
    first. Here the cluster address itself is closed too, so joining would hang, then fail with a traceback."""
    (tmp_path / "a-file").write_text("not a folder")
    ray_tmp = tmp_path / "ray-tmp"
    ray_tmp.mkdir()
    closed = free_port()
    uri, storage, message = {
        "tracking server": (f"http://127.0.0.1:{closed}", str(tmp_path / "storage"),
                            f"MLflow tracking server http://127.0.0.1:{closed} cannot be reached"),
        "storage": (f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "a-file" / "storage"),
                    f"--storage {tmp_path / 'a-file' / 'storage'} cannot be written: Not a directory"),
    }[bad]
    env = cluster_env(uuid.uuid4().hex, ray_tmp, tmp_path / "data")
    started = time.monotonic()
    sweep = subprocess.run([sys.executable, SWEEP, "--preset", "smoke", "--ray-address", f"127.0.0.1:{free_port()}",
                            "--tracking-uri", uri, "--storage", storage],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert sweep.returncode == 2, sweep.stderr[-3000:]
    lines = sweep.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("c_sensitivity: error: ") and message in lines[0], sweep.stderr
    assert sweep.stdout == ""
    assert elapsed < 30, elapsed  # the store check gives up after 10 s; a refused connection takes no time at all
    assert list(ray_tmp.iterdir()) == []  # nor did the sweep start Ray in its own process
