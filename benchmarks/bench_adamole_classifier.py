"""Training and prediction cost of AdaMoLEClassifier against plain LoRA, on MiniLM + Rotten Tomatoes.

Arms, all on the same 256 sentences, max_length 48, batch 16, AdamW, the same padded batches:

* ``peft_lora_loop``: peft ``LoraConfig(r=32, lora_alpha=16)`` on query/value + a minimal hand-written
  training loop (the floor: no estimator, no router);
* ``estimator_lora``: ``AdaMoLEClassifier(num_experts=1, routing="dense", expert_rank=32)``, i.e. the
  estimator's loop around plain LoRA (measures the estimator's overhead);
* ``estimator_adamole``: ``AdaMoLEClassifier(num_experts=8, expert_rank=4)`` (adaptive routing, aux
  loss, routing statistics): the cost of AdaMoLE itself.

Reported: median over repeats of one training epoch (model loading excluded) and of predicting 256
sentences, and the ratios against the peers measured in the same run. Expectation from the spec
(section 9/11): the dense masked AdaMoLE layer costs about as much as a rank-32 LoRA (N*r = 32).

    python benchmarks/bench_adamole_classifier.py [--repeats 3] [--threads 2]

Writes benchmarks/results/adamole_classifier.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

N, MAX_LEN, BATCH, LR = 256, 48, 16, 5e-4


def _data():
    from adamole_rotten_tomatoes import load_rotten_tomatoes

    X, y, _, _ = load_rotten_tomatoes(N, 0, seed=3)
    return X, y


def peft_lora_loop(X, y, base):
    """Plain peft LoRA with a minimal loop; returns (epoch seconds, predict seconds)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(base)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
        model = get_peft_model(
            model,
            LoraConfig(
                r=32,
                lora_alpha=16,
                lora_dropout=0.05,
                target_modules=["query", "value"],
                task_type="SEQ_CLS",
            ),
        )
    labels = torch.as_tensor((np.asarray(y) == "pos").astype(np.int64))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    order = np.random.RandomState(0).permutation(len(X))
    model.train()
    t0 = time.perf_counter()
    for s in range(0, len(X), BATCH):
        idx = order[s : s + BATCH]
        batch = tok(
            [X[i] for i in idx],
            truncation=True,
            max_length=MAX_LEN,
            padding=True,
            return_tensors="pt",
        )
        loss = F.cross_entropy(model(**batch).logits, labels[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    epoch = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(X), BATCH):
            batch = tok(
                X[s : s + BATCH],
                truncation=True,
                max_length=MAX_LEN,
                padding=True,
                return_tensors="pt",
            )
            model(**batch)
    return epoch, time.perf_counter() - t0


def estimator(X, y, base, **params):
    from sparsekit.adamole import AdaMoLEClassifier

    clf = AdaMoLEClassifier(
        base_model=base,
        target_modules=["query", "value"],
        head="classifier",
        max_length=MAX_LEN,
        batch_size=BATCH,
        learning_rate=LR,
        warmup=0,
        num_epochs=1,
        random_state=0,
        **params,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*truncated.*")
        clf.fit(X, y)
        t0 = time.perf_counter()
        clf.predict_proba(X)
    return clf.history_[0]["duration_s"], time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from adamole_rotten_tomatoes import minilm_path
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    base = minilm_path()
    X, y = _data()
    arms = {
        "peft_lora_loop": lambda: peft_lora_loop(X, y, base),
        "estimator_lora": lambda: estimator(
            X, y, base, num_experts=1, routing="dense", expert_rank=32
        ),
        "estimator_adamole": lambda: estimator(X, y, base, num_experts=8, expert_rank=4),
    }
    times = {k: {"train": [], "predict": []} for k in arms}
    with threadpool_limits(limits=args.threads):
        for _ in range(args.repeats):
            for name, fn in arms.items():  # interleaved, so load changes hit every arm alike
                tr, pr = fn()
                times[name]["train"].append(tr)
                times[name]["predict"].append(pr)
    med = {k: {m: statistics.median(v[m]) for m in v} for k, v in times.items()}
    ref = med["peft_lora_loop"]
    rows = []
    for name in arms:
        rows.append(
            {
                "arm": name,
                "train_epoch_s": med[name]["train"],
                "predict_s": med[name]["predict"],
                "train_ratio_vs_peft_lora": med[name]["train"] / ref["train"],
                "predict_ratio_vs_peft_lora": med[name]["predict"] / ref["predict"],
            }
        )
    ada_vs_lora = med["estimator_adamole"]["train"] / med["estimator_lora"]["train"]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "n_sentences": N,
        "max_length": MAX_LEN,
        "batch_size": BATCH,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    (out / "adamole_classifier.json").write_text(
        json.dumps(
            {"meta": meta, "rows": rows, "raw": times, "adamole_vs_lora_train_ratio": ada_vs_lora},
            indent=2,
        )
    )
    lines = [
        (
            f"MiniLM-L6, {N} Rotten Tomatoes sentences, max_length {MAX_LEN}, batch {BATCH}, "
            f"{args.threads} thread(s), median of {args.repeats}"
        ),
        "",
        "| arm | train epoch (s) | predict (s) | train / peft LoRA | predict / peft LoRA |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['train_epoch_s']:.2f} | {r['predict_s']:.2f} | "
            f"{r['train_ratio_vs_peft_lora']:.2f} | {r['predict_ratio_vs_peft_lora']:.2f} |"
        )
    lines += ["", f"AdaMoLE 8x4 / LoRA r=32 (same estimator loop), training: {ada_vs_lora:.2f}"]
    text = "\n".join(lines)
    (out / "adamole_classifier.md").write_text(text + "\n")
    print(text)
    return 0 if all(math.isfinite(r["train_epoch_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
