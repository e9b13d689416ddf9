"""Type-II maximum likelihood for sparse Bayesian linear regression on a ``DesignMatrix``.

Everything here works on the scaled basis Phi (unit weighted RMS columns, centred). Notation:
``lam`` are the weight precisions (ARDRegression's ``lambda_``), ``beta`` the noise precision
(ARDRegression's ``alpha_``), ``sw`` sample weights, ``W = sum(sw)`` the effective sample size.

Two solvers:

- :func:`dqn_path` never forms an m-by-m matrix. The posterior mean solves
  ``(beta Phi' S Phi + diag(lam)) mu = beta Phi' S t`` by Jacobi-preconditioned conjugate gradients,
  warm-started, two passes over Phi per iteration. The covariance diagonal is the diagonal of the
  inverse of the data curvature's diagonal plus the prior, ``1 / (beta * W + lam)`` (the curvature
  diagonal of a unit-RMS column is exactly ``W``), so hyperparameter updates cost O(m).
- :func:`exact_path` follows ARDRegression's loop (same order, initial values and hyperpriors) with
  a Cholesky factorisation of the m-by-m posterior precision. It is the oracle for tests, the
  solver for small problems, and the "exact finish" of the DQN path once few bases remain.

The third, Tipping & Faul's constructive path for M >= n/2, lives in :mod:`._constructive`.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from ._kernels import EM, MACKAY, reestimate_alpha

_EPS = np.finfo(np.float64).eps
GAMMA_FLOOR = 1e-12
LAMBDA_FLOOR = 1e-12
BETA_MAX_FACTOR = 1e6  # SparseBayes v2 CONTROLS.BetaMaxFactor
GAMMA_SUM_CAP = 0.95  # sum(gamma) <= 0.95 W in the diagonal noise update (W - sum(gamma) -> 0)


class PathState:
    """Mutable state of a fit: active precisions, posterior mean, noise precision, history."""

    def __init__(self, lam, mu, beta):
        self.lam = lam
        self.mu = mu
        self.beta = beta
        self.sigma_diag = None
        self.sigma_full = None
        self.n_iter = 0
        self.converged = False
        self.scores = []
        self.pruned_lam = {}  # original column index -> precision at pruning time
        self.phit_t = None  # Phi' S t over the active set


def _noise_update(W, gamma_sum, sse, alpha_1, alpha_2, beta_max, capped=True):
    """Noise precision (Tipping 2001 eq. 18 with a Gamma hyperprior). ``capped`` bounds it (and
    sum(gamma)) as SparseBayes does; ARDRegression's loop (``capped=False``) does not."""
    if not capped:
        return (W - gamma_sum + 2.0 * alpha_1) / (sse + 2.0 * alpha_2)
    g = min(gamma_sum, GAMMA_SUM_CAP * W)
    beta = (W - g + 2.0 * alpha_1) / (sse + 2.0 * alpha_2)
    return min(beta, beta_max)


def _prune(design, state, lam_new, threshold):
    """Drop bases whose precision reached the threshold; returns True if the active set changed."""
    keep = lam_new < threshold
    if keep.all():
        state.lam = lam_new
        return False
    for j in np.flatnonzero(~keep):
        state.pruned_lam[int(design.active[j])] = float(lam_new[j])
    design.compact(keep)
    state.lam = lam_new[keep]
    state.mu = state.mu[keep]
    state.phit_t = state.phit_t[keep]
    return True


def _pcg(design, phit_t, sw, beta, lam, mu0, max_iter, rtol):
    """Jacobi-preconditioned CG for (beta Phi'S Phi + diag(lam)) mu = beta Phi'S t.

    ``phit_t`` is Phi'S t. Returns ``(mu, z)`` with ``z = Phi @ mu`` maintained incrementally.
    """
    W = design.weight_sum
    precond = 1.0 / (beta * W + lam)
    rhs = beta * phit_t
    b_norm = np.linalg.norm(rhs)
    if b_norm == 0.0:
        return np.zeros_like(mu0), design.sample_zeros()
    mu = mu0.copy()
    if np.any(mu):
        z = design.matvec(mu)
        r = rhs - beta * design.rmatvec(sw * z) - lam * mu
    else:
        z = design.sample_zeros()
        r = rhs.copy()
    zr = precond * r
    p = zr.copy()
    rz = r @ zr
    for _ in range(max_iter):
        if np.linalg.norm(r) <= rtol * b_norm:
            break
        q = design.matvec(p)
        Hp = beta * design.rmatvec(sw * q) + lam * p
        pHp = p @ Hp
        if not pHp > 0.0:
            break
        a = rz / pHp
        mu += a * p
        z += a * q
        r -= a * Hp
        zr = precond * r
        rz_new = r @ zr
        p = zr + (rz_new / rz) * p
        rz = rz_new
    return mu, z


def dqn_path(design, t, sw, state, *, params, on_iter=None):
    """Diagonal (O(m) per hyperparameter update) SBL regression path; see module docstring.

    Stops when, for ``n_iter_no_change`` consecutive iterations, the active set is unchanged and
    ``max|d mu| <= tol * max|mu|`` (docs/algorithms/dqn_sbl.rst, "Stopping"; the log-precision rule alone
    never fires for a diagonal solver), or hands over to :func:`exact_path` as soon as at most
    ``exact_switch`` bases remain.
    """
    W = design.weight_sum
    mode = EM if params["update"] == "em" else MACKAY
    beta_max = BETA_MAX_FACTOR / params["var_t"]
    calm = 0
    state.phit_t = design.rmatvec(sw * t)
    while state.n_iter < params["max_iter"]:
        if design.n_active == 0:
            state.converged = True
            state.mu = np.zeros(0)
            state.sigma_diag = np.zeros(0)
            return "empty"
        if design.n_active <= params["exact_switch"]:
            return "switch"
        mu_old = state.mu
        mu, z = _pcg(
            design,
            state.phit_t,
            sw,
            state.beta,
            state.lam,
            state.mu,
            params["inner_max_iter"],
            params["inner_tol"],
        )
        state.mu = mu
        e = t - z
        sse = float(sw @ (e * e))
        sigma_diag = 1.0 / (state.beta * W + state.lam)
        lam_new, gamma = reestimate_alpha(
            mu,
            sigma_diag,
            state.lam,
            mode,
            params["lambda_1"],
            params["lambda_2"],
            GAMMA_FLOOR,
            LAMBDA_FLOOR,
        )
        if params["compute_score"]:
            state.scores.append(
                _log_evidence(W, state.beta, state.lam, mu, sse, np.sum(np.log(sigma_diag)), params)
            )
        if not params["fix_noise"]:
            state.beta = _noise_update(
                W, float(gamma.sum()), sse, params["alpha_1"], params["alpha_2"], beta_max
            )
        state.n_iter += 1
        dmu = np.max(np.abs(mu - mu_old)) if mu_old.shape == mu.shape else np.inf
        small = dmu <= params["tol"] * max(np.max(np.abs(mu)), _EPS)
        changed = _prune(design, state, lam_new, params["threshold_lambda"])
        calm = calm + 1 if (small and not changed) else 0
        if on_iter is not None:
            on_iter("dqn", state, design, sse)
        if calm >= params["n_iter_no_change"]:
            state.converged = True
            state.sigma_diag = 1.0 / (state.beta * W + state.lam)
            return "converged"
    state.sigma_diag = 1.0 / (state.beta * W + state.lam)
    return "max_iter"


def _cholesky(G, beta, lam):
    """Lower Cholesky factor of the posterior precision beta G + diag(lam)."""
    H = beta * G
    H[np.diag_indices_from(H)] += lam
    try:
        c, _ = cho_factor(H, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        # Numerically singular (e.g. duplicated columns with tiny precisions): regularise slightly.
        H[np.diag_indices_from(H)] += _EPS * max(np.trace(H) / H.shape[0], 1.0) * 1e3
        c, _ = cho_factor(H, lower=True, check_finite=False)
    return c


def _posterior(G, beta, lam, Phit_t):
    """Cholesky posterior: returns (mu, Sigma, logdet Sigma) for precision beta G + diag(lam)."""
    c = _cholesky(G, beta, lam)
    Linv = solve_triangular(c, np.eye(c.shape[0]), lower=True, check_finite=False)
    Sigma = Linv.T @ Linv
    mu = beta * cho_solve((c, True), Phit_t, check_finite=False)
    logdet = -2.0 * np.sum(np.log(np.diag(c)))
    return mu, Sigma, logdet


def exact_path(design, t, sw, state, *, params, ard_stop, on_iter=None):
    """Full-covariance SBL regression, in ARDRegression's loop order.

    ``ard_stop=True`` is ``solver="exact"``: ARDRegression's convergence test (sum |d mu| < tol)
    and its uncapped noise update, so the iterates are ARDRegression's. Otherwise (the exact
    finish of the "dqn" solver) the relative coefficient rule of :func:`dqn_path` and the
    SparseBayes caps on the noise precision.
    """
    W = design.weight_sum
    beta_max = BETA_MAX_FACTOR / params["var_t"]
    mode = EM if params["update"] == "em" else MACKAY
    calm = 0
    mu_old = None
    G = design.gram(sw)
    state.phit_t = design.rmatvec(sw * t)
    sigma, logdet = None, 0.0
    while state.n_iter < params["max_iter"] and design.n_active > 0:
        mu, sigma, logdet = _posterior(G, state.beta, state.lam, state.phit_t)
        state.mu = mu
        e = t - design.matvec(mu)
        sse = float(sw @ (e * e))
        lam_new, gamma = reestimate_alpha(
            mu,
            np.ascontiguousarray(np.diag(sigma)),
            state.lam,
            mode,
            params["lambda_1"],
            params["lambda_2"],
            GAMMA_FLOOR,
            LAMBDA_FLOOR,
        )
        if not params["fix_noise"]:
            state.beta = _noise_update(
                W,
                float(gamma.sum()),
                sse,
                params["alpha_1"],
                params["alpha_2"],
                beta_max,
                capped=not ard_stop,
            )
        state.n_iter += 1
        keep = lam_new < params["threshold_lambda"]
        changed = not keep.all()
        mu_cmp = np.where(keep, mu, 0.0)
        if params["compute_score"]:
            state.scores.append(_log_evidence(W, state.beta, lam_new, mu_cmp, sse, logdet, params))
        if ard_stop:
            done = mu_old is not None and np.sum(np.abs(mu_old - mu_cmp)) < params["tol"]
            mu_old = mu_cmp
        else:
            small = mu_old is not None and np.max(np.abs(mu_cmp - mu_old)) <= params["tol"] * max(
                np.max(np.abs(mu_cmp)), _EPS
            )
            mu_old = mu_cmp
            calm = calm + 1 if (small and not changed) else 0
            done = calm >= params["n_iter_no_change"]
        if changed:
            _prune(design, state, lam_new, params["threshold_lambda"])
            mu_old = mu_old[keep]
            G = G[np.ix_(keep, keep)]
        else:
            state.lam = lam_new
        if on_iter is not None:
            on_iter("exact", state, design, sse)
        if done:
            state.converged = True
            break
    if design.n_active > 0:
        # Final posterior with the last hyperparameters (as ARDRegression does after its loop).
        mu, sigma, logdet = _posterior(G, state.beta, state.lam, state.phit_t)
        state.mu = mu
        state.sigma_full = sigma
        state.sigma_diag = np.diag(sigma).copy()
    else:
        state.mu = np.zeros(0)
        state.sigma_diag = np.zeros(0)
        state.sigma_full = np.zeros((0, 0))
        state.converged = True


def _log_evidence(W, beta, lam, mu, sse, logdet_sigma, params):
    """ARDRegression's objective (log marginal likelihood up to a constant, with hyperpriors)."""
    l1, l2, a1, a2 = params["lambda_1"], params["lambda_2"], params["alpha_1"], params["alpha_2"]
    s = float(np.sum(l1 * np.log(lam) - l2 * lam))
    s += a1 * np.log(beta) - a2 * beta
    s += 0.5 * (logdet_sigma + W * np.log(beta) + np.sum(np.log(lam)))
    s -= 0.5 * (beta * sse + np.sum(lam * mu**2))
    return s
