"""DQNSBLRegressor(solver="exact") on wide dense data (more features than samples): the n-by-n
Woodbury steps against the m-by-m Gram steps they replace, and against ARDRegression.

    python benchmarks/bench_exact_wide.py                 # M = 500 ... 4000 (about 2 minutes)
    python benchmarks/bench_exact_wide.py --M 1000 4000   # some sizes

Problem: n = 100 training and 1,000 test rows, M standard normal features, 5 true coefficients
with random signs and magnitudes in [1, 2], noise standard deviation 0.1. Arms: ``exact``
(solver="exact", Woodbury steps while more features than samples are active), ``exact, Gram
steps`` (the same fit with the Woodbury steps switched off, as before: an m-by-m Gram matrix and
Cholesky per step), ``ARDRegression`` (scikit-learn; it too switches to the Woodbury form when
n < M) and the default solver. One BLAS/numba thread; every arm warms up on the M = 300 problem,
then the arms run interleaved, ``--repeats`` times (medians; ``benchmarks/_harness.py``).

Writes benchmarks/results/sbl_exact_wide.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import ARDRegression
from sklearn.metrics import r2_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, sparse_linear, write_results
from _harness import measure

from sparsekit import DQNSBLRegressor
from sparsekit.sbl import _regression_solver

N_TRAIN, N_TEST, K, NOISE = 100, 1_000, 5, 0.1


def make_problem(M, seed=0):
    X, y, _w = sparse_linear(N_TRAIN + N_TEST, M, K, NOISE, seed)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


class _Untimed:
    """A stand-in clock for the warm-up fits."""

    def section(self, name):
        return contextlib.nullcontext()


class _GramSteps:
    """Within the block, the regressor's exact steps use the m-by-m Gram matrix at every size."""

    def __enter__(self):
        self._saved = _regression_solver.Gaussian._woodbury_now
        _regression_solver.Gaussian._woodbury_now = lambda self, design: False

    def __exit__(self, *exc):
        _regression_solver.Gaussian._woodbury_now = self._saved


def arm(make, X, y, gram_steps=False):
    """A harness arm: one fit of ``make()`` (with the Gram steps when ``gram_steps``)."""

    def run(clock):
        est = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ARDRegression's convergence warnings
            if gram_steps:
                with _GramSteps(), clock.section("fit"):
                    est.fit(X, y)
            else:
                with clock.section("fit"):
                    est.fit(X, y)
        return est

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--M", type=int, nargs="*", default=[500, 1000, 2000, 4000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    arms = [
        ("exact", lambda: DQNSBLRegressor(solver="exact", n_jobs=1), False),
        ("gram", lambda: DQNSBLRegressor(solver="exact", n_jobs=1), True),
        ("ard", ARDRegression, False),
        ("dqn", lambda: DQNSBLRegressor(n_jobs=1), False),
    ]
    rows = []
    with threadpool_limits(limits=1):
        Xw, yw, _, _ = make_problem(300)
        warm = {}
        for name, make, gram in arms:
            warm[name] = functools.partial(arm(make, Xw, yw, gram), _Untimed())
        for M in args.M:
            X, y, Xte, yte = make_problem(M)
            res = measure(
                {name: arm(make, X, y, gram) for name, make, gram in arms},
                repeats=args.repeats,
                warmup=warm,
            )
            row = {"M": M, "load": res.load_average}
            for name, _make, _gram in arms:
                est = res.last[name]
                row[f"{name}_fit_s"] = res.median(name, "fit")
                row[f"{name}_r2"] = r2_score(yte, est.predict(Xte))
                row[f"{name}_kept"] = int(np.count_nonzero(est.coef_))
                row[f"{name}_n_iter"] = int(est.n_iter_)
            row["gram_over_exact"] = row["gram_fit_s"] / row["exact_fit_s"]
            row["ard_over_exact"] = row["ard_fit_s"] / row["exact_fit_s"]
            row["exact_gram_coef_diff"] = float(
                np.max(np.abs(res.last["exact"].coef_ - res.last["gram"].coef_))
            )
            rows.append(row)
            print(row, flush=True)
    cols = [
        ("M", "M"),
        ("exact_fit_s", "exact s (Woodbury steps)"),
        ("gram_fit_s", "exact s (Gram steps)"),
        ("gram_over_exact", "Gram / Woodbury"),
        ("ard_fit_s", "ARDRegression s"),
        ("ard_over_exact", "ARD / exact"),
        ("dqn_fit_s", "dqn s"),
        ("exact_r2", "exact R²"),
        ("ard_r2", "ARD R²"),
        ("dqn_r2", "dqn R²"),
        ("exact_kept", "exact kept"),
        ("ard_kept", "ARD kept"),
        ("exact_n_iter", "exact iterations"),
        ("ard_n_iter", "ARD iterations"),
        ("exact_gram_coef_diff", "max abs coef diff, Woodbury vs Gram"),
        ("load", "load"),
    ]
    env = environment()
    title = f"DQNSBLRegressor(solver='exact') on wide data (n={N_TRAIN}, {K} true, noise {NOISE})"
    how = (
        "Command: `python benchmarks/bench_exact_wide.py`; 1 BLAS/numba thread; medians of "
        f"{args.repeats} interleaved fits per arm. kept: nonzero coefficients."
    )
    md = [f"# {title}", "", how, f"Environment: {env}", "", markdown_table(rows, cols)]
    write_results("sbl_exact_wide", "\n".join(md), {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()
