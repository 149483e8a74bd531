"""`ray up` and `ray submit` of cluster/onprem.yaml, the user's own commands, run for real on this machine: Ray's
`local` provider reaches the head (127.0.0.1) over SSH and rsync, through an OpenSSH server the test starts on
127.0.0.1:22 (the local provider always uses port 22) with a key it generates, and the unchanged smoke sweep it
submits ends with every trial FINISHED in a real `mlflow server`.

What the test changes in onprem.yaml, and why (:func:`derived_config`): the head is 127.0.0.1 without workers, the
key is the test's; onprem's file mounts go to folders of the test's instead of the home folder; setup uses this
virtual environment instead of installing CUDA packages into a new one; and Ray starts on free ports, its files in a
folder of the test's. The rest is onprem.yaml's own: the provider, the file mounts (the checkout through its rsync
filter, the auth token), the explicit empty command lists, and the autoscaling config the head starts with.

Outside its temporary folders, the test writes only what `ray up` and `ray submit` write into the SSH user's home
folder: ~/.bashrc (which sources the test's environment file: the only way to hand `ray submit`'s bare `python` the
variables it needs), ~/ray_bootstrap_config.yaml, ~/ray_bootstrap_key.pem and ~/c_sensitivity.py. Each is backed up
before and restored (or removed) after.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from servers_testkit import (
    LOOPBACK,
    MlflowServer,
    descendants,
    free_port,
    kill_and_wait,
    listening_sockets,
    processes_with_env,
)

from dmh.sweep.ray_session import reachable
from dmh.vocabulary import Tag

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RAY_CLI = str(VENV_BIN / "ray")
MARKER = "DMH_TEST_CLUSTER"  # in the environment of every process the cluster's shells and `ray up` start
SSH_PORT = 22  # Ray's local provider has no setting for another port
SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if os.access(p, os.X_OK)), None)
# Files in the SSH user's home that `ray up` / `ray submit` write (or, ~/.bashrc, that the setup commands change).
HOME_FILES = (".bashrc", "ray_bootstrap_config.yaml", "ray_bootstrap_key.pem", "c_sensitivity.py")


def missing_tools() -> list[str]:
    return [name for name, path in (("sshd", SSHD), *((t, shutil.which(t)) for t in ("ssh", "ssh-keygen", "rsync")))
            if path is None]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def home_files(tmp_path):
    """Back up the files `ray up` / `ray submit` write into the home folder; restore them (or remove those that did
    not exist) afterwards. Requested after ``sshd``: port 22 stays taken from before the backup until after the
    restore, so a second run of the test at the same time skips before it touches them."""
    home, backup = Path.home(), tmp_path / "home-backup"
    backup.mkdir()
    existed = {name: (home / name).exists() for name in HOME_FILES}
    for name in HOME_FILES:
        if existed[name]:
            shutil.copy2(home / name, backup / name)
    yield home
    for name in HOME_FILES:
        if existed[name]:
            shutil.copy2(backup / name, home / name)
        else:
            (home / name).unlink(missing_ok=True)


class Sshd:
    """OpenSSH's server on 127.0.0.1:22 only, root login with the test's key only (no passwords), its host key,
    authorized keys, pid file and log in the test's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = folder / "id_ed25519"
        self.pid_file = folder / "sshd.pid"
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.made_privsep_dir = False

    def start(self) -> None:
        self.folder.mkdir(mode=0o700)
        for key in (self.key, self.folder / "host_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.folder / "authorized_keys")
        config = self.folder / "sshd_config"
        # StrictModes off: the authorized keys sit below /tmp, which is world-writable (with the sticky bit).
        config.write_text(f"""Port {SSH_PORT}
ListenAddress 127.0.0.1
HostKey {self.folder / 'host_ed25519'}
PidFile {self.pid_file}
AuthorizedKeysFile {self.folder / 'authorized_keys'}
AllowUsers {getpass.getuser()}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
""")
        privsep = Path("/run/sshd")  # sshd refuses to start without it (Debian's service makes it)
        if not privsep.exists():
            privsep.mkdir(mode=0o755, parents=True)
            self.made_privsep_dir = True
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True, capture_output=True)
        with self.log.open("w") as handle:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=handle,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not (self.pid_file.exists() and reachable(f"127.0.0.1:{SSH_PORT}", timeout=1)):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"sshd did not start:\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        """The sessions it serves, then sshd itself, by the pid in its pid file."""
        if self.proc is None:
            return
        kill_and_wait(descendants(self.proc.pid) - {self.proc.pid})
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text()), signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.made_privsep_dir:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()


@pytest.fixture
def sshd(tmp_path):
    if missing := missing_tools():
        pytest.skip(f"needs OpenSSH's server and client and rsync (missing: {', '.join(missing)}): "
                    "apt-get install -y openssh-server rsync (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to listen on port 22 and to log a user in")
    if port_in_use(SSH_PORT):
        pytest.skip(f"127.0.0.1:{SSH_PORT} is taken by a server this test did not start, and Ray's local provider "
                    f"always connects to port {SSH_PORT}")
    server = Sshd(tmp_path / "ssh")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def derived_config(*, cluster_name: str, key: Path, head_home: Path, client_home: Path, env_file: Path,
                   ray_tmp: Path, data_dir: Path, port: int) -> dict[str, Any]:
    """cluster/onprem.yaml for a head at 127.0.0.1 without workers, set up with this virtual environment."""
    config = yaml.safe_load((REPO / "cluster" / "onprem.yaml").read_text())
    config["cluster_name"] = cluster_name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(key)}
    # onprem's own mounts (the checkout through its rsync filter, the Ray token), below the test's folders.
    config["file_mounts"] = {remote.replace("~", str(head_home), 1): local.replace("~", str(client_home), 1)
                             for remote, local in config["file_mounts"].items()}
    # What onprem's setup writes to ~/.dmh/env, for this venv, with the token onprem mounts, and with what runs Ray
    # on 127.0.0.1 only. Quoted: the file must hold $PATH itself, to be expanded when sourced.
    exports = (f"export PATH={VENV_BIN}:$PATH RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={head_home}/.ray/auth_token "
               f"RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
               f"RAY_TMPDIR={ray_tmp} DMH_DATA_DIR={data_dir} {MARKER}={cluster_name}")
    config["setup_commands"] = [
        f"echo {shlex.quote(exports)} > {env_file}",
        f"grep -qxF 'source {env_file}' ~/.bashrc || echo 'source {env_file}' >> ~/.bashrc",
    ]
    config["head_setup_commands"] = []
    # onprem's head start without its MLflow server (the test runs its own) and on free ports; no `ray stop`.
    config["head_start_ray_commands"] = [
        f"ray start --head --node-ip-address=127.0.0.1 --port={port} --dashboard-host=127.0.0.1 "
        f"--dashboard-port={free_port()} "
        f"--dashboard-agent-listen-port={free_port()} --temp-dir={ray_tmp}/ray "
        "--autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats"]
    return config


def cluster_processes(cluster_name: str, ray_tmp: Path) -> set[int]:
    """The processes of the cluster: every process started in the cluster's shells (they carry its marker in their
    environment; Ray's daemons and workers inherit it) or by `ray up` / `ray submit` here (their SSH connections),
    whatever its parent now, and what those started; any process naming the cluster's Ray folder too."""
    named = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(ray_tmp).encode() in cmdline.read_bytes():
                named.add(int(cmdline.parent.name))
    return descendants(*(processes_with_env(MARKER, cluster_name) | named)) - {os.getpid()}


def process_names(pids: set[int]) -> set[str]:
    names = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def test_ray_up_and_submit_of_the_onprem_config_reach_the_tracking_server(tmp_path, tmp_path_factory, sshd,
                                                                          home_files):
    """`ray up -y` then `ray submit ... -- --preset smoke --tracking-uri ... --storage ...`, as the user types them.

    The cluster is taken down without `ray down`: that runs a bare `ray stop` on the head, which stops every Ray
    process on the machine, other tests' and other users' included. Instead the test stops the cluster's processes by
    pid (:func:`cluster_processes`) and verifies that they included the cluster's GCS and raylet, that nothing is
    left of them afterwards, and that they listened on loopback only while they ran.
    """
    cluster_name = f"dmh-test-{uuid.uuid4().hex[:12]}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="dmh-rayup-")) / "tmp"  # short: Ray's Unix sockets live below it
    ray_tmp.mkdir()
    head_home, client_home = tmp_path / "head", tmp_path / "client"
    (client_home / ".ray").mkdir(parents=True)
    token = client_home / ".ray" / "auth_token"
    token.write_text(secrets.token_hex(32))  # `ray get-auth-token --generate` writes one like it
    token.chmod(0o600)
    port = free_port()
    config = tmp_path / "onprem-local.yaml"
    config.write_text(yaml.safe_dump(derived_config(
        cluster_name=cluster_name, key=sshd.key, head_home=head_home, client_home=client_home,
        env_file=tmp_path / "cluster.env", ray_tmp=ray_tmp,
        data_dir=tmp_path_factory.getbasetemp() / "sweep-data", port=port)))
    env = {**os.environ, MARKER: cluster_name, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    server = MlflowServer(tmp_path / "mlflow")
    server.folder.mkdir()
    found: set[int] = set()
    try:
        server.start()
        up = subprocess.run([RAY_CLI, "up", "-y", "--no-config-cache", str(config)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, (up.stdout + up.stderr)[-5000:]
        # onprem's file mounts: the checkout without what .gitignore excludes (the venv), and the Ray token
        assert (head_home / "dmh" / "sweeps" / "c_sensitivity.py").is_file()
        assert not (head_home / "dmh" / ".venv").exists()
        assert (head_home / ".ray" / "auth_token").read_text() == token.read_text()

        server.wait_healthy()
        submit = subprocess.run([RAY_CLI, "submit", "--no-config-cache", str(config), "sweeps/c_sensitivity.py",
                                 "--", "--preset", "smoke", "--tracking-uri", server.uri,
                                 "--storage", str(tmp_path / "storage")],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        output = submit.stdout + submit.stderr
        assert submit.returncode == 0, output[-5000:]
        assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{port}" in output, output[-5000:]

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("c_sensitivity")
        assert experiment is not None, output[-5000:]
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        trials = [r for r in runs if Tag.SWEEP_PARENT not in r.data.tags]
        assert sorted(r.data.params["c"] for r in trials) == ["1", "5"]
        assert len(runs) == len(trials) + 1  # and the sweep's parent run
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags[Tag.RAY_CLUSTER] for r in trials} == {f"127.0.0.1:{port}"}  # ran in the cluster

        found = cluster_processes(cluster_name, ray_tmp)
        assert {"gcs_server", "raylet"} <= process_names(found), process_names(found)
        # the cluster's processes, sshd and the MLflow server: nothing listens beyond loopback
        sockets = listening_sockets(found | descendants(sshd.proc.pid, server.proc.pid))
        assert {"gcs_server", "raylet", "sshd"} <= {name for name, _ in sockets}, sockets
        assert {ip for _, ip in sockets} <= LOOPBACK, sockets
    finally:
        found |= cluster_processes(cluster_name, ray_tmp)
        kill_and_wait(found)
        left = cluster_processes(cluster_name, ray_tmp)
        kill_and_wait(left)
        server.stop()
        user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster_hash = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
        shutil.rmtree(f"/tmp/ray_ssh_{user_hash}/{cluster_hash}", ignore_errors=True)  # Ray's SSH control sockets
        with contextlib.suppress(OSError):
            Path(f"/tmp/ray_ssh_{user_hash}").rmdir()  # if no other cluster's are left in it
        shutil.rmtree(ray_tmp.parent, ignore_errors=True)
    assert not left, f"cluster processes still running after they were stopped by pid: {sorted(left)}"
