"""Numba kernels for the O(M) and single-pass O(nM) parts of DQN-SBL.

All kernels are module-level pure functions, compiled lazily (no signatures), so numba specialises
them for float32/float64 and read-only arrays. Dense design matrices are Fortran-ordered: a column
is contiguous, so the column loops below stream memory and compaction is a sequence of memmoves.
Each kernel has a plain numpy reference in ``tests/sbl/naive.py``.

Editing another module does not invalidate numba's on-disk cache of this one; after changing a
kernel's dependencies, delete ``sparsekit/sbl/__pycache__``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..utils._numba import jit
from ..utils._threads import ROW_PARTS, map_blocks

MACKAY = 0
EM = 1
_EPS = float(np.finfo(np.float64).eps)
# Entries below this in magnitude become 0 when rounded to float32 (float32_rows_into): products
# of two kept entries are then at least 2^-126, float32's smallest normal number, so no float32
# product meets a subnormal number, which x86 CPUs handle far slower (a one-thread sgemm of
# 256 x 1024 x 200: 1.4 ms; 67 ms with a third of one input subnormal; 200 ms with products
# subnormal). Narrow RBF kernels have them: exp(-gamma d^2) is below 2^-126 once gamma d^2 > 87
# (gamma 0.4, make_classification(2 x 2,000, 20 features), 300 iterations: 40.1 s before, 11.8 s
# after, the same fit; benchmarks/bench_subnormal.py --case float32).
FLUSH32 = 2.0**-63
# The same for the float64 kernel columns of a fit (flush_tiny, from ._features.compute_kernel
# and the subset path's scan kernel): entries below 2^-511 in magnitude become 0, so products of
# two kept entries are normal float64 numbers. RBF entries get that small once gamma d^2 > 354
# (make_classification(2 x 1,000, 20 features), gamma 3 and 10: 14.1 and 12.5 s against 4.6 s at
# gamma 1, the BLAS products of the re-admission and the exact step slowed by subnormal numbers;
# flushed, 4.1 and 4.0 s and the same fits; benchmarks/bench_subnormal.py --case float64).
FLUSH64 = 2.0**-511


@jit(parallel=True)
def weighted_column_moments(Phi, sw):
    """Weighted mean and weighted sum of squared deviations of each column of ``Phi``.

    Two passes per column (mean, then deviations) for numerical stability.
    ``sw`` are non-negative sample weights (all ones for an unweighted fit).
    """
    n, m = Phi.shape
    mean = np.empty(m, dtype=np.float64)
    ssd = np.empty(m, dtype=np.float64)
    wsum = 0.0
    for i in range(n):
        wsum += sw[i]
    for j in prange(m):
        acc = 0.0
        for i in range(n):
            acc += sw[i] * Phi[i, j]
        mu = acc / wsum
        acc2 = 0.0
        for i in range(n):
            dev = Phi[i, j] - mu
            acc2 += sw[i] * dev * dev
        mean[j] = mu
        ssd[j] = acc2
    return mean, ssd


@jit(parallel=True)
def center_scale_inplace(Phi, offset, inv_scale):
    """``Phi[:, j] = (Phi[:, j] - offset[j]) * inv_scale[j]`` in place, without a temporary."""
    n, m = Phi.shape
    for j in prange(m):
        o = offset[j]
        s = inv_scale[j]
        for i in range(n):
            Phi[i, j] = (Phi[i, j] - o) * s


@jit(parallel=True)
def weighted_sq_column_norms(Phi, b):
    """Curvature diagonal of the data term: ``(Phi * Phi).T @ b`` in one pass, no n-by-m temporary."""
    n, m = Phi.shape
    out = np.empty(m, dtype=np.float64)
    for j in prange(m):
        acc = 0.0
        for i in range(n):
            v = Phi[i, j]
            acc += b[i] * v * v
        out[j] = acc
    return out


@jit
def reestimate_lambda(mu, sigma_diag, lam, mode, lambda_1, lambda_2, gamma_floor, lambda_floor):
    """Re-estimate the weight precisions ``lam`` from the posterior mean and covariance diagonal.

    Returns ``(lam_new, gamma)`` with ``gamma_i = 1 - lam_i * Sigma_ii`` clipped to
    ``[gamma_floor, 1]``. ``mode`` is MACKAY (Tipping 2001 eq. 16, with Gamma hyperpriors eq. 44:
    ``(gamma + 2 l1) / (mu^2 + 2 l2)``) or EM (eq. 48: ``(1 + 2 l1) / (mu^2 + Sigma_ii + 2 l2)``).
    A weight at exactly zero with no hyperprior gets an infinite precision (it will be pruned);
    no precision falls below ``lambda_floor``.
    """
    m = mu.shape[0]
    lam_new = np.empty(m, dtype=np.float64)
    gamma = np.empty(m, dtype=np.float64)
    for j in range(m):
        g = 1.0 - lam[j] * sigma_diag[j]
        if g < gamma_floor:
            g = gamma_floor
        elif g > 1.0:
            g = 1.0
        gamma[j] = g
        mu2 = mu[j] * mu[j]
        if mode == MACKAY:
            num = g + 2.0 * lambda_1
            den = mu2 + 2.0 * lambda_2
        else:
            num = 1.0 + 2.0 * lambda_1
            den = mu2 + sigma_diag[j] + 2.0 * lambda_2
        if den <= 0.0:
            a = np.inf
        else:
            a = num / den
        a = max(a, lambda_floor)
        lam_new[j] = a
    return lam_new, gamma


@jit
def compact_columns_inplace(Phi, keep):
    """Move the columns listed in ``keep`` (strictly increasing) to the front of ``Phi``, in order.

    After the call ``Phi[:, :len(keep)]`` holds the kept columns; the rest is garbage. Only one
    n-by-m buffer ever exists, whatever the number of pruning rounds.
    """
    n = Phi.shape[0]
    for k in range(keep.shape[0]):
        src = keep[k]
        if src != k:
            for i in range(n):
                Phi[i, k] = Phi[i, src]


@jit
def dbfgs_update(d, s, y, d_min, d_max, eps):
    """Diagonal of a BFGS update of ``diag(d)`` with the pair (s, y), clipped to [d_min, d_max].

    ``d <- d - (d*s)^2 / (s'(d*s)) + y^2 / (s'y)``; skipped unless ``s'y > eps * s's``.
    Returns True when the update was applied.
    """
    m = d.shape[0]
    sy = 0.0
    ss = 0.0
    sds = 0.0
    for j in range(m):
        sy += s[j] * y[j]
        ss += s[j] * s[j]
        sds += d[j] * s[j] * s[j]
    if sy <= eps * ss or sds <= 0.0:
        return False
    for j in range(m):
        ds = d[j] * s[j]
        v = d[j] - ds * ds / sds + y[j] * y[j] / sy
        if v < d_min:
            v = d_min
        elif v > d_max:
            v = d_max
        d[j] = v
    return True


@jit
def psb_update(d, s, y, d_min, d_max, eps):
    """Weak-secant least-change diagonal update (Zhu, Nazareth & Wolkowicz 1999), clipped.

    ``d <- d + ((s'y - sum d s^2) / sum s^4) * s^2``; skipped unless ``s'y > eps * s's``.
    """
    m = d.shape[0]
    sy = 0.0
    ss = 0.0
    sds = 0.0
    s4 = 0.0
    for j in range(m):
        s2 = s[j] * s[j]
        sy += s[j] * y[j]
        ss += s2
        sds += d[j] * s2
        s4 += s2 * s2
    if sy <= eps * ss or s4 <= 0.0:
        return False
    c = (sy - sds) / s4
    for j in range(m):
        v = d[j] + c * s[j] * s[j]
        if v < d_min:
            v = d_min
        elif v > d_max:
            v = d_max
        d[j] = v
    return True


@jit
def fast_ml_scores(S, Q, model, lam, in_model, threshold_lambda, s_floor):
    """Score every action of Tipping & Faul's fast marginal likelihood (:mod:`._constructive`).

    ``S``, ``Q`` are the sparsity and quality factors of all M candidates with the model's
    contributions included; ``model`` the candidate indices of the m model bases, ``lam`` their
    precisions, ``in_model`` the M-long membership mask. Returns ``(gain, lam_new, s, theta)``:
    the log-evidence gain of each candidate's best action (adding it at its optimal precision;
    for a model basis re-estimating it, or deleting it when ``lam_new`` is inf; +inf for a model
    basis whose precision would pass ``threshold_lambda`` although ``q^2 > s``, -inf for no
    action), the re-estimated precision of each model basis, the factors ``s`` with the model's
    own contribution removed and ``theta = q^2 - s`` (zero where the precision would pass the
    threshold). A factor ``s`` that rounding left at or below zero scores no action (-inf) and
    keeps its precision, and a candidate whose ``s`` is below ``s_floor`` is not added (in the
    model's span to within rounding: :data:`._constructive.S_FLOOR`). One pass over the
    candidates instead of two dozen array expressions.
    """
    M = S.shape[0]
    m = model.shape[0]
    eps = _EPS
    s = np.empty(M, dtype=np.float64)
    q = np.empty(M, dtype=np.float64)
    for i in range(M):
        s[i] = S[i]
        q[i] = Q[i]
    for k in range(m):
        j = model[k]
        den = max(lam[k] - S[j], eps * lam[k])  # lam^2 Sigma_jj > 0; kept so under rounding
        s[j] = lam[k] * S[j] / den
        q[j] = lam[k] * Q[j] / den
    theta = np.empty(M, dtype=np.float64)
    gain = np.empty(M, dtype=np.float64)
    for i in range(M):
        th = q[i] * q[i] - s[i]
        if th * threshold_lambda <= s[i] * s[i]:
            th = 0.0
        theta[i] = th
        if in_model[i] or not th > 0.0 or not s[i] > 0.0 or s[i] < s_floor:
            gain[i] = -np.inf
        else:
            r = q[i] * q[i]
            gain[i] = 0.5 * ((r - s[i]) / s[i] + np.log(s[i] / r))
    lam_new = np.empty(m, dtype=np.float64)
    for k in range(m):
        j = model[k]
        a, sj, qj = lam[k], s[j], q[j]
        if not sj > 0.0:
            # s lost to rounding (a precision of ~1e-16 over a column the model explains: S_j
            # is lam - lam^2 Sigma_jj): no action, no division by zero
            lam_new[k] = a
            gain[j] = -np.inf
            continue
        g_old = 0.5 * (np.log(a) - np.log(a + sj) + qj * qj / (a + sj))
        if theta[j] > 0.0:
            b = sj * sj / theta[j]
            lam_new[k] = b
            g = 0.5 * (np.log(b) - np.log(b + sj) + qj * qj / (b + sj)) - g_old
        else:
            lam_new[k] = np.inf
            g = -g_old
        if qj * qj > sj and theta[j] == 0.0:
            g = np.inf  # past the threshold: pruned first, whatever the evidence says
        elif np.isnan(g):
            g = -np.inf
        gain[j] = g
    return gain, lam_new, s, theta


@jit
def block_column_stats(raw, sw, Bw, R, moments=True):
    """One row-major (C-ordered, n-by-b) block of candidate columns read twice, rows outer and
    columns inner: per column its largest magnitude ``amax``, the weighted ``mean`` and sum of
    squared deviations ``ssd`` exactly as :func:`weighted_column_moments` computes them (same
    order of summation), and per class ``k`` the products ``sq[j, k] = sum_i Bw[i, k] raw[i, j]^2``
    and ``qr[j, k] = sum_i R[i, k] raw[i, j]`` (``Bw`` and ``R`` of shape (n, K); K may be 0).
    No n-by-b temporary. With ``moments=False`` only the products are computed (one pass;
    ``amax``, ``mean`` and ``ssd`` are returned as zeros).

    One thread: the inner loops run along a row and vectorise across columns (at n = 10,000,
    b = 256, K = 1: 3.4 ms, against 39 ms for a ``prange`` over groups of 32 columns, whose
    inner loops did not vectorise)."""
    n, b = raw.shape
    K = Bw.shape[1]
    amax = np.zeros(b, dtype=np.float64)
    mean = np.zeros(b, dtype=np.float64)
    ssd = np.zeros(b, dtype=np.float64)
    sq = np.zeros((K, b), dtype=np.float64)
    qr = np.zeros((K, b), dtype=np.float64)
    wsum = 0.0
    for i in range(n):
        wsum += sw[i]
    for i in range(n):
        row = raw[i]
        if moments:
            w = sw[i]
            for j in range(b):
                v = row[j]
                amax[j] = max(amax[j], abs(v))
                mean[j] += w * v
        for k in range(K):
            bk = Bw[i, k]
            rk = R[i, k]
            sqk = sq[k]
            qrk = qr[k]
            for j in range(b):
                v = row[j]
                sqk[j] += bk * v * v
                qrk[j] += rk * v
    if moments:
        for j in range(b):
            mean[j] = mean[j] / wsum
        for i in range(n):
            w = sw[i]
            row = raw[i]
            for j in range(b):
                dev = row[j] - mean[j]
                ssd[j] += w * dev * dev
    return amax, mean, ssd, sq.T.copy(), qr.T.copy()


def _rows_on_pool(kernel, n_rows, work, *args):
    """``kernel(*args, lo, hi)`` over ROW_PARTS runs of the ``n_rows`` rows, each run a task of
    the fit's thread pool (:func:`..utils._threads.map_blocks`; ``work`` in multiply-adds). For
    kernels whose rows do not depend on each other: the result does not depend on the split."""
    step = max(1, -(-n_rows // ROW_PARTS))
    for _ in map_blocks(
        lambda a: kernel(*args, a, min(n_rows, a + step)), range(0, n_rows, step), work
    ):
        pass


@jit(nogil=True)
def _column_products_rows(rawT, BwT, RT, sq, qr, lo, hi):
    K = BwT.shape[0]
    n = rawT.shape[1]
    for j in range(lo, hi):
        for k in range(K):
            acc = 0.0
            acc2 = 0.0
            for i in range(n):
                v = rawT[j, i]
                acc += BwT[k, i] * v * v
                acc2 += RT[k, i] * v
            sq[j, k] = acc
            qr[j, k] = acc2


def column_products(rawT, Bw, R):
    """Per class ``k`` the products ``sq[j, k] = sum_i Bw[i, k] raw[i, j]^2`` and ``qr[j, k] =
    sum_i R[i, k] raw[i, j]`` of the columns of a column-major block, given as its transpose
    ``rawT`` (b-by-n, C-ordered: a column is contiguous): one pass, no ``raw * raw`` temporary.
    Runs of columns are tasks of the fit's thread pool (:func:`..utils._threads.map_blocks`:
    inside a fit, numba's OpenMP workers spin for milliseconds after a ``prange`` and took a
    core from the pool's next products; each column's sums are the same on any thread)."""
    b = rawT.shape[0]
    K = Bw.shape[1]
    BwT = np.ascontiguousarray(Bw.T)
    RT = np.ascontiguousarray(R.T)
    sq = np.zeros((b, K), dtype=np.float64)
    qr = np.zeros((b, K), dtype=np.float64)
    _rows_on_pool(_column_products_rows, b, 2 * rawT.size * K, rawT, BwT, RT, sq, qr)
    return sq, qr


@jit(nogil=True)
def rbf_exponent_inplace(G, xx, yy, neg_gamma):
    """``G[i, j] = max(-2 G[i, j] + xx[i] + yy[j], 0) * neg_gamma`` in place, in that order of
    operations: scikit-learn's ``rbf_kernel`` arithmetic on the Gram block ``G = X @ Y.T`` with
    the squared row norms ``xx`` of X and ``yy`` of Y (four numpy passes there, one here); the
    kernel is ``exp`` of the result. Releases the GIL (the scans call it on runs of rows in
    worker threads)."""
    n, b = G.shape
    for i in range(n):
        row = G[i]
        xi = xx[i]
        for j in range(b):
            d = -2.0 * row[j] + xi
            d = d + yy[j]
            row[j] = max(d, 0.0) * neg_gamma


@jit(nogil=True)
def _float32_rows(A, out, row_lo, row_hi, lo, hi):
    b = A.shape[1]
    for i in range(lo, hi):
        row = A[i]
        orow = out[i]
        rlo = np.inf
        rhi = -np.inf
        for j in range(b):
            v = row[j]
            orow[j] = 0.0 if abs(v) < FLUSH32 else v  # NaN: kept
            rlo = min(rlo, v)
            rhi = max(rhi, v)
        row_lo[i] = rlo
        row_hi[i] = rhi


@jit(nogil=True)
def _flush_rows(A, tau, lo, hi):
    for i in range(lo, hi):
        row = A[i]
        for j in range(A.shape[1]):
            if abs(row[j]) < tau:
                row[j] = 0.0


def flush_tiny(K):
    """``K`` with its entries below ``FLUSH64`` in magnitude set to 0: a dense float64 array,
    in place when it is C- or F-contiguous and writeable (one pass on the calling thread: the
    kernel blocks are computed in runs of rows on the fit's threads already), else a flushed
    copy (use the return value); any other ``K`` is returned as it is."""
    if not isinstance(K, np.ndarray) or K.dtype != np.float64 or K.ndim != 2:
        return K
    A = K if K.flags.c_contiguous else K.T if K.flags.f_contiguous else None
    if A is None or not A.flags.writeable:
        K = np.where(np.abs(K) < FLUSH64, 0.0, K)
    elif A.size:
        _flush_rows(A, FLUSH64, 0, A.shape[0])
    return K


def float32_rows_into(A, out, row_lo, row_hi):
    """Round the rows of ``A`` (2-D, C-ordered, float64) into ``out`` (float32, the same shape),
    entries below ``FLUSH32`` in magnitude to 0, and store each row's smallest and largest entry
    (before that; NaNs are skipped; a row of NaNs gives ``+inf, -inf``) in ``row_lo``,
    ``row_hi``. Runs of rows are tasks of the fit's thread pool
    (as in :func:`column_products`; a pass of two memory accesses per entry counted as two
    multiply-adds)."""
    _rows_on_pool(_float32_rows, A.shape[0], 2 * A.size, A, out, row_lo, row_hi)


def float32_copy_range(A):
    """``A`` (2-D, C-ordered, float64) rounded to float32 in one pass, with the smallest and
    largest of its entries (NaNs are skipped): the input of a float32 product whose error bound
    (:func:`._readmission._score`) needs the entries' signs and range. Rows in parallel
    (:func:`float32_rows_into`)."""
    n, b = A.shape
    out = np.empty((n, b), dtype=np.float32)
    row_lo = np.empty(n)
    row_hi = np.empty(n)
    float32_rows_into(A, out, row_lo, row_hi)
    return out, float(row_lo.min(initial=np.inf)), float(row_hi.max(initial=-np.inf))


# ---------------------------------------------------------------------- sparse (CSC) products
# The linear basis of a sparse X is a CSC matrix (a column is a basis function). scipy's products
# run on one thread; these run over ``prange``, and their sums are formed in an order that does
# not depend on the thread count, so a fit gives the same model with any ``n_jobs``. Indices are
# read as unsigned integers: numba then skips its negative-index wraparound test in the inner
# loops (with it, one thread was 1.4-2x slower than scipy on IMDB's 6.1M entries; without, the
# same speed).


@jit(parallel=True)
def csc_rmatmat(indptr, indices, data, U):
    """``B.T @ U`` for a CSC matrix ``B`` (``indptr``, ``indices``, ``data``) with n rows and
    ``U`` (n, k): one column's sums per iteration, in the stored order (scipy's ``csr_matvecs``
    of the transpose adds in the same order, so the result is scipy's to the last bit)."""
    m = indptr.size - 1
    k = U.shape[1]
    out = np.empty((m, k), dtype=np.float64)
    for j in prange(m):
        a = np.uint64(indptr[j])
        b = np.uint64(indptr[j + 1])
        for c in range(k):
            acc = 0.0
            for t in range(a, b):
                acc += data[t] * U[np.uint64(indices[t]), c]
            out[j, c] = acc
    return out


@jit(parallel=True)
def csc_matmat(indptr, indices, data, V, n_rows, parts):
    """``B @ V`` for a CSC matrix ``B`` with ``n_rows`` rows and ``V`` (m, k): the columns are
    cut into ``parts`` runs of about equal numbers of entries, each run scatters into its own
    (n_rows, k) buffer (in parallel), and the buffers are added in run order. The result depends
    on ``parts`` (the caller's choice from the matrix, not from the thread count); with one part
    it is scipy's ``csc_matvecs`` to the last bit."""
    m = indptr.size - 1
    k = V.shape[1]
    nnz = indptr[m]
    cut = np.empty(parts + 1, dtype=np.int64)
    for p in range(parts + 1):
        cut[p] = np.searchsorted(indptr, (nnz * p) // parts)
    cut[0] = 0
    cut[parts] = m
    buf = np.zeros((parts, n_rows, k), dtype=np.float64)
    kk = np.uint64(k)
    for p in prange(parts):
        acc = buf[p].reshape(n_rows * k)  # flat: the row-major (i, c) entry at i k + c
        for j in range(cut[p], cut[p + 1]):
            a = np.uint64(indptr[j])
            b = np.uint64(indptr[j + 1])
            for c in range(k):
                vjc = V[j, c]
                cc = np.uint64(c)
                for t in range(a, b):
                    acc[np.uint64(indices[t]) * kk + cc] += data[t] * vjc
    if parts == 1:
        return buf[0]
    out = np.empty((n_rows, k), dtype=np.float64)
    for i in prange(n_rows):
        for c in range(k):
            v = buf[0, i, c]
            for p in range(1, parts):
                v += buf[p, i, c]
            out[i, c] = v
    return out


@jit(parallel=True)
def csc_column_moments(indptr, indices, data, sw, weight_sum):
    """Weighted column means and sums of squared deviations of a CSC matrix without
    cancellation: deviations are formed on the stored entries, and each implicit zero adds
    ``mean^2`` times its weight. Columns in parallel; each column's sums in stored order (the
    numpy ``bincount`` formulation this replaces gives the same bits)."""
    m = indptr.size - 1
    mean = np.empty(m, dtype=np.float64)
    ssd = np.empty(m, dtype=np.float64)
    for j in prange(m):
        a = np.uint64(indptr[j])
        b = np.uint64(indptr[j + 1])
        s = 0.0
        w_on = 0.0
        for t in range(a, b):
            w = sw[np.uint64(indices[t])]
            s += w * data[t]
            w_on += w
        mu = s / weight_sum
        acc = 0.0
        for t in range(a, b):
            dev = data[t] - mu
            acc += sw[np.uint64(indices[t])] * dev * dev
        mean[j] = mu
        ssd[j] = acc + mu * mu * max(weight_sum - w_on, 0.0)
    return mean, ssd
