"""The classifier's numba kernels against the numpy references in ``naive_classifier.py``."""

import importlib.util
import pathlib

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sparsekit.sbl._classifier_kernels import (
    cholesky_inverse,
    cholesky_lower_inplace,
    cholesky_solve,
    laplace_newton_bernoulli,
)

_spec = importlib.util.spec_from_file_location(
    "naive_classifier", pathlib.Path(__file__).with_name("naive_classifier.py")
)
naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive)


def _spd(m, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m + 3, m))
    return A.T @ A + 0.1 * np.eye(m)


@pytest.mark.parametrize("m", [1, 2, 7, 30])
def test_cholesky_solve_inverse_match_numpy(m):
    H = _spd(m, m)
    L = H.copy()
    assert cholesky_lower_inplace(L)
    assert_allclose(L, naive.cholesky_lower(H), rtol=1e-10, atol=1e-12)
    b = np.arange(1.0, m + 1)
    assert_allclose(
        cholesky_solve(L, b), naive.cholesky_solve(naive.cholesky_lower(H), b), rtol=1e-9
    )
    assert_allclose(
        cholesky_inverse(L), naive.cholesky_inverse(naive.cholesky_lower(H)), rtol=1e-8, atol=1e-12
    )


def test_cholesky_rejects_indefinite():
    H = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert not cholesky_lower_inplace(H.copy())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("separable", [False, True])
def test_laplace_newton_matches_reference(seed, separable):
    """Mode, loss, covariance and log-determinant equal a plain numpy Newton run to convergence."""
    rng = np.random.default_rng(seed)
    n, m = 60, 6
    Phi = np.ascontiguousarray(np.column_stack([np.ones(n), rng.normal(size=(n, m - 1))]))
    if separable:
        t = (Phi[:, 1] > 0).astype(float)
    else:
        t = (rng.random(n) < 1 / (1 + np.exp(-Phi[:, 1] + 0.5 * Phi[:, 2]))).astype(float)
    sw = rng.uniform(0.5, 2.0, size=n)
    lam = rng.uniform(0.1, 3.0, size=m)
    w0 = np.zeros(m)
    w, loss, S, logdet, status = laplace_newton_bernoulli(
        Phi, t, sw, w0, lam, 50, 1e-10, 1e-12, 1e-4
    )
    assert status == 0
    w_ref, loss_ref, S_ref, logdet_ref = naive.laplace_newton_bernoulli(Phi, t, sw, w0, lam)
    assert_allclose(w, w_ref, rtol=1e-7, atol=1e-9)
    assert_allclose(loss, loss_ref, rtol=1e-9)
    assert_allclose(S, S_ref, rtol=1e-6, atol=1e-10)
    assert_allclose(logdet, logdet_ref, rtol=1e-9)
    assert np.all(w0 == 0)  # the starting point is not modified
