"""Readable numpy/scipy references for the numba kernels in ``sparsekit/sbl/_classifier_kernels.py``.

One function per kernel, named like the kernel without a leading underscore or an ``_inplace``
suffix (``tests/sbl/test_kernel_registry.py`` checks that every kernel has one).
"""

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit, log_expit


def cholesky_lower(H):
    return np.linalg.cholesky(H)


def cholesky_solve(L, b):
    return cho_solve((L, True), b)


def cholesky_inverse(L):
    return cho_solve((L, True), np.eye(L.shape[0]))


def bernoulli_loss(z, t, sw):
    return float(sw @ (-log_expit(z) + (1.0 - t) * z))


def laplace_newton_bernoulli(Phi, t, sw, w, lam, max_iter=100, gtol=1e-12):
    """Posterior mode by plain damped Newton, run to full convergence; then Sigma = H^-1."""
    w = np.array(w, dtype=np.float64)
    for _ in range(max_iter):
        z = Phi @ w
        p = expit(z)
        g = Phi.T @ (sw * (p - t)) + lam * w
        if np.max(np.abs(g)) <= gtol:
            break
        H = Phi.T @ (Phi * (sw * p * (1 - p))[:, None]) + np.diag(lam)
        step = -cho_solve(cho_factor(H), g)
        e0 = bernoulli_loss(z, t, sw) + 0.5 * lam @ (w * w)
        eta = 1.0
        while eta > 1e-12:
            wt = w + eta * step
            if (
                bernoulli_loss(Phi @ wt, t, sw) + 0.5 * lam @ (wt * wt)
                <= e0 + 1e-4 * eta * g @ step
            ):
                break
            eta *= 0.5
        w = w + eta * step
    z = Phi @ w
    p = expit(z)
    H = Phi.T @ (Phi * (sw * p * (1 - p))[:, None]) + np.diag(lam)
    _sign, logdet = np.linalg.slogdet(H)
    return w, bernoulli_loss(z, t, sw), np.linalg.inv(H), logdet


def bernoulli_terms(z, t, sw):
    """p = sigma(z), r = sw (p - t), b = sw p (1 - p) and the weighted negative log-likelihood."""
    p = expit(z)
    return p, sw * (p - t), sw * p * (1.0 - p), bernoulli_loss(z, t, sw)


def matvec(Phi, w):
    return Phi @ w


def rmatvec(Phi, r):
    return Phi.T @ r


def weighted_gram(Phi, b):
    return Phi.T @ (b[:, None] * Phi)


def laplace_precision(Phi, b, lam):
    """Cholesky factor of H = Phi' diag(b) Phi + diag(lam) (lower, zero upper triangle)."""
    return np.linalg.cholesky(weighted_gram(Phi, b) + np.diag(lam))
