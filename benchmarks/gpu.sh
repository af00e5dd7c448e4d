#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md, in one go, whenever a GPU is at hand:
#   bash benchmarks/gpu.sh [OUT_DIR]     (default benchmarks/gpu-<date>; needs the mini corpus: egs/mini stage 0)
# 1. the machine and the stack; 2. forward variants (eager / sdpa / bf16 / torch.compile) of base and large;
# 3. extraction throughput against a bare forward, fp32 and bf16; 4. live vs cached 20-epoch fit of base;
# 5. the largest batch before out-of-memory, frozen and fine-tuning, fp32 and bf16, base and large.
# Each step's table goes to OUT_DIR/<step>.md; a failed step is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"  # run.sh and the benchmarks' commands find the venv's python
PY=${PYTHON:-python}
out=${1:-benchmarks/gpu-$(date +%Y-%m-%d)}
mkdir -p "$out"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA GPU visible to torch: nothing to measure" >&2
    exit 1
fi
if [ ! -f egs/mini/data/mini/emotion/train.jsonl ]; then
    (cd egs/mini && bash run.sh --stage 0 --stop_stage 0) || { echo "could not make the mini corpus" >&2; exit 1; }
fi
failed=()
step() {  # step NAME COMMAND...: run it, its output in $out/NAME.md
    local name=$1; shift
    echo "== $name: $*"
    if ! "$@" > "$out/$name.md" 2> "$out/$name.log"; then
        echo "   failed (see $out/$name.log)"; failed+=("$name")
    else
        cat "$out/$name.md"
    fi
}
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -m recipes.cli env; } > "$out/machine.md" 2>&1
cat "$out/machine.md"
for size in base_random large_random; do
    step "forward_${size}" "$PY" benchmarks/forward_variants.py --device cuda --size "$size" --batch 8 --seconds 15 --repeats 10
done
for precision in fp32 bf16; do
    step "extract_${precision}" "$PY" benchmarks/extract_throughput.py --device cuda --autocast "$precision" \
        --upstreams base_random,large_random --repeats 3 --workdir "$out/work"
done
step cache_speedup "$PY" benchmarks/cache_speedup.py --device cuda --upstreams base_random --epochs 20 --workdir "$out/work"
step batch_limit "$PY" benchmarks/gpu_batch_limit.py --sizes base_random,large_random
rm -rf "$out/work"
echo "tables in $out/"
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }
