"""Threads and scale (issue 9, parts 2 and 4): n_jobs=1 against n_jobs=2, and prediction cost
against SVC's.

    python benchmarks/bench_threads.py                        # n = 20,000 RBF fit, IMDB, predict
    python benchmarks/bench_threads.py --n 3000 --repeats 3   # reduced (busy 2-core machine)
    python benchmarks/bench_threads.py --sections overhead    # only the per-call overhead table

Sections (each writes one table of benchmarks/results/sbl_threads.md):

* ``overhead``: why two threads were 5-8x slower. Per-call wall and CPU microseconds of the
  operations a fit repeats thousands of times, on one and on two threads: a length-n ``ddot``
  (OpenBLAS), an n x 200 GEMV, a numba ``prange`` pass over n x 50 and n x 2,000 columns, a
  LAPACK Cholesky factorisation and the regressor's Cholesky posterior at m = 166 (why m-by-m
  LAPACK stays on one thread), and the sparse basis's products (numba, and scipy's for scale).
* ``rbf``: ``DQNSBLClassifier(gamma=0.05)`` on ``make_classification(n, n_features=20,
  n_informative=8, random_state=0)`` with n_jobs=1, n_jobs=2, and n_jobs=2 with the load-average
  cap switched off (two threads whatever the load: what forcing them costs on a busy machine).
  Timed section: ``fit``.
* ``imdb``: the linear classifier on IMDB TF-IDF (as ``bench_text.py``), the same three arms.
* ``predict``: one DQN fit and one ``SVC(gamma=0.05)`` fit on the RBF data, then
  ``predict`` on n_test fresh samples for several n_test: the DQN model evaluates the kernel
  against its m relevance vectors, SVC against its support vectors. One thread.

Arms are interleaved per repeat after one untimed warm-up (``_harness.measure``); medians and raw
times are reported with the load average before and after, and the thread count each n_jobs=2 fit
actually used (``sparsekit.utils._threads.fit_thread_count``: n_jobs capped by the cores the
load average leaves idle). Speed-ups from threads can only be measured on an idle machine; rerun
there for the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

# bench_text (imported by the imdb section) sets NUMBA_NUM_THREADS=1 unless it is set; numba
# rereads that variable at each compilation and refuses a change once its threads run, so the
# count numba starts with is pinned here, before numba is imported
os.environ.setdefault("NUMBA_NUM_THREADS", str(os.cpu_count() or 1))
import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, write_results
from _harness import load_average, measure


def _per_call(fn, calls):
    fn()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6, (time.process_time() - c) / calls * 1e6


def section_overhead(n):
    import scipy.sparse as sp
    from scipy.linalg.lapack import dpotrf
    from threadpoolctl import threadpool_limits

    from sparsekit.sbl._design import scatter_parts
    from sparsekit.sbl._kernels import csc_matmat, csc_rmatmat, weighted_sq_column_norms
    from sparsekit.sbl._regression_solver import posterior

    rng = np.random.default_rng(0)
    x, b = rng.random(n), rng.random(n)
    A = np.asfortranarray(rng.random((n, 200)))
    v = rng.random(200)
    small = np.asfortranarray(rng.random((n, 50)))
    big = np.asfortranarray(rng.random((n, 2000)))
    F = rng.random((332, 166))
    G = F.T @ F + np.eye(166)
    # a TF-IDF-like sparse basis: n rows, 300 entries per row over 300,000 columns
    S = sp.random(n, 300_000, density=1e-3, format="csc", random_state=rng)
    V, U = rng.random((S.shape[1], 1)), rng.random((n, 1))
    parts = scatter_parts(S.nnz, n, 1)
    ops = [
        (f"ddot, length {n:,}", lambda: x @ b, 2000),
        (f"GEMV {n:,} x 200", lambda: A @ v, 200),
        (f"numba prange pass {n:,} x 50", lambda: weighted_sq_column_norms(small, b), 200),
        (f"numba prange pass {n:,} x 2,000", lambda: weighted_sq_column_norms(big, b), 5),
        ("Cholesky (LAPACK dpotrf), m = 166", lambda: dpotrf(G, lower=1), 200),
        (
            "regressor's Cholesky posterior, m = 166",
            lambda: posterior(G, 1.0, np.ones(166), G[0]),
            50,
        ),
        (
            f"sparse Phi @ v, {n:,} x 300,000, {S.nnz:,} entries (numba)",
            lambda: csc_matmat(S.indptr, S.indices, S.data, V, n, parts),
            20,
        ),
        (
            f"sparse Phi.T @ u, {n:,} x 300,000 (numba)",
            lambda: csc_rmatmat(S.indptr, S.indices, S.data, U),
            20,
        ),
        (f"sparse Phi @ v, {n:,} x 300,000 (scipy, one thread)", lambda: S @ V, 20),
    ]
    rows = []
    old = numba.get_num_threads()
    for name, fn, calls in ops:
        row = {"operation": name}
        for k in (1, 2):
            if k > numba.config.NUMBA_NUM_THREADS:
                continue
            numba.set_num_threads(k)
            with threadpool_limits(k, user_api="blas"):
                wall, cpu = _per_call(fn, calls)
            row[f"{k} thread us"] = wall
            row[f"{k} thread CPU us"] = cpu
        if "2 thread us" in row:
            row["2 / 1 threads"] = row["2 thread us"] / row["1 thread us"]
        rows.append(row)
    numba.set_num_threads(old)
    return rows


def _thread_arms(make, X, y):
    from sparsekit.utils import _threads

    def arm_for(n_jobs, cap=True):
        def arm(clock):
            est = make(n_jobs)
            saved = _threads._load_average
            if not cap:
                _threads._load_average = lambda: 0.0
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    used = _threads.fit_thread_count(n_jobs)
                    with clock.section("fit"):
                        est.fit(X, y)
            finally:
                _threads._load_average = saved
            return est, used

        return arm

    return {
        "n_jobs=1": arm_for(1),
        "n_jobs=2": arm_for(2),
        "n_jobs=2, load cap off": arm_for(2, cap=False),
    }


def _thread_rows(label, res, score):
    base = res.median("n_jobs=1", "fit")
    rows = []
    for arm in res.times:
        est, used = res.last[arm]
        wall = res.median(arm, "fit")
        rows.append(
            {
                "problem": label,
                "arm": arm,
                "threads used": used,
                "fit s": wall,
                "fit CPU s": float(np.median(res.cpu_times[arm]["fit"])),
                "speed-up vs n_jobs=1": base / wall,
                "score": score(est),
                "raw fit s": ", ".join(f"{t:.2f}" for t in res.times[arm]["fit"]),
            }
        )
    return rows


OVERHEAD_COLS = [
    ("operation", "operation"),
    ("1 thread us", "1 thread us"),
    ("1 thread CPU us", "1 thread CPU us"),
    ("2 thread us", "2 threads us"),
    ("2 thread CPU us", "2 threads CPU us"),
    ("2 / 1 threads", "2 / 1 threads"),
]

THREAD_COLS = [
    ("problem", "problem"),
    ("arm", "arm"),
    ("threads used", "threads used"),
    ("fit s", "fit s"),
    ("fit CPU s", "fit CPU s"),
    ("speed-up vs n_jobs=1", "speed-up vs n_jobs=1"),
    ("score", "test accuracy"),
    ("raw fit s", "raw fit s"),
]


def rbf_data(n, n_test, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n + n_test, n_features=20, n_informative=8, random_state=seed
    )
    return X[:n], y[:n], X[n:], y[n:]


def section_rbf(n, repeats):
    from sparsekit import DQNSBLClassifier

    X, y, Xt, yt = rbf_data(n, 2000)
    arms = _thread_arms(lambda j: DQNSBLClassifier(gamma=0.05, n_jobs=j), X, y)

    def warmup():  # numba's kernels compiled (a short subset-path fit), not a whole fit per arm
        small = DQNSBLClassifier(gamma=0.05, kernel_basis="subset", max_iter=30, n_jobs=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small.fit(X[:3000], y[:3000])

    res = measure(arms, repeats=repeats, warmup={name: warmup for name in arms})
    return _thread_rows(f"RBF n={n:,}", res, lambda est: float(est.score(Xt, yt)))


def section_imdb(repeats):
    from bench_text import load_imdb

    from sparsekit import DQNSBLClassifier

    Xtr, ytr, Xte, yte = load_imdb()
    res = measure(
        _thread_arms(lambda j: DQNSBLClassifier(kernel=None, n_jobs=j), Xtr, ytr), repeats=repeats
    )
    return _thread_rows(f"IMDB M={Xtr.shape[1]:,}", res, lambda est: float(est.score(Xte, yte)))


def section_predict(n, n_tests, repeats):
    from sklearn.svm import SVC

    from sparsekit import DQNSBLClassifier

    # one draw: the test samples come from the same distribution as the training ones
    X, y, Xall, yall = rbf_data(n, max(n_tests))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dqn = DQNSBLClassifier(gamma=0.05, n_jobs=1).fit(X, y)
    svc = SVC(gamma=0.05).fit(X, y)
    rows = []
    for n_test in n_tests:
        Xt, yt = Xall[:n_test], yall[:n_test]

        def arm(est, Xt=Xt):
            def run(clock):
                with clock.section("predict"):
                    return est.predict(Xt)

            return run

        res = measure({"DQN": arm(dqn), "SVC": arm(svc)}, repeats=repeats)
        d, s = res.median("DQN", "predict"), res.median("SVC", "predict")
        rows.append(
            {
                "n_train": n,
                "n_test": n_test,
                "DQN vectors": int(dqn.relevance_.shape[0]),
                "SVC vectors": int(svc.support_.shape[0]),
                "DQN predict ms": 1e3 * d,
                "SVC predict ms": 1e3 * s,
                "DQN / SVC time": d / s,
                "DQN us per test point": 1e6 * d / n_test,
                "SVC us per test point": 1e6 * s / n_test,
                "DQN accuracy": float(np.mean(res.last["DQN"] == yt)),
                "SVC accuracy": float(np.mean(res.last["SVC"] == yt)),
            }
        )
    return rows


def render(payload):
    env = payload["environment"]
    md = [
        (
            f"Machine: {env.get('cpus')} cores. Load average (1, 5, 15 min) before and after "
            "each section; medians of the repeats."
        )
    ]
    for key, title, cols in (
        ("overhead", "Per-call cost of the small operations a fit repeats:", OVERHEAD_COLS),
        ("threads", "n_jobs=1 against n_jobs=2:", THREAD_COLS),
        ("predict", "Prediction cost (one thread):", None),
    ):
        if key not in payload:
            continue
        sec = payload[key]
        rows = sec["rows"]
        cols = cols or [(k, k) for k in rows[0]]
        md += [
            "",
            f"{title} (load {sec['load_before']} -> {sec['load_after']}, repeats {sec['repeats']})",
            "",
            markdown_table(rows, cols),
        ]
    return "\n".join(md)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="training size of the RBF problem")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-test", type=int, nargs="*", default=[1_000, 4_000, 16_000])
    ap.add_argument(
        "--sections",
        nargs="*",
        default=["overhead", "rbf", "imdb", "predict"],
        choices=["overhead", "rbf", "imdb", "predict"],
        help="sections to run; the others keep their rows from the last results file",
    )
    args = ap.parse_args(argv)
    path = RESULTS / "sbl_threads.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload["environment"] = environment()

    def record(key, fn):
        before = load_average()
        rows = fn()
        payload[key] = {
            "rows": rows,
            "load_before": before,
            "load_after": load_average(),
            "repeats": args.repeats,
        }
        print(render(payload), flush=True)

    if "overhead" in args.sections:
        record("overhead", lambda: section_overhead(20_000))
    if "rbf" in args.sections or "imdb" in args.sections:
        previous = payload.get("threads", {}).get("rows", [])
        keep = [r for r in previous if not _rerun(r["problem"], args.sections)]

        def threads():
            rows = list(keep)
            if "rbf" in args.sections:
                rows += section_rbf(args.n, args.repeats)
            if "imdb" in args.sections:
                rows += section_imdb(args.repeats)
            return rows

        record("threads", threads)
    if "predict" in args.sections:
        record("predict", lambda: section_predict(args.n, args.n_test, args.repeats))
    write_results("sbl_threads", render(payload), payload)


def _rerun(problem, sections):
    return ("rbf" in sections and problem.startswith("RBF")) or (
        "imdb" in sections and problem.startswith("IMDB")
    )


if __name__ == "__main__":
    main()
