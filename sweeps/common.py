"""The sweeps' former home, kept as the import path the tests use (``from sweeps import common``).

The machinery now lives in :mod:`dmh.sweep`, installed with dmh, so a script copied alone to a cluster's head node
(``ray submit``) finds it; sweep scripts import it from there. This module only re-exports what the tests reach for,
and routes :func:`main` through this module's :func:`connect_ray`, so that a test replacing ``common.connect_ray``
proves that bad arguments fail before Ray starts.
"""

from __future__ import annotations

from dmh.sweep import EXIT_INCOMPLETE, Sweep, build_parser, connect_ray, tuner
from dmh.sweep.plan import plan
from dmh.sweep.trial import TrialSession, run_trial

__all__ = ["EXIT_INCOMPLETE", "Sweep", "TrialSession", "build_parser", "connect_ray", "main", "plan", "run_trial"]


def main(sweep: Sweep, argv: list[str] | None = None) -> int:
    """:func:`dmh.sweep.main`, joining or starting Ray through ``connect_ray`` as this module holds it at call time."""
    return tuner.main(sweep, argv, connect=connect_ray)
