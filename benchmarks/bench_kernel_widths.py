"""DQNSBLClassifier across RBF widths a grid search tries, against SVC at the same width: the
exact finish after a diagonal phase that stopped with more than ``exact_switch`` bases
(``_engine._switch_down``), on and off.

    python benchmarks/bench_kernel_widths.py                        # gamma 0.05 0.2, seeds 0-2
    python benchmarks/bench_kernel_widths.py --gammas 1.0 --seeds 0

Wider kernels (gamma 0.4 and 1.0 here, where SVC is at chance) can take minutes per fit with the
hand-over: the exact phase keeps re-admitting bases worth about 0.01 nats each.

Problem: ``make_classification(4000, 20, n_informative=8, flip_y=0.03, random_state=seed)``, the
first 2,000 rows to fit (the full kernel: "auto" keeps it up to 2,500 samples), the other 2,000
to test; ``gamma="scale"`` is about 0.05 there. One BLAS/numba thread. Each fit runs twice in the
same process: the default (the hand-over on) and with ``_switch_down`` returning False (the fit
then ends with the diagonal phase's model, as before the hand-over existed); SVC(gamma) is the
peer. Per fit: seconds, iterations, whether the hand-over happened, the last log evidence, test
accuracy and relevance vectors.

Writes benchmarks/results/sbl_kernel_widths.md and .json.
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


def data(seed):
    X, y = make_classification(2 * N_FIT, 20, n_informative=8, flip_y=0.03, random_state=seed)
    return X[:N_FIT], y[:N_FIT], X[N_FIT:], y[N_FIT:]


def fit_one(gamma, seed, hand_over):
    X, y, Xt, yt = data(seed)
    real = _engine._switch_down
    calls = []

    def recording(*args):
        pruned = real(*args) if hand_over else False
        calls.append(pruned)
        return pruned

    with warnings.catch_warnings(), mock.patch.object(_engine, "_switch_down", recording):
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        est = DQNSBLClassifier(gamma=gamma, n_jobs=1).fit(X, y)
        seconds = time.perf_counter() - t
    return {
        "gamma": gamma,
        "seed": seed,
        "hand_over": "on" if hand_over else "off",
        "stopped above exact_switch": bool(calls),
        "fit s": round(seconds, 2),
        "n_iter": int(est.n_iter_),
        "log_evidence": float(est.scores_[-1]),
        "test_accuracy": float(est.score(Xt, yt)),
        "relevance_vectors": len(est.relevance_),
    }


def svc_accuracy(gamma, seed):
    X, y, Xt, yt = data(seed)
    return float(SVC(gamma=gamma).fit(X, y).score(Xt, yt))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gammas", type=float, nargs="*", default=[0.05, 0.2])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = ap.parse_args(argv)
    rows = []
    with threadpool_limits(limits=1):
        for gamma in args.gammas:
            for seed in args.seeds:
                svc = svc_accuracy(gamma, seed)
                for hand_over in (True, False):
                    row = fit_one(gamma, seed, hand_over)
                    row["SVC accuracy"] = svc
                    rows.append(row)
                    print(row, flush=True)
    summary = []
    for gamma in args.gammas:
        on = [r for r in rows if r["gamma"] == gamma and r["hand_over"] == "on"]
        off = [r for r in rows if r["gamma"] == gamma and r["hand_over"] == "off"]
        d_ev = sorted(a["log_evidence"] - b["log_evidence"] for a, b in zip(on, off))
        d_acc = sorted(a["test_accuracy"] - b["test_accuracy"] for a, b in zip(on, off))
        summary.append(
            {
                "gamma": gamma,
                "fits": len(on),
                "stopped above exact_switch": sum(r["stopped above exact_switch"] for r in off),
                "accuracy on / off / SVC (mean)": " / ".join(
                    f"{sum(v) / len(v):.4f}"
                    for v in (
                        [r["test_accuracy"] for r in on],
                        [r["test_accuracy"] for r in off],
                        [r["SVC accuracy"] for r in on],
                    )
                ),
                "Δ accuracy on − off (min, max)": f"{d_acc[0]:+.4f}, {d_acc[-1]:+.4f}",
                "Δ evidence on − off (min, max)": f"{d_ev[0]:+.1f}, {d_ev[-1]:+.1f}",
                "vectors on / off (mean)": f"{sum(r['relevance_vectors'] for r in on) / len(on):.0f}"
                f" / {sum(r['relevance_vectors'] for r in off) / len(off):.0f}",
                "fit s on / off (median)": f"{sorted(r['fit s'] for r in on)[len(on) // 2]:.1f} / "
                f"{sorted(r['fit s'] for r in off)[len(off) // 2]:.1f}",
            }
        )
    write_summary_and_fits(
        "sbl_kernel_widths",
        "DQNSBLClassifier across RBF widths: the exact finish after a diagonal phase that "
        "stopped above exact_switch",
        "Command: `python benchmarks/bench_kernel_widths.py"
        + f" --gammas {' '.join(map(str, args.gammas))} --seeds {' '.join(map(str, args.seeds))}`"
        f"; make_classification(2 x {N_FIT}, 20, n_informative=8, flip_y=0.03), the first"
        f" {N_FIT} rows to fit (full kernel), the rest to test; 1 thread; each fit with the"
        " hand-over on (the default) and off (the diagonal phase's model, as before). Summary,"
        " then every fit.",
        summary,
        rows,
    )


if __name__ == "__main__":
    main()
