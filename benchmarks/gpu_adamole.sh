#!/usr/bin/env bash
# GPU checks of the AdaMoLE layer (issue 4), in one short command (about 2-4 minutes on an H200):
#   1. the CUDA tests of tests/adamole (layer: dense and gathered forms vs the loop reference in fp32/bf16, no host sync
#      in the dense form; classifier: bf16/fp16 training on the GPU and GPU-to-CPU pickling);
#   2. the layer benchmark on the GPU (bf16 base, fp32 adapters): one 576x576 projection at
#      4096 tokens, tiny Llama (h576) and BERT (h384) at 8x512 tokens.
#
# Usage, from anywhere (needs python3 with torch+CUDA, transformers, peft, threadpoolctl, pytest,
# numpy, scipy, scikit-learn, numba; sparsekit is used from this checkout, not installed):
#   bash benchmarks/gpu_adamole.sh
# Results: benchmarks/results/adamole_layer_cuda.{md,json} and the two logs, written to $OUT
# instead when OUT is set (the device tool's output folder). Exit status: that of the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"

"$PY" - <<'PYEOF' || exit 2
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
PYEOF

"$PY" -m pytest tests/adamole -m gpu -q -p no:cacheprovider -o addopts="--import-mode=importlib -ra" 2>&1 \
    | tee "$OUT_DIR/adamole_gpu_tests.log"
tests_status=${PIPESTATUS[0]}

"$PY" benchmarks/bench_adamole_layer.py --device cuda --repeats 15 --batch 8 --seq 512 \
    --out-dir "$OUT_DIR" 2>&1 | tee "$OUT_DIR/adamole_gpu_bench.log"

echo "GPU tests exit status: $tests_status"
exit "$tests_status"
