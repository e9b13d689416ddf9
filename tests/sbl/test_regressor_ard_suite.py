"""The ARD cases of scikit-learn's ``linear_model/tests/test_bayes.py``, run against
``DQNSBLRegressor(solver="exact")`` (rewritten here, not copied), plus the small defects those
cases exposed: constant targets, noiseless data, extreme units and ``n_jobs=0``."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import ARDRegression
from sklearn.utils._param_validation import InvalidParameterError

from sparsekit import DQNSBLClassifier, DQNSBLRegressor

SEEDS = [0, 1, 42]


def _exact(**kw):
    return DQNSBLRegressor(solver="exact", **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_constant_target_is_predicted(seed):
    rng = np.random.RandomState(seed)
    X = rng.random_sample((4, 5))
    c = rng.rand()
    np.testing.assert_allclose(_exact().fit(X, np.full(4, c)).predict(X), c, rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("solver", ["exact", "dqn"])
def test_constant_target_std_is_on_the_scale_of_y(seed, solver):
    rng = np.random.RandomState(seed)
    X = rng.random_sample((10, 5))
    c = rng.rand()
    _, std = DQNSBLRegressor(solver=solver).fit(X, np.full(10, c)).predict(X, return_std=True)
    assert np.all(std < 0.01)
    # y = 1e-3 used to give a std of 1.0; it must shrink with y.
    _, std_small = (
        DQNSBLRegressor(solver=solver).fit(X, np.full(10, 1e-3 * c)).predict(X, return_std=True)
    )
    np.testing.assert_allclose(std_small, 1e-3 * std, rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_std_smallest_at_the_centre_of_the_data(seed):
    rng = np.random.RandomState(seed)
    X = np.linspace(80, 100, 4).reshape(-1, 1)
    y = X.ravel() + 10 * rng.standard_normal(4)
    _, std = _exact().fit(X, y).predict(np.array([[0.0], [90.0]]), return_std=True)
    assert std[1] < std[0]


def test_everything_pruned_after_one_iteration():
    X = np.array([[1.0, 0.0], [0.0, 0.0]])
    reg = _exact(max_iter=1).fit(X, np.array([0.0, 0.0]))
    assert reg.sigma_.shape == (0,)
    _, std = reg.predict(X, return_std=True)
    assert np.all(np.isfinite(std))


def test_learns_the_identity_on_three_points():
    X = np.array([[1.0], [2.0], [3.0]])
    reg = _exact(compute_score=True).fit(X, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(reg.predict([[1.0], [3.0], [4.0]]), [1, 3, 4], atol=1e-2)


@pytest.mark.parametrize("seed", SEEDS)
def test_noiseless_easy_problem(seed):
    X = np.random.RandomState(seed).normal(size=(250, 3))
    reg = _exact().fit(X, X[:, 1])
    assert abs(1 - reg.coef_[1]) < 1e-10


@pytest.mark.parametrize("seed", SEEDS)
def test_noiseless_data_matches_ard_to_1e_10(seed):
    """No cap on the noise precision or on sum(gamma) in solver="exact": on standardised,
    noiseless data the coefficients are ARDRegression's to 1e-10 (they differed by ~4e-9)."""
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(80, 6))
    X = (X - X.mean(0)) / X.std(0)
    y = X @ np.array([1.0, 0.0, -2.0, 0.0, 0.5, 0.0])
    y = (y - y.mean()) / y.std()
    ard = ARDRegression().fit(X, y)
    ours = _exact().fit(X, y)
    np.testing.assert_allclose(ours.coef_, ard.coef_, rtol=0, atol=1e-10)
    assert ours.alpha_ == pytest.approx(ard.alpha_, rel=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
def test_return_std_estimates_the_noise(seed):
    rng = np.random.RandomState(seed)
    w = np.array([1.0, 0.0, 1.0, -1.0, 0.0])
    X = rng.random_sample((50, 5))
    Xte = rng.random_sample((10, 5))
    for decimal, noise in enumerate([1, 0.1, 0.01]):
        y = X @ w + 1.0 + noise * rng.randn(50)
        _, std = _exact().fit(X, y).predict(Xte, return_std=True)
        np.testing.assert_array_almost_equal(std, noise, decimal=decimal)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    X = np.array([[1, 1], [3, 4], [5, 7], [4, 1], [2, 6], [3, 10], [3, 2]], dtype=dtype)
    y = np.array([1, 2, 3, 2, 0, 4, 5])
    reg = _exact().fit(X, y)
    assert reg.coef_.dtype == dtype and reg.sigma_.dtype == dtype
    mean, std = reg.predict(X, return_std=True)
    assert mean.dtype == dtype and std.dtype == dtype
    coef64 = _exact().fit(X.astype(np.float64), y).coef_
    np.testing.assert_allclose(reg.coef_, coef64, rtol=1e-4)


# ----------------------------------------------------------------------- extreme units, n_jobs
@pytest.mark.parametrize("solver", ["dqn", "exact"])
@pytest.mark.parametrize(
    ("sx", "sy"), [(1e300, 1.0), (1.0, 1e300), (1e-300, 1.0), (1e150, 1e-150), (1e-150, 1e150)]
)
@pytest.mark.parametrize("sparse", [False, True])
def test_extreme_units_give_the_same_fit(solver, sx, sy, sparse):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 5))
    y = 2 * X[:, 0] + X[:, 1] + 0.1 * rng.normal(size=100)
    ref = DQNSBLRegressor(solver=solver).fit(X, y)
    Xs = sp.csr_matrix(X * sx) if sparse else X * sx
    with np.errstate(over="raise", invalid="raise"):  # no overflow anywhere on the way
        reg = DQNSBLRegressor(solver=solver).fit(Xs, y * sy)
    np.testing.assert_array_equal(reg.relevance_, ref.relevance_)
    np.testing.assert_allclose(reg.coef_ * (sx / sy), ref.coef_, rtol=1e-6)
    np.testing.assert_allclose(reg.predict(Xs[:4]) / sy, ref.predict(X[:4]), rtol=1e-6)
    _, std = reg.predict(Xs[:4], return_std=True)
    _, std_ref = ref.predict(X[:4], return_std=True)
    np.testing.assert_allclose(std / sy, std_ref, rtol=1e-6)


@pytest.mark.parametrize("est", [DQNSBLRegressor(), DQNSBLClassifier()])
def test_n_jobs_zero_is_rejected(est):
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(InvalidParameterError, match="'n_jobs' parameter .* Got 0 instead"):
        est.set_params(n_jobs=0).fit(X, y)
