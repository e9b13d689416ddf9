"""A kernel classifier's diagonal phase that stops with more than ``exact_switch`` bases still hands
over to the exact phase, with the ``exact_switch`` bases of smallest precision
(``_engine._switch_down``), and that exact phase grows within 1.5 times ``exact_switch``
(``_engine._within_cap``; per one-vs-rest problem); a linear basis keeps the diagonal phase's
model."""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

from sparsekit import DQNSBLClassifier
from sparsekit.sbl import _engine
from sparsekit.sbl._readmission import choose_additions

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


def _wide_open(seed=1, n_classes=2):
    """make_classification with 20 features and RBF gamma 1.0: a kernel so narrow that it is
    almost the identity (SVC is at chance); the diagonal phase keeps most of the 400 bases."""
    X, y = make_classification(
        N_FIT + 1000, 20, n_informative=8, n_classes=n_classes, random_state=seed, flip_y=0.03
    )
    return X[:N_FIT], y[:N_FIT]


def _fit_capped(X, y, monkeypatch, *, cap=True, **params):
    """Fit with or without the hand-over's cap (``_engine._within_cap``); returns the
    estimator and the messages of its ConvergenceWarnings."""
    if not cap:
        monkeypatch.setattr(_engine, "_within_cap", lambda design, state, lik, additions: additions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = DQNSBLClassifier(**params).fit(X, y)
    monkeypatch.undo()
    return est, [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_exact_phase_after_a_hand_over_grows_within_its_cap(monkeypatch):
    """Without the cap, the exact phase after the hand-over re-admits bases worth a few
    thousandths of a nat each for hundreds of iterations (seed 1: 420 iterations, 191 relevance
    vectors of 400, measured); with it the model stays within 1.5 times exact_switch, the fit
    ends in far fewer iterations and a ConvergenceWarning says what was held back."""
    X, y = _wide_open()
    params = dict(gamma=1.0, exact_switch=SWITCH)
    cap = math.ceil(_engine.HAND_OVER_GROWTH * SWITCH)
    est, messages = _fit_capped(X, y, monkeypatch, **params)
    free, free_messages = _fit_capped(X, y, monkeypatch, cap=False, **params)
    assert free.relevance_.size > 2 * cap
    assert not any("passed the add test" in m for m in free_messages)
    assert SWITCH < est.relevance_.size <= cap
    assert est.n_iter_ < free.n_iter_ / 2
    held = [m for m in messages if "passed the add test" in m]
    assert len(held) == 1 and f"exact_switch={SWITCH}" in held[0] and "smaller gamma" in held[0]
    assert f"within {cap} " in held[0]


class _Lik:
    """A likelihood stand-in: its name and a fixed exact size (the softmax's coefficients)."""

    def __init__(self, name, size=0):
        self.name = name
        self.size = size

    def exact_size(self, design, state):
        return self.size


def test_within_cap_caps_each_one_vs_rest_problem():
    """One-vs-rest problems are capped one by one, each by its own bases (additions in the order
    proposed while they fit); the softmax's coefficients count together."""
    design = SimpleNamespace(intercept_column=True)
    mask = np.zeros((6, 2), dtype=bool)
    mask[0] = True  # the intercept does not count
    mask[1:4, 0] = True  # class 0 holds 3 bases, class 1 one
    mask[4, 1] = True
    state = _engine.PathState(np.zeros((6, 2)), np.ones((6, 2)), mask=mask)
    additions = [(7, 0, 1.0), (8, 0, 2.0), (9, 1, 3.0), (10, 1, 4.0), (11, 1, 5.0), (12, 1, 6.0)]
    bernoulli = _Lik("bernoulli")
    assert _engine._within_cap(design, state, bernoulli, additions) == additions  # no cap
    assert state.held_back == 0
    state.readmit_cap = 4
    kept = _engine._within_cap(design, state, bernoulli, additions)
    assert kept == [(7, 0, 1.0), (9, 1, 3.0), (10, 1, 4.0), (11, 1, 5.0)]
    assert state.held_back == 2
    state.readmit_cap = 3
    assert _engine._within_cap(design, state, bernoulli, additions) == additions[2:4]
    assert state.held_back == 4
    softmax = _Lik("softmax", size=2)
    assert _engine._within_cap(design, state, softmax, additions) == additions[:1]
    assert state.held_back == 5
    state.readmit_cap = 10
    assert _engine._within_cap(design, state, softmax, additions) == additions
    assert state.held_back == 0


def test_additions_come_best_gain_first_over_the_classes():
    """A sweep's proposals are ordered by gain over all classes (ties in class order), so a cap
    that takes the first few takes the best of any class, not the first classes'."""
    found = [
        [(np.array([0.5, 0.1]), np.array([3, 4]), np.array([1.0, 2.0]))],
        [],
        [(np.array([0.9, 0.5, 1e-9]), np.array([5, 6, 7]), np.array([3.0, 4.0, 5.0]))],
    ]
    design = SimpleNamespace(weight_sum=1.0)
    assert choose_additions(found, design, per_class=2) == [
        (5, 2, 3.0),
        (3, 0, 1.0),
        (6, 2, 4.0),
        (4, 0, 2.0),
    ]
    assert choose_additions(found, design, per_class=1) == [(5, 2, 3.0), (3, 0, 1.0)]


def test_one_vs_rest_problems_grow_to_the_cap_each(monkeypatch):
    """Three classes, a kernel so narrow that every class's exact phase wants more bases than
    the cap: each one-vs-rest problem grows to the cap, so the model holds more bases than one
    problem may (a cap over the union of bases held the three together within it, each class
    at a fraction: measured on four classes, 1,200 samples, gamma 0.2, log evidence -1296.2
    against -970.9)."""
    X, y = _wide_open(n_classes=3)
    cap = math.ceil(_engine.HAND_OVER_GROWTH * SWITCH)
    est, messages = _fit_capped(X, y, monkeypatch, gamma=1.0, exact_switch=SWITCH)
    per_class = (est.dual_coef_ != 0).sum(axis=1)
    assert per_class.max() <= cap
    assert est.relevance_.size > 2 * cap
    held = [m for m in messages if "passed the add test" in m]
    assert len(held) == 1 and f"within {cap} (" in held[0]
    assert "per one-vs-rest problem" in held[0]


def test_subset_path_stops_scanning_at_the_cap(monkeypatch, small_pool):
    """On the subset path, a pool sweep that the cap held back ends the fit: a scan could only
    add samples the model cannot take (the pool would grow scan after scan up to MAX_SCANS)."""
    import sparsekit.sbl._kernel_basis as kb

    X, y = _wide_open()
    scans = []
    real = kb.KernelSubset.scan

    def counting(self, *args):
        scans.append(1)
        return real(self, *args)

    monkeypatch.setattr(kb.KernelSubset, "scan", counting)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = DQNSBLClassifier(gamma=1.0, exact_switch=10, kernel_basis="subset").fit(X, y)
    assert any("passed the add test" in str(w.message) for w in caught)
    assert est.relevance_.size <= math.ceil(_engine.HAND_OVER_GROWTH * 10)
    assert not scans
