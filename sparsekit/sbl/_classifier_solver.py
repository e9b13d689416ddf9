"""Laplace-approximated sparse Bayesian classification on a ``DesignMatrix``.

Everything here works on the scaled basis Phi (columns of unit weighted RMS, an implicit intercept
column of ones at coefficient index 0 when the design has one). Notation:

- ``W`` (n_coef, K): posterior modes, one column per binary problem ("bernoulli": the binary
  problem or the K one-vs-rest problems, solved together) or per class ("softmax": multinomial).
- ``lam`` (n_coef, K): weight precisions (ARDRegression's ``lambda_``); the intercept row is a free
  basis with a tiny fixed precision and is never pruned.
- ``mask`` (n_coef, K): which (basis, column) pairs are still in the model. A basis is removed
  from the design (compacted in place) once every column has pruned it.
- ``D`` (n_coef, K): diagonal approximation of the data curvature ``Phi' diag(b) Phi``.

Two solvers share one outer loop (:func:`fit_path`):

- the DQN phase (docs/algorithms/dqn_sbl.rst): the mode by diagonal quasi-Newton steps ``p = -g / (D + lam)`` with an
  Armijo search along ``z + eta Phi p`` (two passes over Phi per step, GEMMs for K columns), ``D``
  by the diagonal BFGS (or PSB, or exact-diagonal) update, warm-started across outer iterations,
  and ``Sigma_jj ~ 1 / (D_jj + lam_j)`` in the MacKay/EM update, so nothing m-by-m is formed;
- the exact phase: Newton steps with a Cholesky factor of the full Laplace precision
  ``H = Phi' diag(b) Phi + diag(lam)``, and ``Sigma = H^-1``. It runs from the start for
  ``solver="exact"`` and as the "exact finish" once at most ``exact_switch`` bases remain.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.special import expit, log_expit

from ._classifier_kernels import laplace_newton_bernoulli
from ._kernels import EM, MACKAY, dbfgs_update, psb_update, reestimate_alpha
from ._readmission import GAIN_TOL as READMIT_GAIN_TOL
from ._readmission import apply_additions, propose_additions, tipping_faul_delete

FREE_LAMBDA = 1e-8  # precision of the free intercept basis (SparseBayes' FREEBASIS uses eps)
GAMMA_FLOOR = 1e-12
LAMBDA_FLOOR = 1e-12
ARMIJO_C1 = 1e-4
MAX_HALVINGS = 40
D_MIN_REL = 1e-10  # clip of the curvature diagonal, relative to the effective sample size
D_MAX_REL = 1e10
RELEVANT_GAMMA = 1e-3  # bases with gamma below this are "creeping" and ignored by the stop rule
NEWTON_MAX_ITER = 25
EXACT_GTOL_REL = 1e-8  # Newton stops at max|gradient| <= this times the sum of weights
NEWTON_SMALL_STEP = 1e-6  # ... or after a full step this small relative to max(1, max|w|)
# DQN-phase "settled" test (see _DqnSettle): the training logits move by less than this
# (relative L2 norm) per iteration while at most SETTLE_PRUNE_FRACTION of the active bases are
# pruned over n_iter_no_change iterations.
SETTLE_LOGIT_TOL = 1e-3
LINEAR_INNER_FORCING = 0.1  # linear basis: an inner solve stops once max|gradient| fell 10x
SETTLE_PRUNE_FRACTION = 0.01


class ClassifierState:
    """Mutable state of a fit (see the module docstring for the notation)."""

    def __init__(self, W, lam, mask, D):
        self.W = W
        self.lam = lam
        self.mask = mask
        self.D = D
        self.sigma_diag = None
        self.sigma_full = None  # exact phase, bernoulli: list of K pairs (coef index, covariance)
        self.n_iter = 0
        self.n_iter_dqn = 0
        self.converged = False
        self.scores = []
        self.pruned_lam = {}  # (original column index, k) -> precision when it was pruned
        self.phase = "dqn"
        self.logits = None  # training logits at the end of the last DQN inner solve
        self.readmitted = {}  # (original column index, k) -> times re-admitted
        self.class_evidence = []  # exact phase, bernoulli: Laplace evidence per class and step


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
def dqn_inner(design, state, T, sw, likelihood, params):
    """Approximate posterior mode by diagonal quasi-Newton steps (warm-started).

    Returns the data loss at the final point (per column, or shape (1,) for softmax).
    """
    W, lam, mask, D = state.W, state.lam, state.mask, state.D
    wsum = design.weight_sum
    d_min, d_max = D_MIN_REL * wsum, D_MAX_REL * wsum
    gtol = params["inner_tol"] * wsum
    diag_update = params["diag_update"]
    Z = design.matvec(W)
    loss, R, P = _loss_resid(Z, T, sw, likelihood)
    G = design.rmatvec(R) + lam * W
    G[~mask] = 0.0
    if diag_update == "exact":
        D[...] = _exact_diag(design, P, sw, likelihood)
    gtol = _inner_tolerance(G, gtol, params)
    for _ in range(params["inner_max_iter"]):
        if not np.any(np.abs(G) > gtol):
            break
        Pd = -G / (D + lam)
        Q = design.matvec(Pd)
        gp = _reduce(G * Pd, likelihood)
        a0 = 0.5 * _reduce(lam * W * W, likelihood)
        a1 = _reduce(lam * W * Pd, likelihood)
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
        W += S
        Z += eta * Q
        loss, R, P = _loss_resid(Z, T, sw, likelihood)
        G_new = design.rmatvec(R) + lam * W
        G_new[~mask] = 0.0
        if diag_update == "exact":
            D[...] = _exact_diag(design, P, sw, likelihood)
        else:
            Y = (G_new - G) - lam * S
            update = dbfgs_update if diag_update == "dbfgs" else psb_update
            if likelihood == "bernoulli":
                for k in range(W.shape[1]):
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


def _inner_tolerance(G, gtol, params):
    """Gradient tolerance of one warm-started inner solve: ``inner_tol`` (absolute), or the
    starting gradient times ``params["inner_forcing"]`` when that is larger (an inexact-Newton
    forcing term; 0 turns it off). The estimator sets it for the linear basis only: on IMDB
    (TF-IDF, 368k features) every inner solve used all its steps at every outer iteration, and
    a forcing of 0.1 halves the fit time at equal accuracy; on kernel bases (strongly correlated
    columns) the inexact modes change which bases the diagonal phase prunes, and the hybrid fit
    moves away from the exact solver's model."""
    forcing = params.get("inner_forcing", 0.0)
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
def _dense_basis(design):
    """[1 | Phi_A] (or Phi_A) as a dense float64 array, for the exact phase only."""
    Pa = np.asarray(design.dense_active(), dtype=np.float64)
    if design.intercept_column:
        return np.hstack([np.ones((design.n_samples, 1)), Pa])
    return np.ascontiguousarray(Pa)


def _cholesky(H):
    """Cholesky factor of a symmetric positive definite H, adding jitter if needed."""
    try:
        return cho_factor(H, lower=True, check_finite=False), 0.0
    except LinAlgError:
        scale = max(float(np.max(np.abs(np.diag(H)))), 1.0)
        jitter = 1e-10 * scale
        for _ in range(12):
            try:
                Hj = H + jitter * np.eye(H.shape[0])
                return cho_factor(Hj, lower=True, check_finite=False), jitter
            except LinAlgError:
                jitter *= 10.0
        raise


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


def _newton_softmax(Phi, T, sw, W, lam, mask):
    """Exact posterior mode of the multinomial model; returns (W, loss, chol, flat index)."""
    m, K = W.shape
    # coefficient (j, k) sits at flat position k * m + j (class-major blocks)
    idx = np.flatnonzero(mask.T.reshape(-1))
    lam_flat = lam.T.reshape(-1)[idx]
    Z = Phi @ W
    for _ in range(NEWTON_MAX_ITER):
        P = probabilities(Z, "softmax")
        Gm = Phi.T @ (sw[:, None] * (P - T)) + lam * W
        g = Gm.T.reshape(-1)[idx]
        H = _softmax_hessian(Phi, P, sw, mask, lam_flat)
        cf, _ = _cholesky(H)
        step_flat = -cho_solve(cf, g, check_finite=False)
        step = np.zeros(K * m)
        step[idx] = step_flat
        step = step.reshape(K, m).T
        dZ = Phi @ step
        loss0 = data_loss(Z, T, sw, "softmax")[0] + 0.5 * np.sum(lam * W * W * mask)
        gp = g @ step_flat
        eta = 1.0
        for _ in range(MAX_HALVINGS):
            Wt = W + eta * step
            lt = data_loss(Z + eta * dZ, T, sw, "softmax")[0] + 0.5 * np.sum(lam * Wt * Wt * mask)
            if lt <= loss0 + ARMIJO_C1 * eta * gp:
                break
            eta *= 0.5
        else:
            eta = 0.0
        W = W + eta * step
        Z = Z + eta * dZ
        if eta == 0.0 or np.max(np.abs(eta * step)) <= 1e-9 * max(1.0, np.max(np.abs(W))):
            break
    P = probabilities(Z, "softmax")
    H = _softmax_hessian(Phi, P, sw, mask, lam_flat)
    cf, _ = _cholesky(H)
    return W, data_loss(Z, T, sw, "softmax")[0], cf, idx


def exact_step(design, state, T, sw, likelihood):
    """Exact Laplace step: posterior modes and full covariances over the active set.

    Sets ``state.W``, ``state.sigma_diag`` and ``state.sigma_full``; returns the data loss and
    the log-determinant of the Laplace precision (summed over the columns).
    """
    if getattr(design, "chunked", False):  # dask: the same steps as map/reduce over row blocks
        from ._dask_laplace import exact_step_chunked

        return exact_step_chunked(design, state, T, sw, likelihood)
    Phi = _dense_basis(design)
    W, lam, mask = state.W, state.lam, state.mask
    n_coef, K = W.shape
    sigma_diag = np.zeros((n_coef, K))
    loss_total = 0.0
    logdet = 0.0
    if likelihood == "bernoulli":
        sigma_full = []
        class_loss, class_ld = [], []
        gtol = EXACT_GTOL_REL * design.weight_sum
        for k in range(K):
            idx = np.flatnonzero(mask[:, k])
            w, loss, S, ld, status = laplace_newton_bernoulli(
                np.ascontiguousarray(Phi[:, idx]),
                T[:, k],
                sw,
                np.ascontiguousarray(W[idx, k]),
                np.ascontiguousarray(lam[idx, k]),
                NEWTON_MAX_ITER,
                gtol,
                NEWTON_SMALL_STEP,
                ARMIJO_C1,
            )
            if status < 0:
                raise FloatingPointError(
                    "The Laplace precision matrix is not positive definite even with jitter; "
                    "the basis is numerically degenerate."
                )
            W[:, k] = 0.0
            W[idx, k] = w
            sigma_diag[idx, k] = np.diag(S)
            sigma_full.append((idx, S))
            loss_total += loss
            logdet += ld
            class_ld.append(ld)
            class_loss.append(loss)
        state.sigma_full = sigma_full
        state.class_evidence.append(_class_evidence(class_loss, class_ld, state, design))
    else:
        W_new, loss, cf, idx = _newton_softmax(Phi, T, sw, W, lam, mask)
        W[...] = W_new * mask
        S = cho_solve(cf, np.eye(idx.size), check_finite=False)
        flat = np.zeros(n_coef * K)
        flat[idx] = np.diag(S)
        sigma_diag[...] = flat.reshape(K, n_coef).T
        state.sigma_full = [(idx, S)]  # class-major flat positions k * n_coef + j
        loss_total = loss
        logdet = 2.0 * np.sum(np.log(np.diag(cf[0])))
    state.sigma_diag = sigma_diag
    return loss_total, logdet


# ---------------------------------------------------------------------------------- outer loop
def _free_rows(design):
    return 1 if design.intercept_column else 0


def _reestimate_and_prune(design, state, params, delete_test=False, damp=False):
    """MacKay/EM update over the masked, non-free coefficients, then pruning and compaction.

    With ``delete_test`` (the exact phase with re-admission), the basis of each class whose
    removal raises the evidence most is also pruned (:func:`._readmission.tipping_faul_delete`),
    instead of after its precision has crept up to ``threshold_lambda``. With ``damp`` (one bool
    per class), the precisions of those classes move half-way (in log scale) to their MacKay/EM values: MacKay's simultaneous update
    of many correlated bases can fall into a two-cycle (measured: 70 RBF bases, the evidence
    alternating between two values until ``max_iter``).

    Returns ``(changed, max_dlog)``: whether the active set changed, and the largest change of
    log precision over the relevant coefficients (gamma above RELEVANT_GAMMA).
    """
    f = _free_rows(design)
    W, lam, mask = state.W, state.lam, state.mask
    sub = mask[f:]
    if not sub.any():
        return False, 0.0
    mode = MACKAY if params["update"] == "mackay" else EM
    lam_old = lam[f:][sub]
    lam_new, gamma = reestimate_alpha(
        W[f:][sub].copy(),
        state.sigma_diag[f:][sub].copy(),
        lam_old.copy(),
        mode,
        0.0,
        0.0,
        GAMMA_FLOOR,
        LAMBDA_FLOOR,
    )
    if damp is not False and np.any(damp):
        rows_damped = np.asarray(damp)[np.nonzero(sub)[1]] & np.isfinite(lam_new)
        lam_new = np.where(rows_damped, np.sqrt(lam_new * lam_old), lam_new)
    if delete_test:
        lam_new = tipping_faul_delete(
            W[f:][sub], state.sigma_diag[f:][sub], gamma, lam_old, np.nonzero(sub)[1], lam_new
        )
    relevant = (gamma > RELEVANT_GAMMA) & np.isfinite(lam_new)
    if relevant.any():
        dlog = float(np.max(np.abs(np.log(lam_new[relevant]) - np.log(lam_old[relevant]))))
    else:
        dlog = 0.0
    prune = ~(lam_new < params["threshold_lambda"])
    lam_sub = lam[f:]
    lam_sub[sub] = np.where(prune, 1.0, lam_new)
    changed = bool(prune.any())
    if changed:
        rows, cols = np.nonzero(sub)
        keys = zip(design.active[rows[prune]].tolist(), cols[prune].tolist())
        state.pruned_lam.update(zip(keys, lam_new[prune].tolist()))
        mask_sub = mask[f:]
        mask_sub[rows[prune], cols[prune]] = False
        W[~mask] = 0.0
        _compact_unused(design, state)
    return changed, dlog


def _compact_unused(design, state):
    """Remove from the design (and the state) the bases that no class has in its model."""
    f = _free_rows(design)
    keep = state.mask[f:].any(axis=1)
    if keep.all():
        return
    keep_rows = np.concatenate([np.ones(f, dtype=bool), keep])
    design.compact(keep)
    state.W = np.ascontiguousarray(state.W[keep_rows])
    state.lam = np.ascontiguousarray(state.lam[keep_rows])
    state.mask = np.ascontiguousarray(state.mask[keep_rows])
    state.D = np.ascontiguousarray(state.D[keep_rows])
    if state.sigma_diag is not None:
        state.sigma_diag = np.ascontiguousarray(state.sigma_diag[keep_rows])


def _class_evidence(loss, logdet, state, design):
    """Laplace evidence of each one-vs-rest problem, up to a constant, shape (K,)."""
    f = _free_rows(design)
    lam, W, mask = state.lam, state.W, state.mask
    log_lam = np.where(mask[f:], np.log(np.where(mask[f:], lam[f:], 1.0)), 0.0).sum(axis=0)
    quad = np.where(mask, lam * W * W, 0.0).sum(axis=0)
    return -np.asarray(loss) + 0.5 * log_lam - 0.5 * quad - 0.5 * np.asarray(logdet)


def _log_evidence(loss, logdet, state, design):
    """Laplace estimate of the log marginal likelihood, up to a constant."""
    f = _free_rows(design)
    sub = state.mask[f:]
    prior = 0.5 * np.sum(np.log(state.lam[f:][sub])) - 0.5 * np.sum(
        (state.lam * state.W * state.W)[state.mask]
    )
    return float(-np.sum(loss) + prior - 0.5 * logdet)


def exact_size(design, state, likelihood):
    """Size of the exact phase's linear algebra: the active bases (one-vs-rest factorises per
    class) or the active coefficients of all classes (softmax couples them)."""
    if likelihood == "bernoulli":
        return design.n_active
    f = _free_rows(design)
    return int(state.mask[f:].sum())


class _DqnSettle:
    """Second stopping test of the DQN phase: the model has settled when, for ``window``
    consecutive iterations, the training logits moved by less than SETTLE_LOGIT_TOL (relative L2
    norm) each time and at most SETTLE_PRUNE_FRACTION of the active bases were pruned in total.

    On wide sparse problems (text) the diagonal phase ends with a thousand or more bases, above
    ``exact_switch``, and the log-precision test alone waits for hundreds of iterations while
    weakly relevant bases creep, one every few iterations, towards the pruning threshold: the
    jitter of the quasi-Newton diagonal keeps ``max |d log lambda|`` near ``dqn_tol`` although
    the predictions no longer change. The basis count of the window keeps the test from firing
    while the active set is still shrinking in earnest (the usual kernel path towards the exact
    phase).
    """

    def __init__(self, window):
        self.window = window
        self.prev = None
        self.history = []  # (logits settled?, active bases) per iteration

    def update(self, logits, n_active):
        """Record one DQN iteration; returns whether the model has settled."""
        if logits is None:
            return False
        settled = False
        if self.prev is not None and self.prev.shape == logits.shape:
            norm = float(np.linalg.norm(logits))
            change = float(np.linalg.norm(logits - self.prev))
            settled = change <= SETTLE_LOGIT_TOL * max(norm, np.finfo(float).tiny)
        self.prev = logits.copy()
        self.history.append((settled, n_active))
        recent = self.history[-(self.window + 1) :]
        if len(recent) <= self.window or not all(ok for ok, _ in recent[1:]):
            return False
        first, last = recent[0][1], recent[-1][1]
        return first - last <= SETTLE_PRUNE_FRACTION * first

    def reset(self):
        self.prev = None
        self.history = []


def _evidence_flat(state, design):
    """Whether the last re-estimate raised the evidence by less than the re-admission gain
    tolerance (per unit of weight): the stop of Tipping and Faul's algorithm, for a precision that
    creeps slowly towards a distant optimum after the model has otherwise settled."""
    if len(state.scores) < 2:
        return False
    return abs(state.scores[-1] - state.scores[-2]) <= READMIT_GAIN_TOL * design.weight_sum


def fit_path(design, state, T, sw, likelihood, params, on_iter=None, candidates=None):
    """Outer loop: DQN phase until at most ``exact_switch`` bases remain (or always exact for
    ``params["solver"] == "exact"``), then exact Laplace iterations; stop with a stable active
    set and small changes of the relevant log precisions for ``n_iter_no_change`` iterations.

    With a ``candidates`` source (:class:`._readmission.CandidateColumns`), the exact phase
    re-admits pruned bases by Tipping and Faul's test (one-vs-rest and softmax): a sweep over
    every basis function at the first exact iteration, after every sweep that added a basis, and
    before the phase may stop, so it stops only when no basis outside the model is worth adding;
    and each iteration also prunes, per class, the basis whose removal raises the evidence most
    (Tipping and Faul's delete test) rather than waiting for its precision to creep up to
    ``threshold_lambda``.
    """
    calm = 0
    exact = params["solver"] == "exact"
    settle = _DqnSettle(params["n_iter_no_change"])
    readmit = candidates is not None
    sweep_next = True
    if readmit:
        # a warm start may leave bases out of every class's model: they are candidates only
        _compact_unused(design, state)
    while state.n_iter < params["max_iter"]:
        if not exact and exact_size(design, state, likelihood) <= params["exact_switch"]:
            exact = True
            calm = 0
        state.n_iter += 1
        additions = []
        if exact:
            state.phase = "exact"
            loss, logdet = exact_step(design, state, T, sw, likelihood)
            tol = params["tol"]
            if readmit and (sweep_next or calm + 1 >= params["n_iter_no_change"]):
                additions = propose_additions(
                    design, state, T, sw, candidates, params["threshold_lambda"], likelihood
                )
                sweep_next = bool(additions)
        else:
            state.n_iter_dqn += 1
            loss = dqn_inner(design, state, T, sw, likelihood, params)
            H = state.D + state.lam
            state.sigma_diag = np.where(state.mask, 1.0 / H, 0.0)
            logdet = float(np.sum(np.log(H[state.mask])))
            tol = params["dqn_tol"]
        state.scores.append(_log_evidence(loss, logdet, state, design))
        # a class whose evidence fell since the last update overshot: damp its next update
        ev = state.class_evidence
        damp = exact and readmit and len(ev) > 1 and ev[-1] < ev[-2]
        changed, dlog = _reestimate_and_prune(
            design, state, params, delete_test=exact and readmit, damp=damp
        )
        if additions:
            apply_additions(design, state, candidates, additions, 0.25 * design.weight_sum)
            changed = True
        if on_iter is not None:
            on_iter(state, design, dlog)
        settled = dlog < tol or (exact and readmit and _evidence_flat(state, design))
        calm = calm + 1 if (not changed and settled) else 0
        if not exact and settle.update(state.logits, design.n_active):
            calm = params["n_iter_no_change"]
        if calm >= params["n_iter_no_change"]:
            if exact or exact_size(design, state, likelihood) > params["exact_switch"]:
                state.converged = True
                break
            exact = True  # the DQN phase converged with few bases: finish exactly
            calm = 0
    # Final posterior at the final precisions (after the last pruning).
    if exact:
        exact_step(design, state, T, sw, likelihood)
    else:
        dqn_inner(design, state, T, sw, likelihood, params)
        state.sigma_diag = np.where(state.mask, 1.0 / (state.D + state.lam), 0.0)
        state.sigma_full = None
    return state
