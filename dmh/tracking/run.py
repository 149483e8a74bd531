"""One MLflow run as a context manager (``TrackedRun``): params, tags, metrics and artifacts, resume, and an end
status (FINISHED, FAILED or KILLED) that is recorded even on a signal, an interpreter exit or an outage of the store.

Every write goes through a :class:`~dmh.tracking.outage.StoreWriter`: while the store is unreachable, writes wait in
order and training goes on; the run's end sends them, then the end status, waiting up to the deadline
(``$DMH_TRACKING_DEADLINE``, default 300 s; 10 s for a run stopped by a signal). Past it the run raises
``TrackingUnavailableError``, one line naming the store and what was not written; the run stays RUNNING in the store
(its status could not be written either), and ``dmh train --resume`` evaluates its final checkpoint again and ends it
(the values the line counted are not recovered).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import posixpath
import re
import signal
import threading
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmh.errors import DmhError
from dmh.tracking.curves import curve_csv, curve_figure
from dmh.tracking.outage import KILLED_DEADLINE_S, StoreWriter, TrackingUnavailableError, deadline_s
from dmh.tracking.provenance import run_tags
from dmh.tracking.store import artifact_location, default_tracking_uri, open_client, quiet_mlflow_env
from dmh.vocabulary import Metric

# mlflow is imported inside the methods that need it: it takes over a second to import, and dmh.training imports
# this module in every process, including those that never open a run.

# MLflow rejects longer param values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_VALUE_LENGTH = 6000
# MLflow's own switch for system metrics (CPU, memory, disk, network, and every GPU's utilisation and memory through
# nvidia-ml-py), logged every 10 s as system/* beside the run's metrics; a sweep turns it on in GPU trials.
SYSTEM_METRICS_SWITCH = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
SYSTEM_METRICS_STOP_S = 10  # how long a run's end waits for the monitor's last samples (its store may be down)
# The device a run computes on, also as params, which the MLflow UI shows as columns and compares and filters runs by:
# the torch device ("cpu", "cuda:0") and the GPU's model ("none" on a CPU). Taken from the tag of the run's caller,
# written by run_tags as "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)"; a run resumed elsewhere keeps the params of its
# first start (params cannot change) while the tag follows it.
DEVICE_TAG = "device"
DEVICE_PARAM, GPU_PARAM = "device_used", "gpu_name"
_DEVICE_DESCRIPTION = re.compile(r"(?P<device>\S+)(?: \((?P<gpu>.+)\))?")
TRUNCATION_MARKER = "...[truncated]"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_DEADLINE_HINT = "raise $DMH_TRACKING_DEADLINE to wait longer"
# Runs between start and end, for the exit hook below.
_ACTIVE_RUNS: set[TrackedRun] = set()
log = logging.getLogger(__name__)


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


def device_params(description: str) -> dict[str, str]:
    """The params of a ``device`` tag: ``"cuda:0 (NVIDIA A10G)"`` -> the device ``cuda:0`` and the GPU ``NVIDIA
    A10G``; ``"cpu"`` -> ``cpu`` and ``none``."""
    described = _DEVICE_DESCRIPTION.fullmatch(description)
    if described is None:
        return {}
    return {DEVICE_PARAM: described["device"], GPU_PARAM: described["gpu"] or "none"}


def start_system_metrics(run_id: str, tracking_uri: str, resume: bool) -> Any:
    """MLflow's system-metrics monitor for a run, started, when SYSTEM_METRICS_SWITCH is on (else None). A monitor
    that cannot run here (it needs psutil, and nvidia-ml-py for the GPUs: ``pip install 'dmh[cuda]'``) is said once
    and the run goes on without it."""
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING

    if not MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=tracking_uri)
    except Exception as exc:  # ImportError without psutil, or NVML failing in a way MLflow does not catch
        log.warning("system metrics of run %s are not logged: %s", run_id, exc)
        return None
    monitor.start()
    return monitor


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
            wait = min(KILLED_DEADLINE_S, run._writer.deadline)
            if not run._end("KILLED", time.monotonic() + wait):
                log.error("%s", run._unwritten_line("KILLED", wait))


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
    would no longer describe one configuration). A resumed run logs no metric at a step at or below the last one
    the store holds for that key: a run resumed from its checkpoint trains again the updates after it that an
    interruption cut off (a killed worker, a killed sweep driver), and the history keeps each step once, as first
    logged (an exact resume logs the same values again).

    An unreachable store does not stop training: logging calls return at once and their writes wait, in order,
    until the store answers (module docstring). Starting the run and ending it wait for the store up to
    ``deadline`` seconds (default ``$DMH_TRACKING_DEADLINE`` or 300); past it, ``TrackingUnavailableError``.
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        params: Mapping[str, Any] | Any | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        deadline: float | None = None,
    ) -> None:
        quiet_mlflow_env()
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self._params = flatten_params(params) if params is not None else {}
        self._tags = {str(k): _stringify(v) for k, v in (tags or {}).items()}
        self._resume_id = run_id
        self._run_id: str | None = None
        self._client: Any = None
        self._writer = StoreWriter(self.tracking_uri, deadline_s() if deadline is None else deadline)
        self._start_by = 0.0  # when starting the run stops waiting for the store (monotonic clock)
        self._logged_params: dict[str, str] = {}  # what the store holds (or will): changed values are refused locally
        self._stored_steps: dict[str, int] = {}  # a resumed run's last step per metric key in the store
        self._previous_handlers: dict[int, Any] = {}
        self._system_metrics: Any = None  # MLflow's monitor while the run is open, if SYSTEM_METRICS_SWITCH is on
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
        self._start_by = time.monotonic() + self._writer.deadline
        try:
            self._client = self._call(lambda: open_client(self.tracking_uri), "opening the store")
            if self._resume_id is None:
                self._start_new_run()
            else:
                self._resume_run(self._resume_id)
        except BaseException as exc:
            # A signal that arrived meanwhile (it may have cut short a wait for the store) wins over the error.
            signum, self._pending_signal = self._pending_signal, None
            stop = exc if signum is None else RunInterrupted(signum)
            if self._run_id is not None:
                self._finish(stop)
            else:
                self._restore_signal_handlers()
                self._writer.close()
            if stop is not exc:
                raise stop from exc
            raise
        self._deferring = False
        if self._pending_signal is not None:
            interrupted = RunInterrupted(self._pending_signal)
            self._pending_signal = None
            self._finish(interrupted)
            raise interrupted
        self._system_metrics = start_system_metrics(self.run_id, self.tracking_uri, self._resume_id is not None)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        """Send waiting writes and the terminal status, restore signal handlers, then deliver a signal that arrived
        meanwhile. A store still unreachable at the deadline is one ``TrackingUnavailableError`` line: raised if the run
        itself succeeded, logged if it failed (its own exception is the one to see)."""
        self._deferring = True  # a signal now is remembered, not raised, so the status write cannot be cut off
        status = _terminal_status(exc)
        if isinstance(exc, TrackingUnavailableError):
            wait = 0.0  # the store already had its deadline: one last attempt
        elif status == "KILLED":
            wait = min(KILLED_DEADLINE_S, self._writer.deadline)
        else:
            wait = self._writer.deadline
        unwritten = None
        self._stop_system_metrics()
        try:
            if not self._end(status, time.monotonic() + wait):
                unwritten = TrackingUnavailableError(self._unwritten_line(status, wait))
        finally:
            _ACTIVE_RUNS.discard(self)
            self._restore_signal_handlers()
            self._deferring = False
            self._writer.close()
        signum, self._pending_signal = self._pending_signal, None
        if unwritten is not None and (exc is not None or signum is not None):
            log.error("%s", unwritten)
        if signum is not None and not isinstance(exc, SystemExit):
            raise RunInterrupted(signum) from exc
        if unwritten is not None and exc is None:
            raise unwritten

    def _stop_system_metrics(self) -> None:
        """The monitor's last samples, waited for at most SYSTEM_METRICS_STOP_S (its thread may be waiting on an
        unreachable store; it is a daemon and ends with the process)."""
        monitor, self._system_metrics = self._system_metrics, None
        if monitor is not None:
            stopping = threading.Thread(target=monitor.finish, name="dmh-system-metrics-stop", daemon=True)
            stopping.start()
            stopping.join(SYSTEM_METRICS_STOP_S)

    def _end(self, status: str, until: float) -> bool:
        """Waiting writes, then the end status; whether the store took them all before ``until``."""
        give_up = self._signalled
        while True:
            try:
                if not self._writer.flush(until, give_up):
                    return False
                break
            except Exception as exc:  # a waiting write the store refused (no outage): said, and the rest still sent
                log.error("MLflow store %s refused a write to run %s: %s", self._writer.uri, self.run_id, exc)
        try:
            self._writer.call(lambda: self._client.set_terminated(self.run_id, status=status), until, give_up,
                              f"ending run {self.run_id}")
        except TrackingUnavailableError:
            return False
        return True

    def _unwritten_line(self, status: str, wait: float) -> str:
        *waiting, last = [*self._writer.unwritten(), f"the end status {status}"]
        lost = f"{', '.join(waiting)} and {last}" if waiting else last
        why = "a signal stopped the wait" if self._signalled() else f"gave up after {wait:.0f} s; {_DEADLINE_HINT}"
        return f"{self._writer.outage()}: {lost} of run {self.run_id} could not be written ({why})"

    def _signalled(self) -> bool:
        return self._pending_signal is not None

    def _call(self, request: Any, doing: str) -> Any:
        """A request the run cannot go on without, retried while the store is unreachable, until the start
        deadline."""
        return self._writer.call(request, self._start_by, self._signalled, doing)

    def _start_new_run(self) -> None:
        experiment_id = self._experiment_id(create=True)
        tags = {**run_tags(), **self._tags}
        run = self._call(lambda: self._client.create_run(experiment_id, run_name=self.run_name, tags=tags),
                         "creating the run")
        self._run_id = run.info.run_id
        _ACTIVE_RUNS.add(self)
        self._log_params(self._params)
        self._log_device_params()

    def _resume_run(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            run = self._call(lambda: self._client.get_run(run_id), f"reading run {run_id}")
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
        self._call(lambda: self._client.update_run(run_id, status="RUNNING"), f"reopening run {run_id}")
        # Unlike params, tags may change on a resume (the host, the device), so they are overwritten.
        self._set_tags({**run_tags(), **self._tags})
        self._logged_params = dict(run.data.params)
        self._log_params(self._params)
        self._log_device_params()
        self._stored_steps = {key: max((m.step for m in self._call(
            lambda key=key: self._client.get_metric_history(run_id, key), f"reading the history of {key}")),
            default=-1) for key in run.data.metrics}

    def _log_device_params(self) -> None:
        """DEVICE_PARAM and GPU_PARAM from the caller's ``device`` tag, unless the run holds them already (from its
        first start)."""
        params = device_params(self._tags[DEVICE_TAG]) if DEVICE_TAG in self._tags else {}
        self._log_params({key: value for key, value in params.items() if key not in self._logged_params})

    def _experiment_id(self, create: bool) -> str | None:
        from mlflow.exceptions import MlflowException

        def lookup() -> Any:
            return self._call(lambda: self._client.get_experiment_by_name(self.experiment), "reading the experiment")

        experiment = lookup()
        if experiment is None and create:
            location = artifact_location(self.tracking_uri, self.experiment)
            try:
                return self._call(lambda: self._client.create_experiment(self.experiment, artifact_location=location),
                                  "creating the experiment")
            except MlflowException:
                # Another trial created it between our lookup and our create.
                experiment = lookup()
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
        # Checked against what this run logged (and, on a resume, found), not re-read from a store that may be down.
        _check_unchanged(self.run_id, self._logged_params, flat)
        self._log_params(flat)

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in params.items() if k not in self._logged_params]
        self._logged_params.update(params)
        self._writer.log_batch(self._client, self.run_id, params=new)

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._writer.log_batch(self._client, self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log several metrics at one step in one batched call."""
        self._log_metric_points([(key, float(value), step) for key, value in metrics.items()])

    def _log_metric_points(self, points: Sequence[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric as MetricPoint  # not dmh.vocabulary.Metric, the metric key names

        timestamp = int(time.time() * 1000)  # now, not when a write that had to wait is finally sent
        metrics = [MetricPoint(key, value, timestamp, int(step)) for key, value, step in points
                   if step > self._stored_steps.get(key, -1)]
        if not metrics:
            return
        self._writer.log_batch(self._client, self.run_id, metrics=metrics)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file (or a whole folder) into the run's artifacts, under ``artifact_path`` if given."""
        local = Path(path)
        if not local.exists():
            raise DmhError(f"cannot log artifact {local}: no such file or folder")
        self._writer.log_artifact(self._client, self.run_id, local, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (e.g. ``"config.yaml"``)."""
        folder, name = posixpath.split(artifact_file)
        local = self._writer.scratch_file(name)
        local.write_text(text, encoding="utf-8")
        self._writer.log_artifact(self._client, self.run_id, local, folder or None, owned=True)

    def log_curve(self, returns_per_episode: Sequence[float] | np.ndarray, name: str = "in_context_curve") -> None:
        """The in-context learning curve: return by episode index, averaged over tasks.

        ``returns_per_episode`` is ``[episodes]`` or ``[tasks, episodes]``. Logs ``Metric.EVAL_RETURN``
        (``eval/return``) with step = episode index, all episodes in one batched call, and writes ``<name>.csv``
        (episode, mean, std over tasks, then one column per task) and ``<name>.png``. ``Metric.LAST_RETURN`` is left
        to the caller, which logs it at the training step it belongs to.
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
        self._log_metric_points([(Metric.EVAL_RETURN, float(v), episode) for episode, v in enumerate(mean)])
        self.log_text(curve_csv(returns, mean, std), f"{name}.csv")
        png = self._writer.scratch_file(f"{name}.png")
        curve_figure(mean, std, n_tasks=returns.shape[0], title=name).savefig(png)
        self._writer.log_artifact(self._client, self.run_id, png, None, owned=True)
