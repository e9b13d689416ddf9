"""Linear DQN-SBL on row-chunked dask arrays (issue 12, part 1): the dask fit is the in-memory
fit on the same data (dense and scipy.sparse chunks, weights, regressor and classifier), on the
threaded scheduler and on a two-process LocalCluster; fitted estimators hold numpy only and
predict dask in, dask out; what cannot run chunked says so."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import sparsekit.sbl._engine as engine
from sparsekit import DQNSBLClassifier, DQNSBLRegressor
from sparsekit.sbl._classifier_solver import FREE_LAMBDA, exact_step
from sparsekit.sbl._dask_design import make_design
from sparsekit.sbl._dask_laplace import DaskCandidateColumns
from sparsekit.sbl._design import DesignMatrix
from sparsekit.sbl._readmission import CandidateColumns, apply_additions, propose_additions

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
def test_classifier_dask_class_weight():
    """class_weight is applied from chunk-wise class counts (default settings: the exact phase)."""
    X, y, _ = _classification(n=300, p=3, seed=3)
    y = np.where(np.arange(300) < 60, "no", y)  # unbalanced
    params = dict(kernel=None, class_weight="balanced")
    ref = DQNSBLClassifier(**params).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no note: nothing is skipped
        est = DQNSBLClassifier(**params).fit(_chunked(X, 150), da.from_array(y, chunks=150))
    _assert_same_classifier(est, ref, 1e-9)


# ------------------------------------------------------------- classifier: exact phase on dask
def _digits(n=120, p=24):
    """A binary digits problem on the 24 most variable pixels: the exact phase (default
    exact_switch) prunes and re-admits a basis (measured: one re-admission, 72 iterations)."""
    X, y = load_digits(return_X_y=True)
    rows = np.random.RandomState(0).permutation(len(y))[:n]
    cols = np.argsort(-X.var(axis=0))[:p]
    sw = np.random.default_rng(0).uniform(0.5, 2.0, size=n)
    return X[rows][:, cols] / 16.0, np.isin(y[rows], [3, 5, 8, 9]).astype(int), sw


def _assert_same_classifier(a, b, rtol, cov_rtol=None, shift_rtol=None):
    """Same fitted classifier to ``rtol``; ``shift_rtol``: the softmax intercepts' common shift
    (the direction the multinomial likelihood does not see) only to this tolerance."""
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.classes_, b.classes_)
    np.testing.assert_array_equal(np.isfinite(a.lambda_), np.isfinite(b.lambda_))
    np.testing.assert_array_equal(a.relevance_, b.relevance_)
    scale = np.abs(b.coef_).max()
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=rtol, atol=rtol * scale)
    ia, ib = a.intercept_, b.intercept_
    if shift_rtol is not None:
        np.testing.assert_allclose(ia, ib, rtol=shift_rtol, atol=shift_rtol * scale)
        ia, ib = ia - ia.mean(), ib - ib.mean()
    np.testing.assert_allclose(ia, ib, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(a.sigma_, b.sigma_, rtol=rtol, atol=rtol * np.abs(b.sigma_).max())
    np.testing.assert_allclose(a.scores_, b.scores_, rtol=rtol)
    assert (a._cov is None) == (b._cov is None)
    cov_rtol = rtol if cov_rtol is None else cov_rtol
    for ca, cb in zip(a._cov or [], b._cov or []):  # the exact phase's full covariances
        np.testing.assert_allclose(ca, cb, rtol=cov_rtol, atol=cov_rtol * np.abs(cb).max())


@pytest.fixture
def readmissions(monkeypatch):
    """The (basis, class, precision) additions proposed during the fits of a test."""
    added = []
    propose = engine.propose_additions

    def recording(*args, **kwargs):
        out = propose(*args, **kwargs)
        added.extend(out)
        return out

    monkeypatch.setattr(engine, "propose_additions", recording)
    return added


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_classifier_dask_default_settings_equal_numpy(sparse, readmissions):
    """DQNSBLClassifier(kernel=None) with its defaults (the exact Laplace phase, with
    re-admission of pruned bases) is the same model on dask as in memory: weights, uneven row
    chunks (50, 50, 20), y chunked differently from X."""
    X, y, sw = _digits()
    Xn = sp.csr_matrix(X) if sparse else X
    ref = DQNSBLClassifier(kernel=None).fit(Xn, y, sample_weight=sw)
    in_memory = list(readmissions)
    readmissions.clear()
    dX = _chunked(X, 50, sparse)
    est = DQNSBLClassifier(kernel=None).fit(
        dX, da.from_array(y, chunks=40), sample_weight=da.from_array(sw, chunks=60)
    )
    # a pruned basis came back, in both fits, with the same precision
    assert in_memory and [a[:2] for a in readmissions] == [a[:2] for a in in_memory]
    np.testing.assert_allclose([a[2] for a in readmissions], [a[2] for a in in_memory], rtol=1e-9)
    _assert_same_classifier(est, ref, 1e-8)
    _no_dask_attributes(est)
    np.testing.assert_allclose(est.predict_proba(dX).compute(), ref.predict_proba(Xn), atol=1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("multi_class", "sparse", "max_iter"),
    [("ovr", True, 1000), ("multinomial", False, 8)],
    ids=["ovr3-sparse", "multinomial-dense"],
)
def test_classifier_dask_multiclass_default_settings_equal_numpy(multi_class, sparse, max_iter):
    """Three classes with the default exact phase: one-vs-rest (three Newton problems in
    lockstep, each with its own model) and multinomial (the class-blocked Hessian); the
    multinomial fit is bounded to a few iterations (each costs a dozen dask passes)."""
    X, y, sw = _classification(n_classes=3, p=4, seed=8)
    Xn = sp.csr_matrix(X) if sparse else X
    params = dict(kernel=None, multi_class=multi_class, max_iter=max_iter)
    ref = DQNSBLClassifier(**params).fit(Xn, y, sample_weight=sw)
    est = DQNSBLClassifier(**params).fit(_chunked(X, 170, sparse), y, sample_weight=sw)
    # The softmax intercepts are determined only up to a common shift (precision FREE_LAMBDA
    # along it), so the Laplace precision has a condition number ~1e10 and its inverse carries
    # summation-order rounding at ~1e-6 (measured 1.2e-6), and the Newton mode along the shift
    # stops where Armijo sees no decrease (measured 3.5e-8, the centred intercepts 3e-12);
    # everything else agrees to 1e-8.
    softmax = multi_class == "multinomial"
    _assert_same_classifier(
        est,
        ref,
        1e-8,
        cov_rtol=1e-5 if softmax else None,
        shift_rtol=1e-6 if softmax else None,
    )


def test_classifier_dask_exact_solver_equals_numpy():
    """solver="exact" runs on dask (small M): Newton from the first iteration on all M bases."""
    X, y, sw = _classification(n=300, p=6, seed=9)
    ref = DQNSBLClassifier(kernel=None, solver="exact").fit(X, y, sample_weight=sw)
    est = DQNSBLClassifier(kernel=None, solver="exact").fit(
        _chunked(X.astype(np.float32), 110), y, sample_weight=sw
    )
    ref32 = DQNSBLClassifier(kernel=None, solver="exact").fit(
        X.astype(np.float32), y, sample_weight=sw
    )
    _assert_same_classifier(est, ref32, 1e-7)
    assert est.coef_.dtype == np.float32
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-4, atol=1e-5)


def _exact_state(design, K, likelihood, seed):
    """A state away from the mode, with some (basis, class) pairs out of the model."""
    rng = np.random.default_rng(seed)
    m = design.n_coef
    mask = rng.uniform(size=(m, K)) < 0.7
    mask[0] = True
    lam = rng.uniform(0.1, 3.0, size=(m, K))
    if likelihood == "bernoulli":
        # (softmax intercepts keep a proper precision: with FREE_LAMBDA their common shift is
        # nearly free and the mode along it is rounding-sensitive, see the multinomial fit test)
        lam[0] = FREE_LAMBDA
    coef = np.where(mask, rng.normal(scale=0.5, size=(m, K)), 0.0)
    return engine.PathState(coef, lam, mask=mask, curvature=np.ones((m, K)))


@pytest.mark.parametrize(
    ("K", "likelihood", "sparse", "dtype"),
    [
        (1, "bernoulli", False, np.float64),
        (3, "bernoulli", True, np.float64),
        (3, "bernoulli", False, np.float32),
        (3, "softmax", False, np.float64),
        (3, "softmax", True, np.float64),
    ],
)
def test_chunked_exact_step_equals_dense(K, likelihood, sparse, dtype):
    """One exact Laplace step (Newton from a point away from the mode, per-class models) on a
    chunked design gives the dense step's modes, covariances, loss and log-determinant; the
    last chunk is empty."""
    rng = np.random.default_rng(K)
    n, p = 230, 7
    X = (rng.normal(size=(n, p)) * rng.uniform(0.1, 20.0, size=p)).astype(dtype)
    X[rng.uniform(size=X.shape) < 0.3] = 0.0
    y = rng.integers(0, K if K > 1 else 2, size=n)
    T = (y == 1).astype(float)[:, None] if K == 1 else np.eye(K)[y]
    sw = rng.uniform(0.5, 2.0, size=n)
    dense = DesignMatrix(sp.csr_matrix(X) if sparse else X, sw, center=False, intercept_column=True)
    chunks = ((100, 100, 30, 0), (p,))
    dX = da.from_array(X, chunks=chunks)
    if sparse:
        dX = dX.map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0), dtype=dtype))
    dsw = da.from_array(sw, chunks=(chunks[0],))
    chunked = make_design(dX, dsw, center=False, intercept_column=True)
    a = _exact_state(dense, K, likelihood, seed=3)
    b = _exact_state(chunked, K, likelihood, seed=3)
    out_a = exact_step(dense, a, T, sw, likelihood)
    out_b = exact_step(chunked, b, da.from_array(T, chunks=(chunks[0], K)), dsw, likelihood)
    # The softmax Newton loop stops once the Armijo test can no longer see a decrease of the
    # loss (rounding), so its mode is determined to ~1e-8 only (measured: 6.6e-9 apart).
    tol = 1e-9 if likelihood == "bernoulli" else 1e-7
    np.testing.assert_allclose(out_b, out_a, rtol=tol)
    np.testing.assert_allclose(b.coef, a.coef, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.sigma_diag, a.sigma_diag, rtol=tol, atol=1e-12)
    for (ia, Sa), (ib, Sb) in zip(a.sigma_full, b.sigma_full):
        np.testing.assert_array_equal(ib, ia)
        np.testing.assert_allclose(Sb, Sa, rtol=tol, atol=tol * np.abs(Sa).max())
    np.testing.assert_allclose(b.class_evidence, a.class_evidence, rtol=1e-10)


@pytest.mark.parametrize(
    ("sparse", "likelihood"),
    [(False, "bernoulli"), (True, "bernoulli"), (False, "softmax"), (True, "softmax")],
)
def test_chunked_readmission_equals_dense(sparse, likelihood):
    """At the same exact posterior with pruned bases, the chunked sweep proposes the dense
    sweep's additions (every class, scores from the original chunks; for softmax with the
    class-coupled curvature), and putting them back gives the same design."""
    rng = np.random.default_rng(11)
    n, p, K = 240, 30, 3
    X = rng.normal(size=(n, p))
    X[:, 1:10] += 2.0 * X[:, [0]]  # correlated with a model basis: the scores need Phi_A' B phi
    y = np.digitize(X[:, 0] + X[:, 12] + 0.5 * rng.normal(size=n), [-1.0, 1.0])
    T = np.eye(K)[y]
    sw = rng.uniform(0.5, 2.0, size=n)
    Xn = sp.csr_matrix(X) if sparse else X
    dX = _chunked(X, 70, sparse)
    designs = [
        DesignMatrix(Xn, sw, center=False, intercept_column=True),
        make_design(dX, da.from_array(sw, chunks=70), center=False, intercept_column=True),
    ]
    sources = [
        CandidateColumns(lambda js: (Xn.tocsc() if sparse else Xn)[:, js], p),
        DaskCandidateColumns(dX, p),
    ]
    keep = np.zeros(p, dtype=bool)
    keep[[2, 5, 20, 25]] = True  # bases 0 and 12, which drive y, are out
    proposals, states = [], []
    for design, src in zip(designs, sources):
        design.compact(keep)
        m = design.n_coef
        lam = np.full((m, K), 2.0)
        lam[0] = FREE_LAMBDA
        state = engine.PathState(
            np.zeros((m, K)), lam, mask=np.ones((m, K), bool), curvature=np.ones((m, K))
        )
        Ts = T if src is sources[0] else da.from_array(T, chunks=(70, K))
        sws = sw if src is sources[0] else da.from_array(sw, chunks=70)
        exact_step(design, state, Ts, sws, likelihood)
        out = propose_additions(design, state, Ts, sws, src, 1e9, likelihood)
        apply_additions(design, state, src, out, 1.0)
        proposals.append(out)
        states.append(state)
    assert len(proposals[0]) >= 2 and 12 in {j for j, _k, _a in proposals[0]}
    assert [(j, k) for j, k, _a in proposals[1]] == [(j, k) for j, k, _a in proposals[0]]
    # the two exact steps stop at the same gradient tolerance along different roundings, so
    # their modes, and the precisions proposed there, agree to that tolerance rather than to
    # rounding (softmax: 1.1e-6 apart on an AMD EPYC with numpy 2.4.6's OpenBLAS)
    np.testing.assert_allclose(
        [a for *_, a in proposals[1]], [a for *_, a in proposals[0]], rtol=1e-5
    )
    np.testing.assert_array_equal(designs[1].active, designs[0].active)
    np.testing.assert_array_equal(states[1].mask, states[0].mask)
    W = rng.normal(size=(designs[0].n_coef, K))
    np.testing.assert_allclose(designs[1].matvec(W).compute(), designs[0].matvec(W), rtol=1e-10)


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

    # default settings: the exact phase's Newton passes and re-admission sweeps on the workers
    ref_d = DQNSBLClassifier(kernel=None).fit(Xc, yc, sample_weight=swc)
    est_d = DQNSBLClassifier(kernel=None).fit(_chunked(Xc, 120, sparse=True), yc, sample_weight=swc)
    _assert_same_classifier(est_d, ref_d, 1e-8)


# ---------------------------------------------------------------------------------- refusals
def test_kernel_with_dask_input_is_refused():
    X, y, _ = _regression(n=50)
    with pytest.raises(ValueError, match=r"kernel='rbf'.*kernel=None"):
        DQNSBLRegressor(kernel="rbf").fit(_chunked(X, 25), y)
    with pytest.raises(ValueError, match="kernel=None"):
        DQNSBLClassifier().fit(_chunked(X, 25), y > y.mean())  # default kernel is rbf


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
