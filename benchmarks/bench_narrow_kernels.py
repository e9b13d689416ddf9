"""DQNSBLClassifier with narrow RBF kernels on noisy labels: which fits cycle, and what the exact
phase's cycle stop (``_engine._Stall``) does to them, against the same fits with the stop off.

    python benchmarks/bench_narrow_kernels.py               # gamma 0.05 and 0.2, seeds 0-7
    python benchmarks/bench_narrow_kernels.py --exact 0 2   # also solver="exact" on seeds 0, 2

Problem: ``make_classification(2400, 20, n_informative=8, flip_y=0.05, random_state=seed)``, the
first 400 rows to fit, the other 2,000 to test; the defaults otherwise (``gamma="scale"`` is about
0.015-0.02 there). One BLAS/numba thread. Each fit runs twice in the same process: with the cycle
stop (the default) and with it off (``_Stall`` never stops: what the fit did before the stop). Per
fit: iterations, whether it converged, stopped for a cycle, or ran to ``max_iter`` (and then
whether its last 100 iterations cycle, ``evidence_stalled``), the last log evidence, the test
accuracy and the relevance vectors. Iterations, evidence and accuracy, not times, are the result.

Writes benchmarks/results/sbl_narrow_kernels.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_summary_and_fits

from sparsekit import DQNSBLClassifier
from sparsekit.sbl import _engine
from sparsekit.sbl._engine import evidence_stalled

N_FIT = 400


def fit_one(gamma, seed, solver, stop):
    X, y = make_classification(N_FIT + 2000, 20, n_informative=8, flip_y=0.05, random_state=seed)
    X, y, Xt, yt = X[:N_FIT], y[:N_FIT], X[N_FIT:], y[N_FIT:]
    scale = 1.0 / (X.shape[1] * X.var())
    arm = nullcontext() if stop else mock.patch.object(_engine._Stall, "_stop", lambda *_: False)
    with warnings.catch_warnings(record=True) as rec, arm:
        warnings.simplefilter("always", ConvergenceWarning)
        est = DQNSBLClassifier(gamma=gamma, solver=solver, n_jobs=1).fit(X, y)
    warned = [str(w.message) for w in rec if issubclass(w.category, ConvergenceWarning)]
    at_max = est.n_iter_ >= est.max_iter
    if not warned:
        end = "converged"
    elif "stopped after" in warned[0]:
        end = "cycle stop"
    else:
        end = "max_iter, cycling" if evidence_stalled(est.scores_) else "max_iter"
    return {
        "gamma": gamma,
        "gamma_over_scale": gamma / scale,
        "solver": solver,
        "cycle_stop": "on" if stop else "off",
        "seed": seed,
        "n_iter": int(est.n_iter_),
        "end": end,
        "at_max_iter": at_max,
        "log_evidence": float(est.scores_[-1]),
        "test_accuracy": float(est.score(Xt, yt)),
        "relevance_vectors": len(est.relevance_),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gammas", type=float, nargs="*", default=[0.05, 0.2])
    ap.add_argument("--seeds", type=int, nargs="*", default=list(range(8)))
    ap.add_argument("--exact", type=int, nargs="*", default=[], help="seeds for solver='exact'")
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1):
        runs = [(g, s, "dqn") for g in args.gammas for s in args.seeds]
        runs += [(max(args.gammas), s, "exact") for s in args.exact]
        for gamma, seed, solver in runs:
            for stop in (True, False):
                rows.append(fit_one(gamma, seed, solver, stop))
                print(rows[-1], flush=True)
    summary = []
    for gamma in args.gammas:
        for solver in ("dqn", "exact"):
            on = [r for r in rows if r["gamma"] == gamma and r["solver"] == solver]
            off = [r for r in on if r["cycle_stop"] == "off"]
            on = [r for r in on if r["cycle_stop"] == "on"]
            if not on:
                continue
            d_ev = sorted(a["log_evidence"] - b["log_evidence"] for a, b in zip(on, off))
            d_acc = sorted(a["test_accuracy"] - b["test_accuracy"] for a, b in zip(on, off))
            summary.append(
                {
                    "gamma": gamma,
                    "solver": solver,
                    "fits": len(on),
                    "off: at max_iter": sum(r["at_max_iter"] for r in off),
                    "off: cycling": sum(r["end"] == "max_iter, cycling" for r in off),
                    "on: cycle stops": sum(r["end"] == "cycle stop" for r in on),
                    "on: at max_iter": sum(r["at_max_iter"] for r in on),
                    "iterations off / on": f"{sum(r['n_iter'] for r in off)} / "
                    f"{sum(r['n_iter'] for r in on)}",
                    "changed fits": sum(a["n_iter"] != b["n_iter"] for a, b in zip(on, off)),
                    "Δ evidence on − off (min, median, max)": f"{d_ev[0]:+.2f}, "
                    f"{d_ev[len(d_ev) // 2]:+.2f}, {d_ev[-1]:+.2f}",
                    "Δ accuracy on − off (min, max)": f"{d_acc[0]:+.4f}, {d_acc[-1]:+.4f}",
                }
            )
    write_summary_and_fits(
        "sbl_narrow_kernels",
        "DQNSBLClassifier: narrow RBF kernels on noisy labels",
        "Command: `python benchmarks/bench_narrow_kernels.py"
        + (f" --exact {' '.join(map(str, args.exact))}" if args.exact else "")
        + f"`; make_classification({N_FIT} + 2000, 20, n_informative=8, flip_y=0.05), the first"
        f" {N_FIT} rows to fit; 1 thread; each fit with the exact phase's cycle stop on (the"
        " default) and off. Summary, then every fit (`end`: converged, stopped for a cycle, or"
        " max_iter, where `cycling` says its last 100 iterations cycled).",
        summary,
        rows,
    )


if __name__ == "__main__":
    main()
