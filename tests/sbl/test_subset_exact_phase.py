"""The classifier's subset path keeps the exact phase across scans (``_kernel_basis.py``)."""

import warnings

import pytest
from sklearn.datasets import make_classification

import sparsekit.sbl._kernel_basis as kb
from sparsekit.sbl import DQNSBLClassifier

GAMMA = 0.3


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
