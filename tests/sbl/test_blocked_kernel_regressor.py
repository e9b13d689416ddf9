"""The regressor's kernel basis without the n-by-n matrix (``kernel_basis="subset"``).

The subset path runs the constructive path on the kernel columns of a random pool of training
samples and scans all samples in blocks by the Gaussian add test, adding the best to the pool.
These tests pin: a pool that covers every sample gives the full-kernel model exactly; a smaller
pool never forms an n-by-n kernel, scores every sample, ends where no sample passes the add test
(checked against the full kernel in plain numpy) and predicts as well as the full-kernel fit; the
option's rule and its errors.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_friedman1
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import StandardScaler

import sparsekit.sbl._kernel_basis as kb
from sparsekit.sbl import DQNSBLRegressor
from sparsekit.sbl._constructive import GAIN_TOL, addition_gain

GAMMA = 0.1


@pytest.fixture(scope="module")
def friedman():
    X, y = make_friedman1(n_samples=1300, noise=1.0, random_state=0)
    X = StandardScaler().fit_transform(X)
    return X[:300], y[:300], X[300:], y[300:]


@pytest.fixture(scope="module")
def sinc():
    """Tipping's noisy sinc on [-10, 10] (noise std 0.1): a sparse model (about 10 vectors)."""
    rng = np.random.RandomState(0)
    X = rng.uniform(-10, 10, size=(400, 1))
    y = np.sinc(X[:, 0] / np.pi) + 0.1 * rng.normal(size=400)
    return X, y


@pytest.fixture
def final_fit(monkeypatch):
    """The design, state and pool of the last regression subset fit, as it ended."""
    out = {}
    real = kb.KernelSubset.fit_gaussian

    def recording(self, design, t, state, *args, **kwargs):
        design = real(self, design, t, state, *args, **kwargs)
        out.update(design=design, state=state, subset=self, t=t)
        return design

    monkeypatch.setattr(kb.KernelSubset, "fit_gaussian", recording)
    return out


def _fit(X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence or empty-model warning
        return DQNSBLRegressor(kernel="rbf", gamma=GAMMA, **params).fit(X, y)


def test_pool_of_every_sample_gives_the_full_kernel_model(friedman):
    """With the pool covering every training sample (n below SUBSET_MIN) the subset path builds
    the same basis in row blocks and fits exactly the full-kernel model."""
    X, y, Xt, _ = friedman
    full = _fit(X, y, kernel_basis="full")
    sub = _fit(X, y, kernel_basis="subset")
    assert_array_equal(sub.relevance_, full.relevance_)
    assert_allclose(sub.dual_coef_, full.dual_coef_, rtol=1e-8, atol=1e-10)
    assert_allclose(sub.predict(Xt), full.predict(Xt), rtol=1e-9, atol=1e-9)
    assert_allclose(sub.alpha_, full.alpha_, rtol=1e-9)
    assert sub.n_iter_ == full.n_iter_


def test_small_pool_never_forms_the_n_by_n_kernel(sinc, kernel_shapes, small_pool):
    """No kernel computed by a subset fit has n^2 / 4 entries (or more), while the full path
    forms the n x n one (so the spy can see it)."""
    X, y = sinc
    n = X.shape[0]
    _fit(X, y, kernel_basis="full")
    assert max(r * c for r, c in kernel_shapes) >= n * n
    kernel_shapes.clear()
    _fit(X, y, kernel_basis="subset")
    assert kernel_shapes
    assert max(r * c for r, c in kernel_shapes) < n * n // 4


def test_scans_reach_every_sample(friedman, small_pool, monkeypatch):
    """Every training sample is scored: the scans' columns together with the pools' cover them."""
    X, y, _, _ = friedman
    seen = set()
    real = kb.KernelSubset._kernel
    real_scan = kb.KernelSubset._scan_kernel  # the scans' own RBF blocks
    real_design = kb.KernelSubset.gaussian_design

    def recording(self, js):
        seen.update(np.asarray(js).tolist())
        return real(self, js)

    def recording_scan(self, js):
        seen.update(np.asarray(js).tolist())
        return real_scan(self, js)

    def recording_pool(self):
        seen.update(self.pool.tolist())
        return real_design(self)

    monkeypatch.setattr(kb.KernelSubset, "_kernel", recording)
    monkeypatch.setattr(kb.KernelSubset, "_scan_kernel", recording_scan)
    monkeypatch.setattr(kb.KernelSubset, "gaussian_design", recording_pool)
    est = _fit(X, y, kernel_basis="subset")
    assert seen == set(range(X.shape[0]))
    assert est.relevance_.size > 0


def _full_add_test_gains(X, design, state, t, gamma):
    """Tipping & Faul's add gain of every sample outside the final model, from the full kernel
    (plain numpy, unit weights; the oracle of the stopping rule)."""
    K = rbf_kernel(X, X, gamma=gamma)
    Phi_all = (K - K.mean(axis=0)) / K.std(axis=0)
    Pa = design.dense_active()
    beta, mu, Sigma = state.beta, state.coef[:, 0], state.sigma_full
    C = Phi_all.T @ Pa
    s = beta * (Phi_all * Phi_all).sum(axis=0) - beta**2 * np.einsum("ij,ij->i", C @ Sigma, C)
    q = beta * Phi_all.T @ (t - Pa @ mu)
    out = np.full(X.shape[0], -np.inf)
    ok = (q * q > s) & (s > 0) & ((q * q - s) * 1e4 > s * s)
    ok[design.active] = False
    out[ok] = addition_gain(s[ok], q[ok])
    return out


def test_subset_fit_ends_where_no_sample_passes_the_add_test(friedman, small_pool, final_fit):
    """At the end of a subset fit, no sample outside the model (scored with the full kernel here)
    has an evidence gain above the constructive path's tolerance; some relevance vectors come
    from outside the starting pool, found by the scans."""
    X, y, _, _ = friedman
    est = _fit(X, y, kernel_basis="subset")
    design, state, subset = final_fit["design"], final_fit["state"], final_fit["subset"]
    assert_array_equal(design.active, est.relevance_)
    gains = _full_add_test_gains(X, design, state, final_fit["t"], GAMMA)
    assert gains.max() <= GAIN_TOL * X.shape[0]
    rng = np.random.RandomState(kb.SEED)
    first_pool = subset.candidates_all[rng.choice(subset.candidates_all.size, 40, replace=False)]
    assert set(est.relevance_) - set(first_pool.tolist())
    assert subset.n_scans >= 2


def test_scan_adds_the_best_candidates_by_the_add_test(friedman, small_pool, monkeypatch):
    """Each scan returns exactly the samples outside the pool that the add test, computed from
    the full kernel, ranks best (at most ``scan_additions(m0)``, gain above tolerance)."""
    X, y, _, _ = friedman
    real = kb.KernelSubset.gaussian_scan
    checked = []

    def checking(self, design, state, t, threshold_lambda):
        gains = _full_add_test_gains(X, design, state, t, GAMMA)
        gains[self.pool] = -np.inf
        order = np.argsort(-gains)[: kb.scan_additions(self.m0)]
        expected = {int(j) for j in order if gains[j] > GAIN_TOL * X.shape[0]}
        added = real(self, design, state, t, threshold_lambda)
        assert set(added.tolist()) == expected
        checked.append(added.size)
        return added

    monkeypatch.setattr(kb.KernelSubset, "gaussian_scan", checking)
    _fit(X, y, kernel_basis="subset")
    assert len(checked) >= 2 and checked[0] > 0 and checked[-1] == 0


def test_small_pool_predicts_as_well_as_the_full_kernel(friedman, small_pool):
    """A pool of 40 of 300 samples: test MSE within 10 % of the full-kernel fit's and a similar
    number of relevance vectors."""
    X, y, Xt, yt = friedman
    full = _fit(X, y, kernel_basis="full", compute_score=True)
    sub = _fit(X, y, kernel_basis="subset", compute_score=True)
    mse_full = np.mean((full.predict(Xt) - yt) ** 2)
    mse_sub = np.mean((sub.predict(Xt) - yt) ** 2)
    assert mse_sub <= 1.1 * mse_full
    assert sub.relevance_.size <= 2 * full.relevance_.size
    assert sub.scores_[-1] >= full.scores_[-1] - 5.0


def test_auto_switches_to_the_subset_beyond_the_threshold(friedman, monkeypatch, final_fit):
    """ "auto" keeps the full kernel up to FULL_KERNEL_MAX_REGRESSION distinct samples, the
    subset beyond."""
    X, y, _, _ = friedman
    _fit(X, y)
    assert not final_fit
    monkeypatch.setattr(kb, "FULL_KERNEL_MAX_REGRESSION", 150)
    _fit(X, y)
    assert final_fit
    final_fit.clear()
    # duplicates do not count: 200 rows, 100 distinct
    _fit(np.vstack([X[:100], X[:100]]), np.r_[y[:100], y[:100]])
    assert not final_fit
    # no kernel columns to skip, or the exact solver: "auto" is the ordinary path
    DQNSBLRegressor(kernel=None).fit(X, y)
    DQNSBLRegressor(kernel="rbf", solver="exact", max_iter=5).fit(X[:160], y[:160])
    assert not final_fit


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"kernel": None}, "kernel computed from X"),
        ({"kernel": "precomputed"}, "kernel computed from X"),
        ({"solver": "exact"}, "solver='dqn'"),
    ],
)
def test_subset_refuses_what_it_cannot_fit(friedman, params, match):
    X, y = friedman[0][:60], friedman[1][:60]
    if params.get("kernel") == "precomputed":
        X = rbf_kernel(X, X)
    params = {"kernel": "rbf", **params}
    with pytest.raises(ValueError, match=match):
        DQNSBLRegressor(kernel_basis="subset", **params).fit(X, y)


@pytest.mark.parametrize("value", ["blocked", "Subset", 1, None])
def test_bad_kernel_basis_values(value, friedman):
    X, y = friedman[0][:60], friedman[1][:60]
    with pytest.raises(ValueError, match="kernel_basis"):
        DQNSBLRegressor(kernel="rbf", kernel_basis=value).fit(X, y)


@pytest.mark.parametrize("variant", ["sparse", "float32", "zero_weights", "warm_start"])
def test_subset_path_input_variants(friedman, small_pool, variant):
    """Sparse and float32 input, samples of weight zero (never bases) and a warm start all fit
    on the subset path, predicting about as the dense float64 fit does."""
    X, y, Xt, yt = friedman
    ref = _fit(X, y, kernel_basis="subset")
    est = DQNSBLRegressor(kernel="rbf", gamma=GAMMA, kernel_basis="subset")
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
        first = est.relevance_.copy()
        est.fit(X, y)
        # the warm start begins from the previous model (vectors outside the pool included)
        assert np.isin(first, est.relevance_).mean() >= 0.8
    mse_ref = np.mean((ref.predict(Xt) - yt) ** 2)
    assert np.mean((est.predict(Xt) - yt) ** 2) <= 1.15 * mse_ref


def test_auto_keeps_the_full_kernel_longer_for_the_regressor():
    """The regressor's subset path is slower than its full kernel where both fit in memory, so
    "auto" keeps the full kernel up to 2 GiB of float64 kernel; the classifier switches at 5,000."""
    from sparsekit.sbl import DQNSBLClassifier

    reg, clf = DQNSBLRegressor(kernel="rbf"), DQNSBLClassifier()
    assert not kb.use_subset(reg, 6000, "gaussian")
    assert kb.use_subset(clf, 6000, "bernoulli")
    assert kb.use_subset(reg, 20000, "gaussian")
    assert kb.FULL_KERNEL_MAX_REGRESSION**2 * 8 <= 2 * 2**30
