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

from ..utils._threads import map_blocks, parallel, row_runs
from ._kernels import flush_tiny

KERNELS = tuple(sorted(set(PAIRWISE_KERNEL_FUNCTIONS) | {"precomputed"}))

# Kernels whose Gram matrix K(X, X) is symmetric by construction (its transpose is a free
# Fortran-ordered copy).
_SYMMETRIC = set(PAIRWISE_KERNEL_FUNCTIONS)


def resolve_gamma(gamma, X, sample_weight=None):
    """Numeric gamma for the kernel: "scale" is 1 / (n_features * X.var()) as in SVC, with the
    variance weighted by the sample weights (so a weight of k acts as k copies of a row)."""
    if isinstance(gamma, str):  # "scale"
        n = X.shape[0]
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        w = w / (w.sum() * X.shape[1])
        if sp.issparse(X):
            Xc = sp.csr_matrix(X)
            mean = float(w @ np.asarray(Xc.sum(axis=1)).ravel())
            var = float(w @ np.asarray(Xc.multiply(Xc).sum(axis=1)).ravel()) - mean**2
        else:
            Xd = np.asarray(X, dtype=np.float64)
            mean = float(w @ Xd.sum(axis=1))
            var = float(w @ ((Xd - mean) ** 2).sum(axis=1))
        return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
    return gamma


def distinct_rows(X, sample_weight):
    """Indices of the first occurrence of each distinct row of X among the rows with positive
    weight, in increasing order."""
    pos = np.flatnonzero(np.asarray(sample_weight) > 0)
    if sp.issparse(X):
        Xc = sp.csr_matrix(X[pos], copy=True)
        Xc.sum_duplicates()
        Xc.eliminate_zeros()
        Xc.sort_indices()
        seen = {}
        for r in range(Xc.shape[0]):
            a, b = Xc.indptr[r], Xc.indptr[r + 1]
            seen.setdefault((Xc.indices[a:b].tobytes(), Xc.data[a:b].tobytes()), r)
        first = np.fromiter(seen.values(), dtype=np.intp, count=len(seen))
    else:
        # One row at a time, keyed by a hash of its bytes (memory O(n), not a copy of X); rows
        # with equal hashes are compared in full. + 0.0 turns -0.0 into 0.0.
        A = np.asarray(X)
        buckets = {}
        first = []
        for r, i in enumerate(pos):
            row = A[i] + 0.0
            same = buckets.setdefault(hash(row.tobytes()), [])
            if not any(np.array_equal(row, A[pos[q]] + 0.0) for q in same):
                same.append(r)
                first.append(r)
        first = np.asarray(first, dtype=np.intp)
    return pos[np.sort(first)]


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
    """K(X, Y) with the estimator's kernel parameters (``filter_params`` drops unused ones),
    entries below ``FLUSH64`` in magnitude set to 0 (:func:`._kernels.flush_tiny`: no product of
    two entries is then a subnormal number, which CPUs handle many times slower)."""
    return flush_tiny(
        pairwise_kernels(
            X,
            Y,
            metric=est.kernel,
            filter_params=not callable(est.kernel),
            **kernel_params(est, gamma_),
        )
    )


def kernel_block(est, X, Y, gamma_):
    """Dense K(X, Y) (``Y=None``: K(X, X)), checked for NaN and infinity."""
    n_cols = X.shape[0] if Y is None else Y.shape[0]
    work = X.shape[0] * n_cols * X.shape[1]
    starts, size = row_runs(X.shape[0])
    dense = isinstance(X, np.ndarray) and (Y is None or isinstance(Y, np.ndarray))
    if callable(est.kernel) or not dense or len(starts) == 1:
        with parallel(work):
            K = compute_kernel(est, X, Y, gamma_)
    else:
        # runs of rows on the fit's threads, one BLAS thread each: the same bits with any
        # n_jobs (OpenBLAS's threaded GEMM rounds differently on two threads than on one)
        Yr = X if Y is None else Y
        K = None
        parts = map_blocks(lambda a: compute_kernel(est, X[a : a + size], Yr, gamma_), starts, work)
        for a, part in zip(starts, parts):
            if K is None:
                K = np.empty((X.shape[0], n_cols), dtype=part.dtype)
            K[a : a + size] = part
    if sp.issparse(K):
        K = K.toarray()
    if not np.all(np.isfinite(K)):
        raise ValueError(
            "The kernel matrix contains NaN or infinity; check the kernel parameters "
            f"(kernel={est.kernel!r}, gamma={gamma_}, degree={est.degree}, coef0={est.coef0})."
        )
    return K


def training_basis(est, X, gamma_, sample_weight):
    """Basis on the training data, whether the caller owns (may overwrite) it, and which basis
    functions its columns are.

    Returns ``(B, own, column_index)``. For the linear basis B is X itself (not owned) and
    ``column_index`` is None. For kernels there is one basis function per training sample, but
    only the distinct samples with positive weight get a column: B is ``K(X, X[idx])``,
    Fortran-ordered, and ``column_index = (idx, n_samples)`` (None when every sample gets one).
    Then k copies of a sample give the same basis as one copy of weight k, and a sample of
    weight zero is as good as absent.
    """
    if est.kernel is None:
        return X, False, None
    n = X.shape[0]
    if est.kernel == "precomputed":
        K = np.asarray(X.toarray() if sp.issparse(X) else X)
        if K.shape[0] != K.shape[1]:
            raise ValueError(
                "With kernel='precomputed', fit expects a square Gram matrix K(X_train, X_train); "
                f"got shape {K.shape}."
            )
        idx = distinct_rows(K, sample_weight)
        if idx.shape[0] == n:
            return K, False, None
        return np.asfortranarray(K[:, idx]), True, (idx, n)
    idx = distinct_rows(X, sample_weight)
    full = idx.shape[0] == n
    K = kernel_block(est, X, None if full else X[idx], gamma_)
    column_index = None if full else (idx, n)
    if full and isinstance(est.kernel, str) and est.kernel in _SYMMETRIC and K.flags.c_contiguous:
        return K.T, True, None  # symmetric: the transpose is the same matrix, Fortran-ordered
    return np.asfortranarray(K), True, column_index


def prediction_basis(est, X, basis_vectors, relevance, gamma_):
    """Basis columns for new samples: X[:, active] (linear) or K(X, relevance vectors)."""
    if est.kernel is None:
        return X[:, relevance]
    if est.kernel == "precomputed":
        Xd = X.toarray() if sp.issparse(X) else X
        return np.asarray(Xd)[:, relevance]
    K = compute_kernel(est, X, basis_vectors, gamma_)
    return K.toarray() if sp.issparse(K) else K
