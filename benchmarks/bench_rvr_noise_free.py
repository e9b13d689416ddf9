"""Relevance vector regression on nearly noise-free targets: the constructive path's guards
against rounding, on and off, with the exact path as the oracle.

    python benchmarks/bench_rvr_noise_free.py            # seeds 0-7, the exact path on 0-3
    python benchmarks/bench_rvr_noise_free.py --seeds 0 1 --exact-seeds 0 --sizes 400

Problem: ``make_regression(n, 3, n_informative=3, noise=noise, random_state=seed)`` (a linear
target, the target in its units, std about 100), noise 0.1 and 1, n = 200, 400 and 600, fitted
with ``DQNSBLRegressor(kernel="rbf", gamma=0.05)``; tested on 2,000 standard normal inputs against
the noise-free truth ``X @ coef``. Arms, in the same process:

- "default": the sparsity floor (``_constructive.S_FLOOR``) and the orthogonal refresh once the
  posterior precision is ill-conditioned (``_constructive.GRAM_ROUNDING``);
- "Gram only": the floor, every refresh in the Gram form (``GRAM_ROUNDING = inf``, the path
  before the orthogonal refresh);
- "floor off": the orthogonal refresh without the floor (``S_FLOOR = 0``);
- "neither": no floor, the Gram form only (the path before both);
- "exact": ``solver="exact"`` with ``max_iter=200`` (every sample a basis; slow, so on fewer
  seeds).

Per fit: actions (``n_iter_``), whether it reached ``max_iter`` (a ``ConvergenceWarning``),
relevance vectors, the test RMSE against the truth, the estimated noise std and the fit time.
Summary per noise and n: fits at ``max_iter`` and median RMSE per arm, paired RMSE ratios default
/ Gram only (median, min, max) and default / exact per seed, the default's median noise std. One
BLAS/numba thread.

``--sizes`` sets n. Writes benchmarks/results/<name>.md and .json (default name rvr_noise_free).
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


ARMS = ("default", "Gram only", "floor off", "neither")


def fit_one(n, noise, seed, arm):
    X, y, coef = make_regression(n, 3, n_informative=3, noise=noise, random_state=seed, coef=True)
    Xt = np.random.default_rng(seed + 100).standard_normal((2000, 3))
    truth = Xt @ coef
    if arm == "exact":
        est = DQNSBLRegressor(kernel="rbf", gamma=GAMMA, solver="exact", max_iter=200)
    else:
        est = DQNSBLRegressor(kernel="rbf", gamma=GAMMA)
    patches = {
        "Gram only": {"GRAM_ROUNDING": np.inf},
        "floor off": {"S_FLOOR": 0.0},
        "neither": {"S_FLOOR": 0.0, "GRAM_ROUNDING": np.inf},
    }.get(arm, {})
    guards = mock.patch.multiple(_constructive, **patches) if patches else nullcontext()
    with warnings.catch_warnings(record=True) as rec, guards:
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


def _summary(rows, noise, n, seeds, exact_seeds):
    sel = {(r["seed"], r["arm"]): r for r in rows if r["noise"] == noise and r["n"] == n}

    def rmse(seed, arm):
        return sel[seed, arm]["test_rmse_vs_truth"]

    ratio = np.array([rmse(s, "default") / rmse(s, "Gram only") for s in seeds])
    exact = [rmse(s, "default") / rmse(s, "exact") for s in exact_seeds if (s, "exact") in sel]
    return {
        "noise": noise,
        "n": n,
        "fits": len(seeds),
        "at max_iter: " + " / ".join(ARMS): " / ".join(
            str(sum(sel[s, arm]["at_max_iter"] for s in seeds)) for arm in ARMS
        ),
        "median RMSE: " + " / ".join(ARMS): " / ".join(
            f"{np.median([rmse(s, arm) for s in seeds]):.3g}" for arm in ARMS
        ),
        "RMSE default / Gram only (median, min, max)": f"{np.median(ratio):.3f}, "
        f"{ratio.min():.3f}, {ratio.max():.3f}",
        "RMSE default / exact (per seed)": ", ".join(f"{v:.2f}" for v in exact),
        "median noise std default / exact": f"{np.median([sel[s, 'default']['noise_std_estimate'] for s in seeds]):.3g}"
        + " / "
        + (
            f"{np.median([sel[s, 'exact']['noise_std_estimate'] for s in exact_seeds if (s, 'exact') in sel]):.3g}"
            if exact
            else "-"
        ),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=list(range(8)))
    ap.add_argument("--exact-seeds", type=int, nargs="*", default=list(range(4)))
    ap.add_argument("--sizes", type=int, nargs="*", default=[200, 400, 600])
    ap.add_argument("--name", default="rvr_noise_free", help="results/<name>.md and .json")
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1):
        for noise in (0.1, 1.0):
            for n in args.sizes:
                for seed in args.seeds:
                    for arm in ARMS + (("exact",) if seed in args.exact_seeds else ()):
                        rows.append(fit_one(n, noise, seed, arm))
                        print(rows[-1], flush=True)
    summary = [
        _summary(rows, noise, n, args.seeds, args.exact_seeds)
        for noise in (0.1, 1.0)
        for n in args.sizes
    ]
    write_summary_and_fits(
        args.name,
        "Relevance vector regression on nearly noise-free targets: guards against rounding",
        "Command: `python benchmarks/bench_rvr_noise_free.py"
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != list(range(8)) else "")
        + (
            f" --exact-seeds {' '.join(map(str, args.exact_seeds))}"
            if args.exact_seeds != list(range(4))
            else ""
        )
        + (f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes != [200, 400, 600] else "")
        + (f" --name {args.name}" if args.name != "rvr_noise_free" else "")
        + "`; make_regression(n, 3, noise), RBF gamma 0.05, test RMSE against the noise-free "
        "truth on 2,000 points; the constructive path by default, with the orthogonal refresh off "
        '("Gram only"), the floor off, and both off ("neither"), and solver="exact" '
        "(max_iter=200) as the oracle; 1 thread. Summary, then every fit.",
        summary,
        rows,
    )


if __name__ == "__main__":
    main()
