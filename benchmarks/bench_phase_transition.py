"""Sparse-recovery phase transition: DQN-SBL against exact SBL, LassoCV and OMP.

    python benchmarks/bench_phase_transition.py --M 200 400     # one or more M per run
    python benchmarks/bench_phase_transition.py --report        # merge the runs: table + figure

Problem (compressed sensing): n=100 samples, X Gaussian, k true coefficients with random signs
and magnitudes in [1, 2], noise standard deviation sigma in {0, 0.01}. A trial succeeds when the
estimated support (|coef| > 1e-3) is exactly the true one, or the relative error
||coef - w|| / ||w|| is below 1e-2. Methods: ``DQNSBLRegressor()`` (default settings),
``ARDRegression()`` (exact SBL), ``LassoCV(cv=5)`` and ``OrthogonalMatchingPursuitCV(cv=5)``.
The 50 % transition is the k/n where the success rate, interpolated linearly over the k grid,
first falls below one half. One process, one BLAS/numba thread; every (M, sigma, k, trial) uses
the same problem for all methods. ``--skip-ard-above M`` leaves ARDRegression out of large M
(its O(n^2 M) iterations dominate the run); the report says where.

Writes benchmarks/results/phase_transition_M<M>.json per run and, with --report,
benchmarks/results/phase_transition.md/.json and phase_transition.png. ``--tag T`` names them
phase_transition_T_M<M>.json, phase_transition_T.md/.json/.png instead (a trial run beside the
main results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ARDRegression, LassoCV, OrthogonalMatchingPursuitCV
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, sparse_linear, write_results

from sparsekit import DQNSBLRegressor

N = 100
NOISES = (0.0, 0.01)
METHODS = {
    "DQN-SBL": lambda: DQNSBLRegressor(n_jobs=1),
    "ARD (exact SBL)": ARDRegression,
    "LassoCV": lambda: LassoCV(cv=5, n_jobs=1),
    "OMP-CV": lambda: OrthogonalMatchingPursuitCV(cv=5, n_jobs=1),
}


def problem(M, k, noise, seed):
    return sparse_linear(N, M, k, noise, seed)


def success(coef, w):
    rel = np.linalg.norm(coef - w) / np.linalg.norm(w)
    same = np.array_equal(np.flatnonzero(np.abs(coef) > 1e-3), np.flatnonzero(w))
    return bool(same or rel < 1e-2)


def run(Ms, ks, trials, skip_ard_above, stem="phase_transition", noises=NOISES):
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", UserWarning)
    with threadpool_limits(limits=1):
        DQNSBLRegressor(n_jobs=1).fit(*problem(200, 2, 0.0, 0)[:2])  # compile numba kernels
        for M in Ms:
            cells = []
            for noise in noises:
                for k in ks:
                    for name, make in METHODS.items():
                        if name.startswith("ARD") and M > skip_ard_above:
                            continue
                        ok, secs = [], []
                        for trial in range(trials):
                            X, y, w = problem(M, k, noise, 1000 * M + 10 * k + trial)
                            t0 = time.perf_counter()
                            est = make().fit(X, y)
                            secs.append(time.perf_counter() - t0)
                            ok.append(success(est.coef_, w))
                        cells.append(
                            {
                                "M": M,
                                "noise": noise,
                                "k": k,
                                "method": name,
                                "success": float(np.mean(ok)),
                                "fit_s": float(np.mean(secs)),
                                "trials": trials,
                            }
                        )
                        print(cells[-1], flush=True)
            payload = {"environment": environment(), "cells": cells}
            RESULTS.mkdir(parents=True, exist_ok=True)
            out = RESULTS / f"{stem}_M{M}.json"
            out.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"wrote {out}")


def transition(ks, rates):
    """k/n where the success rate first drops below 0.5 (linear interpolation over ks)."""
    if rates[0] < 0.5:
        return 0.0
    for (k0, r0), (k1, r1) in zip(zip(ks, rates), zip(ks[1:], rates[1:])):
        if r1 < 0.5:
            return (k0 + (r0 - 0.5) / (r0 - r1) * (k1 - k0)) / N
    return ks[-1] / N  # never dropped: at least the largest k tried


def report(stem="phase_transition"):
    cells, envs = [], []
    for f in sorted(RESULTS.glob(f"{stem}_M*.json")):
        d = json.loads(f.read_text())
        cells += d["cells"]
        envs.append(d["environment"])
    rows = []
    for M in sorted({c["M"] for c in cells}):
        for noise in NOISES:
            for name in METHODS:
                cs = sorted(
                    (c for c in cells if (c["M"], c["noise"], c["method"]) == (M, noise, name)),
                    key=lambda c: c["k"],
                )
                if not cs:
                    continue
                ks = [c["k"] for c in cs]
                rows.append(
                    {
                        "M": M,
                        "noise": noise,
                        "method": name,
                        "transition": transition(ks, [c["success"] for c in cs]),
                        "fit_s": float(np.mean([c["fit_s"] for c in cs])),
                        "trials": cs[0]["trials"],
                        "ks": ks,
                        "rates": [c["success"] for c in cs],
                    }
                )
    cols = [
        ("M", "M"),
        ("noise", "noise σ"),
        ("method", "method"),
        ("transition", "50 % transition k/n"),
        ("fit_s", "mean fit s"),
        ("trials", "trials/cell"),
    ]
    md = [
        "# Sparse-recovery phase transition (n=100)",
        "",
        "Commands: `python benchmarks/bench_phase_transition.py --M <M> ...` then `--report`. "
        "1 BLAS/numba thread, one process. Success: exact support (|coef| > 1e-3) or relative "
        "error < 1e-2. Transition: the k/n where the success rate, interpolated over the k grid, "
        "first drops below 0.5 (the largest k/n tried when it never does). Mean fit time over "
        "all k of the grid. Environments of the runs: " + "; ".join(map(str, envs)),
        "",
        markdown_table(rows, cols),
        "",
        "Success rate per k (grid and rates):",
        "",
    ]
    for r in rows:
        rates = ", ".join(f"{k}:{v:.2f}" for k, v in zip(r["ks"], r["rates"]))
        md.append(f"- M={r['M']}, σ={r['noise']}, {r['method']}: {rates}")
    write_results(stem, "\n".join(md), {"environments": envs, "rows": rows})
    _figure(rows, stem)


def _figure(rows, stem):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ms = sorted({r["M"] for r in rows})
    fig, axes = plt.subplots(
        len(NOISES), len(Ms), figsize=(3.2 * len(Ms), 5.5), sharey=True, squeeze=False
    )
    for i, noise in enumerate(NOISES):
        for j, M in enumerate(Ms):
            ax = axes[i, j]
            for r in rows:
                if r["M"] == M and r["noise"] == noise:
                    ax.plot(np.array(r["ks"]) / N, r["rates"], marker="o", ms=3, label=r["method"])
            ax.set_title(f"M={M}, σ={noise}", fontsize=9)
            ax.axhline(0.5, color="grey", lw=0.5)
            if i == len(NOISES) - 1:
                ax.set_xlabel("k / n")
            if j == 0:
                ax.set_ylabel("success rate")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    out = RESULTS / f"{stem}.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--M", type=int, nargs="*", default=[])
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 5, 10, 15, 20, 25, 30, 35, 40, 50])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--skip-ard-above", type=int, default=10**9)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--noise", type=float, nargs="*", default=list(NOISES))
    ap.add_argument("--tag", default="", help="name the results phase_transition_<tag>*")
    args = ap.parse_args(argv)
    stem = f"phase_transition_{args.tag}" if args.tag else "phase_transition"
    if args.M:
        run(args.M, args.ks, args.trials, args.skip_ard_above, stem, tuple(args.noise))
    if args.report:
        report(stem)


if __name__ == "__main__":
    main()
