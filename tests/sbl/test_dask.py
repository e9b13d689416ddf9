"""Linear DQN-SBL on row-chunked dask arrays (issue 12, part 1): the dask fit is the in-memory
fit on the same data (dense and scipy.sparse chunks, weights, regressor and classifier), on the
threaded scheduler and on a two-process LocalCluster; fitted estimators hold numpy only and
predict dask in, dask out; what cannot run chunked says so."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from sparsekit import DQNSBLClassifier, DQNSBLRegressor

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


def _regression(n=600, p=15, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, 3] = 100.0 * X[:, 3] + 7.0  # units and offsets that the scaling must handle
    coef = np.zeros(p)
    coef[[0, 3, 8]] = [2.0, 0.03, -1.0]
    y = X @ coef + 0.5 * rng.normal(size=n) + 4.0
    sw = rng.uniform(0.5, 2.0, size=n)
    return X, y, sw


def _classification(n=400, p=8, n_classes=2, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, 2] *= 50.0
    score = X[:, 0] - 0.04 * X[:, 2] + 0.8 * rng.normal(size=n)
    if n_classes == 2:
        y = np.where(score > 0, "yes", "no")
    else:
        y = np.digitize(score, [-0.6, 0.6])
    sw = rng.uniform(0.5, 2.0, size=n)
    return X, y, sw


def _chunked(X, rows, sparse=False):
    dX = da.from_array(X, chunks=(rows, X.shape[1]))
    return dX.map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0))) if sparse else dX


def _no_dask_attributes(est):
    for name, value in vars(est).items():
        assert not isinstance(value, da.Array), name
        if isinstance(value, dict):
            assert not any(isinstance(v, da.Array) for v in value.values()), name


def _assert_same_regressor(a, b, rtol):
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=rtol, atol=rtol * np.abs(b.coef_).max())
    np.testing.assert_allclose(a.intercept_, b.intercept_, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(a.alpha_, b.alpha_, rtol=rtol)
    np.testing.assert_array_equal(a.relevance_, b.relevance_)
    np.testing.assert_allclose(a.sigma_, b.sigma_, rtol=rtol)
    assert a.n_iter_ == b.n_iter_


# ---------------------------------------------------------------------------------- regressor
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_regressor_dask_equals_numpy(sparse):
    X, y, sw = _regression()
    Xn = sp.csr_matrix(X) if sparse else X
    ref = DQNSBLRegressor().fit(Xn, y, sample_weight=sw)
    dX = _chunked(X, 250, sparse)  # uneven chunks: 250, 250, 100
    est = DQNSBLRegressor().fit(dX, da.from_array(y, chunks=200), sample_weight=sw)
    _assert_same_regressor(est, ref, 1e-9)
    assert est.n_features_in_ == X.shape[1]
    _no_dask_attributes(est)
    mean, std = est.predict(dX, return_std=True)
    assert isinstance(mean, da.Array) and isinstance(std, da.Array)
    ref_mean, ref_std = ref.predict(Xn, return_std=True)
    np.testing.assert_allclose(mean.compute(), ref_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std.compute(), ref_std, rtol=1e-9)
    # numpy in, numpy out
    np.testing.assert_allclose(est.predict(X), ref_mean, rtol=1e-9, atol=1e-9)


def test_regressor_dask_float32_exact_finish():
    """float32 chunks stay float32 on the workers; the exact finish runs on the chunked gram."""
    X, y, sw = _regression(seed=2)
    X = X.astype(np.float32)
    ref = DQNSBLRegressor(exact_switch=10, compute_score=True).fit(X, y, sample_weight=sw)
    est = DQNSBLRegressor(exact_switch=10, compute_score=True).fit(
        _chunked(X, 200), da.from_array(y, chunks=200), sample_weight=da.from_array(sw, 300)
    )
    assert ref._sigma_full is not None  # the exact phase ran
    _assert_same_regressor(est, ref, 1e-5)
    np.testing.assert_allclose(est.scores_, ref.scores_, rtol=1e-6)
    assert est.coef_.dtype == np.float32


# ---------------------------------------------------------------------------------- classifier
# The classifier's default curvature update (diagonal BFGS with an Armijo search) makes discrete
# choices that amplify float rounding: the in-memory fit on the same rows in another order differs
# by ~1e-3 on 8 features. The exact curvature diagonal (one more chunked pass per step) follows
# one path, so the dask fit can be held to the in-memory fit tightly. dask's per-operation
# overhead (milliseconds) dominates at these sizes, hence small problems and, for the multiclass
# and cluster cases, a bounded number of iterations (the same iterates, not converged).
_CLF = dict(kernel=None, exact_switch=0, diag_update="exact")


@pytest.mark.parametrize(
    ("n_classes", "sparse", "max_iter"),
    [(2, False, 1000), (3, True, 6)],
    ids=["binary-dense", "ovr3-sparse"],
)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_classifier_dask_equals_numpy(n_classes, sparse, max_iter):
    X, y, sw = _classification(n_classes=n_classes, p=8 if n_classes == 2 else 3)
    Xn = sp.csr_matrix(X) if sparse else X
    ref = DQNSBLClassifier(max_iter=max_iter, **_CLF).fit(Xn, y, sample_weight=sw)
    dX = _chunked(X, 201, sparse)
    est = DQNSBLClassifier(max_iter=max_iter, **_CLF).fit(
        dX, da.from_array(y, chunks=150), sample_weight=sw
    )
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(est.classes_, ref.classes_)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(est.sigma_, ref.sigma_, rtol=1e-7, atol=1e-12)
    np.testing.assert_array_equal(np.isfinite(est.lambda_), np.isfinite(ref.lambda_))
    _no_dask_attributes(est)
    proba = est.predict_proba(dX)
    assert isinstance(proba, da.Array)
    np.testing.assert_allclose(proba.compute(), ref.predict_proba(Xn), atol=1e-9)
    np.testing.assert_array_equal(est.predict(dX).compute(), ref.predict(Xn))
    np.testing.assert_allclose(
        est.decision_function(dX).compute(), ref.decision_function(Xn), rtol=1e-7, atol=1e-9
    )


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_classifier_dask_class_weight_and_exact_note():
    """class_weight is applied from chunk-wise class counts; the exact finish is skipped with a
    note (the fit is then the exact_switch=0 fit)."""
    X, y, _ = _classification(n=300, p=3, seed=3)
    y = np.where(np.arange(300) < 60, "no", y)  # unbalanced
    params = dict(kernel=None, diag_update="exact", class_weight="balanced", max_iter=5)
    ref = DQNSBLClassifier(exact_switch=0, **params).fit(X, y)
    with pytest.warns(UserWarning, match="exact finish"):
        est = DQNSBLClassifier(**params).fit(_chunked(X, 150), da.from_array(y, chunks=150))
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------- distributed
def test_local_cluster_fits_equal_numpy(dask_client):
    X, y, sw = _regression(n=400, seed=4)
    dX = dask_client.persist(_chunked(X, 100))
    est = DQNSBLRegressor().fit(dX, da.from_array(y, chunks=100), sample_weight=sw)
    # the passes ran on both workers
    assert all(n > 0 for n in dask_client.run(lambda dask_worker: len(dask_worker.data)).values())
    ref = DQNSBLRegressor().fit(X, y, sample_weight=sw)
    _assert_same_regressor(est, ref, 1e-9)
    np.testing.assert_allclose(est.predict(dX).compute(), ref.predict(X), rtol=1e-9, atol=1e-9)
    blob = pickle.dumps(est)
    assert len(blob) < 20_000, len(blob)

    Xc, yc, swc = _classification(n=300, p=3, seed=5)
    params = dict(max_iter=4, **_CLF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref_c = DQNSBLClassifier(**params).fit(Xc, yc, sample_weight=swc)
        est_c = DQNSBLClassifier(**params).fit(
            _chunked(Xc, 150, sparse=True), da.from_array(yc, chunks=150), sample_weight=swc
        )
    np.testing.assert_allclose(est_c.coef_, ref_c.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(est_c.predict(_chunked(Xc, 150)).compute(), ref_c.predict(Xc))


# ---------------------------------------------------------------------------------- refusals
def test_kernel_with_dask_input_is_refused():
    X, y, _ = _regression(n=50)
    with pytest.raises(ValueError, match=r"kernel='rbf'.*kernel=None"):
        DQNSBLRegressor(kernel="rbf").fit(_chunked(X, 25), y)
    with pytest.raises(ValueError, match="kernel=None"):
        DQNSBLClassifier().fit(_chunked(X, 25), y > y.mean())  # default kernel is rbf


def test_classifier_exact_solver_on_dask_is_refused():
    X, y, _ = _classification(n=60)
    with pytest.raises(ValueError, match=r"solver='exact'.*dense active basis"):
        DQNSBLClassifier(kernel=None, solver="exact").fit(_chunked(X, 30), y)


def test_wide_dask_input_is_refused():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 30)), rng.normal(size=40)
    with pytest.raises(ValueError, match=r"p >= n/2.*X.compute\(\)"):
        DQNSBLRegressor().fit(_chunked(X, 20), y)


def test_bad_dask_input_gets_clear_errors():
    X, y, _ = _regression(n=60)
    dX = _chunked(X, 20)
    with pytest.raises(ValueError, match="has 59"):
        DQNSBLRegressor().fit(dX, y[:59])
    with pytest.raises(ValueError, match="negative"):
        DQNSBLRegressor().fit(dX, y, sample_weight=-np.ones(60))
    Xnan = X.copy()
    Xnan[45, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        DQNSBLRegressor().fit(_chunked(Xnan, 20), y)
    unknown = dX[dX[:, 0] > -10]  # boolean row selection: unknown chunk sizes
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        DQNSBLRegressor().fit(unknown, y)
    col_chunked = da.from_array(X, chunks=(20, 5)).map_blocks(sp.csr_matrix)
    with pytest.raises(ValueError, match="rows only"):
        DQNSBLRegressor().fit(col_chunked, y)
    est = DQNSBLRegressor().fit(dX, y)
    with pytest.raises(ValueError, match="expecting 15 features"):
        est.predict(_chunked(X[:, :4], 20))


def test_dask_rows_of_weight_zero_are_absent():
    """A chunk of zero-weight rows changes nothing (the reductions weight every row)."""
    X, y, sw = _regression(n=300, seed=6)
    ref = DQNSBLRegressor().fit(X[:200], y[:200], sample_weight=sw[:200])
    sw0 = sw.copy()
    sw0[200:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = DQNSBLRegressor().fit(_chunked(X, 100), y, sample_weight=sw0)
    _assert_same_regressor(est, ref, 1e-8)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_dask_empty_chunks(sparse):
    """A boolean row selection can leave chunks without rows; the passes skip them."""
    X, y, _ = _regression(n=300, seed=7)
    rows = np.r_[np.ones(100, bool), np.zeros(100, bool), np.ones(100, bool)]
    keep = da.from_array(rows, chunks=100)
    dX, dy = _chunked(X, 100)[keep], da.from_array(y, chunks=100)[keep]
    dX.compute_chunk_sizes()
    dy.compute_chunk_sizes()
    assert 0 in dX.chunks[0]
    if sparse:
        dX = dX.map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0)))
    est = DQNSBLRegressor().fit(dX, dy)
    _assert_same_regressor(est, DQNSBLRegressor().fit(X[rows], y[rows]), 1e-9)
