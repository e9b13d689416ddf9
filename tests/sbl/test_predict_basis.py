"""Prediction from the relevance vectors only (issue 9, part 4): kernel models evaluate the
kernel between the new samples and the m relevance vectors, never all n training samples."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.datasets import make_classification, make_regression
from sklearn.metrics.pairwise import rbf_kernel

from sparsekit import DQNSBLClassifier, DQNSBLRegressor
from sparsekit.sbl import _features

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _spy_kernel(monkeypatch):
    shapes = []
    original = _features.compute_kernel

    def spy(est, X, Y, gamma_):
        K = original(est, X, Y, gamma_)
        shapes.append(K.shape)
        return K

    monkeypatch.setattr(_features, "compute_kernel", spy)
    return shapes


@pytest.mark.parametrize("method", ["predict", "decision_function", "predict_proba"])
def test_classifier_prediction_kernel_has_one_column_per_relevance_vector(monkeypatch, method):
    X, y = make_classification(n_samples=300, n_features=6, random_state=0)
    clf = DQNSBLClassifier(gamma=0.2).fit(X, y)
    m = clf.relevance_.shape[0]
    assert 0 < m < 100 and clf.relevance_vectors_.shape == (m, 6)
    shapes = _spy_kernel(monkeypatch)
    Xt = X[:37] + 0.1
    out = getattr(clf, method)(Xt)
    assert shapes == [(37, m)]
    # and it is the kernel to the relevance vectors: the same scores from the dual coefficients
    if method == "predict_proba":
        assert out.shape == (37, 2)
    K = rbf_kernel(Xt, X[clf.relevance_], gamma=0.2)
    f = K @ clf.dual_coef_[0] + clf.intercept_[0]
    if method == "decision_function":
        assert np.all(np.sign(out) == np.sign(f))  # moderation shrinks, never flips


def test_regressor_prediction_kernel_has_one_column_per_relevance_vector(monkeypatch):
    X, y = make_regression(n_samples=250, n_features=4, noise=5.0, random_state=0)
    reg = DQNSBLRegressor(kernel="rbf", gamma=0.1).fit(X, y)
    m = reg.relevance_.shape[0]
    assert 0 < m < 250
    shapes = _spy_kernel(monkeypatch)
    mean, _std = reg.predict(X[:20], return_std=True)
    assert shapes == [(20, m)]
    K = rbf_kernel(X[:20], X[reg.relevance_], gamma=0.1)
    assert_allclose(mean, K @ reg.dual_coef_ + reg.intercept_, rtol=1e-8, atol=1e-8)
