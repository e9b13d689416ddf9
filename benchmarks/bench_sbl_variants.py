"""Solver variants of the DQN-SBL estimators on small problems, against fastrvm.

    python benchmarks/bench_sbl_variants.py          # about 5 minutes on 2 cores

1. Relevance vector regression (RBF) on Tipping's problems: noisy sinc (n=100, gamma=0.1) and
   Friedman #2 / #3 (n=240, standardised inputs, noise std = y std / 3), 5 seeds each, test RMSE
   against the noise-free function on 1000 points. DQNSBLRegressor's default (for kernel bases the
   constructive Tipping-Faul path, on which ``update`` and ``exact_switch`` have no effect) and
   ``solver="exact"`` (ARDRegression's loop from all n bases), against fastrvm.RVR (same kernel
   and gamma, intercept on).
2. DQNSBLClassifier (RBF, standardised, one stratified 75/25 split, random_state=0) on breast
   cancer and digits with the default diagonal BFGS curvature and with the exact curvature
   diagonal (``diag_update="exact"``).

One BLAS/numba thread. Writes benchmarks/results/sbl_variants.md and .json.
"""

from __future__ import annotations

import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, make_friedman2, make_friedman3
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, sinc, write_results
from _harness import time_call

from sparsekit import DQNSBLClassifier, DQNSBLRegressor


def _friedman(make, seed):
    X, y = make(240, noise=0, random_state=seed)
    Xt, yt = make(1000, noise=0, random_state=seed + 100)
    y = y + np.random.default_rng(seed).normal(size=240) * y.std() / 3
    s = StandardScaler().fit(X)
    return s.transform(X), y, s.transform(Xt), yt


PROBLEMS = {
    "sinc": (sinc, 0.1),
    "friedman2": (lambda s: _friedman(make_friedman2, s), "scale"),
    "friedman3": (lambda s: _friedman(make_friedman3, s), "scale"),
}
VARIANTS = {
    "DQN default (constructive path)": {},
    "solver='exact'": {"solver": "exact"},
}


def regression_rows():
    try:
        from fastrvm import RVR
    except ImportError:  # pragma: no cover - benchmark-only peer
        RVR = None
    rows = []
    for name, (gen, gamma) in PROBLEMS.items():
        res = {k: [] for k in VARIANTS}
        if RVR is not None:
            res["fastrvm.RVR"] = []
        for seed in range(5):
            X, y, Xt, yt = gen(seed)
            for k, kw in VARIANTS.items():
                est = DQNSBLRegressor(kernel="rbf", gamma=gamma, n_jobs=1, **kw)
                dt, _, r = time_call(
                    partial(est.fit, X, y),
                    repeats=1,
                    warmup=lambda: None,  # all arms warmed up once in main()
                )
                res[k].append((np.sqrt(np.mean((r.predict(Xt) - yt) ** 2)), r.relevance_.size, dt))
            if RVR is not None:
                peer = RVR(kernel="rbf", gamma=gamma, fit_intercept=True)
                dt, _, f = time_call(
                    partial(peer.fit, X, y),
                    repeats=1,
                    warmup=lambda: None,
                )
                res["fastrvm.RVR"].append(
                    (np.sqrt(np.mean((f.predict(Xt) - yt) ** 2)), len(f.relevance_), dt)
                )
        for k, v in res.items():
            rmse, rvs, secs = np.mean(np.array(v), axis=0)
            rows.append({"problem": name, "model": k, "rmse": rmse, "rvs": rvs, "fit_s": secs})
            print(rows[-1], flush=True)
    return rows


def classification_rows():
    rows = []
    for name, loader in [("breast_cancer", load_breast_cancer), ("digits", load_digits)]:
        X, y = loader(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
        s = StandardScaler().fit(Xtr)
        Xtr, Xte = s.transform(Xtr), s.transform(Xte)
        for label, kw in [
            ("diag_update='dbfgs' (default)", {}),
            ("diag_update='exact'", {"diag_update": "exact"}),
        ]:
            est = DQNSBLClassifier(n_jobs=1, **kw)
            dt, _, c = time_call(
                partial(est.fit, Xtr, ytr),
                repeats=1,
                warmup=lambda: None,
            )
            rows.append(
                {
                    "dataset": name,
                    "model": label,
                    "accuracy": c.score(Xte, yte),
                    "rvs": int(c.relevance_.size),
                    "fit_s": dt,
                }
            )
            print(rows[-1], flush=True)
    return rows


def main():
    warnings.simplefilter("ignore")
    with threadpool_limits(limits=1):
        # Warm-up of every arm, untimed (numba compilation, fastrvm's first call)
        DQNSBLRegressor(kernel="rbf").fit(*sinc(0)[:2])
        DQNSBLClassifier(n_jobs=1).fit(*load_breast_cancer(return_X_y=True))
        try:
            from fastrvm import RVR

            RVR(kernel="rbf", gamma=0.1, fit_intercept=True).fit(*sinc(0)[:2])
        except ImportError:  # pragma: no cover - benchmark-only peer
            pass
        reg = regression_rows()
        clf = classification_rows()
    env = environment()
    md = "\n".join(
        [
            "# DQN-SBL solver variants",
            "",
            "Command: `python benchmarks/bench_sbl_variants.py`; 1 BLAS/numba thread.",
            f"Environment: {env}",
            "",
            "## Relevance vector regression (RBF), mean over 5 seeds",
            "",
            markdown_table(
                reg,
                [
                    ("problem", "problem"),
                    ("model", "model"),
                    ("rmse", "test RMSE"),
                    ("rvs", "relevance vectors"),
                    ("fit_s", "fit s"),
                ],
            ),
            "",
            "## DQNSBLClassifier (RBF), one 75/25 split",
            "",
            markdown_table(
                clf,
                [
                    ("dataset", "dataset"),
                    ("model", "model"),
                    ("accuracy", "accuracy"),
                    ("rvs", "relevance vectors"),
                    ("fit_s", "fit s"),
                ],
            ),
        ]
    )
    write_results(
        "sbl_variants", md, {"environment": env, "regression": reg, "classification": clf}
    )


if __name__ == "__main__":
    main()
