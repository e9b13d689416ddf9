"""The Gaussian likelihood of sparse Bayesian linear regression on a ``DesignMatrix``.

Everything here works on the scaled basis Phi (unit weighted RMS columns, centred) and a
standardised target ``t`` (unit weighted variance). Notation: ``lam`` are the weight precisions
(ARDRegression's ``lambda_``), ``beta`` the noise precision (ARDRegression's ``alpha_``), ``sw``
sample weights, ``wsum = sum(sw)`` the effective sample size.

The outer loop is :func:`._engine.run_path`; :class:`Gaussian` supplies its two posterior steps:

- the diagonal phase never forms an m-by-m matrix. The posterior mean solves
  ``(beta Phi' S Phi + diag(lam)) mu = beta Phi' S t`` by Jacobi-preconditioned conjugate
  gradients, warm-started, two passes over Phi per iteration. The data-curvature diagonal of a
  unit-RMS column is exactly ``beta * wsum``, so ``Sigma_jj ~ 1 / (beta * wsum + lam_j)`` and the
  hyperparameter updates cost O(m);
- the exact phase follows ARDRegression's loop (same order, initial values and hyperpriors) with a
  Cholesky factorisation of the m-by-m posterior precision, or, while more bases than samples are
  active, of the n-by-n matrix of the Woodbury form (:func:`woodbury_posterior`), as
  ARDRegression does for wide data. It is the oracle for tests, the solver for small problems
  (``solver="exact"``), and the "exact finish" of the diagonal phase once few bases remain.

The third path, Tipping & Faul's constructive one for kernels and M >= n/2, lives in
:mod:`._constructive`.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_solve, solve_triangular

from ._linalg import cholesky_jittered

BETA_MAX_FACTOR = 1e6  # SparseBayes v2 CONTROLS.BetaMaxFactor: beta <= 1e6 / var(t), var(t) = 1
GAMMA_SUM_CAP = 0.95  # sum(gamma) <= 0.95 wsum in the capped noise update (wsum - sum(gamma) -> 0)


class GaussianStep:
    """What one posterior step leaves for the re-estimate, the noise update and the evidence."""

    def __init__(self, mu, sse, beta, logdet=None):
        self.mu = mu  # posterior mean (m,)
        self.sse = sse  # weighted residual sum of squares at mu
        self.beta = beta  # the noise precision the step used
        self.logdet = logdet  # log det of the posterior precision (diagonal phase: of its diagonal)
        self.factor = None  # Woodbury steps: V with Sigma = diag(1 / lam) - V'V (n, m)


class Gaussian:
    """Gaussian likelihood ``t ~ N(Phi w, 1 / (beta S))`` for :func:`._engine.run_path`.

    Parameters
    ----------
    t : ndarray of shape (n_samples,)
        Standardised targets.
    sw : ndarray of shape (n_samples,)
        Sample weights.
    settings : PathSettings
        ``solver="exact"`` selects ARDRegression's stop test and uncapped noise update.

    Exact steps take the n-by-n Woodbury form (:func:`woodbury_posterior`) while there are more
    active bases than samples: O(n^2 m) per step, no m-by-m matrix (``solver="exact"`` on wide
    data, the all-feature start of the constructive path,
    :func:`._all_feature.all_feature_path`). The full posterior covariance of the final model is
    then formed only when it has at most n bases; a final model with more leaves
    ``state.sigma_factor`` instead (:meth:`finish`).
    """

    readmits = False  # the Gaussian's re-admission is the constructive path
    uses_settle_test = False
    stops_when_empty = True

    def __init__(self, t, sw, settings):
        self.t = t
        self.sw = sw
        self._psi = None  # sqrt(S) Phi over the active set (Woodbury steps), dense (n, m)
        self.ard = settings.solver == "exact"
        self.stop_statistic = "ard" if self.ard else "coefficients"
        self._phit_t = None  # Phi' S t over the active set
        self._gram = None  # Phi' S Phi over the active set (exact phase)

    def exact_size(self, design, state):
        return design.n_active

    def start(self, design, state):
        self._phit_t = design.rmatvec(self.sw * self.t)

    def compact(self, keep_rows):
        self._phit_t = self._phit_t[keep_rows]
        if self._psi is not None:
            self._psi = np.asfortranarray(self._psi[:, keep_rows])
        if self._gram is not None:
            self._gram = self._gram[np.ix_(keep_rows, keep_rows)]

    def curvature(self, design, state):
        """Data-curvature diagonal: ``beta * wsum`` for every unit-RMS column."""
        return state.beta * design.weight_sum

    def inner_solve(self, design, state, settings):
        """Posterior mean by preconditioned CG (warm-started); sets ``state.coef``."""
        mu, z = _pcg(
            design,
            self._phit_t,
            self.sw,
            state.beta,
            state.lam[:, 0],
            state.coef[:, 0],
            settings.inner_max_iter,
            settings.inner_tol,
        )
        state.coef = mu[:, None]
        e = self.t - z
        return GaussianStep(mu, float(self.sw @ (e * e)), state.beta)

    def _ensure_gram(self, design):
        if self._gram is None:
            self._gram = design.gram(self.sw)
            self._phit_t = design.rmatvec(self.sw * self.t)

    def _woodbury_now(self, design):
        return self._gram is None and design.n_active > design.n_samples

    def exact_step(self, design, state, settings):
        """Cholesky posterior over the active set; sets ``state.coef`` and ``state.sigma_diag``."""
        if self._woodbury_now(design):
            if self._psi is None:
                self._psi = design.dense_active() * np.sqrt(self.sw)[:, None]
            mu, sigma_diag, logdet, V = woodbury_posterior(
                self._psi, np.sqrt(self.sw) * self.t, state.beta, state.lam[:, 0]
            )
            state.coef = mu[:, None]
            state.sigma_diag = sigma_diag[:, None]
            e = self.t - design.matvec(mu)
            step = GaussianStep(mu, float(self.sw @ (e * e)), state.beta, logdet)
            step.factor = V
            return step
        self._psi = None
        self._ensure_gram(design)
        # one BLAS thread: OpenBLAS's threaded Cholesky and triangular inverse are slower than
        # one thread at every size measured (utils._threads, "LAPACK")
        mu, sigma, logdet = posterior(self._gram, state.beta, state.lam[:, 0], self._phit_t)
        state.coef = mu[:, None]
        state.sigma_diag = np.ascontiguousarray(np.diag(sigma))[:, None]
        e = self.t - design.matvec(mu)
        return GaussianStep(mu, float(self.sw @ (e * e)), state.beta, logdet)

    def update_noise(self, design, state, step, gamma, settings, exact):
        """Noise precision (Tipping 2001 eq. 18, Gamma hyperprior): capped as SparseBayes does,
        except on ARDRegression's path (``solver="exact"``)."""
        state.beta = noise_update(
            design.weight_sum,
            float(gamma.sum()),
            step.sse,
            settings.alpha_1,
            settings.alpha_2,
            capped=not (exact and self.ard),
        )

    def log_evidence(self, design, state, step, update, settings, exact):
        """ARDRegression's objective when ``compute_score`` (else None): in the exact phase at the
        updated hyperparameters, pruned weights at zero (ARDRegression's order); in the diagonal
        phase at those the step used, with the diagonal log-determinant."""
        if not settings.compute_score:
            return None
        if exact:
            lam = update.lam_new
            mu = np.where(lam < settings.threshold_lambda, step.mu, 0.0)
            beta = state.beta
        else:
            lam, mu, beta = update.lam_old, step.mu, step.beta
        return log_evidence(design.weight_sum, beta, lam, mu, step.sse, -step.logdet, settings)

    def finish(self, design, state, settings, exact):
        """Final posterior at the final hyperparameters (as ARDRegression does after its loop);
        the diagonal phase keeps its last mean."""
        if not exact:
            state.sigma_diag = 1.0 / (state.beta * design.weight_sum + state.lam)
            return
        if self._woodbury_now(design):
            step = self.exact_step(design, state, settings)
            # more bases than samples: never m-by-m; Sigma = diag(1 / lam) - V'V for return_std
            state.sigma_full = None
            state.sigma_factor = step.factor
            state.coef = step.mu[:, None]
            return
        self._ensure_gram(design)
        if design.n_active > 0:
            mu, sigma, _ = posterior(self._gram, state.beta, state.lam[:, 0], self._phit_t)
            state.coef = mu[:, None]
            state.sigma_full = sigma
            state.sigma_diag = np.diag(sigma).copy()[:, None]
        else:
            state.coef = np.zeros((0, 1))
            state.sigma_diag = np.zeros((0, 1))
            state.sigma_full = np.zeros((0, 0))
            state.converged = True


def noise_update(wsum, gamma_sum, sse, alpha_1, alpha_2, capped=True):
    """Noise precision (Tipping 2001 eq. 18 with a Gamma hyperprior). ``capped`` bounds it (by
    ``BETA_MAX_FACTOR``, the target having unit variance) and ``sum(gamma)`` as SparseBayes does;
    ARDRegression's loop (``capped=False``) does not, unless its numerator would not be
    positive: ``sum(gamma)`` is below the number of samples, but with sample weights below 1 it can
    exceed their sum ``wsum`` (n = 60, M = 300, weights uniform on [0, 2], ``solver="exact"``: a
    noise precision of -5e5 and NaN for every ``return_std``)."""
    if not capped and wsum - gamma_sum + 2.0 * alpha_1 > 0.0:
        return (wsum - gamma_sum + 2.0 * alpha_1) / (sse + 2.0 * alpha_2)
    g = min(gamma_sum, GAMMA_SUM_CAP * wsum)
    beta = (wsum - g + 2.0 * alpha_1) / (sse + 2.0 * alpha_2)
    return min(beta, BETA_MAX_FACTOR)


def _pcg(design, phit_t, sw, beta, lam, mu0, max_iter, rtol):
    """Jacobi-preconditioned CG for (beta Phi'S Phi + diag(lam)) mu = beta Phi'S t.

    ``phit_t`` is Phi'S t. Returns ``(mu, z)`` with ``z = Phi @ mu`` maintained incrementally.
    """
    precond = 1.0 / (beta * design.weight_sum + lam)
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


def cholesky_precision(G, beta, lam):
    """Lower Cholesky factor of the posterior precision ``beta G + diag(lam)`` (jitter policy of
    :mod:`._linalg`)."""
    H = beta * G
    H[np.diag_indices_from(H)] += lam
    (c, _), _ = cholesky_jittered(H)
    return c


def posterior(G, beta, lam, phit_t):
    """Cholesky posterior: ``(mu, Sigma, log det H)`` for the precision ``H = beta G + diag(lam)``."""
    c = cholesky_precision(G, beta, lam)
    Linv = solve_triangular(c, np.eye(c.shape[0]), lower=True, check_finite=False)
    Sigma = Linv.T @ Linv
    mu = beta * cho_solve((c, True), phit_t, check_finite=False)
    logdet = 2.0 * np.sum(np.log(np.diag(c)))
    return mu, Sigma, logdet


def woodbury_posterior(psi, u, beta, lam):
    """Posterior ``(mu, diag(Sigma), log det H, V)`` of ``H = beta psi'psi + diag(lam)`` with
    ``mu = beta Sigma psi'u``, in the n-by-n Woodbury form for ``psi`` of shape (n, m), m > n::

        Sigma = A^-1 - V'V,  V = L^-1 psi A^-1,  L L' = C = I / beta + psi A^-1 psi',  A = diag(lam)
        mu = A^-1 psi' C^-1 u,  log det H = sum(log lam) + n log beta + log det C

    O(n^2 m) time, O(n m) memory; no m-by-m matrix. ``psi`` is the weighted basis
    ``sqrt(S) Phi`` and ``u = sqrt(S) t``. ``V`` (n, m) gives ``phi' Sigma phi = sum(phi^2 /
    lam) - |V phi|^2`` for a prediction's basis row ``phi``.
    """
    n = psi.shape[0]
    psi_a = psi / lam
    C = psi_a @ psi.T
    C[np.diag_indices(n)] += 1.0 / beta
    (c, _), _ = cholesky_jittered(C)
    V = solve_triangular(c, psi_a, lower=True, check_finite=False)  # L^-1 psi A^-1
    sigma_diag = 1.0 / lam - np.einsum("ij,ij->j", V, V)
    mu = psi_a.T @ cho_solve((c, True), u, check_finite=False)
    logdet = float(np.sum(np.log(lam)) + n * np.log(beta) + 2.0 * np.sum(np.log(np.diag(c))))
    return mu, sigma_diag, logdet, V


def model_log_evidence(G, phit_t, tt, wsum, beta, lam, settings):
    """ARDRegression's objective (:func:`log_evidence`) of a model given by its Gram matrix
    ``G = Phi_A' S Phi_A``, ``phit_t = Phi_A' S t``, ``tt = t' S t``, noise precision ``beta``
    and precisions ``lam``, at its posterior mean: the same formula for every end of a fit."""
    if len(lam) == 0:
        return log_evidence(wsum, beta, lam, np.zeros(0), tt, 0.0, settings)
    mu, _, logdet_h = posterior(np.array(G, dtype=np.float64), beta, lam, phit_t)
    sse = max(tt - 2.0 * mu @ phit_t + mu @ (G @ mu), 0.0)
    return log_evidence(wsum, beta, lam, mu, sse, -logdet_h, settings)


def log_evidence(wsum, beta, lam, mu, sse, logdet_sigma, settings):
    """ARDRegression's objective (log marginal likelihood up to a constant, with hyperpriors)."""
    l1, l2 = settings.lambda_1, settings.lambda_2
    a1, a2 = settings.alpha_1, settings.alpha_2
    s = float(np.sum(l1 * np.log(lam) - l2 * lam))
    s += a1 * np.log(beta) - a2 * beta
    s += 0.5 * (logdet_sigma + wsum * np.log(beta) + np.sum(np.log(lam)))
    s -= 0.5 * (beta * sse + np.sum(lam * mu**2))
    return s
