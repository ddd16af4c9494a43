#!/usr/bin/env bash
# One short GPU check of evalkit (<= 8 minutes on one GPU, random weights, no downloads): UNet samples/s
# (auto vs einsum attention, fp32/fp16), Inception images/s, P/R on the GPU vs the CPU emulation, and
# batch-size bit-identity of samples. Without CUDA it says so and exits 0; `--cpu-smoke` runs every section
# on the CPU at tiny sizes. Other options: see `python benchmarks/gpu_check.py --help`.
# Exit status non-zero if any check fails, crashes or runs past its time bound.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
limit=480  # the GPU run's budget; the CPU smoke run on a shared machine gets longer
for arg in "$@"; do [[ "$arg" == --cpu-smoke ]] && limit=1800; done
exec timeout "$limit" "$PYTHON" benchmarks/gpu_check.py "$@"
