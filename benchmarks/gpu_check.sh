#!/usr/bin/env bash
# The GPU paths, checked on a CUDA machine in one command, in under 8 minutes:
#
#     bash benchmarks/gpu_check.sh        # writes to ${OUT:-/tmp/gpu_check}: gpu_check.log, mlflow.db, runs/, bench_online/
#
#   0. no CUDA device here: one line, exit 2. dmh or mamba-ssm not importable: pip install -e ".[dev,cuda]"
#      (--no-build-isolation, so mamba-ssm builds against the CUDA torch already installed)       (cap 300 s)
#   1. nvidia-smi; torch and the CUDA it was built for, the GPU, mamba-ssm and causal-conv1d    (caps 15 s + 30 s)
#   2. the CUDA-only tests: python -m pytest -m cuda tests                                       (cap 180 s)
#   3. a 50-update paper-preset run of every algo on Darkroom, on the GPU, mamba_backend=cuda,    (cap 60 s each)
#      into a temporary MLflow store; then every run checked: FINISHED, trained on CUDA, its Mamba
#      blocks on mamba-ssm's kernels                                                            (cap 30 s)
#   4. the online benchmark, quick mode, its models and inputs on the GPU                        (cap 240 s)
#
# Every step also stops at a deadline shared by all (470 s after the start), so the check ends within 8 minutes; a
# step the deadline leaves no time for is reported as skipped, which fails the check.
# Exit status: 0 when every step passed, 1 when one did not (the summary at the end names it), 2 without CUDA.
set -u -o pipefail

OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate  # the checkout's own environment, where it has one
fi
PY="${PYTHON:-python}"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" DMH_DATA_DIR="$OUT/data"

START=$SECONDS
DEADLINE=470
SUMMARY=()
FAILED=0

# run_step NAME CAP COMMAND...: COMMAND under `timeout`, for at most CAP seconds and never past the deadline.
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((DEADLINE - (SECONDS - START)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -le 0 ]; then
        SUMMARY+=("SKIP  $name: no time left before the ${DEADLINE} s deadline")
        FAILED=1
        return
    fi
    echo
    echo "=== $name (limit ${limit} s) ==="
    local began=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local took=$((SECONDS - began))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("PASS  $name (${took} s)")
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        SUMMARY+=("FAIL  $name: timed out after ${limit} s")
        FAILED=1
    else
        SUMMARY+=("FAIL  $name: exit $rc after ${took} s")
        FAILED=1
    fi
}

finish() {
    echo
    echo "=== summary: $((SECONDS - START)) s, everything in $OUT ==="
    printf '%s\n' "${SUMMARY[@]}"
    exit "$FAILED"
}

# --- 0. a CUDA device, and dmh with mamba-ssm (installed only where they do not import) ---------------------------
torch_sees_cuda() { "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
nvidia_smi_sees_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if ! torch_sees_cuda && ! nvidia_smi_sees_gpu; then
    echo "gpu_check: no CUDA device here (neither torch nor nvidia-smi sees a GPU): nothing to check, exit 2"
    exit 2
fi
if ! "$PY" -c "import dmh, torch, mamba_ssm" >/dev/null 2>&1; then
    # --no-build-isolation: mamba-ssm's setup.py imports torch, and must build against the CUDA torch installed here
    run_step "install: pip install -e .[dev,cuda] (dmh or mamba-ssm does not import)" 300 \
        "$PY" -m pip install --no-build-isolation -e ".[dev,cuda]"
    [ "$FAILED" -eq 0 ] || finish
fi
if ! torch_sees_cuda; then
    "$PY" -c "import torch; print(f'gpu_check: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no '
                                  'GPU though nvidia-smi lists one: install a CUDA build of torch')"
    SUMMARY+=("FAIL  torch sees no CUDA device")
    FAILED=1
    finish
fi

# --- 1. what runs here ----------------------------------------------------------------------------------------------
SCRIPTS="$OUT/scripts"  # the Python the steps run, written to files so that `timeout` can run it
mkdir -p "$SCRIPTS"
cat > "$SCRIPTS/versions.py" <<'PYTHON'
import importlib.metadata as md

import torch

from dmh.models import mamba_ssm_available


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
print(f"mamba-ssm {version('mamba-ssm')}, causal-conv1d {version('causal-conv1d')}, dmh {version('dmh')}")
print(f"mamba-ssm's selective scan imports: {mamba_ssm_available()}")
PYTHON
run_step "nvidia-smi" 15 nvidia-smi
run_step "versions" 30 "$PY" "$SCRIPTS/versions.py"

# --- 2. the CUDA-only tests -----------------------------------------------------------------------------------------
run_step "CUDA-only tests: pytest -m cuda tests" 180 "$PY" -m pytest -q -rs -m cuda -p no:cacheprovider tests

# --- 3. a short paper-preset run of every algo on the GPU, with mamba-ssm's kernels ---------------------------------
for algo in dmh dm dt ad-transformer ad-mamba; do
    run_step "train $algo: darkroom, paper preset, 50 updates, device=cuda, mamba_backend=cuda" 60 \
        "$PY" -m dmh.cli train --algo "$algo" --task darkroom --preset paper --seed 0 \
        --set steps=50 --set warmup_steps=10 --set log_every=10 --set checkpoint_every=25 \
        --set eval_tasks=2 --set eval_episodes=4 --set device=cuda --set model.mamba_backend=cuda \
        --set run_dir="$OUT/runs" --set data_dir="$OUT/data" --set experiment=gpu_check
done
cat > "$SCRIPTS/check_runs.py" <<'PYTHON'
import os
import sys

from mlflow import MlflowClient

ALGOS = {"dmh", "dm", "dt", "ad-transformer", "ad-mamba"}
MAMBA = {"dmh", "dm", "ad-mamba"}  # the algos with Mamba blocks
client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
experiment = client.get_experiment_by_name("gpu_check")
runs = client.search_runs([experiment.experiment_id]) if experiment else []
wrong = []
for run in runs:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    algo, device, scan = params["algo"], tags.get("device", ""), params.get("backend")
    print(f"{algo:15} {run.info.status:9} device {device!r:34} scan {scan!r:8} "
          f"loss {metrics.get('train/loss', float('nan')):.4f} return {metrics.get('eval/last_return', float('nan')):.3f}")
    if run.info.status != "FINISHED" or not device.startswith("cuda") or scan != ("cuda" if algo in MAMBA else "none"):
        wrong.append(algo)
missing = sorted(ALGOS - {run.data.params["algo"] for run in runs})
if wrong or missing:
    sys.exit(f"runs not as expected: {sorted(wrong)}; no run of: {missing}")
PYTHON
run_step "the runs: FINISHED, trained on CUDA, Mamba blocks on mamba-ssm's kernels" 30 "$PY" "$SCRIPTS/check_runs.py"

# --- 4. the online benchmark on the GPU -----------------------------------------------------------------------------
run_step "online benchmark, quick, --device cuda" 240 \
    "$PY" -m benchmarks --quick --only online --device cuda --out "$OUT/bench_online"

finish
