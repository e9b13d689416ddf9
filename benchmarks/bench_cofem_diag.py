"""CoFEM-style probe estimates of diag(Sigma) in DQNSBLRegressor's diagonal phase: a measurement.

    python benchmarks/bench_cofem_diag.py                 # all cases, seeds 0-9 (a few minutes)
    python benchmarks/bench_cofem_diag.py --seeds 0 1 --cases toeplitz

The diagonal phase estimates Sigma_jj by ``1 / (beta W_jj + lam_j)`` (the inverse of the diagonal
of the posterior precision; with unit-RMS columns ``W_jj = wsum``). CoFEM (Lin, Song, Bilgic & Ba,
"Covariance-free sparse Bayesian learning", IEEE TSP 2022) estimates it instead by
``mean_k(z_k * x_k)`` with Rademacher probes ``z_k`` and ``x_k`` the solution of
``(beta Phi'S Phi + diag(lam)) x_k = z_k`` by the same Jacobi-preconditioned CG (here batched: one
block product per CG step for the K probes, warm-started from the previous outer iteration's
solutions, probes fixed for the fit). The estimate is clipped to ``(0, 1/lam]`` (``Sigma_jj`` lies
in ``[1/H_jj, 1/lam_j]``) and replaces ``1 / (beta W + lam)`` in the MacKay update. This script
implements it outside the package (a subclass of the Gaussian likelihood; ``DQNSBLRegressor``
has no ``random_state``, so the probes come from a fixed seed, 12345) and compares, on the same
problems, the default (``curvature``), probes with K = 8 and K = 32 (probe CG steps per outer
iteration: ``inner_max_iter``, as the mean's solve; ``cg200``: up to 200, i.e. converged), the exact
diagonal of the same posterior by a dense inverse (``oracle``, the K -> infinity limit of the probe
estimate) and ``solver="exact"`` (ARDRegression's path), on:

- ``regression``: bench_regression's problem (n=2000 train + 500 test, AR(1) rho=0.5, 12 true,
  noise 0.5) at M = 250 and 500, where the diagonal phase runs (M < n/2);
- ``toeplitz``: n=500 (+500 test), M=200, Toeplitz correlation rho^|i-j| with rho=0.9, 10 true
  weights of size 1-3 with random signs, noise 0.5;
- ``pggn``: n=100 (+500 test), M=400, Gaussian X, k = 10 and 25 true of size 1-2 (25: near exact
  SBL's transition), noise 0.05, the diagonal
  phase forced (the regressor runs its constructive path there by default; the default
  constructive path is also reported as ``constructive``); there also ``+fixnoise``: the noise
  precision held at 100 (noise std 0.1 std(y), SparseBayes' start) so that the covariance
  diagonal is measured apart from the noise precision's run to its cap.

Reported per method (medians over seeds, and paired differences against ``curvature``): test R²,
features kept, exact support recovered (|coef| > 1e-3 on exactly the true set), relative distance
of the coefficients to those of ``solver="exact"``, outer iterations, fit time (one thread; times
are medians of one fit per seed, same process, so compare ratios only).

Writes benchmarks/results/cofem_diag.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
from sklearn.metrics import r2_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, markdown_table, write_results
from _harness import load_average

from sparsekit import DQNSBLRegressor
from sparsekit.sbl import _regressor
from sparsekit.sbl._regression_solver import Gaussian

PROBE_SEED = 12345


class ProbeGaussian(Gaussian):
    """The Gaussian likelihood with diag(Sigma) estimated from K Rademacher probes (CoFEM).

    The engine forms ``Sigma_jj = 1 / (curvature_j + lam_j)``; ``curvature`` returns
    ``1 / est_j - lam_j`` so that this is the probe estimate ``est_j``.
    """

    def __init__(self, t, sw, settings, n_probes, cg_max_iter=0):
        super().__init__(t, sw, settings)
        self.n_probes = n_probes  # or "oracle": the exact diagonal (dense inverse)
        self.cg_max_iter = cg_max_iter  # probe CG steps per outer iteration (0: inner_max_iter)
        self._z = None  # probes (m, K)
        self._x = None  # warm starts (m, K)
        self._est = None
        self.cg_steps = 0

    def start(self, design, state):
        super().start(design, state)
        rng = np.random.default_rng(PROBE_SEED)
        m = design.n_coef
        K = 1 if self.n_probes == "oracle" else self.n_probes
        self._z = rng.choice([-1.0, 1.0], size=(m, K))
        self._x = np.zeros((m, K))

    def compact(self, keep_rows):
        super().compact(keep_rows)
        self._z = self._z[keep_rows]
        self._x = self._x[keep_rows]

    def inner_solve(self, design, state, settings):
        step = super().inner_solve(design, state, settings)
        lam = state.lam[:, 0]
        if self.n_probes == "oracle":
            # the K -> infinity limit: the exact diag(Sigma) of the diagonal phase's posterior
            H = state.beta * design.gram(self.sw)
            H[np.diag_indices_from(H)] += lam
            est = np.diag(np.linalg.inv(H))
        else:
            self._x, steps = block_pcg(
                design,
                self._z,
                self.sw,
                state.beta,
                lam,
                self._x,
                self.cg_max_iter or settings.inner_max_iter,
                settings.inner_tol,
            )
            self.cg_steps += steps
            est = np.mean(self._z * self._x, axis=1)
        upper = 1.0 / lam
        est = np.clip(est, 1.0 / (state.beta * design.weight_sum + lam), upper)
        self._est = est[:, None]
        return step

    def curvature(self, design, state):
        return 1.0 / self._est - state.lam


def block_pcg(design, Z, sw, beta, lam, X0, max_iter, rtol):
    """Jacobi-preconditioned CG for (beta Phi'S Phi + diag(lam)) X = Z, all columns at once (each
    column its own step sizes; a column stops when its residual is below ``rtol`` times its
    right-hand side's norm). Returns ``(X, block steps)``."""
    precond = (1.0 / (beta * design.weight_sum + lam))[:, None]

    def apply(P):
        return beta * design.rmatvec(sw[:, None] * design.matvec(P)) + lam[:, None] * P

    X = X0.copy()
    R = Z - apply(X)
    b_norm = np.linalg.norm(Z, axis=0)
    Y = precond * R
    P = Y.copy()
    rz = np.sum(R * Y, axis=0)
    steps = 0
    for _ in range(max_iter):
        active = np.linalg.norm(R, axis=0) > rtol * b_norm
        if not active.any():
            break
        steps += 1
        HP = apply(P)
        pHp = np.sum(P * HP, axis=0)
        ok = active & (pHp > 0.0)
        a = np.where(ok, rz / np.where(ok, pHp, 1.0), 0.0)
        X += a * P
        R -= a * HP
        Y = precond * R
        rz_new = np.sum(R * Y, axis=0)
        P = Y + np.where(ok, rz_new / np.where(rz > 0, rz, 1.0), 0.0) * P
        rz = np.where(ok, rz_new, rz)
    return X, steps


def estimator_check(Ks=(8, 32, 128, 1024)):
    """The probe estimate against numpy's diag(inv(H)) on one fixed posterior (Toeplitz rho=0.9,
    n=200, M=50, beta=2, lam uniform in [0.1, 3]), probe solves converged: the median relative
    error of 1/(beta W + lam) and of the estimate for each K. Returns markdown rows."""
    from sparsekit.sbl._dask_design import make_design

    rng = np.random.default_rng(0)
    n, M, beta = 200, 50, 2.0
    C = 0.9 ** np.abs(np.subtract.outer(np.arange(M), np.arange(M)))
    X = rng.normal(size=(n, M)) @ np.linalg.cholesky(C).T
    sw = np.ones(n)
    design = make_design(X, sw, center=True, intercept_column=False)
    lam = rng.uniform(0.1, 3.0, M)
    H = beta * design.gram(sw)
    H[np.diag_indices_from(H)] += lam
    exact = np.diag(np.linalg.inv(H))
    curv = 1.0 / (beta * design.weight_sum + lam)
    rows = [{"estimate": "1/(βW+λ)", "err": float(np.median(np.abs(curv - exact) / exact))}]
    for K in Ks:
        Z = np.random.default_rng(PROBE_SEED).choice([-1.0, 1.0], size=(M, K))
        Xs, _ = block_pcg(design, Z, sw, beta, lam, np.zeros((M, K)), 1000, 1e-10)
        est = np.mean(Z * Xs, axis=1)
        rows.append(
            {"estimate": f"probes K={K}", "err": float(np.median(np.abs(est - exact) / exact))}
        )
    return rows


def fit(method, X, y, pggn):
    """Fit one method; returns (estimator, seconds)."""
    if method == "exact":
        est = DQNSBLRegressor(solver="exact")
    else:
        est = DQNSBLRegressor()
    patches = []
    if pggn and method not in ("constructive", "exact"):
        patches.append(mock.patch.object(_regressor, "_constructive", lambda *a: False))
    fixed = method.endswith("+fixnoise")
    if fixed:
        # noise held at 0.1 std(y) (SparseBayes' initial value): isolates the covariance
        # diagonal from the noise precision's run to its cap when M >= n
        est.set_params(fix_noise=True)
        method = method[: -len("+fixnoise")]
    cg = 0
    if method.endswith("cg200"):
        cg = 200  # probe solves to convergence (up to 200 CG steps per outer iteration)
        method = method[: -len("cg200")]
    K = int(method[len("probes") :]) if method.startswith("probes") else 0
    if method == "oracle":
        K = "oracle"

    def make_lik(t, sw, s):
        lik = ProbeGaussian(t, sw, s, K, cg) if K else Gaussian(t, sw, s)
        if fixed:
            start = lik.start

            def start_fixed(design, state):
                state.beta = 100.0
                start(design, state)

            lik.start = start_fixed
        return lik

    patches.append(mock.patch.object(_regressor, "Gaussian", make_lik))
    for p in patches:
        p.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            est.fit(X, y)
            secs = time.perf_counter() - t0
    finally:
        for p in patches:
            p.stop()
    return est, secs


def problem(case, seed, M=None):
    rng = np.random.default_rng(seed)
    if case == "regression":
        n, n_te, k, rho, noise = 2000, 500, 12, 0.5, 0.5
        Xa = rng.normal(size=(n + n_te, M))
        Xa[:, 1:] = rho * Xa[:, :-1] + np.sqrt(1 - rho**2) * Xa[:, 1:]
        w = np.zeros(M)
        sup = rng.choice(M, k, replace=False)
        w[sup] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 3, k)
    elif case == "toeplitz":
        n, n_te, M, k, rho, noise = 500, 500, 200, 10, 0.9, 0.5
        C = rho ** np.abs(np.subtract.outer(np.arange(M), np.arange(M)))
        Xa = rng.normal(size=(n + n_te, M)) @ np.linalg.cholesky(C).T
        w = np.zeros(M)
        sup = rng.choice(M, k, replace=False)
        w[sup] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 3, k)
    else:  # pggn: M is the number of true coefficients k here
        n, n_te, k, noise = 100, 500, M, 0.05
        M = 400
        Xa = rng.normal(size=(n + n_te, M))
        w = np.zeros(M)
        sup = rng.choice(M, k, replace=False)
        w[sup] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 2, k)
    ya = Xa @ w + noise * rng.normal(size=n + n_te)
    return Xa[:n], ya[:n], Xa[n:], ya[n:], np.sort(sup)


def label(case, M):
    if case == "regression":
        return f"regression M={M}"
    if case == "pggn":
        return f"p>>n k={M}"
    return case


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
    ap.add_argument("--cases", nargs="*", default=["regression", "toeplitz", "pggn"])
    ap.add_argument("--probes", type=int, nargs="*", default=[8, 32])
    args = ap.parse_args()
    methods = (
        ["curvature"]
        + [f"probes{K}" for K in args.probes]
        + [f"probes{max(args.probes)}cg200", "oracle", "exact"]
    )
    configs = []
    for case in args.cases:
        if case == "regression":
            configs += [("regression", 250), ("regression", 500)]
        elif case == "pggn":
            configs += [("pggn", 10), ("pggn", 25)]
        else:
            configs.append((case, None))
    records = []
    load = [load_average()]
    with threadpool_limits(1):
        # numba compile and BLAS warm-up outside the timings
        Xw, yw, *_ = problem("toeplitz", 99)
        for m in methods:
            fit(m, Xw, yw, False)
        for case, M in configs:
            ms = methods + (
                ["constructive", "curvature+fixnoise"]
                + [f"probes{K}+fixnoise" for K in args.probes]
                + [f"probes{max(args.probes)}cg200+fixnoise", "oracle+fixnoise"]
                if case == "pggn"
                else []
            )
            for seed in args.seeds:
                X, y, Xte, yte, sup = problem(case, seed, M)
                fits = {m: fit(m, X, y, case == "pggn") for m in ms}
                w_ex = fits["exact"][0].coef_
                for m, (est, secs) in fits.items():
                    kept = np.flatnonzero(np.abs(est.coef_) > 1e-3)
                    records.append(
                        {
                            "case": label(case, M),
                            "seed": seed,
                            "method": m,
                            "r2": float(r2_score(yte, est.predict(Xte))),
                            "kept": int(kept.size),
                            "support": bool(np.array_equal(kept, sup)),
                            "dist_exact": float(
                                np.linalg.norm(est.coef_ - w_ex) / np.linalg.norm(w_ex)
                            ),
                            "n_iter": int(est.n_iter_),
                            "seconds": secs,
                        }
                    )
                print(
                    case,
                    M,
                    seed,
                    {m: round(r["r2"], 4) for m, r in zip(ms, records[-len(ms) :])},
                    {m: r["kept"] for m, r in zip(ms, records[-len(ms) :])},
                    flush=True,
                )
    load.append(load_average())
    rows = []
    cases = list(dict.fromkeys(r["case"] for r in records))
    for case in cases:
        rc = [r for r in records if r["case"] == case]
        for m in dict.fromkeys(r["method"] for r in rc):
            # paired against the same noise treatment: "+fixnoise" rows against
            # curvature+fixnoise
            ref = "curvature+fixnoise" if m.endswith("+fixnoise") else "curvature"
            base = {r["seed"]: r for r in rc if r["method"] == ref}
            rm = [r for r in rc if r["method"] == m]
            d_r2 = [r["r2"] - base[r["seed"]]["r2"] for r in rm]
            d_dist = [r["dist_exact"] - base[r["seed"]]["dist_exact"] for r in rm]
            t_ratio = [r["seconds"] / base[r["seed"]]["seconds"] for r in rm]
            rows.append(
                [
                    case,
                    m,
                    f"{np.median([r['r2'] for r in rm]):.4f}",
                    f"{np.median(d_r2):+.4f} [{min(d_r2):+.4f}, {max(d_r2):+.4f}]",
                    f"{np.median([r['kept'] for r in rm]):.0f}",
                    f"{sum(r['support'] for r in rm)}/{len(rm)}",
                    f"{np.median([r['dist_exact'] for r in rm]):.3g}",
                    f"{np.median(d_dist):+.3g}",
                    f"{np.median([r['n_iter'] for r in rm]):.0f}",
                    f"{np.median([r['seconds'] for r in rm]):.3f}",
                    f"{np.median(t_ratio):.2f}",
                ]
            )
    headers = [
        "case",
        "method",
        "test R² (median)",
        "ΔR² vs curvature (median [min, max])",
        "kept",
        "exact support",
        "‖w−w_exact‖/‖w_exact‖",
        "Δ dist vs curvature",
        "iterations",
        "fit s",
        "time / curvature",
    ]
    keys = [f"c{i}" for i in range(len(headers))]
    table = markdown_table([dict(zip(keys, r)) for r in rows], list(zip(keys, headers)))
    print(table)
    check = estimator_check()
    check_table = markdown_table(
        check, [("estimate", "estimate"), ("err", "median abs. relative error")]
    )
    print(check_table)
    env = environment()
    md = (
        "# CoFEM-style probe estimates of diag(Σ) in the diagonal phase\n\n"
        f"Command: `python benchmarks/bench_cofem_diag.py --seeds {' '.join(map(str, args.seeds))}"
        f" --cases {' '.join(args.cases)} --probes {' '.join(map(str, args.probes))}`. "
        f"Seeds {args.seeds}; one BLAS/numba thread; load average {load[0]} → {load[-1]}.\n\n"
        + table
        + "\n\nPaired columns (Δ, time ratio) compare each method with ``curvature`` on the same"
        " seed, the ``+fixnoise`` rows with ``curvature+fixnoise``. Exact support: |coef| > 1e-3"
        " on exactly the true set.\n\nThe estimator itself (``estimator_check``: one fixed"
        " posterior, Toeplitz rho=0.9, n=200, M=50, probe solves converged) against numpy's"
        " diag(inv(H)):\n\n" + check_table + "\n"
    )
    payload = {"records": records, "estimator_check": check, "environment": env, "load": load}
    write_results("cofem_diag", md, payload)


if __name__ == "__main__":
    main()
