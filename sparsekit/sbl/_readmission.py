"""Re-admission of pruned bases in the classifier's exact Laplace phase (Tipping & Faul 2003).

The diagonal phase prunes on a biased covariance (``1 / (D + lam)`` under-estimates the posterior
variances of correlated bases) and its pruning used to be final, so the exact phase could only
polish the bases the diagonal phase happened to keep. Here pruning is reversible: at a Laplace
posterior (mode ``w``, covariance ``Sigma = H^-1`` over a one-vs-rest problem's model A, curvature
weights ``b = sw p (1 - p)``), the Gaussian approximation of the likelihood around the mode has the
working response ``t_hat = Phi_A w + (t - p) / p (1 - p)`` and noise precisions ``b``, and for a
basis ``i`` outside the model Tipping and Faul's sparsity and quality factors are::

    s_i = phi_i' B phi_i - phi_i' B Phi_A Sigma Phi_A' B phi_i
    q_i = phi_i' B t_hat - phi_i' B Phi_A Sigma Phi_A' B t_hat  =  phi_i' sw (t - p)

(the second form holds at the mode, where ``Phi_A' sw (t - p) = Lambda w``). Adding ``i`` raises the
approximate log marginal likelihood exactly when ``q_i^2 > s_i``, by
``(q_i^2 - s_i) / (2 s_i) + log(s_i / q_i^2) / 2`` at its optimal precision ``s_i^2 / (q_i^2 - s_i)``.
Each sweep adds, per one-vs-rest problem, the candidate with the largest gain (above
``GAIN_TOL`` per unit of weight), or, for a source with ``batch > 1`` (the subset path's pool),
up to ``batch`` candidates that pass the test jointly (:func:`choose_batched`); the outer loop's
MacKay updates and Tipping and Faul's delete test (:func:`joint_delete`, one basis per class and
iteration, tested on the joint posterior) then take it from there. A (basis, class) pair is re-admitted
at most ``MAX_READMIT`` times: without that bound the add test (at one Laplace posterior) and the
delete test (at the next) can trade a marginal basis back and forth forever (measured on digits:
one add and one delete every 15 iterations until ``max_iter``).

A sweep scores every candidate basis (every non-constant basis function, kept or not): O(n M m)
for ``Phi' B Phi_A`` with a small model of m bases, in column blocks, so no n-by-M buffer beyond
the design's own is needed. Pruned columns are no longer in the design's buffer; a
``CandidateColumns`` source recomputes them (kernel columns ``K(X, x_i)``, or feature columns).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from ..utils._threads import map_blocks
from ._constructive import addition_gain
from ._design import held_dense_basis
from ._kernels import (
    FLUSH32,
    block_column_stats,
    column_products,
    float32_copy_range,
    float32_rows_into,
)

BLOCK = 256  # candidate columns per block of a sweep
PER_SWEEP = 1  # additions per class and sweep (4 halved the sweeps but cost accuracy, see below)
SHORTLIST = 64  # candidates per class choose_batched re-tests
GAIN_TOL = 1e-6  # evidence gain per unit of sample weight below which an addition is noise
MAX_READMIT = 2  # re-admissions of one (basis, class) pair: the add and delete tests can cycle
CACHE_BYTES = 64 * 2**20  # kernel candidate columns are kept between sweeps up to this size
# model products of a block with at least this many multiply-adds are screened in float32 (_score)
SCREEN_MIN_WORK = 2**24
RESCORE_COLUMNS = 256  # candidates per class the screen rescores in float64 in one product
SCREEN_ROWS = 1024  # rows per float32 product of the screen, summed in float64 (Screen.product)
SCREEN_MISSES = 2  # blocks a screen fails to bound (negative entries) before it stops trying
_U32 = 2.0**-24  # unit roundoff of float32
_U64 = 2.0**-53  # and of float64
_TINY32 = 2.0**-126  # its smallest normal number: the absolute error of a result that underflows
_F32_SAFE = 1e36  # largest sum of products a float32 product may reach (float32's max: 3.4e38)


class CandidateColumns:
    """Unscaled basis columns of the training data, by basis-function index.

    Parameters
    ----------
    raw_block : callable
        ``raw_block(js)`` returns the basis columns ``js`` before scaling, (n_samples, len(js)),
        dense or sparse.
    n_basis : int
        Number of basis functions.
    cache : bool
        Keep the computed columns between sweeps (for sources that are costly to evaluate, such as
        kernels) when the cached columns fit in ``cache_bytes``: one n-by-M array, filled column
        by column as sweeps ask for them, so any subset is served from it. Column-major, so that
        a sweep's block is a column-major view (read along its columns without a copy by
        :func:`dense_column_products`; with a row-major cache, the strided view was copied).
        The cache has a float32 mirror, one row per column (half its size again), filled with
        it: the screen's input for a block of cached columns (:meth:`float32`).
    universe : ndarray of int, default=None
        The only basis functions that will be asked for (increasing; the subset path's pool):
        the cache then holds these M columns rather than all ``n_basis``.
    cache_bytes : int, default=CACHE_BYTES
        Largest cache allowed.
    batch : int, default=1
        Additions per class and sweep, chosen by :func:`choose_batched` when above 1 (one-vs-rest
        problems only).
    """

    def __init__(
        self, raw_block, n_basis, *, cache=False, universe=None, cache_bytes=CACHE_BYTES, batch=1
    ):
        self.batch = int(batch)
        self._raw_block = raw_block
        self.n_basis = int(n_basis)
        self._cache_ok = cache
        self._cache_bytes = cache_bytes
        self._universe = None if universe is None else np.asarray(universe, dtype=np.intp)
        self._full = None  # (n, M) cache, and which of its columns are filled
        self._have = None
        self._pos = None  # basis index -> cache column (-1: not cached)
        self._full32 = None  # (M, n) float32 mirror of the cache, with each column's range
        self._lo = None
        self._hi = None

    def raw(self, js):
        """Unscaled columns ``js`` (possibly a read-only view of the cache: do not modify)."""
        js = np.asarray(js, dtype=np.intp)
        if self._full is not None:
            pos = self._pos[js]
            if np.all(pos >= 0):
                missing = ~self._have[pos]
                if missing.any():
                    cols = np.asarray(self._raw_block(js[missing]), dtype=np.float64)
                    self._fill(pos[missing], cols)
                sl = _as_range(pos)
                if sl is not None:
                    view = self._full[:, sl]  # a sweep's blocks are ranges
                    view.flags.writeable = False
                    return view
                return self._full[:, pos]
        B = self._raw_block(js)
        if sp.issparse(B):
            return B
        B = np.asarray(B, dtype=np.float64)
        if self._full is None and self._cache_ok and js.size:
            keys = np.arange(self.n_basis) if self._universe is None else self._universe
            if B.shape[0] * keys.size * 8 <= self._cache_bytes and np.all(np.isin(js, keys)):
                self._pos = np.full(self.n_basis, -1, dtype=np.intp)
                self._pos[keys] = np.arange(keys.size)
                self._full = np.empty((B.shape[0], keys.size), order="F")  # blocks: F views
                self._have = np.zeros(keys.size, dtype=bool)
                self._full32 = np.empty((keys.size, B.shape[0]), dtype=np.float32)
                self._lo = np.empty(keys.size)
                self._hi = np.empty(keys.size)
                self._fill(self._pos[js], B)
        return B

    def _fill(self, pos, cols):
        """Store ``cols`` as the cache's columns ``pos``, and their float32 rounding and ranges."""
        _fill_columns(self._full, pos, cols)
        self._have[pos] = True
        rows = np.ascontiguousarray(cols.T)
        out = np.empty(rows.shape, dtype=np.float32)
        lo, hi = np.empty(pos.size), np.empty(pos.size)
        float32_rows_into(rows, out, lo, hi)
        self._full32[pos], self._lo[pos], self._hi[pos] = out, lo, hi

    def float32(self, js, raw):
        """``(A32, lo, hi)`` for cached columns ``js`` that are a range of the cache, ``raw`` the
        view :meth:`raw` returned for them: their float32 rounding, one row per column (a view of
        the mirror), and the smallest and largest entry; what
        :func:`._kernels.float32_copy_range` returns for ``raw.T``. None when the columns are not
        such a range or ``raw`` is not a view of the cache (then :func:`_score` rounds ``raw``
        itself)."""
        js = np.asarray(js, dtype=np.intp)
        if self._full is None or not js.size or getattr(raw, "base", None) is not self._full:
            return None
        pos = self._pos[js]
        if np.any(pos < 0) or not np.all(self._have[pos]):
            return None
        sl = _as_range(pos)
        if sl is None:
            return None
        return self._full32[sl], float(self._lo[sl].min()), float(self._hi[sl].max())


def _as_range(pos):
    """``pos`` (cache columns) as a slice when they are consecutive and increasing, else None."""
    if pos.size and pos[-1] - pos[0] == pos.size - 1 and np.all(np.diff(pos) == 1):
        return slice(pos[0], pos[-1] + 1)
    return None


FILL_ROWS = 512  # rows per block when columns are copied into the column-major cache


def _fill_columns(full, pos, cols):
    """``full[:, pos] = cols`` for the column-major ``full``, in blocks of ``FILL_ROWS`` rows: a
    row-major ``cols`` (a kernel block) is transposed on the way, and a block's rows stay in the
    cache while they are written (twice as fast as one assignment at n = 8,000, 256 columns)."""
    if not cols.flags.c_contiguous:
        full[:, pos] = cols
        return
    for start in range(0, cols.shape[0], FILL_ROWS):
        full[start : start + FILL_ROWS, pos] = cols[start : start + FILL_ROWS]


def joint_delete(sigma_full, coef, lam, lam_new, free, likelihood, cap=None, gamma_floor=0.0):
    """Tipping and Faul's delete test run jointly at the Laplace mode: each delete is tested on
    the posterior without the bases already deleted.

    At fixed curvature weights ``B`` (the Gaussian approximation of the likelihood at the mode),
    removing coefficient ``i`` (an infinite precision) is conditioning the posterior on
    ``w_i = 0``: ``mu' = mu - Sigma[:, i] mu_i / Sigma_ii``, ``Sigma' = Sigma - Sigma[:, i]
    Sigma[i, :] / Sigma_ii``, O(m^2) per delete and no pass over the samples. From ``Sigma'`` and
    ``mu'`` the factors of every remaining coefficient are those of the smaller model, ``s_j =
    gamma_j / Sigma'_jj``, ``q_j = mu'_j / Sigma'_jj`` (``gamma_j = 1 - lam_j Sigma'_jj``), so the
    next delete is tested exactly rather than under the assumption that the others stay. Per
    covariance block of ``sigma_full`` (one per one-vs-rest problem; one over every class's
    coefficients for the softmax, whose Laplace precision couples the classes), the coefficient
    whose removal raises the approximate evidence most (``q^2 <= s``; gain ``(log(1 + s / lam) -
    q^2 / (lam + s)) / 2`` at its current precision) is deleted, then the next on the conditioned
    posterior, while one remains and its class has had fewer than ``cap`` deletes (None: no cap).
    With ``cap=1`` a one-vs-rest problem deletes, per class, the basis whose own delete test
    (the others assumed to stay) gains most; a
    softmax model deletes one coefficient per class, each class's tested on the posterior without
    the coefficients of the classes before it.

    Parameters
    ----------
    sigma_full : list of (idx, S)
        The exact step's covariances (``PathState.sigma_full``): ``idx`` the coefficient rows of
        one one-vs-rest problem, or, for ``likelihood="softmax"``, class-major flat positions
        ``k * n_coef + j``; ``S`` their covariance.
    coef, lam : ndarray of shape (n_coef, K)
        Posterior modes and the precisions ``S`` was computed with.
    lam_new : ndarray of shape (n_coef, K)
        The re-estimated precisions; a coefficient with a non-finite one is not deleted here.
    free : int
        Free rows (the intercept): never deleted, they stay in the conditioning.
    likelihood : {"bernoulli", "softmax"}
    cap : int or None
        Most deletes per class (one-vs-rest problem, or softmax class).
    gamma_floor : float
        Lower clip of ``gamma`` (the re-estimate's ``GAMMA_FLOOR``).

    Returns
    -------
    ndarray of bool, shape (n_coef, K): the coefficients to delete.
    """
    n_coef, K = coef.shape
    out = np.zeros(coef.shape, dtype=bool)
    for k, (idx, S) in enumerate(sigma_full):
        idx = np.asarray(idx)
        if likelihood == "softmax":
            rows, cols = idx % n_coef, idx // n_coef
        else:
            rows, cols = idx, np.full(idx.size, k)
        mu = coef[rows, cols].astype(np.float64)
        lm = lam[rows, cols].astype(np.float64)
        alive = (rows >= free) & np.isfinite(lam_new[rows, cols])
        left = np.full(K, idx.size if cap is None else cap)
        S = np.array(S, dtype=np.float64)
        while True:
            d = np.diag(S)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                gamma = np.clip(1.0 - lm * d, gamma_floor, 1.0)
                s = gamma / d
                q = mu / d
                gain = 0.5 * (np.log1p(s / lm) - q * q / (lm + s))
            ok = alive & (left[cols] > 0) & (d > 0.0) & (mu * mu <= gamma * d) & np.isfinite(gain)
            if not ok.any():
                break
            i = int(np.argmax(np.where(ok, gain, -np.inf)))
            out[rows[i], cols[i]] = True
            alive[i] = False
            left[cols[i]] -= 1
            col = S[:, i].copy()
            mu -= col * (mu[i] / col[i])
            S -= np.outer(col, col / col[i])
            mu[i] = 0.0
            S[i, :] = 0.0
            S[:, i] = 0.0
    return out


def dense_column_products(raw, Bw, R):
    """``((raw * raw).T @ Bw, raw.T @ R)`` for a dense block of columns in one pass over it and
    without the ``raw * raw`` temporary: :func:`._kernels.column_products` on a column-major
    block (the pool cache's slices), :func:`._kernels.block_column_stats`'s products on a
    row-major one."""
    if raw.flags.f_contiguous:
        return column_products(raw.T, Bw, R)
    raw = np.ascontiguousarray(raw)
    _amax, _mean, _ssd, sq, qr = block_column_stats(raw, Bw[:, 0], Bw, R, False)
    return sq, qr


def _block_terms(design, candidates, js, Bw, R):
    """Candidate columns ``js`` (unscaled) with their scale, an offset correction (or None), and
    ``phi' B phi`` and ``phi' sw (t - p)`` per class for the scaled (and centred, where the
    design centres) columns ``phi = (raw - o) s``.

    The scale is applied to these products rather than to an n-by-block copy of the columns."""
    raw = candidates.raw(js)
    s = design.inv_scale[js]
    o = design.offset[js]
    shift = None
    if sp.issparse(raw) or np.any(o != 0.0):
        shift = -o * s  # phi = raw s + shift: a rank-one correction
    if sp.issparse(raw):
        sq = np.asarray(raw.multiply(raw).T @ Bw)
        Qb = np.asarray(raw.T @ R)
    else:
        sq, Qb = dense_column_products(raw, Bw, R)
    sq = sq * (s * s)[:, None]
    Qb = Qb * s[:, None]
    if shift is not None:
        lin_b = np.asarray(raw.T @ Bw) * s[:, None]
        sq = sq + 2.0 * shift[:, None] * lin_b + (shift**2)[:, None] * Bw.sum(axis=0)
        Qb = Qb + shift[:, None] * R.sum(axis=0)
    return raw, s, shift, sq, Qb


def _score(
    js,
    raw,
    scale,
    shift,
    sq,
    Qb,
    models,
    excluded,
    threshold_lambda,
    found,
    keep=None,
    screen=None,
    rounded=None,
):
    """Append ``(gain, basis, precision)`` of the candidates ``js`` worth adding to ``found[k]``.

    ``raw`` holds the candidates' unscaled columns, or with ``keep`` (a mask over its columns) a
    block whose kept columns are the candidates: the product with the model is taken over the
    whole block and the dropped columns' rows are left out after it (no copy of the block).
    With ``screen`` (:class:`Screen`, from the same ``models``), the model products of a large
    dense block with non-negative entries are computed in float32 first, and only the candidates
    that may pass the add test (and, with ``screen.top``, may be among the best) are scored again
    in float64 (:meth:`Screen.candidates`, :meth:`Screen.defer`; the caller calls
    :meth:`Screen.flush` after its last block). ``rounded`` is :func:`._kernels.float32_copy_range`
    of the column-major ``raw``'s transpose when the caller has it (:meth:`CandidateColumns.float32`)."""
    A32 = None
    if (
        screen is not None
        and screen.misses < SCREEN_MISSES
        and shift is None
        and not sp.issparse(raw)
        and raw.size * screen.width >= max(SCREEN_MIN_WORK, 1)
    ):
        # the block as a C-ordered array: raw itself, or the transpose of a column-major one
        # (runs of rows on the fit's thread pool, as the products below)
        if rounded is not None and raw.flags.f_contiguous:
            A32, lo, hi = rounded
        else:
            A32, lo, hi = float32_copy_range(raw.T if raw.flags.f_contiguous else np.asarray(raw))
        if not (lo >= 0.0 and hi <= screen.hi):
            A32 = None  # a negative entry, or too large for the bound (or only NaNs)
            screen.misses += 1  # (dense linear features: most blocks have negative entries)
    cols = np.arange(raw.shape[1]) if keep is None else np.flatnonzero(keep)
    for k, (BP, S) in enumerate(models):
        if A32 is not None and screen.BP32[k] is not None:
            C = screen.product(A32, k, raw.flags.f_contiguous)
            sel, g_lo, g_hi = screen.candidates(
                k, C[cols], scale, hi, sq[:, k], Qb[:, k], excluded[k, js], threshold_lambda
            )
            screen.defer(
                k, raw, cols[sel], js[sel], scale[sel], sq[sel, k], Qb[sel, k], g_lo, g_hi,
                (excluded, threshold_lambda, found),
            )  # fmt: skip
            continue
        C = np.asarray(raw.T @ BP)
        if keep is not None and not keep.all():
            C = C[keep]
        C = C * scale[:, None]
        if shift is not None:
            C = C + np.outer(shift, BP.sum(axis=0))
        s = sq[:, k] - np.einsum("ij,ij->i", C @ S, C)
        score_class(k, js, s, Qb[:, k], excluded, threshold_lambda, found)


class Screen:
    """A sweep's float32 screening of the add test (:func:`_score`), from its ``models`` (per
    class ``(B Phi_A, Sigma)``) over ``n_rows`` samples.

    For a block of non-negative candidate columns ``raw`` and a non-negative ``B Phi_A`` (RBF
    kernel columns, uncentred, with the intercept's column of ones), :meth:`product` forms
    ``C = raw' B Phi_A`` as float32 products over runs of SCREEN_ROWS rows summed in float64.
    Each entry is then within ``gamma C + eta`` of the exact one: Higham's bound ``gamma_L = L u
    / (1 - L u)`` for a float32 dot product of L = SCREEN_ROWS terms (``u = 2^-24``; any order of
    summation, so any BLAS), widened for the rounding of the two inputs to float32 and for the
    float64 sum of the runs, taken relative to the computed result, and an absolute ``eta`` for
    the entries below ``FLUSH32`` that the rounding sets to 0 (so that no float32 product meets a
    subnormal number: :data:`._kernels.FLUSH32`). Then ``s = phi' B phi - c' Sigma c`` is within
    ``D = 2 |Sigma c|' (gamma c + eta) + ||Sigma||_inf ||gamma c + eta||^2`` (plus the float64
    rounding of either side) of ``s`` from float64 products. :meth:`candidates` keeps every
    candidate for which some ``s`` in ``[s - D, s + D]`` passes the add test, with bounds on its
    evidence gain, and :meth:`defer` rescores in float64 those that may be among the caller's
    ``top`` best.
    make_classification, RBF gamma 0.05, the first 250 iterations of the subset path at
    n = 20,000: 10.4 % of the candidates scored were kept (9.9 % pass the test in float64) and
    2.6 % rescored; the screen's products took 19.2 s against 35.3 s for the float64 scoring
    (one thread, the same fit to the last digit of the evidence).

    Parameters
    ----------
    models : list of (ndarray, ndarray)
        Per class ``B Phi_A`` (n_rows, m) and ``Sigma`` (m, m).
    n_rows : int
        Number of samples (the length of the dot products).
    top : int, default=None
        How many of the best candidates per class the caller takes (None: all that pass).
    tol : float, default=0.0
        Gain at or below which the caller takes no candidate.
    """

    def __init__(self, models, n_rows, top=None, tol=0.0):
        n = int(n_rows)
        rows = min(n, SCREEN_ROWS)
        gamma = (rows + 2) * _U32 + (n // rows + 3) * _U64
        gamma = gamma / (1.0 - gamma)
        self.gamma = gamma / (1.0 - gamma)  # relative to the computed result
        self.n_rows = n
        self.top = top
        self.tol = float(tol)
        self.width = max((BP.shape[1] for BP, _S in models), default=0)
        self.BP = [BP for BP, _S in models]
        self.S = [S for _BP, S in models]
        self.BP32, self.s_norm = [], []
        bp_hi = 0.0
        for BP, S in models:
            lo, hi = (float(BP.min()), float(BP.max())) if BP.size else (0.0, 0.0)
            ok = gamma < 0.01 and lo >= 0.0 and hi <= _F32_SAFE / n
            BP32 = BP.astype(np.float32) if ok else None
            if ok:
                BP32[BP < FLUSH32] = 0.0  # tested in float64: no n-by-m float64 temporary
            self.BP32.append(BP32)
            self.s_norm.append(float(np.abs(S).sum(axis=1).max(initial=0.0)))
            bp_hi = max(bp_hi, hi if ok else 0.0)
        self.bp_hi = max(bp_hi, 1.0)
        self.hi = _F32_SAFE / (n * self.bp_hi)  # largest block entry: no overflow in float32
        self._queue = [[] for _ in models]  # per class: (columns, js, scale, sq, q, g_lo, g_hi)
        self._queued = [0] * len(models)
        self._context = None
        self.rescored = 0  # candidates scored in float64, for the tests and benchmarks
        self.misses = 0  # blocks that could not be screened (see SCREEN_MISSES)

    def product(self, A32, k, transposed):
        """The float32 products of a block with class ``k``'s ``B Phi_A``, (block columns, m)
        float64: ``A32`` is the block in float32 (n-by-b, or b-by-n when ``transposed``). Each
        run of SCREEN_ROWS rows is one float32 product, the runs are summed in float64: the
        error bound is that of a dot product of SCREEN_ROWS terms (at n = 20,000 the bound of
        one n-term float32 product kept 75 % of the candidates of the first 250 iterations
        for rescoring, of which 10 % passed; runs of 512 rows kept 10.1 %, runs of 2,048 12 %)."""
        BP32 = self.BP32[k]
        n, m = BP32.shape
        width = A32.shape[0] if transposed else A32.shape[1]

        def run(a):
            b = min(n, a + SCREEN_ROWS)
            return A32[:, a:b] @ BP32[a:b] if transposed else A32[a:b].T @ BP32[a:b]

        # the runs are independent: on the fit's threads, summed in order (the same bits on any
        # number of threads)
        C = np.zeros((width, m))
        for part in map_blocks(run, range(0, n, SCREEN_ROWS), n * width * m):
            C += part
        return C

    def defer(self, k, raw, cols, js, scale, sq, q, g_lo, g_hi, context):
        """Queue candidates ``js`` of class ``k`` (columns ``cols`` of the block ``raw``) that
        may pass, with their scales, ``phi' B phi``, ``q`` and bounds ``[g_lo, g_hi]`` on their
        evidence gains, for scoring in float64; ``context`` is ``(excluded, threshold_lambda,
        found)`` of :func:`_score`.

        Without ``top``, the queue is scored once it holds RESCORE_COLUMNS candidates (one wide
        product with the model rather than a thin one per block). With ``top``, only the caller's
        ``top`` best candidates per class matter (those :func:`choose_additions` or
        :func:`choose_batched` takes): a candidate whose gain is surely below the ``top``-th
        largest lower bound seen so far (the exact gains found, the queued candidates' ``g_lo``),
        or at most ``tol``, is dropped, and the queue is scored at :meth:`flush`, or when it
        outgrows ``2 top + 2 BLOCK`` candidates after such a pruning."""
        self._context = context
        if self.top is not None and js.size:
            keep = (g_hi >= self._bar(k, g_lo)) & (g_hi > self.tol)
            cols, js, scale, sq, q, g_lo, g_hi = (
                a[keep] for a in (cols, js, scale, sq, q, g_lo, g_hi)
            )
        if not js.size:
            return
        self._queue[k].append((raw[:, cols], js, scale, sq, q, g_lo, g_hi))
        self._queued[k] += js.size
        if self.top is None:
            if self._queued[k] >= RESCORE_COLUMNS:
                self._rescore(k)
        elif self._queued[k] > 2 * (self.top + BLOCK):
            self._prune(k)
            if self._queued[k] > 2 * (self.top + BLOCK):
                self._rescore(k)

    def _bar(self, k, extra=None):
        """The ``top``-th largest lower bound on the gains of class ``k``'s candidates so far:
        the exact gains in ``found[k]``, the queued ones' ``g_lo`` (and ``extra``)."""
        found = self._context[2][k]
        parts = [g for g, _js, _lam in found] + [e[5] for e in self._queue[k]]
        if extra is not None:
            parts.append(extra)
        lows = np.concatenate(parts) if parts else np.zeros(0)
        if lows.size < self.top:
            return -np.inf
        return float(np.partition(lows, lows.size - self.top)[lows.size - self.top])

    def _prune(self, k):
        bar = self._bar(k)
        queue = []
        for entry in self._queue[k]:
            keep = entry[6] >= bar
            if keep.all():
                queue.append(entry)
            elif keep.any():
                queue.append(tuple(a[:, keep] if i == 0 else a[keep] for i, a in enumerate(entry)))
        self._queue[k] = queue
        self._queued[k] = sum(e[1].size for e in queue)

    def flush(self):
        """Score the queued candidates that may still be among the best (after the last block
        of a sweep or scan)."""
        for k in range(len(self._queue)):
            if self.top is not None and self._queue[k]:
                self._prune(k)
            if self._queue[k]:
                self._rescore(k)

    def _rescore(self, k):
        queue = self._queue[k]
        raw = np.empty((self.n_rows, self._queued[k]), order="F")
        at = 0
        for cols, *_rest in queue:
            raw[:, at : at + cols.shape[1]] = cols
            at += cols.shape[1]
        js, scale, sq, q = (np.concatenate(a) for a in list(zip(*queue))[1:5])
        self._queue[k] = []
        self._queued[k] = 0
        self.rescored += js.size
        C = np.asarray(raw.T @ self.BP[k]) * scale[:, None]
        s = sq - np.einsum("ij,ij->i", C @ self.S[k], C)
        excluded, threshold_lambda, found = self._context
        score_class(k, js, s, q, excluded, threshold_lambda, found)

    @classmethod
    def of(cls, models, n_rows, top=None, tol=0.0):
        """A Screen, or None when no class can be screened."""
        screen = cls(models, n_rows, top, tol)
        return screen if any(b is not None for b in screen.BP32) else None

    def candidates(self, k, C, scale, raw_hi, sq, q, excluded, threshold_lambda):
        """Indices of the candidates of class ``k`` that may pass the add test, with lower and
        upper bounds on their gains, from the products ``C`` of :meth:`product` (unscaled,
        candidates by rows) of a block whose largest entry is ``raw_hi``, the column scales,
        ``phi' B phi``, ``q`` and the excluded mask."""
        C = C * scale[:, None]
        # entries flushed to 0 (FLUSH32) and products that underflow: absolute errors
        eta = self.n_rows * (FLUSH32 * (raw_hi + self.bp_hi + FLUSH32) + _TINY32)
        err = self.gamma * C + eta * scale[:, None]
        CS = C @ self.S[k]
        s = sq - np.einsum("ij,ij->i", CS, C)
        cc = np.einsum("ij,ij->i", C, C)
        D = 2.0 * np.einsum("ij,ij->i", np.abs(CS), err)
        D += self.s_norm[k] * (np.einsum("ij,ij->i", err, err) + 4.0 * (C.shape[1] + 2) * _U64 * cc)
        D = D * (1.0 + 1e-6) + 4.0 * _U64 * np.abs(sq)
        s_lo = np.maximum(s - D, 0.0)
        theta = q * q - s_lo
        sel = (s + D > 0.0) & (theta > 0.0) & ~excluded
        sel &= theta * threshold_lambda > s_lo * s_lo
        sel = np.flatnonzero(sel)
        # bounds on the gains of those: addition_gain falls as s grows (q fixed); a candidate
        # that may fail the test has no lower bound
        qq, s_lo, s_hi = q[sel] * q[sel], s_lo[sel], s[sel] + D[sel]
        theta_hi = qq - s_hi
        sure = (s_lo > 0.0) & (theta_hi > 0.0) & (theta_hi * threshold_lambda > s_hi * s_hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            g_hi = np.where(s_lo > 0.0, addition_gain(s_lo, np.sqrt(qq)), np.inf)
            g_lo = np.where(sure, addition_gain(s_hi, np.sqrt(qq)), -np.inf)
        slack = 1e-9 * np.abs(g_hi) + 1e-300
        return sel, np.where(sure, g_lo - 1e-9 * np.abs(g_lo), -np.inf), g_hi + slack


def score_class(k, js, s, q, excluded, threshold_lambda, found):
    """Append ``(gain, basis, precision)`` of class ``k``'s candidates ``js`` worth adding (from
    their ``s`` and ``q``) to ``found[k]``."""
    theta = q * q - s
    good = (theta > 0.0) & (s > 0.0) & ~excluded[k, js]
    # a precision past the pruning threshold would be pruned again at once
    good &= theta * threshold_lambda > s * s
    if good.any():
        s, q, theta = s[good], q[good], theta[good]
        found[k].append((addition_gain(s, q), js[good], s * s / theta))


def choose_additions(found, design, per_class=PER_SWEEP):
    """Per class, the ``per_class`` candidates of ``found`` with the largest gains, when the gain
    is worth having: a list of ``(basis index, class, precision)``, best gain first over all
    classes (ties in class order), so that a caller that can take only the first few (the
    hand-over's cap on a softmax model, :func:`._engine._within_cap`) takes the best rather
    than the first classes'. Applying all of them does not depend on the order
    (:func:`apply_additions`)."""
    tol = GAIN_TOL * design.weight_sum
    chosen = []
    for k, blocks in enumerate(found):
        if not blocks:
            continue
        gain, js, lam = (np.concatenate(a) for a in zip(*blocks))
        for i in np.argsort(-gain)[:per_class]:
            if gain[i] > tol:
                chosen.append((float(gain[i]), (int(js[i]), k, float(lam[i]))))
    chosen.sort(key=lambda c: -c[0])  # stable: ties stay in class order
    return [addition for _gain, addition in chosen]


def excluded_bases(design, state):
    """(K, n_basis) mask of the bases that are not candidates of a class: in its model, or
    re-admitted MAX_READMIT times already."""
    f = 1 if design.intercept_column else 0
    K = state.coef.shape[1]
    excluded = np.zeros((K, design.n_basis), dtype=bool)
    for k in range(K):
        excluded[k, design.active[state.mask[f:, k]]] = True
    for (j, k), c in state.readmitted.items():
        if c >= MAX_READMIT:
            excluded[k, j] = True
    return excluded


def _softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def _softmax_models(Phi, P, sw, state):
    """Per class ``k``, the cross-curvature columns ``B_kl Phi_{A_l}`` of the multinomial Laplace
    precision against every model coefficient (class-major, as ``state.sigma_full``) and the
    joint covariance, so that ``s_ik`` below is exact for the quadratic model at the mode.

    With a softmax likelihood the curvature between coefficients ``(i, k)`` and ``(j, l)`` is
    ``phi_i' diag(sw p_k (delta_kl - p_l)) phi_j``: the class blocks are coupled. Adding the
    coefficient ``(i, k)`` at precision ``alpha`` to the Gaussian (Laplace) approximation of the
    posterior changes its log evidence by ``(log alpha - log(alpha + s) + q^2 / (alpha + s)) / 2``
    with ``s = h_ii - h_iA Sigma h_Ai`` (``h_iA``: the row of the full precision, all classes) and
    ``q`` the data gradient ``phi_i' sw (t_k - p_k)`` (the model's gradient is zero at the mode):
    Tipping and Faul's test with ``b_k = sw p_k (1 - p_k)`` on the diagonal. The usual
    approximation (Tipping & Faul 2003 sec. 4 for one output; per class for multinomial RVMs,
    e.g. Psorakis, Damoulas & Girolami 2010) keeps only the diagonal block ``b_k`` and
    ``Sigma_kk``; the cross blocks ``-sw p_k p_l`` cost K times the products of one class and
    are kept here, so the test agrees with a brute-force evaluation of the Laplace evidence.
    """
    _idx, S = state.sigma_full[0]  # class-major: class k's model coefficients, then k + 1's
    cols = [np.flatnonzero(state.mask[:, k]) for k in range(state.coef.shape[1])]
    return [(BP, S) for BP in softmax_cross(Phi, P, sw, cols)]


def softmax_cross(Phi, P, sw, cols):
    """Per class ``k``, the columns ``diag(sw p_k (delta_kl - p_l)) Phi[:, cols[l]]`` over every
    class ``l`` side by side (class-major): the softmax Laplace precision's rows of class ``k``."""
    K = len(cols)
    out = []
    for k in range(K):
        blocks = []
        for ell in range(K):
            c = sw * P[:, k] * ((1.0 if ell == k else 0.0) - P[:, ell])
            blocks.append(c[:, None] * Phi[:, cols[ell]])
        out.append(np.hstack(blocks))
    return out


def sweep_terms(design, state, T, sw, likelihood="bernoulli"):
    """What a sweep needs from the current exact posterior: the curvature weights ``Bw`` and
    residuals ``R`` (n, K), per class the model's ``(B Phi_A, Sigma)`` (with the class-coupled
    softmax blocks, :func:`_softmax_models`), and the (K, n_basis) mask of bases that are not
    candidates (in the model, or re-admitted MAX_READMIT times already).

    ``[1 | Phi_A]`` is the one the exact step of the same iteration built (``state.dense_basis``,
    :class:`._design.DenseBasis`: built here only when the design changed since), and ``B
    Phi_A`` is formed by :func:`_weighted_columns`: the same numbers in the same layout as
    before, without a copy of ``[1 | Phi_A]`` per sweep. (Without an intercept column ``Phi_A``
    is the design's own column-major view, as before.)"""
    K = T.shape[1]
    f = design.intercept_column
    Phi = held_dense_basis(design, state) if f else np.asarray(design.dense_active(), np.float64)
    Z = Phi @ state.coef
    softmax = likelihood == "softmax"
    P = _softmax(Z) if softmax else expit(Z)
    Bw = sw[:, None] * P * (1.0 - P)
    R = sw[:, None] * (T - P)
    models = _softmax_models(Phi, P, sw, state) if softmax else []
    for k in range(0 if softmax else K):
        idx, S = state.sigma_full[k]
        models.append((_weighted_columns(design, Phi, idx, Bw[:, k]), S))
    return Bw, R, models, excluded_bases(design, state)


def _weighted_columns(design, Phi, idx, b):
    """``b[:, None] * Phi[:, idx]``, column-major as that product is, for ``Phi = [1 | Phi_A]``
    and increasing ``idx``.

    For a dense design with an intercept column whose model holds the intercept, the columns
    are multiplied straight from the design's own column-major buffer (a view: ``Phi_A``) into
    the column-major result, without the copy a fancy index of ``Phi`` makes first (half the
    time at n = 10,000, m = 190, one thread). The same products of the same numbers, in the same
    layout (which matters: BLAS takes another path, and rounds differently, for a one-column
    product with a row-major operand)."""
    dense = not getattr(design, "sparse", True) and design.intercept_column
    if not (dense and idx.size and idx[0] == 0):
        return b[:, None] * Phi[:, idx]
    out = np.empty((Phi.shape[0], idx.size), order="F")
    out[:, 0] = b  # b times the intercept column's ones
    Pa = design.dense_active()
    cols = Pa if idx.size == Phi.shape[1] else Pa[:, idx[1:] - 1]
    np.multiply(cols, b[:, None], out=out[:, 1:])
    return out


def propose_additions(
    design, state, T, sw, candidates, threshold_lambda, likelihood="bernoulli", per_class=None
):
    """Score the candidate bases for every one-vs-rest problem (or every class of a softmax
    model, :func:`_softmax_models`) at the current exact posterior.

    Uses ``state.coef`` and ``state.sigma_full`` as left by the exact step (consistent with
    ``state.mask``). Returns a list of ``(basis index, class, precision)``: for each class, the
    candidates outside its model with the largest evidence gains, when the gain is worth having.
    ``per_class=None`` is a sweep: ``PER_SWEEP`` per class, or, from a source with ``batch > 1``,
    up to ``batch`` that pass the add test jointly (:func:`choose_batched`); a number is a bulk
    re-admission by the independent scores (the second start, :func:`._engine._restart`;
    in-memory candidates only, a chunked source proposes ``PER_SWEEP``); 0 proposes nothing and
    scores nothing.

    Every basis function is scored, O(n M m). (Scoring only a shortlist, the bases that passed
    the add test at the last full sweep, with a full sweep before the fit may stop, scored 3.7x
    fewer columns on make_classification(n=2000) but did not shorten the fit, whose time is
    mostly exact steps (452 instead of 350 iterations), and led Image, split 0, to a worse
    optimum: log evidence -142.7 instead of -125.5, accuracy 0.962 instead of 0.968.) Adding the best 4 per class and sweep instead of 1
    made make_classification(n=2000) twice as fast but cost accuracy (Image 3.4 % instead of 3.2 %
    error, digits 0.964 instead of 0.971). (Scoring exactly only the candidates with the
    largest ``q^2 / phi' B phi``, the gain of a candidate uncorrelated with the model, was tried
    and lost accuracy: Image 4.6 % instead of 3.2 % error, digits 0.958 instead of 0.971.)
    """
    if per_class == 0:  # no room (the second start with exact_switch bases already)
        return []
    if getattr(candidates, "chunked", False):  # dask: chunk-wise terms (_dask_laplace.py)
        return candidates.propose_additions(design, state, T, sw, threshold_lambda, likelihood)
    K = T.shape[1]
    Bw, R, models, excluded = sweep_terms(design, state, T, sw, likelihood)
    valid = np.flatnonzero(design.inv_scale > 0.0)
    batch = getattr(candidates, "batch", 1)
    batched = per_class is None and likelihood == "bernoulli" and batch > 1
    top = SHORTLIST if batched else PER_SWEEP if per_class is None else per_class
    screen = Screen.of(models, design.n_samples, top, GAIN_TOL * design.weight_sum)
    found = [[] for _ in range(K)]  # per class: (gains, basis indices, precisions) per block
    for start in range(0, valid.size, BLOCK):
        js = valid[start : start + BLOCK]
        terms = _block_terms(design, candidates, js, Bw, R)
        rounded = None
        if screen is not None and hasattr(candidates, "float32"):
            rounded = candidates.float32(js, terms[0])
        _score(
            js, *terms, models, excluded, threshold_lambda, found, screen=screen, rounded=rounded
        )
    if screen is not None:
        screen.flush()
    if batched:
        return choose_batched(found, design, candidates, Bw, R, models, threshold_lambda, batch)
    return choose_additions(found, design, top)


def choose_batched(found, design, candidates, Bw, R, models, threshold_lambda, batch):
    """Per one-vs-rest problem, up to ``batch`` candidates that pass the add test
    *jointly*: Tipping and Faul's sequential algorithm run on the Gaussian (Laplace) approximation
    of the likelihood at the current mode, curvature weights ``b`` held fixed.

    The best candidate is added at its optimal precision ``alpha_i = s_i^2 / (q_i^2 - s_i)``; the
    factors of every other candidate ``j`` then follow by a rank-one update,
    ``s_j -= g_ji^2 / (alpha_i + s_i)``, ``q_j -= g_ji q_i / (alpha_i + s_i)``, with ``g_ji =
    phi_j' B phi_i - phi_j' B Phi_A Sigma Phi_A' B phi_i`` the cross term conditional on the model
    (Tipping & Faul 2003, appendix, with ``B`` for ``beta I``), and the next best is chosen from the
    updated factors, until none gains more than ``GAIN_TOL`` per unit of weight. A candidate
    correlated with one already chosen (a neighbouring RBF centre) loses its gain by the update,
    which adding the top few of one sweep's independent scores does not see (that was measured to
    cost accuracy, :func:`propose_additions`). The sequence runs over the ``SHORTLIST``
    candidates of largest independent gain, so its cross terms cost O(n SHORTLIST (SHORTLIST +
    m)) per class. The first choice is :func:`choose_additions`'s. (The list is in class order:
    only one-vs-rest problems batch, and the hand-over's cap takes each problem's additions on
    their own, :func:`._engine._within_cap`.)
    """
    tol = GAIN_TOL * design.weight_sum
    out = []
    for k, blocks in enumerate(found):
        if not blocks:
            continue
        gain, js, _lam = (np.concatenate(a) for a in zip(*blocks))
        order = np.argsort(-gain)[:SHORTLIST]
        if gain[order[0]] <= tol:
            continue
        order = order[gain[order] > tol]
        js_t = js[order]
        srt = np.argsort(js_t)  # the candidate source serves increasing indices
        phi = np.empty((design.n_samples, js_t.size))
        raw = candidates.raw(js_t[srt])
        raw = raw.toarray() if sp.issparse(raw) else np.asarray(raw, dtype=np.float64)
        s_col = design.inv_scale[js_t[srt]]
        phi[:, srt] = (raw - design.offset[js_t[srt]]) * s_col
        BP, S = models[k]
        C = phi.T @ BP
        G = phi.T @ (Bw[:, k : k + 1] * phi) - C @ S @ C.T
        q = phi.T @ R[:, k]
        added = np.zeros(js_t.size, dtype=bool)
        for _ in range(batch):
            s = np.diag(G).copy()
            theta = q * q - s
            good = (theta > 0.0) & (s > 0.0) & ~added & (theta * threshold_lambda > s * s)
            if not good.any():
                break
            g = np.full(js_t.size, -np.inf)
            g[good] = addition_gain(s[good], q[good])
            i = int(np.argmax(g))
            if g[i] <= tol:
                break
            alpha = s[i] * s[i] / theta[i]
            out.append((int(js_t[i]), k, float(alpha)))
            added[i] = True
            sigma = 1.0 / (alpha + s[i])
            gi = G[:, i].copy()
            G -= sigma * np.outer(gi, gi)
            q -= (sigma * q[i]) * gi
    return out


def apply_additions(design, state, candidates, additions, d0):
    """Put the proposed bases into the model (appending their columns to the design as needed),
    with zero weight and the proposed precision. Returns the number of (basis, class) pairs added."""
    f = 1 if design.intercept_column else 0
    new = sorted({j for j, _k, _a in additions if not np.any(design.active == j)})
    if new:
        js = np.asarray(new, dtype=np.intp)
        positions = design.insert_columns(js, candidates.raw(js))
        rows = positions + f
        for r in rows:  # positions are increasing: each insert shifts the later ones already
            state.coef = np.insert(state.coef, r, 0.0, axis=0)
            state.lam = np.insert(state.lam, r, 1.0, axis=0)
            state.mask = np.insert(state.mask, r, False, axis=0)
            state.curvature = np.insert(state.curvature, r, d0, axis=0)
            if state.sigma_diag is not None:
                state.sigma_diag = np.insert(state.sigma_diag, r, 0.0, axis=0)
    for j, k, a in additions:
        r = int(np.flatnonzero(design.active == j)[0]) + f
        state.mask[r, k] = True
        state.lam[r, k] = a
        state.coef[r, k] = 0.0
        state.pruned_lam.pop((int(j), int(k)), None)
        state.readmitted[int(j), int(k)] = state.readmitted.get((int(j), int(k)), 0) + 1
    state.sigma_full = None  # stale: the next exact step recomputes it
    return len(additions)
