"""The MLflow UI comparison works: runs logged by dmh show up, with their ``c`` values, in the real MLflow web UI.

A store with two runs (``c`` = 5 and 20) is served by ``mlflow server`` on 127.0.0.1, and Debian's headless Chromium
renders the pages (the UI is a single-page app: the values exist only after its JavaScript has run). The experiment
page lists the runs; its table hides param columns until a user picks them, so the ``c`` values are read from the
compare-runs page, the UI's own view for comparing runs side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from servers_testkit import CHROMIUM, run_chromium

from dmh.tracking import TrackedRun

pytestmark = pytest.mark.slow

RUNS = {"dmh-c5": 5, "dmh-c20": 20}  # run name -> block size c


class _PageText(HTMLParser):
    """Every visible text fragment of a page, and every table row as [header or cell texts]."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.rows: list[list[str]] = []
        self._skip = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag in ("th", "td") and self._row is not None and self._cell is not None:
            self._row.append(" ".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        text = data.strip()
        if not text or self._skip:
            return
        self.texts.append(text)
        if self._cell is not None:
            self._cell.append(text)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base: str, server: subprocess.Popen, log: Path, timeout_s: float = 45) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"mlflow server not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


def _render(url: str, profile: Path, timeout_s: float = 40) -> _PageText:
    """The DOM after the page's scripts ran (virtual time waits for pending fetches), parsed."""
    shutil.rmtree(profile, ignore_errors=True)
    dom = run_chromium(url, profile, "--virtual-time-budget=20000", "--dump-dom", timeout_s=timeout_s)
    page = _PageText()
    page.feed(dom)
    return page


def _row(page: _PageText, header: str) -> list[str]:
    matches = [row[1:] for row in page.rows if row and row[0] == header]
    assert len(matches) == 1, f"expected one {header!r} row in the compare table, got {matches}; rows: {page.rows}"
    return matches[0]


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """A SQLite store with one experiment holding the two runs; returns (uri, experiment id, run name -> run id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_ids = {}
    for name, c in RUNS.items():
        params = {"algo": "dmh", "env": "darkroom", "c": c, "seed": 0, "model": {"n_layer": 2}}
        with TrackedRun("ui-compare", run_name=name, params=params, tracking_uri=uri) as run:
            run.log_metrics({"eval/last_return": float(c)}, step=0)
        run_ids[name] = run.run_id
    from mlflow import MlflowClient

    experiment_id = MlflowClient(uri).get_experiment_by_name("ui-compare").experiment_id
    return uri, experiment_id, run_ids


@pytest.fixture
def server(store, tmp_path: Path):
    """``mlflow server`` on 127.0.0.1 over the store, stopped by its own process group afterwards."""
    uri = store[0]
    port = _free_port()
    log = tmp_path / "server.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    command += ["server", "--backend-store-uri", uri, "--artifacts-destination", str(tmp_path / "served")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log.open("w") as handle:
        proc = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, proc, log)
        yield base
    finally:
        # The server forks a uvicorn worker; the session we created holds both, and nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_mlflow_ui_shows_both_runs_and_their_block_sizes_c(store, server, tmp_path):
    _, experiment_id, run_ids = store

    experiment_page = _render(f"{server}/#/experiments/{experiment_id}?workflowType=machine_learning", tmp_path / "p1")
    for name in RUNS:
        assert name in experiment_page.texts, f"run {name} not on the experiment page: {experiment_page.texts}"

    ids = list(run_ids.values())
    compare_url = (
        f"{server}/#/compare-runs?runs={quote(json.dumps(ids))}&experiments={quote(json.dumps([experiment_id]))}"
    )
    compare_page = _render(compare_url, tmp_path / "p2")
    names = _row(compare_page, "Run Name:")
    c_values = _row(compare_page, "c")
    assert dict(zip(names, c_values, strict=True)) == {name: str(c) for name, c in RUNS.items()}
    assert _row(compare_page, "algo") == ["dmh", "dmh"]
