"""A kernel classifier's diagonal phase that stops with more than ``exact_switch`` bases still hands
over to the exact phase, with the ``exact_switch`` bases of smallest precision
(``_engine._switch_down``); a linear basis keeps the diagonal phase's model."""

import warnings

import pytest
from sklearn.datasets import make_classification

from sparsekit import DQNSBLClassifier
from sparsekit.sbl import _engine

N_FIT = 400
SWITCH = 40


def _narrow(seed=0, n_classes=2):
    """make_classification with 20 features and RBF gamma 0.2 (four times ``gamma="scale"``):
    the diagonal phase stops with 100 or more bases."""
    X, y = make_classification(
        N_FIT + 1000,
        20,
        n_informative=8,
        n_classes=n_classes,
        random_state=seed,
        flip_y=0.03,
    )
    return X[:N_FIT], y[:N_FIT], X[N_FIT:], y[N_FIT:]


def _fit(X, y, monkeypatch, *, switch_down=True, **params):
    """Fit with the hand-over recorded: returns the estimator, the phase of every iteration, and
    per call of ``_switch_down`` the (before, after) exact sizes, whether it pruned, the
    precisions before, the (basis, class) pairs kept and the pruned precisions recorded."""
    real = _engine._switch_down
    phases, calls = [], []

    def held(design, state):
        """(basis, class) -> precision of the pairs in the model."""
        f = _engine.free_rows(design)
        return {
            (int(j), k): float(state.lam[f + r, k])
            for r, j in enumerate(design.active)
            for k in range(state.mask.shape[1])
            if state.mask[f + r, k]
        }

    def recording(design, state, lik, settings):
        before = lik.exact_size(design, state)
        lam_before = held(design, state)
        pruned = real(design, state, lik, settings) if switch_down else False
        kept = set(held(design, state))
        recorded = state.pruned_lam.to_dict()
        calls.append((before, lik.exact_size(design, state), pruned, lam_before, kept, recorded))
        return pruned

    real_step = _engine._posterior_step

    def step(design, state, lik, settings, exact):
        phases.append("exact" if exact else "dqn")
        return real_step(design, state, lik, settings, exact)

    monkeypatch.setattr(_engine, "_switch_down", recording)
    monkeypatch.setattr(_engine, "_posterior_step", step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = DQNSBLClassifier(**params).fit(X, y)
    monkeypatch.undo()
    return est, phases, calls


def test_narrow_kernel_finishes_exactly_and_far_better(monkeypatch):
    """RBF gamma 0.2 on 400 samples, exact_switch 40: the diagonal phase stops with 100 bases
    (measured). Ending there (the fit before) gave log evidence -202.9 and test accuracy 0.711
    (SVC: 0.835); the exact finish from the 40 bases of smallest precision reaches -59.9 and
    0.883 with 34 relevance vectors."""
    X, y, Xt, yt = _narrow()
    params = dict(gamma=0.2, exact_switch=SWITCH)
    est, phases, calls = _fit(X, y, monkeypatch, **params)
    off, off_phases, off_calls = _fit(X, y, monkeypatch, switch_down=False, **params)
    # the situation: the diagonal phase stopped with more than exact_switch bases
    assert off_calls and off_calls[0][0] > 2 * SWITCH and off_phases[-1] == "dqn"
    assert off.relevance_.size > 2 * SWITCH
    # the hand-over: exactly exact_switch bases, then the exact phase to the end
    assert calls[0][0] == off_calls[0][0] and calls[0][1] == SWITCH and calls[0][2]
    assert phases[-1] == "exact" and "exact" not in phases[: len(off_phases) - 1]
    assert est.scores_[-1] > off.scores_[-1] + 100.0
    assert est.score(Xt, yt) >= off.score(Xt, yt) + 0.1
    assert est.score(Xt, yt) >= 0.85
    assert est.relevance_.size < SWITCH


@pytest.mark.parametrize("multi_class", ["ovr", "multinomial"])
def test_hand_over_keeps_the_smallest_precisions(monkeypatch, multi_class):
    """What ``_switch_down`` keeps: one-vs-rest, the exact_switch bases whose smallest precision
    over the problems is smallest (with every problem's membership); softmax, the exact_switch
    coefficients of smallest precision. The others are pruned with their precisions recorded."""
    X, y, _Xt, _yt = _narrow(seed=2, n_classes=3)
    _est, _phases, calls = _fit(
        X, y, monkeypatch, gamma=0.2, exact_switch=SWITCH, multi_class=multi_class
    )
    before, after, pruned, lam_before, kept, recorded = calls[0]
    assert pruned and before > SWITCH and after == SWITCH
    dropped = set(lam_before) - kept
    assert dropped and kept <= set(lam_before)
    if multi_class == "multinomial":
        assert len(kept) == SWITCH
        assert max(lam_before[p] for p in kept) <= min(lam_before[p] for p in dropped)
    else:
        rows = {j for j, _k in lam_before}
        best = {j: min(v for (i, _k), v in lam_before.items() if i == j) for j in rows}
        kept_rows = {j for j, _k in kept}
        assert len(kept_rows) == SWITCH
        assert {p for p in lam_before if p[0] in kept_rows} == kept  # every problem's membership
        assert max(best[j] for j in kept_rows) <= min(best[j] for j in rows - kept_rows)
    for j, k in dropped:
        assert recorded[j, k] == lam_before[j, k]


def test_linear_basis_keeps_the_diagonal_model(monkeypatch):
    """``kernel=None``: the diagonal phase's model stays when it stops with more than
    exact_switch bases (text-sized linear fits are the diagonal phase's purpose)."""
    X, y = make_classification(300, 60, n_informative=30, random_state=0, flip_y=0.05)
    _est, phases, calls = _fit(X, y, monkeypatch, kernel=None, exact_switch=5)
    assert calls and calls[0][0] > 5 and not calls[0][2]
    assert phases[-1] == "dqn"


def test_exact_switch_zero_never_hands_over(monkeypatch):
    """``exact_switch=0`` turns the exact finish off, narrow kernel or not."""
    X, y, _Xt, _yt = _narrow()
    _est, phases, calls = _fit(X, y, monkeypatch, gamma=0.2, exact_switch=0)
    assert "exact" not in phases
    assert all(not c[2] for c in calls)
