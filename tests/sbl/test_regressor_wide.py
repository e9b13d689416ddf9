"""DQNSBLRegressor with more candidate bases than samples (p >> n, sparse recovery).

The diagonal phase cannot work there (the first solve interpolates the targets); these tests pin
the constructive path (Tipping & Faul's fast marginal likelihood with re-admission) that runs
instead, its noise-precision schedule, and the warning for an empty model.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import ARDRegression
from sklearn.metrics import r2_score

from sparsekit import DQNSBLRegressor
from sparsekit.exceptions import EmptyModelWarning
from sparsekit.sbl._constructive import constructive_path
from sparsekit.sbl._design import DesignMatrix
from sparsekit.sbl._engine import PathSettings, PathState, run_path


def _wide_problem(n, M, k, seed, noise=0.05, n_test=300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + n_test, M))
    w = np.zeros(M)
    support = rng.choice(M, k, replace=False)
    w[support] = rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
    y = X @ w + noise * rng.normal(size=n + n_test)
    return X[:n], y[:n], X[n:], y[n:], support


@pytest.mark.parametrize(
    ("n", "M", "k"), [(100, 300, 2), (100, 300, 10), (200, 1000, 10), (50, 5000, 2)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_support_when_features_outnumber_samples(n, M, k, seed):
    X, y, Xte, yte, support = _wide_problem(n, M, k, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges, no empty model
        reg = DQNSBLRegressor().fit(X, y)
    big = np.flatnonzero(np.abs(reg.coef_) > 0.05)
    np.testing.assert_array_equal(big, np.sort(support))
    assert r2_score(yte, reg.predict(Xte)) >= 0.99
    # The noise precision is estimated, not driven to its cap: within a factor 2 of 1/0.05^2.
    assert 0.5 * 400 <= reg.alpha_ <= 2 * 400


def _log_evidence(X, y, cols, lam, beta):
    """Exact log marginal likelihood of the standardised target (centred, unit variance) under
    the model on the columns ``cols`` of the standardised X (centred, unit RMS), with weight
    precisions ``lam`` and noise precision ``beta`` on that scale (``lambda_``'s scale)."""
    Xc, yc = X - X.mean(0), y - y.mean()
    A = Xc[:, cols] / np.sqrt(np.mean(Xc[:, cols] ** 2, axis=0))
    t = yc / np.sqrt(np.mean(yc**2))
    C = np.eye(len(y)) / beta + (A / lam) @ A.T
    L = np.linalg.cholesky(C)
    r = np.linalg.solve(L, t)
    return -0.5 * (len(y) * np.log(2 * np.pi) + 2 * np.log(np.diag(L)).sum() + r @ r)


@pytest.mark.parametrize("seed", [200351, 200352, 200353, 200354])
def test_near_the_recovery_transition_with_noise(seed):
    """n=100, M=200, k=35, noise 0.01, the benchmark's problems (bench_phase_transition.py) just
    below exact SBL's 50 % transition: ARDRegression finds the true support on all four. The
    constructive path started from a noise precision of 100/var(y) settled instead with ~70
    features, 5-12 true ones missing, at a log evidence 246-287 below ARD's (issue 8); from
    1/var(y) it reaches the true support at ARD's evidence or above."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(100, 200))
    w = np.zeros(200)
    support = rng.choice(200, 35, replace=False)
    w[support] = rng.choice([-1.0, 1.0], 35) * rng.uniform(1, 2, 35)
    y = X @ w + 0.01 * rng.normal(size=100)
    reg = DQNSBLRegressor().fit(X, y)
    kept = np.flatnonzero(reg.coef_)
    np.testing.assert_array_equal(kept, np.sort(support))
    np.testing.assert_allclose(reg.coef_, w, atol=0.01)
    if seed in (200351, 200352):  # ARDRegression takes ~0.3 s a fit: two of the four
        ard = ARDRegression().fit(X, y)
        on = np.flatnonzero(ard.lambda_ < ard.threshold_lambda)
        var_y, ms_x = np.var(y), np.var(X, axis=0)  # ARD's precisions in the units of X and y
        ours = _log_evidence(X, y, kept, reg.lambda_[kept], reg.alpha_ * var_y)
        theirs = _log_evidence(X, y, on, ard.lambda_[on] * var_y / ms_x[on], ard.alpha_ * var_y)
        assert ours >= theirs - 1.0


def test_sparse_csr_wide_problem():
    rng = np.random.default_rng(5)
    n, M, nnz = 2500, 20000, 250000
    X = sp.csr_matrix(
        (rng.normal(size=nnz), (rng.integers(0, n, nnz), rng.integers(0, M, nnz))), shape=(n, M)
    )
    w = np.zeros(M)
    support = rng.choice(M, 10, replace=False)
    w[support] = rng.choice([-1, 1], 10) * rng.uniform(1, 2, 10)
    y = X @ w + 0.01 * rng.normal(size=n)
    reg = DQNSBLRegressor().fit(X[:2000], y[:2000])
    np.testing.assert_array_equal(np.flatnonzero(np.abs(reg.coef_) > 0.05), np.sort(support))
    assert r2_score(y[2000:], reg.predict(X[2000:])) >= 0.99
    dense = DQNSBLRegressor().fit(X[:2000].toarray(), y[:2000])
    np.testing.assert_allclose(reg.coef_, dense.coef_, rtol=1e-6, atol=1e-9)


def _path_settings(**params):
    """The path settings of the engine-level tests here (ARDRegression's defaults)."""
    return PathSettings(
        max_iter=300,
        tol=1e-3,
        n_iter_no_change=5,
        threshold_lambda=1e4,
        alpha_1=1e-6,
        alpha_2=1e-6,
        **params,
    )


def test_pruning_is_reversible():
    """Started from a model made only of wrong bases, the constructive path deletes them and
    re-admits the true ones (Q_i^2 > S_i), so no pruning decision is final."""
    X, y, _, _, support = _wide_problem(100, 300, 3, seed=4)
    t = (y - y.mean()) / y.std()
    sw = np.ones(100)
    design = DesignMatrix(X, sw, center=True, intercept_column=False)
    wrong = np.setdiff1d(np.arange(10), support)[:5]
    state = PathState(np.zeros((0, 1)), np.zeros((0, 1)), beta=100.0)
    settings = _path_settings(fix_noise=False)
    constructive_path(design, t, sw, state, settings=settings, init=(wrong, np.ones(5)))
    assert state.converged
    np.testing.assert_array_equal(design.active, np.sort(support))
    assert {j for j, _k in state.pruned_lam} == set(wrong.tolist())


def test_weighted_wide_problem_equals_repeated_rows():
    X, y, _, _, _ = _wide_problem(60, 400, 3, seed=2)
    sw = np.ones(60)
    sw[:10] = 3.0
    Xr = np.vstack([X, X[:10], X[:10]])
    yr = np.concatenate([y, y[:10], y[:10]])
    a = DQNSBLRegressor().fit(X, y, sample_weight=sw)
    b = DQNSBLRegressor().fit(Xr, yr)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-7, atol=1e-10)


def test_empty_model_warns():
    X, y, _, _, _ = _wide_problem(80, 200, 3, seed=0)
    for reg in (DQNSBLRegressor(threshold_lambda=1e-3), DQNSBLRegressor(solver="exact")):
        reg.set_params(threshold_lambda=1e-3)
        with pytest.warns(EmptyModelWarning, match="pruned every basis"):
            reg.fit(X, y)
        assert reg.relevance_.size == 0
        np.testing.assert_allclose(reg.predict(X[:3]), y.mean())
    # Narrow problems take the diagonal path: the same warning.
    with pytest.warns(EmptyModelWarning):
        DQNSBLRegressor(threshold_lambda=1e-3).fit(X[:, :20], y)


def test_rank_one_updates_match_full_recomputation(monkeypatch):
    """Sigma, mu, S and Q follow each action by rank-one updates; recomputing them from scratch
    after every action gives the same path and model."""
    import sparsekit.sbl._constructive as solver

    X, y, _, _, _ = _wide_problem(100, 400, 8, seed=7, noise=0.3)
    a = DQNSBLRegressor().fit(X, y)
    monkeypatch.setattr(solver, "REFRESH", 1)
    b = DQNSBLRegressor().fit(X, y)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.relevance_, b.relevance_)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-8, atol=1e-12)


def test_warm_start_resumes_the_constructive_path():
    X, y, _, _, support = _wide_problem(100, 400, 6, seed=9)
    cold = DQNSBLRegressor().fit(X, y)
    warm = DQNSBLRegressor(warm_start=True, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm.fit(X, y)
    assert warm.n_iter_ == 3 and 0 < warm.relevance_.size <= 4
    warm.set_params(max_iter=300).fit(X, y)  # starts from the bases found so far
    np.testing.assert_array_equal(warm.relevance_, np.sort(support))
    assert warm.n_iter_ < cold.n_iter_
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=1e-6, atol=1e-9)


def _transition_problem(M, k, seed, noise=0.01):
    """bench_phase_transition.py's problem (n=100)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(100, M))
    w = np.zeros(M)
    support = rng.choice(M, k, replace=False)
    w[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 2, k)
    return X, X @ w + noise * rng.normal(size=100), w


def test_all_feature_start_reaches_ards_optimum(monkeypatch):
    """n=100, M=200, k=40, noise 0.01 (the benchmark's problem at seed 200404, past the
    constructive path's transition): the constructive path alone settles with ~70 features at a
    log evidence far below ARDRegression's, which finds the true support; the second start from
    every feature (ARD's iteration, then the constructive path from its end) reaches it."""
    import sparsekit.sbl._all_feature as all_feature

    X, y, w = _transition_problem(200, 40, 200404)
    reg = DQNSBLRegressor().fit(X, y)
    kept = np.flatnonzero(reg.coef_)
    np.testing.assert_array_equal(kept, np.flatnonzero(w))
    np.testing.assert_allclose(reg.coef_, w, atol=0.01)
    ard = ARDRegression().fit(X, y)
    on = np.flatnonzero(ard.lambda_ < ard.threshold_lambda)
    np.testing.assert_array_equal(on, np.flatnonzero(w))
    var_y, ms_x = np.var(y), np.var(X, axis=0)
    ours = _log_evidence(X, y, kept, reg.lambda_[kept], reg.alpha_ * var_y)
    theirs = _log_evidence(X, y, on, ard.lambda_[on] * var_y / ms_x[on], ard.alpha_ * var_y)
    assert ours >= theirs - 1.0
    # the constructive path alone: a worse local optimum
    monkeypatch.setattr(all_feature, "cheap", lambda design, sw: False)
    alone = DQNSBLRegressor().fit(X, y)
    assert np.count_nonzero(alone.coef_) > 50
    one = np.flatnonzero(alone.coef_)
    assert _log_evidence(X, y, one, alone.lambda_[one], alone.alpha_ * var_y) < ours - 100.0


@pytest.mark.parametrize(
    ("n", "M", "kernel", "runs"),
    [
        (100, 300, None, True),
        (100, 4000, None, True),  # n^2 M = 4e7, the budget
        (100, 4100, None, False),
        (40, 30, None, False),  # constructive (M >= n/2) but M < n
        (100, 300, "rbf", False),  # kernel bases: never
    ],
)
def test_all_feature_start_only_where_cheap(monkeypatch, n, M, kernel, runs):
    import sparsekit.sbl._all_feature as all_feature

    calls = []
    real = all_feature.all_feature_path

    def spy(*args, **kwargs):
        calls.append(args[0].n_active)
        return real(*args, **kwargs)

    monkeypatch.setattr(all_feature, "all_feature_path", spy)
    X, y, _, _, _ = _wide_problem(n, M, 3, seed=1, n_test=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyModelWarning)
        DQNSBLRegressor(kernel=kernel).fit(X, y)
    assert calls == ([M] if runs else [])


def test_all_feature_start_bound_counts_weighted_samples():
    """The cost bound counts samples with positive weight; the CSR problem of issue 8
    (n=20,000, M=1e6) and n > MAX_SAMPLES never qualify."""
    from types import SimpleNamespace

    from sparsekit.sbl._all_feature import cheap

    sw = np.ones(100)
    assert cheap(SimpleNamespace(n_active=4000), sw)
    assert not cheap(SimpleNamespace(n_active=4001), sw)
    assert not cheap(SimpleNamespace(n_active=99), sw)
    sw[50:] = 0.0
    assert cheap(SimpleNamespace(n_active=16000), sw)
    assert not cheap(SimpleNamespace(n_active=10**6), np.ones(20_000))
    assert not cheap(SimpleNamespace(n_active=10**9), np.ones(2001))


def test_woodbury_steps_follow_the_gram_steps():
    """ARD's iteration in the n-by-n Woodbury form (more features than samples) takes the same
    iterates as with the m-by-m Cholesky posterior, sample weights included."""
    from sparsekit.sbl._regression_solver import Gaussian, posterior, woodbury_posterior

    rng = np.random.default_rng(3)
    X, y, _, _, _ = _wide_problem(50, 120, 4, seed=3, n_test=0)
    sw = rng.uniform(0.5, 2.0, 50)
    sw[:3] = 0.0
    design = DesignMatrix(X, sw, center=True, intercept_column=False)
    t = y - np.average(y, weights=sw)
    t /= np.sqrt(np.average(t * t, weights=sw))
    psi = design.dense_active() * np.sqrt(sw)[:, None]
    lam = rng.uniform(0.1, 10.0, 120)
    mu, sig, logdet, V = woodbury_posterior(psi, np.sqrt(sw) * t, 30.0, lam)
    mu0, Sigma0, logdet0 = posterior(psi.T @ psi, 30.0, lam, design.rmatvec(sw * t))
    np.testing.assert_allclose(mu, mu0, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sig, np.diag(Sigma0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(logdet, logdet0, rtol=1e-10)
    np.testing.assert_allclose(np.diag(1.0 / lam) - V.T @ V, Sigma0, rtol=1e-7, atol=1e-12)
    settings = _path_settings(solver="exact", lambda_1=1e-6, lambda_2=1e-6)
    ends = []
    for woodbury in (True, False):
        d = design.copy_active()
        state = PathState(np.zeros((120, 1)), np.ones((120, 1)), beta=1.0)
        with pytest.MonkeyPatch.context() as mp:
            if not woodbury:
                _gram_steps_only(mp)
            run_path(d, state, Gaussian(t, sw, settings), settings)
        ends.append((d.active, state.lam[:, 0], state.coef[:, 0], state.beta, state.n_iter))
    np.testing.assert_array_equal(ends[0][0], ends[1][0])
    np.testing.assert_allclose(ends[0][1], ends[1][1], rtol=1e-6)
    np.testing.assert_allclose(ends[0][2], ends[1][2], rtol=1e-6, atol=1e-10)
    assert ends[0][3] == pytest.approx(ends[1][3], rel=1e-6)
    assert ends[0][4] == ends[1][4]


def _gram_steps_only(monkeypatch):
    """Switch the Woodbury steps off: every exact step through the m-by-m Gram matrix."""
    from sparsekit.sbl._regression_solver import Gaussian

    monkeypatch.setattr(Gaussian, "_woodbury_now", lambda self, design: False)


@pytest.mark.parametrize("sparse", [False, True])
def test_exact_solver_on_wide_data_never_forms_a_wide_gram(monkeypatch, sparse):
    """solver="exact" with more features than samples takes its steps in the n-by-n Woodbury
    form (no m-by-m Gram matrix while more than n features are active: the fit at n = 100,
    M = 4,000 took 8.1 s with them and 0.13 s without) and ends where the Gram steps end."""
    X, y, Xt, _yt, _ = _wide_problem(60, 400, 4, seed=2, noise=0.1, n_test=20)
    if sparse:
        X = sp.csr_matrix(np.where(np.abs(X) > 0.5, X, 0.0))
    sizes = []
    gram = DesignMatrix.gram

    def recording_gram(self, b):
        sizes.append(self.n_active)
        return gram(self, b)

    monkeypatch.setattr(DesignMatrix, "gram", recording_gram)
    woodbury = DQNSBLRegressor(solver="exact").fit(X, y)
    assert sizes and max(sizes) <= 60
    _gram_steps_only(monkeypatch)
    sizes.clear()
    ref = DQNSBLRegressor(solver="exact").fit(X, y)
    assert max(sizes) == 400  # the reference did form the wide Gram matrix
    assert woodbury.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(woodbury.coef_ != 0, ref.coef_ != 0)
    np.testing.assert_allclose(woodbury.coef_, ref.coef_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(woodbury.alpha_, ref.alpha_, rtol=1e-7)
    for a, b in zip(woodbury.predict(Xt, return_std=True), ref.predict(Xt, return_std=True)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def test_return_std_with_more_bases_than_samples(monkeypatch):
    """A fit that stops with more active features than samples keeps no m-by-m covariance; its
    predictive standard deviation comes from the Woodbury factor and equals the full
    covariance's (not the diagonal's)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 80))
    y = X[:, :3] @ [1.0, 2.0, -1.0] + 0.5 * rng.normal(size=30)
    Xt = rng.normal(size=(7, 80))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=2 does not converge
        wide = DQNSBLRegressor(solver="exact", max_iter=2).fit(X, y)
        assert np.count_nonzero(wide.coef_) > 30
        assert wide._sigma_full is None
        _gram_steps_only(monkeypatch)
        ref = DQNSBLRegressor(solver="exact", max_iter=2).fit(X, y)
    assert ref._sigma_full is not None
    mean, std = wide.predict(Xt, return_std=True)
    mean0, std0 = ref.predict(Xt, return_std=True)
    np.testing.assert_allclose(mean, mean0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std, std0, rtol=1e-9)
    np.testing.assert_allclose(wide.sigma_, ref.sigma_, rtol=1e-9, atol=1e-15)
