"""The Laplace likelihoods of sparse Bayesian classification on a ``DesignMatrix``.

Everything here works on the scaled basis Phi (columns of unit weighted RMS, an implicit intercept
column of ones at coefficient index 0 when the design has one). Notation (:mod:`._engine`):

- ``coef`` (n_coef, K): posterior modes, one column per binary problem ("bernoulli": the binary
  problem or the K one-vs-rest problems, solved together) or per class ("softmax": multinomial).
- ``lam`` (n_coef, K): weight precisions (ARDRegression's ``lambda_``); the intercept row is a free
  basis with a tiny fixed precision and is never pruned.
- ``mask`` (n_coef, K): which (basis, column) pairs are still in the model. A basis is removed
  from the design (compacted in place) once every column has pruned it.
- ``curvature`` (n_coef, K): diagonal approximation of the data curvature ``Phi' diag(b) Phi``.
- ``wsum``: the sum of the sample weights.

The outer loop is :func:`._engine.run_path`; :class:`Bernoulli` and :class:`Softmax` supply its
two posterior steps:

- the diagonal (DQN) phase (docs/algorithms/dqn_sbl.rst): the mode by diagonal quasi-Newton steps
  ``p = -g / (D + lam)`` with an Armijo search along ``z + eta Phi p`` (two passes over Phi per
  step, GEMMs for K columns), ``D`` by the diagonal BFGS (or PSB, or exact-diagonal) update,
  warm-started across outer iterations, and ``Sigma_jj ~ 1 / (D_jj + lam_j)`` in the MacKay/EM
  update, so nothing m-by-m is formed;
- the exact phase: Newton steps with a Cholesky factor of the full Laplace precision
  ``H = Phi' diag(b) Phi + diag(lam)``, and ``Sigma = H^-1``. It runs from the start for
  ``solver="exact"`` and as the "exact finish" once at most ``exact_switch`` bases remain.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_solve
from scipy.special import expit, log_expit

from ._classifier_kernels import laplace_newton
from ._design import held_dense_basis
from ._engine import free_rows
from ._kernels import dbfgs_update, psb_update
from ._linalg import cholesky_jittered

FREE_LAMBDA = 1e-8  # precision of the free intercept basis (SparseBayes' FREEBASIS uses eps)
ARMIJO_C1 = 1e-4
MAX_HALVINGS = 40
D_MIN_REL = 1e-10  # clip of the curvature diagonal, relative to the effective sample size
D_MAX_REL = 1e10
NEWTON_MAX_ITER = 25
EXACT_GTOL_REL = 1e-8  # Newton stops at max|gradient| <= this times the sum of weights
NEWTON_SMALL_STEP = 1e-6  # ... or after a full step this small relative to max(1, max|w|)
LINEAR_INNER_FORCING = 0.1  # linear basis: an inner solve stops once max|gradient| fell 10x


# ---------------------------------------------------------------------------------- likelihoods
def data_loss(Z, T, sw, likelihood):
    """Negative log-likelihood: per column (K,) for "bernoulli", shape (1,) for "softmax"."""
    if likelihood == "bernoulli":
        # softplus(z) - t z = -log sigma(z) + (1 - t) z, stable for large |z|
        L = -log_expit(Z) + (1.0 - T) * Z
        return np.asarray(sw @ L)  # asarray: computed when Z is chunked (dask)
    zmax = Z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(Z - zmax).sum(axis=1))
    return np.array([float(sw @ (lse - (T * Z).sum(axis=1)))])


def probabilities(Z, likelihood):
    """Mean of the likelihood at logits Z."""
    if likelihood == "bernoulli":
        return expit(Z)
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    E /= E.sum(axis=1, keepdims=True)
    return E


def _loss_resid(Z, T, sw, likelihood):
    loss = data_loss(Z, T, sw, likelihood)
    P = probabilities(Z, likelihood)
    R = sw[:, None] * (P - T)
    return loss, R, P


def _reduce(A, likelihood):
    """Sum over coefficients per column (bernoulli) or over everything (softmax, shape (1,))."""
    if likelihood == "bernoulli":
        return A.sum(axis=0)
    return np.array([A.sum()])


# ---------------------------------------------------------------------------------- DQN phase
def dqn_inner(design, state, T, sw, likelihood, settings):
    """Approximate posterior mode by diagonal quasi-Newton steps (warm-started); updates
    ``state.coef`` and ``state.curvature`` in place.

    Returns the data loss at the final point (per column, or shape (1,) for softmax).
    """
    coef, lam, mask, D = state.coef, state.lam, state.mask, state.curvature
    wsum = design.weight_sum
    d_min, d_max = D_MIN_REL * wsum, D_MAX_REL * wsum
    gtol = settings.inner_tol * wsum
    diag_update = settings.diag_update
    Z = design.matvec(coef)
    loss, R, P = _loss_resid(Z, T, sw, likelihood)
    G = design.rmatvec(R) + lam * coef
    G[~mask] = 0.0
    if diag_update == "exact":
        D[...] = _exact_diag(design, P, sw, likelihood)
    gtol = _inner_tolerance(G, gtol, settings.inner_forcing)
    for _ in range(settings.inner_max_iter):
        if not np.any(np.abs(G) > gtol):
            break
        Pd = -G / (D + lam)
        Q = design.matvec(Pd)
        gp = _reduce(G * Pd, likelihood)
        a0 = 0.5 * _reduce(lam * coef * coef, likelihood)
        a1 = _reduce(lam * coef * Pd, likelihood)
        a2 = _reduce(lam * Pd * Pd, likelihood)
        E0 = loss + a0
        eta = np.ones_like(E0)
        accepted = np.zeros(E0.shape, dtype=bool)
        trial_loss = loss.copy()
        for _ in range(MAX_HALVINGS):
            Lt = data_loss(Z + eta * Q, T, sw, likelihood)
            Et = Lt + a0 + eta * a1 + 0.5 * eta * eta * a2
            ok = (Et <= E0 + ARMIJO_C1 * eta * gp) & ~accepted
            trial_loss = np.where(ok, Lt, trial_loss)
            accepted |= ok
            if accepted.all():
                break
            eta = np.where(accepted, eta, 0.5 * eta)
        eta = np.where(accepted, eta, 0.0)  # no decrease found along p: stay put
        if not accepted.any():
            break
        S = eta * Pd
        coef += S
        Z += eta * Q
        loss, R, P = _loss_resid(Z, T, sw, likelihood)
        G_new = design.rmatvec(R) + lam * coef
        G_new[~mask] = 0.0
        if diag_update == "exact":
            D[...] = _exact_diag(design, P, sw, likelihood)
        else:
            Y = (G_new - G) - lam * S
            update = dbfgs_update if diag_update == "dbfgs" else psb_update
            if likelihood == "bernoulli":
                for k in range(coef.shape[1]):
                    if accepted[k]:
                        dk = np.ascontiguousarray(D[:, k])
                        update(dk, S[:, k].copy(), Y[:, k].copy(), d_min, d_max, 1e-12)
                        D[:, k] = dk
            else:
                dflat = D.reshape(-1)  # C-contiguous: a view
                update(dflat, S.reshape(-1), Y.reshape(-1), d_min, d_max, 1e-12)
        G = G_new
    D[~mask] = np.maximum(D[~mask], d_min)
    state.logits = Z
    return loss


def _inner_tolerance(G, gtol, forcing):
    """Gradient tolerance of one warm-started inner solve: ``gtol`` (absolute), or the
    starting gradient times the ``forcing`` term when that is larger (an inexact-Newton
    forcing term; 0 turns it off). The estimator sets it for the linear basis only: on IMDB
    (TF-IDF, 368k features) every inner solve used all its steps at every outer iteration, and
    a forcing of 0.1 halves the fit time at equal accuracy; on kernel bases (strongly correlated
    columns) the inexact modes change which bases the diagonal phase prunes, and the hybrid fit
    moves away from the exact solver's model."""
    if forcing <= 0.0:
        return gtol
    return max(gtol, forcing * float(np.max(np.abs(G), initial=0.0)))


def _exact_diag(design, P, sw, likelihood):
    """Exact diagonal of the data curvature, ``(Phi * Phi)' b`` per column (one pass each)."""
    B = sw[:, None] * P * (1.0 - P)  # bernoulli b, and softmax's diagonal block p_k (1 - p_k)
    d_min = D_MIN_REL * design.weight_sum
    out = np.empty((design.n_coef, P.shape[1]))
    for k in range(P.shape[1]):
        out[:, k] = design.sq_column_norms(B[:, k])
    return np.maximum(out, d_min)


# ---------------------------------------------------------------------------------- exact phase
def _softmax_hessian(Phi, P, sw, mask, lam_flat):
    """Full Laplace precision of the multinomial model over the masked coefficients, ordered
    class-major (class k's active coefficients, then class k+1's)."""
    K = P.shape[1]
    cols = [np.flatnonzero(mask[:, k]) for k in range(K)]
    Phis = [Phi[:, c] for c in cols]
    starts = np.concatenate([[0], np.cumsum([c.size for c in cols])])
    H = np.empty((starts[-1], starts[-1]))
    for k in range(K):
        for j in range(k, K):
            c = sw * P[:, k] * ((1.0 if j == k else 0.0) - P[:, j])
            blk = Phis[k].T @ (Phis[j] * c[:, None])
            H[starts[k] : starts[k + 1], starts[j] : starts[j + 1]] = blk
            if j != k:
                H[starts[j] : starts[j + 1], starts[k] : starts[k + 1]] = blk.T
    H[np.diag_indices_from(H)] += lam_flat
    return H


def _newton_softmax(Phi, T, sw, coef, lam, mask):
    """Exact posterior mode of the multinomial model; returns (coef, loss, chol, flat index)."""
    m, K = coef.shape
    # coefficient (j, k) sits at flat position k * m + j (class-major blocks)
    idx = np.flatnonzero(mask.T.reshape(-1))
    lam_flat = lam.T.reshape(-1)[idx]
    Z = Phi @ coef
    for _ in range(NEWTON_MAX_ITER):
        P = probabilities(Z, "softmax")
        Gm = Phi.T @ (sw[:, None] * (P - T)) + lam * coef
        g = Gm.T.reshape(-1)[idx]
        H = _softmax_hessian(Phi, P, sw, mask, lam_flat)
        cf, _ = cholesky_jittered(H)
        step_flat = -cho_solve(cf, g, check_finite=False)
        step = np.zeros(K * m)
        step[idx] = step_flat
        step = step.reshape(K, m).T
        dZ = Phi @ step
        loss0 = data_loss(Z, T, sw, "softmax")[0] + 0.5 * np.sum(lam * coef * coef * mask)
        gp = g @ step_flat
        eta = 1.0
        for _ in range(MAX_HALVINGS):
            coef_t = coef + eta * step
            lt = data_loss(Z + eta * dZ, T, sw, "softmax")[0] + 0.5 * np.sum(
                lam * coef_t * coef_t * mask
            )
            if lt <= loss0 + ARMIJO_C1 * eta * gp:
                break
            eta *= 0.5
        else:
            eta = 0.0
        coef = coef + eta * step
        Z = Z + eta * dZ
        if eta == 0.0 or np.max(np.abs(eta * step)) <= 1e-9 * max(1.0, np.max(np.abs(coef))):
            break
    P = probabilities(Z, "softmax")
    H = _softmax_hessian(Phi, P, sw, mask, lam_flat)
    cf, _ = cholesky_jittered(H)
    return coef, data_loss(Z, T, sw, "softmax")[0], cf, idx


def exact_step(design, state, T, sw, likelihood):
    """Exact Laplace step: posterior modes and full covariances over the active set.

    Sets ``state.coef``, ``state.sigma_diag`` and ``state.sigma_full``; returns the data loss and
    the log-determinant of the Laplace precision (summed over the columns). A fit runs it on one
    BLAS thread, with any ``n_jobs`` (:func:`..utils._threads.fit_threads`: BLAS is widened only
    inside ``parallel`` blocks, and the step's large products go to ``map_blocks``).
    """
    if getattr(design, "chunked", False):  # dask: the same steps as map/reduce over row blocks
        from ._dask_laplace import exact_step_chunked

        return exact_step_chunked(design, state, T, sw, likelihood)
    Phi = held_dense_basis(design, state)
    coef, lam, mask = state.coef, state.lam, state.mask
    n_coef, K = coef.shape
    sigma_diag = np.zeros((n_coef, K))
    loss_total = 0.0
    logdet = 0.0
    if likelihood == "bernoulli":
        sigma_full = []
        class_loss, class_ld, statuses = [], [], []
        gtol = EXACT_GTOL_REL * design.weight_sum
        f = free_rows(design)
        for k in range(K):
            idx = np.flatnonzero(mask[:, k])
            ids = np.full(idx.size, -1, dtype=np.intp)  # basis ids, -1 the intercept
            ids[idx >= f] = design.active[idx[idx >= f] - f]
            # a binary problem's model is every active basis: no copy of the n-by-m basis
            Phi_k = Phi if idx.size == Phi.shape[1] else np.take(Phi, idx, axis=1)
            w, loss, S, ld, status, gram = laplace_newton(
                Phi_k,
                T[:, k],
                sw,
                np.ascontiguousarray(coef[idx, k]),
                np.ascontiguousarray(lam[idx, k]),
                NEWTON_MAX_ITER,
                gtol,
                NEWTON_SMALL_STEP,
                ARMIJO_C1,
                _chord_matrix(state.gram.get(k), ids, Phi_k),
            )
            state.gram[k] = None if gram is None else (ids, *gram)
            if status < 0:
                raise FloatingPointError(
                    "The Laplace precision matrix is not positive definite even with jitter; "
                    "the basis is numerically degenerate."
                )
            coef[:, k] = 0.0
            coef[idx, k] = w
            sigma_diag[idx, k] = np.diag(S)
            sigma_full.append((idx, S))
            loss_total += loss
            logdet += ld
            class_ld.append(ld)
            class_loss.append(loss)
            statuses.append(int(status))
        state.sigma_full = sigma_full
        state.newton_status = statuses
        state.class_evidence.append(_class_evidence(class_loss, class_ld, state, design))
    else:
        coef_new, loss, cf, idx = _newton_softmax(Phi, T, sw, coef, lam, mask)
        coef[...] = coef_new * mask
        S = cho_solve(cf, np.eye(idx.size), check_finite=False)
        flat = np.zeros(n_coef * K)
        flat[idx] = np.diag(S)
        sigma_diag[...] = flat.reshape(K, n_coef).T
        state.sigma_full = [(idx, S)]  # class-major flat positions k * n_coef + j
        loss_total = loss
        logdet = 2.0 * np.sum(np.log(np.diag(cf[0])))
    state.sigma_diag = sigma_diag
    return loss_total, logdet


def _chord_matrix(cached, ids, Phi):
    """A chord matrix for the Newton solve of one class over the bases ``ids`` (columns of
    ``Phi``): the data Gram matrix of its previous solve (``cached``: basis ids, Gram, curvature
    weights ``b``), restricted to the bases still in the model, with the rows and columns of the
    bases added since computed at the same ``b`` (O(n m k) for k new bases). None without a
    previous solve or when no basis is shared."""
    if cached is None or not ids.size:
        return None
    prev_ids, G, b = cached
    pos = np.minimum(np.searchsorted(prev_ids, ids), prev_ids.size - 1)
    have = prev_ids[pos] == ids
    if not have.any():
        return None
    if have.all():
        return G if pos.size == prev_ids.size else G[np.ix_(pos, pos)]
    G0 = np.empty((ids.size, ids.size))
    G0[np.ix_(have, have)] = G[np.ix_(pos[have], pos[have])]
    new = np.flatnonzero(~have)
    cross = Phi.T @ (Phi[:, new] * b[:, None])
    G0[:, new] = cross
    G0[new, :] = cross.T
    return G0


# ---------------------------------------------------------------------------------- evidence
def _class_evidence(loss, logdet, state, design):
    """Laplace evidence of each one-vs-rest problem, up to a constant, shape (K,)."""
    f = free_rows(design)
    lam, coef, mask = state.lam, state.coef, state.mask
    log_lam = np.where(mask[f:], np.log(np.where(mask[f:], lam[f:], 1.0)), 0.0).sum(axis=0)
    quad = np.where(mask, lam * coef * coef, 0.0).sum(axis=0)
    return -np.asarray(loss) + 0.5 * log_lam - 0.5 * quad - 0.5 * np.asarray(logdet)


def _log_evidence(loss, logdet, state, design):
    """Laplace estimate of the log marginal likelihood, up to a constant."""
    f = free_rows(design)
    sub = state.mask[f:]
    prior = 0.5 * np.sum(np.log(state.lam[f:][sub])) - 0.5 * np.sum(
        (state.lam * state.coef * state.coef)[state.mask]
    )
    return float(-np.sum(loss) + prior - 0.5 * logdet)


def exact_size(design, state, likelihood):
    """Size of the exact phase's linear algebra: the active bases (one-vs-rest factorises per
    class) or the active coefficients of all classes (softmax couples them)."""
    if likelihood == "bernoulli":
        return design.n_active
    f = free_rows(design)
    return int(state.mask[f:].sum())


# ---------------------------------------------------------------------------------- likelihoods
class LaplaceStep:
    """What one posterior step leaves for the evidence: the data loss (per column, or shape (1,)
    for softmax) and the log-determinant of the (diagonal or full) Laplace precision."""

    def __init__(self, loss, logdet=None):
        self.loss = loss
        self.logdet = logdet


class Bernoulli:
    """Bernoulli likelihood with a logistic link (one column per binary or one-vs-rest problem),
    under the Laplace approximation, for :func:`._engine.run_path`.

    Parameters
    ----------
    T : ndarray of shape (n_samples, K)
        Targets in {0, 1}.
    sw : ndarray of shape (n_samples,)
        Sample weights.
    """

    name = "bernoulli"
    readmits = True  # Tipping and Faul's add test in the exact phase (:mod:`._readmission`)
    uses_settle_test = True
    stops_when_empty = False
    stop_statistic = "log_precision"

    def __init__(self, T, sw):
        self.T = T
        self.sw = sw

    def initial_curvature(self, wsum, K):
        """Exact curvature diagonal at w = 0 for unit-RMS columns: ``p (1 - p) wsum``, p = 1/2."""
        return 0.25 * wsum

    def exact_size(self, design, state):
        return exact_size(design, state, self.name)

    def start(self, design, state):
        pass

    def compact(self, keep_rows):
        pass

    def update_noise(self, design, state, step, gamma, settings, exact):
        pass

    def curvature(self, design, state):
        return state.curvature

    def inner_solve(self, design, state, settings):
        return LaplaceStep(dqn_inner(design, state, self.T, self.sw, self.name, settings))

    def exact_step(self, design, state, settings):
        return LaplaceStep(*exact_step(design, state, self.T, self.sw, self.name))

    def log_evidence(self, design, state, step, update, settings, exact):
        """Laplace evidence at the precisions the step used (always recorded: the re-admission
        stop reads it)."""
        return _log_evidence(step.loss, step.logdet, state, design)

    def finish(self, design, state, settings, exact):
        """Final posterior at the final precisions (after the last pruning)."""
        if exact:
            exact_step(design, state, self.T, self.sw, self.name)
            return
        dqn_inner(design, state, self.T, self.sw, self.name, settings)
        state.sigma_diag = np.where(state.mask, 1.0 / (state.curvature + state.lam), 0.0)
        state.sigma_full = None

    def mean(self, Z):
        """Mean of the likelihood at logits Z."""
        return probabilities(Z, self.name)


class Softmax(Bernoulli):
    """Multinomial likelihood with a softmax link (one column per class), under the Laplace
    approximation; the exact phase couples the classes' coefficients in one precision matrix."""

    name = "softmax"

    def initial_curvature(self, wsum, K):
        """Diagonal block ``p_k (1 - p_k) wsum`` at w = 0, p_k = 1/K."""
        return wsum * (1.0 / K) * (1.0 - 1.0 / K)


LIKELIHOODS = {"bernoulli": Bernoulli, "softmax": Softmax}
