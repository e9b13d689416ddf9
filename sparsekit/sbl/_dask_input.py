"""Dask input of the linear DQN-SBL estimators (issue 12): detection, validation of row-chunked
X, y and sample weights, the classifier's chunk-wise class encoding, and chunk-wise prediction.

Only O(K) summaries (classes, class counts, validity checks) reach the driver; per-sample arrays
stay chunked like X's rows. The design matrix over the chunks is in :mod:`._dask_design`.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import scipy.sparse as sp


def is_dask_array(X):
    """Whether X is a dask array (without importing dask when it is not loaded)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(X, da.Array)


def _da():
    import dask.array as da

    return da


# ---------------------------------------------------------------------------------- validation
def _row_chunked(est, X):
    """X as a 2-d float dask array with one column chunk and known row chunks."""
    name = type(est).__name__
    if X.ndim != 2:
        raise ValueError(f"{name} expects a 2-d dask array X; got {X.ndim} dimension(s).")
    if any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            f"{name}: the row chunk sizes of X are unknown; call X.compute_chunk_sizes() (or "
            "build X with known chunks) before fitting."
        )
    sparse = sp.issparse(X._meta)
    if len(X.chunks[1]) > 1:
        if sparse:
            raise ValueError(
                f"{name} needs X chunked by rows only (one chunk across the columns); got "
                f"{len(X.chunks[1])} column chunks of scipy.sparse blocks. Rechunk before "
                "converting the blocks to sparse, e.g. X.rechunk({1: -1}).map_blocks(...)."
            )
        X = X.rechunk({1: -1})
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X, sparse


def _vector(est, v, what, rows, n):
    """A per-sample vector (dask or array-like) as a float64 dask array chunked like X's rows."""
    da = _da()
    name = type(est).__name__
    if not is_dask_array(v):
        v = np.asarray(v)
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.ndim != 1:
            raise ValueError(f"{name}: {what} must have shape ({n},); got {v.shape}.")
        if v.shape[0] != n:
            raise ValueError(
                f"{name}: X has {n} samples but {what} has {v.shape[0]}; they must match."
            )
        return da.from_array(v, chunks=(rows,))
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"{name}: {what} must be 1-d; got {v.ndim} dimensions.")
    if any(math.isnan(c) for c in v.chunks[0]):
        raise ValueError(
            f"{name}: the chunk sizes of {what} are unknown; call .compute_chunk_sizes() first."
        )
    if v.shape[0] != n:
        raise ValueError(f"{name}: X has {n} samples but {what} has {v.shape[0]}; they must match.")
    return v.rechunk((rows,)) if v.chunks[0] != rows else v


def validate_dask_training_data(est, X, y, sample_weight, *, y_numeric):
    """The dask counterpart of ``BaseDQNSBL._validate_training_data``: returns ``(X, y, sw)`` as
    dask arrays with the same row chunks (y float64 when ``y_numeric``, sw float64, both
    persisted), after the checks the in-memory path makes (finite y, non-negative weights with a
    positive sum, at least two samples). X's finiteness is checked by the design's first pass."""
    name = type(est).__name__
    if est.kernel is not None:
        raise ValueError(
            f"{name}(kernel={est.kernel!r}) cannot fit dask arrays: a kernel basis has one "
            "column per training sample, and the n-by-n kernel matrix is what does not fit in "
            "memory. Use kernel=None (the linear basis; for a non-linear model, chunk-wise "
            "features such as sklearn.kernel_approximation.Nystroem or RBFSampler applied with "
            "X.map_blocks), or fit a kernel model on X.compute() or a subsample."
        )
    X, _ = _row_chunked(est, X)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples; got {n}.")
    rows = X.chunks[0]
    y = _vector(est, y, "y", rows, n)
    if y_numeric:
        if y.dtype.kind not in "fiub":
            raise ValueError(f"{name}: y must be numeric for regression; got dtype {y.dtype}.")
        y = y.astype(np.float64)
    if sample_weight is None:
        sw = _da().ones(n, chunks=(rows,), dtype=np.float64)
    else:
        sw = _vector(est, sample_weight, "sample_weight", rows, n).astype(np.float64)
    import dask

    checks = [sw.min(), sw.sum(), _da().isfinite(sw).all()]
    if y_numeric:
        checks.append(_da().isfinite(y).all())
    y, sw = dask.persist(y, sw)
    res = dask.compute(*checks)
    if not res[2]:
        raise ValueError(f"{name}: sample_weight contains NaN or infinity.")
    if res[0] < 0:
        raise ValueError(f"{name}: negative values in sample_weight are invalid.")
    if not res[1] > 0:
        raise ValueError(
            f"{name}: sample_weight sums to zero; at least one sample needs a positive weight."
        )
    if y_numeric and not res[3]:
        raise ValueError(f"{name}: y contains NaN or infinity.")
    est.n_features_in_ = X.shape[1]
    if hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    return X, y, sw


def dask_classification_targets(est, X, y, sample_weight):
    """Class encoding for dask input: returns ``(X, sw, classes, T, counts)`` with T the
    per-sample targets as the in-memory path builds them (one column for two classes, one-hot
    otherwise), chunked like X, and ``counts`` the number of samples with positive (sample times
    class) weight per class. Only the classes and their counts reach the driver."""
    da = _da()
    import dask

    X, y, sw = validate_dask_training_data(est, X, y, sample_weight, y_numeric=False)
    name = type(est).__name__
    if y.dtype.kind == "f" and not bool(da.isfinite(y).all().compute()):
        raise ValueError(f"{name}: y contains NaN or infinity.")
    if y.dtype.kind not in "iubfUSO":
        raise ValueError(f"{name}: unsupported label dtype {y.dtype}.")
    classes = np.unique(
        np.concatenate(dask.compute(*[dask.delayed(np.unique)(b) for b in _blocks(y)]))
    )
    if y.dtype.kind == "f" and np.any(classes != np.round(classes)):
        raise ValueError(
            f"Unknown label type: {name} expects discrete class labels; y holds continuous values."
        )
    if classes.shape[0] < 2:
        raise ValueError(
            f"{name} requires 2 or more distinct classes; got {classes.shape[0]} class "
            f"({classes[0]!r})."
        )
    y_enc = y.map_blocks(_encode, classes, dtype=np.intp)
    K = classes.shape[0]
    if est.class_weight is not None:
        n_per_class = da.bincount(y_enc, minlength=K).compute()
        if est.class_weight == "balanced":
            cw = y.shape[0] / (K * np.maximum(n_per_class, 1).astype(np.float64))
        else:
            cw = np.array([float(est.class_weight.get(c, 1.0)) for c in classes])
        sw = (sw * y_enc.map_blocks(_take, cw, dtype=np.float64)).persist()
    counts = da.bincount(y_enc, weights=(sw > 0).astype(np.float64), minlength=K).compute()
    counts = counts.astype(np.intp)
    if np.count_nonzero(counts) < 2:
        raise ValueError(
            f"{name} requires 2 or more distinct classes with a positive sample (or class) "
            f"weight; got 1 class ({classes[np.flatnonzero(counts)[0]]!r})."
        )
    if K == 2:
        T = y_enc.map_blocks(_binary_target, dtype=np.float64, new_axis=1, chunks=(y.chunks[0], 1))
    else:
        T = y_enc.map_blocks(_one_hot, K, dtype=np.float64, new_axis=1, chunks=(y.chunks[0], K))
    return X, sw, classes, T.persist(), counts


def _blocks(a):
    return list(a.to_delayed().ravel())


def _encode(b, classes):
    return np.searchsorted(classes, b).astype(np.intp)


def _take(b, values):
    return values[b]


def _binary_target(b):
    return (b == 1).astype(np.float64)[:, None]


def _one_hot(b, K):
    T = np.zeros((b.shape[0], K))
    T[np.arange(b.shape[0]), b] = 1.0
    return T


# ---------------------------------------------------------------------------------- prediction
def chunkwise(est, method, X, **kwargs):
    """``est.<method>`` applied to every row chunk of the dask array X (dask in, dask out).

    The fitted estimator (numpy attributes only) travels to the workers with the task; a method
    returning a tuple (``predict(return_std=True)``) gives a tuple of dask arrays."""
    name = type(est).__name__
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    X, _ = _row_chunked(est, X)
    if X.shape[1] != est.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {name} is expecting {est.n_features_in_} "
            "features as input."
        )
    # The output's dtype and trailing shape, from a one-row probe on the driver.
    probe = getattr(est, method)(np.zeros((1, X.shape[1]), dtype=X.dtype), **kwargs)
    outs = probe if isinstance(probe, tuple) else (probe,)
    arrays = []
    for i, p in enumerate(outs):
        fn = functools.partial(_predict_block, est, method, kwargs, i if len(outs) > 1 else None)
        if p.ndim == 1:
            arrays.append(X.map_blocks(fn, dtype=p.dtype, drop_axis=1, meta=np.empty(0, p.dtype)))
        else:
            arrays.append(
                X.map_blocks(fn, dtype=p.dtype, chunks=(X.chunks[0], (p.shape[1],)), meta=p[:0])
            )
    return tuple(arrays) if isinstance(probe, tuple) else arrays[0]


def _predict_block(est, method, kwargs, index, block):
    out = getattr(est, method)(block, **kwargs)
    return out if index is None else out[index]
