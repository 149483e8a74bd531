"""Where a result came from: the git commit of the dmh checkout, the host, the device and the library versions."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import dmh

# The folder that holds the ``dmh`` package: dmh/tracking/provenance.py -> dmh/tracking -> dmh -> the checkout.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_tags() -> dict[str, str]:
    """Commit of the dmh source tree, only when dmh itself is the checkout (an installed copy inside some other
    repository must not report that repository's commit)."""
    toplevel = _git(["rev-parse", "--show-toplevel"], _SOURCE_ROOT)
    if toplevel is None or Path(toplevel).resolve() != _SOURCE_ROOT:
        return {"git_commit": "unknown"}
    commit = _git(["rev-parse", "HEAD"], _SOURCE_ROOT)
    if commit is None:
        return {"git_commit": "unknown"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], _SOURCE_ROOT)
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit}  # the second is what the MLflow UI shows
    if status is not None:
        tags["git_dirty"] = "true" if status else "false"
    return tags


def _describe_device(device: str | None) -> tuple[str, str]:
    """(device, torch version). torch is imported only here: it is slow to import, and tracking must keep working in
    processes that never train (sweep drivers, the report) and in environments without torch."""
    try:
        import torch
    except ImportError:
        return (device or "cpu"), "not installed"
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        device = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device, torch.__version__


def run_tags(device: str | None = None) -> dict[str, str]:
    """Where a result came from: git commit (``unknown`` outside a checkout), host, device, dmh and torch versions.

    ``device`` is what the trainer runs on (``"cpu"``, ``"cuda:1"``); by default the first GPU if there is one.
    Never raises: a missing git or torch must not stop a training run.
    """
    device_name, torch_version = _describe_device(device)
    return {
        **_git_tags(),
        "host": socket.gethostname(),
        "device": device_name,
        "dmh_version": dmh.__version__,
        "torch_version": torch_version,
    }
