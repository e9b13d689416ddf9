"""Thread control: `n_jobs` limits BLAS/OpenMP pools and numba's thread count for one fit."""

from __future__ import annotations

import os
from contextlib import contextmanager

import numba
from threadpoolctl import threadpool_limits


def effective_n_jobs(n_jobs: int | None) -> int | None:
    """Resolve scikit-learn style ``n_jobs``: None leaves the libraries' defaults alone, -1 = all cores,
    -2 = all but one, and so on."""
    if n_jobs is None:
        return None
    cores = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, min(int(n_jobs), cores))


@contextmanager
def limit_threads(n_jobs: int | None):
    """Limit BLAS/OpenMP threads and numba threads inside the block, restoring them afterwards.

    Small matrix-vector products are slower with several BLAS threads when other processes hold the
    cores, so the estimators expose ``n_jobs`` and route it here.
    """
    n = effective_n_jobs(n_jobs)
    if n is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(old)
