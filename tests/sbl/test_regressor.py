"""Behaviour of DQNSBLRegressor: oracles of spec §5, input handling, edge cases, bad input."""

import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import make_regression
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import ARDRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sparsekit import DQNSBLRegressor
from sparsekit.sbl._design import DesignMatrix
from sparsekit.sbl._engine import PathSettings, PathState, run_path
from sparsekit.sbl._regression_solver import Gaussian


def _standardise(X):
    return (X - X.mean(0)) / X.std(0)


def _ar1(n, d, rho, rng):
    X = rng.normal(size=(n, d))
    for j in range(1, d):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * X[:, j]
    return X


def _sparse_problem(seed, n=300, d=100, k=5, rho=0.5, noise=0.3):
    rng = np.random.default_rng(seed)
    X = _ar1(n, d, rho, rng)
    w = np.zeros(d)
    support = rng.choice(d, k, replace=False)
    w[support] = rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
    return X, X @ w + noise * rng.normal(size=n), w, support


# --------------------------------------------------------------------------- oracles (spec §5)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("compute_score", [False, True])
def test_exact_solver_follows_ard_path(seed, compute_score):
    """solver="exact" reproduces ARDRegression's iterates on standardised dense data (spec §5.1)."""
    rng = np.random.default_rng(seed)
    X = _standardise(_ar1(120, 30, 0.4, rng))
    w = np.zeros(30)
    w[[1, 5, 17]] = [2.0, -1.5, 0.7]
    y = X @ w + 0.3 * rng.normal(size=120)
    y = (y - y.mean()) / y.std() + 4.0  # unit variance: both work on the same scale
    ard = ARDRegression(compute_score=compute_score).fit(X, y)
    ours = DQNSBLRegressor(solver="exact", compute_score=compute_score).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ard.coef_, rtol=0, atol=1e-10)
    assert ours.intercept_ == pytest.approx(ard.intercept_, abs=1e-10)
    assert ours.alpha_ == pytest.approx(ard.alpha_, rel=1e-10)
    assert ours.n_iter_ == ard.n_iter_
    kept = ard.lambda_ < ard.threshold_lambda
    np.testing.assert_allclose(ours.lambda_[kept], ard.lambda_[kept], rtol=1e-9)
    np.testing.assert_allclose(ours.sigma_, np.diag(ard.sigma_), rtol=1e-9)
    if compute_score:
        assert len(ours.scores_) == len(ard.scores_)


def test_invariant_to_units_of_x_and_y():
    """Rescaling features and target rescales the fit, nothing else (ARDRegression's pruning
    threshold, by contrast, depends on the units)."""
    X, y, _, _ = _sparse_problem(30, n=150, d=30)
    a = DQNSBLRegressor().fit(X, y)
    scales = np.logspace(-3, 3, 30)
    b = DQNSBLRegressor().fit(X * scales, 1000.0 * y + 5.0)
    np.testing.assert_array_equal(a.relevance_, b.relevance_)
    np.testing.assert_allclose(b.coef_ * scales / 1000.0, a.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        b.predict(X[:5] * scales), 1000.0 * a.predict(X[:5]) + 5.0, rtol=1e-6
    )
    assert b.alpha_ == pytest.approx(a.alpha_ / 1e6, rel=1e-6)


def test_orthogonal_design_dqn_equals_exact():
    """With orthogonal columns the posterior precision is diagonal, so the diagonal solver is
    exact: same weights, precisions and noise as the full-covariance solver (spec §5.2)."""
    rng = np.random.default_rng(0)
    n, d = 200, 12
    Q, _ = np.linalg.qr(rng.normal(size=(n, d + 1)))
    Q = Q[:, 1:] - Q[:, 1:].mean(0)  # orthogonal to the constant (centring keeps them orthogonal)
    X = Q * rng.uniform(0.5, 5, d)
    w = np.zeros(d)
    w[[0, 3, 8]] = [4.0, -2.0, 1.0]
    y = X @ w * 10 + 0.05 * rng.normal(size=n)
    kw = dict(tol=1e-10, n_iter_no_change=3, max_iter=500)
    dqn = DQNSBLRegressor(inner_tol=1e-13, inner_max_iter=50, **kw).fit(X, y)
    exact = DQNSBLRegressor(**kw, solver="exact").fit(X, y)
    np.testing.assert_allclose(dqn.coef_, exact.coef_, rtol=1e-7, atol=1e-9)
    assert dqn.alpha_ == pytest.approx(exact.alpha_, rel=1e-6)
    both = np.isfinite(exact.lambda_) & (exact.lambda_ < 1e4)
    np.testing.assert_allclose(dqn.lambda_[both], exact.lambda_[both], rtol=1e-6)


def test_single_basis_closed_form():
    """One basis, fixed noise, no hyperpriors: the MacKay fixed point is Tipping & Faul's closed
    form alpha* = S^2 / (Q^2 - S) with S = beta phi'phi and Q = beta phi't (spec §5.3)."""
    rng = np.random.default_rng(3)
    n = 60
    phi = rng.normal(size=n)
    phi -= phi.mean()
    t = 0.4 * phi + rng.normal(size=n)
    t -= t.mean()
    beta = 1.0 / t.var()
    design = DesignMatrix(phi[:, None], np.ones(n), center=True, intercept_column=False)
    scale = design.inv_scale[0]  # the solver works on the unit-RMS column phi * scale
    S = beta * (phi * scale) @ (phi * scale)
    Q = beta * (phi * scale) @ t
    assert Q**2 > S
    expected = S**2 / (Q**2 - S)
    state = PathState(np.zeros((1, 1)), np.ones((1, 1)), beta=beta)
    settings = PathSettings(
        max_iter=5000,
        tol=1e-14,
        n_iter_no_change=5,
        threshold_lambda=1e12,
        lambda_1=0.0,
        lambda_2=0.0,
        alpha_1=0.0,
        alpha_2=0.0,
        update="mackay",
        fix_noise=True,
        compute_score=False,
        exact_switch=1,  # the exact phase from the start, with the relative coefficient rule
    )
    run_path(design, state, Gaussian(t, np.ones(n), settings), settings)
    assert state.lam[0, 0] == pytest.approx(expected, rel=1e-8)


def test_sparse_support_recovery_over_seeds():
    """Spec §5.5: recall 1.0, mean false positives (|w| > 0.05) <= 1, and coefficient error within
    10% of ARDRegression's, over 20 seeds."""
    fps, ours_err, ard_err = [], [], []
    for seed in range(20):
        X, y, w, support = _sparse_problem(seed)
        reg = DQNSBLRegressor().fit(X, y)
        big = set(np.flatnonzero(np.abs(reg.coef_) > 0.05))
        assert set(support) <= big, f"seed {seed}: missed {set(support) - big}"
        fps.append(len(big - set(support)))
        ard = ARDRegression().fit(X, y)
        ours_err.append(np.linalg.norm(reg.coef_ - w) / np.linalg.norm(w))
        ard_err.append(np.linalg.norm(ard.coef_ - w) / np.linalg.norm(w))
    assert np.mean(fps) <= 1.0
    assert np.mean(ours_err) <= 1.1 * np.mean(ard_err)


def test_diagonal_underestimates_covariance():
    """Spec §5.4: 1/H_jj <= (H^-1)_jj for SPD H, hence the diagonal gamma is never below the
    exact one; checked on the solver's own precision matrix."""
    rng = np.random.default_rng(1)
    X = _ar1(80, 15, 0.7, rng)
    design = DesignMatrix(X, np.ones(80), center=True, intercept_column=False)
    lam = rng.uniform(0.1, 10, 15)
    H = 2.0 * design.gram(np.ones(80)) + np.diag(lam)
    diag_sigma = 1.0 / np.diag(H)
    full_sigma = np.diag(np.linalg.inv(H))
    assert np.all(diag_sigma <= full_sigma + 1e-15)
    assert np.all(1 - lam * diag_sigma >= 1 - lam * full_sigma - 1e-15)


# --------------------------------------------------------------------------- inputs
def test_csr_equals_dense():
    X, y, _, _ = _sparse_problem(4, n=150, d=40)
    X[np.abs(X) < 0.8] = 0.0
    dense = DQNSBLRegressor().fit(X, y)
    sparse = DQNSBLRegressor().fit(sp.csr_matrix(X), y)
    np.testing.assert_allclose(sparse.coef_, dense.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        sparse.predict(sp.csr_matrix(X[:5])), dense.predict(X[:5]), rtol=1e-8
    )
    _, s1 = sparse.predict(sp.csr_matrix(X[:5]), return_std=True)
    _, s2 = dense.predict(X[:5], return_std=True)
    np.testing.assert_allclose(s1, s2, rtol=1e-8)


def test_float32_and_readonly_input():
    X, y, _, _ = _sparse_problem(5, n=120, d=20)
    X32 = X.astype(np.float32)
    X32.setflags(write=False)
    reg32 = DQNSBLRegressor().fit(X32, y.astype(np.float32))
    reg64 = DQNSBLRegressor().fit(X, y)
    assert reg32.coef_.dtype == np.float32
    assert reg32.predict(X32).dtype == np.float32
    np.testing.assert_allclose(reg32.coef_, reg64.coef_, rtol=1e-3, atol=1e-3)
    assert not X32.flags.writeable  # input untouched


def test_input_not_modified():
    X, y, _, _ = _sparse_problem(6, n=80, d=10)
    X0, y0 = X.copy(), y.copy()
    DQNSBLRegressor().fit(X, y)
    DQNSBLRegressor(kernel="rbf").fit(X, y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_deterministic_and_clone_refit_identical():
    X, y, _, _ = _sparse_problem(7, n=150, d=60)
    a = DQNSBLRegressor(kernel="rbf").fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.dual_coef_, b.dual_coef_)
    np.testing.assert_array_equal(a.relevance_, b.relevance_)


def test_pickle_round_trip():
    X, y, _, _ = _sparse_problem(8, n=100, d=20)
    reg = DQNSBLRegressor(kernel="rbf").fit(X, y)
    reg2 = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(reg.predict(X), reg2.predict(X))


def test_sample_weight_zero_equals_dropping_rows():
    X, y, _, _ = _sparse_problem(9, n=120, d=15)
    sw = np.ones(120)
    sw[:20] = 0.0
    a = DQNSBLRegressor(inner_tol=1e-12, inner_max_iter=100).fit(X, y, sample_weight=sw)
    b = DQNSBLRegressor(inner_tol=1e-12, inner_max_iter=100).fit(X[20:], y[20:])
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize(
    "kernel", ["linear", "rbf", "poly", "sigmoid", "cosine", "laplacian", "precomputed", "callable"]
)
def test_kernel_bases_fit_and_predict(kernel):
    rng = np.random.default_rng(10)
    X = rng.uniform(-3, 3, size=(120, 1))
    y = np.sinc(X[:, 0]) + 0.05 * rng.normal(size=120)
    Xte = np.linspace(-3, 3, 50)[:, None]
    if kernel == "precomputed":
        from sklearn.metrics.pairwise import rbf_kernel

        reg = DQNSBLRegressor(kernel="precomputed").fit(rbf_kernel(X, X, gamma=2.0), y)
        pred = reg.predict(rbf_kernel(Xte, X, gamma=2.0))
        assert reg.relevance_vectors_ is None
    elif kernel == "callable":
        reg = DQNSBLRegressor(kernel=lambda a, b: np.exp(-2.0 * (a - b) ** 2).sum())
        reg.fit(X[:60], y[:60])
        pred = reg.predict(Xte)
    else:
        params = {
            "sigmoid": dict(gamma=0.1, coef0=0.0),
            "poly": dict(degree=5),
            "rbf": dict(gamma=2.0),
            "laplacian": dict(gamma=1.0),
        }.get(kernel, {})
        reg = DQNSBLRegressor(kernel=kernel, **params).fit(X, y)
        pred = reg.predict(Xte)
        assert reg.relevance_vectors_.shape == (reg.relevance_.size, 1)
    assert np.all(np.isfinite(pred))
    assert reg.dual_coef_.shape == reg.relevance_.shape
    assert not hasattr(reg, "coef_")
    if kernel in ("rbf", "laplacian", "precomputed"):
        # An RVM on noisy sinc: accurate with few relevance vectors (Tipping 2001: about 7).
        assert np.sqrt(np.mean((pred - np.sinc(Xte[:, 0])) ** 2)) < 0.1
        assert reg.relevance_.size < 30


def test_rbf_relevance_vectors_predict_consistently():
    rng = np.random.default_rng(11)
    X = rng.uniform(-3, 3, size=(100, 2))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + 0.05 * rng.normal(size=100)
    reg = DQNSBLRegressor(kernel="rbf", gamma=0.5).fit(X, y)
    from sklearn.metrics.pairwise import rbf_kernel

    manual = rbf_kernel(X[:7], reg.relevance_vectors_, gamma=0.5) @ reg.dual_coef_ + reg.intercept_
    np.testing.assert_allclose(reg.predict(X[:7]), manual, rtol=1e-10)
    np.testing.assert_array_equal(reg.relevance_vectors_, X[reg.relevance_])


def test_return_std_is_sensible():
    rng = np.random.default_rng(12)
    X = rng.uniform(-1, 1, size=(200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.2 * rng.normal(size=200)
    reg = DQNSBLRegressor().fit(X, y)
    _, std = reg.predict(np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]]), return_std=True)
    assert std[0] == pytest.approx(1 / np.sqrt(reg.alpha_), rel=0.05)  # at the data centre
    assert std[1] > std[0]  # far from the data the weight uncertainty shows
    assert 1 / np.sqrt(reg.alpha_) == pytest.approx(0.2, rel=0.15)


def test_exact_switch_finishes_exactly():
    X, y, _, _ = _sparse_problem(13, n=200, d=80)
    a = DQNSBLRegressor(exact_switch=1000).fit(X, y)  # switches at once
    b = DQNSBLRegressor(solver="exact").fit(X, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-3, atol=1e-3)
    assert a._sigma_full is not None


def test_no_m_by_m_allocation():
    """The default solver never allocates an M-by-M matrix: peak traced memory stays near the
    size of the data copy even when M^2 is far larger (spec §5.11)."""
    rng = np.random.default_rng(14)
    n, M = 100, 3000
    X = rng.normal(size=(n, M))
    y = X[:, 0] - X[:, 1] + 0.1 * rng.normal(size=n)
    DQNSBLRegressor(max_iter=20).fit(X[:, :50], y)  # compile first
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DQNSBLRegressor(max_iter=20).fit(X, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * X.nbytes
    assert peak < M * M * 8 / 4


def test_warm_start_continues():
    X, y, _, _ = _sparse_problem(15, n=200, d=50)
    cold = DQNSBLRegressor().fit(X, y)
    warm = DQNSBLRegressor(warm_start=True, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm.fit(X, y)
        first_iter = warm.n_iter_
        warm.set_params(max_iter=300)
        warm.fit(X, y)
    assert first_iter == 3
    assert warm.n_iter_ < cold.n_iter_ + 5
    np.testing.assert_allclose(warm.predict(X), cold.predict(X), rtol=0.05, atol=0.05)


def test_convergence_warning_and_n_iter():
    X, y, _, _ = _sparse_problem(16, n=100, d=30)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        reg = DQNSBLRegressor(max_iter=2).fit(X, y)
    assert reg.n_iter_ == 2


def test_verbose_prints_progress(capsys):
    X, y, _, _ = _sparse_problem(17, n=60, d=10)
    DQNSBLRegressor(verbose=1).fit(X, y)
    assert "active=" in capsys.readouterr().out


def test_n_jobs_gives_same_result():
    X, y, _, _ = _sparse_problem(18, n=100, d=30)
    a = DQNSBLRegressor(n_jobs=1).fit(X, y)
    b = DQNSBLRegressor(n_jobs=-1).fit(X, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-8, atol=1e-12)


def test_pipeline_and_feature_names():
    pd = pytest.importorskip("pandas")
    X, y, _, _ = _sparse_problem(19, n=80, d=5)
    df = pd.DataFrame(X, columns=list("abcde"))
    pipe = make_pipeline(StandardScaler(), DQNSBLRegressor()).fit(df, y)
    assert pipe.score(df, y) > 0.9
    reg = DQNSBLRegressor().fit(df, y)
    assert list(reg.feature_names_in_) == list("abcde")


# --------------------------------------------------------------------------- edge cases
def test_constant_target_and_columns():
    rng = np.random.default_rng(20)
    X = rng.normal(size=(50, 4))
    X[:, 2] = 7.0
    reg = DQNSBLRegressor().fit(X, np.full(50, 3.5))
    assert reg.intercept_ == pytest.approx(3.5)
    assert np.all(reg.coef_ == 0)
    mean, std = reg.predict(X, return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    y = X[:, 0] + 0.1 * rng.normal(size=50)
    reg = DQNSBLRegressor().fit(X, y)
    assert reg.coef_[2] == 0.0 and np.isinf(reg.lambda_[2])
    assert np.all(np.isfinite(reg.predict(X)))
    for solver in ("dqn", "exact"):
        r = DQNSBLRegressor(solver=solver).fit(np.ones((30, 3)), rng.normal(size=30))
        assert np.all(np.isfinite(r.predict(np.ones((2, 3)))))


def test_duplicated_columns_and_huge_scales():
    rng = np.random.default_rng(21)
    X = rng.normal(size=(100, 6))
    X[:, 3] = X[:, 0]
    X[:, 4] *= 1e8
    X[:, 5] *= 1e-8
    y = X[:, 0] + X[:, 4] * 1e-8 + 0.1 * rng.normal(size=100)
    for solver in ("dqn", "exact"):
        reg = DQNSBLRegressor(solver=solver).fit(X, y)
        assert np.all(np.isfinite(reg.coef_))
        assert reg.score(X, y) > 0.9


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[1.0, np.nan], [2.0, 3.0], [3.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [2.0, 3.0], [3.0, 1.0]]), "infinity"),
        (np.zeros((0, 3)), "0 sample"),
        (np.array([[1.0, 2.0]]), "minimum of 2"),
        (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), "(?i)string|numeric|float"),
    ],
)
def test_bad_training_input(bad, match):
    y = np.arange(bad.shape[0], dtype=float)
    with pytest.raises(ValueError, match=match):
        DQNSBLRegressor().fit(bad, y)


def test_bad_sample_weights():
    X = np.random.default_rng(0).normal(size=(10, 2))
    y = np.arange(10.0)
    with pytest.raises(ValueError, match="Negative values"):
        DQNSBLRegressor().fit(X, y, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="non-zero"):
        DQNSBLRegressor().fit(X, y, sample_weight=np.zeros(10))
    with pytest.raises(ValueError, match="shape"):
        DQNSBLRegressor().fit(X, y, sample_weight=np.ones(3))


def test_wrong_number_of_features_and_unfitted():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(NotFittedError):
        DQNSBLRegressor().predict(X)
    reg = DQNSBLRegressor().fit(X, np.arange(10.0))
    with pytest.raises(ValueError, match="3 features"):
        reg.predict(X[:, :2])


def test_unknown_kernel_and_bad_params():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="'kernel' parameter"):
        DQNSBLRegressor(kernel="gaussian").fit(X, np.arange(10.0))
    with pytest.raises(ValueError, match="'max_iter' parameter"):
        DQNSBLRegressor(max_iter=0).fit(X, np.arange(10.0))
    with pytest.raises(ValueError, match="square Gram matrix"):
        DQNSBLRegressor(kernel="precomputed").fit(X, np.arange(10.0))


@pytest.mark.parametrize("kernel", ["chi2", "additive_chi2", "rbf"])
def test_gamma_none_uses_kernel_default(kernel):
    rng = np.random.default_rng(31)
    X = rng.uniform(0, 1, size=(40, 3))
    y = X.sum(1) + 0.05 * rng.normal(size=40)
    reg = DQNSBLRegressor(kernel=kernel, gamma=None).fit(X, y)
    assert np.all(np.isfinite(reg.predict(X)))


@pytest.mark.parametrize("seed", [36, 47])
def test_rbf_regression_with_a_precision_near_zero(seed):
    """Tipping & Faul's path reached a precision of ~1e-16 whose factor s rounded to 0; it raised
    ZeroDivisionError from the numba scores (make_regression(200, 3, noise=0.1): 6 of 12 seeds
    and sizes). It fits; since the sparsity floor (``_constructive.S_FLOOR``) both seeds converge
    (the numba guard itself: ``test_kernels.py::test_fast_ml_scores_where_rounding_zeroed_s``)."""
    X, y = make_regression(200, 3, n_informative=3, noise=0.1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = DQNSBLRegressor(kernel="rbf", gamma=0.05).fit(X, y)
    assert est.score(X, y) > 0.999
