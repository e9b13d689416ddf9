"""Property-based tests (hypothesis) of DQNSBLRegressor: random shapes, dtypes, sparsity, column
scales 1e-8..1e8, duplicate and constant columns, kernels and weights give no crash and finite
outputs. The budget is small by default; set SPARSEKIT_HYPOTHESIS_EXAMPLES for a longer run
(profile in tests/conftest.py)."""

import warnings

import numpy as np
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from sparsekit import DQNSBLRegressor


@st.composite
def regression_data(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(5, 60))
    d = draw(st.integers(1, 120))
    X = rng.normal(size=(n, d))
    X *= 10.0 ** rng.uniform(-8, 8, size=d)  # column scales 1e-8..1e8
    if d > 2 and draw(st.booleans()):
        X[:, 1] = X[:, 0]  # duplicate column
        X[:, 2] = 3.0  # constant column
    if draw(st.booleans()):
        X[rng.random(X.shape) < 0.7] = 0.0
    w = np.zeros(d)
    k = min(d, draw(st.integers(0, 5)))
    w[rng.choice(d, k, replace=False)] = rng.normal(size=k) / np.maximum(
        np.abs(X).max(0)[:k], 1e-300
    )
    y = X @ w + draw(st.sampled_from([0.0, 0.01, 1.0])) * rng.normal(size=n)
    sw = rng.choice([0.0, 0.5, 1.0, 3.0], size=n) if draw(st.booleans()) else None
    if sw is not None and sw.sum() == 0:
        sw[0] = 1.0
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    sparse = draw(st.booleans())
    return X.astype(dtype), y, sw, sparse


@given(
    data=regression_data(),
    params=st.sampled_from(
        [
            {},
            {"solver": "exact"},
            {"kernel": "rbf"},
            {"kernel": "laplacian", "gamma": 0.5},
            {"kernel": "poly", "degree": 2},
            {"update": "em", "exact_switch": 10},
        ]
    ),
)
def test_fit_predict_finite(data, params):
    X, y, sw, sparse = data
    if params.get("kernel") == "rbf" and X.dtype == np.float32:
        X = X.astype(np.float64)
    Xf = sp.csr_matrix(X) if sparse else X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = DQNSBLRegressor(max_iter=100, **params).fit(Xf, y, sample_weight=sw)
        mean, std = reg.predict(Xf, return_std=True)
    assert mean.shape == std.shape == (X.shape[0],)
    assert np.all(np.isfinite(mean))
    assert np.all(np.isfinite(std)) and np.all(std >= 0)
    assert np.all(np.isfinite(reg.intercept_))
    if params.get("kernel") is None:
        assert np.all(np.isfinite(reg.coef_))
