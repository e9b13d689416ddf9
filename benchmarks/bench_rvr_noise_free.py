"""Relevance vector regression on nearly noise-free targets: the constructive path's sparsity
floor (``_constructive.S_FLOOR``) on and off, with the exact path as the oracle.

    python benchmarks/bench_rvr_noise_free.py            # seeds 0-7, the exact path on 0-3
    python benchmarks/bench_rvr_noise_free.py --seeds 0 1 --exact-seeds 0
    python benchmarks/bench_rvr_noise_free.py --sizes 400 --name rvr_noise_free_400

Problem: ``make_regression(n, 3, n_informative=3, noise=noise, random_state=seed)`` (a linear
target, the target in its units, std about 100), noise 0.1 and 1, n = 200 and 600, fitted with
``DQNSBLRegressor(kernel="rbf", gamma=0.05)``; tested on 2,000 standard normal inputs against the
noise-free truth ``X @ coef``. Arms, in the same process: the default (floor on), the floor off
(``S_FLOOR = 0``: what the path did before the floor) and ``solver="exact"`` with
``max_iter=200`` (every sample a basis; slow, so on fewer seeds). Per fit: actions
(``n_iter_``), whether it reached ``max_iter`` (a ``ConvergenceWarning``), relevance vectors, the test RMSE against the truth,
the estimated noise std and the fit time. Summary: paired ratios floor on / off of the RMSE
(median, min, max) and the totals of actions. One BLAS/numba thread.

``--sizes`` sets n (default 200 and 600). Writes benchmarks/results/<name>.md and .json (default
name rvr_noise_free).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
from sklearn.datasets import make_regression
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_summary_and_fits

from sparsekit import DQNSBLRegressor
from sparsekit.sbl import _constructive

GAMMA = 0.05


def fit_one(n, noise, seed, arm):
    X, y, coef = make_regression(n, 3, n_informative=3, noise=noise, random_state=seed, coef=True)
    Xt = np.random.default_rng(seed + 100).standard_normal((2000, 3))
    truth = Xt @ coef
    if arm == "exact":
        est = DQNSBLRegressor(kernel="rbf", gamma=GAMMA, solver="exact", max_iter=200)
    else:
        est = DQNSBLRegressor(kernel="rbf", gamma=GAMMA)
    off = mock.patch.object(_constructive, "S_FLOOR", 0.0)
    with warnings.catch_warnings(record=True) as rec, off if arm == "floor off" else nullcontext():
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        est.fit(X, y)
        fit_s = time.perf_counter() - start
    return {
        "noise": noise,
        "n": n,
        "seed": seed,
        "arm": arm,
        "actions": int(est.n_iter_),
        "at_max_iter": any(issubclass(w.category, ConvergenceWarning) for w in rec),
        "vectors": len(est.relevance_),
        "test_rmse_vs_truth": float(np.sqrt(np.mean((est.predict(Xt) - truth) ** 2))),
        "noise_std_estimate": float(1.0 / np.sqrt(est.alpha_)),
        "fit_s": fit_s,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=list(range(8)))
    ap.add_argument("--exact-seeds", type=int, nargs="*", default=list(range(4)))
    ap.add_argument("--sizes", type=int, nargs="*", default=[200, 600])
    ap.add_argument("--name", default="rvr_noise_free", help="results/<name>.md and .json")
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1):
        for noise in (0.1, 1.0):
            for n in args.sizes:
                for seed in args.seeds:
                    arms = ["floor on", "floor off"] + (
                        ["exact"] if seed in args.exact_seeds else []
                    )
                    for arm in arms:
                        rows.append(fit_one(n, noise, seed, arm))
                        print(rows[-1], flush=True)
    summary = []
    for noise in (0.1, 1.0):
        for n in args.sizes:
            sel = {(r["seed"], r["arm"]): r for r in rows if r["noise"] == noise and r["n"] == n}
            on = [sel[s, "floor on"] for s in args.seeds]
            off = [sel[s, "floor off"] for s in args.seeds]
            ratio = np.array(
                [a["test_rmse_vs_truth"] / b["test_rmse_vs_truth"] for a, b in zip(on, off)]
            )
            exact = [
                sel[s, "floor on"]["test_rmse_vs_truth"] / sel[s, "exact"]["test_rmse_vs_truth"]
                for s in args.exact_seeds
                if (s, "exact") in sel
            ]
            summary.append(
                {
                    "noise": noise,
                    "n": n,
                    "fits": len(on),
                    "at max_iter off / on": f"{sum(r['at_max_iter'] for r in off)} / "
                    f"{sum(r['at_max_iter'] for r in on)}",
                    "actions off / on": f"{sum(r['actions'] for r in off)} / "
                    f"{sum(r['actions'] for r in on)}",
                    "RMSE on / off (median, min, max)": f"{np.median(ratio):.3f}, "
                    f"{ratio.min():.3f}, {ratio.max():.3f}",
                    "RMSE on / exact (per seed)": ", ".join(f"{v:.2f}" for v in exact),
                    "median RMSE off / on": f"{np.median([r['test_rmse_vs_truth'] for r in off]):.3g}"
                    f" / {np.median([r['test_rmse_vs_truth'] for r in on]):.3g}",
                }
            )
    write_summary_and_fits(
        args.name,
        "Relevance vector regression on nearly noise-free targets: the sparsity floor",
        "Command: `python benchmarks/bench_rvr_noise_free.py"
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != list(range(8)) else "")
        + (
            f" --exact-seeds {' '.join(map(str, args.exact_seeds))}"
            if args.exact_seeds != list(range(4))
            else ""
        )
        + (f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes != [200, 600] else "")
        + (f" --name {args.name}" if args.name != "rvr_noise_free" else "")
        + "`; make_regression(n, 3, noise), RBF gamma 0.05, test RMSE against the noise-free "
        "truth on 2,000 points; the constructive path with the floor on (the default) and off, "
        'and solver="exact" (max_iter=200) as the oracle; 1 thread. Summary, then every fit.',
        summary,
        rows,
    )


if __name__ == "__main__":
    main()
