"""Where runs are stored: the default MLflow store, local SQLite paths, a client whose store is ready, and
:func:`check_store`, which every command runs before any work so that a store it cannot use costs seconds, not a
training run.

``check_store(uri, timeout)`` raises a one-line ``DmhError`` naming the URI and what failed, within about ``timeout``:

- ``http(s)://`` (an MLflow server): ``GET <uri>/health`` (MLflow's liveness endpoint, answered ``OK`` without
  authentication), sent once through MLflow's HTTP client, so that the user's TLS and proxy settings apply, and
  without MLflow's retry loop.
- ``sqlite:///path``: an existing database must open and read; a new one must be creatable, i.e. its folder, or the
  nearest folder above it that exists, takes a probe file (created and removed: nothing else is written).
- Other SQL databases (``postgresql://``, ``mysql://``, ``mssql://``): one connection and ``SELECT 1`` through
  SQLAlchemy; MLflow's schema migrations are left to the run.
- Anything else (``databricks``, ``file:`` and plain folders, plugin stores): ``search_experiments(max_results=1)``,
  in a daemon thread given up after ``timeout`` (the thread may finish later; it holds nothing).
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dmh.errors import DmhError

_SQL_SCHEMES = ("postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores besides SQLite


def quiet_mlflow_env() -> None:
    """Keep MLflow from phoning home (the network is closed on CI and clusters) unless the user decided otherwise."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite store ``./mlflow.db`` (absolute path) with artifacts in
    ``./mlruns``: MLflow's own default, spelled out so every process of a job agrees even if one changes directory."""
    quiet_mlflow_env()
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


def artifact_location(uri: str, experiment: str) -> str | None:
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
    # Imported here, not at the top: mlflow takes over a second to import, and every training process and CLI call
    # imports dmh.tracking, most of them without ever opening a store.
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


def shown_uri(uri: str) -> str:
    """``uri`` for messages and logs: a password in it (``postgresql://user:secret@host/db``) masked."""
    parts = urlparse(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def is_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow tracking server (reached over HTTP)."""
    return uri.startswith(("http://", "https://"))


def failure_reason(exc: BaseException) -> str:
    """A failed store request's root cause in a few words (MLflow wraps the network error in several layers)."""
    chain = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    import requests  # installed with mlflow, which is what raised

    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, TimeoutError | requests.exceptions.Timeout) for e in chain):
        return "no answer in time"
    text = str(chain[-1]).strip()
    return (text.splitlines()[0] if text else type(chain[-1]).__name__)[:200]


def check_store(uri: str, timeout: float = 10.0) -> None:
    """Prove that the store ``uri`` can be used, within about ``timeout`` seconds; a one-line ``DmhError`` naming
    the URI (a password in it masked) and what failed otherwise. What is checked for each kind of store is listed in
    the module docstring."""
    if is_server(uri):
        _check_server(uri, timeout)
        return
    db = local_sqlite_path(uri)
    if db is not None:
        _check_sqlite(uri, db, timeout)
        return
    scheme = urlparse(uri).scheme.split("+", 1)[0]
    _within(uri, timeout, _sql_select_one if scheme in _SQL_SCHEMES else _search_experiments)


def _check_server(uri: str, timeout: float) -> None:
    quiet_mlflow_env()
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=timeout)
    except Exception as exc:  # MLflow wraps every network failure in its own exception
        raise DmhError(f"MLflow tracking server {shown_uri(uri)} cannot be reached: GET /health failed "
                       f"({failure_reason(exc)}); is the server running?") from None
    if response.status_code != 200:
        raise DmhError(f"MLflow tracking server {shown_uri(uri)} answered GET /health with HTTP "
                       f"{response.status_code}: is this the URI of an MLflow server?")


def _check_sqlite(uri: str, db: Path, timeout: float) -> None:
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DmhError(f"MLflow store {uri} cannot be created: {folder} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dmh-write-probe-"):
            pass
    except OSError as exc:
        raise DmhError(f"MLflow store {uri} cannot be created or written: folder {folder} is not writable "
                       f"({exc.strerror or exc})") from None
    if db.exists():
        try:
            connection = sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=timeout)
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise DmhError(f"MLflow store {uri} cannot be opened: {exc}") from None


def _sql_select_one(uri: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


def _search_experiments(uri: str) -> None:
    quiet_mlflow_env()
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _within(uri: str, timeout: float, probe: Callable[[str], None]) -> None:
    """``probe(uri)`` in a daemon thread; a ``DmhError`` if it fails or is still running after ``timeout``."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            probe(uri)
        except BaseException as exc:  # reported to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="dmh-check-store", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DmhError(f"MLflow store {shown_uri(uri)} did not answer within {timeout:g} s")
    if failure:
        raise DmhError(f"MLflow store {shown_uri(uri)} cannot be used: {failure_reason(failure[0])}")
