"""DQNSBLRegressor on a wide sparse (CSR) regression problem: more features than samples.

    python benchmarks/bench_sparse_wide.py                 # M = 1e5 and 1e6 (about 1 minute)
    python benchmarks/bench_sparse_wide.py --M 100000      # one size

Problem: n = 20,000 training and 5,000 test rows, M columns, density 1e-3 (entries standard
normal at uniformly random positions), 20 true coefficients with random signs and magnitudes in
[1, 2], noise standard deviation 0.01. Each row touches about 0.02 M columns, so the true columns
are seen by a few hundred rows only. Targets (issue 8): the true support, test R² >= 0.98, and
never an empty model without a warning. One BLAS/numba thread; a single fit per size (timed
with the data already in memory).

Writes benchmarks/results/sbl_sparse_wide.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import r2_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results

from sparsekit import DQNSBLRegressor

N_TRAIN, N_TEST, DENSITY, K, NOISE = 20_000, 5_000, 1e-3, 20, 0.01


def make_problem(M, seed=0):
    # Random positions, not scipy.sparse.random: that draws positions without replacement over
    # all n*M cells, which needs memory proportional to n*M.
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    nnz = int(DENSITY * n * M)
    rows, cols = rng.integers(0, n, nnz), rng.integers(0, M, nnz)
    X = sp.csr_matrix((rng.standard_normal(nnz), (rows, cols)), shape=(n, M))
    w = np.zeros(M)
    support = rng.choice(M, K, replace=False)
    w[support] = rng.choice([-1.0, 1.0], K) * rng.uniform(1, 2, K)
    y = X @ w + NOISE * rng.normal(size=n)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:], np.sort(support)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--M", type=int, nargs="*", default=[100_000, 1_000_000])
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1):
        for M in args.M:
            X, y, Xte, yte, support = make_problem(M)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                reg = DQNSBLRegressor(n_jobs=1).fit(X, y)
                secs = time.perf_counter() - t0
            found = np.flatnonzero(np.abs(reg.coef_) > 0.05)
            rows.append(
                {
                    "M": M,
                    "nnz": int(X.nnz),
                    "fit_s": secs,
                    "r2": r2_score(yte, reg.predict(Xte)),
                    "kept": int(reg.relevance_.size),
                    "exact_support": bool(np.array_equal(found, support)),
                    "n_iter": int(reg.n_iter_),
                    "warnings": sorted({type(w.message).__name__ for w in caught}),
                }
            )
            print(rows[-1], flush=True)
    cols = [
        ("M", "M"),
        ("nnz", "nnz(X train)"),
        ("fit_s", "fit s"),
        ("r2", "test R²"),
        ("kept", "kept"),
        ("exact_support", "exact support"),
        ("n_iter", "iterations"),
        ("warnings", "warnings"),
    ]
    env = environment()
    md = [
        "# DQNSBLRegressor on wide CSR data (n=20,000, density 1e-3, 20 true, noise 0.01)",
        "",
        "Command: `python benchmarks/bench_sparse_wide.py`; 1 BLAS/numba thread; one fit per size.",
        f"Environment: {env}",
        "",
        markdown_table(rows, cols),
    ]
    write_results("sbl_sparse_wide", "\n".join(md), {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()
