"""MLflow tracking layer: what a run records, how it ends (FINISHED / FAILED / KILLED), and resume.

Each test has its own SQLite store. Creating MLflow's schema takes seconds, so one empty store is made per session and
copied into each test's folder.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import http.server
import importlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from dmh.errors import DmhError
from dmh.tracking import (
    MAX_PARAM_VALUE_LENGTH,
    TRUNCATION_MARKER,
    TrackedRun,
    TrackingUnavailableError,
    check_store,
    default_tracking_uri,
    flatten_params,
    run_tags,
)
from dmh.tracking.outage import bounded_http

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with the schema created and nothing in it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def uri(tmp_path: Path, empty_store: Path) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@dataclasses.dataclass
class ModelConfig:
    n_layer: int = 2
    backend: str = "torch"


@dataclasses.dataclass
class Config:
    algo: str = "dmh"
    env: str = "darkroom"
    c: int = 5
    n_context: int = 4
    valuable_subgoals: bool = True
    seed: int = 0
    preset: str = "smoke"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def test_default_tracking_uri_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_mlflow_tracking_uri_environment_variable_overrides_the_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri() == "http://127.0.0.1:5999"


def test_telemetry_is_switched_off_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    default_tracking_uri()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    default_tracking_uri()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_a_run_with_default_settings_keeps_database_and_artifacts_in_the_working_directory(
    tmp_path, monkeypatch, empty_store
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    with TrackedRun("default-store") as run:
        run.log_text("hello", "note.txt")
    artifact_uri = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run.run_id).info.artifact_uri
    assert artifact_uri.startswith((tmp_path / "mlruns").resolve().as_uri())
    assert list((tmp_path / "mlruns").rglob("note.txt"))


def test_new_experiment_artifacts_go_beside_the_database_whatever_the_working_directory(uri, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with TrackedRun("sweep/darkroom", tracking_uri=uri) as run:
        run.log_text("x", "x.txt")
    assert list((tmp_path / "mlruns").rglob("x.txt"))
    assert not (elsewhere / "mlruns").exists()


def test_flatten_params_turns_nested_configs_into_dotted_string_keys():
    flat = flatten_params({"cfg": Config(), "lr": 1e-4, "tags": ["a", "b"], "empty": {}, "none": None})
    assert flat == {
        "cfg.algo": "dmh",
        "cfg.env": "darkroom",
        "cfg.c": "5",
        "cfg.n_context": "4",
        "cfg.valuable_subgoals": "True",
        "cfg.seed": "0",
        "cfg.preset": "smoke",
        "cfg.model.n_layer": "2",
        "cfg.model.backend": "torch",
        "lr": "0.0001",
        "tags": "['a', 'b']",
        "empty": "{}",
        "none": "None",
    }
    assert flatten_params(ModelConfig(), prefix="model") == {"model.n_layer": "2", "model.backend": "torch"}


def test_flatten_params_cuts_values_over_mlflows_limit_and_marks_the_cut(uri):
    flat = flatten_params({"long": "x" * 10_000, "exact": "y" * MAX_PARAM_VALUE_LENGTH})
    assert len(flat["long"]) == MAX_PARAM_VALUE_LENGTH and flat["long"].endswith(TRUNCATION_MARKER)
    assert flat["exact"] == "y" * MAX_PARAM_VALUE_LENGTH
    with TrackedRun("limits", params={"long": "x" * 10_000}, tracking_uri=uri) as run:
        pass
    assert MlflowClient(uri).get_run(run.run_id).data.params["long"] == flat["long"]


def test_flatten_params_rejects_a_config_that_is_not_a_mapping():
    with pytest.raises(DmhError, match="mapping or a dataclass"):
        flatten_params(["algo", "dmh"])


def test_run_tags_name_the_commit_host_device_and_versions():
    import socket

    import torch

    import dmh

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    is_checkout = head.returncode == 0 and (REPO_ROOT / ".git").exists()
    tags = run_tags()
    assert tags["git_commit"] == (head.stdout.strip() if is_checkout else "unknown")
    assert tags["host"] == socket.gethostname()
    assert tags["device"] == ("cpu" if not torch.cuda.is_available() else tags["device"])
    assert tags["dmh_version"] == dmh.__version__
    assert tags["torch_version"] == torch.__version__
    assert run_tags(device="cpu")["device"] == "cpu"


def test_run_tags_report_an_unknown_commit_when_git_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable anywhere
    assert run_tags()["git_commit"] == "unknown"


def test_a_run_records_params_tags_metrics_and_artifacts_and_ends_finished(uri, tmp_path):
    checkpoint = tmp_path / "final.pt"
    checkpoint.write_bytes(b"weights")
    with TrackedRun("darkroom", run_name="dmh-c5", params=Config(), tags={"sweep": "c"}, tracking_uri=uri) as run:
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            run.log_metrics({"train/loss": loss}, step=step * 100)
        run.log_metrics({"time/offline_h_per_10k_updates": 0.1, "time/online_min": 2.5}, step=300)
        run.log_artifact(checkpoint, artifact_path="checkpoints")
        run.log_text("algo: dmh\n", "config.yaml")

    client = MlflowClient(uri)
    recorded = client.get_run(run.run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.info.run_name == "dmh-c5"
    assert recorded.data.params == flatten_params(Config())
    assert recorded.data.tags["sweep"] == "c"
    assert {"git_commit", "host", "device", "dmh_version", "torch_version"} <= recorded.data.tags.keys()
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (100, 0.5), (200, 0.25)]
    assert recorded.data.metrics["time/online_min"] == 2.5
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert artifacts == {"checkpoints", "config.yaml"}
    assert [a.path for a in client.list_artifacts(run.run_id, "checkpoints")] == ["checkpoints/final.pt"]


def test_log_curve_logs_the_mean_over_tasks_per_episode_in_one_call_and_writes_csv_and_png(uri, tmp_path):
    returns = np.arange(60, dtype=float).reshape(3, 20)  # [tasks, episodes]: task t, episode e -> 20 t + e
    with TrackedRun("curves", tracking_uri=uri) as run:
        calls = []
        original = run._client.log_batch

        def counting_log_batch(*args, **kwargs):
            calls.append(kwargs)
            return original(*args, **kwargs)

        run._client.log_batch = counting_log_batch
        run.log_curve(returns)

    client = MlflowClient(uri)
    assert len(calls) == 1  # all 20 episodes in one batch
    history = client.get_metric_history(run.run_id, "eval/return")
    assert [(m.step, m.value) for m in history] == [(e, 20.0 + e) for e in range(20)]
    local = Path(client.download_artifacts(run.run_id, "", str(tmp_path / "dl")))
    with (local / "in_context_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20
    assert rows[19]["episode"] == "19" and float(rows[19]["mean_return"]) == 39.0
    assert float(rows[19]["task_2"]) == 59.0 and float(rows[0]["std_return"]) == pytest.approx(np.std([0, 20, 40]))
    assert (local / "in_context_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_curve_accepts_one_task_and_rejects_an_empty_curve(uri):
    with TrackedRun("curves", tracking_uri=uri) as run:
        run.log_curve([1.0, 3.0], name="single")
        with pytest.raises(DmhError, match="at least one episode"):
            run.log_curve([])
    client = MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(run.run_id, "eval/return")] == [1.0, 3.0]
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"single.csv", "single.png"}


def test_an_exception_inside_the_run_marks_it_failed_and_propagates(uri):
    with pytest.raises(RuntimeError, match="diverged"), TrackedRun("fails", tracking_uri=uri) as run:
        raise RuntimeError("loss diverged")
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"


def test_signal_handlers_are_restored_when_the_run_ends(uri):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with TrackedRun("handlers", tracking_uri=uri):
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


_SLEEPING_RUN = textwrap.dedent(
    """
    import sys, time
    from dmh.tracking import TrackedRun

    with TrackedRun("signals", params={"c": 5}, tracking_uri=sys.argv[1]) as run:
        print(run.run_id, flush=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception:  # a training loop that swallows errors must not swallow the signal
                pass
    """
)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_sent_by_pid_ends_the_run_killed_and_exits_with_128_plus_signum(uri, signum, exit_code):
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPING_RUN, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        run_id = proc.stdout.readline().strip() if ready else ""
        assert run_id, f"the child never reported its run: {proc.stderr.read() if proc.poll() is not None else ''}"
        assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=30) == exit_code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


_RUN_IN_A_WORKER_THREAD = textwrap.dedent(
    """
    import sys, threading, time
    from dmh.tracking import TrackedRun

    started = threading.Event()

    def trainable():
        with TrackedRun("threads", tracking_uri=sys.argv[1]) as run:
            print(run.run_id, flush=True)
            started.set()
            time.sleep(60)

    threading.Thread(target=trainable, daemon=True).start()
    started.wait(60)
    sys.exit(0)  # the main thread leaves while the run is still open in its thread
    """
)


def test_a_run_still_open_in_a_worker_thread_when_the_process_exits_ends_killed(uri):
    done = subprocess.run(
        [sys.executable, "-c", _RUN_IN_A_WORKER_THREAD, uri], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_resume_continues_the_same_run_and_appends_metrics(uri):
    with TrackedRun("resume", run_name="dmh-c5", params=Config(), tracking_uri=uri) as first:
        first.log_metrics({"train/loss": 1.0}, step=0)
    with TrackedRun("resume", params=Config(), run_id=first.run_id, tracking_uri=uri) as resumed:
        assert MlflowClient(uri).get_run(first.run_id).info.status == "RUNNING"
        resumed.log_metrics({"train/loss": 0.5}, step=1)
        resumed.log_params({"extra_field": 3})

    client = MlflowClient(uri)
    assert resumed.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["extra_field"] == "3" and run.data.params["c"] == "5"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss")] == [(0, 1.0), (1, 0.5)]
    experiment = client.get_experiment_by_name("resume")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_resume_with_a_changed_param_value_is_a_clear_error_and_leaves_the_run_untouched(uri):
    with TrackedRun("resume", params=Config(c=5), tracking_uri=uri) as first:
        pass
    with (
        pytest.raises(DmhError, match=r"c: '5' -> '20'"),
        TrackedRun("resume", params=Config(c=20), run_id=first.run_id, tracking_uri=uri),
    ):
        pass
    run = MlflowClient(uri).get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["c"] == "5"


def test_logging_a_param_with_a_new_value_during_the_run_is_a_clear_error(uri):
    with TrackedRun("params", params={"c": 5}, tracking_uri=uri) as run, pytest.raises(DmhError, match="c: '5'"):
        run.log_params({"c": 20})


def test_resume_of_a_run_id_that_does_not_exist_is_a_clear_error(uri):
    with pytest.raises(DmhError, match="no such run"), TrackedRun("resume", run_id="0" * 32, tracking_uri=uri):
        pass


def test_resume_under_another_experiment_is_a_clear_error(uri):
    with TrackedRun("first", tracking_uri=uri) as run:
        pass
    with (
        pytest.raises(DmhError, match="belongs to experiment"),
        TrackedRun("second", run_id=run.run_id, tracking_uri=uri),
    ):
        pass


def test_run_id_before_the_run_starts_is_a_clear_error(uri):
    with pytest.raises(DmhError, match="has not started"):
        _ = TrackedRun("x", tracking_uri=uri).run_id


def test_processes_starting_at_once_on_a_new_sqlite_store_all_get_their_runs(tmp_path):
    """Parallel sweep trials race on MLflow's schema creation unless the store is initialised under a lock."""
    uri = f"sqlite:///{tmp_path}/fresh.db"
    script = ("import sys; from dmh.tracking import TrackedRun\n"
              f"with TrackedRun('race', run_name=sys.argv[1], tracking_uri={uri!r}) as run: print(run.run_id)")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"r{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-500:] for _, err in outputs]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r0", "r1", "r2"]
    assert all(r.info.status == "FINISHED" for r in runs)


# ----- the store checked before any work ------------------------------------------------------------------------


def _closed_port() -> int:
    """A port nothing listens on (bound for a moment to find it, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_error_line(err: str, uri: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0] and uri in lines[0] and "Traceback" not in err
    return lines[0]


@contextlib.contextmanager
def _health_server(status: int):
    """An HTTP server on 127.0.0.1 that answers every GET with ``status``; yields its URI."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_check_store_names_a_server_that_is_down_within_seconds():
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(DmhError, match=re.escape(uri)) as raised:
        check_store(uri, timeout=5)
    assert time.monotonic() - started < 5
    assert "connection refused" in str(raised.value) and "\n" not in str(raised.value)


def test_check_store_accepts_a_server_whose_health_endpoint_answers_and_refuses_one_that_answers_otherwise():
    with _health_server(200) as uri:
        check_store(uri)
    with _health_server(404) as uri, pytest.raises(DmhError, match="answered GET /health with HTTP 404"):
        check_store(uri)


def test_check_store_refuses_a_sqlite_path_under_a_regular_file(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'runs' / 'mlflow.db'}"
    with pytest.raises(DmhError, match=re.escape(f"{uri} cannot be created: {tmp_path / 'a-file'} is a file")):
        check_store(uri)


def test_check_store_refuses_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database " * 100)
    with pytest.raises(DmhError, match="cannot be opened: file is not a database"):
        check_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_check_store_accepts_a_new_sqlite_store_in_a_new_folder_and_creates_nothing(tmp_path, uri):
    check_store(f"sqlite:///{tmp_path / 'new' / 'folder' / 'mlflow.db'}")
    check_store(uri)  # an existing store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_check_store_masks_a_password_in_the_uri_it_names():
    uri = f"postgresql://user:secret@127.0.0.1:{_closed_port()}/runs"
    with pytest.raises(DmhError) as raised:
        check_store(uri, timeout=5)
    assert "secret" not in str(raised.value) and "user:***@127.0.0.1" in str(raised.value)


def test_dmh_train_with_a_server_that_is_down_exits_2_with_one_line_naming_it_and_writes_nothing(
        tmp_path, monkeypatch, capsys):
    from dmh import cli

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert cli.main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke"]) == 2
    assert time.monotonic() - started < 10
    assert _one_error_line(capsys.readouterr().err, uri).startswith("dmh: error: MLflow tracking server")
    assert list(tmp_path.iterdir()) == []


def test_dmh_train_with_an_unwritable_sqlite_path_exits_2_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from dmh import cli

    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke"]) == 2
    assert _one_error_line(capsys.readouterr().err, uri).startswith("dmh: error:")
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_dmh_evaluate_with_a_server_that_is_down_exits_2_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from dmh import cli

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["evaluate", "0" * 32]) == 2
    assert _one_error_line(capsys.readouterr().err, uri).startswith("dmh: error:")


def test_dmh_report_with_a_server_that_is_down_exits_2_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from dmh import cli

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert cli.main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 2
    assert time.monotonic() - started < 10
    _one_error_line(capsys.readouterr().err, uri)
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_with_a_server_that_is_down_fails_before_ray_starts(tmp_path, monkeypatch, capsys):
    from sweeps import common

    def no_ray(*args: object, **kwargs: object) -> bool:
        raise AssertionError("Ray was started although the tracking server is down")

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(common, "connect_ray", no_ray)
    script = importlib.import_module("sweeps.c_sensitivity")
    started = time.monotonic()
    assert common.main(script.SWEEP, ["--preset", "smoke", "--tracking-uri", uri]) == 2
    assert time.monotonic() - started < 10
    _one_error_line(capsys.readouterr().err, uri)
    assert list(tmp_path.iterdir()) == []


# ----- an outage of the store during a run ----------------------------------------------------------------------


class _Outage:
    """Makes a run's client fail its writes as MLflow does when the server is down (a refused connection wrapped in
    an ``MlflowException``) while ``down`` is true; ``sent`` counts the write requests the client was asked for."""

    WRITES = ("log_batch", "log_artifact", "log_artifacts", "set_terminated")

    def __init__(self, client: MlflowClient) -> None:
        self.down = True
        self.sent = 0
        for name in self.WRITES:
            setattr(client, name, self._wrap(getattr(client, name)))

    def _wrap(self, write):
        def maybe_failing(*args, **kwargs):
            self.sent += 1
            if self.down:
                try:
                    raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
                except requests.exceptions.ConnectionError as exc:
                    raise MlflowException(f"API request to http://127.0.0.1:1 failed with exception {exc}") from exc
            return write(*args, **kwargs)

        return maybe_failing


def test_metrics_logged_while_the_store_is_down_arrive_once_and_in_order_when_it_returns(uri):
    with TrackedRun("outage", tracking_uri=uri) as run:
        run.log_metrics({"train/loss": 1.0}, step=1)
        outage = _Outage(run._client)
        for step in range(2, 6):
            run.log_metrics({"train/loss": 1.0 / step}, step=step)
        run.log_params({"late": 1})
        outage.down = False
    client = MlflowClient(uri)
    recorded = client.get_run(run.run_id)
    assert recorded.info.status == "FINISHED" and recorded.data.params["late"] == "1"
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(step, 1.0 / step) for step in range(1, 6)]


def test_logging_while_the_store_is_down_returns_at_once_and_does_not_call_the_store_each_time(uri, monkeypatch):
    monkeypatch.setenv("DMH_TRACKING_DEADLINE", "0")
    with pytest.raises(TrackingUnavailableError), TrackedRun("outage", tracking_uri=uri) as run:
        outage = _Outage(run._client)
        started = time.monotonic()
        for step in range(200):
            run.log_metrics({"train/loss": 0.5}, step=step)
        assert time.monotonic() - started < 0.5
        assert outage.sent == 1  # the first failure starts a backoff; the rest wait behind it


def test_a_store_down_past_the_deadline_ends_the_run_with_one_line_naming_it_and_what_was_not_written(
        uri, monkeypatch):
    monkeypatch.setenv("DMH_TRACKING_DEADLINE", "1.5")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised, TrackedRun("outage", tracking_uri=uri) as run:
        _Outage(run._client)
        run.log_metrics({"train/loss": 0.5, "eval/last_return": 1.0}, step=3)
        run.log_text("algo: dmh\n", "config.yaml")
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "\n" not in message and uri in message and run.run_id in message
    assert f"2 metric values, 1 artifact and the end status FINISHED of run {run.run_id} could not" in message


def test_an_exception_in_the_run_is_not_hidden_by_a_store_that_is_down_at_its_end(uri, monkeypatch, caplog):
    monkeypatch.setenv("DMH_TRACKING_DEADLINE", "0")
    with pytest.raises(RuntimeError, match="diverged"), TrackedRun("outage", tracking_uri=uri) as run:
        _Outage(run._client)
        raise RuntimeError("loss diverged")
    assert any(uri in r.getMessage() and "end status FAILED" in r.getMessage() for r in caplog.records)


def test_an_artifact_that_had_to_wait_is_uploaded_as_it_was_when_logged(uri, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"step 5")
    with TrackedRun("outage", tracking_uri=uri) as run:
        outage = _Outage(run._client)
        run.log_artifact(checkpoint, "checkpoint")
        checkpoint.write_bytes(b"step 6, written after the artifact was logged")
        outage.down = False
    local = MlflowClient(uri).download_artifacts(run.run_id, "checkpoint/checkpoint.pt", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == b"step 5"


def test_a_failure_that_retrying_cannot_fix_is_raised_at_once(uri):
    with TrackedRun("outage", tracking_uri=uri) as run:
        def invalid(*args, **kwargs):
            raise MlflowException("Invalid value for metric", error_code="INVALID_PARAMETER_VALUE")

        run._client.log_batch = invalid
        with pytest.raises(MlflowException, match="Invalid value"):
            run.log_metrics({"train/loss": 0.5}, step=1)
        del run._client.log_batch  # the client's own method again
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FINISHED"


def test_mlflow_http_retries_are_bounded_only_while_a_dmh_request_is_in_flight_and_never_over_a_user_setting(
        monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with bounded_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's choice
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    with bounded_http(upload=True):
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # uploads keep MLflow's long timeout
