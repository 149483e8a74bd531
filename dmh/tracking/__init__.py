"""MLflow tracking: one run per training job, resumable, never left RUNNING.

Every reported number traces back to its settings: the resolved config as params (``a.b`` keys), the code and
machine as tags, the results as metrics and artifacts. Runs stay on this machine by default (``./mlflow.db`` and
``./mlruns``); ``MLFLOW_TRACKING_URI`` or ``tracking_uri=`` choose another store per run, so a Ray trial on a remote
worker can choose its store inside the trainable. Runs talk to ``mlflow.MlflowClient`` with explicit run ids, not
MLflow's fluent API, whose one global active run per process makes resuming a given run, or running several trials
in one worker, fragile.

Modules: ``store`` (where runs are stored), ``provenance`` (where a result came from), ``curves`` (the in-context
curve's artifacts), ``run`` (``TrackedRun``).

Layering: ``dmh.training`` opens its runs here, and the sweeps and ``analysis`` use the store helpers; this package
imports only ``dmh.errors``, ``dmh.vocabulary`` and the ``dmh`` package itself (for its version), never training,
model or evaluation code.
"""

from dmh.tracking.provenance import run_tags
from dmh.tracking.run import MAX_PARAM_VALUE_LENGTH, TRUNCATION_MARKER, RunInterrupted, TrackedRun, flatten_params
from dmh.tracking.store import default_tracking_uri, local_sqlite_path, open_client

__all__ = [
    "MAX_PARAM_VALUE_LENGTH",
    "TRUNCATION_MARKER",
    "RunInterrupted",
    "TrackedRun",
    "default_tracking_uri",
    "flatten_params",
    "local_sqlite_path",
    "open_client",
    "run_tags",
]
