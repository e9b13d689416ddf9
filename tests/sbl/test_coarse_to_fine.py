"""The classifier's subset path at large n: coarse-to-fine (``KernelSubset.coarse_start``) and
the exact phase kept across scans (``_kernel_basis.py``).

Beyond ``COARSE_MIN`` distinct samples the fit first fits the estimator on a stratified random
quarter of them (recursively), then starts the fit at n in its exact phase from that model, with
the coarse fit's pool. These tests lower ``COARSE_MIN`` so that 600 samples take the path, and
pin: the coarse rows, the same model quality as the direct subset fit, the end by the fit's own
stop rule after a scan of all n samples that adds nothing, ``n_iter_`` counting both fits within
``max_iter``, determinism, weights and one-vs-rest.
"""

import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

import sparsekit.sbl._kernel_basis as kb
from sparsekit.sbl import DQNSBLClassifier

GAMMA = 0.3


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=1200, n_features=6, n_informative=4, random_state=0)
    return X[:600], y[:600], X[600:], y[600:]


@pytest.fixture
def trace(monkeypatch):
    """Per KernelSubset of a fit (coarse ones first): its instance, the phase of every
    iteration of its paths, the scans' results and its final state."""
    out = []
    real_init, real_fit, real_scan = (
        kb.KernelSubset.__init__,
        kb.KernelSubset.fit,
        kb.KernelSubset.scan,
    )
    real_run = kb.run_path

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._trace = {"subset": self, "phases": [], "scans": [], "state": None}

    def fit(self, design, state, lik, settings, on_iter=None):
        f = int(design.intercept_column)
        self._trace["start"] = design.active[state.mask[f:].any(axis=1)]

        def rec(st, *args):
            self._trace["phases"].append(st.phase)

        def run(design, state, lik, settings, on_iter=None, candidates=None):
            return real_run(design, state, lik, settings, on_iter=rec, candidates=candidates)

        monkeypatch.setattr(kb, "run_path", run)
        try:
            res = real_fit(self, design, state, lik, settings, on_iter)
        finally:
            monkeypatch.setattr(kb, "run_path", real_run)
        self._trace["state"] = state
        out.append(self._trace)
        return res

    def scan(self, *args):
        self._trace["scans"].append(real_scan(self, *args))
        return self._trace["scans"][-1]

    monkeypatch.setattr(kb.KernelSubset, "__init__", init)
    monkeypatch.setattr(kb.KernelSubset, "fit", fit)
    monkeypatch.setattr(kb.KernelSubset, "scan", scan)
    return out


@pytest.fixture
def coarse(monkeypatch, small_pool):
    """Coarse-to-fine from 200 distinct samples on (a 600-sample fit runs one coarse fit on
    a quarter of them)."""
    monkeypatch.setattr(kb, "COARSE_MIN", 200)


class coarse_off:
    """Coarse-to-fine off within the block."""

    def __enter__(self):
        self.saved = kb.COARSE_MIN
        kb.COARSE_MIN = 10**9

    def __exit__(self, *exc):
        kb.COARSE_MIN = self.saved


def n_coarse(y):
    """Rows of the coarse fit for labels ``y`` (of the positive-weight samples)."""
    return sum(math.ceil(kb.COARSE_FRACTION * c) for c in np.unique(y, return_counts=True)[1])


def fit(X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset", **params).fit(X, y)


def test_path_stays_exact_after_the_exact_phase(small_pool, trace):
    """A path after a scan whose pool additions took the model past ``exact_switch`` bases stays
    in the exact phase (run_path would start it in the diagonal phase again: measured here, 57
    diagonal iterations after the exact phase, log evidence -77.1 against -61.7)."""
    X, y = make_classification(n_samples=600, n_features=6, n_informative=4, random_state=0)
    est = fit(X, y, exact_switch=15)
    (t,) = trace
    phases = t["phases"]
    first_exact = phases.index("exact")
    assert "dqn" not in phases[first_exact:]
    assert max(t["subset"].pool.size, est.relevance_.size) > 15
    trace.clear()
    ref = fit(X, y, exact_switch=20)
    assert est.scores_[-1] >= ref.scores_[-1] - 1.0


def test_coarse_rows_are_a_stratified_quarter(data, coarse):
    X, y, _, _ = data
    y = y.copy()
    y[:450] = 0  # imbalanced: 450 + (the rest split)
    T = (y == 1).astype(float)[:, None]
    subset = kb.KernelSubset(DQNSBLClassifier(gamma=GAMMA), X, np.ones(600), GAMMA)
    rows = subset.coarse_rows(T)
    for k in (0, 1):
        assert np.sum(y[rows] == k) == math.ceil(kb.COARSE_FRACTION * np.sum(y == k))
    assert_array_equal(rows, np.unique(rows))
    assert_array_equal(rows, subset.coarse_rows(T))  # seeded


def test_coarse_to_fine_reaches_the_direct_fit(data, coarse, trace):
    """The coarse fit runs on a quarter of the samples, the fit at n starts in the exact phase from its
    model and ends by its own stop rule after a scan of all n samples that adds nothing; its
    model is as good as the direct subset fit's (measured: log evidence -61.0 against -66.1,
    accuracy 0.970 against 0.968)."""
    X, y, Xt, yt = data
    est = fit(X, y)
    assert [t["subset"].X.shape[0] for t in trace] == [n_coarse(y), 600]
    small, big = trace
    assert big["subset"].coarse_iter == small["state"].n_iter > 0
    assert set(big["phases"]) == {"exact"}  # no diagonal phase at n
    assert big["state"].converged and big["scans"][-1] == 0
    # n_iter_ counts the coarse fit's iterations and those at n
    assert est.n_iter_ == small["state"].n_iter + len(big["phases"])
    # the coarse model is in the pool at n
    coarse_rv = small["subset"].est.relevance_
    rows = big["subset"].coarse_rows((y == 1).astype(float)[:, None])
    assert coarse_rv.size and np.isin(rows[coarse_rv], big["subset"].pool).all()
    assert_array_equal(big["start"], rows[coarse_rv])  # the fit at n starts from it
    with coarse_off():
        direct = fit(X, y)
    assert est.scores_[-1] >= direct.scores_[-1] - 3.0
    assert est.score(Xt, yt) >= direct.score(Xt, yt) - 0.02


def test_coarse_to_fine_is_deterministic(data, coarse):
    X, y, _, _ = data
    a, b = fit(X, y), fit(X, y)
    assert_array_equal(a.relevance_, b.relevance_)
    assert_array_equal(a.dual_coef_, b.dual_coef_)
    assert a.n_iter_ == b.n_iter_


def test_coarse_to_fine_respects_max_iter(data, coarse, trace):
    """max_iter bounds the coarse fit's iterations and those at n together."""
    X, y, _, _ = data
    with pytest.warns(ConvergenceWarning):
        est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset", max_iter=60).fit(X, y)
    small, big = trace
    assert small["state"].n_iter <= int(kb.COARSE_ITER_SHARE * 60)
    assert est.n_iter_ == 60 == small["state"].n_iter + len(big["phases"])


def test_coarse_to_fine_class_weight_is_sample_weight(data, coarse):
    """The class weights enter the coarse fit once (as sample weights)."""
    X, y, _, _ = data
    cw = {0: 1.0, 1: 3.0}
    a = fit(X, y, class_weight=cw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(
            X, y, sample_weight=np.where(y == 1, 3.0, 1.0)
        )
    assert_array_equal(a.relevance_, b.relevance_)
    assert_allclose(a.dual_coef_, b.dual_coef_, rtol=1e-10, atol=1e-12)


def test_coarse_to_fine_sample_weight(data, coarse, trace):
    """Zero weights: those samples are no basis functions and not in the coarse rows."""
    X, y, Xt, yt = data
    sw = np.ones(600)
    sw[::3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y, sample_weight=sw)
    assert [t["subset"].X.shape[0] for t in trace] == [n_coarse(y[sw > 0]), 600]
    assert np.all(sw[est.relevance_] > 0)
    assert est.score(Xt, yt) >= 0.9


def test_coarse_to_fine_one_vs_rest(coarse, trace):
    X, y = make_classification(
        n_samples=1200,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=0,
    )
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[600:], y[600:]
    sub = fit(Xtr, ytr)
    assert len(trace) == 2
    assert sub.lambda_.shape == (3, 600)
    with coarse_off():
        direct = fit(Xtr, ytr)
    assert sub.score(Xte, yte) >= direct.score(Xte, yte) - 0.03


def test_few_samples_take_no_coarse_fit(data, small_pool, trace):
    X, y, _, _ = data
    fit(X, y)
    assert len(trace) == 1 and trace[0]["subset"].coarse_iter == 0


def test_warm_start_takes_the_previous_model_not_a_coarse_fit(data, coarse, trace):
    """warm_start=True resumes from the previous fit on the same samples (no coarse fit); on
    other samples (its precisions do not fit them) the coarse fit runs."""
    X, y, _, _ = data
    est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset", warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
        assert len(trace) == 2
        est.fit(X, y)
        assert len(trace) == 3 and trace[-1]["subset"].coarse_iter == 0
        est.fit(X[:580], y[:580])
    assert len(trace) == 5 and trace[-1]["subset"].coarse_iter > 0
