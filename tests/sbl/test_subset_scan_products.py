"""The subset path's scans and pool sweeps compute the add test from one fused pass over each
kernel block (``_kernel_basis.block_scaling``, ``_kernels.block_column_stats``,
``_readmission.dense_column_products``): the scale is applied to the products, not to a copy of
the block. These tests hold them to a plain numpy re-implementation of the scaled-copy algebra
(the code before the fused pass): the same scaling, the same ``s`` and ``q`` per candidate and
class, the same chosen samples, and whole subset fits (classifier and regressor) that end in the
same model to rounding.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification, make_friedman1
from sklearn.preprocessing import StandardScaler

import sparsekit.sbl._kernel_basis as kb
import sparsekit.sbl._readmission as ra
from sparsekit.sbl import DQNSBLClassifier, DQNSBLRegressor
from sparsekit.sbl._design import DesignMatrix, column_scaling, moment_divisor
from sparsekit.sbl._kernels import FLUSH64
from sparsekit.sbl._readmission import choose_additions, sweep_terms

from . import naive

REAL_SCORE_CLASS = ra.score_class


# ---------------------------------------------------------------- plain numpy references
def reference_scan_blocks(subset, design, *, center):
    """The scan blocks as scaled copies: ``(js, Phi_js, inv_scale)`` per block (numpy only)."""
    sw = subset.sw
    others = np.setdiff1d(subset.candidates_all, subset.pool)
    for start in range(0, others.size, kb.SCAN_BLOCK):
        js = others[start : start + kb.SCAN_BLOCK]
        raw = np.asarray(subset._kernel(js), dtype=np.float64)
        d = moment_divisor(np.abs(raw).max(axis=0))
        mean, ssd = naive.weighted_column_moments(raw / d, sw)
        offset, s, constant = column_scaling(
            mean,
            ssd,
            design.weight_sum,
            d,
            center=center,
            intercept_column=design.intercept_column,
        )
        keep = ~constant
        blk = raw[:, keep] - (offset[keep] if center else 0.0)
        if keep.any():
            yield js[keep], blk * s[keep], s[keep]


def reference_scan_factors(subset, design, state, T, sw):
    """``{(class, sample): (s, q)}`` of the add test for every sample outside the pool, from the
    scaled columns; and the reference blocks' inverse scales."""
    Bw, R, models, _excluded = sweep_terms(design, state, T, sw)
    out, inv = {}, {}
    for js, phi, s in reference_scan_blocks(subset, design, center=False):
        inv.update(zip(js.tolist(), s.tolist()))
        for k, (BP, S) in enumerate(models):
            C = phi.T @ BP
            sk = (phi * phi).T @ Bw[:, k] - np.einsum("ij,ij->i", C @ S, C)
            qk = phi.T @ R[:, k]
            out.update({(k, int(j)): (a, b) for j, a, b in zip(js, sk, qk)})
    return out, inv


def reference_scan(self, design, state, T, sw, threshold_lambda):
    """``KernelSubset.scan`` from the scaled copies of the kernel blocks."""
    self.n_scans += 1
    K = T.shape[1]
    _Bw, _R, _models, excluded = sweep_terms(design, state, T, sw)
    factors, inv = reference_scan_factors(self, design, state, T, sw)
    found = [[] for _ in range(K)]
    for k in range(K):
        js = np.array(sorted(j for kk, j in factors if kk == k), dtype=np.intp)
        if js.size:
            s, q = np.array([factors[k, int(j)] for j in js]).T
            REAL_SCORE_CLASS(k, js, s, q, excluded, threshold_lambda, found)
    chosen = choose_additions(found, design, per_class=kb.class_scan_additions(self.m0))
    new = np.array(sorted({j for j, _k, _lam in chosen}), dtype=np.intp)
    if not new.size:
        return 0
    design.inv_scale[new] = [inv[j] for j in new.tolist()]
    self.pool = np.union1d(self.pool, new)
    return new.size


def reference_terms_phi(design, candidates, js, Bw, R):
    """``_readmission._block_terms`` from the scaled (and centred) columns (numpy only): the
    columns ``phi`` themselves, unit scales, no offset correction."""
    raw = candidates.raw(js)
    dense = raw.toarray() if sp.issparse(raw) else np.asarray(raw, dtype=np.float64)
    phi = (dense - design.offset[js]) * design.inv_scale[js]
    return phi, np.ones(js.size), None, (phi * phi).T @ Bw, phi.T @ R


# ---------------------------------------------------------------- data
def _classification(n, classes=2, scale=1.0, seed=0):
    X, y = make_classification(
        n_samples=n,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return X * scale, y


CASES = {
    # RBF, binary and one-vs-rest
    "rbf-binary": (dict(gamma=0.2), 2, 1.0),
    "rbf-ovr3": (dict(gamma=0.2), 3, 1.0),
    # poly of degree 3 on features of size ~1e20: kernel values ~1e120, moment_divisor != 1
    "poly-huge": (dict(kernel="poly", degree=3, gamma=1.0, coef0=1.0), 2, 1e20),
    # ... and on features of size ~1e-20 (coef0 0): values ~1e-120, moment_divisor != 1 too
    "poly-tiny": (dict(kernel="poly", degree=3, gamma=1.0, coef0=0.0), 3, 1e-20),
}


@pytest.fixture
def small_scan_blocks(small_pool, monkeypatch):
    """small_pool (40 samples, scan blocks of 32): many scans and blocks on small data."""


# ---------------------------------------------------------------- the scan's factors
@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_factors_and_choices_match_the_scaled_columns(case, small_scan_blocks, monkeypatch):
    """At every scan of a subset fit: ``s`` and ``q`` of every (class, sample) outside the pool
    equal the scaled-copy reference's to rounding, and the scan adds exactly the samples the
    reference's add test chooses, with the reference's inverse scales."""
    params, classes, scale = CASES[case]
    X, y = _classification(240, classes, scale)
    real_scan = kb.KernelSubset.scan
    seen = {}
    checked = []

    def recording_score_class(k, js, s, q, excluded, threshold_lambda, found):
        seen.update({(k, int(j)): (a, b) for j, a, b in zip(js, s, q)})
        return REAL_SCORE_CLASS(k, js, s, q, excluded, threshold_lambda, found)

    def checking(self, design, state, T, sw, threshold_lambda):
        factors, _inv = reference_scan_factors(self, design, state, T, sw)
        ref_self = kb.KernelSubset.__new__(kb.KernelSubset)
        ref_self.__dict__.update(self.__dict__)
        ref_design = DesignMatrix.__new__(DesignMatrix)
        ref_design.__dict__.update(design.__dict__)
        ref_design.inv_scale = design.inv_scale.copy()
        expected = reference_scan(ref_self, ref_design, state, T, sw, threshold_lambda)
        seen.clear()
        monkeypatch.setattr(ra, "score_class", recording_score_class)
        added = real_scan(self, design, state, T, sw, threshold_lambda)
        monkeypatch.setattr(ra, "score_class", REAL_SCORE_CLASS)
        assert set(seen) == set(factors)
        got = np.array([seen[key] for key in sorted(factors)])
        ref = np.array([factors[key] for key in sorted(factors)])
        assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
        assert added == expected
        assert_array_equal(self.pool, ref_self.pool)
        assert_allclose(design.inv_scale, ref_design.inv_scale, rtol=1e-12)
        checked.append(added)
        return added

    monkeypatch.setattr(kb.KernelSubset, "scan", checking)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DQNSBLClassifier(kernel_basis="subset", **params).fit(X, y)
    assert len(checked) >= 2 and checked[0] > 0


# ---------------------------------------------------------------- block scaling
def _awkward_block(dtype):
    """A C-ordered block with ordinary, constant, all-zero and shifted columns, and for float64
    huge (squares overflow) and tiny (squares underflow) ones."""
    rng = np.random.default_rng(3)
    raw = rng.uniform(0.0, 1.0, size=(57, 7))
    raw[:, 1] *= 1e120
    raw[:, 2] *= 1e-120
    raw[:, 3] = 0.7
    raw[:, 4] = 0.0
    raw[:, 5] -= 3.0
    if dtype == np.float32:
        raw = raw[:, [0, 3, 4, 5, 6]]
    return np.ascontiguousarray(raw, dtype=dtype)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_scaling_matches_the_scaled_copy(center, dtype):
    """``block_scaling``'s inverse scales, kept columns and products, applied to its base, are
    those of the scaled (and centred) copy of the block, huge and tiny columns included."""
    raw = _awkward_block(dtype)
    n = raw.shape[0]
    rng = np.random.default_rng(4)
    sw = rng.uniform(0.2, 2.0, n)
    Bw, R = rng.uniform(0, 0.25, (n, 3)), rng.normal(size=(n, 3))
    design = DesignMatrix(np.ones((n, 1)) + rng.normal(size=(n, 1)), sw, center=center,
                          intercept_column=not center)  # fmt: skip
    base, inv_scale, scale, offset, keep, sq, qr = kb.block_scaling(
        raw, sw, Bw, R, design, center=center
    )
    r64 = raw.astype(np.float64)
    d = moment_divisor(np.abs(r64).max(axis=0))
    mean, ssd = naive.weighted_column_moments(r64 / d, sw)
    ref_off, ref_s, constant = column_scaling(
        mean, ssd, design.weight_sum, d, center=center, intercept_column=not center
    )
    assert_array_equal(keep, ~constant)
    assert_allclose(inv_scale[keep], ref_s[keep], rtol=1e-12)
    phi = (r64[:, keep] - ref_off[keep]) * ref_s[keep]
    got = (np.asarray(base, dtype=np.float64)[:, keep] - offset[keep]) * scale[keep]
    assert_allclose(got, phi, rtol=1e-12, atol=1e-12)
    if not center:
        assert_allclose(sq[keep] * scale[keep, None] ** 2, (phi * phi).T @ Bw, rtol=1e-12)
        assert_allclose(qr[keep] * scale[keep, None], phi.T @ R, rtol=1e-12, atol=1e-12)


def test_block_scaling_moments_are_the_designs():
    """The fused pass sums in ``weighted_column_moments``' order: the same bits."""
    from sparsekit.sbl._kernels import block_column_stats, weighted_column_moments

    rng = np.random.default_rng(5)
    raw = rng.uniform(size=(301, 40))
    sw = rng.uniform(0.5, 1.5, 301)
    none = np.zeros((301, 0))
    _amax, mean, ssd, _sq, _qr = block_column_stats(raw, sw, none, none)
    ref_mean, ref_ssd = weighted_column_moments(np.asfortranarray(raw), sw)
    assert_array_equal(mean, ref_mean)
    assert_array_equal(ssd, ref_ssd)


@pytest.mark.parametrize(
    "params",
    [
        dict(kernel="rbf", gamma=0.3),
        dict(kernel="rbf", gamma=None),
        dict(kernel="rbf", gamma=None, kernel_params={"gamma": 2.0}),
        dict(kernel="rbf", gamma=8.0),  # many entries below FLUSH64: 0 in both
        dict(kernel="poly", degree=2, gamma=0.5),
    ],
)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("n", [150, 1100])  # one product; runs of rows (utils._threads.row_runs)
def test_scan_kernel_is_kernel_block(params, order, n):
    """The scans' own RBF kernel block is scikit-learn's, bit for bit (same Gram product,
    norms, order of operations and exp, in the same runs of rows); other kernels, and
    F-ordered X, go through kernel_block."""
    rng = np.random.default_rng(7)
    X = np.asarray(rng.normal(size=(n, 4)) * 3, order=order)
    est = DQNSBLClassifier(**params)
    gamma_ = params.get("gamma") or (1.0 / X.shape[1])
    subset = kb.KernelSubset(est, X, np.ones(n), gamma_)
    assert (subset._rbf is not None) == (params["kernel"] == "rbf" and order == "C")
    js = np.array([0, 5, 7, 33, 149])
    got = subset._scan_kernel(js)
    assert_array_equal(got, kb.kernel_block(est, X, X[js], gamma_))
    assert got.flags.c_contiguous
    assert not np.any((got != 0) & (np.abs(got) < FLUSH64))
    if params.get("gamma") == 8.0:
        assert np.mean(got == 0) > 0.2


# ---------------------------------------------------------------- pool sweeps
@pytest.mark.parametrize("layout", ["F", "C", "sparse"])
@pytest.mark.parametrize("offset", [False, True])
def test_block_terms_match_the_scaled_columns(layout, offset):
    """``_block_terms``'s ``phi' B phi``, ``phi' sw (t - p)`` and (through ``_score``) ``s`` per
    candidate equal the scaled columns' for column- and row-major blocks and sparse ones, with
    and without centring offsets."""
    rng = np.random.default_rng(6)
    n, M = 83, 12
    B = rng.uniform(size=(n, M)) * rng.uniform(0.5, 50, M)
    if layout == "sparse":
        B[B < 20] = 0.0
        B = sp.csr_matrix(B)
    elif layout == "C":
        B = np.ascontiguousarray(B)
    else:
        B = np.asfortranarray(B)
    sw = rng.uniform(0.5, 1.5, n)
    design = DesignMatrix(B, sw, center=offset, intercept_column=not offset)
    dense = B.toarray() if sp.issparse(B) else B

    class Source:
        def raw(self, js):
            if layout == "F":
                return np.asfortranarray(dense[:, js])
            return B[:, js] if layout == "sparse" else np.ascontiguousarray(dense[:, js])

    Bw, R = rng.uniform(0, 0.25, (n, 2)), rng.normal(size=(n, 2))
    js = np.flatnonzero(design.inv_scale > 0)
    got = ra._block_terms(design, Source(), js, Bw, R)
    ref = reference_terms_phi(design, Source(), js, Bw, R)
    assert_allclose(got[3], ref[3], rtol=1e-12)
    assert_allclose(got[4], ref[4], rtol=1e-11, atol=1e-11 * np.abs(ref[4]).max())
    P = rng.normal(size=(n, 3))
    models = [(Bw[:, [k]] * P, np.eye(3) * 0.1) for k in range(2)]
    excluded = np.zeros((2, M), dtype=bool)
    out = {}
    for terms, key in ((got, "got"), (ref, "ref")):
        found = [[] for _ in range(2)]
        ra._score(js, *terms, models, excluded, 1e12, found)
        out[key] = [np.concatenate(a) if a else None for f in found for a in zip(*f)]
    for a, b in zip(out["got"], out["ref"]):
        assert_allclose(a, b, rtol=1e-10)


# ---------------------------------------------------------------- whole fits
def _reference_fit_patches(monkeypatch):
    monkeypatch.setattr(kb.KernelSubset, "scan", reference_scan)
    monkeypatch.setattr(ra, "_block_terms", reference_terms_phi)


def _assert_scaled_copy_fit(X, y, monkeypatch):
    """The subset fit and the fit with the scaled-copy scans and sweeps: the same relevance
    vectors and iterations, coefficients and intercepts to 1e-8."""
    params = dict(gamma=0.2, kernel_basis="subset")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = DQNSBLClassifier(**params).fit(X, y)
        with monkeypatch.context() as m:
            _reference_fit_patches(m)
            ref = DQNSBLClassifier(**params).fit(X, y)
    assert new.n_iter_ == ref.n_iter_
    assert_array_equal(new.relevance_, ref.relevance_)
    assert_allclose(new.dual_coef_, ref.dual_coef_, rtol=1e-8, atol=1e-8)
    assert_allclose(new.intercept_, ref.intercept_, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("classes", [2, 3])
def test_subset_fit_is_the_scaled_copy_fit(classes, monkeypatch):
    """A whole subset fit (n = 600, the default pool of 500 and two scans' worth of other
    samples) ends in the model of the scaled-copy scans and sweeps: the same relevance
    vectors and iterations, coefficients to 1e-8."""
    _assert_scaled_copy_fit(*_classification(600, classes, seed=2), monkeypatch)


def test_subset_fit_with_a_small_pool_is_the_scaled_copy_fit(small_pool, monkeypatch):
    """The same with a pool of 40 of 300 samples: several scans add samples."""
    _assert_scaled_copy_fit(*_classification(300, 2, seed=1), monkeypatch)


def reference_gaussian_scan(subset, design, state, t, threshold_lambda):
    """The regressor's scan from the scaled copies (numpy only): ``S_i`` from
    ``phi_i' SW phi_i``, ``C_i`` and ``Q_i`` from the scaled columns; returns the samples the
    add test chooses and ``{sample: (S_i, Q_i)}``."""
    Bw, r, Sigma, beta = subset.gaussian_terms(design, state, t)
    small = kb.CONSTRUCTIVE_GAIN_TOL * design.weight_sum
    factors, js_all, gains = {}, [], []
    for js, blk, _s in reference_scan_blocks(subset, design, center=True):
        C = blk.T @ Bw
        S = beta * ((blk * blk).T @ subset.sw) - beta**2 * np.einsum("ij,jk,ik->i", C, Sigma, C)
        Q = beta * (blk.T @ r)
        factors.update(zip(js.tolist(), zip(S.tolist(), Q.tolist())))
        theta = Q * Q - S
        good = (S > 0) & (theta > 0) & (theta * threshold_lambda > S * S)
        gain = kb.addition_gain(S[good], Q[good])
        js_all.append(js[good][gain > small])
        gains.append(gain[gain > small])
    if not js_all:
        return np.zeros(0, dtype=np.intp), factors
    js_all, gains = np.concatenate(js_all), np.concatenate(gains)
    best = np.argsort(-gains, kind="stable")[: kb.scan_additions(subset.m0)]
    return np.sort(js_all[best]), factors


def _reference_scan(subset, design, state, t, threshold_lambda):
    """KernelSubset.gaussian_scan by the reference."""
    subset.n_scans += 1
    return reference_gaussian_scan(subset, design, state, t, threshold_lambda)[0]


def test_regressor_gaussian_scan_is_the_scaled_copy_scan(small_pool, monkeypatch):
    """The regressor's Gaussian scan (centred blocks whose scale is applied to the products, and
    phi' SW phi = wsum) yields the reference's scaled columns, gives the scaled-copy reference's
    S and Q to rounding at every scan and adds the samples the reference chooses; its subset fit
    ends in the reference's model."""
    X, y = make_friedman1(n_samples=300, noise=1.0, random_state=0)
    X = StandardScaler().fit_transform(X)
    real_scan = kb.KernelSubset.gaussian_scan
    real_blocks = kb.KernelSubset.centred_scan_blocks
    compared = []

    def checking_blocks(self, design):
        got = list(real_blocks(self, design))
        ref = list(reference_scan_blocks(self, design, center=True))
        assert len(got) == len(ref)
        for (js, base, scale), (rjs, rphi, _rs) in zip(got, ref):
            assert_array_equal(js, rjs)
            assert_allclose(base * scale, rphi, rtol=1e-10, atol=1e-10)
            self._factors_seen.update(js.tolist())
        yield from got

    def checking_scan(self, design, state, t, threshold_lambda):
        want, factors = reference_gaussian_scan(self, design, state, t, threshold_lambda)
        self._factors_seen = set()
        got = real_scan(self, design, state, t, threshold_lambda)
        assert self._factors_seen == set(factors)
        Bw, r, Sigma, beta = self.gaussian_terms(design, state, t)
        for js, base, scale in real_blocks(self, design):
            phi = base * scale
            C = phi.T @ Bw
            S = beta * design.weight_sum - beta**2 * np.einsum("ij,jk,ik->i", C, Sigma, C)
            ref = np.array([factors[j] for j in js.tolist()])
            assert_allclose(S, ref[:, 0], rtol=1e-9, atol=1e-9 * beta * design.weight_sum)
            assert_allclose(beta * (phi.T @ r), ref[:, 1], rtol=1e-9, atol=1e-9)
        assert_array_equal(got, want)
        compared.append(got.size)
        return got

    params = dict(kernel="rbf", gamma=0.1, kernel_basis="subset")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with monkeypatch.context() as m:
            m.setattr(kb.KernelSubset, "centred_scan_blocks", checking_blocks)
            m.setattr(kb.KernelSubset, "gaussian_scan", checking_scan)
            new = DQNSBLRegressor(**params).fit(X, y)
        with monkeypatch.context() as m:
            m.setattr(kb.KernelSubset, "gaussian_scan", _reference_scan)
            ref = DQNSBLRegressor(**params).fit(X, y)
    assert len(compared) > 1 and sum(compared) > 0
    assert new.n_iter_ == ref.n_iter_
    assert_array_equal(new.relevance_, ref.relevance_)
    assert_allclose(new.dual_coef_, ref.dual_coef_, rtol=1e-8, atol=1e-8)
