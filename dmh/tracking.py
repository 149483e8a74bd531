"""MLflow tracking: one run per training job, resumable, never left RUNNING.

Every number a run reports can be traced back to its settings: the resolved config goes in as params (flattened to
``a.b`` keys), the code and machine as tags, the results as metrics and artifacts. By default everything stays on
this machine (``./mlflow.db`` and ``./mlruns``); ``MLFLOW_TRACKING_URI`` or ``tracking_uri=`` point a run elsewhere,
per run, so a Ray trial on a remote worker can choose its store inside the trainable.

We talk to ``mlflow.MlflowClient`` with explicit run ids instead of MLflow's fluent API: the fluent API keeps one
global active run per process, which makes resuming a given run and running several trials in one worker fragile.

This is the top layer of the library: it imports ``dmh.errors`` and ``dmh.io`` only, never training code.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import dataclasses
import math
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmh.errors import DmhError

# MLflow rejects longer param values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_VALUE_LENGTH = 6000
TRUNCATION_MARKER = "...[truncated]"
# MLflow's limits for one log_batch call: 1000 metrics, 100 params, 100 tags.
_MAX_BATCH_METRICS = 1000
_MAX_BATCH_PARAMS = 100
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Runs between start and end, for the exit hook below.
_ACTIVE_RUNS: set[TrackedRun] = set()


def _quiet_mlflow_env() -> None:
    """Keep MLflow from phoning home (the network is closed on CI and clusters) unless the user decided otherwise."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite store ``./mlflow.db`` (absolute path) with artifacts in
    ``./mlruns``: MLflow's own default, spelled out so every process of a job agrees even if one changes directory."""
    _quiet_mlflow_env()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def local_sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores (servers, databases elsewhere)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: ``mlruns/`` beside a local SQLite database.

    MLflow would resolve ``./mlruns`` against whatever directory the creating process happens to be in, so a sweep
    started from another directory would scatter artifacts; tying them to the database keeps a store in one folder.
    The folder is named after the experiment because MLflow assigns the id only after the location is fixed.
    """
    db = local_sqlite_path(uri)
    if db is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return (db.parent / "mlruns" / folder).as_uri()


def open_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` whose store is ready. A new local SQLite store is created under a file lock: processes
    that start at once (parallel sweep trials) would otherwise race on MLflow's schema creation and fail."""
    from mlflow import MlflowClient

    db = local_sqlite_path(tracking_uri)
    if db is None:
        return MlflowClient(tracking_uri=tracking_uri)
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)  # creates or migrates the schema while holding the lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def _stringify(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[: MAX_PARAM_VALUE_LENGTH - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    return text


def flatten_params(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings and dataclass instances to ``{"a.b": "value"}``, every value a string MLflow accepts.

    Params are how runs are filtered and compared in the UI, so every resolved field gets its own key instead of
    one config blob. Values longer than MLflow's limit are cut and end with ``TRUNCATION_MARKER``; the full config
    is logged as an artifact anyway. An empty nested mapping is kept as ``"{}"`` so a field never silently vanishes.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if not isinstance(config, Mapping):
        raise DmhError(f"params must be a mapping or a dataclass instance, not {type(config).__name__}")
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        nested = isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        if nested:
            inner = flatten_params(value, name)
            flat.update(inner if inner else {name: "{}"})
        else:
            flat[name] = _stringify(value)
    return flat


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_tags() -> dict[str, str]:
    """Commit of the dmh source tree, only when dmh itself is the checkout (an installed copy inside some other
    repository must not report that repository's commit)."""
    source_root = Path(__file__).resolve().parent.parent
    toplevel = _git(["rev-parse", "--show-toplevel"], source_root)
    if toplevel is None or Path(toplevel).resolve() != source_root:
        return {"git_commit": "unknown"}
    commit = _git(["rev-parse", "HEAD"], source_root)
    if commit is None:
        return {"git_commit": "unknown"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], source_root)
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit}  # the second is what the MLflow UI shows
    if status is not None:
        tags["git_dirty"] = "true" if status else "false"
    return tags


def _describe_device(device: str | None) -> tuple[str, str]:
    """(device, torch version); torch is imported only here so tracking works in processes that never train."""
    try:
        import torch
    except ImportError:
        return (device or "cpu"), "not installed"
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        device = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device, torch.__version__


def run_tags(device: str | None = None) -> dict[str, str]:
    """Where a result came from: git commit (``unknown`` outside a checkout), host, device, dmh and torch versions.

    ``device`` is what the trainer runs on (``"cpu"``, ``"cuda:1"``); by default the first GPU if there is one.
    Never raises: a missing git or torch must not stop a training run.
    """
    import dmh

    device_name, torch_version = _describe_device(device)
    return {
        **_git_tags(),
        "host": socket.gethostname(),
        "device": device_name,
        "dmh_version": dmh.__version__,
        "torch_version": torch_version,
    }


class RunInterrupted(SystemExit):
    """SIGTERM or SIGINT while a run is active.

    A ``SystemExit`` so that ``except Exception`` in a training loop cannot swallow it, and so that, once the run is
    recorded as KILLED, the process exits with the conventional status ``128 + signum`` (143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@atexit.register
def _end_abandoned_runs() -> None:
    """KILLED for runs still open when the interpreter exits.

    A run in a worker thread (Ray Tune runs function trainables in one) has no signal handlers, since Python allows
    them only in the main thread; when the main thread exits, this marks the run instead of leaving it RUNNING.
    """
    for run in list(_ACTIVE_RUNS):
        with contextlib.suppress(Exception):
            run._set_terminated("KILLED")


def _terminal_status(exc: BaseException | None) -> str:
    if exc is None:
        return "FINISHED"
    if isinstance(exc, RunInterrupted | KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "FINISHED"
    return "FAILED"


class TrackedRun:
    """One MLflow run as a context manager: FINISHED on normal exit, FAILED on an exception (re-raised), KILLED on
    SIGTERM/SIGINT (then the process exits with 128 + signum).

    ``params`` (a config mapping or dataclass) are flattened with :func:`flatten_params`; ``tags`` are added to
    :func:`run_tags`. With ``run_id`` the run is resumed: it goes back to RUNNING, keeps its id and metric history,
    and params that are already logged must keep their value (a changed value is a ``DmhError``: the resumed run
    would no longer describe one configuration).
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        params: Mapping[str, Any] | Any | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        _quiet_mlflow_env()
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self._params = flatten_params(params) if params is not None else {}
        self._tags = {str(k): _stringify(v) for k, v in (tags or {}).items()}
        self._resume_id = run_id
        self._run_id: str | None = None
        self._client: Any = None
        self._previous_handlers: dict[int, Any] = {}
        self._deferring = False
        self._pending_signal: int | None = None

    # ----- lifecycle -------------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise DmhError("the run has not started: use TrackedRun as a context manager (with TrackedRun(...) as run)")
        return self._run_id

    def __enter__(self) -> TrackedRun:

        # Handlers go in before the run exists and signals are held back until its id is known, so there is no
        # moment at which a signal could leave a run RUNNING.
        self._install_signal_handlers()
        self._deferring = True
        try:
            self._client = open_client(self.tracking_uri)
            if self._resume_id is None:
                self._start_new_run()
            else:
                self._resume_run(self._resume_id)
        except BaseException as exc:
            if self._run_id is None:
                self._restore_signal_handlers()
            else:
                self._finish(exc)
            raise
        self._deferring = False
        if self._pending_signal is not None:
            interrupted = RunInterrupted(self._pending_signal)
            self._pending_signal = None
            self._finish(interrupted)
            raise interrupted
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        """Record the terminal status, restore signal handlers, then deliver a signal that arrived meanwhile."""
        self._deferring = True  # a signal now is remembered, not raised, so the status write cannot be cut off
        try:
            self._set_terminated(_terminal_status(exc))
        finally:
            _ACTIVE_RUNS.discard(self)
            self._restore_signal_handlers()
            self._deferring = False
        signum, self._pending_signal = self._pending_signal, None
        if signum is not None and not isinstance(exc, SystemExit):
            raise RunInterrupted(signum) from exc

    def _set_terminated(self, status: str) -> None:
        # SQLite can be briefly locked by a parallel trial; a run left RUNNING is worse than a short wait.
        for attempt in range(5):
            try:
                self._client.set_terminated(self.run_id, status=status)
                return
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.2 * 2**attempt)

    def _start_new_run(self) -> None:
        experiment_id = self._experiment_id(create=True)
        tags = {**run_tags(), **self._tags}
        run = self._client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self._run_id = run.info.run_id
        _ACTIVE_RUNS.add(self)
        self._log_params(self._params, already_logged={})

    def _resume_run(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            raise DmhError(f"cannot resume MLflow run {run_id!r}: no such run in {self.tracking_uri}") from exc
        if run.info.lifecycle_stage != "active":
            raise DmhError(f"cannot resume MLflow run {run_id!r}: it is deleted (`mlflow runs restore` brings it back)")
        experiment_id = self._experiment_id(create=False)
        if run.info.experiment_id != experiment_id:
            raise DmhError(
                f"cannot resume MLflow run {run_id!r} under experiment {self.experiment!r}: it belongs to experiment "
                f"id {run.info.experiment_id}"
            )
        _check_unchanged(run_id, run.data.params, self._params)
        self._run_id = run_id
        _ACTIVE_RUNS.add(self)
        self._client.update_run(run_id, status="RUNNING")
        self._set_tags({**run_tags(), **self._tags})
        self._log_params(self._params, already_logged=run.data.params)

    def _experiment_id(self, create: bool) -> str | None:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is None and create:
            try:
                return self._client.create_experiment(
                    self.experiment,
                    artifact_location=_artifact_location(self.tracking_uri, self.experiment),
                )
            except MlflowException:
                # Another trial created it between our lookup and our create.
                experiment = self._client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment is None:
            return None
        if experiment.lifecycle_stage != "active":
            raise DmhError(
                f"MLflow experiment {self.experiment!r} is deleted: restore it (`mlflow experiments restore`) "
                "or choose another name"
            )
        return experiment.experiment_id

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python allows handlers only in the main thread; a KeyboardInterrupt still ends the run KILLED
        for signum in _SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if self._deferring:
            self._pending_signal = signum
            return
        raise RunInterrupted(signum)

    # ----- logging ---------------------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Add params during the run (fields resolved after start); a changed value is a ``DmhError``."""
        flat = flatten_params(params)
        logged = self._client.get_run(self.run_id).data.params
        _check_unchanged(self.run_id, logged, flat)
        self._log_params(flat, already_logged=logged)

    def _log_params(self, params: Mapping[str, str], already_logged: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in params.items() if k not in already_logged]
        for start in range(0, len(new), _MAX_BATCH_PARAMS):
            self._client.log_batch(self.run_id, params=new[start : start + _MAX_BATCH_PARAMS])

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), _MAX_BATCH_PARAMS):
            self._client.log_batch(self.run_id, tags=items[start : start + _MAX_BATCH_PARAMS])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Add or overwrite tags (unlike params, tags may change, e.g. the host after a resume)."""
        self._set_tags({str(k): _stringify(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log several metrics at one step in one batched call."""
        self._log_metric_points([(key, float(value), step) for key, value in metrics.items()])

    def _log_metric_points(self, points: Sequence[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, int(step)) for key, value, step in points]
        for start in range(0, len(metrics), _MAX_BATCH_METRICS):
            self._client.log_batch(self.run_id, metrics=metrics[start : start + _MAX_BATCH_METRICS])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file (or a whole folder) into the run's artifacts, under ``artifact_path`` if given."""
        local = Path(path)
        if not local.exists():
            raise DmhError(f"cannot log artifact {local}: no such file or folder")
        if local.is_dir():
            self._client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(local), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (e.g. ``"config.yaml"``)."""
        self._client.log_text(self.run_id, text, artifact_file)

    def log_curve(self, returns_per_episode: Sequence[float] | np.ndarray, name: str = "in_context_curve") -> None:
        """The in-context learning curve: return by episode index, averaged over tasks.

        ``returns_per_episode`` is ``[episodes]`` or ``[tasks, episodes]``. Logs ``eval/return`` with step = episode
        index, all episodes in one batched call, and writes ``<name>.csv`` (episode, mean, std over tasks, then one
        column per task) and ``<name>.png``. ``eval/last_return`` is left to the caller, which logs it at the training
        step it belongs to.
        """
        returns = np.asarray(returns_per_episode, dtype=np.float64)
        if returns.ndim == 1:
            returns = returns[None, :]  # [tasks=1, episodes]
        if returns.ndim != 2 or returns.shape[1] == 0:
            raise DmhError(
                f"an in-context curve is [episodes] or [tasks, episodes] with at least one episode, "
                f"got shape {np.shape(returns_per_episode)}"
            )
        mean = returns.mean(axis=0)  # [episodes]
        std = returns.std(axis=0)  # [episodes]
        self._log_metric_points([("eval/return", float(v), episode) for episode, v in enumerate(mean)])
        with tempfile.TemporaryDirectory(prefix="dmh-curve-") as folder:
            csv_path = Path(folder) / f"{name}.csv"
            png_path = Path(folder) / f"{name}.png"
            _write_curve_csv(csv_path, returns, mean, std)
            _write_curve_png(png_path, mean, std, n_tasks=returns.shape[0], title=name)
            self._client.log_artifact(self.run_id, str(csv_path))
            self._client.log_artifact(self.run_id, str(png_path))


def _check_unchanged(run_id: str, logged: Mapping[str, str], params: Mapping[str, str]) -> None:
    changed = {k: (logged[k], v) for k, v in params.items() if k in logged and logged[k] != v}
    if changed:
        details = "; ".join(f"{k}: {_short(old)} -> {_short(new)}" for k, (old, new) in sorted(changed.items()))
        raise DmhError(
            f"MLflow run {run_id} was logged with other values for {len(changed)} param(s) ({details}); "
            "a run describes one configuration: resume with the same config or start a new run"
        )


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _write_curve_csv(path: Path, returns: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["episode", "mean_return", "std_return", *(f"task_{t}" for t in range(returns.shape[0]))])
        for episode in range(returns.shape[1]):
            writer.writerow([episode, repr(float(mean[episode])), repr(float(std[episode])), *returns[:, episode]])


def _write_curve_png(path: Path, mean: np.ndarray, std: np.ndarray, n_tasks: int, title: str) -> None:
    # A bare Figure with the Agg canvas: no pyplot, so the process-wide matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    episodes = np.arange(len(mean))
    axes.plot(episodes, mean, marker="o" if len(mean) <= 30 else None, label=f"mean over {n_tasks} task(s)")
    if n_tasks > 1 and all(math.isfinite(v) for v in std):
        axes.fill_between(episodes, mean - std, mean + std, alpha=0.25, label="± 1 std")
    axes.set_xlabel("episode in context")
    axes.set_ylabel("return")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


__all__ = [
    "MAX_PARAM_VALUE_LENGTH",
    "TRUNCATION_MARKER",
    "RunInterrupted",
    "TrackedRun",
    "default_tracking_uri",
    "flatten_params",
    "run_tags",
]
