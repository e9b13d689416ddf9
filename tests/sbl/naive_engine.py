"""Readable numpy references for the likelihood objects of ``sparsekit.sbl._engine``: the
curvature diagonals, the Laplace precisions and the evidence terms, from dense matrices."""

import numpy as np
from scipy.special import expit, softmax


def gaussian_log_marginal(Phi, t, sw, beta, lam):
    """log N(t | 0, beta^-1 I + Phi diag(lam)^-1 Phi') plus (n/2) log 2 pi, with each row
    repeated ``sw`` times (integer weights: a weight of k is k copies of the sample)."""
    reps = np.asarray(sw).astype(int)
    assert np.array_equal(reps, sw)
    Phi, t = np.repeat(Phi, reps, axis=0), np.repeat(t, reps)
    C = np.eye(t.shape[0]) / beta + (Phi / lam) @ Phi.T
    _, logdet = np.linalg.slogdet(C)
    return -0.5 * (logdet + t @ np.linalg.solve(C, t))


def curvature_diagonal(Phi, b):
    """Exact diagonal of Phi' diag(b) Phi."""
    return np.einsum("ij,ij,i->j", Phi, Phi, b)


def bernoulli_laplace_evidence(Phi, t, sw, w, lam, free):
    """Laplace evidence up to a constant at the mode ``w``: data log-likelihood, Gaussian prior
    over the non-free coefficients, minus half the log-determinant of the Laplace precision."""
    z = Phi @ w
    p = expit(z)
    loglik = sw @ (t * z - np.logaddexp(0.0, z))
    H = Phi.T @ (Phi * (sw * p * (1 - p))[:, None]) + np.diag(lam)
    prior = 0.5 * np.sum(np.log(lam[free:])) - 0.5 * np.sum(lam * w * w)
    return loglik + prior - 0.5 * np.linalg.slogdet(H)[1]


def softmax_laplace_precision(Phi, T, sw, W, lam):
    """Full Laplace precision of the multinomial model, class-major, all coefficients."""
    P = softmax(Phi @ W, axis=1)
    m, K = W.shape
    H = np.zeros((K * m, K * m))
    for k in range(K):
        for j in range(K):
            c = sw * P[:, k] * ((k == j) - P[:, j])
            H[k * m : (k + 1) * m, j * m : (j + 1) * m] = Phi.T @ (Phi * c[:, None])
    return H + np.diag(lam.T.reshape(-1))
