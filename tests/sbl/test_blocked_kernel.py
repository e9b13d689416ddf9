"""Kernel bases without the n-by-n matrix (``kernel_basis="subset"``, ``_kernel_basis.py``).

The subset path starts from the kernel columns of a random pool of training samples and scans all
samples in blocks for bases worth adding. These tests pin: a pool that covers every sample gives
the full-kernel model exactly; a smaller pool never forms an n-by-n kernel, scores every sample,
ends where no sample passes the add test (checked here against the full kernel) and predicts as
well as the full-kernel fit; the option's rule and its errors.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import expit
from sklearn.datasets import make_classification, make_moons
from sklearn.metrics.pairwise import rbf_kernel

import sparsekit.sbl._kernel_basis as kb
from sparsekit.sbl import DQNSBLClassifier
from sparsekit.sbl._constructive import addition_gain
from sparsekit.sbl._design import DesignMatrix
from sparsekit.sbl._engine import FLAT_TOL
from sparsekit.sbl._readmission import GAIN_TOL, MAX_READMIT

GAMMA = 2.0


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(n_samples=400, noise=0.25, random_state=0)
    return X[::2], y[::2], X[1::2], y[1::2]


@pytest.fixture
def final_fit(monkeypatch):
    """The design, state and pool of the last subset fit, as it ended."""
    out = {}
    real = kb.KernelSubset.fit

    def recording(self, design, state, *args, **kwargs):
        res = real(self, design, state, *args, **kwargs)
        out.update(design=design, state=state, subset=self)
        return res

    monkeypatch.setattr(kb.KernelSubset, "fit", recording)
    return out


def test_pool_of_every_sample_gives_the_full_kernel_model(moons):
    """With the pool covering every training sample (n below SUBSET_MIN) the subset path builds
    the same basis in row blocks and fits exactly the full-kernel model."""
    X, y, Xt, _ = moons
    full = DQNSBLClassifier(gamma=GAMMA, kernel_basis="full").fit(X, y)
    sub = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    assert_array_equal(sub.relevance_, full.relevance_)
    assert_allclose(sub.dual_coef_, full.dual_coef_, rtol=1e-8, atol=1e-10)
    assert_allclose(sub.predict_proba(Xt), full.predict_proba(Xt), atol=1e-10)
    assert sub.n_iter_ == full.n_iter_


def test_row_blocks_of_the_pool_basis(moons, monkeypatch):
    """The pool's kernel columns computed in row blocks of 7 equal K(X, X[pool])."""
    X = moons[0]
    monkeypatch.setattr(kb, "ROW_BLOCK", 7)
    est = DQNSBLClassifier(gamma=GAMMA)
    subset = kb.KernelSubset(est, X, np.ones(X.shape[0]), GAMMA)
    B, own, (cols, n) = subset.initial_basis()
    assert own and B.flags.f_contiguous and n == X.shape[0]
    assert_allclose(B, rbf_kernel(X, X[cols], gamma=GAMMA), rtol=0, atol=1e-15)


def test_small_pool_never_forms_the_n_by_n_kernel(moons, kernel_shapes, small_pool):
    """No kernel computed by a subset fit has n x n entries (or more), while the full path does
    (so the spy can see one); yet the scans compute a kernel column for every training sample."""
    X, y, _, _ = moons
    n = X.shape[0]
    DQNSBLClassifier(gamma=GAMMA, kernel_basis="full").fit(X, y)
    assert max(r * c for r, c in kernel_shapes) >= n * n
    kernel_shapes.clear()
    DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    assert kernel_shapes
    assert max(r * c for r, c in kernel_shapes) < n * n // 4


def test_scans_reach_every_sample(moons, small_pool, monkeypatch):
    """Every training sample is scored: the scans' columns together with the pool cover them."""
    X, y, _, _ = moons
    seen = set()
    real = kb.KernelSubset._kernel
    real_scan = kb.KernelSubset._scan_kernel  # the scans' own RBF blocks

    def recording(self, js):
        seen.update(np.asarray(js).tolist())
        return real(self, js)

    def recording_scan(self, js):
        seen.update(np.asarray(js).tolist())
        return real_scan(self, js)

    monkeypatch.setattr(kb.KernelSubset, "_kernel", recording)
    monkeypatch.setattr(kb.KernelSubset, "_scan_kernel", recording_scan)
    est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    assert seen == set(range(X.shape[0]))
    assert est.relevance_.size > 0


def _full_add_test_gains(X, y, design, state, gamma):
    """Tipping & Faul's add gain of every basis outside the final model, from the full kernel
    (plain numpy; the oracle of the stopping rule)."""
    n = X.shape[0]
    K = rbf_kernel(X, X, gamma=gamma)
    rms = np.sqrt((K * K).mean(axis=0))
    Phi_all = K / rms
    Pa = design.dense_active()
    Phi = np.hstack([np.ones((n, 1)), Pa])
    p = expit(Phi @ state.coef[:, 0])
    b = p * (1.0 - p)
    idx, S = state.sigma_full[0]
    BPa = b[:, None] * Phi[:, idx]
    C = Phi_all.T @ BPa
    s = (Phi_all * Phi_all).T @ b - np.einsum("ij,ij->i", C @ S, C)
    q = Phi_all.T @ (y - p)
    out = np.full(n, -np.inf)
    model = set(design.active[state.mask[1:, 0]].tolist())
    blocked = {j for (j, k), c in state.readmitted.items() if c >= MAX_READMIT}
    for j in range(n):
        if j in model or j in blocked:
            continue
        if q[j] ** 2 > s[j] > 0 and (q[j] ** 2 - s[j]) * 1e9 > s[j] ** 2:
            out[j] = addition_gain(np.array([s[j]]), np.array([q[j]]))[0]
    return out


def test_subset_fit_ends_where_no_sample_passes_the_add_test(moons, small_pool, final_fit):
    """At the end of a subset fit, no basis among ALL training samples (scored with the full
    kernel here) has an evidence gain above the re-admission tolerance; some relevance vectors
    come from outside the starting pool."""
    X, y, _, _ = moons
    est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    design, state, subset = final_fit["design"], final_fit["state"], final_fit["subset"]
    gains = _full_add_test_gains(X, y.astype(float), design, state, GAMMA)
    assert gains.max() <= GAIN_TOL * X.shape[0]
    rng = np.random.RandomState(kb.SEED)
    first_pool = subset.candidates_all[rng.choice(subset.candidates_all.size, 40, replace=False)]
    assert set(est.relevance_) - set(first_pool.tolist())
    assert subset.n_scans >= 1


def test_scan_adds_the_best_candidates_by_the_add_test(moons, small_pool, monkeypatch):
    """Each scan puts into the pool exactly the samples outside it that the add test, computed
    from the full kernel, ranks best (at most ``class_scan_additions(m0)``, gain above tolerance)."""
    X, y, _, _ = moons
    real = kb.KernelSubset.scan
    checked = []

    def checking(self, design, state, T, sw, threshold_lambda):
        gains = _full_add_test_gains(X, y.astype(float), design, state, GAMMA)
        before = set(self.pool.tolist())
        gains[list(before)] = -np.inf
        order = np.argsort(-gains)[: kb.class_scan_additions(self.m0)]
        expected = {int(j) for j in order if gains[j] > GAIN_TOL * X.shape[0]}
        added = real(self, design, state, T, sw, threshold_lambda)
        assert set(self.pool.tolist()) - before == expected
        assert added == len(expected)
        checked.append(added)
        return added

    monkeypatch.setattr(kb.KernelSubset, "scan", checking)
    DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    assert len(checked) >= 2 and checked[0] > 0 and checked[-1] == 0


def test_small_pool_predicts_as_well_as_the_full_kernel(small_pool):
    """A pool of 40 of 300 samples: the same test accuracy (within 1.5 pp) and log-evidence
    (within 5 nats) as the full-kernel fit (measured: accuracy 0.880 against 0.872, log-evidence
    -71.5 against -71.8, 14 relevance vectors each)."""
    X, y = make_classification(
        n_samples=900, n_features=6, n_informative=4, random_state=1, flip_y=0.02
    )
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[300:], y[300:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = DQNSBLClassifier(gamma=0.1, kernel_basis="full").fit(Xtr, ytr)
        sub = DQNSBLClassifier(gamma=0.1, kernel_basis="subset").fit(Xtr, ytr)
    assert sub.score(Xte, yte) >= full.score(Xte, yte) - 0.015
    assert sub.scores_[-1] >= full.scores_[-1] - 5.0
    assert sub.relevance_.size <= 2 * full.relevance_.size


def test_one_vs_rest_subset(small_pool):
    """Three classes, one-vs-rest: accuracy as the full kernel's (measured: 0.939 against 0.931,
    19 against 21 relevance vectors)."""
    X, y = make_classification(
        n_samples=600,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=0,
    )
    Xtr, ytr, Xte, yte = X[:240], y[:240], X[240:], y[240:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = DQNSBLClassifier(gamma=0.2, kernel_basis="full").fit(Xtr, ytr)
        sub = DQNSBLClassifier(gamma=0.2, kernel_basis="subset").fit(Xtr, ytr)
    assert sub.dual_coef_.shape[0] == 3
    assert sub.lambda_.shape == (3, 240)
    assert sub.score(Xte, yte) >= full.score(Xte, yte) - 0.03


def test_auto_switches_to_the_subset_beyond_the_threshold(moons, monkeypatch, final_fit):
    """ "auto" keeps the full kernel up to FULL_KERNEL_MAX distinct samples, the subset beyond."""
    X, y, _, _ = moons
    DQNSBLClassifier(gamma=GAMMA).fit(X, y)
    assert not final_fit
    monkeypatch.setattr(kb, "FULL_KERNEL_MAX", 150)
    DQNSBLClassifier(gamma=GAMMA).fit(X, y)
    assert final_fit
    final_fit.clear()
    # duplicates do not count: 200 rows, 100 distinct
    DQNSBLClassifier(gamma=GAMMA).fit(np.vstack([X[:100], X[:100]]), np.r_[y[:100], y[:100]])
    assert not final_fit
    # no kernel columns to skip: "auto" is the ordinary path
    DQNSBLClassifier(kernel=None).fit(X, y)
    assert not final_fit


def test_auto_crossover_is_2500_distinct_samples():
    """The default crossover, from bench_kernel_crossover.py (results/sbl_kernel_crossover.md):
    the full kernel up to 2,500 distinct samples (the subset path's evidence was lower on most
    seeds there), the subset path from 2,501 (4.6-8.6x faster at 3,000). The regressor keeps its own
    bound (its subset path was slower wherever both ran)."""
    est = DQNSBLClassifier(gamma=GAMMA)
    assert not kb.use_subset(est, 2500, "bernoulli")
    assert kb.use_subset(est, 2501, "bernoulli")
    assert kb.full_kernel_max("gaussian") == kb.FULL_KERNEL_MAX_REGRESSION > 2501


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"kernel": None}, "kernel computed from X"),
        ({"kernel": "precomputed"}, "kernel computed from X"),
        ({"multi_class": "multinomial"}, "one-vs-rest"),
        ({"exact_switch": 0}, "exact finish"),
    ],
)
def test_subset_refuses_what_it_cannot_fit(params, match):
    X, y = make_classification(
        n_samples=60,
        n_features=4,
        n_informative=3,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=0,
    )
    if params.get("kernel") == "precomputed":
        X = rbf_kernel(X, X)
    with pytest.raises(ValueError, match=match):
        DQNSBLClassifier(kernel_basis="subset", **params).fit(X, y)


@pytest.mark.parametrize("value", ["blocked", "Subset", 1, None])
def test_bad_kernel_basis_values(value, moons):
    X, y, _, _ = moons
    with pytest.raises(ValueError, match="kernel_basis"):
        DQNSBLClassifier(kernel_basis=value).fit(X, y)


def test_insert_columns_grows_a_full_buffer():
    """Inserting more columns than the design's buffer holds enlarges the buffer and keeps every
    column (the subset path's pool can outgrow its starting buffer)."""
    rng = np.random.RandomState(0)
    B = rng.rand(30, 6)
    d = DesignMatrix(
        B[:, [0, 3]],
        np.ones(30),
        center=False,
        intercept_column=True,
        column_index=(np.array([0, 3]), 6),
    )
    full = DesignMatrix(B, np.ones(30), center=False, intercept_column=True)
    d.inv_scale[:] = full.inv_scale
    d.insert_columns(np.array([1, 2, 4, 5]), B[:, [1, 2, 4, 5]])
    assert_array_equal(d.active, np.arange(6))
    assert_allclose(d.dense_active(), full.dense_active())


@pytest.mark.parametrize("variant", ["sparse", "float32", "zero_weights", "warm_start"])
def test_subset_path_input_variants(moons, small_pool, variant):
    """Sparse and float32 input, samples of weight zero (never bases) and a warm start all fit
    on the subset path, predicting as the dense float64 fit does (within 2 pp)."""
    import scipy.sparse as sp

    X, y, Xt, yt = moons
    ref = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset")
    if variant == "sparse":
        est.fit(sp.csr_matrix(X), y)
    elif variant == "float32":
        est.fit(X.astype(np.float32), y)
    elif variant == "zero_weights":
        sw = np.ones(X.shape[0])
        sw[::5] = 0.0
        est.fit(X, y, sample_weight=sw)
        assert not np.isin(est.relevance_, np.flatnonzero(sw == 0)).any()
    else:
        est.set_params(warm_start=True).fit(X, y)
        est.fit(X, y)
    assert est.score(Xt, yt) >= ref.score(Xt, yt) - 0.02


def test_path_between_scans_stops_early_and_the_last_one_uses_the_full_stop_rule(
    moons, small_pool, monkeypatch
):
    """Between scans the path on the pool stops after SCAN_NO_CHANGE calm iterations at the
    looser evidence-flat tolerance; the first path (diagonal phase included) and the path after
    the first scan that adds nothing use the estimator's stop rule, and the fit ends at a scan
    that adds nothing after such a path."""
    X, y, _, _ = moons
    calls, scans = [], []
    real_run, real_scan = kb.run_path, kb.KernelSubset.scan

    def run(design, state, lik, settings, **kwargs):
        calls.append((settings.n_iter_no_change, settings.flat_tol))
        return real_run(design, state, lik, settings, **kwargs)

    def scan(self, *args):
        scans.append(real_scan(self, *args))
        return scans[-1]

    monkeypatch.setattr(kb, "run_path", run)
    monkeypatch.setattr(kb.KernelSubset, "scan", scan)
    est = DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset", n_iter_no_change=7).fit(X, y)
    assert est.n_iter_ < est.max_iter
    full, loose = (7, FLAT_TOL), (kb.SCAN_NO_CHANGE, kb.SCAN_FLAT_TOL)
    assert loose[0] < full[0] and loose[1] > full[1]
    assert len(calls) == len(scans) >= 3
    assert calls[0] == full and calls[-1] == full
    assert scans[-1] == 0 and scans[-2] == 0  # a loose path's scan, then the full one's
    assert all(c == loose for c in calls[1:-1])
    assert all(s > 0 for s in scans[:-2])


def test_pool_sweeps_cache_the_pool_columns(moons, small_pool, final_fit, monkeypatch):
    """The sweeps' candidate source keeps the pool's kernel columns (n-by-pool) even when
    CACHE_BYTES would not hold them, each computed once, up to POOL_CACHE_MAX bytes."""
    X, y, _, _ = moons
    monkeypatch.setattr(kb, "CACHE_BYTES", 0)
    DQNSBLClassifier(gamma=GAMMA, kernel_basis="subset").fit(X, y)
    subset = final_fit["subset"]
    calls = []
    real = subset._kernel
    monkeypatch.setattr(subset, "_kernel", lambda js: (calls.append(list(js)), real(js))[1])
    cand = subset.candidate_columns(X.shape[0])
    js = subset.pool[:10]
    first = np.array(cand.raw(js))
    assert_array_equal(cand.raw(js), first)
    assert_allclose(first, rbf_kernel(X, X[js], gamma=GAMMA), rtol=1e-12)
    assert calls == [js.tolist()]
    monkeypatch.setattr(kb, "POOL_CACHE_MAX", 8 * X.shape[0] * subset.pool.size - 1)
    cand = subset.candidate_columns(X.shape[0])  # the pool over its bound: recomputed
    assert_array_equal(cand.raw(js), first)
    assert_array_equal(cand.raw(js), first)
    assert calls == [js.tolist()] * 3
