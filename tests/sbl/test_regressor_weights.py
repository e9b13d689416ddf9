"""Sample weights with kernel bases: k copies of a sample equal a weight of k, and a weight of
zero equals leaving the sample out (the basis is built from distinct positive-weight samples);
weights below 1 keep the noise precision positive."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_regression
from sklearn.metrics.pairwise import rbf_kernel

from sparsekit import DQNSBLRegressor


def _sinc(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 1))
    return X, np.sinc(X[:, 0]) + 0.05 * rng.normal(size=n)


@pytest.mark.parametrize("solver", ["dqn", "exact"])
def test_repeats_equal_weights_kernel_regressor(solver):
    X, y = _sinc(20, 0)
    reps = np.arange(20) % 3 + 1
    a = DQNSBLRegressor(kernel="rbf", solver=solver).fit(np.repeat(X, reps, 0), np.repeat(y, reps))
    b = DQNSBLRegressor(kernel="rbf", solver=solver).fit(X, y, sample_weight=reps.astype(float))
    # One basis function per distinct sample: relevance vectors are the same points.
    np.testing.assert_allclose(a.relevance_vectors_, b.relevance_vectors_)
    # Equal up to rounding (summation order differs; the "dqn" path's inexact conjugate-gradient
    # solves carry that through the iterations).
    np.testing.assert_allclose(a.dual_coef_, b.dual_coef_, rtol=1e-4, atol=1e-8)
    Xte = np.linspace(-3, 3, 30)[:, None]
    np.testing.assert_allclose(a.predict(Xte), b.predict(Xte), rtol=1e-5, atol=1e-8)


def test_zero_weight_sample_gets_no_basis_function():
    X, y = _sinc(30, 1)
    sw = np.ones(30)
    sw[:6] = 0.0
    for kernel in ("rbf", "precomputed"):
        Xa, Xb = (X, X[6:]) if kernel == "rbf" else (rbf_kernel(X, X), rbf_kernel(X[6:], X[6:]))
        a = DQNSBLRegressor(kernel=kernel, solver="exact").fit(Xa, y, sample_weight=sw)
        b = DQNSBLRegressor(kernel=kernel, solver="exact").fit(Xb, y[6:])
        assert np.all(a.relevance_ >= 6)
        np.testing.assert_array_equal(a.relevance_ - 6, b.relevance_)
        assert np.all(np.isinf(a.lambda_[:6]))
        # Finite, moderate weights (the zero-weight column used to be scaled by ~1e14).
        assert np.max(np.abs(a.dual_coef_)) < 1e3
        np.testing.assert_allclose(a.dual_coef_, b.dual_coef_, rtol=1e-6, atol=1e-9)


def test_distinct_rows_dense_and_sparse():
    import scipy.sparse as sp

    from sparsekit.sbl._features import distinct_rows

    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 4))
    X[5] = X[3]
    X[9] = X[3]
    X[7] = 0.0
    X[8] = -0.0  # equal to row 7
    sw = np.ones(12)
    sw[0] = 0.0
    expected = [1, 2, 3, 4, 6, 7, 10, 11]
    np.testing.assert_array_equal(distinct_rows(X, sw), expected)
    np.testing.assert_array_equal(distinct_rows(sp.csr_matrix(X), sw), expected)
    sw[3] = 0.0  # the first positive-weight copy represents the others
    np.testing.assert_array_equal(distinct_rows(X, sw), [1, 2, 4, 5, 6, 7, 10, 11])


@pytest.mark.parametrize("max_iter", [3, 300])
def test_exact_solver_with_fractional_weights_on_wide_data(max_iter):
    """Weights below 1 on more features than samples: ARDRegression's noise update
    (sum(w) - sum(gamma)) / sse went negative (sum(gamma) may exceed the weights' sum), and
    with it every return_std (NaN). The noise precision stays positive, the stds finite."""
    X, y = make_regression(30, 300, n_informative=5, noise=1.0, random_state=0)
    sw = np.random.default_rng(0).uniform(0.0, 0.5, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = DQNSBLRegressor(kernel=None, solver="exact", max_iter=max_iter)
        est.fit(X, y, sample_weight=sw)
    _, std = est.predict(X, return_std=True)
    assert est._beta_std > 0.0
    assert np.all(np.isfinite(std)) and np.all(std > 0.0)
