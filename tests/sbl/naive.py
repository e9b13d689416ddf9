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
