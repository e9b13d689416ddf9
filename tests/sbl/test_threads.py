"""Thread policy of the DQN-SBL fits (issue 9, part 2): ``n_jobs`` threads for the large passes
over the basis, one thread for everything else, applied once per fit and restored afterwards."""

import os

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification, make_friedman1, make_regression
from threadpoolctl import threadpool_info, threadpool_limits

from sparsekit import DQNSBLClassifier, DQNSBLRegressor
from sparsekit.sbl import _classifier_solver, _design
from sparsekit.utils import _threads

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning", "ignore:overflow:RuntimeWarning"
)


def _blas_threads():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})


def _blas_allows_two():
    """OpenBLAS started with OPENBLAS_NUM_THREADS=1 cannot be raised to two threads later."""
    with threadpool_limits(limits=2, user_api="blas"):
        return _blas_threads() == [2]


needs_two_threads = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2 or (os.cpu_count() or 1) < 2 or not _blas_allows_two(),
    reason="needs numba and BLAS to allow two threads (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS)",
)


@pytest.fixture
def idle_machine(monkeypatch):
    """Pretend the load average is zero, so the thread count is n_jobs whatever else runs."""
    monkeypatch.setattr(_threads, "_load_average", lambda: 0.0)


@pytest.fixture(scope="module")
def rbf_data():
    # 700 samples: the 700 x 700 kernel passes are above MIN_PARALLEL_WORK, the O(n) ones below.
    return make_classification(
        n_samples=700, n_features=10, n_informative=5, random_state=0, class_sep=0.8
    )


def _record(monkeypatch, module, name, log):
    """Wrap ``module.name`` so each call logs (numba threads, BLAS threads) at call time."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        log.append((numba.get_num_threads(), _blas_threads()))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@needs_two_threads
def test_large_passes_use_n_jobs_threads_and_small_ones_one(monkeypatch, idle_machine, rbf_data):
    X, y = rbf_data
    big, small = [], []
    # a numba prange pass over the 700 x 700 kernel, and an O(n) likelihood evaluation
    _record(monkeypatch, _design, "weighted_column_moments", big)
    _record(monkeypatch, _classifier_solver, "data_loss", small)
    DQNSBLClassifier(gamma=0.1, n_jobs=2, max_iter=5).fit(X, y)
    assert big and small
    assert all(nb == 2 and blas == [2] for nb, blas in big), big
    assert all(nb == 1 and blas == [1] for nb, blas in small), small[:3]


@needs_two_threads
def test_exact_step_runs_on_one_blas_thread_with_default_n_jobs(monkeypatch, rbf_data):
    """With n_jobs=None the exact Laplace step's m-by-m LAPACK and products run on one BLAS
    thread (on two they made the 600-sample fit twice as slow), and the count is restored after
    the fit."""
    from sparsekit.sbl import _classifier_kernels as CK

    X, y = rbf_data
    log = []
    _record(monkeypatch, CK, "laplace_newton_bernoulli_blas", log)
    with threadpool_limits(limits=2, user_api="blas"):
        DQNSBLClassifier(gamma=0.1, max_iter=30).fit(X, y)
        after = _blas_threads()
    assert log
    assert all(blas == [1] for _nb, blas in log), log[:3]
    assert after == [2]


@needs_two_threads
def test_thread_settings_are_restored_after_fit(idle_machine, rbf_data):
    X, y = rbf_data
    numba.set_num_threads(2)  # a setting the fit's own (1 outside parallel passes) differs from
    before_numba, before_blas = numba.get_num_threads(), _blas_threads()
    DQNSBLClassifier(gamma=0.1, n_jobs=2, max_iter=5).fit(X, y)
    assert numba.get_num_threads() == before_numba
    assert _blas_threads() == before_blas
    Xr, yr = make_regression(n_samples=300, n_features=20, random_state=0)
    DQNSBLRegressor(n_jobs=2).fit(Xr, yr)
    assert numba.get_num_threads() == before_numba
    assert _blas_threads() == before_blas


def test_thread_settings_are_restored_when_fit_fails(rbf_data):
    X, y = rbf_data
    before_numba, before_blas = numba.get_num_threads(), _blas_threads()
    with pytest.raises(ValueError, match="NaN or infinity"):
        DQNSBLClassifier(kernel="poly", degree=400, gamma=100.0, n_jobs=1).fit(X, y)
    assert numba.get_num_threads() == before_numba
    assert _blas_threads() == before_blas


@needs_two_threads
def test_same_model_with_one_and_two_threads(idle_machine, rbf_data):
    """The full-kernel fit, bit for bit: its kernel, GEMVs and Gram matrices are summed in runs
    of rows that do not depend on the thread count (before: 4e-12 apart, from the kernel's
    GEMM on two OpenBLAS threads)."""
    X, y = rbf_data
    a = DQNSBLClassifier(gamma=0.1, n_jobs=1).fit(X, y)
    b = DQNSBLClassifier(gamma=0.1, n_jobs=2).fit(X, y)
    assert_array_equal(a.relevance_, b.relevance_)
    assert_array_equal(a.dual_coef_, b.dual_coef_)
    assert_array_equal(a.intercept_, b.intercept_)
    assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=0, atol=1e-10)


def test_thread_count_is_capped_by_idle_cores(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(_threads, "_load_average", lambda: float(4 * cores))
    assert _threads.fit_thread_count(2) == 1  # every core busy: threads cannot help
    assert _threads.fit_thread_count(-1) == 1
    assert _threads.fit_thread_count(None) == 1  # the libraries' count, capped like n_jobs
    monkeypatch.setattr(_threads, "_load_average", lambda: 0.0)
    assert _threads.fit_thread_count(1) == 1
    expected = min(2, cores, numba.config.NUMBA_NUM_THREADS)
    assert _threads.fit_thread_count(2) == expected
    # the load includes the caller's own core: rounded to the nearest core, not truncated (2
    # cores at load 1.24: two threads; at 1.6: one)
    monkeypatch.setattr(_threads, "_load_average", lambda: cores - 0.76)
    assert _threads.fit_thread_count(2) == expected
    monkeypatch.setattr(_threads, "_load_average", lambda: cores - 0.4)
    assert _threads.fit_thread_count(2) == 1


@needs_two_threads
def test_busy_machine_fits_on_one_thread(monkeypatch, rbf_data):
    X, y = rbf_data
    monkeypatch.setattr(_threads, "_load_average", lambda: float(4 * os.cpu_count()))
    big = []
    _record(monkeypatch, _design, "weighted_column_moments", big)
    DQNSBLClassifier(gamma=0.1, n_jobs=2, max_iter=3).fit(X, y)
    assert big and all(nb == 1 and blas == [1] for nb, blas in big)


def test_parallel_block_is_inert_outside_a_fit():
    before_numba, before_blas = numba.get_num_threads(), _blas_threads()
    with _threads.parallel(10**12):
        assert numba.get_num_threads() == before_numba
        assert _blas_threads() == before_blas


@needs_two_threads
def test_n_jobs_none_is_the_fit_policy_with_the_library_thread_count(
    monkeypatch, idle_machine, rbf_data
):
    """n_jobs=None: the small operations of a fit on one thread (on all cores they made
    make_classification(1,500) 2.3x slower), the large passes on as many threads as the
    libraries allow (here limited to two), and the libraries' settings restored after."""
    X, y = rbf_data
    big, small = [], []
    _record(monkeypatch, _design, "weighted_column_moments", big)
    _record(monkeypatch, _classifier_solver, "data_loss", small)
    with threadpool_limits(limits=2):
        numba.set_num_threads(2)
        DQNSBLClassifier(gamma=0.1, n_jobs=None, max_iter=5).fit(X, y)
        after = numba.get_num_threads(), _blas_threads()
    assert big and small
    assert all(nb == 2 and blas == [2] for nb, blas in big), big
    assert all(nb == 1 and blas == [1] for nb, blas in small), small[:3]
    assert after == (2, [2])


def test_n_jobs_none_follows_a_one_thread_limit(monkeypatch, idle_machine, rbf_data):
    """A caller's one-thread limit (threadpoolctl, OMP_NUM_THREADS=1) is the count n_jobs=None
    uses: the large passes stay on one thread too."""
    X, y = rbf_data
    big = []
    _record(monkeypatch, _design, "weighted_column_moments", big)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        with threadpool_limits(limits=1):
            assert _threads.fit_thread_count(None) == 1
            DQNSBLClassifier(gamma=0.1, n_jobs=None, max_iter=3).fit(X, y)
    finally:
        numba.set_num_threads(old)
    assert big and all(nb == 1 and blas == [1] for nb, blas in big)


@needs_two_threads
def test_regressor_exact_phase_stays_on_one_thread(monkeypatch, idle_machine):
    """The exact phase's O(m^3) Cholesky posterior runs on one BLAS thread: OpenBLAS's threaded
    LAPACK was slower at every m measured (utils._threads)."""
    from sparsekit.sbl import _regression_solver

    X, y = make_regression(n_samples=400, n_features=80, n_informative=10, random_state=0)
    seen = []
    _record(monkeypatch, _regression_solver, "cholesky_precision", seen)
    DQNSBLRegressor(solver="exact", n_jobs=2).fit(X, y)
    assert seen and all(nb == 1 and blas == [1] for nb, blas in seen), seen[:3]


def test_row_runs_depend_on_the_row_count_only():
    for n in [0, 1, 511, 512, 513, 3000, 20000, 100_003]:
        starts, size = _threads.row_runs(n)
        assert size % 64 == 0 and size >= min(n, _threads.MIN_RUN_ROWS)
        assert starts[0] == 0 and starts[-1] < max(n, 1) <= starts[-1] + size
        assert len(starts) <= _threads.ROW_PARTS
    assert len(_threads.row_runs(512)[0]) == 1  # one product up to 512 rows
    assert len(_threads.row_runs(20000)[0]) == _threads.ROW_PARTS


@needs_two_threads
def test_map_blocks_runs_blocks_on_the_fit_threads_in_order(idle_machine):
    import threading
    import time

    def fn(b):
        time.sleep(0.01)
        return b, threading.get_ident()

    blocks = list(range(8))
    inline = list(_threads.map_blocks(fn, blocks, 10**9))  # outside a fit: in order, here
    assert [b for b, _t in inline] == blocks
    assert {t for _b, t in inline} == {threading.get_ident()}
    with _threads.fit_threads(2):
        wide = list(_threads.map_blocks(fn, blocks, 10**9))
        small = list(_threads.map_blocks(fn, blocks, 10))  # too little work for threads
        with _threads.parallel(10**9):  # no nesting: BLAS is wide already
            nested = list(_threads.map_blocks(fn, blocks, 10**9))
    assert [b for b, _t in wide] == blocks
    assert len({t for _b, t in wide}) == 2 and threading.get_ident() not in {t for _b, t in wide}
    assert {t for _b, t in small} == {t for _b, t in nested} == {threading.get_ident()}
    with _threads.fit_threads(1):
        assert {t for _b, t in _threads.map_blocks(fn, blocks, 10**9)} == {threading.get_ident()}


@needs_two_threads
def test_subset_path_same_bits_with_one_and_two_threads(idle_machine):
    """The subset path (chord steps, float32 screen, scans) gives the same model to the last bit
    with n_jobs=1 and 2: its large products run in fixed runs of rows (the kernel blocks, the
    Gram matrices, the dense GEMVs, the screen's float32 products), not on OpenBLAS's threads,
    whose GEMM rounds differently on two threads (before: 680 against 584 iterations, 104
    against 101 vectors at n = 3,000)."""
    X, y = make_classification(
        n_samples=1500, n_features=20, n_informative=8, random_state=0, class_sep=0.8
    )
    _assert_same_kernel_model_on_one_and_two_threads(
        lambda j: DQNSBLClassifier(gamma=0.05, kernel_basis="subset", n_jobs=j, max_iter=300),
        X,
        y,
    )


def _assert_same_kernel_model_on_one_and_two_threads(make, X, y):
    """``make(n_jobs)`` fitted with n_jobs=1 and 2 gives the same kernel model to the last bit."""
    a, b = (make(j).fit(X, y) for j in (1, 2))
    assert a.n_iter_ == b.n_iter_
    assert_array_equal(a.relevance_, b.relevance_)
    assert_array_equal(a.dual_coef_, b.dual_coef_)
    assert_array_equal(a.intercept_, b.intercept_)


@needs_two_threads
def test_regressor_same_bits_with_one_and_two_threads(idle_machine):
    """The regressor's exact phase starts from the design's Gram matrix, summed in runs of rows
    (before: OpenBLAS's GEMM on two threads, 2.8e-14 from one thread's at 1,500 x 200)."""
    X, y = make_regression(
        n_samples=1500, n_features=200, n_informative=20, noise=1.0, random_state=0
    )
    a = DQNSBLRegressor(solver="exact", n_jobs=1).fit(X, y)
    b = DQNSBLRegressor(solver="exact", n_jobs=2).fit(X, y)
    assert a.n_iter_ == b.n_iter_
    assert_array_equal(a.coef_, b.coef_)
    assert_array_equal(a.intercept_, b.intercept_)


@needs_two_threads
def test_regressor_subset_path_same_bits_with_one_and_two_threads(idle_machine):
    """The regressor's subset path (constructive path on the pool, Gaussian scans whose
    products run in fixed runs of rows) gives the same model to the last bit with n_jobs=1
    and 2."""
    X, y = make_friedman1(n_samples=1200, noise=1.0, random_state=0)
    _assert_same_kernel_model_on_one_and_two_threads(
        lambda j: DQNSBLRegressor(kernel="rbf", gamma=0.1, kernel_basis="subset", n_jobs=j), X, y
    )


@needs_two_threads
def test_column_passes_run_on_the_pool_threads(idle_machine, monkeypatch):
    """The add test's column products and the screen's float32 rounding run as tasks of the fit's
    thread pool, not in numba ``prange`` regions (whose OpenMP workers spin after each region and
    took a core from the pool's next products: 5 CPU s more for a 25 s two-thread fit at
    n = 5,000); each column's result is the one-thread result, to the last bit."""
    import threading

    from sparsekit.sbl import _kernels as K

    rng = np.random.default_rng(2)
    rawT = rng.uniform(size=(64, 40_000))
    Bw, R = rng.uniform(size=(40_000, 2)), rng.normal(size=(40_000, 2))
    seen = []
    for name in ("_column_products_rows", "_float32_rows"):
        real = getattr(K, name)
        monkeypatch.setattr(
            K, name, lambda *a, real=real: seen.append(threading.get_ident()) or real(*a)
        )
    ref = K.column_products(rawT, Bw, R), K.float32_copy_range(rawT)
    assert set(seen) == {threading.get_ident()}  # outside a fit: here
    seen.clear()
    with _threads.fit_threads(2):
        got = K.column_products(rawT, Bw, R), K.float32_copy_range(rawT)
    assert len(set(seen)) == 2 and threading.get_ident() not in seen
    for a, b in zip(got[0], ref[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[1][0], ref[1][0])
    assert got[1][1:] == ref[1][1:]
