"""Basis construction: the linear basis or an RVM-style kernel basis K(X, X_train).

Parameter names follow :class:`sklearn.kernel_ridge.KernelRidge` (``kernel``, ``gamma``, ``degree``,
``coef0``, ``kernel_params``), plus ``gamma="scale"`` as in :class:`sklearn.svm.SVC`.
``kernel=None`` is the linear model on the features themselves (ARDRegression's model); every
other value gives one basis function per training sample, as a relevance vector machine does.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.metrics.pairwise import PAIRWISE_KERNEL_FUNCTIONS, pairwise_kernels

KERNELS = tuple(sorted(set(PAIRWISE_KERNEL_FUNCTIONS) | {"precomputed"}))

# Kernels whose Gram matrix K(X, X) is symmetric by construction (its transpose is a free
# Fortran-ordered copy).
_SYMMETRIC = set(PAIRWISE_KERNEL_FUNCTIONS)


def resolve_gamma(gamma, X):
    """Numeric gamma for the kernel: "scale" is 1 / (n_features * X.var()) as in SVC."""
    if isinstance(gamma, str):  # "scale"
        if sp.issparse(X):
            Xd = X.multiply(X).mean() - (X.mean()) ** 2
            var = float(Xd)
        else:
            var = float(np.asarray(X, dtype=np.float64).var())
        return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
    return gamma


def kernel_params(est, gamma_):
    """Keyword arguments for ``pairwise_kernels`` from the estimator's parameters."""
    if callable(est.kernel):
        params = dict(est.kernel_params or {})
    else:
        params = {"gamma": gamma_, "degree": est.degree, "coef0": est.coef0}
        params.update(est.kernel_params or {})
        # gamma=None means the kernel's own default: do not pass it explicitly.
        params = {k: v for k, v in params.items() if v is not None}
    return params


def compute_kernel(est, X, Y, gamma_):
    """K(X, Y) with the estimator's kernel parameters (``filter_params`` drops unused ones)."""
    return pairwise_kernels(
        X,
        Y,
        metric=est.kernel,
        filter_params=not callable(est.kernel),
        **kernel_params(est, gamma_),
    )


def training_basis(est, X, gamma_):
    """Basis on the training data and whether the caller owns (may overwrite) it.

    Returns ``(B, own)``. For the linear basis B is X itself (not owned). For kernels, B is the
    n-by-n Gram matrix, returned Fortran-ordered without an extra copy where possible.
    """
    if est.kernel is None:
        return X, False
    if est.kernel == "precomputed":
        K = np.asarray(X.toarray() if sp.issparse(X) else X)
        if K.shape[0] != K.shape[1]:
            raise ValueError(
                "With kernel='precomputed', fit expects a square Gram matrix K(X_train, X_train); "
                f"got shape {K.shape}."
            )
        return K, False
    K = compute_kernel(est, X, None, gamma_)
    if sp.issparse(K):
        K = K.toarray()
    if not np.all(np.isfinite(K)):
        raise ValueError(
            "The kernel matrix contains NaN or infinity; check the kernel parameters "
            f"(kernel={est.kernel!r}, gamma={gamma_}, degree={est.degree}, coef0={est.coef0})."
        )
    if isinstance(est.kernel, str) and est.kernel in _SYMMETRIC and K.flags.c_contiguous:
        return K.T, True  # symmetric: the transpose is the same matrix, Fortran-ordered, no copy
    return np.asfortranarray(K), True


def prediction_basis(est, X, basis_vectors, relevance, gamma_):
    """Basis columns for new samples: X[:, active] (linear) or K(X, relevance vectors)."""
    if est.kernel is None:
        return X[:, relevance]
    if est.kernel == "precomputed":
        Xd = X.toarray() if sp.issparse(X) else X
        return np.asarray(Xd)[:, relevance]
    K = compute_kernel(est, X, basis_vectors, gamma_)
    return K.toarray() if sp.issparse(K) else K
