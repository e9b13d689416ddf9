"""The classifier's exact Laplace phase and Tipping-Faul re-admission on a ``DaskDesignMatrix``
(issue 12): the same Newton steps and candidate scores as in memory, as map/reduce over the row
blocks.

In memory, :func:`._classifier_solver.exact_step` runs Newton on the dense active basis
(:func:`._classifier_kernels.laplace_newton_bernoulli` per one-vs-rest problem,
:func:`._classifier_solver._newton_softmax` for the multinomial model). Here every quantity that
sums over the samples is a reduce over the row blocks, and only m-by-m results travel:

- one pass per Newton iteration gives the data loss, the gradient ``Phi_A' sw (p - t)`` and the
  curvature ``Phi_A' diag(b) Phi_A`` (``b = sw p (1 - p)``; for softmax the mK-by-mK class blocks
  ``Phi' diag(sw p_k (delta_kj - p_j)) Phi``), for all one-vs-rest problems at once;
- one pass per Armijo search gives the loss at every step length the in-memory search could try
  (1, 1/2, ..., 2^-39), so the search picks the same length without a round trip per halving;
- the Cholesky factor (with the jitter policy of :mod:`._linalg`), the step, the covariance and
  the log-determinant are computed on the driver.

The one-vs-rest problems iterate in lockstep (one pass serves all of them), each stopping by its
own test, so each follows the in-memory iterates. Each block is processed ``ROWS`` rows at a time,
so a task's temporaries stay small whatever the chunk size.

Re-admission (:class:`DaskCandidateColumns`) scores every basis function, pruned ones included,
from the ORIGINAL row blocks of X (persisted on the workers at the first sweep; pruning compacts
only the design's working blocks): per column group one reduce returns ``phi' B phi``,
``phi' sw (t - p)`` and ``phi' B Phi_A`` for each candidate, O(M m) numbers for a model of m
bases, and the Tipping-Faul scores are computed on the driver as in
:func:`._readmission.propose_additions`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import LinAlgError, cho_solve
from scipy.special import expit

from ._classifier_kernels import _bernoulli_loss, _bernoulli_terms
from ._classifier_solver import (
    ARMIJO_C1,
    EXACT_GTOL_REL,
    MAX_HALVINGS,
    NEWTON_MAX_ITER,
    NEWTON_SMALL_STEP,
    _class_evidence,
    data_loss,
    probabilities,
)
from ._dask_input import _blocks
from ._linalg import cholesky_jittered
from ._readmission import (
    BLOCK,
    choose_additions,
    excluded_bases,
    score_class,
    softmax_cross,
)

ROWS = 8192  # rows of a block densified at a time inside a task
GROUP_BYTES = 64 * 2**20  # candidate terms (phi' B Phi_A) per reduce of a re-admission sweep
_ETAS = 0.5 ** np.arange(MAX_HALVINGS)  # the step lengths the in-memory Armijo search tries


# ---------------------------------------------------------------------------------- block access
def _scaling(design):
    """Per-block arguments that turn a block of the design into dense rows of ``[1 | Phi_A]``."""
    act = design.active
    if design.sparse:
        return design.offset[act], design.inv_scale[act], design.intercept_column
    return None, None, design.intercept_column


def _row_slices(Phi, offset, inv_scale, intercept):
    """Dense float64 rows of ``[1 |] Phi_A`` of one block, ``ROWS`` at a time, with their range.

    Dense blocks hold the scaled basis already; sparse blocks hold the raw active columns, which
    are centred (``offset``) and scaled here as ``DesignMatrix.dense_active`` does."""
    if sp.issparse(Phi):
        Phi = sp.csr_matrix(Phi)
    n = Phi.shape[0]
    for start in range(0, n, ROWS):
        stop = min(n, start + ROWS)
        if sp.issparse(Phi):
            A = Phi[start:stop].toarray().astype(np.float64, copy=False)
            A -= offset
            A *= inv_scale
        else:
            A = np.asarray(Phi[start:stop], dtype=np.float64)
        if intercept:
            A = np.hstack([np.ones((stop - start, 1)), A])
        yield start, stop, A


def _vector(v):
    return np.ascontiguousarray(v, dtype=np.float64)


class _Blocks:
    """The row blocks of the design, targets and weights, taken once per exact step (turning a
    dask array into its blocks costs more than a small pass)."""

    def __init__(self, design, T, sw):
        self.design = design
        self.lists = (design._phi_blocks(), design._rows(T), design._rows(sw))
        self.scaling = _scaling(design)

    def reduce(self, fn, *args):
        """Sum over the row blocks of ``fn(Phi block, T block, sw block, scaling..., *args)``
        (``args`` are passed whole to every block, so none may be a list)."""
        return self.design._reduce(fn, *self.lists, *self.scaling, *args)


# ---------------------------------------------------------------------------------- bernoulli
def _bernoulli_block_terms(A, t, s, w):
    """Data loss, ``A' r`` and ``A' diag(b) A`` of rows A (``r = sw (p - t)``, ``b = sw p (1 - p)``)."""
    n = A.shape[0]
    p, r, b = np.empty(n), np.empty(n), np.empty(n)
    loss = _bernoulli_terms(_vector(A @ w), t, s, p, r, b)
    return loss, A.T @ r, A.T @ (A * b[:, None])


def _bernoulli_zeros(m):
    """Terms of :func:`_bernoulli_block_terms` over no rows (a block may be empty)."""
    return 0.0, np.zeros(m), np.zeros((m, m))


def _bernoulli_terms_block(Phi, T, sw, offset, inv_scale, intercept, problems):
    """Per one-vs-rest problem ``(k, idx, w)``: its data loss, gradient and curvature terms
    (:func:`_bernoulli_block_terms`) over this block."""
    out = [list(_bernoulli_zeros(idx.size)) for _k, idx, _w in problems]
    for start, stop, A in _row_slices(Phi, offset, inv_scale, intercept):
        s = _vector(sw[start:stop])
        for acc, (k, idx, w) in zip(out, problems):
            terms = _bernoulli_block_terms(A[:, idx], _vector(T[start:stop, k]), s, w)
            for i in range(3):
                acc[i] = acc[i] + terms[i]
    return tuple(tuple(acc) for acc in out)


def _bernoulli_search_block(Phi, T, sw, offset, inv_scale, intercept, problems):
    """Per problem ``(k, idx, w, step)``: the data loss at ``w + eta step`` for every ``eta`` in
    ``_ETAS``, and the terms of :func:`_bernoulli_block_terms` at the full step ``w + step``
    (the next Newton iteration's, when the search accepts it), over this block."""
    out = [[np.zeros(_ETAS.size), *_bernoulli_zeros(idx.size)] for _k, idx, _w, _s in problems]
    for start, stop, A in _row_slices(Phi, offset, inv_scale, intercept):
        s = _vector(sw[start:stop])
        for acc, (k, idx, w, step) in zip(out, problems):
            Ak = A[:, idx]
            z, dz = Ak @ w, Ak @ step
            t = _vector(T[start:stop, k])
            for i, eta in enumerate(_ETAS):
                acc[0][i] += _bernoulli_loss(_vector(z + eta * dz), t, s)
            terms = _bernoulli_block_terms(Ak, t, s, w + step)
            for i in range(3):
                acc[i + 1] = acc[i + 1] + terms[i]
    return tuple(tuple(acc) for acc in out)


def _factor(H):
    try:
        return cholesky_jittered(H)
    except LinAlgError:
        raise FloatingPointError(
            "The Laplace precision matrix is not positive definite even with jitter; the basis "
            "is numerically degenerate."
        ) from None


class _Problem:
    """One one-vs-rest problem of the lockstep Newton iterations."""

    def __init__(self, k, idx, w, lam):
        self.k, self.idx, self.w, self.lam = k, idx, w, lam
        self.running = True
        self.terms = None  # (loss, X' r, X' diag(b) X) at w, when the last search gave them
        self.loss = 0.0
        self.cf = self.g = self.step = None


def newton_bernoulli(blocks, coef, lam, mask, gtol):
    """Damped Newton to the posterior mode of every one-vs-rest problem (columns of ``coef``), as
    :func:`._classifier_kernels.laplace_newton_bernoulli` does on a dense basis.

    Returns per problem ``(idx, w, loss, Sigma, logdet)``: its coefficients, the mode, the data
    loss there, ``Sigma = H^-1`` and ``log det H`` (H from the last factorisation, at the mode or
    just before a step below ``NEWTON_SMALL_STEP``)."""
    probs = []
    for k in range(coef.shape[1]):
        idx = np.flatnonzero(mask[:, k])
        probs.append(_Problem(k, idx, coef[idx, k].copy(), lam[idx, k].copy()))
    for it in range(NEWTON_MAX_ITER + 1):
        live = [pb for pb in probs if pb.running]
        if not live:
            break
        need = [pb for pb in live if pb.terms is None]
        if need:
            fresh = blocks.reduce(
                _bernoulli_terms_block, tuple((pb.k, pb.idx, pb.w) for pb in need)
            )
            for pb, terms in zip(need, fresh):
                pb.terms = terms
        search = []
        for pb in live:
            loss, g, G = pb.terms
            pb.terms = None
            g = g + pb.lam * pb.w
            H = np.array(G, dtype=np.float64)
            H[np.diag_indices_from(H)] += pb.lam
            pb.loss = float(loss)
            pb.cf, _ = _factor(H)
            if np.max(np.abs(g), initial=0.0) <= gtol or it == NEWTON_MAX_ITER:
                pb.running = False
                continue
            pb.step = cho_solve(pb.cf, -g, check_finite=False)
            pb.g = g
            search.append(pb)
        if not search:
            break
        found = blocks.reduce(
            _bernoulli_search_block, tuple((pb.k, pb.idx, pb.w, pb.step) for pb in search)
        )
        for pb, (trial, *full_step_terms) in zip(search, found):
            step, w = pb.step, pb.w
            if np.max(np.abs(step), initial=0.0) <= NEWTON_SMALL_STEP * max(
                1.0, np.max(np.abs(w), initial=0.0)
            ):
                # as in memory: take the small step and keep the factor of the current H
                pb.w = w + step
                pb.loss = float(trial[0])
                pb.running = False
                continue
            e0 = pb.loss + 0.5 * np.sum(pb.lam * w * w)
            gp = float(pb.g @ step)
            for i, (eta, lt) in enumerate(zip(_ETAS, trial)):
                wt = w + eta * step
                if lt + 0.5 * np.sum(pb.lam * wt * wt) <= e0 + ARMIJO_C1 * eta * gp:
                    pb.w = wt
                    pb.terms = tuple(full_step_terms) if i == 0 else None
                    break
            else:
                pb.running = False  # no further decrease possible: at the mode
    out = []
    for pb in probs:
        S = cho_solve(pb.cf, np.eye(pb.idx.size), check_finite=False)
        logdet = 2.0 * float(np.sum(np.log(np.diag(pb.cf[0]))))
        out.append((pb.idx, pb.w, pb.loss, S, logdet))
    return out


# ---------------------------------------------------------------------------------- softmax
def _softmax_block_terms(A, Tb, s, coef):
    """Data loss, ``A' sw (P - T)`` and the class blocks ``A' diag(c_kj) A`` (k <= j,
    ``c_kj = sw p_k (delta_kj - p_j)``) of the multinomial model on rows A."""
    K = coef.shape[1]
    Z = A @ coef
    P = probabilities(Z, "softmax")
    blocks = []
    for k in range(K):
        for j in range(k, K):
            c = s * P[:, k] * ((1.0 if j == k else 0.0) - P[:, j])
            blocks.append(A.T @ (A * c[:, None]))
    return data_loss(Z, Tb, s, "softmax")[0], A.T @ (s[:, None] * (P - Tb)), tuple(blocks)


def _softmax_zeros(coef):
    """Terms of :func:`_softmax_block_terms` over no rows (a block may be empty)."""
    m, K = coef.shape
    return 0.0, np.zeros((m, K)), tuple(np.zeros((m, m)) for _ in range(K * (K + 1) // 2))


def _add_terms(acc, terms):
    loss, grad, blocks = acc
    return loss + terms[0], grad + terms[1], tuple(a + b for a, b in zip(blocks, terms[2]))


def _softmax_terms_block(Phi, T, sw, offset, inv_scale, intercept, coef):
    """:func:`_softmax_block_terms` over this block."""
    acc = _softmax_zeros(coef)
    for start, stop, A in _row_slices(Phi, offset, inv_scale, intercept):
        s, Tb = _vector(sw[start:stop]), np.asarray(T[start:stop], dtype=np.float64)
        acc = _add_terms(acc, _softmax_block_terms(A, Tb, s, coef))
    return acc


def _softmax_search_block(Phi, T, sw, offset, inv_scale, intercept, coef, step):
    """The data loss at ``coef + eta step`` for every ``eta`` in ``_ETAS``, and the terms at the
    full step, over this block."""
    out, acc = np.zeros(_ETAS.size), _softmax_zeros(coef)
    for start, stop, A in _row_slices(Phi, offset, inv_scale, intercept):
        s, Tb = _vector(sw[start:stop]), np.asarray(T[start:stop], dtype=np.float64)
        Z, dZ = A @ coef, A @ step
        for i, eta in enumerate(_ETAS):
            out[i] += data_loss(Z + eta * dZ, Tb, s, "softmax")[0]
        acc = _add_terms(acc, _softmax_block_terms(A, Tb, s, coef + step))
    return out, acc


def _softmax_precision(blocks, mask, lam_flat):
    """The Laplace precision over the masked coefficients, class-major, from the class blocks
    (the layout of :func:`._classifier_solver._softmax_hessian`)."""
    K = mask.shape[1]
    cols = [np.flatnonzero(mask[:, k]) for k in range(K)]
    starts = np.concatenate([[0], np.cumsum([c.size for c in cols])])
    H = np.empty((starts[-1], starts[-1]))
    pos = 0
    for k in range(K):
        for j in range(k, K):
            blk = blocks[pos][np.ix_(cols[k], cols[j])]
            H[starts[k] : starts[k + 1], starts[j] : starts[j + 1]] = blk
            if j != k:
                H[starts[j] : starts[j + 1], starts[k] : starts[k + 1]] = blk.T
            pos += 1
    H[np.diag_indices_from(H)] += lam_flat
    return H


def newton_softmax(blocks, coef, lam, mask):
    """Exact posterior mode of the multinomial model, as :func:`._newton_softmax` in memory;
    returns (coef, loss, chol, flat index)."""
    m, K = coef.shape
    idx = np.flatnonzero(mask.T.reshape(-1))  # coefficient (j, k) at flat position k * m + j
    lam_flat = lam.T.reshape(-1)[idx]
    stop = False
    terms = None
    for it in range(NEWTON_MAX_ITER + 1):
        if terms is None:
            terms = blocks.reduce(_softmax_terms_block, coef)
        loss, grad, hess = terms
        cf, _ = _factor(_softmax_precision(hess, mask, lam_flat))
        if stop or it == NEWTON_MAX_ITER:
            break
        g = (grad + lam * coef).T.reshape(-1)[idx]
        step_flat = -cho_solve(cf, g, check_finite=False)
        step = np.zeros(K * m)
        step[idx] = step_flat
        step = step.reshape(K, m).T
        loss0 = float(loss) + 0.5 * np.sum(lam * coef * coef * mask)
        gp = float(g @ step_flat)
        trial, full_step_terms = blocks.reduce(_softmax_search_block, coef, step)
        eta, terms = 0.0, None
        for i, (e, lt) in enumerate(zip(_ETAS, trial)):
            coef_t = coef + e * step
            if lt + 0.5 * np.sum(lam * coef_t * coef_t * mask) <= loss0 + ARMIJO_C1 * e * gp:
                eta = e
                terms = full_step_terms if i == 0 else None
                break
        coef = coef + eta * step
        stop = eta == 0.0 or np.max(np.abs(eta * step)) <= 1e-9 * max(1.0, np.max(np.abs(coef)))
        if eta == 0.0:
            terms = (loss, grad, hess)  # coef did not move
    return coef, float(loss), cf, idx


# ---------------------------------------------------------------------------------- exact step
def exact_step_chunked(design, state, T, sw, likelihood):
    """:func:`._classifier_solver.exact_step` on a chunked design: the same state updates and
    return value (data loss, log-determinant of the Laplace precision)."""
    coef, lam, mask = state.coef, state.lam, state.mask
    n_coef, K = coef.shape
    sigma_diag = np.zeros((n_coef, K))
    blocks = _Blocks(design, T, sw)
    if likelihood == "bernoulli":
        gtol = EXACT_GTOL_REL * design.weight_sum
        sigma_full, class_loss, class_ld = [], [], []
        for k, (idx, w, loss, S, ld) in enumerate(newton_bernoulli(blocks, coef, lam, mask, gtol)):
            coef[:, k] = 0.0
            coef[idx, k] = w
            sigma_diag[idx, k] = np.diag(S)
            sigma_full.append((idx, S))
            class_loss.append(loss)
            class_ld.append(ld)
        state.sigma_full = sigma_full
        state.class_evidence.append(_class_evidence(class_loss, class_ld, state, design))
        loss_total, logdet = float(np.sum(class_loss)), float(np.sum(class_ld))
    else:
        coef_new, loss_total, cf, idx = newton_softmax(blocks, coef, lam, mask)
        coef[...] = coef_new * mask
        S = cho_solve(cf, np.eye(idx.size), check_finite=False)
        flat = np.zeros(n_coef * K)
        flat[idx] = np.diag(S)
        sigma_diag[...] = flat.reshape(K, n_coef).T
        state.sigma_full = [(idx, S)]
        logdet = 2.0 * float(np.sum(np.log(np.diag(cf[0]))))
    state.sigma_diag = sigma_diag
    return loss_total, logdet


# ---------------------------------------------------------------------------------- re-admission
def _take_columns(B, js):
    return B[:, js]


def _candidate_block(
    X, Phi, T, sw, offset, inv_scale, intercept, coef, models, softmax, js, c_off, c_scale
):
    """Candidate terms of columns ``js`` of one row block of the original X: ``phi' B phi`` and
    ``phi' sw (t - p)`` per class (|js|, K), and per class ``phi' B Phi_idx`` against its model
    (one-vs-rest: ``models[k]`` indexes class k's coefficients), or against every class's model
    coefficients with the class-coupled softmax curvature (``softmax``: ``models[l]`` indexes
    class l's coefficients, :func:`._readmission.softmax_cross`)."""
    K = coef.shape[1]
    nj = js.size
    sq, qb = np.zeros((nj, K)), np.zeros((nj, K))
    width = sum(idx.size for idx in models)
    cross = [np.zeros((nj, width if softmax else idx.size)) for idx in models]
    X = sp.csr_matrix(X) if sp.issparse(X) else X
    for start, stop, A in _row_slices(Phi, offset, inv_scale, intercept):
        s = _vector(sw[start:stop])
        Z = A @ coef
        P = probabilities(Z, "softmax") if softmax else expit(Z)
        Bw = s[:, None] * P * (1.0 - P)
        R = s[:, None] * (np.asarray(T[start:stop], dtype=np.float64) - P)
        if softmax:
            BP = softmax_cross(A, P, s, models)
        else:
            BP = [Bw[:, k : k + 1] * A[:, idx] for k, idx in enumerate(models)]
        Xs = X[start:stop]
        for a in range(0, nj, BLOCK):
            sel = slice(a, a + BLOCK)
            raw = Xs[:, js[sel]]
            raw = raw.toarray() if sp.issparse(raw) else raw
            blk = (np.asarray(raw, dtype=np.float64) - c_off[sel]) * c_scale[sel]
            sq[sel] += (blk * blk).T @ Bw
            qb[sel] += blk.T @ R
            for k in range(K):
                cross[k][sel] += blk.T @ BP[k]
    return sq, qb, tuple(cross)


class DaskCandidateColumns:
    """Re-admission candidates of a fit on a row-chunked dask X: every basis function's column,
    read from the original row blocks (persisted on the workers at the first use, since the
    design's own blocks are compacted by pruning).

    Stands in for :class:`._readmission.CandidateColumns`: ``raw(js)`` gives the unscaled columns
    as a dask array chunked like the rows (for ``DaskDesignMatrix.insert_columns``), and
    :meth:`propose_additions` scores the candidates chunk-wise.
    """

    chunked = True

    def __init__(self, X, n_basis):
        self._X = X
        self._persisted = False
        self.n_basis = int(n_basis)

    def _data(self):
        if not self._persisted:
            self._X = self._X.persist()
            self._persisted = True
        return self._X

    def raw(self, js):
        """Unscaled columns ``js``: a dask array chunked like X's rows."""
        X = self._data()
        js = np.asarray(js, dtype=np.intp)
        return X.map_blocks(
            _take_columns, js, chunks=(X.chunks[0], (js.size,)), dtype=X.dtype, meta=X._meta
        )

    def propose_additions(self, design, state, T, sw, threshold_lambda, likelihood="bernoulli"):
        """:func:`._readmission.propose_additions` for a chunked design: the same scores and
        choice, the candidate terms reduced over the row blocks of X."""
        K = state.coef.shape[1]
        softmax = likelihood == "softmax"
        if softmax:  # class l's model coefficients, class-major as state.sigma_full[0]
            models = tuple(np.flatnonzero(state.mask[:, k]) for k in range(K))
        else:
            models = tuple(state.sigma_full[k][0] for k in range(K))
        valid = np.flatnonzero(design.inv_scale > 0.0)
        excluded = excluded_bases(design, state)
        X = self._data()
        if X.chunks[0] != design.row_chunks:
            X = X.rechunk({0: design.row_chunks})
        x_blocks = _blocks(X)
        width = max(1, (K if softmax else 1) * sum(idx.size for idx in models) + 2 * K)
        group = max(BLOCK, GROUP_BYTES // (8 * width) // BLOCK * BLOCK)
        found = [[] for _ in range(K)]
        for start in range(0, valid.size, group):
            js = valid[start : start + group]
            sq, qb, cross = design._reduce(
                _candidate_block,
                x_blocks,
                design._phi_blocks(),
                design._rows(T),
                design._rows(sw),
                *_scaling(design),
                state.coef,
                models,
                softmax,
                js,
                design.offset[js],
                design.inv_scale[js],
            )
            for k in range(K):
                S = state.sigma_full[0 if softmax else k][1]
                C = cross[k]
                s = sq[:, k] - np.einsum("ij,ij->i", C @ S, C)
                score_class(k, js, s, qb[:, k], excluded, threshold_lambda, found)
        return choose_additions(found, design)
