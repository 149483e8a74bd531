"""Settings every test shares, in place before anything imports Ray."""

from __future__ import annotations

import os

import pytest

# Ray binds every interface and reports usage unless told otherwise, and reads these only when it is imported: set
# here, before any test module (or a warning filter naming a Ray class) imports it. dmh.sweep sets the same defaults.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_configure(config: pytest.Config) -> None:
    # Our calls of deprecated Ray APIs fail the tests, so API drift shows in CI. Added here rather than in
    # pyproject.toml: pytest resolves a filter's warning class while reading its configuration, which would import
    # Ray before the settings above.
    config.addinivalue_line("filterwarnings", "error::ray.util.annotations.RayDeprecationWarning")
