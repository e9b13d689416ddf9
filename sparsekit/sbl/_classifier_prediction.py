"""Prediction methods of DQNSBLClassifier: the latent function's posterior mean and variance at
new points, MacKay's probit moderation, and the class probabilities built from them."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit, log_expit, log_softmax, softmax

from ..utils._threads import limit_threads
from ._dask_input import chunkwise, is_dask_array

_PI_OVER_8 = np.pi / 8.0


def _centred_softmax_variance(Psi, cov, K):
    """Variance of ``a_k(x) - mean_l a_l(x)`` under a full covariance of all classes' weights.

    ``Psi`` (n, m) basis rows, ``cov`` (K m, K m) class-major. Returns (n, K).
    """
    _n, m = Psi.shape
    C = cov.reshape(K, m, K, m)
    # V[i, k, l] = Psi_i' C[k, :, l, :] Psi_i
    V = np.einsum("ia,kalb,ib->ikl", Psi, C, Psi, optimize=True)
    row = V.mean(axis=2)
    total = V.mean(axis=(1, 2))
    diag = np.einsum("ikk->ik", V)
    return diag - 2.0 * row + total[:, None]


class ClassifierPredictionMixin:
    """decision_function / predict / predict_proba / predict_log_proba of a fitted classifier
    (reads ``_coef_rel``, ``_intercept``, ``_cov``, ``sigma_``, ``_intercept_var``,
    ``_likelihood``, ``classes_`` and ``moderated``)."""

    def _latent(self, X):
        """Posterior mean and variance of the latent function(s), each (n_samples, K)."""
        X = self._validate_predict_data(X)
        with limit_threads(self.n_jobs):
            Phi = self._basis(X)
            if sp.issparse(Phi):
                mean = np.asarray(Phi @ self._coef_rel) + self._intercept
            else:
                Phi = np.asarray(Phi, dtype=np.float64)
                mean = Phi @ self._coef_rel + self._intercept
            if not self.moderated:
                return mean, None
            K = mean.shape[1]
            softmax_model = self._likelihood == "softmax"
            if self._cov is not None:
                Pd = Phi.toarray() if sp.issparse(Phi) else Phi
                if self.fit_intercept:
                    Pd = np.hstack([np.ones((Pd.shape[0], 1)), Pd])
                if softmax_model:
                    var = _centred_softmax_variance(Pd, self._cov[0], K)
                else:
                    var = np.empty_like(mean)
                    for k in range(K):
                        var[:, k] = np.einsum("ij,ij->i", Pd @ self._cov[k], Pd)
            else:
                sig = self.sigma_.astype(np.float64).T  # (m, K)
                if sp.issparse(Phi):
                    var = np.asarray(Phi.multiply(Phi) @ sig)
                else:
                    var = (Phi * Phi) @ sig
                var = var + self._intercept_var
                if softmax_model:
                    # independent logits: var(a_k - mean(a)) = (1 - 2/K) v_k + sum(v) / K^2
                    var = (1.0 - 2.0 / K) * var + var.sum(axis=1, keepdims=True) / K**2
            if softmax_model:
                # The softmax depends on differences of logits only (a common shift of all
                # classes' weights is identified by the prior alone), so moderate the centred
                # logits with their own variances.
                mean = mean - mean.mean(axis=1, keepdims=True)
            return mean, np.maximum(var, 0.0)

    def _scores(self, X):
        mean, var = self._latent(X)
        if var is None:
            return mean
        return mean / np.sqrt(1.0 + _PI_OVER_8 * var)

    def decision_function(self, X):
        """Latent function values (moderated when ``moderated=True``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples; with ``kernel="precomputed"`` the kernel between them and the training
            samples, shape (n_samples, n_train).

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            Binary: the log-odds of ``classes_[1]`` (positive means ``classes_[1]``). Multiclass:
            one column per class, ranking like ``predict_proba``.
        """
        if is_dask_array(X):
            return chunkwise(self, "decision_function", X)
        S = self._scores(X)
        return S[:, 0] if self.classes_.shape[0] == 2 else S

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples (the kernel to the training samples for ``kernel="precomputed"``).

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels, of the type of the training labels.
        """
        if is_dask_array(X):
            return chunkwise(self, "predict", X)
        S = self._scores(X)
        if self.classes_.shape[0] == 2:
            return self.classes_[(S[:, 0] > 0).astype(np.intp)]
        return self.classes_[np.argmax(S, axis=1)]

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples (the kernel to the training samples for ``kernel="precomputed"``).

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities, columns in the order of ``classes_``.
        """
        if is_dask_array(X):
            return chunkwise(self, "predict_log_proba", X)
        S = self._scores(X)
        if self.classes_.shape[0] == 2:
            return np.column_stack([log_expit(-S[:, 0]), log_expit(S[:, 0])])
        if self._likelihood == "softmax":
            return log_softmax(S, axis=1)
        L = log_expit(S)
        return L - np.logaddexp.reduce(L, axis=1, keepdims=True)

    def predict_proba(self, X):
        """Class probabilities, with MacKay's probit moderation when ``moderated=True``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples (the kernel to the training samples for ``kernel="precomputed"``).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities, columns in the order of ``classes_``; rows sum to one. One-vs-rest
            probabilities are normalised over the classes.
        """
        if is_dask_array(X):
            return chunkwise(self, "predict_proba", X)
        S = self._scores(X)
        if self.classes_.shape[0] == 2:
            p = expit(S[:, 0])
            return np.column_stack([1.0 - p, p])
        if self._likelihood == "softmax":
            return softmax(S, axis=1)
        P = expit(S)
        return P / P.sum(axis=1, keepdims=True)
