"""Thread control: how ``n_jobs`` maps onto BLAS/OpenMP pools and numba's thread count.

Two regimes:

* :func:`limit_threads` limits every pool to ``n_jobs`` inside a block (prediction: a few large
  products).
* :func:`fit_threads` is entered once per fit. It keeps BLAS and numba at ONE thread for the whole
  fit and widens them to the fit's thread count only inside :func:`parallel` blocks, which the
  solvers open around passes over the basis large enough to pay for waking the workers. With
  ``n_jobs=None`` the fit's thread count is the libraries' own (every core by default).

Why the split: a fit makes thousands of small calls (dot products of length n, O(m) vector
updates, GEMVs over a pruned basis) between its large passes. Every BLAS call that runs on two
threads is a fork-join; on a machine whose cores are all busy the second thread is often not
scheduled for a whole time slice, and the spinning worker steals the core the main thread needs.
Measured on the 2-core development box at load average 7 (see ``benchmarks/bench_threads.py``): a
length-20,000 ``ddot`` takes 10 us on one OpenBLAS thread and 1,460 us on two, a 2,000 x 50 numba
``prange`` pass 0.27 ms against 19 ms. That, repeated over every inner step, is what made
``n_jobs=2`` 5-8 times slower than ``n_jobs=1``.

The thread count of a fit is ``n_jobs`` capped by the cores the load average leaves idle (at least
one): threads cannot help when every core already has a runnable process.

What a :func:`parallel` block may hold (measured on the idle 2-core machine, OpenBLAS 0.3.31
with pthreads, numba's OpenMP layer; ``benchmarks/bench_threads.py``):

* numba ``prange`` passes and the sparse basis's products (``_kernels.csc_*``): 1.8-2.3x faster
  per call on two threads, the same sums on any number of threads.
* BLAS products over large blocks where rounding does not matter (a GEMV over at most 512 rows
  of wide data, kernels given as callables): 1.8-2.1x per call. OpenBLAS's threaded GEMM rounds
  differently on two threads than on one (a 3,000 x 20 by 20 x 700 product: 3.6e-15), and a fit
  that follows it takes another path; the fits' large products therefore go to
  :func:`map_blocks` instead (below).
* Not LAPACK on m-by-m matrices. A Cholesky factorisation (``dpotrf``) of m = 166 took 1.0 ms on
  two threads against 0.12 ms on one; the regressor's Cholesky posterior (``dpotrf``, a
  triangular inverse, a product) was slower on two threads at every m from 80 (8.2 against
  0.15 ms) to 1,500 (223 against 213 ms). Inside a block around the classifier's Newton solves
  the n = 5,000 RBF fit took 57 s against 13.6 s on one thread.
* Not the subset path's Newton solves and add-test products either: their Gram matrices and
  float64 products rounded differently on two threads, the path changed (578-604 iterations
  against 523 at n = 5,000, 883 against 759 at n = 10,000) and the fits were slower (17 s
  against 13.6 s; 62 s against 54.5 s).

:func:`map_blocks` is the third regime: a pass split into runs of rows (:func:`row_runs`: 8 runs,
a function of the row count alone), each run one task of a thread pool of the fit's thread count
with BLAS at one thread, the results combined in order. The sums are then the same on any number
of threads: the classifier's kernel fits (full kernel and subset path) and the regressor's exact
phase end in the same model to the last bit with ``n_jobs=1`` and 2
(``tests/sbl/test_threads.py``). It carries the BLAS Laplace step's Gram matrices and GEMVs
(:func:`.._design.weighted_gram_runs`, :func:`.._design.dense_matvec`), the dense design's GEMVs
and Gram matrix, the screen's float32 products, kernel blocks and the scans' RBF blocks. Per call
on the idle 2-core machine at n = 10,000, m = 185: a Gram matrix 1.9x faster on two threads, the
screen's products 1.7x, a GEMV 0.8-1.4x (bandwidth-bound; below :data:`MIN_POOL_WORK` it stays
on the calling thread). The passes of a kernel fit between those products (the add test's column
products, the screen's float32 rounding) are pool tasks too, not numba ``prange`` regions:
numba's OpenMP workers spin for milliseconds after a region, and in a two-thread fit that spin
took a core from the pool's next products (n = 5,000: 5 CPU s more for a 25 s fit, the pool's
tasks 30 % longer than their CPU time; ``OMP_WAIT_POLICY=PASSIVE`` removed it, but a library
cannot set that for its users' process).
"""

from __future__ import annotations

import contextvars
import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

__all__ = [
    "MIN_PARALLEL_WORK",
    "MIN_POOL_WORK",
    "effective_n_jobs",
    "fit_thread_count",
    "fit_threads",
    "limit_threads",
    "map_blocks",
    "parallel",
    "row_runs",
]

# Smallest pass (multiply-adds) worth running on several threads: ~0.2 ms of work on one core,
# against a fork-join of ~10-20 us on an idle machine.
MIN_PARALLEL_WORK = 1 << 18

_controller = None
_executors: dict = {}  # worker count -> (pid, ThreadPoolExecutor), for map_blocks
_plan: contextvars.ContextVar = contextvars.ContextVar("sparsekit_fit_threads", default=None)


def effective_n_jobs(n_jobs: int | None) -> int | None:
    """Resolve scikit-learn style ``n_jobs``: None leaves the libraries' defaults alone, -1 = all cores,
    -2 = all but one, and so on."""
    if n_jobs is None:
        return None
    cores = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, min(int(n_jobs), cores))


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def fit_thread_count(n_jobs: int | None) -> int:
    """Threads a fit will use for its large passes: ``n_jobs`` (resolved; None: the libraries'
    own count, :func:`_library_thread_count`), capped by numba's
    thread limit and by the cores the one-minute load average leaves idle, counting the caller's
    own core as available (so one busy core on a 2-core machine still allows 2 threads) and
    rounding to the nearest core: the average includes the caller itself (a process that has
    just fitted on one core shows a load of about 1 plus whatever else ran; at 1.24 on an idle
    2-core machine, truncating gave one thread)."""
    n = effective_n_jobs(n_jobs)
    if n is None:
        n = _library_thread_count()
    if n == 1:
        return n
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    load = _load_average()
    if load is not None:
        cores = os.cpu_count() or 1
        n = min(n, max(1, math.floor(cores - load + 1.5)))
    return n


def _library_thread_count() -> int:
    """The thread count ``n_jobs=None`` stands for: the smaller of numba's current count and the
    BLAS libraries' (what ``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or
    an enclosing threadpoolctl limit set; by default every core)."""
    counts = [numba.get_num_threads()]
    counts += [c.num_threads for c in _blas_controllers()]
    return max(1, min(counts))


def _get_controller():
    """One ThreadpoolController per process: building one scans the loaded libraries (about 7 ms,
    which ``threadpool_limits`` pays on every call and a small ``predict`` would feel)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def _blas_controllers():
    return [c for c in _get_controller().lib_controllers if c.user_api == "blas"]


class _Plan:
    """Thread state of one fit: ``n`` threads for :func:`parallel` blocks, one elsewhere."""

    def __init__(self, n):
        self.n = n
        self.blas = _blas_controllers()
        self.width = 1

    def set(self, k):
        if k == self.width:
            return
        for lib in self.blas:
            lib.set_num_threads(k)
        numba.set_num_threads(k)
        self.width = k


@contextmanager
def limit_threads(n_jobs: int | None):
    """Limit BLAS/OpenMP threads and numba threads inside the block, restoring them afterwards.

    For prediction (a few large products). Fits use :func:`fit_threads`.
    """
    n = effective_n_jobs(n_jobs)
    if n is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with _get_controller().limit(limits=n):
            yield
    finally:
        numba.set_num_threads(old)


@contextmanager
def fit_threads(n_jobs: int | None):
    """Thread policy of one fit, applied once: BLAS and numba at one thread for the whole block,
    ``fit_thread_count(n_jobs)`` threads inside :func:`parallel` blocks; both restored on exit.

    ``n_jobs=None`` is the same policy with the libraries' own thread count
    (:func:`_library_thread_count`: every core unless ``OMP_NUM_THREADS`` and the like say
    otherwise) in the :func:`parallel` blocks. It used to leave the libraries' defaults on for
    the whole fit, so every small BLAS call of a fit was a fork-join over all cores: measured on
    the idle 2-core machine, make_classification(1,500) with an RBF kernel took 14.1 s that way
    against 6.0 s on one thread.
    """
    n = fit_thread_count(n_jobs)
    old_numba = numba.get_num_threads()
    token = None
    try:
        with _get_controller().limit(limits=1, user_api="blas"):
            numba.set_num_threads(1)
            plan = _Plan(n)
            token = _plan.set(plan)
            yield plan
            plan.set(1)
    finally:
        if token is not None:
            _plan.reset(token)
        numba.set_num_threads(old_numba)


@contextmanager
def parallel(work):
    """Run the block on the fit's threads when ``work`` (multiply-adds) is at least
    :data:`MIN_PARALLEL_WORK`; on one thread otherwise. Outside :func:`fit_threads` it changes
    nothing. Blocks do not nest."""
    plan = _plan.get()
    if plan is None or plan.n == 1 or work < MIN_PARALLEL_WORK or plan.width != 1:
        yield
        return
    plan.set(plan.n)
    try:
        yield
    finally:
        plan.set(1)


def _executor(n):
    """A pool of ``n`` worker threads, made once per process and count (a forked child makes its
    own: the parent's workers do not exist there)."""
    pid = os.getpid()
    entry = _executors.get(n)
    if entry is None or entry[0] != pid:
        entry = (pid, ThreadPoolExecutor(max_workers=n, thread_name_prefix="sparsekit"))
        _executors[n] = entry
    return entry[1]


# Smallest pass (multiply-adds, all blocks together) map_blocks gives to its thread pool: each
# task costs about 25 us of Python and locking (8 empty tasks: 0.2 ms on the 2-core machine), and a
# GEMV over 10,000 x 185 (1.9e6, about 1 ms) was no faster on two threads; a Gram matrix or the
# screen's products at that size (3e8, 5e8) were 1.9x and 1.7x faster.
MIN_POOL_WORK = 1 << 22
# Parts a pass over the rows is split into for map_blocks (a split that does not depend on the
# thread count: 8 is even work for 1, 2, 4 or 8 threads), and the fewest rows per part.
ROW_PARTS = 8
MIN_RUN_ROWS = 512


def row_runs(n, parts=ROW_PARTS, min_rows=MIN_RUN_ROWS):
    """Start rows of the runs a pass over ``n`` rows is split into: ``parts`` runs of equal size
    (a multiple of 64 rows), fewer when that would be under ``min_rows`` rows, one up to
    ``min_rows`` (then the pass is a single product, as without runs). A function of ``n`` alone,
    so a fit's sums are the same on any number of threads."""
    size = max(min_rows, -(-n // parts))
    size = -(-size // 64) * 64
    return range(0, max(n, 1), size), size


def map_blocks(fn, blocks, work):
    """``fn(b)`` for each of ``blocks``, in order (an iterator: a result can be combined and
    dropped before the later ones are done), on the fit's threads when ``work`` (multiply-adds,
    all blocks together) is at least :data:`MIN_POOL_WORK`: each block is one task of a thread
    pool of the fit's thread count, and BLAS stays at one thread in every task.

    For passes whose parts are independent BLAS products (the rows of a Gram matrix, the row runs
    of the screen's float32 products): the caller splits them into blocks that do not depend on
    the thread count and combines the results in order, so a fit gives the same bits on any
    number of threads, which OpenBLAS's own threading does not (it splits sums by its thread
    count; the subset path's Newton solves on two BLAS threads changed its path). ``fn`` must
    release the GIL in its heavy part (numpy's BLAS calls and ufuncs do) and must not open
    :func:`parallel` blocks (worker threads see no fit, so those would run on one thread anyway).
    Outside :func:`fit_threads`, inside a :func:`parallel` block, with one thread or little work,
    the blocks run in order on the calling thread."""
    plan = _plan.get()
    if plan is None or plan.n == 1 or plan.width != 1 or work < MIN_POOL_WORK or len(blocks) < 2:
        return map(fn, blocks)
    return _executor(min(plan.n, len(blocks))).map(fn, blocks)
