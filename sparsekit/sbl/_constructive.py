"""The constructive path: Tipping & Faul's fast marginal likelihood over every candidate column.

Used by :class:`~sparsekit.DQNSBLRegressor` for kernel bases (relevance vector regression) and
for the linear basis when the candidates can interpolate the targets (M >= n/2), the regime where
the diagonal phase of :func:`._engine.run_path` lets the noise precision explode.
Notation as in :mod:`._regression_solver` (``lam`` weight precisions, ``beta`` noise precision,
``sw`` sample weights, ``wsum = sum(sw)``, Phi the scaled, centred basis). The settings are the
estimator's :class:`._engine.PathSettings`; the Cholesky factorisations follow the jitter policy of
:mod:`._linalg`.

The model starts from one basis (or from a warm start) and each iteration takes the single action
among "add a candidate", "re-estimate a precision" and "delete a basis" that raises the log
marginal likelihood most (Tipping & Faul 2003, "Fast marginal likelihood maximisation for sparse
Bayesian models"). For every candidate ``i``::

    S_i = beta phi_i'S phi_i - beta^2 phi_i'S Phi_A Sigma Phi_A'S phi_i
    Q_i = beta phi_i'S t     - beta^2 phi_i'S Phi_A Sigma Phi_A'S t

with the full posterior covariance ``Sigma`` over the (small) model A; a basis outside the model
is worth adding exactly when ``Q_i^2 > S_i``. Pruning is therefore never final, and a small model
cannot interpolate the targets, so the noise precision stays honest when there are more
candidates than samples.

Two noise schedules (``settings.noise_every``):

- ``0`` (linear basis, M >= n/2): re-estimate the noise precision only once the model has settled
  for the current one. Updating it after every action there lets each added pure-noise feature
  shrink the residual, raise beta and make the next one look relevant. The regressor starts it
  at 1 / var(y) there (ARDRegression's start), so the settled models follow a rising beta;
  started at 100 / var(y), the first settled model near the sparse-recovery transition already
  holds dozens of wrong features that no later action removes (a local optimum 246-287 below
  ARDRegression's log evidence on the benchmark's problems, issue 8).
- ``k > 0`` (kernel bases): re-estimate it after each of the first ``NOISE_START`` actions, then
  after every ``k``-th action and whenever the model has settled (SparseBayes' ``BetaUpdateStart``
  and ``BetaUpdateFrequency``); every ``m/10``-th action once the model has ``m > 10 k`` bases,
  since each update costs a full O(M m^2) refresh (Friedman #1, n=2000: 7.6 s instead of 17 s for
  the same test error). The settled-only schedule over-fits kernel bases: on Friedman #1 (n=240,
  noise std 1) the noise std ends at 0.7-0.9 with 67-98 vectors against fastrvm's 35-59;
  updating it as the model grows gives fastrvm's sparsity and accuracy.

``Sigma``, ``mu``, S and Q follow each action by rank-one formulas (O(M m) work; one pass over
Phi, O(nnz), to add a basis) and are recomputed from scratch after each noise update and every
``REFRESH`` actions. Memory is O(M m) for ``Phi' S Phi_A``; no M-by-M matrix is formed. Where
the posterior precision is too ill-conditioned for that Gram form (``GRAM_ROUNDING``: near
noise-free targets on smooth bases), the refresh and the noise statistics work from the model's
n-by-m columns by QR instead, O(n m^2 + nnz m) time and O((n + M) m) memory.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import qr, solve_triangular

from ._kernels import fast_ml_scores
from ._linalg import cholesky_jittered
from ._regression_solver import (
    GaussianStep,
    log_evidence,
    noise_update,
    posterior,
)

REFRESH = 50  # actions between full recomputations of Sigma, mu, S and Q
GAIN_TOL = 1e-6  # log-evidence gain per unit of weight below which an action is noise
NOISE_START = 10  # with a noise schedule k > 0: actions after which the noise is always updated
# A candidate outside the model whose sparsity factor S_i is below S_FLOOR * beta * wsum (the
# first of its two terms, for a unit-RMS column) is in the model's span to within rounding: S_i is
# a difference of two numbers near beta * wsum, so its error is about eps * beta * wsum times the
# conditioning of the posterior, and the gain Q_i^2 / S_i computed from it is noise. Such a
# candidate is not added (SparseBayes' alignment test guards against the same thing with the
# cosine to each model basis). Measured on near noise-free RBF regression
# (make_regression(n, 3, noise=0.1), gamma 0.05, seeds 0-7, test RMSE against the noise-free
# truth): without the floor the path reached max_iter (10,000) on all 8 fits at n = 600 and 2 at
# n = 200, adding candidates with gains of up to 1e9 nats from S_i ~ 1e-10 beta wsum, while the
# noise precision swung between 1e-12 and 5e3; floors 1e-7 / 1e-8 / 1e-9: RMSE 0.39x / 0.19x /
# 0.18x the unfloored one at n = 600 (median) in 1,573 / 7,313 / 25,776 actions (80,000 without),
# 1e-9 still reaching max_iter once; with noise 1, 1e-7 worsened one fit (1.12x) and 1e-8 none.
# Friedman #1 (noise 1) is unchanged (the floor is never reached).
S_FLOOR = 1e-8
# The refresh's Gram form (S_i = beta wsum - beta^2 |L^-1 C_i|^2 with L L' = H = beta G + diag(lam))
# can lose up to eps * cond(H) * beta * wsum of every S_i, and the rank-one updates and the noise
# statistics' sum of squares (t'St - 2 mu'p + mu'G mu) lose as much. Once eps * cond(H) (1-norm)
# passes GRAM_ROUNDING, the refresh works from Phi_A itself instead
# (:meth:`FastMarginalLikelihood._refresh_orthogonal`), whose loss is eps * beta * wsum whatever
# cond(H) is, at the cost of a pass over Phi with m columns. cond(H) grows with n at a fixed noise
# level, so the bound sits between what honest noise reaches and what runaway fits reach. Measured
# over every refresh: RBF Friedman #1 (noise 1, gamma 0.05) at most 3e6 at n = 2,000, 9e6 at
# 5,000, 3e7 at 10,000 and 8e8 at 20,000 (subset path); Friedman #1 at n = 1,000 with gamma 0.01-1
# and sinc with noise 0.01 at most 3e5. So beyond n = 20,000 honest noise may reach the bound: the
# QR form is then as accurate but slower (at n = 20,000 with the bound at 1e-8, 220 of 357
# refreshes took it and the fit took 660 s instead of 149 s, under a heavier load). Near
# noise-free RBF regression (make_regression(n, 3, noise=0.1), gamma 0.05, n = 200-600) reaches
# 1e11-7e13, where the Gram form claimed gains of 1e3 to 1e12 nats for actions that lowered the
# evidence and the noise precision swung over eight decades (benchmarks/bench_rvr_noise_free.py).
# Bounds from 1e-8 to 1e-5 all converged there (n = 200, 400, 600, seeds 0-3, noise estimates
# near the exact path's); 1e-6 is cond(H) = 4.5e9.
GRAM_ROUNDING = 1e-6


def addition_gain(s, q):
    """Rise of the log marginal likelihood from adding a basis with sparsity and quality factors
    ``s``, ``q`` (``q^2 > s > 0``) at its optimal precision ``s^2 / (q^2 - s)``: the maximum over
    the precision ``a`` of ``(log a - log(a + s) + q^2 / (a + s)) / 2`` (Tipping & Faul 2003,
    eq. 6)."""
    return 0.5 * ((q * q - s) / s + np.log(s / (q * q)))


class _Proposal:
    """The best action of one iteration and the factors it was chosen from."""

    def __init__(self, gain, lam_new, s, theta):
        self.gain = gain  # [M] evidence gain of each candidate's best action
        self.lam_new = lam_new  # [m] re-estimated precision of each model basis (inf: delete)
        self.s = s  # [M] sparsity factors, the model's own contribution removed
        self.theta = theta  # [M] q^2 - s, zero where the precision would pass the threshold
        self.best = int(np.argmax(gain))
        self.best_gain = float(gain[self.best])


class FastMarginalLikelihood:
    """The model (candidate indices and precisions) with its posterior and S, Q for all candidates.

    Parameters
    ----------
    design : DesignMatrix
        The scaled basis over all candidates; compacted to the model by :meth:`finish`.
    sw : ndarray of shape (n_samples,)
        Sample weights.
    t : ndarray of shape (n_samples,)
        Targets.
    beta : float
        Initial noise precision.
    """

    def __init__(self, design, sw, t, beta):
        self.design = design
        self.sw = sw
        self.rsw = np.sqrt(sw)
        self.t = t
        self.p = design.rmatvec(sw * t)  # Phi' S t for every candidate
        self.wsum = design.weight_sum
        self.M = design.n_active
        self.beta = beta
        self.model = []  # candidate indices in the model, in order of addition
        self.in_model = np.zeros(self.M, dtype=bool)
        self.lam = np.empty(0)
        self._C = np.empty((self.M, 16), order="F")  # Phi' S Phi_A, one column per model basis
        self.Sigma = np.zeros((0, 0))
        self.mu = np.zeros(0)
        self.S = None  # set by refresh
        self.Q = None
        self.orthogonal = False  # whether the last refresh needed the orthogonal form

    @property
    def C(self):
        """``Phi' S Phi_A`` for the current model, shape (M, m)."""
        return self._C[:, : len(self.model)]

    def _index(self):
        return np.asarray(self.model, dtype=np.intp)

    def refresh(self):
        """Recompute Sigma, mu, S and Q from scratch for the current model and noise precision.

        The Gram form works from ``C = Phi' S Phi_A`` alone, O(M m^2). When the posterior
        precision's condition number says that its rounding reaches ``GRAM_ROUNDING``, the
        orthogonal form (:meth:`_refresh_orthogonal`) replaces it."""
        beta, C, idx = self.beta, self.C, self._index()
        if not self.model:
            self.Sigma, self.mu = np.zeros((0, 0)), np.zeros(0)
            self.S, self.Q = np.full(self.M, beta * self.wsum), beta * self.p
            self.orthogonal = False
            return
        H = beta * np.ascontiguousarray(C[idx])  # the posterior precision beta G + diag(lam)
        H[np.diag_indices_from(H)] += self.lam
        (c, _), _ = cholesky_jittered(H)
        Linv = solve_triangular(c, np.eye(c.shape[0]), lower=True, check_finite=False)
        self.Sigma = Linv.T @ Linv
        cond = np.linalg.norm(H, 1) * np.linalg.norm(self.Sigma, 1)
        self.orthogonal = not np.finfo(float).eps * cond <= GRAM_ROUNDING
        if self.orthogonal:
            self._refresh_orthogonal()
            return
        self.mu = beta * (self.Sigma @ self.p[idx])
        # With L L' = beta G + diag(lam): phi_i'S Phi_A Sigma Phi_A'S phi_i = |L^-1 C_i|^2.
        V = Linv @ C.T
        self.S = beta * self.wsum - beta * beta * np.einsum("ij,ij->j", V, V)
        self.Q = beta * self.p - beta * (C @ self.mu)

    def _refresh_orthogonal(self):
        """The refresh from ``W = S^1/2 Phi_A`` itself (:meth:`_orthogonal_posterior`): with
        ``X_i = Q1' S^1/2 phi_i`` for every candidate (one pass over Phi with m columns)::

            S_i = beta (wsum - |X_i|^2),  Q_i = beta (p_i - X_i' Q1' S^1/2 t)

        Q1 has orthonormal columns to rounding whatever cond(H) is, so these lose eps * beta *
        wsum, where the Gram form loses cond(H) times more. O(n m^2 + nnz m) instead of
        O(M m^2)."""
        Q1, yu, _, self.Sigma, self.mu = self._orthogonal_posterior()
        X = self.design.rmatvec(Q1 * self.rsw[:, None])  # (M, m)
        self.S = self.beta * (self.wsum - np.einsum("ij,ij->i", X, X))
        self.Q = self.beta * (self.p - X @ yu)

    def _orthogonal_posterior(self):
        """Sigma and mu from a QR factorisation of the stacked ``[beta^1/2 W; diag(lam)^1/2] =
        [Q1; Q2] R`` (``R'R = H``, ``Sigma = R^-1 R^-T``, ``mu = beta^1/2 R^-1 Q1' S^1/2 t``),
        O(n m^2). Returns ``(Q1, Q1' S^1/2 t, W, Sigma, mu)``; the model's own are not changed."""
        beta, lam, m, rsw = self.beta, self.lam, len(self.model), self.rsw
        W = self._columns(self.model) * rsw[:, None]
        stacked = np.vstack([np.sqrt(beta) * W, np.diag(np.sqrt(lam))])
        Qf, R = qr(stacked, mode="economic", check_finite=False)
        Q1 = Qf[: W.shape[0]]
        Rinv = solve_triangular(R, np.eye(m), check_finite=False)
        yu = Q1.T @ (rsw * self.t)
        return Q1, yu, W, Rinv @ Rinv.T, np.sqrt(beta) * (Rinv @ yu)

    def _columns(self, js):
        """Columns ``js`` of Phi, shape (n, len(js)), in that order."""
        return np.column_stack([self.design.column(int(j)) for j in js])

    def start(self, init=None):
        """Build the initial model: ``init = (candidate indices, precisions)``, or the candidate
        best aligned with the target (SparseBayes' initialisation)."""
        self.refresh()
        if init is not None and len(init[0]) > 0:
            self._add_all(np.asarray(init[0], dtype=np.intp), np.asarray(init[1], dtype=float))
        else:
            j = int(np.argmax(np.abs(self.p)))
            S, Q = self.beta * self.wsum, self.beta * self.p[j]
            self.add(j, S * S / (Q * Q - S) if Q * Q > S else S)
        self.refresh()

    def _add_all(self, js, lam):
        """Put distinct candidates ``js`` with precisions ``lam`` into an empty model, their
        columns of ``Phi' S Phi_A`` in one product: a warm start's one pass over Phi instead of
        one per basis. The regressor's subset path warm-starts the constructive path after every
        scan (Friedman #1, RBF, one thread: 36.7 -> 26.7 s at n = 5,000, the same path).
        ``S``, ``Q`` and the posterior wait for :meth:`refresh`."""
        U = self._columns(js)
        U *= self.sw[:, None]
        self._C = np.empty((self.M, max(16, 2 * js.size)), order="F")
        self._C[:, : js.size] = self.design.rmatvec(U)
        self.model = js.tolist()
        self.in_model[js] = True
        self.lam = lam.copy()
        self.S = self.Q = None

    def add(self, j, a):
        """Add candidate ``j`` with precision ``a`` (Tipping & Faul 2003, appendix)."""
        m = len(self.model)
        if m == self._C.shape[1]:
            C2 = np.empty((self.M, 2 * m), order="F")
            C2[:, :m] = self._C[:, :m]
            self._C = C2
        self._C[:, m] = self.design.rmatvec(self.sw * self.design.column(j))
        beta, C = self.beta, self._C[:, : m + 1]
        s_jj = 1.0 / (a + self.S[j])
        mu_j = s_jj * self.Q[j]
        comm = beta * (self.Sigma @ C[self._index(), m])
        e = beta * C[:, m] - beta * (C[:, :m] @ comm)
        self.Sigma = np.block(
            [[self.Sigma + s_jj * np.outer(comm, comm), -s_jj * comm[:, None]],
             [-s_jj * comm[None, :], np.array([[s_jj]])]]
        )  # fmt: skip
        self.mu = np.append(self.mu - mu_j * comm, mu_j)
        self.S = self.S - s_jj * e * e
        self.Q = self.Q - mu_j * e
        self.model.append(j)
        self.in_model[j] = True
        self.lam = np.append(self.lam, a)

    def change(self, k, a_new, pruned_lam):
        """Set the precision of model basis ``k`` to ``a_new``; ``np.inf`` deletes it (its last
        precision is recorded in ``pruned_lam`` under ``(original column index, 0)``)."""
        beta, lam, m = self.beta, self.lam, len(self.model)
        sk = self.Sigma[:, k].copy()
        inv_d = 0.0 if np.isinf(a_new) else 1.0 / (a_new - lam[k])
        kappa = 1.0 / (sk[k] + inv_d)
        mu_k = self.mu[k]
        tmp = beta * (self.C @ sk)
        self.Sigma = self.Sigma - kappa * np.outer(sk, sk)
        self.mu = self.mu - kappa * mu_k * sk
        self.S = self.S + kappa * tmp * tmp
        self.Q = self.Q + kappa * mu_k * tmp
        if not np.isinf(a_new):
            lam[k] = a_new
            return
        self._C[:, k : m - 1] = self._C[:, k + 1 : m]
        pruned_lam[int(self.design.active[self.model[k]]), 0] = float(lam[k])
        self.in_model[self.model[k]] = False
        del self.model[k]
        keep = np.arange(m) != k
        self.Sigma = self.Sigma[np.ix_(keep, keep)]
        self.mu = self.mu[keep]
        self.lam = lam[keep]

    def propose(self, threshold_lambda):
        """Score every action (:func:`._kernels.fast_ml_scores`); a precision above
        ``threshold_lambda`` counts as pruned, and a candidate in the model's span to within
        rounding (``S_FLOOR``) is not added."""
        floor = S_FLOOR * self.beta * self.wsum
        gain, lam_new, s, theta = fast_ml_scores(
            self.S, self.Q, self._index(), self.lam, self.in_model, threshold_lambda, floor
        )
        return _Proposal(gain, lam_new, s, theta)

    def settled(self, prop, *, small, tol):
        """Whether the model has settled for the current noise, judged before ``prop`` is taken.

        Settled means: nothing gains more than ``small``, or the best move is a re-estimate by
        less than ``tol`` in log precision with no candidate worth adding (correlated neighbours
        can trade a weight back and forth for a long time).
        """
        best = prop.best
        if prop.best_gain <= small:
            return True
        if not self.in_model[best]:
            return False
        k = self.model.index(best)
        if not np.isfinite(prop.lam_new[k]):
            return False
        return abs(np.log(prop.lam_new[k] / self.lam[k])) < tol and not np.any(
            prop.gain[~self.in_model] > small
        )

    def take(self, prop, pruned_lam):
        """Carry out the proposal when its gain is positive."""
        best = prop.best
        if prop.best_gain <= 0.0:
            return
        if self.in_model[best]:
            k = self.model.index(best)
            self.change(k, prop.lam_new[k], pruned_lam)
        else:
            self.add(best, prop.s[best] ** 2 / prop.theta[best])

    def noise_statistics(self, tt):
        """Weighted residual sum of squares and ``sum(gamma)`` of the current posterior.

        While the Gram form is accurate, the sum of squares is ``t'St - 2 mu'p + mu'G mu``. Once
        the refresh needed the orthogonal form (``GRAM_ROUNDING``), the rounding of that sum and of
        the rank-one updates of mu reaches the residual itself: both statistics come from mu and
        Sigma recomputed by :meth:`_orthogonal_posterior` (O(n m^2); the model's own are left as
        they are, so that recording the evidence changes no fit), the sum over the residual
        ``S^1/2 (t - Phi_A mu)``."""
        if self.orthogonal:
            _, _, W, Sigma, mu = self._orthogonal_posterior()
            r = self.rsw * self.t - W @ mu
            sse = float(r @ r)
        else:
            idx, Sigma, mu = self._index(), self.Sigma, self.mu
            G = self.C[idx]
            sse = max(tt - 2.0 * mu @ self.p[idx] + mu @ (G @ mu), 0.0)
        gamma_sum = float(np.sum(np.clip(1.0 - self.lam * np.diag(Sigma), 0.0, 1.0)))
        return sse, gamma_sum

    def finish(self, state):
        """Reduce the design to the model (increasing column order) and store its posterior."""
        order = np.argsort(self.model) if self.model else np.zeros(0, dtype=np.intp)
        self.design.compact(self.in_model)
        state.beta = self.beta
        state.mask = np.ones((len(self.model), 1), dtype=bool)
        if not self.model:
            state.lam, state.coef = np.zeros((0, 1)), np.zeros((0, 1))
            state.sigma_full, state.sigma_diag = np.zeros((0, 0)), np.zeros((0, 1))
            return
        idx = self._index()[order]
        lam = self.lam[order]
        G = np.ascontiguousarray(self._C[idx][:, order])
        mu, state.sigma_full, _ = posterior(G, self.beta, lam, self.p[idx])
        state.lam, state.coef = lam[:, None], mu[:, None]
        state.sigma_diag = np.diag(state.sigma_full).copy()[:, None]


def constructive_path(design, t, sw, state, *, settings, init=None, on_iter=None):
    """Run the constructive path on ``design`` from ``state`` (see the module docstring).

    ``init = (candidate indices, precisions)`` warm-starts the model. ``state.converged`` tells
    whether the path converged within ``settings.max_iter`` actions; ``state`` holds the result and
    ``design`` is compacted to the model. ``on_iter(state, design, step, dlog)`` as for
    :func:`._engine.run_path`, with ``step`` carrying the noise statistics before the action.
    """
    wsum = design.weight_sum
    tol = settings.tol
    every = 0 if settings.fix_noise else settings.noise_every
    state.phase = "fast"
    fml = FastMarginalLikelihood(design, sw, t, state.beta)
    tt = float(sw @ (t * t))
    fml.start(init)
    since_refresh = 0
    while fml.model and state.n_iter < settings.max_iter:
        if since_refresh >= REFRESH:
            fml.refresh()
            since_refresh = 0
        prop = fml.propose(settings.threshold_lambda)
        state.n_iter += 1
        since_refresh += 1
        settled = fml.settled(prop, small=GAIN_TOL * wsum, tol=tol)
        if (settled and not every) or on_iter is not None:
            # Noise statistics of the current posterior (Tipping 2001 eq. 18), before the action.
            sse, gamma_sum = fml.noise_statistics(tt)
        fml.take(prop, state.pruned_lam)
        if settings.compute_score and fml.model:
            sse_now, _ = fml.noise_statistics(tt)
            logdet = np.linalg.slogdet(fml.Sigma)[1]
            state.scores.append(
                log_evidence(wsum, fml.beta, fml.lam, fml.mu, sse_now, logdet, settings)
            )
        if on_iter is not None:
            state.coef = fml.mu[:, None]
            on_iter(state, design, GaussianStep(fml.mu, sse, fml.beta), 0.0)
        if every:
            # A noise update refreshes everything, O(M m^2): with m model bases, spread the
            # updates to every m/10-th action so they cost about as much as the actions do.
            period = max(every, len(fml.model) // 10)
            update = settled or state.n_iter <= NOISE_START or state.n_iter % period == 0
            if not update or not fml.model:
                continue
            sse, gamma_sum = fml.noise_statistics(tt)  # after the action
        elif not settled:
            continue
        beta_old = fml.beta
        if not settings.fix_noise:
            fml.beta = noise_update(wsum, gamma_sum, sse, settings.alpha_1, settings.alpha_2)
        state.beta = fml.beta
        if settled and abs(np.log(fml.beta / beta_old)) < tol:
            state.converged = True
            break
        fml.refresh()
        since_refresh = 0
    if not fml.model:
        state.converged = True
    fml.finish(state)
