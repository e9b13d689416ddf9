"""Fewer outer iterations on wide linear problems (issue 9, part 3): the DQN phase's "settled"
stopping test and the inexact (forcing-term) inner solves of the linear basis."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_classification

from sparsekit import DQNSBLClassifier
from sparsekit.sbl import _classifier_solver as cs
from sparsekit.sbl import _engine as engine


def _settle(window=3):
    return engine._Settle(window)


def test_settle_fires_after_window_of_small_logit_changes():
    s = _settle(3)
    z = np.linspace(-3.0, 3.0, 50)
    assert not s.update(z, 100)  # no previous logits yet
    steps = [s.update(z * (1.0 + 1e-5 * k), 100) for k in range(1, 4)]
    assert steps == [False, False, True]


def test_settle_waits_while_logits_move():
    s = _settle(3)
    z = np.linspace(-3.0, 3.0, 50)
    s.update(z, 100)
    moves = [s.update(z * (1.0 + 0.01 * k), 100) for k in range(1, 8)]
    assert not any(moves)


def test_settle_waits_while_the_active_set_shrinks_in_earnest():
    s = _settle(3)
    z = np.linspace(-3.0, 3.0, 50)
    s.update(z, 1000)
    # logits still, but 10% of the bases pruned over the window: not settled
    out = [s.update(z * (1.0 + 1e-6 * k), 1000 - 35 * k) for k in range(1, 4)]
    assert not any(out)
    # one basis pruned over the window (0.1%) is creeping, not shrinking
    s2 = _settle(3)
    s2.update(z, 1000)
    out2 = [s2.update(z * (1.0 + 1e-6 * k), 1000 - (k == 2)) for k in range(1, 4)]
    assert out2[-1]


def test_settle_needs_logits():
    s = _settle(1)
    assert not s.update(None, 10)
    assert not s.update(None, 10)


@pytest.fixture(scope="module")
def wide_sparse():
    X, y = make_classification(
        n_samples=400, n_features=3000, n_informative=40, n_redundant=0, random_state=0
    )
    X = sp.csr_matrix(np.where(np.abs(X) > 1.0, X, 0.0))  # ~32% dense, text-like
    return X, y


def test_wide_linear_fit_stops_by_the_settle_test(monkeypatch, wide_sparse):
    X, y = wide_sparse
    calls = []
    original = engine._Settle.update

    def spy(self, logits, n_active):
        out = original(self, logits, n_active)
        calls.append(out)
        return out

    monkeypatch.setattr(engine._Settle, "update", spy)
    # dqn_tol out of reach: only the settle test can end the diagonal phase
    clf = DQNSBLClassifier(kernel=None, exact_switch=0, max_iter=400, dqn_tol=1e-12).fit(X, y)
    assert calls[-1] is True and not any(calls[:-1])
    assert clf.n_iter_ == len(calls) < 400
    assert clf.score(X, y) > 0.9


def test_inner_forcing_for_the_linear_basis_only(monkeypatch, wide_sparse):
    X, y = wide_sparse
    seen = []
    original = engine.run_path

    def spy(design, state, lik, settings, **kwargs):
        seen.append(settings.inner_forcing)
        return original(design, state, lik, settings, **kwargs)

    monkeypatch.setattr("sparsekit.sbl._classifier.run_path", spy)
    DQNSBLClassifier(kernel=None, max_iter=5).fit(X, y)
    DQNSBLClassifier(kernel="rbf", max_iter=5).fit(X[:100].toarray(), y[:100])
    assert seen == [cs.LINEAR_INNER_FORCING, 0.0]
    assert cs.LINEAR_INNER_FORCING > 0.0


def test_inner_tolerance_is_relative_to_the_starting_gradient():
    G = np.array([[3.0], [-40.0], [0.5]])
    assert cs._inner_tolerance(G, 1e-6, 0.1) == pytest.approx(4.0)
    assert cs._inner_tolerance(G, 10.0, 0.1) == 10.0  # absolute floor
    assert cs._inner_tolerance(G, 1e-6, 0.0) == 1e-6


def test_forcing_stops_inner_solves_earlier(monkeypatch, wide_sparse):
    """With the forcing term the inner solves take fewer quasi-Newton steps (fewer products)."""
    X, y = wide_sparse
    counts = {}
    for forcing in (0.0, cs.LINEAR_INNER_FORCING):
        monkeypatch.setattr(cs, "LINEAR_INNER_FORCING", forcing)
        monkeypatch.setattr("sparsekit.sbl._classifier.LINEAR_INNER_FORCING", forcing)
        n = [0]
        original = cs._loss_resid

        def counting(*args, _orig=original, _n=n):
            _n[0] += 1
            return _orig(*args)

        monkeypatch.setattr(cs, "_loss_resid", counting)
        DQNSBLClassifier(kernel=None, max_iter=10).fit(X, y)
        monkeypatch.setattr(cs, "_loss_resid", original)
        counts[forcing] = n[0]
    assert counts[cs.LINEAR_INNER_FORCING] < 0.8 * counts[0.0], counts
