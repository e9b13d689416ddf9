"""Subnormal numbers and narrow RBF kernels: what flushing tiny entries to 0 buys
(``_kernels.FLUSH32`` for the float32 screen, ``FLUSH64`` for the float64 kernel columns).

    git worktree add --detach /tmp/f32 8f32bec   # before FLUSH32 (and the hand-over's cap)
    python benchmarks/bench_subnormal.py --case float32 --before /tmp/f32
    git worktree add --detach /tmp/f64 6c7fdbb   # before FLUSH64
    python benchmarks/bench_subnormal.py --case float64 --before /tmp/f64

Each case compares with the commit just before its change: "float32" fits gamma 0.4, whose
diagonal phase stops below exact_switch (the hand-over's cap, 6c7fdbb, does not apply there);
"float64" fits gamma 1, 3 and 10 (the cap applies to both arms).

1. A one-thread float32 GEMM of 256 x 1024 x 200 (the screen's product shape), medians of 7:
   normal inputs; a third of one input's entries subnormal (1e-40); normal inputs (1e-20) whose
   products are subnormal.
2. DQNSBLClassifier fits on ``make_classification(2n, 20, n_informative=8, flip_y=0.03,
   random_state=seed)``, the first n rows, one BLAS/numba thread, medians of 3 after a warm-up
   fit on 200 rows (numba compilation), each arm in its own subprocess: this tree ("after") and,
   with ``--before``, the tree at that path ("before"). Per fit: seconds, iterations and the last
   log evidence, and whether both arms ended in the same fit (iterations and evidence equal).

Writes benchmarks/results/sbl_subnormal_<case>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results
from _harness import time_call

HERE = Path(__file__).resolve().parent
# per case: (n, gamma, seed, max_iter)
FITS = {
    "float32": [(2000, 0.4, 0, 300)],
    "float64": [(1000, 1.0, 1, 1000), (1000, 3.0, 1, 1000), (1000, 10.0, 1, 1000)],
}


def gemm_rows():
    rng = np.random.default_rng(0)
    A = rng.random((256, 1024)).astype(np.float32)
    B = rng.random((1024, 200)).astype(np.float32)
    third = A.copy()
    third[:, ::3] = 1e-40
    cases = {
        "normal": (A, B),
        "a third of A subnormal": (third, B),
        "products subnormal": ((A * 1e-20).astype(np.float32), (B * 1e-20).astype(np.float32)),
    }
    rows = []
    with threadpool_limits(limits=1):
        for name, (a, b) in cases.items():
            median, _, _ = time_call(lambda a=a, b=b: a @ b, repeats=7)
            rows.append({"sgemm 256 x 1024 x 200": name, "ms (median of 7)": median * 1e3})
    return rows


def worker(fits):
    """Time the fits in this process (the sparsekit on sys.path); JSON rows on stdout."""
    from sklearn.datasets import make_classification

    import sparsekit
    from sparsekit import DQNSBLClassifier

    rows = [{"sparsekit": sparsekit.__file__}]
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, gamma, seed, max_iter in fits:
            X, y = make_classification(2 * n, 20, n_informative=8, flip_y=0.03, random_state=seed)

            est = DQNSBLClassifier(gamma=gamma, n_jobs=1, max_iter=max_iter)

            def fit(rows_=n, est=est, X=X, y=y):
                return est.fit(X[:rows_], y[:rows_])

            median, times, est = time_call(fit, repeats=3, warmup=lambda: fit(200))
            rows.append(
                {
                    "n": n,
                    "gamma": gamma,
                    "seed": seed,
                    "max_iter": max_iter,
                    "fit s (median of 3)": round(median, 2),
                    "all s": [round(t, 2) for t in times],
                    "n_iter": int(est.n_iter_),
                    "log_evidence": float(est.scores_[-1]),
                }
            )
    print(json.dumps(rows))


def run_arm(tree, case):
    """The worker's rows for ``case``, run on the sparsekit of ``tree`` (checked)."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--case", case],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=str(tree),
    ).stdout
    first, *rows = json.loads(out.strip().splitlines()[-1])
    if not Path(first["sparsekit"]).resolve().is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"the worker imported {first['sparsekit']}, not the tree {tree}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", choices=sorted(FITS), default="float64")
    ap.add_argument("--before", help="a source tree to time as the 'before' arm")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(FITS[args.case])
        return
    gemm = gemm_rows()
    print(gemm, flush=True)
    after = run_arm(HERE.parent, args.case)
    rows = []
    before = run_arm(args.before, args.case) if args.before else [None] * len(after)
    for a, b in zip(after, before):
        row = {k: a[k] for k in ("n", "gamma", "seed", "max_iter")}
        row["after: fit s"] = a["fit s (median of 3)"]
        row["after: n_iter"] = a["n_iter"]
        row["after: log evidence"] = f"{a['log_evidence']:.10g}"
        if b is not None:
            row["before: fit s"] = b["fit s (median of 3)"]
            row["before / after"] = f"{b['fit s (median of 3)'] / a['fit s (median of 3)']:.2f}"
            row["same fit"] = a["n_iter"] == b["n_iter"] and a["log_evidence"] == b["log_evidence"]
        rows.append(row)
        print(row, flush=True)
    env = environment()
    command = f"python benchmarks/bench_subnormal.py --case {args.case}" + (
        " --before <tree>" if args.before else ""
    )
    md = [
        "# Subnormal numbers and narrow RBF kernels",
        "",
        f"Command: `{command}` (module docstring; the before tree here: {args.before}).",
        f"Environment: {env}",
        "",
        markdown_table(gemm),
        "",
        markdown_table(rows),
    ]
    payload = {"env": env, "gemm": gemm, "fits": rows}
    write_results(f"sbl_subnormal_{args.case}", "\n".join(md), payload)


if __name__ == "__main__":
    main()
