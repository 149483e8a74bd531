"""The GPU check (benchmarks/gpu_check.py) cannot rot where no GPU is: its CPU rehearsal runs here, against a Python
made to look like the lent machine's, with the same carried-wheels install; its parts that need no process (the
architecture pin of mamba-ssm's sources, the result files, bad input) are checked directly. And dmh's kernel probe
asks for the compiled kernel module itself."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest

from benchmarks import gpu_check
from dmh.models import mamba as mamba_module

REPO = Path(__file__).resolve().parent.parent
RESULT_NAME = re.compile(r"[A-Za-z0-9._-]+")


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The carried folder: the checkout's if prepared, else prepared here (needs PyPI, about 30 MiB, ~15 s)."""
    if (gpu_check.DEFAULT_WHEELS / "pip-26.3-py3-none-any.whl").exists():
        return gpu_check.DEFAULT_WHEELS
    if not pypi_reachable():
        pytest.skip("no carried wheels here and PyPI is unreachable to prepare them")
    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--prepare", "--wheels", str(folder)], cwd=REPO,
                   check=True, capture_output=True, timeout=600)
    return folder


def check(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_the_rehearsal_runs_every_step_that_needs_no_gpu_and_counts_the_others(wheels, tmp_path):
    done = check("--rehearsal", "--wheels", str(wheels), "--out", str(tmp_path / "out"))
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.fullmatch(r"rehearsal: \d+ steps passed, \d+ need a GPU", last)
    assert last == "rehearsal: 9 steps passed, 5 need a GPU"  # a step dropped or added shows here
    results = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert results == sorted(gpu_check.RESULTS[:3])  # no kernel build log and no benchmark on a CPU
    summary = (tmp_path / "out" / gpu_check.SUMMARY).read_text().strip()
    assert summary.splitlines()[-1] == last and done.stdout.rstrip().endswith(summary)


def test_the_result_files_are_few_with_plain_names_most_important_first():
    assert len(gpu_check.RESULTS) <= 8 and all(RESULT_NAME.fullmatch(name) for name in gpu_check.RESULTS)
    assert [int(name.split("-")[0]) for name in gpu_check.RESULTS] == list(range(1, len(gpu_check.RESULTS) + 1))
    assert gpu_check.RESULTS[0] == gpu_check.SUMMARY


def test_a_result_file_over_the_limit_keeps_its_end(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "RESULT_LIMIT", 10)
    run = gpu_check.Check(True, tmp_path, tmp_path, tmp_path, io.StringIO())
    (tmp_path / gpu_check.LOG).write_text("0123456789the end!")
    gpu_check.write_results(run, "summary")
    assert (tmp_path / gpu_check.LOG).read_text() == "89the end!"


def test_the_whole_check_fits_in_one_ten_minute_call():
    assert gpu_check.SETUP_S + gpu_check.DEADLINE_S <= 600 - 30  # the summary and the transfers after it
    assert gpu_check.BUILD_BY_S < gpu_check.DEADLINE_S


def fake_sdist(folder: Path, setup: str) -> Path:
    archive = folder / "mamba_ssm-9.9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = setup.encode()
        info = tarfile.TarInfo("mamba_ssm-9.9.9/setup.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive


def test_mamba_ssms_sources_are_set_to_compile_for_the_gpus_architecture_only(tmp_path):
    setup = ('cc_flag = []\nif True:\n'
             '    cc_flag.append("-gencode")\n    cc_flag.append("arch=compute_80,code=sm_80")\n'
             '    cc_flag.append("-gencode")\n    cc_flag.append("arch=compute_90,code=sm_90")\n'
             "    if FORCE_CXX11_ABI:\n        pass\nresult = cc_flag\n")
    source = gpu_check.unpack_mamba_ssm(fake_sdist(tmp_path, setup), tmp_path / "src", "9.0")
    scope = {"FORCE_CXX11_ABI": False}
    exec((source / "setup.py").read_text(), scope)
    assert scope["result"] == ["-gencode", "arch=compute_90,code=sm_90"]


def test_a_setup_py_the_check_does_not_know_is_refused(tmp_path):
    with pytest.raises(gpu_check.CheckError, match="architectures cannot be set"):
        gpu_check.unpack_mamba_ssm(fake_sdist(tmp_path, "setup()\n"), tmp_path / "src", "9.0")


def test_the_rehearsals_python_has_the_images_packages_and_nothing_carried(tmp_path):
    found = gpu_check.emulate_lent_image(tmp_path / "image")
    python = str(tmp_path / "image" / "bin" / "python")
    assert found.startswith(python) and "torch " in found
    probe = "import importlib.util as u; print([m for m in {} if u.find_spec(m)])"
    seen = subprocess.run([python, "-c", probe.format(["torch", "pandas", "h5py", "gymnasium", "pytest", "yaml",
                                                        "ray", "mlflow", "dmh"])],
                          capture_output=True, text=True, check=True, cwd=tmp_path, env={"PYTHONNOUSERSITE": "1"})
    assert seen.stdout.strip() == "['torch', 'pandas', 'h5py']"


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    (["--wheels", "/nonexistent"], {}, "no pip-*.whl in /nonexistent: run python benchmarks/gpu_check.py --prepare"),
    (["--rehearsal"], {"GPU_CHECK_REHEARSAL": "yes"}, "GPU_CHECK_REHEARSAL must be 0 or 1, got 'yes'"),
    (["--prepare", "--rehearsal"], {}, "--prepare downloads and stops"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, env, message):
    done = check(*args, env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("gpu_check: error: ") and message in done.stderr


def test_a_step_with_bad_input_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check_steps", "train", "--device", "tpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("gpu_check_steps train: error: argument --device: invalid choice: 'tpu'")


# --- dmh's kernel probe ----------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_probe():
    mamba_module.mamba_ssm_available.cache_clear()
    yield mamba_module.mamba_ssm_available
    mamba_module.mamba_ssm_available.cache_clear()


def fake_mamba_ssm(monkeypatch, kernel: types.ModuleType | None) -> None:
    """mamba-ssm's Python side, importable as its main branch makes it: without the compiled kernel."""
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = lambda *args, **kwargs: None
    for name, module in (("mamba_ssm", types.ModuleType("mamba_ssm")), ("mamba_ssm.ops", types.ModuleType("ops")),
                         ("mamba_ssm.ops.selective_scan_interface", interface)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", kernel)  # None: import raises ImportError


def test_the_probe_says_no_when_only_the_python_side_of_mamba_ssm_imports(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=None)
    assert fresh_probe() is False


def test_the_probe_says_yes_when_the_kernel_module_imports_too(monkeypatch, fresh_probe):
    fake_mamba_ssm(monkeypatch, kernel=types.ModuleType("selective_scan_cuda"))
    assert fresh_probe() is True
