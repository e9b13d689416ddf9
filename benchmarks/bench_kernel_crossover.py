"""Where ``kernel_basis="auto"`` should leave the full kernel (issue 9): DQNSBLClassifier with
``kernel_basis="full"`` against ``"subset"`` on the same data, several seeds.

    python benchmarks/bench_kernel_crossover.py                       # n = 1,500 ... 3,000
    python benchmarks/bench_kernel_crossover.py --sizes 2000 --seeds 0

Problem: ``make_classification(n + 2000, n_features=20, n_informative=8, random_state=seed)``, the
first n rows train and the last 2,000 test, RBF ``gamma=0.05`` (as ``bench_kernel_scale.py``).
Each (n, seed) runs in its own subprocess with one BLAS/OpenMP/numba thread, after an untimed
warm-up fit on 60 samples; both arms fit once, one after the other, in that process (fit times
are single fits: read the ratio, not the digits). The subset path ends at a local optimum of the
evidence that need not be the full kernel's, so the table gives the paired differences of
accuracy and log evidence (subset minus full) beside the time ratio. Writes
``results/sbl_kernel_crossover.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results
from _harness import load_average, run_isolated

N_TEST = 2000
ARMS = ("full", "subset")


def worker(n, seed):
    """Fit both arms on one (n, seed); print one JSON line."""
    import warnings

    import numba
    import numpy as np
    from sklearn.datasets import make_classification
    from threadpoolctl import threadpool_limits

    from sparsekit import DQNSBLClassifier

    warnings.simplefilter("ignore")
    numba.set_num_threads(1)
    X, y = make_classification(
        n_samples=n + N_TEST, n_features=20, n_informative=8, random_state=seed
    )
    out = {"n": n, "seed": seed, "load": load_average()}
    with threadpool_limits(1):
        rng = np.random.RandomState(0)
        DQNSBLClassifier(gamma=0.5).fit(rng.normal(size=(60, 20)), np.arange(60) % 2)
        for arm in ARMS:
            est = DQNSBLClassifier(gamma=0.05, kernel_basis=arm)
            t = time.perf_counter()
            est.fit(X[:n], y[:n])
            out[arm] = {
                "fit_s": time.perf_counter() - t,
                "accuracy": float(est.score(X[n:], y[n:])),
                "vectors": len(est.relevance_),
                "n_iter": int(est.n_iter_),
                "converged": bool(est.n_iter_ < est.max_iter),
                "log_evidence": float(est.scores_[-1]),
            }
    print("RESULT " + json.dumps(out), flush=True)


def table(results):
    rows = []
    for r in results:
        if r.get("status") not in (None, "ok") or "full" not in r:
            rows.append({"n": f"{r['n']:,}", "seed": r["seed"], "subset / full time": "failed"})
            continue
        f, s = r["full"], r["subset"]

        def mark(a):
            return "" if a["converged"] else " (max_iter)"

        rows.append(
            {
                "n": f"{r['n']:,}",
                "seed": r["seed"],
                "full fit s": f"{f['fit_s']:.2f}{mark(f)}",
                "subset fit s": f"{s['fit_s']:.2f}{mark(s)}",
                "subset / full time": s["fit_s"] / f["fit_s"],
                "acc full": f["accuracy"],
                "acc subset − full (pp)": f"{100 * (s['accuracy'] - f['accuracy']):+.2f}",
                "log evidence full": f"{f['log_evidence']:.1f}",
                "evidence subset − full": f"{s['log_evidence'] - f['log_evidence']:+.1f}",
                "vectors full / subset": f"{f['vectors']} / {s['vectors']}",
            }
        )
    return rows


def report(results):
    rows = table(results)
    return (
        "DQNSBLClassifier(kernel_basis='full') against 'subset', RBF gamma 0.05, "
        "make_classification(20 features, 8 informative), one thread, single fits "
        "(`benchmarks/bench_kernel_crossover.py`).\n\n" + markdown_table(rows)
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", nargs=2, type=int, metavar=("N", "SEED"))
    p.add_argument("--sizes", default="1500,2000,2500,3000")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    p.add_argument("--name", default="sbl_kernel_crossover")
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    results = []
    for n in (int(v) for v in args.sizes.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            r = run_isolated(__file__, [n, seed], args.timeout, {"n": n, "seed": seed})
            print(json.dumps(r), flush=True)
            results.append(r)
            payload = {"environment": environment(), "results": results}
            write_results(args.name, report(results), payload)


if __name__ == "__main__":
    main()
