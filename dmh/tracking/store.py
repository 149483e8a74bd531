"""Where runs are stored: the default MLflow store, local SQLite paths, and a client whose store is ready."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


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
