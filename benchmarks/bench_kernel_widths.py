"""DQNSBLClassifier across RBF widths a grid search tries, against SVC at the same width: the
exact finish after a diagonal phase that stopped with more than ``exact_switch`` bases
(``_engine._switch_down``), with its cap on the model's size (``_engine._within_cap``: 1.5 times
``exact_switch``), without the cap, and without the hand-over.

    python benchmarks/bench_kernel_widths.py          # gamma 0.05 0.2, seeds 0-2, all three arms
    python benchmarks/bench_kernel_widths.py --gammas 0.4 1.0 --name sbl_kernel_widths_narrow
    python benchmarks/bench_kernel_widths.py --classes 4 --n-fit 1200 --gammas 0.2 0.4 \
        --arms capped union --name sbl_kernel_widths_multiclass

Without the cap, kernels so narrow that SVC is at chance (gamma 0.4 and 1.0 here) can take
minutes per fit: the start from the hand-over keeps re-admitting bases worth a few thousandths of
a nat each, and the second start, which converges, gets what is left of ``max_iter``.

Problem: ``make_classification(4000, 20, n_informative=8, flip_y=0.03, random_state=seed)``, the
first 2,000 rows to fit (the full kernel: "auto" keeps it up to 2,500 samples), the other 2,000
to test; ``gamma="scale"`` is about 0.05 there. One BLAS/numba thread. Each fit runs in the same
process once per arm: "capped" (the default), "uncapped" (``_within_cap`` passes every addition)
and "off" (``_switch_down`` returns False: the fit ends with the diagonal phase's model, as
before the hand-over existed); "union" caps the bases all one-vs-rest problems hold together
instead of each problem's own (the rule before 2026-12-03: with several classes the problems
shared one cap; the additions best gain first); SVC(gamma) is the peer. ``--classes`` and
``--n-fit`` set ``n_classes`` and the rows to fit (as many again to test). Per fit: seconds, iterations, whether the
diagonal phase stopped above ``exact_switch``, the last log evidence, test accuracy, relevance
vectors, and whether the cap held back an addition at the end (its warning).

Writes benchmarks/results/<name>.md and .json (default name sbl_kernel_widths).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

from sklearn.datasets import make_classification
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_summary_and_fits

from sparsekit import DQNSBLClassifier
from sparsekit.sbl import _engine

N_FIT = 2000
ARMS = ("capped", "uncapped", "off", "union")


def data(seed, classes=2, n_fit=N_FIT):
    X, y = make_classification(
        2 * n_fit, 20, n_informative=8, n_classes=classes, flip_y=0.03, random_state=seed
    )
    return X[:n_fit], y[:n_fit], X[n_fit:], y[n_fit:]


def union_cap(design, state, lik, additions):
    """The "union" arm: one cap on the bases that all one-vs-rest problems hold together."""
    room = max(state.readmit_cap - lik.exact_size(design, state), 0)
    state.held_back = max(len(additions) - room, 0)
    return additions[:room]


def fit_one(gamma, seed, arm, classes=2, n_fit=N_FIT):
    X, y, Xt, yt = data(seed, classes, n_fit)
    real_switch, real_cap = _engine._switch_down, _engine._within_cap
    calls = []

    def switch(*args):
        pruned = real_switch(*args) if arm != "off" else False
        calls.append(pruned)
        return pruned

    def cap(design, state, lik, additions):
        if arm == "union" and state.readmit_cap is not None:
            return union_cap(design, state, lik, additions)
        return real_cap(design, state, lik, additions) if arm == "capped" else additions

    with (
        warnings.catch_warnings(record=True) as caught,
        mock.patch.object(_engine, "_switch_down", switch),
        mock.patch.object(_engine, "_within_cap", cap),
    ):
        warnings.simplefilter("always")
        t = time.perf_counter()
        est = DQNSBLClassifier(gamma=gamma, n_jobs=1).fit(X, y)
        seconds = time.perf_counter() - t
    return {
        "gamma": gamma,
        "seed": seed,
        "arm": arm,
        "stopped above exact_switch": bool(calls),
        "fit s": round(seconds, 2),
        "n_iter": int(est.n_iter_),
        "log_evidence": float(est.scores_[-1]),
        "test_accuracy": float(est.score(Xt, yt)),
        "relevance_vectors": len(est.relevance_),
        "cap held back": any("passed the add test" in str(w.message) for w in caught),
    }


def svc_accuracy(gamma, seed, classes=2, n_fit=N_FIT):
    X, y, Xt, yt = data(seed, classes, n_fit)
    return float(SVC(gamma=gamma).fit(X, y).score(Xt, yt))


def spread(pairs):
    """``min, max`` of paired differences, formatted."""
    d = sorted(a - b for a, b in pairs)
    return f"{d[0]:+.4g}, {d[-1]:+.4g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gammas", type=float, nargs="*", default=[0.05, 0.2])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="*", choices=ARMS, default=list(ARMS[:3]))
    ap.add_argument("--classes", type=int, default=2, help="make_classification's n_classes")
    ap.add_argument("--n-fit", type=int, default=N_FIT, help="rows to fit (as many to test)")
    ap.add_argument("--name", default="sbl_kernel_widths", help="results/<name>.md and .json")
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1):
        for gamma in args.gammas:
            for seed in args.seeds:
                svc = svc_accuracy(gamma, seed, args.classes, args.n_fit)
                for arm in args.arms:
                    row = fit_one(gamma, seed, arm, args.classes, args.n_fit)
                    row["SVC accuracy"] = svc
                    rows.append(row)
                    print(row, flush=True)
    summary = []
    for gamma in args.gammas:
        by = {a: [r for r in rows if r["gamma"] == gamma and r["arm"] == a] for a in args.arms}
        first = by[args.arms[0]]
        line = {
            "gamma": gamma,
            "fits per arm": len(first),
            "stopped above exact_switch": sum(r["stopped above exact_switch"] for r in first),
            "SVC accuracy (mean)": f"{sum(r['SVC accuracy'] for r in first) / len(first):.4f}",
        }
        for a, rs in by.items():
            line[f"{a}: accuracy (mean)"] = f"{sum(r['test_accuracy'] for r in rs) / len(rs):.4f}"
            line[f"{a}: vectors (mean)"] = (
                f"{sum(r['relevance_vectors'] for r in rs) / len(rs):.0f}"
            )
            line[f"{a}: fit s (median)"] = f"{sorted(r['fit s'] for r in rs)[len(rs) // 2]:.1f}"
        if "capped" in by:
            for other in (a for a in args.arms if a != "capped"):
                pairs = list(zip(by["capped"], by[other]))
                line[f"Δ evidence capped − {other} (min, max)"] = spread(
                    (a["log_evidence"], b["log_evidence"]) for a, b in pairs
                )
                line[f"Δ accuracy capped − {other} (min, max)"] = spread(
                    (a["test_accuracy"], b["test_accuracy"]) for a, b in pairs
                )
        summary.append(line)
    write_summary_and_fits(
        args.name,
        "DQNSBLClassifier across RBF widths: the exact finish after a diagonal phase that "
        "stopped above exact_switch",
        "Command: `python benchmarks/bench_kernel_widths.py"
        + f" --gammas {' '.join(map(str, args.gammas))} --seeds {' '.join(map(str, args.seeds))}"
        + f" --arms {' '.join(args.arms)} --classes {args.classes} --n-fit {args.n_fit}"
        + f" --name {args.name}`"
        f"; make_classification(2 x {args.n_fit}, 20, n_informative=8,"
        f" n_classes={args.classes}, flip_y=0.03), the first {args.n_fit} rows to fit (full"
        " kernel), the rest to test; 1 thread; arms: the hand-over with its cap at 1.5 x"
        " exact_switch bases per one-vs-rest problem (capped, the default), without the cap"
        " (uncapped), no hand-over (off: the diagonal phase's model), and one cap on the bases"
        " all problems hold together (union). Summary (paired differences over seeds), then"
        " every fit.",
        summary,
        rows,
    )


if __name__ == "__main__":
    main()
