"""Shared machinery of the DQN-SBL estimators: parameters, input validation, basis bookkeeping."""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ._dask_input import is_dask_array, validate_dask_training_data
from ._features import KERNELS, prediction_basis, resolve_gamma


class BaseDQNSBL(BaseEstimator):
    """Base class: parameter constraints shared by the regressor and the classifier, validation of
    the training data and sample weights, and the mapping from the fitted basis to predictions.

    Subclasses implement ``fit`` and the likelihood-specific solver.
    """

    _parameter_constraints: ClassVar[dict] = {
        "kernel": [None, StrOptions(set(KERNELS)), callable],
        "gamma": [StrOptions({"scale"}), Interval(Real, 0, None, closed="neither"), None],
        "degree": [Interval(Real, 0, None, closed="left")],
        "coef0": [Interval(Real, None, None, closed="neither")],
        "kernel_params": [dict, None],
        "solver": [StrOptions({"dqn", "exact"})],
        "update": [StrOptions({"mackay", "em"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "inner_max_iter": [Interval(Integral, 1, None, closed="left")],
        "exact_switch": [Interval(Integral, 0, None, closed="left")],
        "threshold_lambda": [Interval(Real, 0, None, closed="neither")],
        "compute_score": ["boolean"],
        "warm_start": ["boolean"],
        "n_jobs": [
            Interval(Integral, None, -1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "verbose": ["verbose"],
    }

    # ------------------------------------------------------------------ validation
    def _validate_training_data(self, X, y, sample_weight, *, y_numeric):
        """Validate X, y and sample weights; returns (X, y, sample_weight as float64). Dask X
        (with y and the weights) stays chunked (``_dask_input``)."""
        if is_dask_array(X):
            return validate_dask_training_data(self, X, y, sample_weight, y_numeric=y_numeric)
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            y_numeric=y_numeric,
            ensure_min_samples=2,
        )
        # Rejects negative weights and all-zero weights with a clear message.
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if self.kernel == "precomputed" and X.shape[0] != X.shape[1]:
            raise ValueError(
                "With kernel='precomputed', X must be the square Gram matrix K(X_train, X_train); "
                f"got shape {X.shape}."
            )
        return X, y, sw

    def _validate_predict_data(self, X):
        check_is_fitted(self)
        return validate_data(
            self, X, reset=False, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32]
        )

    def _resolve_gamma(self, X, sample_weight=None):
        if self.kernel is None or self.kernel == "precomputed" or callable(self.kernel):
            return self.gamma if not isinstance(self.gamma, str) else None
        return resolve_gamma(self.gamma, X, sample_weight)

    # ------------------------------------------------------------------ basis bookkeeping
    def _store_basis(self, X, design):
        """Record which training columns/samples are relevant after a fit on ``design``."""
        self.relevance_ = design.active.copy()
        if self.kernel is None or self.kernel == "precomputed":
            self.relevance_vectors_ = None  # the basis is the features, or K is given
        else:
            rv = X[self.relevance_]
            self.relevance_vectors_ = rv.toarray() if sp.issparse(rv) else np.asarray(rv)
        self._basis_offset = design.offset[design.active].copy()

    def _basis(self, X):
        """Basis columns of new samples over the relevant set (n_samples, n_relevant)."""
        if self.relevance_.size == 0:
            return np.zeros((X.shape[0], 0))
        return prediction_basis(
            self, X, self.relevance_vectors_, self.relevance_, getattr(self, "_gamma", None)
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.pairwise = self.kernel == "precomputed"
        return tags
