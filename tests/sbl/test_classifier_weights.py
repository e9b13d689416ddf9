"""Sample weights with a kernel basis: k copies of a sample equal a weight of k."""

import numpy as np

from sparsekit import DQNSBLClassifier


def test_repeats_equal_weights_kernel_classifier():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 2))
    y = (X[:, 0] + 0.3 * rng.normal(size=20) > 0).astype(int)
    reps = np.arange(20) % 4 + 1
    a = DQNSBLClassifier().fit(np.repeat(X, reps, 0), np.repeat(y, reps))
    b = DQNSBLClassifier().fit(X, y, sample_weight=reps.astype(float))
    np.testing.assert_allclose(a.relevance_vectors_, b.relevance_vectors_)
    Xte = rng.normal(size=(25, 2))
    np.testing.assert_allclose(a.predict_proba(Xte), b.predict_proba(Xte), rtol=1e-6, atol=1e-8)
