"""Helpers shared by the benchmark scripts: peak memory, environment, result tables.

Timing goes through ``_harness.py`` (the rules every arm is timed by).
"""

from __future__ import annotations

import json
import os
import platform
import tracemalloc
from pathlib import Path

from _harness import load_average, time_call

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeats=3, warmup=None):
    """Median wall time of ``repeats`` calls of ``fn()`` and the last return value.

    Timed by the shared harness (``_harness.time_call``): ``warmup()`` runs once, untimed, first
    (default: ``fn()`` itself).
    """
    median, _, out = time_call(fn, repeats=repeats, warmup=warmup)
    return median, out


def peak_memory_mib(fn):
    """Peak traced allocation (MiB) during ``fn()``: numpy and Python allocations, not the data."""
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def environment():
    import numpy
    import scipy
    import sklearn

    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }
    load = load_average()
    if load is not None:
        info["loadavg_1min"] = load[0]
    return info


def markdown_table(rows, columns=None):
    """Render ``rows`` (list of dicts) as a markdown table with the given (key, header) columns
    (default: every key of the first row, as its own header)."""
    if columns is None:
        columns = [(k, k) for k in rows[0]] if rows else []
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for k, _ in columns:
            v = r.get(k, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(name, markdown, payload):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {RESULTS / (name + '.md')} and {RESULTS / (name + '.json')}")


def write_summary_and_fits(name, title, description, summary, rows):
    """Write ``results/<name>.md`` (the title, the description with the command, the environment,
    the summary table, then one row per fit) and ``.json`` (environment and rows)."""
    env = environment()
    md = [f"# {title}", "", description, f"Environment: {env}", ""]
    md += [markdown_table(summary), "", markdown_table(rows)]
    write_results(name, "\n".join(md), {"env": env, "rows": rows})


def sparse_linear(n, M, k, noise, seed):
    """A sparse linear problem: ``n`` rows of M standard normal features, ``k`` true coefficients
    with random signs and magnitudes in [1, 2] at random positions, Gaussian noise of standard
    deviation ``noise``. Returns ``X, y, w``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, M))
    w = np.zeros(M)
    support = rng.choice(M, k, replace=False)
    w[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 2, k)
    return X, X @ w + noise * rng.normal(size=n), w


def sinc(seed):
    """Tipping's (2001) noisy sinc: 100 training points uniform on [-10, 10], noise std 0.1; a
    noise-free test grid of 1000 points. Returns ``X, y, X_test, y_test``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.uniform(-10, 10, (100, 1))
    y = np.sinc(X[:, 0] / np.pi) + 0.1 * rng.normal(size=100)
    Xt = np.linspace(-10, 10, 1000)[:, None]
    return X, y, Xt, np.sinc(Xt[:, 0] / np.pi)
