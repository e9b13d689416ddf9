"""First fit after installing: numba compiles the kernels once, later processes load them from disk.

    python benchmarks/bench_first_run.py                 # fresh venv in a temporary folder
    python benchmarks/bench_first_run.py --repeats 5     # more cold runs per estimator

What a new user meets: a fresh virtual environment (``python -m venv``), the package installed from
this checkout like a wheel (``pip install .``, not editable), and then, for each estimator, a fresh
Python process that imports sparsekit and fits a small problem with the estimator's defaults. Before
every cold run the numba cache of the installed package is deleted, so each cold run compiles
everything that estimator needs. A warm run (a new process, cache kept) follows each cold run.

Columns: ``import`` (``import sparsekit`` in the fresh process), ``first fit`` (the fit that compiles,
the number the issue's target is about), ``fit, warm cache`` (a new process after the cold one:
kernels loaded from disk), ``fit, same process`` (a second fit right after the first: the solver
alone). Medians over ``--repeats`` cold/warm pairs. BLAS/OpenMP/numba are pinned to
``--threads`` threads (default 1; numba compiles on one thread anyway).

Writes benchmarks/results/first_run.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]

# (label, constructor call, problem); the problems are small so that the fit itself is short.
CASES = [
    ("DQNSBLRegressor()", "DQNSBLRegressor()", "regression"),
    ('DQNSBLRegressor(kernel="rbf")', 'DQNSBLRegressor(kernel="rbf")', "regression"),
    ("DQNSBLClassifier()", "DQNSBLClassifier()", "classification"),
    ("DQNSBLClassifier(kernel=None)", "DQNSBLClassifier(kernel=None)", "classification"),
]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import sparsekit
from sparsekit import DQNSBLClassifier, DQNSBLRegressor
from numba.core import event

compile_s, started = {}, {}


class Timer(event.Listener):
    # Wall time of each compilation of a sparsekit kernel (including the kernels it calls).
    def on_start(self, ev):
        started[id(ev.data["dispatcher"])] = time.perf_counter()

    def on_end(self, ev):
        d = ev.data["dispatcher"]
        name = getattr(getattr(d, "py_func", None), "__qualname__", "")
        module = getattr(getattr(d, "py_func", None), "__module__", "") or ""
        if module.startswith("sparsekit"):
            key = module.rsplit(".", 1)[-1] + "." + name
            compile_s[key] = compile_s.get(key, 0.0) + time.perf_counter() - started[id(d)]


event.register("numba:compile", Timer())
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 10))
y = X[:, 0] - 2 * X[:, 1] + 0.3 * rng.normal(size=300)
if sys.argv[2] == "classification":
    y = (y > 0).astype(int)
est = eval(sys.argv[1])
est.fit(X, y)
t2 = time.perf_counter()
eval(sys.argv[1]).fit(X, y)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "fit": t2 - t1, "refit": t3 - t2, "compile": compile_s}))
"""


def run(cmd, env, timeout=900, cwd=None):
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=cwd
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}")
    return out


def make_venv(where: Path, env) -> tuple[Path, float]:
    t0 = time.perf_counter()
    run([sys.executable, "-m", "venv", str(where)], env)
    py = where / "bin" / "python"
    install(py, env)
    return py, time.perf_counter() - t0


def install(py: Path, env, *extra):
    """``pip install .`` into the venv, removing the build folders it leaves in the checkout."""
    leftovers = [ROOT / "build", ROOT / "sparsekit_learn.egg-info"]
    existed = {p for p in leftovers if p.exists()}
    try:
        run([str(py), "-m", "pip", "install", "--quiet", *extra, str(ROOT)], env, timeout=1800)
    finally:
        for p in leftovers:
            if p not in existed:
                shutil.rmtree(p, ignore_errors=True)


def clear_numba_cache(package_dir: Path):
    for pattern in ("*.nbi", "*.nbc"):
        for f in package_dir.rglob(pattern):
            f.unlink()


def probe(py: Path, call: str, problem: str, env, cwd: Path):
    out = run([str(py), "-c", PROBE, call, problem], env, cwd=cwd)
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    result["compile_note"] = "compiling numba kernels" in out.stderr
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--venv", type=Path, default=None, help="reuse/keep the venv here")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    tmp = None
    if args.venv is None:
        tmp = Path(tempfile.mkdtemp(prefix="sparsekit-first-run-"))
        venv = tmp / "venv"
    else:
        venv = args.venv
    load_before = os.getloadavg()[0]
    if (venv / "bin" / "python").exists():
        py, install_s = venv / "bin" / "python", float("nan")
        install(py, env, "--no-deps", "--force-reinstall")
    else:
        py, install_s = make_venv(venv, env)
    print(f"venv ready in {install_s:.0f} s: {py}", flush=True)
    # Run from a neutral folder so that the checkout is not importable by accident.
    cwd = Path(tempfile.mkdtemp(prefix="sparsekit-cwd-"))

    where = "import os, sparsekit; print(os.path.dirname(sparsekit.__file__))"
    pkg_dir = Path(run([str(py), "-c", where], env, cwd=cwd).stdout.strip())
    if not str(pkg_dir).startswith(str(venv)):
        raise RuntimeError(f"the venv imports sparsekit from {pkg_dir}, not from its site-packages")

    rows, raw = [], {}
    try:
        for label, call, problem in CASES:
            cold, warm = [], []
            for _ in range(args.repeats):
                clear_numba_cache(pkg_dir)
                cold.append(probe(py, call, problem, env, cwd))
                warm.append(probe(py, call, problem, env, cwd))
            raw[label] = {"cold": cold, "warm": warm}
            row = {
                "estimator": label,
                "problem": f"{problem}, n=300, 10 features",
                "import": statistics.median(r["import"] for r in cold),
                "first": statistics.median(r["fit"] for r in cold),
                "warm": statistics.median(r["fit"] for r in warm),
                "refit": statistics.median(r["refit"] for r in cold),
                "note": "yes" if all(r["compile_note"] for r in cold) else "no",
                "quiet": "yes" if not any(r["compile_note"] for r in warm) else "no",
                "target": "met" if statistics.median(r["fit"] for r in cold) <= 5.0 else "missed",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)
    load_after = os.getloadavg()[0]

    # What dominates a cold first fit: compile time per kernel (medians over the cold runs;
    # a kernel's time includes the kernels it calls and compiles on the way).
    breakdown = []
    for label, runs in raw.items():
        kernels = sorted({k for r in runs["cold"] for k in r["compile"]})
        per = {
            k: statistics.median(r["compile"].get(k, 0.0) for r in runs["cold"]) for k in kernels
        }
        top = sorted(per.items(), key=lambda kv: -kv[1])[:4]
        breakdown.append(
            {
                "estimator": label,
                "kernels": len(kernels),
                "top": ", ".join(f"{k} {v:.1f} s" for k, v in top),
            }
        )

    columns = [
        ("estimator", "estimator (defaults)"),
        ("problem", "problem"),
        ("import", "import s"),
        ("first", "first fit s (compiles)"),
        ("warm", "fit s, warm cache (new process)"),
        ("refit", "fit s, same process"),
        ("note", "compile note printed"),
        ("quiet", "silent when cached"),
        ("target", "first fit ≤ 5 s"),
    ]
    meta = environment()
    meta.update(
        command="python benchmarks/bench_first_run.py " + " ".join(sys.argv[1:]),
        threads=args.threads,
        repeats=args.repeats,
        venv_install_s=install_s,
        loadavg_before=round(load_before, 2),
        loadavg_after=round(load_after, 2),
    )
    md = "\n".join(
        [
            "# First fit after installing (numba compilation)",
            "",
            (
                f"Command: `{meta['command']}`. Fresh venv, `pip install .` (took {install_s:.0f} s), "
                f"one fresh process per run, numba cache deleted before each cold run; medians of "
                f"{args.repeats}; {args.threads} BLAS/numba thread(s); load average "
                f"{meta['loadavg_before']} before, {meta['loadavg_after']} after, on {meta['cpus']} "
                "CPUs."
            ),
            "",
            markdown_table(rows, columns),
            "",
            (
                "Compilation per kernel in the cold runs (wall seconds, median; a kernel's time "
                "includes the kernels it calls and compiles first, so the numbers nest):"
            ),
            "",
            markdown_table(
                breakdown,
                [
                    ("estimator", "estimator"),
                    ("kernels", "kernels compiled"),
                    ("top", "slowest to compile"),
                ],
            ),
            "",
            f"Environment: {json.dumps(environment())}",
        ]
    )
    write_results("first_run", md, {"meta": meta, "rows": rows, "compile": breakdown, "raw": raw})
    print(md)


if __name__ == "__main__":
    main()
