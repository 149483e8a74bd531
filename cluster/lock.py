"""The image's lock: every package cluster/Dockerfile installs beyond Ray's image, each at one version, resolved
together by pip against the package index and written to cluster/constraints.txt (pip's constraints format), which the
Dockerfile and onprem.yaml install with. Run from the repository root, with the package index reachable, on the
image's platform (Python 3.11, Linux x86_64):

    python cluster/lock.py            # resolve IMAGE and rewrite cluster/constraints.txt
    python cluster/lock.py --check    # resolve IMAGE under the lock: it must resolve, to exactly the lock (exit 0)

IMAGE pins what the image's kernel depends on: torch 2.10.0 (PyPI's Linux wheel, the CUDA 12.8 build; it requires
triton 3.6.0) with mamba-ssm 2.3.2.post1, which requires triton >= 3.5; the transformers mamba-ssm imports, at the
version benchmarks/gpu_check.py carries; Ray at the image's version. torch 2.8.0 cannot be paired with this
mamba-ssm (it requires triton 3.4.0): pip then replaces torch after mamba-ssm's kernel was built against it. A
prebuilt mamba-ssm kernel for torch 2.10 is expected in mamba-ssm's GitHub release (torch 2.9.1 and 2.10.0 are the
newest its release builds; there is none for 2.11); that release could not be read from here, and without it the
image compiles the kernel, which needs nvcc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "cluster" / "constraints.txt"
IMAGE = (
    "torch==2.10.0", "mamba-ssm==2.3.2.post1", "transformers==4.57.6", "ray[default,tune]==2.60.0",
    "setuptools", "wheel", "packaging", "ninja",  # mamba-ssm's build, without isolation, in the image
    "boto3", "google-api-python-client", "google-cloud-storage",  # the autoscaler's and MLflow's cloud clients
    ".[cuda,mujoco]",  # dmh itself (not pinned: the checkout is what the image installs)
)
HEADER = """\
# The image's lock, written by `python cluster/lock.py` (do not edit by hand): every package cluster/Dockerfile
# installs beyond Ray's image, resolved together for Python 3.11 on Linux x86_64 from
#   {requirements}
# `python cluster/lock.py --check` resolves them again under this file (tests/test_cluster_pins.py runs it).
"""


class LockError(Exception):
    """Bad input or the wrong platform: one line, exit 2."""


def resolve(constraints: Path | None = None) -> dict[str, str]:
    """IMAGE resolved by pip's own resolver (a dry run, nothing installed), under ``constraints`` if given: every
    package pip would install, name -> version (dmh excepted). mamba-ssm's setup.py imports torch and setuptools even to
    give its metadata, so it runs without build isolation, in this environment, with its CUDA build off."""
    with tempfile.TemporaryDirectory(prefix="dmh-lock-") as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
                   "--quiet", "--disable-pip-version-check", "--report", str(report), *IMAGE]
        if constraints is not None:
            command += ["--constraint", str(constraints)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "MAMBA_SKIP_CUDA_BUILD": "TRUE"})
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise LockError(f"pip could not resolve the image's requirements: {' '.join(errors) or done.stderr[-300:]}")
        installs = json.loads(report.read_text())["install"]
    return {normalized(i["metadata"]["name"]): i["metadata"]["version"] for i in installs
            if normalized(i["metadata"]["name"]) != "dmh"}


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """The lock's pins, name -> version."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalized(name)] = version
    return pins


def write_lock(pins: dict[str, str], path: Path = LOCK) -> None:
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    path.write_text(HEADER.format(requirements=" ".join(IMAGE)) + "\n".join(lines) + "\n")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="cluster/lock.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="resolve under the lock and compare, write nothing")
    args = parser.parse_args(argv)
    try:
        if sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64":
            raise LockError(f"the image is Python 3.11 on Linux x86_64, this is Python {platform.python_version()} "
                            f"on {platform.system()} {platform.machine()}")
        if args.check:
            pinned, resolved = read_lock(), resolve(LOCK)
            differ = sorted(name for name in pinned.keys() | resolved.keys()
                            if pinned.get(name) != resolved.get(name))
            for name in differ:
                print(f"{name}: lock {pinned.get(name, 'absent')}, resolved {resolved.get(name, 'absent')}")
            print(f"cluster/lock.py: {len(resolved)} packages resolved under the lock, "
                  + (f"{len(differ)} differ from it" if differ else "exactly the lock"))
            return 1 if differ else 0
        pins = resolve()
        write_lock(pins)
        print(f"cluster/lock.py: {len(pins)} packages pinned in {LOCK.relative_to(REPO)}")
        return 0
    except LockError as exc:
        print(f"cluster/lock.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
