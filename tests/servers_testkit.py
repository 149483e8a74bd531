"""Real servers and the processes behind them, for the tests that start them: a free loopback port, an ``mlflow
server`` on 127.0.0.1, the process tree below a pid, what those processes listen on, and stopping exactly the
processes a test started.

A plain module with a unique name (not a conftest.py), as tests/models/models_testkit.py, so it cannot clash with
other test directories."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest

# Where a server a test starts may listen: IPv4 and IPv6 loopback, and IPv4 loopback as a dual-stack socket shows it.
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` over one SQLite backend and artifacts folder, startable again."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self) -> None:
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
        command += ["server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                    "--artifacts-destination", str(self.folder / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with self.log.open("a") as handle:
            # Its own session: the server forks a uvicorn worker, and the group holds both and nothing else.
            self.proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.folder,
                                         start_new_session=True)

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            with (contextlib.suppress(urllib.error.URLError, OSError),
                  urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response):
                if response.status == 200:
                    return
            time.sleep(0.3)
        pytest.fail(f"mlflow server not healthy after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the server's process group (led by its pid), then wait for it."""
        if self.proc is not None:
            stop_group(self.proc, timeout_s=20)


def stop_group(proc: subprocess.Popen, timeout_s: float = 30, leader_only: bool = False) -> None:
    """SIGTERM to the process group ``proc`` leads (started with ``start_new_session=True``), or with ``leader_only``
    to ``proc`` alone, which then stops the rest itself; SIGKILL to what is left of the group after ``timeout_s``.
    Waits for ``proc``."""
    with contextlib.suppress(ProcessLookupError):
        if leader_only:
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the leader exited, but a member of its group may not have
    proc.wait()


def parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        found[int(stat.parent.name)] = int(fields[1])
    return found


def descendants(*roots: int) -> set[int]:
    """``roots`` and every process below them, from /proc (Ray's workers are children of its raylet)."""
    parent = parents()
    tree, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree}
        tree |= frontier
    return tree


def identities(pids: Iterable[int]) -> set[tuple[int, int]]:
    """(pid, start time) of each process of ``pids`` still running: a pid the kernel reuses gets another start time."""
    found = set()
    for pid in pids:
        try:
            found.add((pid, int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])))
        except (OSError, IndexError, ValueError):
            continue  # exited
    return found


def still_running(processes: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Those of ``processes`` (from :func:`identities`) that have not exited (zombies count as exited)."""
    return {p for p in identities(pid for pid, _ in processes) if p in processes and not _zombie(p[0])}


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def listening_sockets(pids: set[int]) -> list[tuple[str, str]]:
    """(process name, local ip) of every listening TCP socket and bound UDP socket of ``pids``, from ``ss``."""
    found = []
    for line in subprocess.run(["ss", "-lntupH"], capture_output=True, text=True, check=True).stdout.splitlines():
        owners = {int(pid): name for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line)}
        if owners.keys() & pids:
            ip = line.split()[4].rsplit(":", 1)[0].strip("[]")
            found += [(name, ip) for pid, name in owners.items() if pid in pids]
    return found


def processes_with_env(name: str, value: str) -> set[int]:
    """Every process whose environment holds ``name=value`` (what a process and everything it started inherit)."""
    wanted = f"{name}={value}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                found.add(int(environ.parent.name))
        except OSError:
            continue  # exited, or not ours to read
    return found


def kill_and_wait(pids: set[int], timeout_s: float = 20) -> set[tuple[int, int]]:
    """SIGTERM to ``pids``, SIGKILL to those still running after ``timeout_s``; returns those that survived both."""
    processes = identities(pids)
    for pid, _ in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in still_running(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return still_running(processes)


CHROMIUM = shutil.which("chromium")  # Debian's chromium, which .ci/run installs
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps dialling Google's hosts, which the closed network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_chromium(url: str, profile: Path, *args: str, flags: Iterable[str] = CHROMIUM_FLAGS,
                 timeout_s: float = 60, check: bool = False) -> str:
    """Headless Chromium on ``url`` with ``args`` (e.g. ``--dump-dom``); its stdout. A timeout fails the test after
    stopping the browser's whole process group (its renderer and GPU helpers share it); with ``check`` so does a
    non-zero exit."""
    browser = subprocess.Popen([CHROMIUM, *flags, f"--user-data-dir={profile}", *args, url],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = browser.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
        pytest.fail(f"chromium did not render {url} within {timeout_s} s")
    assert not check or browser.returncode == 0, f"chromium exited with {browser.returncode} on {url}"
    return out
