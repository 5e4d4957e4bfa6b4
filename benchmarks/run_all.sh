#!/usr/bin/env bash
# Runs the CPU benchmarks at full size and writes what they print to benchmarks/results/ (one file each,
# with the command and the machine's load before and after). About 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
run() {
    local out=$1; shift
    { echo "\$ python $*"; uptime; "$PY" "$@"; uptime; echo; } >> "$out"
}
mkdir -p benchmarks/results
: > benchmarks/results/train_throughput.txt
run benchmarks/results/train_throughput.txt benchmarks/train_throughput.py --rounds 3
: > benchmarks/results/dedup.txt
run benchmarks/results/dedup.txt benchmarks/dedup.py --rows 1000000
run benchmarks/results/dedup.txt benchmarks/dedup.py --rows 1000000 --templated
run benchmarks/results/dedup.txt benchmarks/dedup.py --rows 1000000 --pipeline
: > benchmarks/results/methods.txt
run benchmarks/results/methods.txt benchmarks/methods.py
: > benchmarks/results/expert_quantization.txt
run benchmarks/results/expert_quantization.txt benchmarks/expert_quantization.py
: > benchmarks/results/nvfp4_base.txt
run benchmarks/results/nvfp4_base.txt benchmarks/nvfp4_base.py
