"""Readable numpy references for the numba kernels of sparsekit.sbl (one per kernel).

Named like the kernel without a leading underscore or an ``_inplace`` suffix
(``tests/sbl/test_kernel_registry.py`` checks that every kernel has one).
"""

import numpy as np


def weighted_column_moments(Phi, sw):
    mean = (sw[:, None] * Phi).sum(0) / sw.sum()
    ssd = (sw[:, None] * (Phi - mean) ** 2).sum(0)
    return mean, ssd


def center_scale(Phi, offset, inv_scale):
    return (Phi - offset) * inv_scale


def weighted_sq_column_norms(Phi, b):
    return (Phi * Phi).T @ b


def reestimate_lambda(mu, sigma_diag, lam, mode, lambda_1, lambda_2, gamma_floor, lambda_floor):
    gamma = np.clip(1.0 - lam * sigma_diag, gamma_floor, 1.0)
    with np.errstate(divide="ignore"):
        if mode == 0:
            new = (gamma + 2 * lambda_1) / (mu**2 + 2 * lambda_2)
        else:
            new = (1 + 2 * lambda_1) / (mu**2 + sigma_diag + 2 * lambda_2)
    return np.maximum(new, lambda_floor), gamma


def compact_columns(Phi, keep):
    return Phi[:, keep]


def dbfgs_update(d, s, y, d_min, d_max, eps):
    sy, ss = s @ y, s @ s
    sds = s @ (d * s)
    if sy <= eps * ss or sds <= 0:
        return d.copy(), False
    new = d - (d * s) ** 2 / sds + y**2 / sy
    return np.clip(new, d_min, d_max), True


def psb_update(d, s, y, d_min, d_max, eps):
    sy, ss = s @ y, s @ s
    s4 = np.sum(s**4)
    if sy <= eps * ss or s4 <= 0:
        return d.copy(), False
    new = d + ((sy - np.sum(d * s**2)) / s4) * s**2
    return np.clip(new, d_min, d_max), True


def weighted_column_sums(Phi, sw):
    """sum_i sw_i Phi_ij per column (float64)."""
    return sw @ np.asarray(Phi, dtype=np.float64)


def weighted_deviation_squares(Phi, sw, mean):
    """sum_i sw_i (Phi_ij - mean_j)^2 per column (float64)."""
    dev = np.asarray(Phi, dtype=np.float64) - mean
    return sw @ (dev * dev)


def fast_ml_scores(S, Q, model, lam, in_model, threshold_lambda, s_floor=0.0):
    """Tipping & Faul's action scores with numpy array expressions."""

    def basis_gain(a, s, q):
        return 0.5 * (np.log(a) - np.log(a + s) + q * q / (a + s))

    s, q = S.copy(), Q.copy()
    den = np.maximum(lam - S[model], np.finfo(np.float64).eps * lam)
    s[model] = lam * S[model] / den
    q[model] = lam * Q[model] / den
    theta = q * q - s
    over = theta * threshold_lambda <= s * s
    theta[over] = 0.0
    gain = np.full(S.shape[0], -np.inf)
    good = ~in_model & (theta > 0) & (s > 0) & ~(s < s_floor)
    gain[good] = 0.5 * ((q[good] ** 2 - s[good]) / s[good] + np.log(s[good] / q[good] ** 2))
    s_in, q_in, th_in = s[model], q[model], theta[model]
    keep = th_in > 0
    lam_new = np.where(keep, s_in**2 / np.where(keep, th_in, 1.0), np.inf)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g_old = basis_gain(lam, s_in, q_in)
        g_in = np.where(keep, basis_gain(lam_new, s_in, q_in) - g_old, -g_old)
    g_in = np.where(np.isnan(g_in), -np.inf, g_in)
    g_in = np.where(over[model] & (q_in * q_in > s_in), np.inf, g_in)
    lost = ~(s_in > 0)  # s rounded to <= 0: no action, the precision kept
    gain[model] = np.where(lost, -np.inf, g_in)
    lam_new = np.where(lost, lam, lam_new)
    return gain, lam_new, s, theta


def block_column_stats(raw, sw, Bw, R, moments=True):
    raw = np.asarray(raw, dtype=np.float64)
    mean, ssd = weighted_column_moments(raw, sw)
    amax = np.abs(raw).max(0)
    if not moments:
        amax, mean, ssd = (np.zeros(raw.shape[1]) for _ in range(3))
    return amax, mean, ssd, (raw * raw).T @ Bw, raw.T @ R


def column_products(rawT, Bw, R):
    raw = np.asarray(rawT, dtype=np.float64).T
    return (raw * raw).T @ Bw, raw.T @ R


def column_products_rows(rawT, BwT, RT, sq, qr, lo, hi):
    """Rows ``lo:hi`` of :func:`column_products` written into ``sq`` and ``qr``."""
    raw = np.asarray(rawT[lo:hi], dtype=np.float64).T
    sq[lo:hi] = (raw * raw).T @ BwT.T
    qr[lo:hi] = raw.T @ RT.T


def float32_rows(A, out, row_lo, row_hi, lo, hi):
    """Rows ``lo:hi`` of ``A`` rounded into ``out``, with each row's range (NaNs skipped)."""
    for i in range(lo, hi):
        out[i], row_lo[i], row_hi[i] = float32_copy_range(A[i])


def flush_rows(A, tau, lo, hi):
    """Rows ``lo:hi`` of ``A``: entries below ``tau`` in magnitude set to 0, in place."""
    block = A[lo:hi]
    block[np.abs(block) < tau] = 0.0


def rbf_exponent(G, xx, yy, neg_gamma):
    return np.maximum(-2.0 * G + xx[:, None] + yy[None, :], 0.0) * neg_gamma


def float32_copy_range(A):
    """``A`` rounded to float32 with entries below 2^-63 in magnitude set to 0, and the range of
    ``A`` (NaNs skipped)."""
    A = np.asarray(A, dtype=np.float64)
    lo = np.nanmin(A) if A.size and not np.isnan(A).all() else np.inf
    hi = np.nanmax(A) if A.size and not np.isnan(A).all() else -np.inf
    return np.where(np.abs(A) < 2.0**-63, 0.0, A).astype(np.float32), lo, hi


def _csc_dense(indptr, indices, data, n_rows):
    """The dense matrix of a CSC triple, column by column."""
    B = np.zeros((n_rows, len(indptr) - 1))
    for j in range(B.shape[1]):
        for t in range(indptr[j], indptr[j + 1]):
            B[indices[t], j] += data[t]
    return B


def csc_matmat(indptr, indices, data, V, n_rows, parts):
    return _csc_dense(indptr, indices, data, n_rows) @ V


def csc_rmatmat(indptr, indices, data, U):
    return _csc_dense(indptr, indices, data, U.shape[0]).T @ U


def csc_column_moments(indptr, indices, data, sw, weight_sum):
    """The bincount formulation: per stored entry, then ``mean^2`` per implicit zero."""
    m = len(indptr) - 1
    cols = np.repeat(np.arange(m), np.diff(indptr))
    w_nz = sw[indices]
    mean = np.bincount(cols, w_nz * data, minlength=m) / weight_sum
    dev = data - mean[cols]
    ssd = np.bincount(cols, w_nz * dev * dev, minlength=m)
    w_on_nz = np.bincount(cols, w_nz, minlength=m)
    ssd += mean**2 * np.maximum(weight_sum - w_on_nz, 0.0)
    return mean, ssd
