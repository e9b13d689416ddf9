"""Which kernel should take the classifier's exact Laplace step (issue 9): whole kernel fits with
``sparsekit.sbl._classifier_kernels.BLAS_MIN_WORK`` set to each value of ``--thresholds``.

    python benchmarks/bench_laplace_step.py                        # 2e7 (old), 3e5 (default), 0
    python benchmarks/bench_laplace_step.py --thresholds 3e4,3e5,1e6 --repeats 7 --quick

Below the threshold (``n m^2``) a Laplace step is the numba kernel (loops, the Gram matrix at every
Newton iterate), above it the BLAS/LAPACK kernel with chord steps. One process, one BLAS/OpenMP/
numba thread (set before numpy is imported), an untimed warm-up fit per problem and threshold
(numba compilation), then ``--repeats`` rounds in which every threshold fits once, in turn (the
machine's drift falls on all arms alike); the table has each arm's median and the ratio to the
first threshold's. Problems: ``make_classification(n + 500, n_features=20, n_informative=8,
random_state=1)`` with n = 200, 600, 1,500 (RBF gamma 0.05; 1,500 is skipped with ``--quick``),
breast cancer (standardised, first 400 rows train, gamma "scale") and ``make_moons(n + 500,
noise=0.25, random_state=0)`` with n = 40 and 300 (gamma 2). The model columns (iterations,
relevance vectors, test accuracy, final log evidence) show whether the arms fit the same model.
Writes ``results/sbl_laplace_step.{md,json}``.
"""

from __future__ import annotations

import os
import sys

# --default-threads: the libraries' own thread counts (what n_jobs=None fits get)
DEFAULT_THREADS = "--default-threads" in sys.argv
if not DEFAULT_THREADS:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import statistics
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results
from _harness import load_average


def problems(quick):
    from sklearn.datasets import load_breast_cancer, make_classification, make_moons
    from sklearn.preprocessing import StandardScaler

    for n in (200, 600) if quick else (200, 600, 1500):
        X, y = make_classification(
            n_samples=n + 500, n_features=20, n_informative=8, random_state=1
        )
        yield f"make_classification n={n}", X[:n], y[:n], X[n:], y[n:], 0.05
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    yield "breast cancer n=400", X[:400], y[:400], X[400:], y[400:], "scale"
    for n in (40, 300):
        X, y = make_moons(n_samples=n + 500, noise=0.25, random_state=0)
        yield f"make_moons n={n}", X[:n], y[:n], X[n:], y[n:], 2.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--thresholds", default="2e7,3e5,0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--name", default="sbl_laplace_step")
    p.add_argument(
        "--default-threads",
        action="store_true",
        help="leave BLAS/OpenMP/numba at their own thread counts (n_jobs=None fits)",
    )
    args = p.parse_args()
    thresholds = [float(v) for v in args.thresholds.split(",")]

    from threadpoolctl import threadpool_limits

    from sparsekit import DQNSBLClassifier
    from sparsekit.sbl import _classifier_kernels as ck

    warnings.simplefilter("ignore")
    default = ck.BLAS_MIN_WORK
    rows, raw = [], []
    load0 = load_average()
    t_start = time.perf_counter()
    with nullcontext() if DEFAULT_THREADS else threadpool_limits(1):
        for name, X, y, Xt, yt, gamma in problems(args.quick):
            times = {b: [] for b in thresholds}
            fits = {}
            for rep in range(args.repeats + 1):
                for b in thresholds:
                    ck.BLAS_MIN_WORK = b
                    est = DQNSBLClassifier(gamma=gamma)
                    t = time.perf_counter()
                    est.fit(X, y)
                    if rep:  # round 0 is the warm-up
                        times[b].append(time.perf_counter() - t)
                    fits[b] = est
            ck.BLAS_MIN_WORK = default
            base = statistics.median(times[thresholds[0]])
            for b in thresholds:
                est = fits[b]
                med = statistics.median(times[b])
                rows.append(
                    {
                        "problem": name,
                        "BLAS_MIN_WORK": f"{b:g}",
                        "fit s": med,
                        f"vs {thresholds[0]:g}": med / base,
                        "iterations": est.n_iter_,
                        "vectors": len(est.relevance_),
                        "accuracy": est.score(Xt, yt),
                        "log evidence": f"{est.scores_[-1]:.6f}",
                    }
                )
                raw.append({**rows[-1], "fit_s_all": times[b]})
                print(rows[-1], flush=True)
    wall = time.perf_counter() - t_start
    threads = "the libraries' own thread counts (n_jobs=None)" if DEFAULT_THREADS else "one thread"
    header = (
        f"Classifier exact Laplace step, numba kernel below BLAS_MIN_WORK (n m^2), BLAS kernel "
        f"with chord steps above (`python benchmarks/bench_laplace_step.py "
        f"--thresholds {args.thresholds} --repeats {args.repeats}"
        f"{' --quick' if args.quick else ''}{' --default-threads' if DEFAULT_THREADS else ''}`); "
        f"{threads}, "
        f"medians of {args.repeats} fits per "
        f"arm, arms interleaved. Load average {load0} before, {load_average()} after; wall "
        f"{wall / 60:.1f} min.\n\n"
    )
    payload = {"environment": environment(), "results": raw}
    write_results(args.name, header + markdown_table(rows), payload)


if __name__ == "__main__":
    main()
