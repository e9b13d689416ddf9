"""Kernels of the classifier's exact Laplace phase.

The exact phase runs hundreds of outer iterations. On small bases (``n m^2`` up to
``BLAS_MIN_WORK``) the Python overhead of a numpy/scipy Newton loop (a dozen calls per step)
dominates, and the numba kernel :func:`laplace_newton_bernoulli` does a whole Laplace step in
one call, with plain loops for every product and the m-by-m algebra (Cholesky, solves, inverse).
Above that, :func:`laplace_newton_bernoulli_blas` takes the products to BLAS-3 and LAPACK and,
above ``CHORD_MIN_WORK``, starts from chord steps on the previous step's Gram matrix;
:func:`laplace_newton` chooses. Each
numba kernel has a numpy reference in ``tests/sbl/naive_classifier.py``. The Laplace precision
is factorised with the jitter ladder of :mod:`._linalg` (its constants are compiled in: after
changing them, delete ``sparsekit/sbl/__pycache__``).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_solve
from scipy.linalg.lapack import dpotrf, dpotri

from ..utils._numba import jit
from ._design import dense_matvec, dense_rmatvec, weighted_gram_runs
from ._linalg import JITTER_GROWTH, JITTER_REL, JITTER_STEPS

# n * m^2 above which the exact Laplace step is laplace_newton_bernoulli_blas (BLAS, LAPACK and
# chord steps) rather than the numba kernel, which forms the Gram matrix with loops at every
# Newton iterate (3 or more per step). It was 2e7 (the numba kernel's products went to BLAS
# above it). `python benchmarks/bench_laplace_step.py` (results/sbl_laplace_step.md; one
# thread): 3e5 against 2e7 took 0.18-0.48x the time on make_classification (RBF) with 200, 600
# and 1,500 samples, breast cancer and make_moons(300), the same within noise at
# make_moons(40), with the same iterations, relevance vectors, accuracy and log evidence; 0
# doubled the 40-sample fit (the BLAS kernel's Python overhead). Between 3e4 and 1e6 the fits
# took the same time within noise.
BLAS_MIN_WORK = 3e5
# n * m^2 above which the BLAS kernel starts from chord steps (laplace_newton). A chord step
# converges linearly and stops at a tolerance, so where it stops, and the Gram matrix and Sigma
# formed there, move with the last bits of the basis: on 700 samples the fit with n_jobs=2 (whose
# diagonal phase's GEMVs run on two BLAS threads and round differently) then differed from the
# fit with n_jobs=1 by 1.6e-6 in its weights, against 4e-12 with plain Newton steps, which end at
# rounding. Below this bound the Gram matrix is cheap and chord steps saved 0-15 % of the fit
# (make_classification 600 and 1,500 samples, breast cancer, make_moons(300); one thread,
# medians of 3), so the small and medium fits keep the same model with any n_jobs; above it
# (where the kernel ran before BLAS_MIN_WORK was lowered) they save a third of the step.
CHORD_MIN_WORK = 2e7
CHORD_MAX_ITER = 10  # chord steps of laplace_newton_bernoulli_blas before its Newton loop
CHORD_RATE = 0.5  # ... while each step cuts max |gradient| at least by this factor
CHORD_GTOL = 1e-3  # ... until max |gradient| <= CHORD_GTOL gtol
# A Newton step whose predicted decrease |g' step| is at most this fraction of the objective is
# taken whole, without Armijo's test: the objective (a sum over the samples) is not known more
# precisely than that, so the test would compare rounding errors. Measured on an AMD EPYC
# (numpy 2.4.6's OpenBLAS), tests' 400 x 15 problem at gradient tolerance 1e-7: the whole step's
# predicted decrease was 8.7e-15 of an objective of 184.5 while its computed change was +2.8e-14,
# so the search took steps of 2^-8 down to 2^-28 until max_iter (50) at a gradient of 3.7e-7;
# with the whole step the next gradient is below the tolerance. Steps this small are Newton's
# quadratic regime (the step's H-norm is sqrt(|g' step|)).
ARMIJO_ROUNDING = 256 * np.finfo(np.float64).eps


@jit
def cholesky_lower_inplace(H):
    """Overwrite the lower triangle of the symmetric ``H`` with its Cholesky factor L.

    Returns False (leaving ``H`` partly overwritten) when ``H`` is not numerically positive
    definite. The strict upper triangle is set to zero.
    """
    m = H.shape[0]
    for j in range(m):
        s = H[j, j]
        for k in range(j):
            s -= H[j, k] * H[j, k]
        if not (s > 0.0):
            return False
        d = np.sqrt(s)
        H[j, j] = d
        for i in range(j + 1, m):
            v = H[i, j]
            for k in range(j):
                v -= H[i, k] * H[j, k]
            H[i, j] = v / d
        for i in range(j):
            H[i, j] = 0.0
    return True


@jit
def cholesky_solve(L, b):
    """Solve ``L L' x = b`` for a lower-triangular L."""
    m = L.shape[0]
    y = np.empty(m)
    for i in range(m):
        v = b[i]
        for k in range(i):
            v -= L[i, k] * y[k]
        y[i] = v / L[i, i]
    x = np.empty(m)
    for i in range(m - 1, -1, -1):
        v = y[i]
        for k in range(i + 1, m):
            v -= L[k, i] * x[k]
        x[i] = v / L[i, i]
    return x


@jit
def cholesky_inverse(L):
    """``(L L')^-1`` from a lower-triangular L (via ``L^-1``)."""
    m = L.shape[0]
    Li = np.zeros((m, m))
    for j in range(m):
        Li[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, m):
            v = 0.0
            for k in range(j, i):
                v -= L[i, k] * Li[k, j]
            Li[i, j] = v / L[i, i]
    S = np.zeros((m, m))
    for k in range(m):
        for i in range(k + 1):
            v = Li[k, i]
            for j in range(i + 1):
                S[i, j] += v * Li[k, j]
    for i in range(m):
        for j in range(i + 1, m):
            S[i, j] = S[j, i]
    return S


@jit
def _bernoulli_terms(z, t, sw, p, r, b):
    """Fill p = sigma(z), r = sw (p - t), b = sw p (1 - p); return the negative log-likelihood."""
    loss = 0.0
    for i in range(z.shape[0]):
        zi = z[i]
        if zi >= 0.0:
            e = np.exp(-zi)
            pi = 1.0 / (1.0 + e)
            softplus = zi + np.log1p(e)
        else:
            e = np.exp(zi)
            pi = e / (1.0 + e)
            softplus = np.log1p(e)
        p[i] = pi
        r[i] = sw[i] * (pi - t[i])
        b[i] = sw[i] * pi * (1.0 - pi)
        loss += sw[i] * (softplus - t[i] * zi)
    return loss


@jit
def _bernoulli_loss(z, t, sw):
    loss = 0.0
    for i in range(z.shape[0]):
        zi = z[i]
        if zi >= 0.0:
            softplus = zi + np.log1p(np.exp(-zi))
        else:
            softplus = np.log1p(np.exp(zi))
        loss += sw[i] * (softplus - t[i] * zi)
    return loss


@jit
def _matvec(Phi, w):
    n, m = Phi.shape
    out = np.zeros(n)
    for i in range(n):
        acc = 0.0
        for j in range(m):
            acc += Phi[i, j] * w[j]
        out[i] = acc
    return out


@jit
def _rmatvec(Phi, r):
    n, m = Phi.shape
    out = np.zeros(m)
    for i in range(n):
        ri = r[i]
        for j in range(m):
            out[j] += Phi[i, j] * ri
    return out


@jit
def weighted_gram(Phi, b):
    """``Phi' diag(b) Phi`` for a C-contiguous Phi, by plain loops over its upper triangle (the
    kernel's bases are small: no BLAS call, whose overhead, with several threads on a busy
    machine, is milliseconds per call on matrices this small)."""
    n, m = Phi.shape
    G = np.zeros((m, m))
    for i in range(n):
        bi = b[i]
        for j in range(m):
            v = bi * Phi[i, j]
            for k in range(j, m):
                G[j, k] += v * Phi[i, k]
    for j in range(m):
        for k in range(j):
            G[j, k] = G[k, j]
    return G


@jit
def _laplace_precision(Phi, b, lam, H):
    """H = Phi' diag(b) Phi + diag(lam), factorised in place; returns the jitter that was needed
    (the ladder of :mod:`._linalg`), or -1.0 when none worked."""
    m = Phi.shape[1]
    G = weighted_gram(Phi, b)
    scale = 1.0
    for j in range(m):
        G[j, j] += lam[j]
        scale = max(scale, abs(G[j, j]))
    jitter = 0.0
    for _ in range(JITTER_STEPS + 1):
        for i in range(m):
            for j in range(m):
                H[i, j] = G[i, j]
            H[i, i] += jitter
        if cholesky_lower_inplace(H):
            return jitter
        jitter = JITTER_REL * scale if jitter == 0.0 else jitter * JITTER_GROWTH
    return -1.0


@jit
def laplace_newton_bernoulli(Phi, t, sw, w, lam, max_iter, gtol, small_step, c1):
    """Exact Laplace step of one binary problem: damped Newton to the posterior mode.

    ``Phi`` (n, m) C-contiguous basis over the coefficients, ``t`` targets in {0, 1}, ``sw``
    sample weights, ``w`` starting weights (not modified), ``lam`` precisions. Newton steps with
    a Cholesky factor of ``H = Phi' diag(b) Phi + diag(lam)`` and Armijo halving stop once
    ``max|gradient| <= gtol``, or after a full step no larger than ``small_step * max(1, max|w|)``
    (then ``Sigma`` comes from H just before that step). Returns ``(w, loss, Sigma, logdet, status)``: the mode, the data
    negative log-likelihood there, ``Sigma = H^-1`` and ``log det H`` at the mode, and status
    0 (converged), 1 (max_iter reached), 2 (jitter was needed), -1 (H not positive definite).
    """
    n, m = Phi.shape
    w = w.copy()
    z = _matvec(Phi, w)
    p = np.empty(n)
    r = np.empty(n)
    b = np.empty(n)
    H = np.empty((m, m))
    status = 1
    loss = 0.0
    for it in range(max_iter + 1):
        loss = _bernoulli_terms(z, t, sw, p, r, b)
        g = _rmatvec(Phi, r) + lam * w
        jitter = _laplace_precision(Phi, b, lam, H)
        if jitter < 0.0:
            return w, loss, np.full((m, m), np.nan), np.nan, -1
        gmax = 0.0
        for j in range(m):
            gmax = max(gmax, abs(g[j]))
        if gmax <= gtol:
            status = 2 if jitter > 0.0 else 0
            break
        if it == max_iter:
            break
        step = cholesky_solve(H, -g)
        dz = _matvec(Phi, step)
        smax = 0.0
        wmax = 1.0
        for j in range(m):
            smax = max(smax, abs(step[j]))
            wmax = max(wmax, abs(w[j]))
        if smax <= small_step * wmax:
            # Quadratic convergence: a Newton step this small changes H by a negligible amount,
            # so take it and keep the factor of the current H (saves one product with Phi).
            w += step
            z += dz
            loss = _bernoulli_loss(z, t, sw)
            status = 2 if jitter > 0.0 else 0
            break
        prior0 = 0.0
        gp = 0.0
        for j in range(m):
            prior0 += 0.5 * lam[j] * w[j] * w[j]
            gp += g[j] * step[j]
        e0 = loss + prior0
        eta = 1.0
        accepted = abs(gp) <= ARMIJO_ROUNDING * abs(e0)  # below rounding: the whole step
        for _ in range(0 if accepted else 40):
            zt = z + eta * dz
            prior_t = 0.0
            for j in range(m):
                wj = w[j] + eta * step[j]
                prior_t += 0.5 * lam[j] * wj * wj
            if _bernoulli_loss(zt, t, sw) + prior_t <= e0 + c1 * eta * gp:
                accepted = True
                break
            eta *= 0.5
        if not accepted:
            status = 2 if jitter > 0.0 else 0  # no further decrease possible: at the mode
            break
        w += eta * step
        z += eta * dz
    logdet = 0.0
    for j in range(m):
        logdet += 2.0 * np.log(H[j, j])
    return w, loss, cholesky_inverse(H), logdet, status


def laplace_newton_bernoulli_blas(Phi, t, sw, w, lam, max_iter, gtol, small_step, c1, G0=None):
    """:func:`laplace_newton_bernoulli` with BLAS-3 and LAPACK for the m-by-m algebra: the same
    Newton iterations, stopping rules, jitter ladder and return values, for every basis with
    ``n m^2`` above ``BLAS_MIN_WORK`` (a few hundred samples and a few dozen bases on), plus the
    data Gram matrix ``Phi' diag(b) Phi`` of the last Newton iterate (a chord matrix for the next
    call, ``G0``).

    The weighted Gram matrix is numpy's ``A.T @ A`` with ``A = sqrt(b) Phi``, a symmetric rank-k
    update per run of rows, the runs on the fit's threads (:func:`weighted_gram_runs`;
    n m^2 flops; a general product ``np.dot(Phi.T, Pb)`` is 2 n m^2, measured 0.060 s against
    0.021 s at n = 10,000, m = 190, one thread). The Cholesky factor and inverse are LAPACK's
    (``dpotrf``, ``dpotri``) instead of plain loops, O(m^3) either way. Its products with
    ``Phi`` are the design's runs of rows (:func:`._design.dense_matvec`,
    :func:`._design.dense_rmatvec`), on the fit's threads like the Gram matrix. Results agree
    with the numba kernel to rounding. ``Phi`` (n, m) must be contiguous, in either order (the
    exact step passes the design's column-major [1 | Phi_A], or a row-major copy of a class's
    columns).

    With ``G0`` (the data Gram of these columns at an earlier mode: the previous exact step's),
    *chord* steps come first: Newton steps with the fixed matrix ``G0 + diag(lam)``, O(n m) each
    instead of the Gram's O(n m^2), and the same Armijo search, for up to ``CHORD_MAX_ITER`` steps
    while the gradient falls by at least ``CHORD_RATE`` per step. Between two exact iterations
    the precisions change (they are in the chord matrix exactly) and the mode moves a little, so
    the curvature weights ``b`` change little: the chord steps reach the mode, and the Newton
    loop then forms the Gram once, at the mode, for ``Sigma`` and ``log det H`` (at n = 10,000,
    m ~ 190 the exact steps formed 3.2 Grams each without the chord steps). The mode is the
    same to the Newton tolerance; ``Sigma`` is then the one at the mode. When the chord steps
    end at one of their tests, the Newton loop's first iteration takes their last loss and
    gradient (computed at the same point) instead of computing them again.

    Returns ``(w, loss, Sigma, logdet, status, (G, b))``: ``G`` the data Gram matrix of the last
    Newton iterate and ``b`` its curvature weights (``None`` in place of the pair when H was not
    positive definite).
    """
    n, m = Phi.shape
    w = np.array(w, dtype=np.float64)
    z = dense_matvec(Phi, w)
    p = np.empty(n)
    r = np.empty(n)
    b = np.empty(n)
    # (loss, gradient) at the current (w, z) when the chord steps ended without moving, with
    # p, r, b filled there: the Newton loop's first iteration starts from them rather than
    # recomputing them (an O(n m) product and an O(n) pass of exp and log)
    here = None
    if G0 is not None and G0.shape == (m, m):
        Hc = np.array(G0, dtype=np.float64)
        Hc[np.diag_indices(m)] += lam
        Lc, _jitter = _factor_jittered(Hc)
        gprev = np.inf
        for _ in range(CHORD_MAX_ITER if Lc is not None else 0):
            loss = _bernoulli_terms(z, t, sw, p, r, b)
            g = dense_rmatvec(Phi, r) + lam * w
            here = (loss, g)
            gmax = float(np.max(np.abs(g), initial=0.0))
            if gmax <= CHORD_GTOL * gtol or gmax > CHORD_RATE * gprev:
                break
            gprev = gmax
            step = -cho_solve((Lc, True), g, check_finite=False)
            dz = dense_matvec(Phi, step)
            eta = _armijo(z, dz, w, step, lam, t, sw, loss, float(g @ step), c1)
            if eta == 0.0:
                break
            w += eta * step
            z += eta * dz
            here = None
    status = 1
    loss = 0.0
    L = None
    Gd = None
    for it in range(max_iter + 1):
        if here is not None:
            loss, g = here
            here = None
        else:
            loss = _bernoulli_terms(z, t, sw, p, r, b)
            g = dense_rmatvec(Phi, r) + lam * w
        Gd = weighted_gram_runs(Phi, b)
        G = Gd.copy()
        G[np.diag_indices(m)] += lam
        L, jitter = _factor_jittered(G)
        if L is None:
            return w, loss, np.full((m, m), np.nan), np.nan, -1, None
        gmax = float(np.max(np.abs(g), initial=0.0))
        if gmax <= gtol:
            status = 2 if jitter > 0.0 else 0
            break
        if it == max_iter:
            break
        step = -cho_solve((L, True), g, check_finite=False)
        dz = dense_matvec(Phi, step)
        smax = float(np.max(np.abs(step), initial=0.0))
        wmax = max(1.0, float(np.max(np.abs(w), initial=0.0)))
        if smax <= small_step * wmax:
            w += step
            z += dz
            loss = _bernoulli_loss(z, t, sw)
            status = 2 if jitter > 0.0 else 0
            break
        eta = _armijo(z, dz, w, step, lam, t, sw, loss, float(g @ step), c1)
        if eta == 0.0:
            status = 2 if jitter > 0.0 else 0
            break
        w += eta * step
        z += eta * dz
    logdet = 2.0 * float(np.sum(np.log(np.diag(L))))
    S, info = dpotri(L, lower=1)
    if info != 0:
        return w, loss, np.full((m, m), np.nan), np.nan, -1, None
    S = np.tril(S)
    S = S + np.tril(S, -1).T
    return w, loss, S, logdet, status, (Gd, b)


def _armijo(z, dz, w, step, lam, t, sw, loss, gp, c1):
    """Armijo halving along ``step`` from ``w`` (logits ``z``, their change ``dz``): the accepted
    step length, or 0.0 when 40 halvings found no sufficient decrease (at the mode); the whole
    step when its predicted decrease ``-gp`` is below ``ARMIJO_ROUNDING`` of the objective."""
    e0 = loss + 0.5 * float(lam @ (w * w))
    if abs(gp) <= ARMIJO_ROUNDING * abs(e0):
        return 1.0  # a predicted decrease below the objective's rounding (ARMIJO_ROUNDING)
    eta = 1.0
    for _ in range(40):
        wt = w + eta * step
        if (
            _bernoulli_loss(z + eta * dz, t, sw) + 0.5 * float(lam @ (wt * wt))
            <= e0 + c1 * eta * gp
        ):
            return eta
        eta *= 0.5
    return 0.0


def _factor_jittered(G):
    """Lower Cholesky factor of ``G`` (lower triangle used) by LAPACK, with the jitter ladder of
    :func:`_laplace_precision` (scale ``max(1, max |G_jj|)``): ``(L, jitter)`` or ``(None, -1)``."""
    scale = max(1.0, float(np.max(np.abs(np.diag(G)), initial=0.0)))
    jitter = 0.0
    for _ in range(JITTER_STEPS + 1):
        H = G if jitter == 0.0 else G + jitter * np.eye(G.shape[0])
        L, info = dpotrf(H, lower=1, clean=1)
        if info == 0 and np.all(np.isfinite(np.diag(L))):
            return L, jitter
        jitter = JITTER_REL * scale if jitter == 0.0 else jitter * JITTER_GROWTH
    return None, -1.0


def laplace_newton(Phi, t, sw, w, lam, max_iter, gtol, small_step, c1, G0=None):
    """The exact Laplace step of one binary problem: :func:`laplace_newton_bernoulli_blas` when
    ``n m^2`` exceeds BLAS_MIN_WORK (with its chord steps from ``G0`` when it also exceeds
    CHORD_MIN_WORK), else the numba kernel
    :func:`laplace_newton_bernoulli`. Returns ``(w, loss, Sigma, logdet, status, gram)``, ``gram``
    the data Gram matrix of the last Newton iterate and its curvature weights (None from the numba
    kernel)."""
    n, m = Phi.shape
    work = n * m * m
    if work > BLAS_MIN_WORK:
        G0 = G0 if work > CHORD_MIN_WORK else None
        return laplace_newton_bernoulli_blas(Phi, t, sw, w, lam, max_iter, gtol, small_step, c1, G0)
    return (*laplace_newton_bernoulli(Phi, t, sw, w, lam, max_iter, gtol, small_step, c1), None)
