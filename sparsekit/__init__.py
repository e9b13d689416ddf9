"""sparsekit: scikit-learn estimators for sparse Bayesian learning and adaptive LoRA experts.

- :class:`~sparsekit.sbl.DQNSBLRegressor` and :class:`~sparsekit.sbl.DQNSBLClassifier`: sparse
  Bayesian learning (relevance vector machines) solved with a diagonal quasi-Newton method.
- :class:`~sparsekit.adamole.AdaMoLEClassifier`: fine-tune a Hugging Face language model with an
  adaptive mixture of LoRA experts. Needs the ``adamole`` extra (torch, transformers, peft); it is
  imported lazily, so ``import sparsekit`` never imports torch.
"""

from ._version import __version__
from .sbl import DQNSBLClassifier, DQNSBLRegressor

__all__ = ["DQNSBLRegressor", "DQNSBLClassifier", "AdaMoLEClassifier", "__version__"]

_LAZY = {"AdaMoLEClassifier": "sparsekit.adamole"}


def __getattr__(name):
    # PEP 562: the torch-based estimator is imported on first use only.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
