"""Settings every test shares, in place before anything imports Ray."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test in its own folder: its own MLflow store (./mlflow.db), runs/ and shared data cache (modules with
    other needs, such as the sweeps', define their own)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DMH_DATA_DIR", str(tmp_path.parent / "dmh-test-data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def sweep_workdir(tmp_path, tmp_path_factory, monkeypatch):
    """For tests that run sweeps: each in its own folder (its own ./mlflow.db and ./sweep_results), no Ray address
    inherited, smoke datasets cached across tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DMH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "sweep-data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray for the module, bound to 127.0.0.1; sweeps run in-process reuse it."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2,
             log_to_driver=False)
    yield ray
    ray.shutdown()
