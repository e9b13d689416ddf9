"""Every numba kernel equals its readable numpy reference (tests/sbl/naive.py), for float64,
float32 and read-only inputs."""

import numpy as np
import pytest
import scipy.sparse as sp

from sparsekit.sbl import _dask_design as DD
from sparsekit.sbl import _kernels as K

from . import naive


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def Phi(request):
    rng = np.random.default_rng(0)
    return np.asfortranarray(rng.normal(size=(37, 11)).astype(request.param) * 3 + 1)


def _readonly(a):
    a = a.copy(order="K")
    a.setflags(write=False)
    return a


def _tol(a):
    return {"rtol": 1e-5, "atol": 1e-5} if a.dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("readonly", [False, True])
def test_weighted_column_moments(Phi, readonly):
    sw = np.random.default_rng(1).uniform(0, 2, Phi.shape[0])
    P = _readonly(Phi) if readonly else Phi
    mean, ssd = K.weighted_column_moments(P, sw)
    ref_mean, ref_ssd = naive.weighted_column_moments(Phi.astype(np.float64), sw)
    np.testing.assert_allclose(mean, ref_mean, **_tol(Phi))
    np.testing.assert_allclose(ssd, ref_ssd, **_tol(Phi))


@pytest.mark.parametrize("moments", [True, False])
@pytest.mark.parametrize("readonly", [False, True])
def test_block_column_stats(Phi, readonly, moments):
    """The fused row-major pass over a scan block (C-ordered; more columns than one thread's
    group, so several groups and a partial one), with and without the moments."""
    rng = np.random.default_rng(8)
    raw = np.ascontiguousarray(np.hstack([Phi] * 7)[:, :75])
    sw = rng.uniform(0, 2, raw.shape[0])
    Bw, R = rng.uniform(0, 0.25, (raw.shape[0], 3)), rng.normal(size=(raw.shape[0], 3))
    P = _readonly(raw) if readonly else raw
    got = K.block_column_stats(P, sw, Bw, R, moments)
    ref = naive.block_column_stats(raw.astype(np.float64), sw, Bw, R, moments)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, **_tol(raw))
    none = np.zeros((raw.shape[0], 0))
    _amax, _mean, ssd, sq, qr = K.block_column_stats(P, sw, none, none)  # K = 0 classes
    assert sq.shape == qr.shape == (75, 0)
    ref_ssd = naive.weighted_column_moments(raw.astype(np.float64), sw)[1]
    np.testing.assert_allclose(ssd, ref_ssd, **_tol(raw))


def test_rbf_exponent_inplace():
    """Bit for bit scikit-learn's squared-distance arithmetic, clipped at zero, times -gamma."""
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(41, 6)), rng.normal(size=(9, 6))
    Y[0] = X[3]  # a zero distance (rounding can make it negative before the clip)
    xx, yy = (X * X).sum(1), (Y * Y).sum(1)
    G = X @ Y.T
    ref = naive.rbf_exponent(G, xx, yy, -0.3)
    K.rbf_exponent_inplace(G, xx, yy, -0.3)
    np.testing.assert_array_equal(G, ref)
    assert G.max() <= 0.0


@pytest.mark.parametrize("readonly", [False, True])
def test_column_products(Phi, readonly):
    """Per-class products of a column-major block, given as its C-ordered transpose."""
    rng = np.random.default_rng(9)
    Bw, R = rng.uniform(0, 0.25, (Phi.shape[0], 2)), rng.normal(size=(Phi.shape[0], 2))
    P = _readonly(Phi.T) if readonly else Phi.T
    for a, b in zip(K.column_products(P, Bw, R), naive.column_products(Phi.T, Bw, R)):
        np.testing.assert_allclose(a, b, **_tol(Phi))


def test_row_range_kernels():
    """The row-range kernels behind column_products and float32_copy_range (one task of the fit's
    thread pool each) fill rows lo:hi only, as their references do."""
    rng = np.random.default_rng(12)
    rawT = rng.uniform(size=(9, 50))
    BwT, RT = rng.uniform(size=(2, 50)), rng.normal(size=(2, 50))
    got = [np.full((9, 2), -1.0) for _ in range(2)]
    ref = [np.full((9, 2), -1.0) for _ in range(2)]
    K._column_products_rows(rawT, BwT, RT, *got, 2, 7)
    naive.column_products_rows(rawT, BwT, RT, *ref, 2, 7)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)
        assert np.all(a[[0, 1, 7, 8]] == -1.0)
    A = rng.normal(size=(6, 11)) * 1e3
    A[3, 4] = np.nan
    A[4] = np.nan
    out = [np.zeros((6, 11), dtype=np.float32), np.zeros(6), np.zeros(6)]
    expect = [np.zeros((6, 11), dtype=np.float32), np.zeros(6), np.zeros(6)]
    K._float32_rows(A, *out, 1, 5)
    naive.float32_rows(A, *expect, 1, 5)
    for a, b in zip(out, expect):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "readonly"])
def test_flush_tiny(layout):
    """Entries below FLUSH64 (2^-511) in magnitude become 0, in place where it can write; NaN,
    the threshold itself and larger entries stay; other inputs come back as they are."""
    vals = [1e-300, -1e-200, 2.0**-511, -(2.0**-511), np.nextafter(2.0**-511, 0.0), 5e-324]
    A = np.arange(1.0, 61.0).reshape(6, 10)
    A[2, :6] = vals
    A[4, 3] = np.nan
    want = A.copy()
    want[2, :6] = [0.0, 0.0, 2.0**-511, -(2.0**-511), 0.0, 0.0]
    if layout == "F":
        A = np.asfortranarray(A)
    elif layout == "strided":  # neither C- nor F-contiguous: a flushed copy
        A, want = np.hstack([A, A])[:, ::2], np.hstack([want, want])[:, ::2]
    elif layout == "readonly":
        A = _readonly(A)
    if layout == "C":  # the row-range kernel against its reference, rows 1-4 only
        part, ref = A.copy(), A.copy()
        K._flush_rows(part, K.FLUSH64, 1, 4)
        naive.flush_rows(ref, K.FLUSH64, 1, 4)
        np.testing.assert_array_equal(part, ref)
        assert part[2, 0] == 0.0 and np.array_equal(part[[0, 4, 5]], A[[0, 4, 5]], equal_nan=True)
    got = K.flush_tiny(A)
    np.testing.assert_array_equal(got, want)
    if layout in ("C", "F"):
        assert got is A
    ints = np.arange(6).reshape(2, 3)
    assert K.flush_tiny(ints) is ints
    sparse = sp.csr_matrix(np.eye(3) * 1e-300)
    assert K.flush_tiny(sparse) is sparse


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
def test_float32_copy_range(readonly, order):
    """The block rounded to float32 (entries below FLUSH32 in magnitude to 0) and its smallest
    and largest entries, NaNs skipped; a column-major block is given as its C-ordered transpose,
    as the screen does."""
    rng = np.random.default_rng(11)
    A = rng.normal(size=(37, 11)) * 1e3
    A[3, 4] = np.nan
    A[5, :6] = [1e-40, -1e-30, 2.0**-63, -(2.0**-63), np.nextafter(2.0**-63, 0.0), 1e-300]
    A = np.asarray(A, order=order)
    B = A.T if order == "F" else A
    B = _readonly(B) if readonly else B
    got, ref = K.float32_copy_range(B), naive.float32_copy_range(B)
    np.testing.assert_array_equal(got[0], ref[0])
    row = got[0][5] if order == "C" else got[0][:, 5]
    # below 2^-63 in magnitude: 0 (no subnormal float32 input or product); 2^-63 itself stays
    assert list(row[:6]) == [0.0, 0.0, 2.0**-63, -(2.0**-63), 0.0, 0.0]
    assert got[0].dtype == np.float32 and got[0].flags.c_contiguous
    assert (got[1], got[2]) == (ref[1], ref[2])


@pytest.mark.parametrize("readonly", [False, True])
def test_dask_block_column_sums(Phi, readonly):
    """The per-chunk moment kernels of the dask design (sums, then squared deviations from the
    global mean)."""
    rng = np.random.default_rng(4)
    sw = rng.uniform(0, 2, Phi.shape[0])
    mean = rng.normal(size=Phi.shape[1])
    P = _readonly(Phi) if readonly else Phi
    np.testing.assert_allclose(
        DD._weighted_column_sums(P, sw), naive.weighted_column_sums(Phi, sw), **_tol(Phi)
    )
    np.testing.assert_allclose(
        DD._weighted_deviation_squares(P, sw, mean),
        naive.weighted_deviation_squares(Phi, sw, mean),
        **_tol(Phi),
    )


def test_center_scale_inplace(Phi):
    rng = np.random.default_rng(2)
    off = rng.normal(size=Phi.shape[1]).astype(Phi.dtype)
    inv = rng.uniform(0.5, 2, Phi.shape[1]).astype(Phi.dtype)
    ref = naive.center_scale(Phi, off, inv)
    work = Phi.copy(order="F")
    K.center_scale_inplace(work, off, inv)
    np.testing.assert_allclose(work, ref, **_tol(Phi))


@pytest.mark.parametrize("readonly", [False, True])
def test_weighted_sq_column_norms(Phi, readonly):
    b = np.random.default_rng(3).uniform(0, 1, Phi.shape[0])
    P = _readonly(Phi) if readonly else Phi
    np.testing.assert_allclose(
        K.weighted_sq_column_norms(P, b),
        naive.weighted_sq_column_norms(Phi.astype(np.float64), b),
        **_tol(Phi),
    )


@pytest.mark.parametrize("mode", [K.MACKAY, K.EM])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (1e-6, 1e-6), (0.5, 2.0)])
def test_reestimate_lambda(mode, l1, l2):
    rng = np.random.default_rng(4)
    m = 25
    mu = rng.normal(size=m)
    mu[3] = 0.0
    alpha = rng.uniform(0.1, 10, m)
    sigma = 1.0 / (rng.uniform(0, 5, m) + alpha)
    sigma[5] = 2.0 / alpha[5]  # gamma < 0 before clipping
    got = K.reestimate_lambda(mu, sigma, alpha, mode, l1, l2, 1e-12, 1e-12)
    ref = naive.reestimate_lambda(mu, sigma, alpha, mode, l1, l2, 1e-12, 1e-12)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-13)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-13)
    if mode == K.MACKAY and l2 == 0.0:
        assert np.isinf(got[0][3])  # a weight at exactly zero gets pruned


@pytest.mark.parametrize("readonly", [False, True])
def test_fast_ml_scores(readonly):
    """Tipping & Faul's action scores: additions, re-estimates, deletions and bases past the
    threshold all occur in the sample."""
    rng = np.random.default_rng(5)
    M, model = 40, np.array([1, 4, 9, 13, 22, 30, 31, 38])
    lam = rng.uniform(0.2, 5.0, model.size)
    S = rng.uniform(0.5, 3.0, M)
    S[model] = lam * rng.uniform(0.1, 0.9, model.size)  # S_i < lam_i for a model basis
    Q = 2.0 * rng.normal(size=M)
    Q[model[:2]] = 1e-3  # q^2 < s: deleted
    j, a = model[2], lam[2]
    s_j = a * S[j] / (a - S[j])  # q^2 just above s: precision past the threshold 30
    Q[j] = np.sqrt(s_j + s_j**2 / 60.0) * (a - S[j]) / a
    in_model = np.zeros(M, dtype=bool)
    in_model[model] = True
    args = [S, Q, model, lam, in_model]
    if readonly:
        args = [_readonly(a) for a in args]
    got = K.fast_ml_scores(*args, 30.0, 0.0)
    ref = naive.fast_ml_scores(S, Q, model, lam, in_model, 30.0)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    gain, lam_new = got[0], got[1]
    assert np.isfinite(gain[~in_model]).any() and np.isneginf(gain[~in_model]).any()
    assert np.isinf(lam_new).any() and np.isfinite(lam_new).any()
    assert np.isposinf(gain[model]).any()  # past the threshold with q^2 > s: pruned first


def _rounded_s_case():
    """Six candidates, three in the model: a model basis of precision ~1e-16 with S = 0, another
    with S < 0 (rounding), a candidate with S = 0, and candidates with S = 1 and 2."""
    M, model = 6, np.array([0, 2, 3])
    lam = np.array([4.8e-16, 1.0, 2.0])
    S = np.array([0.0, 1.0, 0.5, -1e-8, 0.0, 2.0])
    Q = np.array([-0.66, 3.0, 1.5, 0.2, 1.0, 4.0])
    in_model = np.zeros(M, dtype=bool)
    in_model[model] = True
    return S, Q, model, lam, in_model


def test_fast_ml_scores_where_rounding_zeroed_s():
    """A model basis of precision ~1e-16 over a column the model explains has S_j = lam -
    lam^2 Sigma_jj rounded to 0 (or below): it scores no action and keeps its precision, as does
    a candidate with S = 0, instead of a ZeroDivisionError from the numba kernel (RBF regression,
    make_regression(200, 3, noise=0.1, random_state=47), gamma 0.05)."""
    S, Q, model, lam, in_model = _rounded_s_case()
    got = K.fast_ml_scores(S, Q, model, lam, in_model, 1e9, 0.0)
    ref = naive.fast_ml_scores(S, Q, model, lam, in_model, 1e9)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    gain, lam_new = got[0], got[1]
    assert np.isneginf(gain[[0, 3, 4]]).all()  # s lost to rounding; a candidate with S = 0
    assert lam_new[0] == lam[0] and lam_new[2] == lam[2]
    assert np.isfinite(gain[[1, 5]]).all() and np.isfinite(gain[2])


def test_fast_ml_scores_floor_keeps_candidates_below_it_out():
    """``s_floor`` (the constructive path's S_FLOOR * beta * wsum): a candidate whose s is below
    it scores no action; candidates above it and the model bases score as without it."""
    S, Q, model, lam, in_model = _rounded_s_case()
    free = K.fast_ml_scores(S, Q, model, lam, in_model, 1e9, 0.0)
    got = K.fast_ml_scores(S, Q, model, lam, in_model, 1e9, 1.5)
    ref = naive.fast_ml_scores(S, Q, model, lam, in_model, 1e9, 1.5)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert np.isfinite(free[0][1]) and np.isneginf(got[0][1])  # S = 1.0 < 1.5
    assert got[0][5] == free[0][5] and np.isfinite(got[0][5])  # S = 2.0 stays
    np.testing.assert_array_equal(got[0][model], free[0][model])
    np.testing.assert_array_equal(got[1], free[1])


def test_compact_columns_inplace(Phi):
    keep = np.array([0, 2, 3, 7, 10])
    ref = naive.compact_columns(Phi, keep)
    work = Phi.copy(order="F")
    K.compact_columns_inplace(work, keep)
    np.testing.assert_array_equal(work[:, : keep.size], ref)


UPDATES = {
    "dbfgs": (K.dbfgs_update, naive.dbfgs_update),
    "psb": (K.psb_update, naive.psb_update),
}


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_diagonal_quasi_newton_updates(update):
    kernel, reference = UPDATES[update]
    rng = np.random.default_rng(5)
    for trial in range(20):
        d = rng.uniform(0.1, 3, 9)
        s = rng.normal(size=9)
        y = rng.normal(size=9) + (2.0 if trial % 2 else -2.0) * s
        ref, applied_ref = reference(d, s, y, 1e-10, 1e10, 1e-12)
        work = d.copy()
        applied = kernel(work, s, y, 1e-10, 1e10, 1e-12)
        assert applied == applied_ref
        np.testing.assert_allclose(work, ref, rtol=1e-12)


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_diagonal_updates_recover_a_diagonal_hessian(update):
    """On a diagonal quadratic (y = h * s) the true diagonal h is a fixed point of both updates
    and attracts them: from d = 1, 200 random steps recover h to 1e-6 (observed: 1e-8 to 1e-12
    for dBFGS). A tolerance of 50 % on the secant product would let a wrong sign through."""
    kernel = UPDATES[update][0]
    rng = np.random.default_rng(6)
    h = rng.uniform(0.5, 4, 7)
    d = h.copy()
    s = rng.normal(size=7)
    kernel(d, s, h * s, 1e-10, 1e10, 1e-12)
    np.testing.assert_allclose(d, h, rtol=1e-13)  # fixed point
    d = np.ones(7)
    for _ in range(200):
        s = rng.normal(size=7)
        kernel(d, s, h * s, 1e-10, 1e10, 1e-12)
    np.testing.assert_allclose(d, h, rtol=1e-6)
    s = rng.normal(size=7)
    assert abs(s @ (d * s) - s @ (h * s)) <= 1e-6 * (s @ (h * s))


def test_psb_satisfies_the_weak_secant_condition_exactly():
    """One PSB step makes s' D s = s' y (unless clipped): it is the least change that does."""
    rng = np.random.default_rng(8)
    for _ in range(10):
        d = rng.uniform(0.5, 2, 9)
        s = rng.normal(size=9)
        y = 1.5 * s + 0.1 * rng.normal(size=9)
        assert K.psb_update(d, s, y, 1e-10, 1e10, 1e-12)
        np.testing.assert_allclose(s @ (d * s), s @ y, rtol=1e-12)


def test_pure_python_kernels_match_compiled():
    """The kernels' Python bodies (what runs under NUMBA_DISABLE_JIT=1) agree with the compiled
    versions, so the two code paths cannot drift apart."""
    rng = np.random.default_rng(7)
    Phi = np.asfortranarray(rng.normal(size=(13, 5)))
    sw = rng.uniform(0.5, 1.5, 13)
    for name in ("weighted_column_moments", "weighted_sq_column_norms"):
        fn = getattr(K, name)
        for a, b in zip(np.atleast_2d(fn(Phi, sw)), np.atleast_2d(fn.py_func(Phi, sw))):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    mu, alpha = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    sig = 1 / (alpha + 1)
    for a, b in zip(
        K.reestimate_lambda(mu, sig, alpha, 0, 0.0, 0.0, 1e-12, 1e-12),
        K.reestimate_lambda.py_func(mu, sig, alpha, 0, 0.0, 0.0, 1e-12, 1e-12),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_csc_kernels(readonly, dtype):
    """The sparse basis's products (CSC triples) against dense products;
    scipy's own products are compared to the last bit in test_sparse_products.py."""
    import scipy.sparse as sp

    rng = np.random.default_rng(12)
    B = sp.random(41, 17, density=0.3, format="csc", random_state=rng, dtype=dtype)
    keep = np.ones(17, dtype=dtype)
    keep[5] = 0.0  # an empty column
    B = sp.csc_matrix(B @ sp.diags(keep))
    B.eliminate_zeros()
    ptr, idx, dat = (_readonly(a) if readonly else a for a in (B.indptr, B.indices, B.data))
    V, U = rng.normal(size=(17, 3)), rng.normal(size=(41, 2))
    for parts in (1, 2, 5):
        np.testing.assert_allclose(
            K.csc_matmat(ptr, idx, dat, V, 41, parts),
            naive.csc_matmat(ptr, idx, dat, V, 41, parts),
            rtol=1e-12,
            atol=1e-12,
        )
    np.testing.assert_allclose(
        K.csc_rmatmat(ptr, idx, dat, U), naive.csc_rmatmat(ptr, idx, dat, U), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_csc_column_moments(readonly, dtype):
    """The sparse basis's weighted column moments: the numpy bincount formulation's bits."""
    import scipy.sparse as sp

    rng = np.random.default_rng(13)
    B = sp.random(53, 19, density=0.2, format="csc", random_state=rng, dtype=dtype)
    B.data = (B.data * 10.0 ** rng.integers(-3, 4, size=B.nnz)).astype(dtype)
    sw = rng.uniform(0.0, 3.0, 53)
    sw[:5] = 0.0
    args = [B.indptr, B.indices, B.data, sw]
    args = [_readonly(a) for a in args] if readonly else args
    got = K.csc_column_moments(*args, float(sw.sum()))
    ref = naive.csc_column_moments(*args, float(sw.sum()))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
