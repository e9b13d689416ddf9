"""DQNSBLClassifier with narrow RBF kernels on noisy labels: which fits reach ``max_iter``, and
which of those cycle (the ConvergenceWarning's diagnosis, ``_classifier.evidence_stalled``).

    python benchmarks/bench_narrow_kernels.py               # gamma 0.05 and 0.2, seeds 0-7
    python benchmarks/bench_narrow_kernels.py --exact 0 2   # also solver="exact" on seeds 0, 2

Problem: ``make_classification(400, 20, n_informative=8, flip_y=0.05, random_state=seed)``, the
defaults otherwise (``gamma="scale"`` is about 0.015-0.02 there). One BLAS/numba thread. Per fit:
iterations, whether the warning says it cycles (the log evidence of its last 50 exact iterations
moved without rising above the 50 before), the range of that evidence, the last log evidence and
the relevance vectors. Iteration counts and verdicts, not times, are the result.

Writes benchmarks/results/sbl_narrow_kernels.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results

from sparsekit import DQNSBLClassifier
from sparsekit.sbl._classifier import evidence_stalled


def fit_one(gamma, seed, solver):
    X, y = make_classification(400, 20, n_informative=8, flip_y=0.05, random_state=seed)
    scale = 1.0 / (X.shape[1] * X.var())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = DQNSBLClassifier(gamma=gamma, solver=solver, n_jobs=1).fit(X, y)
    at_max = est.n_iter_ >= est.max_iter
    stall = evidence_stalled(est.scores_) if at_max else None
    return {
        "gamma": gamma,
        "gamma_over_scale": gamma / scale,
        "solver": solver,
        "seed": seed,
        "n_iter": int(est.n_iter_),
        "at_max_iter": at_max,
        "cycling": stall is not None,
        "evidence_range": "" if stall is None else f"{stall[0]:.2f} to {stall[1]:.2f}",
        "log_evidence": float(est.scores_[-1]),
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
            rows.append(fit_one(gamma, seed, solver))
            print(rows[-1], flush=True)
    summary = []
    for gamma in args.gammas:
        for solver in ("dqn", "exact"):
            sel = [r for r in rows if r["gamma"] == gamma and r["solver"] == solver]
            if sel:
                summary.append(
                    {
                        "gamma": gamma,
                        "solver": solver,
                        "fits": len(sel),
                        "at_max_iter": sum(r["at_max_iter"] for r in sel),
                        "cycling": sum(r["cycling"] for r in sel),
                    }
                )
    env = environment()
    md = [
        "# DQNSBLClassifier: narrow RBF kernels on noisy labels",
        "",
        "Command: `python benchmarks/bench_narrow_kernels.py"
        + (f" --exact {' '.join(map(str, args.exact))}" if args.exact else "")
        + "`; make_classification(400, 20, n_informative=8, flip_y=0.05); 1 thread. Summary,"
        " then every fit (`cycling`: the ConvergenceWarning says more iterations will not help).",
        f"Environment: {env}",
        "",
        markdown_table(summary),
        "",
        markdown_table(rows),
    ]
    write_results("sbl_narrow_kernels", "\n".join(md), {"env": env, "rows": rows})


if __name__ == "__main__":
    main()
