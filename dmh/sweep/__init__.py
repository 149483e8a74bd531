"""Ray Tune sweeps over ``dmh train``: what a sweep script needs to declare its grid and run it.

A script declares only its grid (algos × tasks × swept values × seeds, per preset) as a :class:`Sweep` and calls
:func:`main`::

    SWEEP = Sweep(name="c_sensitivity", description="DM-H with c in {1, 5, 10, 15, 20}",
                  grid=lambda args: product(["dmh"], ["darkroom-hard"], args.seeds, [{"c": c} for c in PAPER_C]))
    sys.exit(main(SWEEP))

Installed with dmh, so a script copied alone to a cluster's head node (``ray submit``) imports it there, and Ray
workers import the trainable from it. Modules, in the order a sweep uses them: ``declare`` (the grid), ``plan``
(the command line, and ``plan()``: every check before Ray starts), ``ray_session`` (joining or starting Ray),
``tuner`` (the run), ``trial`` (the trainable, on the workers), ``bookkeeping`` (the sweep's MLflow runs).
"""

import os

# Ray binds every interface and reports usage unless told otherwise; it reads these when it is imported or started,
# so they are set before any module of this package imports it. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 also stops Ray
# clients rewriting 127.0.0.1 to the machine's external address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from dmh.sweep.declare import DEFAULT_SEEDS, Sweep, SweepError, Trial, product
from dmh.sweep.plan import Plan, build_parser
from dmh.sweep.ray_session import connect_ray
from dmh.sweep.tuner import EXIT_BAD_ARGUMENTS, EXIT_INCOMPLETE, main, run, short_trial_dirname

__all__ = [
    "DEFAULT_SEEDS",
    "EXIT_BAD_ARGUMENTS",
    "EXIT_INCOMPLETE",
    "Plan",
    "Sweep",
    "SweepError",
    "Trial",
    "build_parser",
    "connect_ray",
    "main",
    "product",
    "run",
    "short_trial_dirname",
]
