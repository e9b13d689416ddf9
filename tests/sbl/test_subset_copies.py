"""The exact phase of the subset path without per-iteration copies of the basis (issue 9).

The exact step's ``[1 | Phi_A]`` is kept in ``PathState.dense_basis`` (``_design.DenseBasis``)
while the design's active set is the one it was built from, and the re-admission sweep of the same
iteration (``_readmission.sweep_terms``) and later exact steps use it; ``B Phi_A`` is formed from
the design's column-major buffer (``_readmission._weighted_columns``); the pool cache is filled in
row blocks (``_readmission._fill_columns``); the Newton loop after the chord steps starts from
their last gradient (``_classifier_kernels.laplace_newton_bernoulli_blas``). These tests hold each
to a plain numpy computation, at every iteration of real subset fits in which bases are deleted and
added between sweeps, and hold whole fits to the code before the change (forced here) bit for bit.
"""

import copy
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal
from scipy.linalg import cho_solve
from scipy.linalg.lapack import dpotri
from scipy.special import expit
from sklearn.datasets import make_classification

import sparsekit.sbl._classifier_kernels as CK
import sparsekit.sbl._classifier_solver as cs
import sparsekit.sbl._kernel_basis as kb
import sparsekit.sbl._readmission as ra
from sparsekit.sbl import DQNSBLClassifier
from sparsekit.sbl._design import (
    DenseBasis,
    DesignMatrix,
    dense_basis,
    dense_matvec,
    dense_rmatvec,
)
from sparsekit.sbl._engine import PathState

REAL_SWEEP_TERMS = ra.sweep_terms
REAL_DENSE_BASIS = cs.held_dense_basis
REAL_BLAS_NEWTON = CK.laplace_newton_bernoulli_blas


# ---------------------------------------------------------------- plain numpy references
def fresh_basis(design):
    """``[1 | Phi_A]`` copied from the design now, as the sweep formed it (numpy only)."""
    Pa = np.asarray(design.dense_active(), dtype=np.float64)
    if design.intercept_column:
        return np.hstack([np.ones((design.n_samples, 1)), Pa])
    return Pa


def old_dense_basis(design):
    """``[1 | Phi_A]`` copied from the design now, as the exact step formed it."""
    Pa = np.asarray(design.dense_active(), dtype=np.float64)
    if design.intercept_column:
        return np.hstack([np.ones((design.n_samples, 1)), Pa])
    return np.ascontiguousarray(Pa)


def reference_sweep_terms(design, state, T, sw):
    """``sweep_terms`` (one-vs-rest) from a fresh copy of the basis."""
    Phi = fresh_basis(design)
    P = expit(Phi @ state.coef)
    Bw = sw[:, None] * P * (1.0 - P)
    R = sw[:, None] * (T - P)
    models = [(Bw[:, k : k + 1] * Phi[:, idx], S) for k, (idx, S) in enumerate(state.sigma_full)]
    return Bw, R, models, ra.excluded_bases(design, state)


def reference_newton_blas(Phi, t, sw, w, lam, max_iter, gtol, small_step, c1, G0=None):
    """``laplace_newton_bernoulli_blas`` as it was before issue 9: every Newton iteration,
    the first included, recomputes the terms and the gradient. Its products with ``Phi`` are
    today's (runs of rows, ``dense_matvec``, ``weighted_gram_runs``): arithmetic, which these
    tests do not compare."""
    n, m = Phi.shape
    w = np.array(w, dtype=np.float64)
    z = dense_matvec(Phi, w)
    p, r, b = np.empty(n), np.empty(n), np.empty(n)
    if G0 is not None and G0.shape == (m, m):
        Hc = np.array(G0, dtype=np.float64)
        Hc[np.diag_indices(m)] += lam
        Lc, _jitter = CK._factor_jittered(Hc)
        gprev = np.inf
        for _ in range(CK.CHORD_MAX_ITER if Lc is not None else 0):
            loss = CK._bernoulli_terms(z, t, sw, p, r, b)
            g = dense_rmatvec(Phi, r) + lam * w
            gmax = float(np.max(np.abs(g), initial=0.0))
            if gmax <= CK.CHORD_GTOL * gtol or gmax > CK.CHORD_RATE * gprev:
                break
            gprev = gmax
            step = -cho_solve((Lc, True), g, check_finite=False)
            dz = dense_matvec(Phi, step)
            eta = CK._armijo(z, dz, w, step, lam, t, sw, loss, float(g @ step), c1)
            if eta == 0.0:
                break
            w += eta * step
            z += eta * dz
    status, loss, L, Gd = 1, 0.0, None, None
    for it in range(max_iter + 1):
        loss = CK._bernoulli_terms(z, t, sw, p, r, b)
        g = dense_rmatvec(Phi, r) + lam * w
        Gd = CK.weighted_gram_runs(Phi, b)
        G = Gd.copy()
        G[np.diag_indices(m)] += lam
        L, jitter = CK._factor_jittered(G)
        if L is None:
            return w, loss, np.full((m, m), np.nan), np.nan, -1, None
        if float(np.max(np.abs(g), initial=0.0)) <= gtol:
            status = 2 if jitter > 0.0 else 0
            break
        if it == max_iter:
            break
        step = -cho_solve((L, True), g, check_finite=False)
        dz = dense_matvec(Phi, step)
        if float(np.max(np.abs(step))) <= small_step * max(1.0, float(np.max(np.abs(w)))):
            w += step
            z += dz
            loss = CK._bernoulli_loss(z, t, sw)
            status = 2 if jitter > 0.0 else 0
            break
        eta = CK._armijo(z, dz, w, step, lam, t, sw, loss, float(g @ step), c1)
        if eta == 0.0:
            status = 2 if jitter > 0.0 else 0
            break
        w += eta * step
        z += eta * dz
    logdet = 2.0 * float(np.sum(np.log(np.diag(L))))
    S, _info = dpotri(L, lower=1)
    S = np.tril(S)
    return w, loss, S + np.tril(S, -1).T, logdet, status, (Gd, b)


def force_old_code(monkeypatch):
    """The subset path as before issue 9: a fresh [1 | Phi_A] at every exact step and sweep,
    ``B Phi_A`` by a fancy index of it, one assignment into the pool cache, the Newton loop's
    first gradient recomputed."""
    monkeypatch.setattr(DenseBasis, "get", lambda self, design: dense_basis(design))
    monkeypatch.setattr(
        ra, "_weighted_columns", lambda design, Phi, idx, b: b[:, None] * Phi[:, idx]
    )
    monkeypatch.setattr(
        ra, "_fill_columns", lambda full, pos, cols: full.__setitem__((slice(None), pos), cols)
    )
    monkeypatch.setattr(CK, "laplace_newton_bernoulli_blas", reference_newton_blas)


# ---------------------------------------------------------------- data and fits
def _data(n, classes, seed):
    X, y = make_classification(
        n_samples=n,
        n_features=8,
        n_informative=5,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return X, y


CASES = {"binary": (700, 2, 0, 0.1), "ovr3": (600, 3, 1, 0.1)}


def _fit(case, **params):
    n, classes, seed, gamma = CASES[case]
    X, y = _data(n, classes, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DQNSBLClassifier(gamma=gamma, kernel_basis="subset", **params).fit(X, y)


@pytest.fixture
def pool_of_60(monkeypatch):
    """A starting pool of 60 samples (scans then add to it; pool sweeps delete and re-add), and
    the BLAS Newton solver (with its chord steps) at these small sizes."""
    monkeypatch.setattr(kb, "SUBSET_MIN", 60)
    monkeypatch.setattr(kb, "SUBSET_MAX", 60)
    monkeypatch.setattr(CK, "BLAS_MIN_WORK", 0)
    monkeypatch.setattr(CK, "CHORD_MIN_WORK", 0)


# ---------------------------------------------------------------- DenseBasis
def _design(sparse=False, intercept=True, dtype=np.float64, n=50, m=9, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(n, m)).astype(dtype)
    if sparse:
        B[rng.random(B.shape) < 0.6] = 0.0
        B = sp.csc_matrix(B)
    return DesignMatrix(B, np.ones(n), center=False, intercept_column=intercept)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("intercept", [True, False])
def test_dense_basis_follows_every_change_of_the_design(sparse, intercept):
    design = _design(sparse=sparse, intercept=intercept)
    cache = DenseBasis()
    first = cache.get(design)
    assert_array_equal(first, old_dense_basis(design))
    assert first.dtype == np.float64
    assert first.flags.f_contiguous == old_dense_basis(design).flags.f_contiguous
    assert first.flags.c_contiguous == old_dense_basis(design).flags.c_contiguous
    assert cache.get(design) is first  # unchanged design: served without a copy
    keep = np.ones(design.n_active, dtype=bool)
    keep[[2, 5]] = False
    raw = (design.dense_active()[:, [2, 5]] if not sparse else None, design.active[[2, 5]])
    design.compact(keep)  # a delete
    after_delete = cache.get(design)
    assert after_delete is not first
    assert_array_equal(after_delete, old_dense_basis(design))
    js = raw[1]
    cols = np.asarray(_design(sparse=False, intercept=intercept, seed=1).dense_active()[:, :2])
    design.insert_columns(js, cols)  # an addition (other numbers in the same positions)
    after_insert = cache.get(design)
    assert after_insert is not after_delete
    assert after_insert.shape == first.shape
    assert_array_equal(after_insert, old_dense_basis(design))
    other = design.copy_active()  # the same active set in another design: not this entry
    assert cache.get(other) is not after_insert
    assert_array_equal(cache.get(other), old_dense_basis(design))


def test_dense_basis_of_a_float32_design_is_float64():
    design = _design(dtype=np.float32)
    assert_array_equal(DenseBasis().get(design), old_dense_basis(design))
    assert DenseBasis().get(design).dtype == np.float64


def test_a_deep_copy_of_the_state_starts_without_a_basis():
    design = _design()
    state = PathState(np.zeros((design.n_coef, 1)), np.ones((design.n_coef, 1)))
    state.dense_basis.get(design)
    copied = copy.deepcopy(state)
    assert copied.dense_basis._basis is None
    assert state.dense_basis._basis is not None


# ---------------------------------------------------------------- B Phi_A, the cache fill
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("which", ["all", "some", "no-intercept-row", "one"])
def test_weighted_columns_are_the_product_of_the_copy(dtype, which):
    design = _design(dtype=dtype, n=300, m=12)
    Phi = fresh_basis(design)
    idx = {
        "all": np.arange(Phi.shape[1]),
        "some": np.array([0, 1, 4, 5, 11]),
        "no-intercept-row": np.array([2, 3, 7]),
        "one": np.array([0]),
    }[which]
    b = np.random.default_rng(3).random(300)
    got = ra._weighted_columns(design, Phi, idx, b)
    want = b[:, None] * Phi[:, idx]
    assert_array_equal(got, want)
    assert got.flags.f_contiguous == want.flags.f_contiguous
    assert got.flags.c_contiguous == want.flags.c_contiguous


@pytest.mark.parametrize("sparse,intercept", [(True, True), (False, False)])
def test_weighted_columns_of_other_designs(sparse, intercept):
    design = _design(sparse=sparse, intercept=intercept)
    Phi = fresh_basis(design)
    idx = np.arange(Phi.shape[1])
    b = np.linspace(0.1, 1.0, design.n_samples)
    assert_array_equal(ra._weighted_columns(design, Phi, idx, b), b[:, None] * Phi[:, idx])


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("n", [1, 511, 512, 1300])
def test_fill_columns_writes_every_row(order, n):
    rng = np.random.default_rng(0)
    cols = np.asarray(rng.normal(size=(n, 5)), order=order)
    pos = np.array([7, 2, 3, 9, 0])
    got = np.full((n, 12), np.nan, order="F")
    want = got.copy(order="F")
    ra._fill_columns(got, pos, cols)
    want[:, pos] = cols
    assert_array_equal(got, want)


# ---------------------------------------------------------------- inside real subset fits
@pytest.mark.parametrize("case", list(CASES))
def test_sweep_terms_equal_a_fresh_computation_at_every_sweep(case, pool_of_60, monkeypatch):
    """At every sweep of a subset fit (pool sweeps and scans), whether or not bases were
    deleted or added since the last exact step, the sweep's terms are those of a fresh copy of
    the basis; and every exact step's basis is the design's current one."""
    seen = {"sweeps": 0, "sweep_hits": 0, "steps": 0, "step_hits": 0, "step_stale": 0}

    def held(state, design):
        """Whether the state holds a basis, and whether it is the design's current one."""
        key = state.dense_basis._key
        return key is not None, key is not None and all(
            a is b for a, b in zip(key, DenseBasis._key_of(design))
        )

    def checked_sweep(design, state, T, sw, likelihood="bernoulli"):
        seen["sweeps"] += 1
        seen["sweep_hits"] += held(state, design)[1]
        got = REAL_SWEEP_TERMS(design, state, T, sw, likelihood)
        want = reference_sweep_terms(design, state, T, sw)
        for a, b in zip(got[:2], want[:2]):
            assert_array_equal(a, b)
        assert len(got[2]) == len(want[2])
        for (BP, S), (BP_ref, S_ref) in zip(got[2], want[2]):
            assert_array_equal(BP, BP_ref)
            assert BP.flags.f_contiguous == BP_ref.flags.f_contiguous
            assert S is S_ref
        assert_array_equal(got[3], want[3])
        return got

    def checked_basis(design, state=None):
        some, current = held(state, design)
        seen["step_hits"] += current
        seen["step_stale"] += some and not current
        Phi = REAL_DENSE_BASIS(design, state)
        assert_array_equal(Phi, old_dense_basis(design))
        seen["steps"] += 1
        return Phi

    monkeypatch.setattr(ra, "sweep_terms", checked_sweep)
    monkeypatch.setattr(kb, "sweep_terms", checked_sweep)
    monkeypatch.setattr(cs, "held_dense_basis", checked_basis)
    est = _fit(case)
    assert est.n_iter_ > 50
    # every sweep used the basis of the exact step before it; exact steps used the last one's
    # when the design had not changed, and rebuilt it after deletes and additions
    assert seen["sweeps"] > 10 and seen["sweep_hits"] == seen["sweeps"]
    assert seen["step_hits"] > 10 and seen["step_stale"] > 10


@pytest.mark.parametrize("case", list(CASES))
def test_subset_fit_is_the_fit_before_the_change(case, pool_of_60, monkeypatch):
    """A whole subset fit ends in the same model, bit for bit, as with the code before issue 9
    (forced by :func:`force_old_code`): the same relevance vectors, coefficients, evidence path
    and decision values."""
    new = _fit(case)
    with monkeypatch.context() as mp:
        force_old_code(mp)
        old = _fit(case)
    assert new.n_iter_ == old.n_iter_
    assert_array_equal(new.relevance_vectors_, old.relevance_vectors_)
    assert_array_equal(new.scores_, old.scores_)
    X, _y = _data(*CASES[case][:3])
    assert_array_equal(new.decision_function(X), old.decision_function(X))


def test_newton_after_chord_steps_is_the_old_loop(monkeypatch):
    """The BLAS Newton solve with chord steps returns what the loop that recomputed the first
    gradient returned, for chord runs that end at their tolerance, at their rate test, at their
    iteration cap (then the last gradient is stale: recomputed) and without a step; with one
    pass of the likelihood terms fewer where the chord steps ended at a test."""
    rng = np.random.default_rng(5)
    n, m = 400, 12
    Phi = np.ascontiguousarray(rng.normal(size=(n, m)))
    t = (rng.random(n) < expit(Phi @ rng.normal(size=m))).astype(float)
    sw = np.ones(n)
    lam = np.full(m, 0.5)
    gtol = 1e-8 * n  # the exact step's tolerance
    mode = REAL_BLAS_NEWTON(Phi, t, sw, np.zeros(m), lam, 50, gtol, 1e-12, 1e-4)
    w_mode, G_mode = mode[0], mode[5][0]
    terms = []
    real_terms = CK._bernoulli_terms
    monkeypatch.setattr(CK, "_bernoulli_terms", lambda *a: (terms.append(1), real_terms(*a))[1])
    starts = {
        "near the mode (tolerance)": (w_mode + 1e-3, G_mode),
        "far (rate)": (np.zeros(m), G_mode),
        "at the mode": (w_mode, G_mode),
        "poor chord matrix": (np.zeros(m), G_mode * 0.05),
        "slow chord steps (cap)": (np.zeros(m), G_mode * 0.7),
    }
    calls = {}
    for name, (w0, G0) in starts.items():
        args = (Phi, t, sw, w0, lam, 50, gtol, 1e-12, 1e-4, G0)
        terms.clear()
        got = REAL_BLAS_NEWTON(*args)
        calls[name] = len(terms)
        terms.clear()
        want = reference_newton_blas(*args)
        # the chord steps' last gradient is the Newton loop's first unless a step followed it
        assert calls[name] == len(terms) - (0 if name.endswith("(cap)") else 1)
        for a, b in zip(got[:5], want[:5]):
            assert_array_equal(a, b)
        assert_array_equal(got[5][0], want[5][0])
        assert_array_equal(got[5][1], want[5][1])
    assert calls["slow chord steps (cap)"] > CK.CHORD_MAX_ITER
    assert calls["near the mode (tolerance)"] < CK.CHORD_MAX_ITER
