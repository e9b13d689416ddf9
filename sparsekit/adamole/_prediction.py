"""Encoding, batching and the prediction methods of :class:`~sparsekit.adamole.AdaMoLEClassifier`.

A mixin, like :mod:`._persistence`: it relies on the estimator's fitted state (``classes_``,
``pair_input_``, ``max_length_``, ``device_``, the model and tokenizer) and its head strategy.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from . import _data, _device, _loading, _trainer


class PredictionMixin:
    """``decision_function``, ``predict_proba``, ``predict_log_proba``, ``predict``, ``score``."""

    # ------------------------------------------------------------------ encoding and batches

    def _encode(self, texts, strategy=None):
        strategy = self._head_strategy() if strategy is None else strategy
        return strategy.encode(self._tokenizer, texts, self.pair_input_, self.max_length_)

    def _batch(self, encoded, idx, strategy=None):
        strategy = self._head_strategy() if strategy is None else strategy
        batch = _data.collate(
            encoded,
            idx,
            self._tokenizer.pad_token_id,
            left_pad=strategy.left_pad,
            pad_multiple=8 if self.device_.startswith("cuda") else 1,
        )
        return _data.to_device(batch, self.device_, self._supports)

    # ------------------------------------------------------------------ prediction

    def _predict_logits(self, encoded, strategy=None):
        """Class logits (float64 numpy) for encoded texts, in input order."""
        import torch

        strategy = self._head_strategy() if strategy is None else strategy
        model = self._model
        model.eval()
        lengths = np.array([len(ids) for ids in encoded.input_ids])
        order = np.argsort(-lengths, kind="stable")  # similar lengths together: less padding
        out = np.empty((len(lengths), len(self.classes_)), dtype=np.float64)
        with torch.inference_mode(), _device.autocast(self.device_, self.dtype_):
            for idx in _data.iter_batches(len(lengths), self.batch_size, order=order):
                batch = self._batch(encoded, idx, strategy)
                logits = strategy.class_logits(strategy.forward(model, batch, self._supports))
                out[idx] = logits.float().cpu().numpy()
        return out

    def _logits_for(self, X):
        check_is_fitted(self)
        self._ensure_model()
        texts, is_pair = _data.validate_texts(X)
        self._check_pair_input(is_pair)
        strategy = self._head_strategy()
        with _loading.quiet_transformers(self._verbosity()):
            encoded = self._encode(texts, strategy)
        return self._predict_logits(encoded, strategy)

    def decision_function(self, X):
        """Class logits.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts or text pairs, as in :meth:`fit`.

        Returns
        -------
        scores : ndarray of shape (n_samples,) for two classes, else (n_samples, n_classes)
            Logits in ``classes_`` order; for two classes the log-odds of ``classes_[1]``.
        """
        logits = self._logits_for(X)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits), columns in ``classes_`` order.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts or text pairs, as in :meth:`fit`.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Rows sum to one.
        """
        logits = self._logits_for(X)
        return np.exp(logits - _trainer.logsumexp(logits))

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts or text pairs, as in :meth:`fit`.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities in ``classes_`` order.
        """
        logits = self._logits_for(X)
        return logits - _trainer.logsumexp(logits)

    def predict(self, X):
        """Most probable class of each text.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts or text pairs, as in :meth:`fit`.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        logits = self._logits_for(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``X, y``; raises if ``y`` holds labels that were not seen in ``fit``.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts or text pairs, as in :meth:`fit`.
        y : array-like of shape (n_samples,)
            True labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        score : float
            Mean accuracy.
        """
        check_is_fitted(self)
        y_arr = np.asarray(y)
        unseen = np.setdiff1d(np.unique(y_arr), self.classes_)
        if len(unseen):
            raise ValueError(
                f"y contains labels {unseen.tolist()!r} that were not seen during fit "
                f"(classes_={self.classes_.tolist()!r}); the classifier can never predict them, so the "
                "accuracy would be misleading. Remove those samples or refit with them."
            )
        return super().score(X, y, sample_weight=sample_weight)
