"""Persistence of :class:`AdaMoLEClassifier`: pickling and ``save_pretrained``/``from_pretrained``.

Private module. Pickles hold the adapter weights as safetensors bytes (``_adapter_files``), never
torch pickles; the model is rebuilt from ``base_model_`` plus those bytes on first use
(:meth:`PersistenceMixin._ensure_model`), on the CPU if the saved device is missing here
(skorch's rule). ``save_pretrained`` writes a standard peft adapter directory plus a JSON file
with the parameters and the fitted attributes.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from numbers import Integral

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from . import _device, _loading

__all__ = ["PersistenceMixin"]

_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
_META_FILE = "sparsekit_adamole.json"
_FORMAT_VERSION = 1
# fitted attributes written by save_pretrained and restored by from_pretrained (all JSON-friendly)
_SAVED_ATTRS = (
    "base_model_",
    "head_",
    "pair_input_",
    "answer_token_ids_",
    "max_length_",
    "target_modules_",
    "max_threshold_",
    "n_trainable_params_",
    "n_iter_",
    "n_steps_",
    "warmup_steps_",
    "history_",
    "expert_usage_",
    "best_epoch_",
)
# runtime objects that are never pickled
_RUNTIME = ("_model", "_tokenizer", "_optim_state", "_supports")


class PersistenceMixin:
    """Pickling and ``save_pretrained``/``from_pretrained`` for :class:`AdaMoLEClassifier`."""

    def _adapter_files_from_model(self):
        with tempfile.TemporaryDirectory() as tmp:
            with _loading.quiet_transformers(self._verbosity()):
                self._model.save_pretrained(tmp, safe_serialization=True)
            files = {}
            for name in _ADAPTER_FILES:
                with open(os.path.join(tmp, name), "rb") as fh:
                    files[name] = fh.read()
        return files

    def _ensure_model(self):
        """Rebuild the model from ``base_model_`` and the saved adapter bytes if needed."""
        if self.__dict__.get("_model") is not None:
            return
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )
        from ._model import load_adamole_model

        files = self._adapter_files
        with _loading.quiet_transformers(self._verbosity()):
            tokenizer = _loading.load_tokenizer(self.base_model_)
            with _device.local_torch_rng(0, self.device_):
                backbone = _loading.load_backbone(
                    self.base_model_,
                    head=self.head_,
                    n_classes=len(self.classes_),
                    torch_dtype=_device.torch_dtype(self.dtype_),
                    pad_token_id=tokenizer.pad_token_id,
                )
                with tempfile.TemporaryDirectory() as tmp:
                    for name, blob in files.items():
                        with open(os.path.join(tmp, name), "wb") as fh:
                            fh.write(blob)
                    with _loading.quiet_peft():
                        model = load_adamole_model(backbone, tmp, is_trainable=True)
        self._tokenizer = tokenizer
        self._install_model(model)
        self._optim_state = None
        self._adapter_files = None

    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.get("_model")
        for key in _RUNTIME:
            state.pop(key, None)
        if model is not None:
            state["_adapter_files"] = self._adapter_files_from_model()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for key in ("_model", "_tokenizer", "_optim_state"):
            self.__dict__.setdefault(key, None)
        if "device_" in state:
            self._relocate()

    def _relocate(self):
        """Map a saved device to one that exists here (skorch's rule: fall back, warn)."""
        old = self.device_
        if _device.device_available(old):
            return
        new = _device.resolve_device(None)
        _device.device_warning(old, new)
        self.device_ = new
        if self.dtype == "auto":
            self.dtype_ = _device.resolve_dtype("auto", new)
        elif self.dtype_ != "float32" and new == "cpu":
            self.dtype_ = "float32"

    def save_pretrained(self, directory):
        """Save the fitted estimator to ``directory``.

        Writes ``adapter/adapter_model.safetensors`` and ``adapter/adapter_config.json`` (a
        standard peft adapter, including the classification head when ``head_="classifier"``)
        and ``sparsekit_adamole.json`` (parameters, ``classes_``, the base-model reference,
        training history). The base model itself is not copied: it is re-read from
        ``base_model_``.

        Parameters
        ----------
        directory : str or path-like
            Where to write; created if missing.
        """
        check_is_fitted(self)
        directory = os.fspath(directory)
        os.makedirs(os.path.join(directory, "adapter"), exist_ok=True)
        files = (
            self._adapter_files_from_model()
            if self.__dict__.get("_model") is not None
            else self._adapter_files
        )
        for name, blob in files.items():
            with open(os.path.join(directory, "adapter", name), "wb") as fh:
                fh.write(blob)
        meta = {
            "format": "sparsekit.adamole.AdaMoLEClassifier",
            "format_version": _FORMAT_VERSION,
            "params": _jsonable_params(self),
            "classes": _classes_to_json(self.classes_),
            "fitted": {k: getattr(self, k) for k in _SAVED_ATTRS if k in self.__dict__},
            "device_": self.device_,
            "dtype_": self.dtype_,
        }
        try:
            from .. import __version__ as version
        except ImportError:  # pragma: no cover
            version = None
        meta["sparsekit_version"] = version
        with open(os.path.join(directory, _META_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, default=_json_default)

    @classmethod
    def from_pretrained(cls, directory, **params):
        """Load an estimator written by :meth:`save_pretrained`.

        Parameters
        ----------
        directory : str or path-like
            A directory written by :meth:`save_pretrained`.
        **params
            Parameters to override, e.g. ``device="cpu"`` or ``base_model=<new location of the
            base model>``.

        Returns
        -------
        estimator : AdaMoLEClassifier
            Fitted; the model is loaded on first use.
        """
        directory = os.fspath(directory)
        meta = _read_meta(directory)
        init_params = dict(meta["params"])
        init_params.update(params)
        est = cls(**init_params)
        est._validate_params()
        for k, v in meta["fitted"].items():
            setattr(est, k, v)
        est.classes_ = _classes_from_json(meta["classes"])
        if "base_model" in params:
            est.base_model_ = _loading.resolve_base_model(params["base_model"])
        est.device_ = _device.resolve_device(est.device)
        est.dtype_ = _device.resolve_dtype(est.dtype, est.device_)
        files = {}
        for name in _ADAPTER_FILES:
            path = os.path.join(directory, "adapter", name)
            if not os.path.isfile(path):
                raise ValueError(f"{directory!r} is incomplete: adapter/{name} is missing.")
            with open(path, "rb") as fh:
                files[name] = fh.read()
        est._adapter_files = files
        est._model = None
        est._tokenizer = None
        est._optim_state = None
        return est


def _read_meta(directory):
    meta_path = os.path.join(directory, _META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(
            f"{directory!r} is not a saved AdaMoLEClassifier: {_META_FILE} is missing. Save with "
            "est.save_pretrained(directory)."
        )
    with open(meta_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("format_version", 0) > _FORMAT_VERSION:
        raise ValueError(
            f"{directory!r} was saved by a newer sparsekit (format {meta['format_version']}); "
            "upgrade sparsekit to load it."
        )
    return meta


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _jsonable_params(est):
    params = est.get_params(deep=False)
    if params.get("callbacks"):
        warnings.warn(
            "callbacks are not saved by save_pretrained; pass them again to from_pretrained(..., "
            "callbacks=[...]) if you continue training.",
            UserWarning,
            stacklevel=3,
        )
        params["callbacks"] = None
    if not (params.get("random_state") is None or isinstance(params["random_state"], Integral)):
        params["random_state"] = None
    if params.get("base_model") is not None:
        params["base_model"] = os.fspath(params["base_model"])
    if isinstance(params.get("label_words"), dict):
        params["label_words"] = [params["label_words"][c] for c in est.classes_]
    if isinstance(params.get("target_modules"), tuple):
        params["target_modules"] = list(params["target_modules"])
    return params


def _classes_to_json(classes):
    values = classes.tolist()
    try:
        json.dumps(values)
    except TypeError:
        raise ValueError(
            "save_pretrained needs JSON-compatible class labels (str, int, float or bool); got "
            f"{type(values[0]).__name__}. Pickle the estimator instead."
        ) from None
    return {"values": values, "dtype": classes.dtype.str}


def _classes_from_json(d):
    dtype = np.dtype(d["dtype"])
    if dtype.kind == "O":
        out = np.empty(len(d["values"]), dtype=object)
        out[:] = d["values"]
        return out
    return np.asarray(d["values"], dtype=dtype)
