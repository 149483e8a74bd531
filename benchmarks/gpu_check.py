"""The GPU check: every CUDA path of dmh on a lent GPU machine, in one call of at most 10 minutes, without network;
and its CPU rehearsal, the same script run here.

    python benchmarks/gpu_check.py --prepare   # here, once (needs PyPI): the carried wheels into .gpu_check_wheels/
    bash benchmarks/gpu_check.sh               # on the GPU machine, with .gpu_check_wheels/ carried: results in $OUT
    bash benchmarks/gpu_check.sh --rehearsal   # here: every step that needs no CUDA, on the CPU

The machine it is written for: python3 (3.12) with its own CUDA torch, triton, pandas and h5py, nvcc, 16 cores, and
no network at all (no package index either); none of Ray, MLflow, gymnasium, pytest or mamba-ssm. So nothing here
imports Ray or MLflow, and what the steps need beyond that image travels as wheels in one ignored folder (CARRIED;
about 30 MiB, within the 64 MiB a call may carry with the working tree), installed with pip run from its own wheel
into a scratch target on PYTHONPATH. mamba-ssm has no wheel for that torch and its setup.py would first download one
from GitHub, so its source archive is carried and compiled with MAMBA_FORCE_BUILD=TRUE for the machine's GPU
architecture only, in the background, while every step that needs no kernel runs:

    setup (at most SETUP_S s): install the carried wheels; torch sees the GPU (its architecture, for the build)
    then, each step within its own cap and all within DEADLINE_S s after setup:
      mamba-ssm sources unpacked and set to one architecture; its build starts in the background (MAX_JOBS = cores)
      nvidia-smi; versions; mamba-ssm's Python imports; the CUDA tests that need no kernel (pytest -m cuda);
      a short paper-preset training of every algorithm on CUDA through the library, evaluated online on CUDA;
      the online benchmark, quick, on CUDA
      the build finished (by BUILD_BY_S s); mamba-ssm's parity tests, where a skip is a failure; the Mamba
      algorithms trained on mamba-ssm's kernel

Results in $OUT (default /tmp/gpu_check), most important first, RESULTS; the summary is also the last screen of
the output. Exit status: 0 every step passed, 1 one did not, 2 bad input or no CUDA device.

The rehearsal (--rehearsal, or GPU_CHECK_REHEARSAL=1) runs the same script on this CPU machine against a Python made
to look like the lent one (this environment's torch, pandas and h5py and what they require, nothing else), with the
same carried-wheels install into a scratch target; a step that needs CUDA runs its CPU stand-in where it has one (the
training on the smoke preset, the tests collected, the benchmark's imports) and is otherwise counted. It ends with
`rehearsal: N steps passed, M need a GPU`.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata as md
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WHEELS = REPO / ".gpu_check_wheels"  # ignored by git; carried to the GPU machine
DEFAULT_OUT = Path(os.environ.get("OUT") or "/tmp/gpu_check")

# --- the lent machine, and what is carried to it -------------------------------------------------------------------
LENT_IMAGE = ("torch", "triton", "pandas", "h5py")  # what its python3 has (with what they require)
LENT_WHEEL_TAGS = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                   "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                   "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
CARRIED = (
    # pip itself, run from its wheel (the image's python3 may have none), and mamba-ssm's build requirements
    "pip==26.3", "setuptools==84.2.1", "wheel==0.48.0", "packaging==26.4", "ninja==1.13.2",
    # dmh beyond torch, numpy and h5py
    "gymnasium==1.4.0", "cloudpickle==3.1.3", "farama-notifications==0.0.6", "pyyaml==6.0.4", "tqdm==4.70.1",
    # the tests
    "pytest==9.2.0", "pluggy==1.7.0", "iniconfig==2.3.1", "pygments==2.21.0",
    # what importing mamba-ssm needs (benchmarks/gpu_check_steps.py: MAMBA_SSM_IMPORTS)
    "einops==0.8.2", "transformers==4.57.6", "huggingface-hub==0.36.2", "tokenizers==0.22.2", "safetensors==0.8.0",
    "regex==2026.12.2", "requests==2.34.2", "urllib3==2.8.0", "idna==3.21", "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3", "hf-xet==1.8.0",
)
MAMBA_SSM = "mamba-ssm==2.3.2.post1"  # source only on the package index; compiled on the GPU machine
CARRY_LIMIT = 64 * 2**20  # what one call carries: the working tree and the ignored paths named, together

# --- time and results ----------------------------------------------------------------------------------------------
SETUP_S = 90  # installing the carried wheels and asking torch for the GPU
DEADLINE_S = 480  # every step after setup ends by then: with setup, 570 s, inside a 10-minute call
BUILD_BY_S = 330  # the kernel build must be done by then, leaving the parity tests and the kernel training 150 s
RESULT_LIMIT = 16 * 2**20  # bytes per result file (a longer log keeps its end)
SUMMARY, STEPS, LOG, BUILD_LOG, BENCH_JSON, BENCH_CSV = RESULTS = (
    "1-summary.txt", "2-steps.json", "3-check.log", "4-mamba-build.log", "5-bench-online.json", "6-bench-online.csv")
REHEARSAL_ARCH = "9.0"  # the architecture a rehearsal sets mamba-ssm's sources to (the H100's and H200's)
# The test files whose CUDA tests need no mamba-ssm kernel and that collect without Ray and MLflow. The CUDA tests
# of tests/test_training.py cannot be collected here (that module imports MLflow); the training steps cover them.
CUDA_TESTS = ("tests/test_evaluation.py", "tests/test_benchmarks.py", "tests/models")
PARITY_TESTS = "tests/models/test_models_cuda_parity.py"
# mamba-ssm 2.3.2.post1's setup.py lists 6 to 9 GPU architectures; the line that follows them, before which the
# check pins the list to one.
ARCH_ANCHOR = "    if FORCE_CXX11_ABI:\n"


class CheckError(Exception):
    """Bad input or a missing prerequisite: one line, exit 2."""


@dataclass
class Outcome:
    """One step's result, as the summary and 2-steps.json give it."""

    name: str
    status: str  # PASS, FAIL, SKIP (no time left: a failure), GPU (a rehearsal: needs a GPU)
    seconds: float = 0.0
    detail: str = ""  # why it failed, or what it found
    tail: list[str] = field(default_factory=list)  # its output's last lines

    def line(self) -> str:
        """One summary line: what passed says how long it took (what it found is in 2-steps.json), the rest why."""
        took = f" ({self.seconds:.0f} s)" if self.status in ("PASS", "FAIL") else ""
        why = f": {self.detail}" if self.detail and self.status != "PASS" else ""
        return f"{self.status:4}  {self.name}{took}{why}"


class Check:
    """One run of the check (or of its rehearsal): the clock, the scratch folders, the steps' outcomes, the log."""

    def __init__(self, rehearsal: bool, out: Path, wheels: Path, work: Path, log: TextIO) -> None:
        self.rehearsal, self.out, self.wheels, self.work, self.log = rehearsal, out, wheels, work, log
        self.site, self.mamba_site = work / "site", work / "site-mamba"  # carried wheels; the built kernel
        self.python = sys.executable  # the lent machine's python3; in a rehearsal, the image made to look like it
        self.outcomes: list[Outcome] = []
        self.began = time.monotonic()
        self.clock = self.began  # the deadline counts from the end of setup
        self.build: subprocess.Popen | None = None
        self.gpu = ""  # what torch calls the GPU, for the summary

    # --- time -------------------------------------------------------------------------------------------------
    def left(self, by: float = DEADLINE_S) -> float:
        """Seconds until ``by`` seconds after setup (during setup, until setup's own end)."""
        if self.clock == self.began:
            return SETUP_S - (time.monotonic() - self.began)
        return by - (time.monotonic() - self.clock)

    def start_clock(self) -> None:
        self.clock = time.monotonic()

    # --- steps ------------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def record(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome

    def env(self, *sites: Path, **extra: str) -> dict[str, str]:
        """The steps' environment: the carried packages (and ``sites``) before the checkout on PYTHONPATH, no user
        site-packages, no pip configuration of this machine, Hugging Face's libraries offline (mamba-ssm imports
        them), scratch folders for data and temporary files."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "OUT")}
        env.update(PYTHONPATH=os.pathsep.join(map(str, [*sites, self.site, REPO])), PYTHONNOUSERSITE="1",
                   PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", PIP_CONFIG_FILE=os.devnull, HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1",
                   PATH=f"{self.site / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
                   DMH_DATA_DIR=str(self.work / "data"), TMPDIR=str(self.work / "tmp"), **extra)
        return env

    def step(self, name: str, cap: float, argv: list[str], env: dict[str, str] | None = None,
             by: float = DEADLINE_S) -> Outcome:
        """Run ``argv`` for at most ``cap`` seconds and never past ``by`` seconds after setup."""
        limit = min(cap, self.left(by))
        if limit <= 0:
            return self.record(Outcome(name, "SKIP", detail="no time left before the deadline"))
        self.say(f"\n=== {name} (limit {limit:.0f} s) ===")
        began = time.monotonic()
        status, tail = run(argv, limit, env or self.env(), self.log)
        seconds = time.monotonic() - began
        if status == 0:
            return self.record(Outcome(name, "PASS", seconds, tail=tail))
        why = f"timed out after {limit:.0f} s" if status is None else f"exit {status}"
        return self.record(Outcome(name, "FAIL", seconds, f"{why}; {tail[-1] if tail else 'no output'}", tail))

    def call(self, name: str, body: Callable[[], str]) -> Outcome:
        """An in-process step (no subprocess): ``body`` returns what it found, or raises CheckError."""
        self.say(f"\n=== {name} ===")
        began = time.monotonic()
        try:
            found = body()
        except (CheckError, OSError, tarfile.TarError) as exc:
            self.say(f"failed: {exc}")
            return self.record(Outcome(name, "FAIL", time.monotonic() - began, str(exc)))
        self.say(found)
        return self.record(Outcome(name, "PASS", time.monotonic() - began, found))

    def needs_gpu(self, name: str) -> Outcome:
        """A step that has no CPU stand-in, in a rehearsal: counted, not run."""
        return self.record(Outcome(name, "GPU", detail="needs a GPU"))

    def steps_module(self, *args: str) -> list[str]:
        return [self.python, "-m", "benchmarks.gpu_check_steps", *args]

    def pip(self, *args: str) -> list[str]:
        """pip run from its carried wheel, offline."""
        return [self.python, str(carried(self.wheels, "pip-*.whl") / "pip"), *args, "--no-index", "--find-links",
                str(self.wheels), "--disable-pip-version-check", "--no-input"]


def run(argv: list[str], limit: float, env: dict[str, str], log: TextIO) -> tuple[int | None, list[str]]:
    """``argv`` in its own process group, its output copied to stdout and ``log`` as it comes; stopped (the whole
    group) after ``limit`` seconds. Returns the exit status (None: timed out) and the output's last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=30)
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", start_new_session=True)

    def pump() -> None:
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            if line.strip():
                tail.append(line.rstrip()[:300])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status: int | None = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(process)
        status = None
    reader.join(timeout=10)
    sys.stdout.flush()
    return status, list(tail)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to ``process``'s group (it was started in a session of its own), SIGKILL 10 s later if needed."""
    for signum, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- the carried folder ----------------------------------------------------------------------------------------------
def carried(wheels: Path, pattern: str) -> Path:
    """The one file of ``wheels`` matching ``pattern`` (the newest by name if several)."""
    found = sorted(wheels.glob(pattern))
    if not found:
        raise CheckError(f"no {pattern} in {wheels}: run python benchmarks/gpu_check.py --prepare here first")
    return found[-1]


def prepare(wheels: Path) -> int:
    """Download CARRIED for the lent machine and for this one (the rehearsal installs them too) and mamba-ssm's source
    archive into ``wheels``. Needs the package index; run here, never on the GPU machine."""
    wheels.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
                "--dest", str(wheels)]
    subprocess.run([*download, "--only-binary=:all:", *LENT_WHEEL_TAGS, *CARRIED], check=True)
    subprocess.run([*download, "--only-binary=:all:", *CARRIED], check=True)
    # mamba-ssm's setup.py imports torch and setuptools even to say its name: pip asks it without build isolation,
    # with setuptools and wheel from the wheels just downloaded and this environment's torch, and the CUDA build off.
    with tempfile.TemporaryDirectory(prefix="gpu_check_prepare-") as build_tools:
        pins = [pin for pin in CARRIED if pin.split("==")[0] in ("setuptools", "wheel", "packaging")]
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                        "--find-links", str(wheels), "--no-deps", "--target", build_tools, *pins], check=True)
        env = {**os.environ, "PYTHONPATH": build_tools, "MAMBA_SKIP_CUDA_BUILD": "TRUE"}
        subprocess.run([*download, "--no-binary=:all:", "--no-build-isolation", MAMBA_SSM], check=True, env=env)
    size = sum(f.stat().st_size for f in wheels.iterdir())
    print(f"gpu_check: {len(list(wheels.iterdir()))} files, {size / 2**20:.1f} MiB in {wheels} "
          f"(with the working tree at most {CARRY_LIMIT // 2**20} MiB travel with a call)")
    if size > CARRY_LIMIT:
        raise CheckError(f"{wheels} holds {size / 2**20:.1f} MiB, more than one call carries")
    return 0


def requirement_names(dist: md.Distribution) -> Iterator[str]:
    """The distributions ``dist`` requires outside any extra (its markers otherwise taken as true)."""
    for requirement in dist.requires or ():
        name, _, marker = requirement.partition(";")
        if "extra" not in marker:
            yield re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()).group()


def emulate_lent_image(into: Path) -> str:
    """A Python that looks like the lent machine's python3: a virtual environment without pip whose site-packages
    holds links to LENT_IMAGE's distributions in this environment and to those they require, and nothing else."""
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(into)
    python = into / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    todo, seen, linked = list(LENT_IMAGE), set(), []
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # triton is not on a CPU machine, for instance
        linked.append(f"{name} {dist.version}")
        todo += requirement_names(dist)
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    if not any(entry.startswith("torch ") for entry in linked):
        raise CheckError(f"{sys.executable} has no torch to rehearse with: run the rehearsal from the project's "
                         "environment (. .venv/bin/activate)")
    return f"{python}: {', '.join(sorted(linked))}"


def unpack_mamba_ssm(sdist: Path, into: Path, arch: str) -> Path:
    """mamba-ssm's sources from its archive, its setup.py set to compile for ``arch`` (e.g. "9.0") only."""
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    setup = into / sdist.name.removesuffix(".tar.gz") / "setup.py"
    text = setup.read_text()
    if text.count(ARCH_ANCHOR) != 1:
        raise CheckError(f"{setup} does not read as mamba-ssm 2.3.x's: its GPU architectures cannot be set")
    sm = arch.replace(".", "")
    pinned = f'    cc_flag = ["-gencode", "arch=compute_{sm},code=sm_{sm}"]  # benchmarks/gpu_check.py: one GPU\n'
    setup.write_text(text.replace(ARCH_ANCHOR, pinned + ARCH_ANCHOR))
    compile(setup.read_text(), str(setup), "exec")  # still Python
    return setup.parent


# --- the check -------------------------------------------------------------------------------------------------------
def the_check(check: Check) -> int:
    """Setup, then every step in order (module docstring); returns the exit status."""
    rehearsal = check.rehearsal
    sdist = carried(check.wheels, "mamba_ssm-*.tar.gz")
    if rehearsal:
        image = check.call("an image like the lent machine's python3 (torch, pandas, h5py and what they need)",
                           lambda: emulate_lent_image(check.work / "image"))
        if image.status != "PASS":
            return 1
        check.python = str(check.work / "image" / "bin" / "python")
    install = check.step("install the carried wheels into a scratch target (pip from its wheel, no index)", SETUP_S,
                         check.pip("install", "--no-deps", "--only-binary=:all:", "--no-compile", "--target",
                                   str(check.site), "--quiet", *CARRIED))
    if install.status != "PASS":
        return 1
    arch = REHEARSAL_ARCH
    if rehearsal:
        check.needs_gpu("torch sees the GPU")
    else:
        seen = check.step("torch sees the GPU", SETUP_S, [check.python, "-c", (
            "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} (CUDA {torch.version.cuda}) "
            "sees no CUDA device'; p = torch.cuda.get_device_properties(0); print(p.major, p.minor, p.name)")])
        if seen.status != "PASS":
            return 2
        major, minor, check.gpu = seen.tail[-1].split(" ", 2)
        arch = f"{major}.{minor}"
    check.start_clock()

    sources = check.call(f"mamba-ssm's sources, set to compile for sm_{arch.replace('.', '')} only",
                         lambda: str(unpack_mamba_ssm(sdist, check.work / "mamba-src", arch)))
    # mamba-ssm built by pip from its sources, offline, against the torch installed (no build isolation), into a
    # target of its own that only the kernel steps put on PYTHONPATH
    build = check.pip("install", "--no-deps", "--no-build-isolation", "--target", str(check.mamba_site), "-v",
                      sources.detail)
    if rehearsal:
        check.step("mamba-ssm's package built offline from its sources: its Python side only (MAMBA_SKIP_CUDA_BUILD)",
                   120, build, env=check.env(MAMBA_FORCE_BUILD="TRUE", MAMBA_SKIP_CUDA_BUILD="TRUE"))
        check.needs_gpu("mamba-ssm's kernel compiled (in the background)")
    elif sources.status == "PASS":
        cores = str(os.cpu_count() or 1)
        build_env = check.env(MAMBA_FORCE_BUILD="TRUE", MAX_JOBS=cores, TORCH_CUDA_ARCH_LIST=arch)
        check.say(f"mamba-ssm: compiling in the background, MAX_JOBS={cores}, log in {BUILD_LOG}")
        with (check.work / BUILD_LOG).open("w") as build_log:  # the child keeps its own copy of the descriptor
            check.build = subprocess.Popen(build, cwd=check.work, env=build_env, stdout=build_log,
                                           stderr=subprocess.STDOUT, start_new_session=True)

    if rehearsal:
        check.needs_gpu("nvidia-smi")
    else:
        check.step("nvidia-smi", 20, ["nvidia-smi"])
    check.step("versions: python, torch, its CUDA, the GPU, the packages", 60, check.steps_module("versions"))
    check.step("mamba-ssm's Python imports beyond torch and triton", 90, check.steps_module("mamba-imports"))
    if rehearsal:
        check.step("CUDA tests that need no kernel: collected without Ray and MLflow", 90,
                   check.steps_module("pytest", "--collect-only", "--", "-m", "cuda", *CUDA_TESTS,
                                      f"--ignore={PARITY_TESTS}"))
        check.step("every algorithm trained through the library and evaluated online: smoke preset, on the CPU", 120,
                   check.steps_module("train", "--device", "cpu", "--preset", "smoke", "--backend", "torch",
                                      "--steps", "2", "--data-steps", "30000", "--work", str(check.work)))
        check.step("the online benchmark imports (it runs on CUDA on the GPU machine)", 60,
                   [check.python, "-m", "benchmarks", "--help"])
    else:
        check.step("CUDA tests that need no kernel (pytest -m cuda; a skip fails)", 180,
                   check.steps_module("pytest", "--", "-m", "cuda", *CUDA_TESTS, f"--ignore={PARITY_TESTS}"))
        check.step("every algorithm trained on CUDA through the library: paper preset, 20 updates, mamba_backend "
                   "torch, then evaluated online on CUDA", 200,
                   check.steps_module("train", "--device", "cuda", "--preset", "paper", "--backend", "torch",
                                      "--work", str(check.work)))
        bench = check.step("the online benchmark, quick, --device cuda", 150,
                           [check.python, "-m", "benchmarks", "--quick", "--only", "online", "--device", "cuda",
                            "--out", str(check.work / "bench")])
        if bench.status == "PASS":
            shutil.copy(check.work / "bench" / "results.json", check.out / BENCH_JSON)
            shutil.copy(check.work / "bench" / "results.csv", check.out / BENCH_CSV)

    if rehearsal:
        for name in ("mamba-ssm's parity tests (a skip fails)", "the Mamba algorithms trained on mamba-ssm's kernel"):
            check.needs_gpu(name)
        return 0 if all(o.status in ("PASS", "GPU") for o in check.outcomes) else 1
    built = wait_for_build(check)
    kernel = check.env(check.mamba_site)
    if built.status == "PASS":
        check.step("mamba-ssm's parity tests (a skip fails)", 90,
                   check.steps_module("pytest", "--", PARITY_TESTS), env=kernel)
        check.step("the Mamba algorithms trained on mamba-ssm's kernel: paper preset, 20 updates, mamba_backend "
                   "cuda", 90, check.steps_module("train", "--device", "cuda", "--preset", "paper", "--backend",
                                                  "cuda", "--mamba-only", "--work", str(check.work)), env=kernel)
    return 0 if all(o.status == "PASS" for o in check.outcomes) else 1


def wait_for_build(check: Check) -> Outcome:
    """The background build, waited for until BUILD_BY_S s after setup (and stopped then)."""
    name = "mamba-ssm's kernel compiled (in the background)"
    if check.build is None:
        return check.record(Outcome(name, "FAIL", detail="not started: its sources were not ready"))
    check.say(f"\n=== {name} (waiting at most {max(0.0, check.left(BUILD_BY_S)):.0f} s more) ===")
    try:
        status = check.build.wait(timeout=max(0.0, check.left(BUILD_BY_S)))
    except subprocess.TimeoutExpired:
        stop(check.build)
        status = None
    tail = tail_of(check.work / BUILD_LOG)
    for line in tail[-10:]:
        check.say(line)
    seconds = time.monotonic() - check.clock  # the build started with the clock
    if status == 0:
        return check.record(Outcome(name, "PASS", seconds, tail=tail))
    why = f"not done {BUILD_BY_S} s after setup" if status is None else f"exit {status}"
    return check.record(Outcome(name, "FAIL", seconds, f"{why}; see {BUILD_LOG}", tail))


def tail_of(path: Path, lines: int = 30) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        return [line[:300] for line in f.read().decode(errors="replace").splitlines() if line.strip()][-lines:]


def summary(check: Check, status: int) -> str:
    """The last screen of the output and 1-summary.txt."""
    took = time.monotonic() - check.began
    setup = (check.clock if check.clock != check.began else time.monotonic()) - check.began  # ended in setup: all
    where = "a CPU rehearsal" if check.rehearsal else (check.gpu or "no GPU")
    lines = [f"=== gpu_check summary: {took:.0f} s (setup {setup:.0f} s) on {where}; results in {check.out} ===",
             *(o.line() for o in check.outcomes)]
    counts = collections.Counter(o.status for o in check.outcomes)
    failed = counts["FAIL"] + counts["SKIP"]
    if check.rehearsal:
        lines.append(f"rehearsal: {counts['PASS']} steps passed, " + (f"{failed} failed, " if failed else "")
                     + f"{counts['GPU']} need a GPU")
    else:
        lines.append(f"gpu_check: {counts['PASS']} steps passed, {failed} failed (exit {status})")
    return "\n".join(lines)


def write_results(check: Check, text: str) -> None:
    """RESULTS into ``check.out``, each within RESULT_LIMIT bytes (a longer file keeps its end)."""
    (check.out / SUMMARY).write_text(text + "\n")
    (check.out / STEPS).write_text(json.dumps([asdict(o) for o in check.outcomes], indent=1) + "\n")
    build_log = check.work / BUILD_LOG
    if build_log.exists():
        shutil.copy(build_log, check.out / BUILD_LOG)
    for name in RESULTS:
        path = check.out / name
        if path.exists() and path.stat().st_size > RESULT_LIMIT:
            with path.open("rb") as f:
                f.seek(path.stat().st_size - RESULT_LIMIT)
                end = f.read()
            path.write_bytes(end)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"gpu_check: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--rehearsal", action="store_true", default=os.environ.get("GPU_CHECK_REHEARSAL") == "1",
                        help="run the CPU rehearsal here (also GPU_CHECK_REHEARSAL=1)")
    parser.add_argument("--prepare", action="store_true", help="download the carried wheels (needs PyPI) and stop")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help=f"the carried folder ({DEFAULT_WHEELS})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results ($OUT, else /tmp/gpu_check)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    if os.environ.get("GPU_CHECK_REHEARSAL", "") not in ("", "0", "1"):
        parser.error(f"GPU_CHECK_REHEARSAL must be 0 or 1, got {os.environ['GPU_CHECK_REHEARSAL']!r}")
    if args.prepare and args.rehearsal:
        parser.error("--prepare downloads and stops: run --rehearsal after it")
    if not args.prepare:
        try:
            for pattern in ("pip-*.whl", "mamba_ssm-*.tar.gz"):
                carried(args.wheels, pattern)
        except CheckError as exc:
            parser.error(str(exc))
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.prepare:
            return prepare(args.wheels)
        args.out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
        (work / "tmp").mkdir()
        with (args.out / LOG).open("w") as log:
            check = Check(args.rehearsal, args.out, args.wheels.resolve(), work, log)
            try:
                status = the_check(check)
            finally:
                if check.build is not None and check.build.poll() is None:
                    stop(check.build)
            text = summary(check, status)
            check.say("\n" + text)
        write_results(check, text)
        if args.keep_work:
            print(f"gpu_check: scratch folder kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        return status
    except (CheckError, subprocess.CalledProcessError) as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
