"""Options that must change what the SBL estimators compute.

Each test here fails when its option is silently ignored (wired to the default or dropped):
``warm_start``, ``gamma=None`` (the kernel's own default), ``diag_update`` and ``update``. They
test public behaviour only, so they hold for any solver that honours the options.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification, make_moons, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics.pairwise import PAIRWISE_KERNEL_FUNCTIONS

from sparsekit import DQNSBLClassifier, DQNSBLRegressor


def _quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(n_samples=80, n_features=30, n_informative=5, noise=5.0, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(n_samples=120, noise=0.25, random_state=1)
    return X, y


# ---------------------------------------------------------------------------------- warm start


@pytest.mark.parametrize("solver", ["dqn", "exact"])
def test_regressor_warm_start_continues_from_the_previous_fit(regression, solver):
    """Two warm-started fits of 2 iterations each continue one path: the second fit differs
    from the first (and from a cold 2-iteration fit, which equals the first), and a warm refit
    after convergence needs fewer iterations than the cold fit did."""
    X, y = regression
    warm = _quiet_fit(DQNSBLRegressor(solver=solver, warm_start=True, max_iter=2), X, y)
    first = warm.coef_.copy()
    cold = _quiet_fit(DQNSBLRegressor(solver=solver, max_iter=2), X, y)
    assert_allclose(cold.coef_, first)  # the first warm fit starts cold
    _quiet_fit(warm, X, y)
    assert not np.allclose(warm.coef_, first, rtol=1e-6, atol=0)

    full = DQNSBLRegressor(solver=solver, warm_start=True).fit(X, y)
    n_cold = full.n_iter_
    full.fit(X, y)
    assert full.n_iter_ < n_cold


@pytest.mark.parametrize("kernel", [None, "rbf"])
def test_classifier_warm_start_continues_from_the_previous_fit(moons, kernel):
    X, y = moons
    kw = {"kernel": kernel, "gamma": 2.0, "max_iter": 2, "warm_start": True}
    warm = _quiet_fit(DQNSBLClassifier(**kw), X, y)
    first = warm.decision_function(X)
    cold = _quiet_fit(DQNSBLClassifier(**{**kw, "warm_start": False}), X, y)
    assert_allclose(cold.decision_function(X), first)
    _quiet_fit(warm, X, y)
    assert not np.allclose(warm.decision_function(X), first, rtol=1e-6, atol=0)

    if kernel is None:  # converges quickly; the rbf problem runs to max_iter
        full = DQNSBLClassifier(kernel=kernel, warm_start=True).fit(X, y)
        n_cold = full.n_iter_
        full.fit(X, y)
        assert full.n_iter_ < n_cold


def test_without_warm_start_a_refit_starts_afresh(moons):
    X, y = moons
    est = _quiet_fit(DQNSBLClassifier(gamma=2.0, max_iter=2), X, y)
    first = est.decision_function(X)
    _quiet_fit(est, X, y)
    assert_array_equal(est.decision_function(X), first)


# ---------------------------------------------------------------------------------- gamma=None


def _kernel_default_cases():
    """Named kernels whose gamma is a parameter, with sklearn's default (None -> 1/n_features)."""
    return [
        k for k in ("rbf", "laplacian", "sigmoid", "polynomial") if k in PAIRWISE_KERNEL_FUNCTIONS
    ]


@pytest.mark.parametrize("kernel", _kernel_default_cases())
def test_gamma_none_is_the_kernels_own_default(kernel):
    """``gamma=None`` means what the kernel function does without gamma: 1 / n_features for
    these kernels. The fitted model equals the one with that value passed explicitly, and
    differs from another value."""
    rng = np.random.default_rng(31)
    X = rng.uniform(0, 1, size=(40, 4))
    y = X.sum(1) + 0.05 * rng.normal(size=40)
    kw = {"kernel": kernel, "coef0": 1.0, "degree": 2}
    none = _quiet_fit(DQNSBLRegressor(gamma=None, **kw), X, y)
    explicit = _quiet_fit(DQNSBLRegressor(gamma=1.0 / X.shape[1], **kw), X, y)
    other = _quiet_fit(DQNSBLRegressor(gamma=5.0, **kw), X, y)
    assert_allclose(none.predict(X), explicit.predict(X), rtol=1e-10, atol=1e-10)
    assert not np.allclose(none.predict(X), other.predict(X))


def test_gamma_none_classifier(moons):
    X, y = moons
    none = DQNSBLClassifier(gamma=None).fit(X, y)
    explicit = DQNSBLClassifier(gamma=1.0 / X.shape[1]).fit(X, y)
    assert_allclose(none.decision_function(X), explicit.decision_function(X), rtol=1e-10)


# ------------------------------------------------------------------- diag_update and update


@pytest.fixture(scope="module")
def linear_problem():
    X, y = make_classification(
        n_samples=150, n_features=20, n_informative=4, random_state=3, flip_y=0.05
    )
    return X, y


@pytest.mark.parametrize("other", ["psb", "exact"])
def test_classifier_diag_update_changes_the_dqn_path(linear_problem, other):
    """The diagonal curvature approximations take different quasi-Newton steps, so a few
    iterations of the pure "dqn" phase end in different states."""
    X, y = linear_problem
    kw = {"kernel": None, "exact_switch": 0, "max_iter": 3, "inner_max_iter": 3}
    base = _quiet_fit(DQNSBLClassifier(diag_update="dbfgs", **kw), X, y)
    alt = _quiet_fit(DQNSBLClassifier(diag_update=other, **kw), X, y)
    assert not np.allclose(alt.decision_function(X), base.decision_function(X), rtol=1e-8, atol=0)


@pytest.mark.parametrize("solver", ["dqn", "exact"])
def test_classifier_update_rule_changes_the_path(linear_problem, solver):
    """MacKay's and the EM re-estimate share their fixed points but not their iterates: after a
    few iterations the precisions differ, and EM (the slower rule) needs more iterations."""
    X, y = linear_problem
    kw = {"kernel": None, "solver": solver, "exact_switch": 0, "max_iter": 3}
    mackay = _quiet_fit(DQNSBLClassifier(update="mackay", **kw), X, y)
    em = _quiet_fit(DQNSBLClassifier(update="em", **kw), X, y)
    assert not np.allclose(em.lambda_, mackay.lambda_, rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["dqn", "exact"])
def test_regressor_update_rule_changes_the_path(regression, solver):
    X, y = regression
    mackay = _quiet_fit(DQNSBLRegressor(update="mackay", solver=solver, max_iter=3), X, y)
    em = _quiet_fit(DQNSBLRegressor(update="em", solver=solver, max_iter=3), X, y)
    assert not np.allclose(em.lambda_, mackay.lambda_, rtol=1e-6, atol=0)


def test_classifier_em_needs_more_iterations_than_mackay(linear_problem):
    X, y = linear_problem
    mackay = DQNSBLClassifier(kernel=None, solver="exact", update="mackay").fit(X, y)
    em = _quiet_fit(DQNSBLClassifier(kernel=None, solver="exact", update="em"), X, y)
    assert em.n_iter_ > mackay.n_iter_


def _named_kernels():
    return sorted(k for k in PAIRWISE_KERNEL_FUNCTIONS if k not in ("precomputed",))


@pytest.mark.parametrize("kernel", _named_kernels())
def test_named_kernel_with_defaults_equals_its_precomputed_gram_matrix(kernel):
    """Every named kernel with ``gamma=None`` (and the other parameters at values the kernel
    function takes as its defaults) gives the model fitted on the Gram matrix that
    ``sklearn.metrics.pairwise_kernels`` computes with the kernel's own defaults."""
    from sklearn.metrics.pairwise import pairwise_kernels

    rng = np.random.default_rng(32)
    X = rng.uniform(0.1, 1, size=(40, 3))  # positive: the chi2 kernels need it
    Xte = rng.uniform(0.1, 1, size=(7, 3))
    y = X.sum(1) + 0.05 * rng.normal(size=40)
    defaults = {"degree": 3, "coef0": 1}  # sklearn's polynomial/sigmoid defaults
    named = _quiet_fit(DQNSBLRegressor(kernel=kernel, gamma=None, **defaults), X, y)
    K = pairwise_kernels(X, metric=kernel)
    pre = _quiet_fit(DQNSBLRegressor(kernel="precomputed"), K, y)
    assert_allclose(
        named.predict(Xte), pre.predict(pairwise_kernels(Xte, X, metric=kernel)), rtol=1e-8
    )
