"""Writing one run to a store that may be unreachable for a while (a tracking server restarting, a database failover):
failed writes are kept in order and retried with backoff, so training goes on and nothing is silently lost.

- A write (metrics, params, tags, an artifact) is sent at once while the store answers. When a send fails in a way
  retrying can fix (:func:`is_transient`), it and every later write wait in one FIFO queue; the queue is retried at
  the next write once its backoff has passed (``RETRY_FIRST_S`` doubling up to ``RETRY_MAX_S``), so a training step
  pays for at most one attempt per backoff period, never for MLflow's own minutes of retries.
- Writes that must happen before the run can go on (creating the run, its end status) are retried in place until
  a deadline: ``DEADLINE_S`` (``$DMH_TRACKING_DEADLINE`` seconds if set). The deadline is checked between attempts;
  an attempt already sent finishes first (at most the HTTP timeout below).
- MLflow's HTTP client retries every request itself, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (7) times with exponential
  backoff (waits of 0, 4, 8, ... 120 s) and a ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s) per attempt: about four
  minutes per call when a server is down. MLflow reads both variables at each request and has no per-call setting,
  so while one of our requests is in flight, and only then, :func:`bounded_http` sets
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and (except for artifact uploads, which may legitimately take long)
  ``MLFLOW_HTTP_REQUEST_TIMEOUT=15``. A variable the user set is never touched: their value then bounds each attempt.
- As with MLflow's own retries, a request the server carried out but whose answer was lost (a timeout) is sent
  again; a refused connection, the usual outage, never is.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dmh.errors import DmhError
from dmh.tracking.store import failure_reason, is_server, shown_uri

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0  # first wait after a failed write: a blip (a server worker restarting) costs about this much
RETRY_MAX_S = 15.0  # longest wait between attempts: how late a store that came back is noticed
DEADLINE_S = 300.0  # how long a run's start and end wait for the store: long enough for a server restart or failover
KILLED_DEADLINE_S = 10.0  # the same for a run stopped by a signal: schedulers give a short grace period
DEADLINE_ENV = "DMH_TRACKING_DEADLINE"
HTTP_TIMEOUT_S = 15  # per attempt; a healthy server answers a batch in well under a second, a busy SQLite one in ~5 s

# MLflow's per-request batch limits (mlflow.utils.validation): each queued write is one request, so that a request
# that failed can be resent without duplicating the part of a bigger batch that had got through.
MAX_METRICS_PER_REQUEST = 1000
MAX_PARAMS_TAGS_PER_REQUEST = 100
# MLflow error codes for "busy, try again": a locked SQLite database, rate limits.
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})

T = TypeVar("T")


class TrackingUnavailableError(DmhError):
    """The store stayed unreachable past the deadline. A ``DmhError`` so that the command line prints its one line
    (which names the store and what could not be written) instead of a traceback."""


def deadline_s() -> float:
    """``$DMH_TRACKING_DEADLINE`` if set, else ``DEADLINE_S``."""
    text = os.environ.get(DEADLINE_ENV)
    if not text:
        return DEADLINE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise DmhError(f"{DEADLINE_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether sending again later can succeed: the store was not reached, did not answer in time, answered with a
    server error or "busy". MLflow wraps the network error in its own exception, so the whole chain is searched.
    Anything else (an invalid value, a missing run, a full disk) is raised at once, as before."""
    import requests
    from mlflow.exceptions import MlflowException

    network = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
               requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError)
    for cause in _chain(exc):
        if isinstance(cause, network):
            return True
        if isinstance(cause, MlflowException) and cause.error_code in _TRANSIENT_CODES:
            return True
    return False


_BOUNDS_LOCK = threading.Lock()
_BOUNDS_HELD: dict[str, int] = {}  # the MLflow variables set by bounded_http, and how many requests hold each


@contextlib.contextmanager
def bounded_http(upload: bool = False) -> Iterator[None]:
    """MLflow's own HTTP retries off (and, unless ``upload``, a ``HTTP_TIMEOUT_S`` timeout) for the requests made
    inside, for variables the user has not set. The variables are process-wide while set: another thread's MLflow
    request made at that moment gets the same bounds."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    if not upload:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(HTTP_TIMEOUT_S)
    held = []
    with _BOUNDS_LOCK:
        for name, value in wanted.items():
            if name in _BOUNDS_HELD:
                _BOUNDS_HELD[name] += 1
            elif name not in os.environ:
                os.environ[name] = value
                _BOUNDS_HELD[name] = 1
            else:
                continue  # the user's setting
            held.append(name)
    try:
        yield
    finally:
        with _BOUNDS_LOCK:
            for name in held:
                _BOUNDS_HELD[name] -= 1
                if not _BOUNDS_HELD[name]:
                    del _BOUNDS_HELD[name]
                    os.environ.pop(name, None)


@dataclass
class _Write:
    """One store request, kept until it succeeds."""

    kind: str  # "metric value", "param", "tag" or "artifact": what ``count`` counts
    count: int
    send: Callable[[], None]


class StoreWriter:
    """The writes of one run, in order, surviving an outage of its store.

    ``log_batch`` and ``log_artifact`` never wait for the store (see the module docstring); ``call`` and ``flush``
    do, until a given time, and give up early when ``give_up()`` turns true (a signal arrived meanwhile).
    """

    def __init__(self, uri: str, deadline: float) -> None:
        self.uri = shown_uri(uri)  # only ever shown: the client is given the URI by the caller
        self.deadline = deadline
        self._server = is_server(uri)
        self._queue: collections.deque[_Write] = collections.deque()
        self._delay = 0.0
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self.last_error = ""
        self._scratch: Path | None = None

    # ----- writes that do not wait -----------------------------------------------------------------------------

    def log_batch(self, client: Any, run_id: str, metrics: Sequence[Any] = (), params: Sequence[Any] = (),
                  tags: Sequence[Any] = ()) -> None:
        """Metrics (``mlflow.entities.Metric``, timestamped by the caller), params and tags, in requests within
        MLflow's limits."""
        for kind, entities, size in (("param", params, MAX_PARAMS_TAGS_PER_REQUEST),
                                     ("tag", tags, MAX_PARAMS_TAGS_PER_REQUEST),
                                     ("metric value", metrics, MAX_METRICS_PER_REQUEST)):
            for start in range(0, len(entities), size):
                chunk = list(entities[start : start + size])
                self._submit(_Write(kind, len(chunk), lambda chunk=chunk, kind=kind: client.log_batch(
                    run_id, **{_BATCH_ARGUMENT[kind]: chunk})))

    def log_artifact(self, client: Any, run_id: str, local: Path, artifact_path: str | None,
                     owned: bool = False) -> None:
        """A file or folder into the run's artifacts. If it has to wait, a copy waits (the original may change, as
        a checkpoint does), unless ``owned``: a file in :meth:`scratch_file` that nobody else writes."""
        def write(path: Path) -> _Write:
            upload = client.log_artifacts if path.is_dir() else client.log_artifact
            return _Write("artifact", 1, lambda: upload(run_id, str(path), artifact_path))

        self._submit(write(local), later=lambda: write(local if owned else self._snapshot(local)))

    def scratch_file(self, name: str) -> Path:
        """A path named ``name`` in a fresh folder of this writer's own, removed by :meth:`close`."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="dmh-run-writes-"))
        return Path(tempfile.mkdtemp(dir=self._scratch)) / name

    # ----- writes that wait ------------------------------------------------------------------------------------

    def call(self, request: Callable[[], T], until: float, give_up: Callable[[], bool], doing: str) -> T:
        """``request()`` (one store request), retried while the failure is transient, until ``until``; then a
        ``TrackingUnavailableError`` naming the store and ``doing``."""
        while True:
            try:
                with self._bounds():
                    result = request()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._failed(exc)
                if not self._wait(until, give_up):
                    raise TrackingUnavailableError(f"{self.outage()}: {doing} failed (gave up after "
                                              f"{self.deadline:.0f} s)") from None
                continue
            self._recovered()
            return result

    def flush(self, until: float, give_up: Callable[[], bool]) -> bool:
        """Send every waiting write, retrying until ``until``; whether nothing is left waiting."""
        while not self._drain():
            if not self._wait(until, give_up):
                return False
        return True

    def unwritten(self) -> list[str]:
        """What is still waiting, e.g. ``["25 metric values", "2 artifacts"]``."""
        counts: dict[str, int] = {}
        for write in self._queue:
            counts[write.kind] = counts.get(write.kind, 0) + write.count
        return [f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items()]

    def outage(self) -> str:
        """``MLflow store URI unreachable for N s (reason)``, for messages."""
        down = 0.0 if self._down_since is None else time.monotonic() - self._down_since
        return f"MLflow store {self.uri} unreachable for {down:.0f} s ({self.last_error})"

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # ----- the queue -------------------------------------------------------------------------------------------

    def _submit(self, write: _Write, later: Callable[[], _Write] | None = None) -> None:
        if time.monotonic() >= self._next_attempt and self._drain():
            try:
                self._send(write)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._failed(exc)
        self._queue.append(later() if later is not None else write)

    def _drain(self) -> bool:
        """Send waiting writes in order until one fails; whether none is left."""
        sent = 0
        while self._queue:
            try:
                self._send(self._queue[0])
            except Exception as exc:
                if not is_transient(exc):
                    self._queue.popleft()  # it can never succeed: raise it, and keep the queue moving
                    raise
                self._failed(exc)
                return False
            self._queue.popleft()
            sent += 1
        self._recovered(sent)
        return True

    def _send(self, write: _Write) -> None:
        with self._bounds(upload=write.kind == "artifact"):
            write.send()

    def _bounds(self, upload: bool = False) -> contextlib.AbstractContextManager[None]:
        return bounded_http(upload) if self._server else contextlib.nullcontext()

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.last_error = failure_reason(exc)
        if self._down_since is None:
            self._down_since = now
            self._delay = RETRY_FIRST_S
            log.warning("MLflow store %s did not answer (%s): keeping this run's writes in order and retrying every "
                        "%g-%g s (the end of the run waits up to %g s)", self.uri, self.last_error, RETRY_FIRST_S,
                        RETRY_MAX_S, self.deadline)
        else:
            self._delay = min(self._delay * 2, RETRY_MAX_S)
        self._next_attempt = now + self._delay

    def _recovered(self, sent: int = 0) -> None:
        if self._down_since is None:
            return
        log.warning("MLflow store %s answers again after %.0f s: %d waiting write(s) sent", self.uri,
                    time.monotonic() - self._down_since, sent)
        self._down_since, self._delay, self._next_attempt = None, 0.0, 0.0

    def _wait(self, until: float, give_up: Callable[[], bool]) -> bool:
        """Sleep until the next attempt is due; False if ``until`` passes first or ``give_up()`` turns true."""
        while True:
            now = time.monotonic()
            if give_up() or now >= until:
                return False
            if now >= self._next_attempt:
                return True
            time.sleep(min(0.1, self._next_attempt - now, until - now))  # short naps: a signal is noticed quickly

    def _snapshot(self, local: Path) -> Path:
        copy = self.scratch_file(local.name)
        if local.is_dir():
            shutil.copytree(local, copy)
        else:
            shutil.copy2(local, copy)
        return copy


_BATCH_ARGUMENT = {"metric value": "metrics", "param": "params", "tag": "tags"}
