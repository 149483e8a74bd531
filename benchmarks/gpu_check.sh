#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py, whose docstring says what it runs): on the lent GPU machine, with
# .gpu_check_wheels/ carried, in one call of at most 10 minutes; results in ${OUT:-/tmp/gpu_check}.
#
#     python benchmarks/gpu_check.py --prepare   # here, once, with PyPI: the carried wheels into .gpu_check_wheels/
#     bash benchmarks/gpu_check.sh               # on the GPU machine, with its own python3 and torch
#     bash benchmarks/gpu_check.sh --rehearsal   # here, from the project's environment: the steps that need no CUDA
#
# Exit status: 0 every step passed, 1 one did not (the summary at the end names it), 2 bad input or no CUDA device.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
