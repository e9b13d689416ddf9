"""The classifier's numba kernels against the numpy references in ``naive_classifier.py``."""

import importlib.util
import pathlib

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sparsekit.sbl import _classifier_kernels as CK
from sparsekit.sbl._classifier_kernels import (
    cholesky_inverse,
    cholesky_lower_inplace,
    cholesky_solve,
    laplace_newton_bernoulli,
)

_spec = importlib.util.spec_from_file_location(
    "naive_classifier", pathlib.Path(__file__).with_name("naive_classifier.py")
)
naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive)


def _spd(m, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m + 3, m))
    return A.T @ A + 0.1 * np.eye(m)


@pytest.mark.parametrize("m", [1, 2, 7, 30])
def test_cholesky_solve_inverse_match_numpy(m):
    H = _spd(m, m)
    L = H.copy()
    assert cholesky_lower_inplace(L)
    assert_allclose(L, naive.cholesky_lower(H), rtol=1e-10, atol=1e-12)
    b = np.arange(1.0, m + 1)
    assert_allclose(
        cholesky_solve(L, b), naive.cholesky_solve(naive.cholesky_lower(H), b), rtol=1e-9
    )
    assert_allclose(
        cholesky_inverse(L), naive.cholesky_inverse(naive.cholesky_lower(H)), rtol=1e-8, atol=1e-12
    )


def test_cholesky_rejects_indefinite():
    H = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert not cholesky_lower_inplace(H.copy())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("separable", [False, True])
def test_laplace_newton_matches_reference(seed, separable):
    """Mode, loss, covariance and log-determinant equal a plain numpy Newton run to convergence."""
    rng = np.random.default_rng(seed)
    n, m = 60, 6
    Phi = np.ascontiguousarray(np.column_stack([np.ones(n), rng.normal(size=(n, m - 1))]))
    if separable:
        t = (Phi[:, 1] > 0).astype(float)
    else:
        t = (rng.random(n) < 1 / (1 + np.exp(-Phi[:, 1] + 0.5 * Phi[:, 2]))).astype(float)
    sw = rng.uniform(0.5, 2.0, size=n)
    lam = rng.uniform(0.1, 3.0, size=m)
    w0 = np.zeros(m)
    w, loss, S, logdet, status = laplace_newton_bernoulli(
        Phi, t, sw, w0, lam, 50, 1e-10, 1e-12, 1e-4
    )
    assert status == 0
    w_ref, loss_ref, S_ref, logdet_ref = naive.laplace_newton_bernoulli(Phi, t, sw, w0, lam)
    assert_allclose(w, w_ref, rtol=1e-7, atol=1e-9)
    assert_allclose(loss, loss_ref, rtol=1e-9)
    assert_allclose(S, S_ref, rtol=1e-6, atol=1e-10)
    assert_allclose(logdet, logdet_ref, rtol=1e-9)
    assert np.all(w0 == 0)  # the starting point is not modified


def _basis(n, m, seed):
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(rng.normal(size=(n, m))), rng


def test_bernoulli_terms_and_loss_match_reference():
    """Including |z| = 40, where a naive log(1 + exp(z)) overflows or loses all digits."""
    rng = np.random.default_rng(10)
    z = np.concatenate([rng.normal(scale=3, size=50), [-40.0, 40.0, 0.0]])
    t = (rng.random(z.size) < 0.5).astype(float)
    sw = rng.uniform(0.5, 2, z.size)
    p, r, b = np.empty(z.size), np.empty(z.size), np.empty(z.size)
    loss = CK._bernoulli_terms(z, t, sw, p, r, b)
    ref_p, ref_r, ref_b, ref_loss = naive.bernoulli_terms(z, t, sw)
    assert_allclose(p, ref_p, rtol=1e-14, atol=1e-300)
    assert_allclose(r, ref_r, rtol=1e-13, atol=1e-300)
    assert_allclose(b, ref_b, rtol=1e-12, atol=1e-300)
    assert_allclose(loss, ref_loss, rtol=1e-13)
    assert_allclose(CK._bernoulli_loss(z, t, sw), naive.bernoulli_loss(z, t, sw), rtol=1e-13)


def test_products_match_reference():
    Phi, rng = _basis(41, 9, 11)
    w, r, b = rng.normal(size=9), rng.normal(size=41), rng.uniform(0, 2, 41)
    assert_allclose(CK._matvec(Phi, w), naive.matvec(Phi, w), rtol=1e-12, atol=1e-12)
    assert_allclose(CK._rmatvec(Phi, r), naive.rmatvec(Phi, r), rtol=1e-12, atol=1e-12)
    G = CK.weighted_gram(Phi, b)
    assert_allclose(G, naive.weighted_gram(Phi, b), rtol=1e-12, atol=1e-12)
    assert_allclose(G, G.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [300, 2100])  # one run; several runs and a short last one
def test_weighted_gram_runs_is_the_weighted_gram(n):
    Phi, rng = _basis(n, 37, 5)
    b = rng.uniform(0, 0.25, n)
    for basis in (Phi, np.asfortranarray(Phi)):
        G = CK.weighted_gram_runs(basis, b)
        assert G.shape == (37, 37)
        assert_allclose(G, naive.weighted_gram(Phi, b), rtol=1e-12, atol=1e-12)
    assert_allclose(CK.weighted_gram_runs(Phi[:, :0], b), np.zeros((0, 0)))


def test_laplace_precision_matches_reference_cholesky():
    Phi, rng = _basis(30, 6, 12)
    b, lam = rng.uniform(0.01, 0.25, 30), rng.uniform(0.1, 2, 6)
    H = np.empty((6, 6))
    jitter = CK._laplace_precision(Phi, b, lam, H)
    assert jitter == 0.0
    assert_allclose(H, naive.laplace_precision(Phi, b, lam), rtol=1e-11, atol=1e-12)


def test_laplace_precision_adds_jitter_to_a_singular_matrix():
    """Two equal columns and a slightly negative precision: H is indefinite, so the kernel
    factorises H + jitter I with the smallest jitter of its ladder that works."""
    Phi, _ = _basis(20, 3, 13)
    Phi[:, 2] = Phi[:, 1]
    b, lam = np.ones(20), np.array([0.0, 0.0, -1e-9])
    H = np.empty((3, 3))
    jitter = CK._laplace_precision(Phi, b, lam, H)
    assert jitter > 0.0
    assert_allclose(H, naive.laplace_precision(Phi, b, lam + jitter), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kernel", ["numba", "blas"])
def test_laplace_newton_on_a_large_basis_matches_reference(kernel):
    """A basis above BLAS_MIN_WORK (n m^2) gives the same mode, covariance and log-determinant
    as the numpy reference in both kernels (the numba kernel's loops are not limited to small
    bases; the dispatch keeps them there for speed)."""
    n, m = 2100, 100
    assert n * m * m > CK.BLAS_MIN_WORK
    Phi, rng = _basis(n, m, 14)
    Phi[:, 0] = 1.0
    w_true = np.zeros(m)
    w_true[1:6] = rng.normal(size=5)
    t = (rng.random(n) < 1 / (1 + np.exp(-Phi @ w_true))).astype(float)
    sw, lam = np.ones(n), rng.uniform(0.5, 3.0, m)
    w0 = np.zeros(m)
    solve = laplace_newton_bernoulli if kernel == "numba" else CK.laplace_newton_bernoulli_blas
    w, loss, S, logdet, status = solve(Phi, t, sw, w0, lam, 50, 1e-10, 1e-12, 1e-4)[:5]
    assert status == 0
    w_ref, loss_ref, S_ref, logdet_ref = naive.laplace_newton_bernoulli(Phi, t, sw, w0, lam)
    assert_allclose(w, w_ref, rtol=1e-7, atol=1e-9)
    assert_allclose(loss, loss_ref, rtol=1e-10)
    assert_allclose(S, S_ref, rtol=1e-6, atol=1e-10)
    assert_allclose(logdet, logdet_ref, rtol=1e-10)


@pytest.mark.parametrize("case", ["plain", "separable", "duplicate_columns", "capped"])
def test_laplace_newton_blas_matches_the_numba_kernel(case):
    """The BLAS-3 / LAPACK Newton (large n m^2) takes the same iterations as the numba kernel:
    same mode, loss, covariance, log-determinant and status, including a jittered precision
    (two equal columns, one with a slightly negative precision) and the iteration cap."""
    Phi, rng = _basis(300, 12, 21)
    Phi[:, 0] = 1.0
    w_true = np.zeros(12)
    w_true[1:4] = [1.5, -2.0, 0.7]
    t = (rng.random(300) < 1 / (1 + np.exp(-Phi @ w_true))).astype(float)
    sw, lam = rng.uniform(0.5, 2.0, 300), rng.uniform(0.2, 2.0, 12)
    max_iter, gtol = 50, 1e-10
    if case == "separable":
        t = (Phi[:, 1] > 0).astype(float)
    elif case == "duplicate_columns":
        Phi[:, 5] = Phi[:, 4]
        lam[5] = -1e-9
        lam[4] = 0.0
        gtol = 1e-6  # the flat direction of the two copies converges slowly
    elif case == "capped":
        max_iter = 1
    w0 = rng.normal(scale=0.1, size=12)
    args = (Phi, t, sw, w0, lam, max_iter, gtol, 1e-12, 1e-4)
    ref = laplace_newton_bernoulli(*args)
    got = CK.laplace_newton_bernoulli_blas(*args)
    gram, b = got[5]
    assert_allclose(gram, (Phi * b[:, None]).T @ Phi, rtol=1e-12, atol=1e-12)
    assert got[4] == ref[4]
    assert got[4] == {"plain": 0, "separable": 0, "duplicate_columns": 2, "capped": 1}[case]
    # the two copies' split of their weight is ill-conditioned: agreement to the jitter's scale
    tol = 1e-5 if case == "duplicate_columns" else 1e-8
    assert_allclose(got[0], ref[0], rtol=tol, atol=tol)
    assert_allclose(got[1], ref[1], rtol=1e-12)
    assert_allclose(got[2], ref[2], rtol=100 * tol, atol=tol * np.max(np.abs(ref[2])))
    assert_allclose(got[3], ref[3], rtol=tol)
    assert np.all(w0 == args[3])  # the starting point is not modified


def test_laplace_newton_dispatches_large_products_to_blas(monkeypatch):
    calls = []
    monkeypatch.setattr(
        CK, "laplace_newton_bernoulli_blas", lambda *a: calls.append(("blas", a[9] is not None))
    )
    monkeypatch.setattr(
        CK, "laplace_newton_bernoulli", lambda *a: calls.append(("numba", None)) or ()
    )
    # n m^2: 1e4 and 2.9e5 stay in numba; 6.4e5 (a 400-sample kernel fit's exact phase with 40
    # bases) goes to the BLAS kernel without chord steps (the same model with any n_jobs), 2.1e7
    # with them
    for n, m in [(100, 10), (2900, 10), (400, 40), (2100, 100)]:
        CK.laplace_newton(np.zeros((n, m)), *([None] * 8), np.eye(m))
    assert calls == [("numba", None), ("numba", None), ("blas", False), ("blas", True)]


def _chord_problem():
    """A binary problem, its mode at one set of precisions (and the data Gram there), and new
    precisions: the situation of two consecutive exact steps."""
    Phi, rng = _basis(400, 15, 5)
    Phi[:, 0] = 1.0
    w_true = np.zeros(15)
    w_true[1:5] = [1.5, -2.0, 0.7, 1.1]
    t = (rng.random(400) < 1 / (1 + np.exp(-Phi @ w_true))).astype(float)
    sw, lam = rng.uniform(0.5, 2.0, 400), rng.uniform(0.2, 2.0, 15)
    old = CK.laplace_newton_bernoulli_blas(Phi, t, sw, np.zeros(15), lam, 50, 1e-7, 1e-12, 1e-4)
    lam_new = lam * rng.uniform(0.5, 2.0, 15)
    return Phi, t, sw, old, lam_new


@pytest.mark.parametrize("chord", ["previous", "wrong"])
def test_chord_steps_reach_the_newton_mode(chord):
    """Chord steps from the previous solve's Gram (or from a useless one) end at the mode of a
    plain Newton solve, with the covariance and log-determinant of the Laplace precision at it."""
    Phi, t, sw, old, lam = _chord_problem()
    G0 = old[5][0] if chord == "previous" else 1e3 * np.eye(15)
    args = (Phi, t, sw, old[0], lam, 50, 1e-7, 1e-12, 1e-4)
    ref = CK.laplace_newton_bernoulli_blas(*args)
    got = CK.laplace_newton_bernoulli_blas(*args, G0)
    assert got[4] == ref[4] == 0
    assert_allclose(got[0], ref[0], rtol=1e-7, atol=1e-9)  # both to the gradient tolerance
    assert_allclose(got[1], ref[1], rtol=1e-10)
    p = 1 / (1 + np.exp(-Phi @ got[0]))
    H = (Phi * (sw * p * (1 - p))[:, None]).T @ Phi + np.diag(lam)
    assert_allclose(got[2], np.linalg.inv(H), rtol=1e-8, atol=1e-12)
    assert_allclose(got[3], np.linalg.slogdet(H)[1], rtol=1e-10)


def test_chord_steps_save_gram_products(monkeypatch):
    """From the previous solve's Gram, the solve forms the Gram once (at the mode): two
    factorisations in all (the chord matrix's and the Gram's), against three or more Newton
    iterations from the same start without it."""
    Phi, t, sw, old, lam = _chord_problem()
    calls = []
    factor = CK._factor_jittered
    monkeypatch.setattr(CK, "_factor_jittered", lambda G: calls.append(1) or factor(G))
    args = (Phi, t, sw, old[0], lam, 50, 1e-7, 1e-12, 1e-4)
    CK.laplace_newton_bernoulli_blas(*args)
    plain = len(calls)
    calls.clear()
    CK.laplace_newton_bernoulli_blas(*args, old[5][0])
    assert plain >= 3
    assert len(calls) == 2
