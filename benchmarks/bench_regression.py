"""DQNSBLRegressor against scikit-learn's ARDRegression on one synthetic sparse problem.

    python benchmarks/bench_regression.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/bench_regression.py --quick    # small sizes, for a smoke test

Problem: n_train=2000 (+500 test), M features with local correlation (AR(1)-like, rho=0.5), 12 true
features with weights of size 1-3, noise standard deviation 0.5. BLAS and numba are pinned to one
thread for both estimators (threadpoolctl), since the machines are shared and small products are
slower with several threads under contention. Times (benchmarks/_harness.py) are medians of ``--repeats`` fits for
DQNSBLRegressor; ARDRegression is timed once per size when it takes longer than 20 s (noted in the
table). Peak memory is the peak traced allocation during one fit (tracemalloc: numpy and Python
allocations), excluding the data itself. A final row fits M=20000 with DQNSBLRegressor alone to check
the memory target.

Writes benchmarks/results/sbl_regression.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ARDRegression
from sklearn.metrics import r2_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, markdown_table, peak_memory_mib, timed, write_results

from sparsekit import DQNSBLRegressor


def make_problem(n, M, k=12, rho=0.5, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, M))
    X[:, 1:] = rho * X[:, :-1] + np.sqrt(1 - rho**2) * X[:, 1:]
    w = np.zeros(M)
    support = rng.choice(M, k, replace=False)
    w[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 3, k)
    y = X @ w + noise * rng.normal(size=n)
    return X, y, support


def evaluate(make_est, X, y, Xte, yte, support, repeats, slow_s=20.0):
    """Fit once under tracemalloc (peak memory and a first time), then, when a fit is faster
    than ``slow_s``, ``repeats`` more untraced fits for the median time."""
    est = make_est()
    t0 = time.perf_counter()
    mem = peak_memory_mib(lambda: est.fit(X, y))
    first = time.perf_counter() - t0
    if first < slow_s:
        # the traced fit above is this arm's warm-up (the same for both estimators)
        t, est = timed(lambda: make_est().fit(X, y), repeats=repeats, warmup=lambda: None)
        runs = repeats
    else:
        t, runs = first, 1
    coef = est.coef_
    top = set(np.argsort(-np.abs(coef))[: len(support)])
    return {
        "time_s": t,
        "timing_runs": runs,
        "peak_mib": mem,
        "r2": r2_score(yte, est.predict(Xte)),
        "n_relevant": int(np.sum(coef != 0)),
        "n_abs_gt_0.05": int(np.sum(np.abs(coef) > 0.05)),
        "support_found": f"{len(top & set(support))}/{len(support)}",
        "n_iter": int(est.n_iter_),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", help="M values to run (default: all)")
    args = ap.parse_args(argv)
    sizes = [250, 500, 1000] if args.quick else [250, 500, 1000, 2000, 4000, 8000]
    sizes = args.sizes or sizes
    big = 4000 if args.quick else 20000
    n_train, n_test = 2000, 500
    rows = []
    warnings.simplefilter("ignore", ConvergenceWarning)
    with threadpool_limits(limits=1):
        # Warm-up, the same for both arms (numba compiles its kernels on first use).
        Xw, yw, _ = make_problem(100, 20)
        DQNSBLRegressor(n_jobs=1).fit(Xw, yw)
        ARDRegression().fit(Xw, yw)
        for M in sizes:
            X, y, support = make_problem(n_train + n_test, M)
            X, Xte, y, yte = X[:n_train], X[n_train:], y[:n_train], y[n_train:]
            dqn = evaluate(lambda: DQNSBLRegressor(n_jobs=1), X, y, Xte, yte, support, args.repeats)
            ard = evaluate(ARDRegression, X, y, Xte, yte, support, args.repeats)
            row = {"M": M}
            for k, v in dqn.items():
                row[f"dqn_{k}"] = v
            for k, v in ard.items():
                row[f"ard_{k}"] = v
            row["speedup"] = ard["time_s"] / dqn["time_s"]
            row["r2_diff"] = dqn["r2"] - ard["r2"]
            rows.append(row)
            print(
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                flush=True,
            )
        X, y, support = make_problem(n_train + n_test, big)
        X, Xte, y, yte = X[:n_train], X[n_train:], y[:n_train], y[n_train:]
        big_row = evaluate(lambda: DQNSBLRegressor(n_jobs=1), X, y, Xte, yte, support, 1)
        big_row["M"] = big
        big_row["data_mib"] = X.nbytes / 2**20
        print(big_row, flush=True)

    for prev, cur in itertools.pairwise(rows):
        cur["dqn_growth_per_doubling"] = (cur["dqn_time_s"] / prev["dqn_time_s"]) ** (
            1.0 / np.log2(cur["M"] / prev["M"])
        )
    cols = [
        ("M", "M"),
        ("dqn_time_s", "DQN fit s"),
        ("ard_time_s", "ARD fit s"),
        ("speedup", "ARD/DQN time"),
        ("dqn_growth_per_doubling", "DQN time x per doubling of M"),
        ("dqn_r2", "DQN test R²"),
        ("ard_r2", "ARD test R²"),
        ("r2_diff", "R² DQN−ARD"),
        ("dqn_n_relevant", "DQN kept"),
        ("ard_n_relevant", "ARD kept"),
        ("dqn_n_abs_gt_0.05", "DQN abs(coef)>0.05"),
        ("ard_n_abs_gt_0.05", "ARD abs(coef)>0.05"),
        ("dqn_support_found", "DQN true in top-12"),
        ("ard_support_found", "ARD true in top-12"),
        ("dqn_peak_mib", "DQN peak MiB"),
        ("ard_peak_mib", "ARD peak MiB"),
        ("dqn_n_iter", "DQN iters"),
        ("ard_n_iter", "ARD iters"),
        ("ard_timing_runs", "ARD timed fits"),
    ]
    env = environment()
    md = [
        "# DQNSBLRegressor vs ARDRegression (n_train=2000, n_test=500, 12 true features)",
        "",
        "Command: `python benchmarks/bench_regression.py"
        + (" --quick" if args.quick else "")
        + (" --sizes " + " ".join(map(str, args.sizes)) if args.sizes else "")
        + f" --repeats {args.repeats}`; "
        + f"1 BLAS/numba thread; times are medians of {args.repeats} fits, except fits slower "
        + "than 20 s, timed once (the traced fit). Peak MiB: tracemalloc peak during one fit "
        + "(data excluded).",
        f"Environment: {env}",
        "",
        markdown_table(rows, cols),
        "",
        (
            f"Memory check: DQNSBLRegressor at M={big}, n=2000: data {big_row['data_mib']:.0f} MiB, "
            f"peak extra {big_row['peak_mib']:.0f} MiB, fit {big_row['time_s']:.2f} s, test R² "
            f"{big_row['r2']:.4f}, true features in top-12: {big_row['support_found']}."
        ),
    ]
    suffix = "_quick" if args.quick else ""
    if args.sizes:
        suffix += "_M" + "-".join(map(str, args.sizes))
    write_results(
        "sbl_regression" + suffix,
        "\n".join(md),
        {"environment": env, "rows": rows, "memory_check": big_row},
    )


if __name__ == "__main__":
    main()
