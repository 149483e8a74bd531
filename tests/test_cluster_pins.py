"""The cluster image installs what it claims: its lock (cluster/constraints.txt) pins a torch, triton and mamba-ssm
that resolve together, every config names the lock's Ray, nothing installs outside the lock, and the image's own
check (cluster/check_image.py) fails on the ABI mismatch the image used to build green with. The project's version
bounds cover what the code and the configs use."""

from __future__ import annotations

import importlib.util
import platform
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
DOCKERFILE = (CLUSTER / "Dockerfile").read_text()
ONPREM = yaml.safe_load((CLUSTER / "onprem.yaml").read_text())


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"cluster_{name}", CLUSTER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock_module, check_image = load("lock"), load("check_image")
LOCK = lock_module.read_lock()


def requirement(name: str, extra: str | None = None) -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return next(r for r in map(Requirement, listed) if r.name == name)


def test_the_lock_pins_a_torch_and_a_mamba_ssm_that_share_a_triton():
    assert (LOCK["torch"], LOCK["triton"], LOCK["mamba-ssm"]) == ("2.10.0", "3.6.0", "2.3.2.post1")
    assert Version(LOCK["triton"]) >= Version("3.5.0")  # mamba-ssm 2.3.x requires triton >= 3.5.0
    assert LOCK["transformers"] == "4.57.6"  # what benchmarks/gpu_check.py carries, so the check imports the same


def test_every_pin_the_lock_is_resolved_from_is_in_it_at_that_version():
    pinned = [Requirement(r) for r in lock_module.IMAGE if "==" in r]
    assert pinned and all(LOCK[lock_module.normalized(r.name)] == str(r.specifier)[2:] for r in pinned)


def test_the_image_and_every_config_run_the_locks_ray_which_the_project_allows():
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE, re.M)[1] == LOCK["ray"]
    cluster = next(d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
                   if d and d["kind"] == "RayCluster")
    assert cluster["spec"]["rayVersion"] == LOCK["ray"]
    assert requirement("ray").specifier.contains(LOCK["ray"])
    assert requirement("mlflow").specifier.contains(LOCK["mlflow"])


def test_no_install_in_the_image_or_on_prem_escapes_the_lock():
    """Every pip install after the lock is in place, and none names a version or an index of its own: the lock is
    the one place a version is chosen, so no install can replace torch or triton under mamba-ssm's kernel."""
    lines = DOCKERFILE.splitlines()
    constraint = lines.index("ENV PIP_CONSTRAINT=/home/ray/dmh/cluster/constraints.txt")
    installs = [i for i, line in enumerate(lines) if "pip install" in line]
    assert installs and min(installs) > constraint
    onprem = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in ONPREM[key]]
    assert any("PIP_CONSTRAINT=$HOME/dmh/cluster/constraints.txt" in c for c in onprem[:1])
    for command in [lines[i] for i in installs] + [c for c in onprem if "pip install" in c]:
        assert "==" not in command and "--index-url" not in command, command
    assert "MAMBA_KEEP_CUDA_BUILD" not in DOCKERFILE + (CLUSTER / "onprem.yaml").read_text()  # not in mamba-ssm 2.3


def test_the_image_and_on_prem_end_with_the_images_own_check():
    assert DOCKERFILE.rstrip().splitlines()[-1] == "RUN python /home/ray/dmh/cluster/check_image.py"
    setup = ONPREM["setup_commands"]
    check = setup.index("python ~/dmh/cluster/check_image.py")
    assert check > max(i for i, command in enumerate(setup) if "pip install" in command)


def test_the_projects_bounds_cover_what_the_code_and_the_configs_use():
    configs = "".join((CLUSTER / name).read_text() for name in ("cluster.yaml", "gcp.yaml", "onprem.yaml"))
    assert "RAY_AUTH_MODE=token" in configs and requirement("ray").specifier.contains("2.52.0")
    assert not requirement("ray").specifier.contains("2.51.1")
    assert not requirement("ray").specifier.contains("2.61.0")  # token auth on for every cluster, local ones too
    assert "--allowed-hosts" in (CLUSTER / "kuberay" / "mlflow.yaml").read_text()
    assert not requirement("mlflow").specifier.contains("3.4.9") and requirement("mlflow").specifier.contains("3.5.0")
    mamba = requirement("mamba-ssm", "cuda").specifier
    assert mamba.contains("2.3.2.post1") and not mamba.contains("2.4.0")


# --- the image's own check -------------------------------------------------------------------------------------------

def test_the_image_check_fails_on_a_kernel_built_against_another_torch_where_finding_its_file_passed(
        tmp_path, monkeypatch):
    (tmp_path / "selective_scan_cuda.py").write_text(
        'raise ImportError("/opt/site/selective_scan_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: '
        '_ZN3c104cuda9SetDeviceEi")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "selective_scan_cuda", raising=False)
    assert importlib.util.find_spec("selective_scan_cuda") is not None  # what the image's check used to ask
    with pytest.raises(check_image.ImageError, match=r"selective_scan_cuda does not import: ImportError: .*undefined"):
        check_image.check_kernel()


def test_the_image_check_fails_when_torch_is_not_the_locks_build(tmp_path):
    with pytest.raises(check_image.ImageError, match=f"torch is {re.escape(torch.__version__)}, the lock"):
        check_image.check_versions()  # this machine's CPU torch is not the image's
    local_tag_dropped = tmp_path / "constraints.txt"
    local_tag_dropped.write_text(f"torch=={torch.__version__.split('+')[0]}\ntriton==3.6.0\nmamba-ssm==2.3.2.post1\n")
    if "+" in torch.__version__:  # the same version from another index is another build
        with pytest.raises(check_image.ImageError, match="torch is"):
            check_image.check_versions(local_tag_dropped)


def test_the_image_check_without_a_gpu_says_the_scan_was_not_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_image.check_scan_on_the_gpu().startswith("no GPU visible")


@pytest.mark.parametrize("script", ["check_image.py", "lock.py"])
def test_bad_input_to_the_cluster_scripts_is_one_line_and_exit_2(script):
    done = subprocess.run([sys.executable, f"cluster/{script}", "--bogus"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert re.match(r"(check_image|cluster/lock\.py): error: ", done.stderr)


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not pypi_reachable(), reason="the package index is unreachable")
@pytest.mark.skipif((sys.version_info[:2], platform.machine()) != ((3, 11), "x86_64"),
                    reason="the lock is resolved for the image's Python 3.11 on x86_64")
def test_the_images_requirements_resolve_under_the_lock_to_exactly_the_lock():
    """pip's resolver against the index (pip install --dry-run), nothing installed: ~1-2 minutes of metadata."""
    done = subprocess.run([sys.executable, "cluster/lock.py", "--check"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("exactly the lock")
