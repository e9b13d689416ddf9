"""Thread policy of the DQN-SBL fits (issue 9, part 2): ``n_jobs`` threads for the large passes
over the basis, one thread for everything else, applied once per fit and restored afterwards."""

import os

import numba
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification, make_regression
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
    """n_jobs=None leaves the libraries' thread counts alone, except in the exact Laplace step:
    its m-by-m LAPACK and products run on one BLAS thread (on two they made the 600-sample fit
    twice as slow), and the count is restored after it."""
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
    X, y = rbf_data
    a = DQNSBLClassifier(gamma=0.1, n_jobs=1).fit(X, y)
    b = DQNSBLClassifier(gamma=0.1, n_jobs=2).fit(X, y)
    assert_array_equal(a.relevance_, b.relevance_)
    assert_allclose(a.dual_coef_, b.dual_coef_, rtol=0, atol=1e-10)
    assert_allclose(a.intercept_, b.intercept_, rtol=0, atol=1e-10)
    assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=0, atol=1e-10)


def test_thread_count_is_capped_by_idle_cores(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(_threads, "_load_average", lambda: float(4 * cores))
    assert _threads.fit_thread_count(2) == 1  # every core busy: threads cannot help
    assert _threads.fit_thread_count(-1) == 1
    assert _threads.fit_thread_count(None) is None  # the libraries' defaults, untouched
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


def test_n_jobs_none_keeps_library_defaults(monkeypatch, rbf_data):
    X, y = rbf_data
    before_numba, before_blas = numba.get_num_threads(), _blas_threads()
    small = []
    _record(monkeypatch, _classifier_solver, "data_loss", small)
    DQNSBLClassifier(gamma=0.1, n_jobs=None, max_iter=3).fit(X, y)
    assert small and all(nb == before_numba and blas == before_blas for nb, blas in small)


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
