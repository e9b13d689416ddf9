"""One timing harness for every arm of every benchmark (ours and the peers' alike).

The rules, the same for every arm:

* **Process model.** Every timed call runs in the process that times it, after all imports. A
  benchmark that isolates fits in subprocesses (for memory and wall-clock caps) runs this harness
  inside the worker, so interpreter start-up and imports are never part of a time.
* **Warm-up.** Before timing, each arm runs its warm-up once, untimed: by default the arm's own
  workload; a benchmark whose workloads are too long to repeat passes a small call of the same
  kind (same estimator, same options, tiny data) for *every* arm. This pays for numba
  compilation, BLAS/allocator plans, joblib worker pools and lazy imports before any timing.
* **Boundaries.** Only what an arm puts inside ``clock.section(name)`` is timed. Data
  preparation (generation, tokenisation, standardisation) stays outside; a benchmark names in
  its docstring what each section holds.
* **Repeats.** Arms are interleaved inside each repeat (so a change of machine load hits every
  arm alike); the median and all raw times are reported, with the load average.

Usage::

    def arm(clock):
        est = make()
        with clock.section("fit"):
            est.fit(X, y)
        return est

    res = measure({"ours": arm, "peer": peer_arm}, repeats=3)
    res.median("ours", "fit"), res.last["ours"]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Clock", "Measurement", "load_average", "measure", "time_call"]


class Clock:
    """Collects the durations of named sections of one run of an arm (seconds, perf_counter).

    ``sync`` (optional) is called at both ends of every section, e.g. ``torch.cuda.synchronize``.
    """

    def __init__(self, sync=None):
        self.sync = sync
        self.times: dict[str, float] = {}
        self.cpu_times: dict[str, float] = {}  # process CPU seconds of the same sections
        self._open: dict[str, tuple[float, float]] = {}

    @contextmanager
    def section(self, name):
        """Time the block; repeated sections of the same name add up."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name):
        """Open section ``name`` (for boundaries that a callback marks, e.g. one epoch)."""
        if self.sync is not None:
            self.sync()
        self._open[name] = (time.perf_counter(), time.process_time())

    def is_open(self, name):
        """Whether section ``name`` was started and not yet stopped."""
        return name in self._open

    def stop(self, name):
        """Close section ``name``."""
        if self.sync is not None:
            self.sync()
        t0, c0 = self._open.pop(name)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        self.cpu_times[name] = self.cpu_times.get(name, 0.0) + time.process_time() - c0


@dataclass
class Measurement:
    """Raw section times per arm (one list entry per timed repeat) and each arm's last result."""

    times: dict = field(default_factory=dict)  # arm -> section -> [seconds per repeat]
    cpu_times: dict = field(default_factory=dict)  # the same, process CPU seconds
    last: dict = field(default_factory=dict)  # arm -> return value of the last timed run
    repeats: int = 0
    load_average: tuple | None = None

    def median(self, arm, section):
        return statistics.median(self.times[arm][section])

    def medians(self):
        return {
            arm: {sec: statistics.median(v) for sec, v in secs.items()}
            for arm, secs in self.times.items()
        }


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):
        return None


def run_isolated(script, worker_args, timeout, ident):
    """Run ``script --worker *worker_args`` in a fresh process with one BLAS/OpenMP/numba thread
    and return the dict its ``RESULT {json}`` line prints. A worker killed at ``timeout`` seconds
    or failing gives ``ident`` with ``status`` "timeout" (``fit_s`` = the timeout, a lower bound)
    or "error" (the last line of its stderr); both carry the load average before and after."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
    )
    cmd = [sys.executable, str(script), "--worker", *map(str, worker_args)]
    load0 = load_average()
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        proc = None
    load = [[load0[0] if load0 else None, (load_average() or [None])[0]]]
    if proc is None:
        return {**ident, "status": "timeout", "fit_s": float(timeout), "load": load}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    note = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    return {**ident, "status": "error", "note": note, "load": load}


def measure(arms, *, repeats=3, warmup=None, sync=None):
    """Time every arm ``repeats`` times, interleaved, after one untimed warm-up each.

    Parameters
    ----------
    arms : dict of str -> callable(Clock)
        Each arm runs its workload once, timing what it puts inside ``clock.section(...)``.
    repeats : int
        Timed runs per arm.
    warmup : dict of str -> callable() or None
        Warm-up per arm; an arm without an entry warms up with its own workload.
    sync : callable or None
        Passed to every :class:`Clock` (device synchronisation).
    """
    warmup = warmup or {}
    for name, arm in arms.items():
        if name in warmup:
            warmup[name]()
        else:
            arm(Clock(sync))
    result = Measurement(
        times={name: {} for name in arms}, cpu_times={name: {} for name in arms}, repeats=repeats
    )
    for _ in range(repeats):
        for name, arm in arms.items():
            clock = Clock(sync)
            result.last[name] = arm(clock)
            for sec, seconds in clock.times.items():
                result.times[name].setdefault(sec, []).append(seconds)
                result.cpu_times[name].setdefault(sec, []).append(clock.cpu_times[sec])
    result.load_average = load_average()
    return result


def time_call(fn, *, repeats=3, warmup=None):
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup()`` (default: ``fn()``).

    The one-arm form of :func:`measure`; returns ``(median_s, all_s, last_return_value)``.
    """

    def arm(clock):
        with clock.section("call"):
            return fn()

    res = measure({"arm": arm}, repeats=repeats, warmup=None if warmup is None else {"arm": warmup})
    times = res.times["arm"]["call"]
    return statistics.median(times), times, res.last["arm"]
