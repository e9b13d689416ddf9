"""Helpers shared by the benchmark scripts: timing, peak memory, environment, result tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeats=3):
    """Median wall time of ``repeats`` calls of ``fn()`` and the last return value."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


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
    try:
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def markdown_table(rows, columns):
    """Render ``rows`` (list of dicts) as a markdown table with the given (key, header) columns."""
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
