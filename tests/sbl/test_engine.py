"""The shared SBL engine (issue 8, item 2): one frozen settings object, one jitter policy for
Cholesky, likelihood objects whose curvature diagonals and evidence terms match dense numpy
references, and one outer loop that both estimators run."""

import dataclasses

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.linalg import LinAlgError, cho_factor
from sklearn.datasets import make_classification, make_regression

from sparsekit import DQNSBLClassifier, DQNSBLRegressor
from sparsekit.sbl import _classifier_kernels as CK
from sparsekit.sbl import _engine
from sparsekit.sbl._classifier_solver import FREE_LAMBDA, Bernoulli, Softmax, exact_step
from sparsekit.sbl._design import DesignMatrix
from sparsekit.sbl._engine import PathSettings, PathState
from sparsekit.sbl._linalg import JITTER_GROWTH, JITTER_REL, JITTER_STEPS, cholesky_jittered
from sparsekit.sbl._regression_solver import Gaussian, log_evidence, posterior

from . import naive_engine as naive

SETTINGS = dict(max_iter=10, tol=1e-3, n_iter_no_change=3, threshold_lambda=1e9)


# ---------------------------------------------------------------------------------- settings
def test_settings_are_frozen_and_reject_unknown_fields():
    s = PathSettings(**SETTINGS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tol = 1.0
    with pytest.raises(TypeError, match="var_t"):
        PathSettings(**SETTINGS, var_t=1.0)
    with pytest.raises(TypeError):
        PathSettings(1000, 1e-3, 5, 1e9)  # keyword-only: no positional mix-ups


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("solver", "cholesky"),
        ("update", "mackey"),
        ("diag_update", "bfgs"),
        ("max_iter", 0),
        ("n_iter_no_change", 0),
        ("exact_switch", -1),
        ("tol", -1e-3),
        ("flat_tol", -1e-6),
        ("lambda_2", float("nan")),
        ("threshold_lambda", 0.0),
    ],
)
def test_settings_validate_their_values(field, value):
    with pytest.raises(ValueError, match=f"PathSettings.{field} must be"):
        PathSettings(**{**SETTINGS, field: value})


def test_estimators_build_their_settings_from_their_parameters(monkeypatch):
    seen = []
    original = _engine.run_path

    def spy(design, state, lik, settings, **kwargs):
        seen.append((type(lik).__name__, settings))
        return original(design, state, lik, settings, **kwargs)

    monkeypatch.setattr("sparsekit.sbl._regressor.run_path", spy)
    monkeypatch.setattr("sparsekit.sbl._classifier.run_path", spy)
    X, y = make_regression(n_samples=80, n_features=6, random_state=0)
    DQNSBLRegressor(tol=2e-3, alpha_1=1e-4, update="em", exact_switch=3).fit(X, y)
    Xc, yc = make_classification(n_samples=80, n_features=5, n_classes=3, n_informative=3)
    DQNSBLClassifier(kernel=None, multi_class="multinomial", dqn_tol=0.2, max_iter=4).fit(Xc, yc)
    (name_r, s_r), (name_c, s_c) = seen
    assert name_r == "Gaussian" and (s_r.tol, s_r.alpha_1, s_r.update) == (2e-3, 1e-4, "em")
    assert s_r.exact_switch == 3 and s_r.max_iter == 300  # max_iter=None resolved
    assert name_c == "Softmax" and (s_c.dqn_tol, s_c.max_iter) == (0.2, 4)


# ---------------------------------------------------------------------------------- jitter
def test_jitter_is_zero_for_a_positive_definite_matrix():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    H = A @ A.T + np.eye(6)
    (c, lower), jitter = cholesky_jittered(H)
    assert jitter == 0.0 and lower
    assert_allclose(np.tril(c), np.tril(cho_factor(H, lower=True)[0]))


@pytest.mark.parametrize("shift", [-2e-11, -1e-6])
def test_jitter_is_the_first_rung_of_the_ladder_that_works(shift):
    """Two equal columns and a negative precision: H is indefinite by about ``shift / 2`` along
    one direction, so the jitter is the first rung of the ladder above that (the very first rung
    for the tiny shift)."""
    rng = np.random.default_rng(1)
    Phi = rng.normal(size=(20, 3))
    Phi[:, 2] = Phi[:, 1]
    H = Phi.T @ Phi + np.diag([1.0, 0.0, shift])
    (c, _), jitter = cholesky_jittered(H)
    scale = max(1.0, np.max(np.abs(np.diag(H))))
    ladder = JITTER_REL * scale * JITTER_GROWTH ** np.arange(JITTER_STEPS)
    k = int(np.flatnonzero(np.isclose(ladder, jitter, rtol=1e-12))[0])
    assert k == 0 or ladder[k - 1] < -shift / 2 <= ladder[k]
    if shift > -1e-10:
        assert k == 0
    L = np.tril(c)
    assert_allclose(L @ L.T, H + jitter * np.eye(3), rtol=1e-10, atol=1e-10 * scale)


def test_numba_laplace_kernel_uses_the_same_ladder():
    rng = np.random.default_rng(2)
    Phi = rng.normal(size=(25, 4))
    Phi[:, 3] = Phi[:, 2]
    b = np.ones(25)
    for shift in (-2e-11, -1e-6):
        lam = np.array([0.5, 0.5, 0.0, shift])
        H = np.empty((4, 4))
        jitter_numba = CK._laplace_precision(Phi, b, lam, H)
        _, jitter = cholesky_jittered(Phi.T @ (Phi * b[:, None]) + np.diag(lam))
        assert jitter > 0.0
        assert jitter_numba == pytest.approx(jitter, rel=1e-12)


def test_a_matrix_no_jitter_can_fix_raises_a_clear_error():
    H = np.eye(3)
    H[1, 1] = np.nan
    with pytest.raises(LinAlgError, match="non-finite entries"):
        cholesky_jittered(H)
    H = np.array([[1.0, 1e6], [1e6, 1.0]])  # eigenvalue -1e6, below the largest rung (1e2)
    with pytest.raises(LinAlgError, match="not positive definite even with a jitter"):
        cholesky_jittered(H)


# ---------------------------------------------------------------------------------- likelihoods
def _linear_design(n=50, p=6, seed=0, intercept=False, weights=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 10.0, size=p)
    sw = rng.uniform(0.3, 2.0, size=n) if weights else np.ones(n)
    design = DesignMatrix(X, sw, center=not intercept, intercept_column=intercept)
    Phi = np.asarray(design.dense_active(), dtype=np.float64)
    if intercept:
        Phi = np.hstack([np.ones((n, 1)), Phi])
    return design, Phi, sw, rng


def test_gaussian_curvature_is_the_exact_diagonal():
    design, Phi, sw, _ = _linear_design()
    settings = PathSettings(**SETTINGS)
    state = PathState(np.zeros((6, 1)), np.ones((6, 1)), beta=3.7)
    lik = Gaussian(np.zeros(50), sw, settings)
    assert_allclose(
        lik.curvature(design, state) * np.ones(6),
        3.7 * naive.curvature_diagonal(Phi, sw),
        rtol=1e-12,
    )


@pytest.mark.parametrize("weights", [False, True])
def test_gaussian_evidence_is_the_log_marginal_likelihood(weights):
    """ARDRegression's objective at the Cholesky posterior is log N(t | 0, C) up to (n/2) log 2 pi,
    with C = beta^-1 I + Phi diag(lam)^-1 Phi' (no hyperpriors); a weight of k counts as k copies
    of the sample."""
    _, Phi, sw, rng = _linear_design(weights=False)
    if weights:
        sw = rng.integers(1, 4, size=50).astype(float)
    t = Phi @ rng.normal(size=6) + rng.normal(size=50)
    beta, lam = 2.3, rng.uniform(0.1, 5.0, size=6)
    mu, _, logdet_H = posterior(Phi.T @ (Phi * sw[:, None]), beta, lam, Phi.T @ (sw * t))
    e = t - Phi @ mu
    got = log_evidence(sw.sum(), beta, lam, mu, sw @ (e * e), -logdet_H, PathSettings(**SETTINGS))
    assert got == pytest.approx(naive.gaussian_log_marginal(Phi, t, sw, beta, lam), rel=1e-10)


def test_bernoulli_exact_step_evidence_and_curvature():
    """At the exact Laplace step: the evidence is the data log-likelihood plus the prior minus half
    the log-determinant of the dense Laplace precision; the covariance is its inverse; the exact
    curvature diagonal of the diagonal phase is diag(Phi' B Phi)."""
    design, Phi, sw, rng = _linear_design(intercept=True)
    t = (Phi @ rng.normal(size=7) + rng.normal(size=50) > 0).astype(float)
    lam = rng.uniform(0.5, 3.0, size=(7, 1))
    lam[0] = FREE_LAMBDA
    lik = Bernoulli(t[:, None], sw)
    state = PathState(np.zeros((7, 1)), lam.copy(), curvature=np.ones((7, 1)))
    settings = PathSettings(**SETTINGS)
    step = lik.exact_step(design, state, settings)
    w = state.coef[:, 0]
    want = naive.bernoulli_laplace_evidence(Phi, t, sw, w, lam[:, 0], free=1)
    assert lik.log_evidence(design, state, step, None, settings, True) == pytest.approx(
        want,
        rel=1e-6,  # Newton's stop (gradient 1e-8 per unit weight) leaves ~1e-8
    )
    p = 1.0 / (1.0 + np.exp(-(Phi @ w)))
    H = Phi.T @ (Phi * (sw * p * (1 - p))[:, None]) + np.diag(lam[:, 0])
    assert_allclose(state.sigma_diag[:, 0], np.diag(np.linalg.inv(H)), rtol=1e-6)
    # the diagonal phase's exact curvature update at the same point
    diag_settings = PathSettings(**SETTINGS, diag_update="exact", inner_max_iter=0)
    lik.inner_solve(design, state, diag_settings)
    assert_allclose(
        state.curvature[:, 0], naive.curvature_diagonal(Phi, sw * p * (1 - p)), rtol=1e-10
    )


def test_softmax_exact_step_precision_matches_the_dense_block_hessian():
    design, Phi, sw, rng = _linear_design(intercept=True, n=60)
    y = rng.integers(0, 3, size=60)
    T = np.eye(3)[y]
    # (a free intercept, precision 1e-8, would leave softmax's shift invariance nearly flat: a
    # condition number of 1e9 that rounding turns into 1e-8 relative noise in the determinant)
    lam = rng.uniform(0.5, 3.0, size=(7, 3))
    state = PathState(np.zeros((7, 3)), lam.copy(), curvature=np.ones((7, 3)))
    _, logdet = exact_step(design, state, T, sw, "softmax")
    H = naive.softmax_laplace_precision(Phi, T, sw, state.coef, lam)
    assert logdet == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-9)
    assert_allclose(state.sigma_diag.T.reshape(-1), np.diag(np.linalg.inv(H)), rtol=1e-6)
    lik = Softmax(T, sw)
    assert lik.initial_curvature(60.0, 3) == pytest.approx(60.0 * (1 / 3) * (2 / 3))


# ---------------------------------------------------------------------------------- one loop
def test_both_estimators_run_the_one_outer_loop(monkeypatch):
    """Re-estimate, prune and stop of the regressor's and the classifier's fits (both phases)
    go through the engine."""
    calls = []
    original = _engine._reestimate

    def counting(design, state, settings):
        calls.append(state.phase)
        return original(design, state, settings)

    monkeypatch.setattr(_engine, "_reestimate", counting)
    X, y = make_regression(n_samples=120, n_features=20, n_informative=4, noise=5.0, random_state=0)
    reg = DQNSBLRegressor(exact_switch=10).fit(X, y)
    assert len(calls) == reg.n_iter_ and set(calls) == {"dqn", "exact"}
    calls.clear()
    Xc, yc = make_classification(n_samples=120, n_features=6, random_state=0)
    clf = DQNSBLClassifier(kernel="rbf", exact_switch=10).fit(Xc, yc)
    assert len(calls) == clf.n_iter_ and set(calls) == {"dqn", "exact"}


def test_newton_statuses_of_the_exact_step_are_reported(monkeypatch, capsys):
    """The Laplace kernel's status (converged / at its iteration cap / jittered) is kept on the
    state and shown by the verbose progress line, not dropped."""
    import sparsekit.sbl._classifier_solver as cs

    Xc, yc = make_classification(n_samples=80, n_features=5, random_state=0)
    DQNSBLClassifier(kernel=None, solver="exact", max_iter=2, verbose=1).fit(Xc, yc)
    assert "iteration cap" not in capsys.readouterr().out
    monkeypatch.setattr(cs, "NEWTON_MAX_ITER", 1)
    DQNSBLClassifier(kernel=None, solver="exact", max_iter=2, verbose=1).fit(Xc, yc)
    assert "Newton: 1 at its iteration cap" in capsys.readouterr().out


def test_pruned_precisions_behave_as_a_dict():
    """``PrunedPrecisions`` is a ``(column, class) -> precision`` dict recorded in bulk: a later
    record of a key replaces the earlier one, ``pop`` removes a key (and a key recorded again
    after a pop counts), ``fill`` writes ``out[class, column]`` or ``out[column]``, and a copy is
    independent."""
    pruned, ref = _engine.PrunedPrecisions(), {}
    assert not pruned and pruned.to_dict() == {}
    rng = np.random.default_rng(3)
    for _ in range(6):
        js = rng.choice(40, 7, replace=False)
        ks = rng.integers(0, 3, 7)
        vals = rng.uniform(1e3, 1e6, 7)
        pruned.record(js, ks, vals)
        ref.update(zip(zip(js.tolist(), ks.tolist()), vals.tolist()))
        key = next(iter(ref))
        assert pruned.pop(key, None) == ref.pop(key)
    assert pruned.pop((99, 0), "none") == "none"
    pruned[5, 1] = 2.5
    ref[5, 1] = 2.5
    twin = pruned.copy()
    pruned.record([7], [2], [1e9])
    assert pruned.to_dict() == {**ref, (7, 2): 1e9}
    assert twin.to_dict() == ref and set(twin) == set(ref)
    out = np.full((3, 40), np.inf)
    twin.fill(out)
    expect = np.full((3, 40), np.inf)
    for (j, k), v in ref.items():
        expect[k, j] = v
    np.testing.assert_array_equal(out, expect)
    flat = _engine.PrunedPrecisions()
    flat.record([3, 8], 0, [1.0, 2.0])
    flat.record([8], 0, [4.0])
    vec = np.full(10, np.inf)
    flat.fill(vec)
    np.testing.assert_array_equal(vec[[3, 8]], [1.0, 4.0])
    assert np.isinf(np.delete(vec, [3, 8])).all()
