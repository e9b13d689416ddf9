"""Scaling out (README "Scaling out"): linear DQN-SBL on dask arrays, joblib-dask GridSearchCV and
two-process AdaMoLE training.

0. ``DQNSBLRegressor().fit`` on a row-chunked float32 dask array X (n x M, generated and persisted
   on a LocalCluster of 2 single-threaded worker processes, never on the driver): fit time, the
   true support recovered, the dask fit against the numpy fit on a subsample (the first
   ``--dask-sub`` rows, both ways), and each worker's resident memory (after X is persisted, and
   its peak) against the bytes of its chunks. ``--dask-n 0`` skips it.
0b. ``DQNSBLClassifier(kernel=None)`` with its defaults (the exact Laplace phase and re-admission
   run chunk-wise) on a float32 dask X on the same cluster, against the numpy fit of the same
   data: fit times, iterations, the support, the largest coefficient difference. ``--clf-n``
   sets its rows (0, the default, skips it).

1. ``GridSearchCV(DQNSBLRegressor(kernel="rbf"))``, 3 gammas x 5 folds on n samples, with the
   default backend (``n_jobs=1``) and under ``joblib.parallel_backend("dask")`` on a LocalCluster
   of 2 single-threaded worker processes: wall time (median of ``--repeats``), equality of
   ``best_params_`` and the largest difference of the fold scores.
2. ``examples/adamole_torchrun.py`` on the tests' tiny BERT and toy sentiment data: 2 gloo
   processes (batch 8 each) against one process (batch 16): fit time, same predictions, the
   largest probability gap.

Usage (2 cores are enough; run where nothing else competes for them if the times matter)::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_scaling_out.py --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _two_workers():
    """A client on a LocalCluster of 2 single-threaded worker processes, loopback only."""
    from distributed import Client, LocalCluster

    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env=env,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def bench_search(n, repeats):
    import joblib
    from sklearn.model_selection import GridSearchCV, KFold

    from sparsekit import DQNSBLRegressor

    rng = np.random.RandomState(0)
    X = rng.uniform(-3, 3, size=(n, 4))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] + 0.1 * rng.randn(n)
    grid = {"gamma": [0.1, 0.3, 1.0]}
    cv = KFold(5, shuffle=True, random_state=0)
    est = DQNSBLRegressor(kernel="rbf")
    with _two_workers():
        GridSearchCV(est, grid, cv=cv).fit(X, y)  # numba compile, here and on the workers
        with joblib.parallel_backend("dask"):
            GridSearchCV(est, grid, cv=cv, n_jobs=-1).fit(X, y)
        t_local, t_dask = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            local = GridSearchCV(est, grid, cv=cv, n_jobs=1).fit(X, y)
            t_local.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with joblib.parallel_backend("dask"):
                remote = GridSearchCV(est, grid, cv=cv, n_jobs=-1).fit(X, y)
            t_dask.append(time.perf_counter() - t0)
    keys = [k for k in local.cv_results_ if k.startswith("split")]
    gap = max(np.abs(local.cv_results_[k] - remote.cv_results_[k]).max() for k in keys)
    return {
        "n": n,
        "fits": 15,
        "default_s": float(np.median(t_local)),
        "dask_2_workers_s": float(np.median(t_dask)),
        "same_best_params": remote.best_params_ == local.best_params_,
        "max_fold_score_gap": float(gap),
    }


def _worker_memory():
    import resource

    import psutil

    return psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _bytes_per_worker(client, arrays):
    """Bytes of the arrays' chunks held by each worker (replicas counted on each holder)."""
    sizes = client.nbytes(summary=False)
    held = dict.fromkeys(client.scheduler_info()["workers"], 0)
    for a in arrays:
        for key, workers in client.who_has(a).items():
            for w in workers:
                held[w] += sizes[key]
    return held


def _warm_up():
    import dask
    import dask.array as da

    from sparsekit import DQNSBLRegressor

    rng = np.random.default_rng(0)
    X = da.from_array(rng.normal(size=(200, 5)).astype(np.float32), chunks=(100, 5))
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DQNSBLRegressor(max_iter=3).fit(X, rng.normal(size=200))


def bench_dask_arrays(n, M, rows, n_sub, n_relevant=20):
    import dask
    import dask.array as da
    from distributed import wait

    from sparsekit import DQNSBLRegressor

    with _two_workers() as client:
        rng = np.random.default_rng(0)
        coef = np.zeros(M)
        support = np.sort(rng.choice(M, n_relevant, replace=False))
        coef[support] = rng.choice([-1.0, 1.0], n_relevant) * rng.uniform(0.5, 2.0, n_relevant)
        gen = da.random.default_rng(1)
        X = gen.standard_normal(size=(n, M), chunks=(rows, M), dtype=np.float32)
        noise = gen.standard_normal(size=n, chunks=rows)
        X = client.persist(X)
        y = client.persist(X.astype(np.float64) @ coef + 0.5 * noise + 3.0)
        wait([X, y])
        client.rebalance()  # the generating tasks need not spread the chunks evenly
        # numba compiles in every worker and the driver: a tiny untimed fit in each, first
        client.run(_warm_up)
        _warm_up()
        held = _bytes_per_worker(client, [X, y])
        base = client.run(_worker_memory)
        t0 = time.perf_counter()
        est = DQNSBLRegressor().fit(X, y)
        t_fit = time.perf_counter() - t0
        peak = client.run(_worker_memory)
        t0 = time.perf_counter()
        pred = est.predict(X[:n_sub]).compute()
        t_pred = time.perf_counter() - t0
        # the subsample check: numpy and dask fits of the first n_sub rows
        Xs, ys = dask.compute(X[:n_sub], y[:n_sub])
        pred_gap = float(np.abs(pred - est.predict(Xs)).max())
        t0 = time.perf_counter()
        ref = DQNSBLRegressor().fit(Xs, ys)
        t_np_sub = time.perf_counter() - t0
        t0 = time.perf_counter()
        sub = DQNSBLRegressor().fit(X[:n_sub], y[:n_sub])
        t_dask_sub = time.perf_counter() - t0
    found = np.flatnonzero(est.coef_)
    return {
        "n": n,
        "M": M,
        "chunk_rows": rows,
        "X_GiB": n * M * 4 / 2**30,
        "fit_s": t_fit,
        "n_iter": est.n_iter_,
        "relevant": int(found.size),
        "true_support_found": bool(np.isin(support, found).all()),
        "max_coef_error": float(np.abs(est.coef_ - coef).max()),
        "predict_rows": n_sub,
        "predict_s": t_pred,
        "predict_dask_vs_numpy_input": pred_gap,
        "sub_n": n_sub,
        "sub_numpy_fit_s": t_np_sub,
        "sub_dask_fit_s": t_dask_sub,
        "sub_max_coef_diff": float(np.abs(sub.coef_ - ref.coef_).max()),
        "sub_same_relevance": bool(np.array_equal(sub.relevance_, ref.relevance_)),
        "sub_same_n_iter": sub.n_iter_ == ref.n_iter_,
        "worker_chunk_MiB": [b / 2**20 for b in held.values()],
        "worker_rss_after_persist_MiB": [v[0] / 2**20 for v in base.values()],
        "worker_peak_rss_MiB": [v[1] / 2**10 for v in peak.values()],
    }


def _warm_up_classifier():
    import dask
    import dask.array as da

    from sparsekit import DQNSBLClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X[:, 0] + rng.logistic(size=200) > 0).astype(int)
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DQNSBLClassifier(kernel=None, max_iter=3).fit(da.from_array(X, chunks=(100, 5)), y)


def bench_dask_classifier(n, M, rows, n_relevant=10):
    """``DQNSBLClassifier(kernel=None)`` with its defaults (exact Laplace phase, re-admission) on
    a float32 dask X on 2 workers, against the numpy fit of the same data (small enough to fit)."""
    import dask
    import dask.array as da
    from distributed import wait

    from sparsekit import DQNSBLClassifier

    with _two_workers() as client:
        rng = np.random.default_rng(0)
        coef = np.zeros(M)
        support = np.sort(rng.choice(M, n_relevant, replace=False))
        coef[support] = rng.choice([-1.0, 1.0], n_relevant) * rng.uniform(0.5, 2.0, n_relevant)
        gen = da.random.default_rng(2)
        X = gen.standard_normal(size=(n, M), chunks=(rows, M), dtype=np.float32)
        u = gen.uniform(size=n, chunks=rows)
        X = client.persist(X)
        y = client.persist((X.astype(np.float64) @ coef + 0.5 + np.log(u / (1 - u)) > 0) * 1)
        wait([X, y])
        client.rebalance()
        client.run(_warm_up_classifier)
        _warm_up_classifier()
        Xn, yn = dask.compute(X, y)
        t0 = time.perf_counter()
        est = DQNSBLClassifier(kernel=None).fit(X, y)
        t_dask = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = DQNSBLClassifier(kernel=None).fit(Xn, yn)
    t_np = time.perf_counter() - t0
    found = np.flatnonzero(est.coef_[0])
    return {
        "n": n,
        "M": M,
        "chunk_rows": rows,
        "dask_fit_s": t_dask,
        "numpy_fit_s": t_np,
        "n_iter": [est.n_iter_, ref.n_iter_],
        "relevant": int(found.size),
        "true_support_found": bool(np.isin(support, found).all()),
        "exact_phase": est._cov is not None,
        # float64 internals (coef_ and sigma_ are float32, like X)
        "max_coef_diff": float(np.abs(est._coef_rel - ref._coef_rel).max()),
        "max_cov_rel_diff": float(
            max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(est._cov, ref._cov))
        ),
        "same_relevance": bool(np.array_equal(est.relevance_, ref.relevance_)),
    }


def _dask_classifier_table(r):
    return (
        "| dask classifier (defaults: exact phase, re-admission) | result |\n|---|---|\n"
        f"| data | n={r['n']:,}, M={r['M']}, float32, chunks of {r['chunk_rows']:,} rows, "
        "2 workers x 1 thread |\n"
        f"| fit | dask {r['dask_fit_s']:.1f} s, numpy {r['numpy_fit_s']:.1f} s; iterations "
        f"{r['n_iter'][0]} / {r['n_iter'][1]}; {r['relevant']} relevant features, true support "
        f"found: {r['true_support_found']}; exact phase ran: {r['exact_phase']} |\n"
        f"| dask fit = numpy fit (float64) | max coef difference {r['max_coef_diff']:.1e}, "
        f"covariance difference {r['max_cov_rel_diff']:.1e} (relative), same relevant set: "
        f"{r['same_relevance']} |\n"
    )


def _dask_table(r):
    chunk = ", ".join(f"{c:.0f}" for c in r["worker_chunk_MiB"])
    peaks = ", ".join(f"{p:.0f}" for p in r["worker_peak_rss_MiB"])
    base = ", ".join(f"{b:.0f}" for b in r["worker_rss_after_persist_MiB"])
    extra = ", ".join(
        f"{p - b:.0f}" for p, b in zip(r["worker_peak_rss_MiB"], r["worker_rss_after_persist_MiB"])
    )
    rows = [
        (
            "data",
            (
                f"n={r['n']:,}, M={r['M']}, float32 ({r['X_GiB']:.2f} GiB), chunks of "
                f"{r['chunk_rows']:,} rows, 2 workers x 1 thread"
            ),
        ),
        (
            "fit",
            (
                f"{r['fit_s']:.1f} s, {r['n_iter']} iterations, {r['relevant']} relevant "
                f"features, true support found: {r['true_support_found']}, "
                f"max coef error {r['max_coef_error']:.3f}"
            ),
        ),
        (
            f"subsample check (first {r['sub_n']:,} rows)",
            (
                f"dask fit = numpy fit: max coef "
                f"difference {r['sub_max_coef_diff']:.1e}, same relevant set: "
                f"{r['sub_same_relevance']}, same iterations: {r['sub_same_n_iter']}; numpy "
                f"{r['sub_numpy_fit_s']:.1f} s vs dask {r['sub_dask_fit_s']:.1f} s"
            ),
        ),
        (
            "memory per worker",
            (
                f"X and y chunks held {chunk} MiB; resident after persisting X {base} MiB; "
                f"peak during the fit {peaks} MiB (the fit's own: {extra} MiB)"
            ),
        ),
    ]
    lines = ["| dask arrays | result |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_torchrun(n_train, aux_loss_coef):
    sys.path.insert(0, str(ROOT / "tests" / "adamole"))
    from conftest import _make_sentiment, _save_bert

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sparsekit_ddp_"))
    model = _save_bert(tmp / "tiny_bert")
    X, y = _make_sentiment(n_train, seed=0)
    Xt, yt = _make_sentiment(200, seed=1)
    (tmp / "data.json").write_text(
        json.dumps({"X_train": X, "y_train": list(y), "X_test": Xt, "y_test": list(yt)})
    )
    common = ["--base-model", model, "--data", str(tmp / "data.json"), "--device", "cpu"]
    common += ["--epochs", "2", "--max-length", "16", "--num-experts", "4", "--lora-dropout", "0"]
    common += ["--learning-rate", "5e-3", "--aux-loss-coef", str(aux_loss_coef)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    results = {}
    for nproc, batch in ((1, 16), (2, 8)):
        out = tmp / f"p{nproc}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
        cmd += [str(ROOT / "examples" / "adamole_torchrun.py"), *common]
        cmd += ["--batch-size", str(batch), "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
        results[nproc] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    one, two = results[1][0], results[2]
    return {
        "n_train": n_train,
        "aux_loss_coef": aux_loss_coef,
        "one_process_fit_s": one["fit_seconds"],
        "two_process_fit_s": two[0]["fit_seconds"],
        "same_predictions_on_ranks": two[0]["predictions"] == two[1]["predictions"],
        "same_predictions_as_one_process": two[0]["predictions"] == one["predictions"],
        "max_proba_gap": float(np.abs(np.array(two[0]["proba"]) - np.array(one["proba"])).max()),
        "accuracy_1": one["accuracy"],
        "accuracy_2": two[0]["accuracy"],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-torchrun", action="store_true")
    p.add_argument("--dask-n", type=int, default=200_000)
    p.add_argument("--dask-m", type=int, default=1000)
    p.add_argument("--dask-rows", type=int, default=25_000)
    p.add_argument("--dask-sub", type=int, default=20_000)
    p.add_argument("--clf-n", type=int, default=0, help="dask classifier rows (0: skip)")
    p.add_argument("--clf-m", type=int, default=50)
    p.add_argument("--clf-rows", type=int, default=25_000)
    args = p.parse_args()
    out = {"load_average": os.getloadavg()}
    if args.clf_n:
        r = bench_dask_classifier(args.clf_n, args.clf_m, args.clf_rows)
        r["load_average"] = [out["load_average"][0], os.getloadavg()[0]]
        print(json.dumps(r), flush=True)
        results = ROOT / "benchmarks" / "results"
        (results / "scaling_out_dask_classifier.json").write_text(json.dumps(r, indent=1))
        cmd = "OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_scaling_out.py"
        (results / "scaling_out_dask_classifier.md").write_text(
            f"`{cmd} --clf-n {args.clf_n} --clf-m {args.clf_m} --clf-rows {args.clf_rows} "
            "--dask-n 0 --skip-search --skip-torchrun`, load average "
            f"{r['load_average'][0]:.1f} at start, {r['load_average'][1]:.1f} at end\n\n"
            + _dask_classifier_table(r)
        )
    if args.dask_n:
        out["dask_arrays"] = bench_dask_arrays(
            args.dask_n, args.dask_m, args.dask_rows, args.dask_sub
        )
        out["dask_arrays"]["load_average_end"] = os.getloadavg()
        print(json.dumps(out["dask_arrays"]), flush=True)
        results = ROOT / "benchmarks" / "results"
        (results / "scaling_out_dask.json").write_text(json.dumps(out["dask_arrays"], indent=1))
        cmd = "OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_scaling_out.py"
        (results / "scaling_out_dask.md").write_text(
            f"`{cmd} --dask-n {args.dask_n} --dask-m {args.dask_m} --dask-rows {args.dask_rows} "
            f"--dask-sub {args.dask_sub} --skip-search --skip-torchrun`, load average "
            f"{out['load_average'][0]:.1f} at start, "
            f"{out['dask_arrays']['load_average_end'][0]:.1f} at end\n\n"
            + _dask_table(out["dask_arrays"])
        )
    if not args.skip_search:
        out["search"] = bench_search(args.n, args.repeats)
        print(json.dumps(out["search"]), flush=True)
    # without the load-balancing loss the two fits are the same maths (see the tests); with it
    # each rank balances its own half-batch
    if not args.skip_torchrun:
        out["torchrun"] = [bench_torchrun(args.n_train, coef) for coef in (0.0, 1e-3)]
        for r in out["torchrun"]:
            print(json.dumps(r), flush=True)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
