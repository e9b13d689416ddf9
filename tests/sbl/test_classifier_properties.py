"""Property-based tests (hypothesis) of DQNSBLClassifier: random shapes, dtypes, sparsity, column
scales 1e-8..1e8, duplicate and constant columns, kernels, weights and 2-6 imbalanced classes give
no crash, valid probabilities and predictions in ``classes_``. The budget is small by default; set
SPARSEKIT_HYPOTHESIS_EXAMPLES for a longer run (profile in tests/conftest.py)."""

import warnings

import numpy as np
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from sparsekit import DQNSBLClassifier


@st.composite
def classification_data(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_classes = draw(st.integers(2, 6))
    n = draw(st.integers(4 * n_classes, 80))
    d = draw(st.integers(1, 40))
    # Imbalanced classes: every class present, proportions from a skewed Dirichlet.
    p = rng.dirichlet(np.full(n_classes, 0.5))
    y = np.concatenate([np.arange(n_classes), rng.choice(n_classes, n - n_classes, p=p)])
    centres = rng.normal(size=(n_classes, d)) * 2.0
    X = centres[y] + rng.normal(size=(n, d))
    X *= 10.0 ** rng.uniform(-8, 8, size=d)
    if d > 2 and draw(st.booleans()):
        X[:, 1] = X[:, 0]
        X[:, 2] = -1.0
    if draw(st.booleans()):
        X[rng.random(X.shape) < 0.6] = 0.0
    sw = rng.choice([0.5, 1.0, 2.0], size=n) if draw(st.booleans()) else None
    labels = draw(st.sampled_from([None, "str"]))
    if labels == "str":
        y = np.array([f"c{v}" for v in y])
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return X.astype(dtype), y, sw, draw(st.booleans())


@given(
    data=classification_data(),
    params=st.sampled_from(
        [
            {},
            {"kernel": None},
            {"kernel": None, "multi_class": "multinomial"},
            {"kernel": None, "solver": "exact"},
            {"kernel": "laplacian", "gamma": 0.5},
        ]
    ),
)
def test_fit_predict_valid(data, params):
    X, y, sw, sparse = data
    Xf = sp.csr_matrix(X) if sparse else X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = DQNSBLClassifier(max_iter=60, **params).fit(Xf, y, sample_weight=sw)
        proba = clf.predict_proba(Xf)
        pred = clf.predict(Xf)
    assert proba.shape == (X.shape[0], clf.classes_.shape[0])
    assert np.all(np.isfinite(proba)) and np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.isin(pred, clf.classes_))
