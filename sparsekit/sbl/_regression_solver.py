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
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from ._kernels import EM, MACKAY, reestimate_alpha

_EPS = np.finfo(np.float64).eps
GAMMA_FLOOR = 1e-12
_REFRESH = 50  # actions between full recomputations of the constructive path's statistics
GAIN_TOL = 1e-6  # log-evidence gain per unit of weight below which a re-estimate is noise
LAMBDA_FLOOR = 1e-12
BETA_MAX_FACTOR = 1e6  # SparseBayes v2 CONTROLS.BetaMaxFactor
GAMMA_SUM_CAP = 0.95  # sum(gamma) <= 0.95 W in the noise update (spec §7 P4)


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
        return np.zeros_like(mu0), np.zeros(design.n_samples)
    mu = mu0.copy()
    if np.any(mu):
        z = design.matvec(mu)
        r = rhs - beta * design.rmatvec(sw * z) - lam * mu
    else:
        z = np.zeros(design.n_samples)
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
    ``max|d mu| <= tol * max|mu|`` (the coefficient rule of spec §7; the log-precision rule alone
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


def _basis_gain(a, s, q):
    """Contribution of one basis with precision ``a`` to the log marginal likelihood, given its
    sparsity and quality factors ``s``, ``q`` (Tipping & Faul 2003, eq. 6)."""
    return 0.5 * (np.log(a) - np.log(a + s) + q * q / (a + s))


def constructive_path(design, t, sw, state, *, params, init=None, on_iter=None):
    """Tipping & Faul's fast marginal likelihood maximisation over every candidate column.

    The model starts from one basis (or from ``init = (candidate indices, precisions)``) and each
    iteration takes the single action among "add a candidate", "re-estimate a precision" and
    "delete a basis" that raises the log marginal likelihood most. For every candidate ``i``

        S_i = beta phi_i'S phi_i - beta^2 phi_i'S Phi_A Sigma Phi_A'S phi_i,
        Q_i = beta phi_i'S t     - beta^2 phi_i'S Phi_A Sigma Phi_A'S t,

    with the full posterior covariance ``Sigma`` over the (small) model A; a basis outside the
    model is worth adding exactly when ``Q_i^2 > S_i``. Pruning is therefore never final, and
    the model can never interpolate the targets while it is small, so the noise precision stays
    honest when there are more candidates than samples (where the diagonal phase fails). The
    noise precision is re-estimated only once the model has settled for the current one.

    ``Sigma``, ``mu``, S and Q are updated by rank-one formulas after each action (O(M m) work;
    one pass over Phi, O(nnz), to add a basis) and recomputed from scratch after each noise
    update and every ``_REFRESH`` actions; memory O(M m) for ``Phi' S Phi_A``. The design is not
    compacted until the end, when it is reduced to the model (in increasing column order).
    """
    W = design.weight_sum
    M = design.n_active
    beta_max = BETA_MAX_FACTOR / params["var_t"]
    a1, a2 = params["alpha_1"], params["alpha_2"]
    tol = params["tol"]
    thr = params["threshold_lambda"]
    p = design.rmatvec(sw * t)  # Phi' S t for every candidate
    tt = float(sw @ (t * t))
    st = {"cap": 16, "lam": np.empty(0), "beta": state.beta}
    st["C"] = np.empty((M, st["cap"]), order="F")  # Phi' S Phi_A, one column per model basis
    model = []  # candidate indices in the model, in order of addition
    in_model = np.zeros(M, dtype=bool)

    def refresh():
        m = len(model)
        beta, lam, C = st["beta"], st["lam"], st["C"][:, :m]
        idx = np.asarray(model, dtype=np.intp)
        if m == 0:
            st.update(Sigma=np.zeros((0, 0)), mu=np.zeros(0), S=np.full(M, beta * W), Q=beta * p)
            return
        G = np.ascontiguousarray(C[idx])
        mu, Sigma, _ = _posterior(G, beta, lam, p[idx])
        # With L L' = beta G + diag(lam): phi_i'S Phi_A Sigma Phi_A'S phi_i = |L^-1 C_i|^2.
        c = _cholesky(G, beta, lam)
        V = solve_triangular(c, C.T, lower=True, check_finite=False)
        st.update(
            Sigma=Sigma,
            mu=mu,
            S=beta * W - beta * beta * np.einsum("ij,ij->j", V, V),
            Q=beta * p - beta * (C @ mu),
        )

    def add(j, a):
        m = len(model)
        if m == st["cap"]:
            st["cap"] *= 2
            C2 = np.empty((M, st["cap"]), order="F")
            C2[:, :m] = st["C"][:, :m]
            st["C"] = C2
        C = st["C"]
        C[:, m] = design.rmatvec(sw * design.column(j))
        beta, Sigma = st["beta"], st["Sigma"]
        if "S" in st:
            # Tipping & Faul (2003), appendix: rank-one growth of Sigma, mu, S and Q.
            s_jj = 1.0 / (a + st["S"][j])
            mu_j = s_jj * st["Q"][j]
            comm = beta * (Sigma @ C[np.asarray(model, dtype=np.intp), m])
            e = beta * C[:, m] - beta * (C[:, :m] @ comm)
            st["Sigma"] = np.block(
                [[Sigma + s_jj * np.outer(comm, comm), -s_jj * comm[:, None]],
                 [-s_jj * comm[None, :], np.array([[s_jj]])]]
            )  # fmt: skip
            st["mu"] = np.append(st["mu"] - mu_j * comm, mu_j)
            st["S"] = st["S"] - s_jj * e * e
            st["Q"] = st["Q"] - mu_j * e
        model.append(j)
        in_model[j] = True
        st["lam"] = np.append(st["lam"], a)

    def change(k, a_new):
        """Set the precision of model basis k to a_new (np.inf deletes it)."""
        beta, Sigma, lam = st["beta"], st["Sigma"], st["lam"]
        m = len(model)
        sk = Sigma[:, k].copy()
        inv_d = 0.0 if np.isinf(a_new) else 1.0 / (a_new - lam[k])
        kappa = 1.0 / (sk[k] + inv_d)
        mu_k = st["mu"][k]
        tmp = beta * (st["C"][:, :m] @ sk)
        st["Sigma"] = Sigma - kappa * np.outer(sk, sk)
        st["mu"] = st["mu"] - kappa * mu_k * sk
        st["S"] = st["S"] + kappa * tmp * tmp
        st["Q"] = st["Q"] + kappa * mu_k * tmp
        if np.isinf(a_new):
            C = st["C"]
            C[:, k : m - 1] = C[:, k + 1 : m]
            state.pruned_lam[int(design.active[model[k]])] = float(lam[k])
            in_model[model[k]] = False
            del model[k]
            keep = np.arange(m) != k
            st["Sigma"] = st["Sigma"][np.ix_(keep, keep)]
            st["mu"] = st["mu"][keep]
            st["lam"] = lam[keep]
        else:
            lam[k] = a_new

    refresh()
    if init is not None and len(init[0]) > 0:
        del st["S"]  # build the initial model first, then compute everything once
        for j, a in zip(*init):
            add(int(j), float(a))
    else:
        # Start from the candidate best aligned with the target (SparseBayes' initialisation).
        j = int(np.argmax(np.abs(p)))
        S, Q = st["beta"] * W, st["beta"] * p[j]
        add(j, S * S / (Q * Q - S) if Q * Q > S else S)
    refresh()
    since_refresh = 0
    while True:
        m = len(model)
        if m == 0:
            state.converged = True
            break
        if state.n_iter >= params["max_iter"]:
            break
        if since_refresh >= _REFRESH:
            refresh()
            since_refresh = 0
        lam, mu, Sigma = st["lam"], st["mu"], st["Sigma"]
        idx = np.asarray(model, dtype=np.intp)
        S_all, Q_all = st["S"], st["Q"]
        s = S_all.copy()
        q = Q_all.copy()
        # lam - S_i = lam^2 Sigma_ii > 0 in exact arithmetic; keep it so under rounding.
        den = np.maximum(lam - S_all[idx], _EPS * lam)
        s[idx] = lam * S_all[idx] / den
        q[idx] = lam * Q_all[idx] / den
        theta = q * q - s
        # A basis is worth having when Q^2 > S, at the precision s^2 / theta; as in the other
        # solvers, one whose precision would exceed ``threshold_lambda`` counts as pruned.
        over = theta * thr <= s * s
        theta[over] = 0.0
        gain = np.full(M, -np.inf)
        good = ~in_model & (theta > 0)
        gain[good] = 0.5 * (theta[good] / s[good] + np.log(s[good] / (q[good] ** 2)))
        s_in, q_in, th_in = s[idx], q[idx], theta[idx]
        keep_in = th_in > 0
        lam_new = np.where(keep_in, s_in * s_in / np.where(keep_in, th_in, 1.0), np.inf)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            g_old = _basis_gain(lam, s_in, q_in)
            g_in = np.where(keep_in, _basis_gain(lam_new, s_in, q_in) - g_old, -g_old)
        g_in = np.where(np.isnan(g_in), -np.inf, g_in)
        # A basis in the model past the threshold is pruned first, whatever the evidence says.
        gain[idx] = np.where(over[idx] & (q_in * q_in > s_in), np.inf, g_in)
        best = int(np.argmax(gain))
        best_gain = gain[best]
        state.n_iter += 1
        since_refresh += 1
        # Noise statistics of the current posterior (Tipping 2001 eq. 18), before the action.
        G = st["C"][idx, :m]
        sse = max(tt - 2.0 * mu @ p[idx] + mu @ (G @ mu), 0.0)
        gamma_sum = float(np.sum(np.clip(1.0 - lam * np.diag(Sigma), 0.0, 1.0)))
        small = GAIN_TOL * W  # gains below this are noise
        quiet = False
        if best_gain <= small:
            # Nothing worth doing (below ``small`` the step is still taken when positive).
            quiet = True
            if best_gain > 0.0:
                if in_model[best]:
                    k = int(np.flatnonzero(idx == best)[0])
                    change(k, lam_new[k])
                else:
                    add(best, s[best] ** 2 / theta[best])
        elif in_model[best]:
            k = int(np.flatnonzero(idx == best)[0])
            if np.isfinite(lam_new[k]):
                # Settled when the best move is a small re-estimate, or gains next to nothing
                # (correlated neighbours can trade a weight back and forth for a long time).
                quiet = abs(np.log(lam_new[k] / lam[k])) < tol and not np.any(
                    gain[~in_model] > small
                )
            change(k, lam_new[k])
        else:
            add(best, s[best] ** 2 / theta[best])
        if on_iter is not None:
            state.mu = st["mu"]
            on_iter("fast", state, design, sse)
        if quiet:
            # The model is settled for this noise level: only now re-estimate the noise. Updating
            # it after every action lets each added basis shrink the residual, raise beta and
            # make the next noise basis look relevant, until beta reaches its cap.
            beta_old = st["beta"]
            if not params["fix_noise"]:
                st["beta"] = _noise_update(W, gamma_sum, sse, a1, a2, beta_max)
            state.beta = st["beta"]
            if abs(np.log(st["beta"] / beta_old)) < tol:
                state.converged = True
                break
            refresh()
            since_refresh = 0
    state.beta = st["beta"]
    # Reduce the design to the model, in increasing column order.
    order = np.argsort(model) if model else np.zeros(0, dtype=np.intp)
    design.compact(in_model)
    if model:
        idx = np.asarray(model, dtype=np.intp)[order]
        state.lam = st["lam"][order]
        G = np.ascontiguousarray(st["C"][idx][:, order])
        mu, Sigma, _ = _posterior(G, st["beta"], state.lam, p[idx])
        state.mu = mu
        state.sigma_full = Sigma
        state.sigma_diag = np.diag(Sigma).copy()
    else:
        state.lam = np.zeros(0)
        state.mu = np.zeros(0)
        state.sigma_full = np.zeros((0, 0))
        state.sigma_diag = np.zeros(0)
    return "converged" if state.converged else "max_iter"
