"""MLflow tracking: one run per training job, resumable, never left RUNNING.

Every reported number traces back to its settings: the resolved config as params (``a.b`` keys), the code and
machine as tags, the results as metrics and artifacts. Runs stay on this machine by default (``./mlflow.db`` and
``./mlruns``); ``MLFLOW_TRACKING_URI`` or ``tracking_uri=`` choose another store per run, so a Ray trial on a remote
worker can choose its store inside the trainable. Runs talk to ``mlflow.MlflowClient`` with explicit run ids, not
MLflow's fluent API, whose one global active run per process makes resuming a given run, or running several trials
in one worker, fragile.

Before any work, ``dmh train``, ``dmh evaluate``, ``dmh report`` and every sweep run :func:`check_store` on the store
they will use: an MLflow server that is down, or a SQLite path that cannot be written, is one line naming the URI
within seconds (``store`` says what is checked for each kind of store). During a run, an outage of the store is
survived: writes wait in order and are retried with backoff while training goes on, and the end of the run waits
for the store up to ``$DMH_TRACKING_DEADLINE`` seconds (300 by default) before it gives up with one line naming the
store and how much could not be written (``outage`` has the numbers and MLflow's own retries, which it bounds).

Modules: ``store`` (where runs are stored, and whether they can be), ``provenance`` (where a result came from),
``curves`` (the in-context curve's artifacts), ``outage`` (writes that survive an unreachable store), ``run``
(``TrackedRun``).

Layering: ``dmh.training`` opens its runs here, and the sweeps and ``dmh.report`` use the store helpers; this package
imports only ``dmh.errors``, ``dmh.vocabulary`` and the ``dmh`` package itself (for its version), never training,
model or evaluation code.
"""

from dmh.tracking.outage import TrackingUnavailableError
from dmh.tracking.provenance import run_tags
from dmh.tracking.run import MAX_PARAM_VALUE_LENGTH, TRUNCATION_MARKER, RunInterrupted, TrackedRun, flatten_params
from dmh.tracking.store import check_store, default_tracking_uri, local_sqlite_path, open_client

__all__ = [
    "MAX_PARAM_VALUE_LENGTH",
    "TRUNCATION_MARKER",
    "RunInterrupted",
    "TrackedRun",
    "TrackingUnavailableError",
    "check_store",
    "default_tracking_uri",
    "flatten_params",
    "local_sqlite_path",
    "open_client",
    "run_tags",
]
