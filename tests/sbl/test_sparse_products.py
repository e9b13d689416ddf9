"""The sparse linear basis's products on numba threads (issue 9, part 2): ``Phi @ v`` and
``Phi.T @ u`` of a CSC basis against scipy; the same sums whatever
the thread count, so a sparse fit gives the same model with any ``n_jobs``."""

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification

from sparsekit import DQNSBLClassifier, DQNSBLRegressor
from sparsekit.sbl import _design
from sparsekit.sbl._kernels import csc_matmat, csc_rmatmat
from sparsekit.utils import _threads

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

two_numba_threads = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2"
)


def _csc(n, m, density, seed, *, dtype=np.float64, index_dtype=np.int32, empty=()):
    rng = np.random.default_rng(seed)
    B = sp.random(n, m, density=density, format="csc", random_state=rng, dtype=np.float64)
    B.data = rng.normal(size=B.nnz) * 10.0 ** rng.integers(-3, 4, size=B.nnz)
    keep = np.ones(m)
    keep[list(empty)] = 0.0
    B = sp.csc_matrix(B @ sp.diags(keep)).astype(dtype)
    B.eliminate_zeros()
    B.indptr = B.indptr.astype(index_dtype)
    B.indices = B.indices.astype(index_dtype)
    return B


CASES = [
    dict(n=300, m=50, density=0.1, seed=0),
    dict(n=1000, m=400, density=0.02, seed=1, dtype=np.float32),
    dict(n=200, m=30, density=0.3, seed=2, index_dtype=np.int64, empty=(0, 7, 29)),
    dict(n=1, m=5, density=1.0, seed=3),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [1, 3])
def test_rmatmat_is_scipys_to_the_bit(case, k):
    B = _csc(**case)
    U = np.random.default_rng(9).normal(size=(B.shape[0], k))
    out = csc_rmatmat(B.indptr, B.indices, B.data, U)
    assert out.dtype == np.float64 and out.shape == (B.shape[1], k)
    assert_array_equal(out, np.asarray(B.T @ U, dtype=np.float64))
    assert_array_equal(_design.sparse_rmatmat(B, U[:, 0]), np.asarray(B.T @ U[:, 0]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [1, 3])
def test_matmat_one_part_is_scipys_and_more_parts_agree(case, k):
    B = _csc(**case)
    V = np.random.default_rng(8).normal(size=(B.shape[1], k))
    want = np.asarray(B @ V, dtype=np.float64)
    assert_array_equal(csc_matmat(B.indptr, B.indices, B.data, V, B.shape[0], 1), want)
    scale = np.abs(B).astype(np.float64) @ np.abs(V)
    for parts in (2, 3, 7, B.shape[1] + 5):  # more parts than columns: empty runs
        got = csc_matmat(B.indptr, B.indices, B.data, V, B.shape[0], parts)
        assert got.shape == want.shape
        assert np.all(np.abs(got - want) <= 1e-13 * scale + 1e-300)


def test_kernels_accept_read_only_arrays():
    """joblib memory-maps large arrays read-only in GridSearchCV's workers."""
    B = _csc(400, 60, 0.1, seed=5)
    for a in (B.indptr, B.indices, B.data):
        a.flags.writeable = False
    V = np.random.default_rng(0).normal(size=(60, 2))
    U = np.random.default_rng(1).normal(size=(400, 2))
    V.flags.writeable = U.flags.writeable = False
    assert_array_equal(csc_matmat(B.indptr, B.indices, B.data, V, 400, 1), B @ V)
    assert_array_equal(csc_rmatmat(B.indptr, B.indices, B.data, U), B.T @ U)


def test_scatter_parts_follow_the_matrix_and_the_machine(monkeypatch):
    n = 20_000
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 16)
    assert _design.scatter_parts(1000, n, 1) == 1  # small: scipy's order
    assert _design.scatter_parts(6_000_000, n, 1) == 16  # IMDB's full vocabulary
    assert _design.scatter_parts(6_000_000, n, 10) == 7  # reduction at most a quarter
    parts = _design.scatter_parts(10**9, 10**6, 10)
    assert 8 * parts * 10**6 * 10 <= _design.SCATTER_BUFFER_BYTES
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)  # the cores numba may use
    assert _design.scatter_parts(6_000_000, n, 1) == 2
    # not the fit's thread count: the same inside and outside a fit with n_jobs=1
    with _threads.fit_threads(1):
        assert _design.scatter_parts(6_000_000, n, 1) == 2


@two_numba_threads
def test_products_do_not_depend_on_the_thread_count():
    B = _csc(3000, 2000, 0.05, seed=4)
    V = np.random.default_rng(1).normal(size=(B.shape[1], 2))
    U = np.random.default_rng(2).normal(size=(B.shape[0], 2))
    parts = 5
    old = numba.get_num_threads()
    out = {}
    try:
        for t in (1, 2):
            numba.set_num_threads(t)
            out[t] = (
                csc_matmat(B.indptr, B.indices, B.data, V, B.shape[0], parts),
                csc_rmatmat(B.indptr, B.indices, B.data, U),
            )
    finally:
        numba.set_num_threads(old)
    assert_array_equal(out[1][0], out[2][0])
    assert_array_equal(out[1][1], out[2][1])


def _sparse_text_like(seed, n=600, m=3000):
    X, y = make_classification(
        n_samples=n, n_features=40, n_informative=10, random_state=seed, class_sep=0.7
    )
    rng = np.random.default_rng(seed)
    # a wide sparse basis: the informative block plus many rare tf-idf-like columns
    noise = sp.random(n, m, density=0.01, random_state=rng, format="csr")
    Xs = sp.hstack([sp.csr_matrix(np.abs(X)), noise], format="csr")
    return Xs, y


def test_design_products_match_the_dense_basis():
    Xs, _ = _sparse_text_like(0)
    sw = np.random.default_rng(0).uniform(0.5, 2.0, Xs.shape[0])
    dm = _design.DesignMatrix(Xs, sw, center=True, intercept_column=True)
    dm.compact(np.arange(dm.n_active) % 3 != 1)
    dense = _design.dense_basis(dm)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(dm.n_coef, 2))
    u = rng.normal(size=(Xs.shape[0], 2))
    assert_allclose(dm.matvec(w), dense @ w, rtol=1e-12, atol=1e-10)
    assert_allclose(dm.matvec(w[:, 0]), dense @ w[:, 0], rtol=1e-12, atol=1e-10)
    assert_allclose(dm.rmatvec(u), dense.T @ u, rtol=1e-12, atol=1e-10)
    assert_allclose(dm.rmatvec(u[:, 1]), dense.T @ u[:, 1], rtol=1e-12, atol=1e-10)
    # the exact phase's curvature diagonal and Gram matrix (their Phi' b through sparse_rmatmat)
    b = rng.uniform(0.05, 0.25, Xs.shape[0])
    assert_allclose(dm.sq_column_norms(b), (dense * dense).T @ b, rtol=1e-10, atol=1e-10)
    assert_allclose(dm.gram(b), dense.T @ (dense * b[:, None]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [400, 1700])  # one product; runs of rows
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_products_in_runs_of_rows(n, dtype):
    rng = np.random.default_rng(n)
    Phi = np.asfortranarray(rng.normal(size=(n, 23)).astype(dtype))
    v, V = rng.normal(size=23), rng.normal(size=(23, 3))
    u, U = rng.normal(size=n), rng.normal(size=(n, 2))
    P = Phi.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for x in (v, V):
        out = _design.dense_matvec(Phi, x)
        assert out.dtype == np.float64 and out.shape == (P @ x).shape
        assert_allclose(out, P @ x.astype(dtype), rtol=tol, atol=tol)
    for x in (u, U):
        out = _design.dense_rmatvec(Phi, x)
        assert out.dtype == np.float64 and out.shape == (P.T @ x).shape
        assert_allclose(out, P.T @ x.astype(dtype), rtol=tol, atol=tol * np.sqrt(n))


@two_numba_threads
@pytest.mark.parametrize("est", ["classifier", "regressor"])
def test_sparse_fit_is_the_same_with_one_and_two_threads(monkeypatch, est):
    monkeypatch.setattr(_threads, "_load_average", lambda: 0.0)  # idle: n_jobs threads
    monkeypatch.setattr(_design, "SCATTER_PART_NNZ", 256)  # several runs on this small basis
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 1000)  # and its products on two threads
    Xs, y = _sparse_text_like(1, m=3000 if est == "classifier" else 200)
    assert _design.scatter_parts(Xs.nnz, Xs.shape[0], 1) > 1
    used = []
    original = _design.csc_matmat

    def spy(*args):
        used.append((numba.get_num_threads(), args[-1]))
        return original(*args)

    monkeypatch.setattr(_design, "csc_matmat", spy)
    if est == "classifier":
        make = lambda j: DQNSBLClassifier(kernel=None, n_jobs=j)
        target = y
    else:
        make = lambda j: DQNSBLRegressor(n_jobs=j)
        target = Xs[:, :10].toarray() @ np.arange(1.0, 11.0)
    a = make(1).fit(Xs, target)
    b = make(2).fit(Xs, target)
    assert used and max(t for t, _p in used) == 2 and max(p for _t, p in used) > 1
    # the products agree to the bit (test above); the exact phase's BLAS on two threads may
    # round differently
    assert_array_equal(a.coef_ != 0, b.coef_ != 0)
    assert_allclose(a.coef_, b.coef_, rtol=0, atol=1e-10)
    assert_allclose(a.intercept_, b.intercept_, rtol=0, atol=1e-10)


def test_sparse_readmission_reads_the_designs_columns(monkeypatch):
    """Re-admission on a sparse linear basis scores candidates from the design's own CSC copy of
    X (no second one): the same model as on the dense X, with candidates read in both fits."""
    from sparsekit.sbl import _readmission

    X, y = make_classification(
        n_samples=300, n_features=120, n_informative=8, random_state=3, class_sep=0.6
    )
    X[np.abs(X) < 1.0] = 0.0
    calls = []
    real = _readmission.CandidateColumns.raw

    def spy(self, js):
        calls.append(len(js))
        return real(self, js)

    monkeypatch.setattr(_readmission.CandidateColumns, "raw", spy)
    dense = DQNSBLClassifier(kernel=None).fit(X, y)
    n_dense = len(calls)
    sparse = DQNSBLClassifier(kernel=None).fit(sp.csr_matrix(X), y)
    assert n_dense > 0 and len(calls) > n_dense
    assert_array_equal(sparse.coef_ != 0, dense.coef_ != 0)
    assert_allclose(sparse.coef_, dense.coef_, rtol=1e-6, atol=1e-8)
