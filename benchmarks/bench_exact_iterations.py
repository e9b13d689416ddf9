"""Where the exact phase of a kernel classifier spends its iterations (issue 9): one RBF fit of
``make_classification(n + 2000, n_features=20, n_informative=8, random_state=seed)`` (the first n
rows train, the last 2,000 test; gamma 0.05, as ``bench_kernel_scale.py``), with a count of the
exact iterations, the Tipping-Faul deletes and re-admissions, and the final log evidence.

    python benchmarks/bench_exact_iterations.py --n 2000 --seeds 0 1 2
    python benchmarks/bench_exact_iterations.py --n 2000 --seeds 0 --flat-tol 1e-6   # old stop

``--flat-tol`` overrides ``PathSettings.flat_tol`` (default ``sparsekit.sbl._engine.FLAT_TOL``);
``--delete-cap`` overrides ``_engine.DELETE_CAP`` (0: no cap). One BLAS/numba thread.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--flat-tol", type=float, default=None)
    p.add_argument("--delete-cap", type=int, default=None)
    a = p.parse_args()

    import numpy as np
    from sklearn.datasets import make_classification

    import sparsekit.sbl._classifier as classifier_module
    import sparsekit.sbl._engine as engine
    from sparsekit import DQNSBLClassifier

    if a.flat_tol is not None:
        classifier_module.PathSettings = functools.partial(engine.PathSettings, flat_tol=a.flat_tol)
    if a.delete_cap is not None:
        engine.DELETE_CAP = a.delete_cap or None
    counts = {"deletes": 0, "adds": 0}
    joint, add = engine.joint_delete, engine.apply_additions

    def counting_delete(*args, **kwargs):
        out = joint(*args, **kwargs)
        counts["deletes"] += int(out.sum())
        return out

    def counting_add(design, state, candidates, additions, d0):
        counts["adds"] += len(additions)
        return add(design, state, candidates, additions, d0)

    engine.joint_delete, engine.apply_additions = counting_delete, counting_add
    for seed in a.seeds:
        counts.update(deletes=0, adds=0)
        X, y = make_classification(
            n_samples=a.n + 2000, n_features=20, n_informative=8, random_state=seed
        )
        t0 = time.perf_counter()
        clf = DQNSBLClassifier(gamma=0.05).fit(X[: a.n], y[: a.n])
        fit_s = time.perf_counter() - t0
        row = {
            "n": a.n,
            "seed": seed,
            "flat_tol": a.flat_tol if a.flat_tol is not None else engine.FLAT_TOL,
            "delete_cap": engine.DELETE_CAP,
            "n_iter": int(clf.n_iter_),
            "log_evidence": round(float(clf.scores_[-1]), 3),
            "accuracy": float(clf.score(X[a.n :], y[a.n :])),
            "vectors": int(np.size(clf.relevance_)),
            "fit_s": round(fit_s, 2),
            "load": os.getloadavg()[0],
            **counts,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
