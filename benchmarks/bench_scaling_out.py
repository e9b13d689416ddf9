"""Scaling out (README "Scaling out"): joblib-dask GridSearchCV and two-process AdaMoLE training.

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
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench_search(n, repeats):
    import joblib
    from distributed import Client, LocalCluster
    from sklearn.model_selection import GridSearchCV, KFold

    from sparsekit import DQNSBLRegressor

    rng = np.random.RandomState(0)
    X = rng.uniform(-3, 3, size=(n, 4))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] + 0.1 * rng.randn(n)
    grid = {"gamma": [0.1, 0.3, 1.0]}
    cv = KFold(5, shuffle=True, random_state=0)
    est = DQNSBLRegressor(kernel="rbf")
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        env=env,
    )
    client = Client(cluster)
    try:
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
    finally:
        client.close()
        cluster.close()
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
    args = p.parse_args()
    out = {"load_average": os.getloadavg()}
    if not args.skip_search:
        out["search"] = bench_search(args.n, args.repeats)
        print(json.dumps(out["search"]), flush=True)
    # without the load-balancing loss the two fits are the same maths (see the tests); with it
    # each rank balances its own half-batch
    out["torchrun"] = [bench_torchrun(args.n_train, coef) for coef in (0.0, 1e-3)]
    for r in out["torchrun"]:
        print(json.dumps(r), flush=True)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
