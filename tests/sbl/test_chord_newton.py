"""The exact phase's chord steps (issue 9): each Newton solve of the BLAS path starts from the
previous solve's data Gram matrix, restricted to the bases still in the model and extended by the
bases added since; the fit is the plain Newton fit."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.datasets import make_classification

from sparsekit import DQNSBLClassifier
from sparsekit.sbl import _classifier_kernels as CK
from sparsekit.sbl import _classifier_solver as CS


def test_chord_matrix_restricts_and_extends_the_previous_gram():
    rng = np.random.default_rng(0)
    Phi_all = rng.normal(size=(200, 9))
    b = rng.uniform(0.05, 0.25, 200)
    gram = (Phi_all * b[:, None]).T @ Phi_all
    prev_ids = np.array([-1, 3, 5, 8, 11, 20, 21, 30, 40])
    ids = np.array([-1, 5, 7, 11, 21, 25, 40])  # 3, 8, 20, 30 deleted; 7 and 25 added
    cols = {i: c for i, c in zip(prev_ids.tolist(), Phi_all.T)}
    cols[7], cols[25] = rng.normal(size=200), rng.normal(size=200)
    Phi = np.column_stack([cols[i] for i in ids.tolist()])
    got = CS._chord_matrix((prev_ids, gram, b), ids, Phi)
    assert_allclose(got, (Phi * b[:, None]).T @ Phi, rtol=1e-12, atol=1e-12)
    kept = np.array([-1, 5, 21])
    sub = CS._chord_matrix((prev_ids, gram, b), kept, Phi_all[:, [0, 2, 6]])
    assert_allclose(sub, gram[np.ix_([0, 2, 6], [0, 2, 6])])
    assert CS._chord_matrix(None, ids, Phi) is None
    assert CS._chord_matrix((prev_ids, gram, b), np.array([2, 4]), Phi[:, :2]) is None


@pytest.mark.parametrize("basis", ["full", "subset"])
def test_fit_with_chord_steps_is_the_newton_fit(monkeypatch, basis):
    """The BLAS Newton path forced on a small problem: the same relevance vectors, iterations and
    coefficients with the chord steps as without them; and the chord matrices were used."""
    X, y = make_classification(n_samples=400, n_features=6, random_state=1)
    monkeypatch.setattr(CK, "BLAS_MIN_WORK", 0)
    monkeypatch.setattr(CK, "CHORD_MIN_WORK", 0)
    used = []
    blas = CK.laplace_newton_bernoulli_blas

    def spy(*args):
        used.append(len(args) == 10 and args[9] is not None)
        return blas(*args)

    monkeypatch.setattr(CK, "laplace_newton_bernoulli_blas", spy)
    est = dict(gamma=0.2, kernel_basis=basis)
    chord = DQNSBLClassifier(**est).fit(X, y)
    assert sum(used) > 0.5 * len(used)
    monkeypatch.setattr(CK, "CHORD_MAX_ITER", 0)
    plain = DQNSBLClassifier(**est).fit(X, y)
    # the modes agree to the Newton tolerance, so a stop test on the edge may fire an iteration
    # apart (the subset path: 309 against 310)
    assert abs(chord.n_iter_ - plain.n_iter_) <= 0.01 * plain.n_iter_
    assert_allclose(chord.relevance_vectors_, plain.relevance_vectors_)
    assert_allclose(chord.scores_[-1], plain.scores_[-1], rtol=1e-6)
    assert_allclose(chord.dual_coef_, plain.dual_coef_, rtol=1e-5, atol=1e-8)
