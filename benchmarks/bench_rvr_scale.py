"""Kernel RVR fit time and memory against n (issue 9, part 1): DQNSBLRegressor's subset and full
kernel bases against SVR and KernelRidge.

    python benchmarks/bench_rvr_scale.py                                 # n = 2k, 5k, 10k, 20k
    python benchmarks/bench_rvr_scale.py --sizes 2000 --repeats 1        # quick

Problem: Friedman #1 (``make_friedman1``, noise std 1) with n training samples (seed 0) and
2,000 noise-free test points (seed 1), inputs standardised on the training part, RBF kernel with
``gamma=0.05`` (= 0.5 / d, the middle of ``bench_rvr.py``'s grid) for every method. Arms:
``DQNSBLRegressor(kernel="rbf", kernel_basis="subset")`` and ``"full"`` (the n x n kernel; skipped
above ``--full-max``), ``SVR(C=10, epsilon=0.1)`` and ``KernelRidge(alpha=0.1)`` on the
standardised target (references with fixed C / alpha, as in ``bench_rvr.py``). Every fit runs
in its own subprocess with one BLAS/OpenMP/numba thread, after one untimed warm-up fit on 60
samples (numba compilation); the timed section is ``fit`` alone. Fits under a minute are
repeated (median of ``--repeats``). Peak memory is the worker's peak RSS minus its RSS before
the fits. The load average is recorded before and after each fit. Writes
``results/rvr_scale.{md,json}``.
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
GAMMA = 0.05
LONG_FIT_S = 60.0  # fits longer than this run once


def load(n):
    from sklearn.datasets import make_friedman1
    from sklearn.preprocessing import StandardScaler

    X, y = make_friedman1(n_samples=n, noise=1.0, random_state=0)
    Xt, yt = make_friedman1(n_samples=N_TEST, noise=0.0, random_state=1)
    sc = StandardScaler().fit(X)
    return sc.transform(X), y, sc.transform(Xt), yt


def make_estimator(arm):
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    if arm == "SVR":
        return TransformedTargetRegressor(
            SVR(C=10.0, epsilon=0.1, gamma=GAMMA), transformer=StandardScaler()
        )
    if arm == "KernelRidge":
        return TransformedTargetRegressor(
            KernelRidge(kernel="rbf", gamma=GAMMA, alpha=0.1), transformer=StandardScaler()
        )
    from sparsekit import DQNSBLRegressor

    return DQNSBLRegressor(kernel="rbf", gamma=GAMMA, kernel_basis=arm.split("=")[1])


def vectors(arm, est):
    if arm == "SVR":
        return int(est.regressor_.support_.size)
    if arm == "KernelRidge":
        return int(est.regressor_.dual_coef_.shape[0])
    return int(est.relevance_.size)


def worker(arm, n, repeats):
    """Fit ``arm`` on ``n`` samples in this process; print one JSON line."""
    import resource
    import warnings

    import numba
    import numpy as np
    import psutil
    from threadpoolctl import threadpool_limits

    warnings.simplefilter("ignore")
    numba.set_num_threads(1)
    Xtr, ytr, Xte, yte = load(n)
    with threadpool_limits(1):
        rng = np.random.RandomState(0)
        make_estimator(arm).fit(rng.normal(size=(60, Xtr.shape[1])), rng.normal(size=60))
        rss0 = psutil.Process().memory_info().rss
        times, loads = [], []
        while True:
            est = make_estimator(arm)
            load0 = load_average()
            t = time.perf_counter()
            est.fit(Xtr, ytr)
            times.append(time.perf_counter() - t)
            loads.append([load0[0] if load0 else None, (load_average() or [None])[0]])
            if len(times) >= repeats or times[-1] > LONG_FIT_S:
                break
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mse = float(np.mean((est.predict(Xte) - yte) ** 2))
    out = {
        "arm": arm,
        "n": n,
        "test_mse": mse,
        "vectors": vectors(arm, est),
        "fit_s": float(np.median(times)),
        "fit_s_all": times,
        "peak_mib": max(0.0, (peak - rss0) / 2**20),
        "load": loads,
        "status": "ok",
    }
    if arm.startswith("kernel_basis"):
        out["n_iter"] = int(est.n_iter_)
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(arm, n, repeats, timeout):
    return run_isolated(__file__, [arm, n, repeats], timeout, {"arm": arm, "n": n})


def report(results):
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        svr = next((s for s in results if s["n"] == r["n"] and s["arm"] == "SVR"), None)
        rows.append(
            {
                "n": f"{r['n']:,}",
                "method": r["arm"],
                "fit s": r["fit_s"] if ok else f"> {r['fit_s']:.0f} ({r['status']})",
                "/ SVR": r["fit_s"] / svr["fit_s"] if ok and svr and svr["status"] == "ok" else "",
                "test MSE": r.get("test_mse", ""),
                "vectors": r.get("vectors", ""),
                "iterations": r.get("n_iter", ""),
                "peak MiB": r.get("peak_mib", ""),
                "load": "–".join(
                    f"{v:.1f}" for v in (r["load"][0][0], r["load"][-1][1]) if v is not None
                ),
                "raw fit s": ", ".join(f"{t:.1f}" for t in r.get("fit_s_all", [])),
            }
        )
    return (
        "DQNSBLRegressor (RBF, gamma 0.05) on Friedman #1 (noise std 1; test MSE on 2,000 "
        "noise-free points), kernel_basis subset against full, with SVR and KernelRidge; one "
        "thread, each fit in its own process (`benchmarks/bench_rvr_scale.py`).\n\n"
        + markdown_table(rows)
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", nargs=3, metavar=("ARM", "N", "REPEATS"))
    p.add_argument("--sizes", default="2000,5000,10000,20000")
    p.add_argument("--full-max", type=int, default=10000, help="largest n for the full kernel")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    p.add_argument("--name", default="rvr_scale")
    args = p.parse_args()
    if args.worker:
        arm, n, repeats = args.worker
        worker(arm, int(n), int(repeats))
        return
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        arms = ["SVR", "KernelRidge", "kernel_basis=subset"]
        if n <= args.full_max:
            arms.append("kernel_basis=full")
        for arm in arms:
            r = run_worker(arm, n, args.repeats, args.timeout)
            print(json.dumps(r), flush=True)
            results.append(r)
            write_results(
                args.name, report(results), {"environment": environment(), "results": results}
            )


if __name__ == "__main__":
    main()
