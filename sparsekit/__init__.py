"""sparsekit: scikit-learn estimators for sparse Bayesian learning and adaptive LoRA experts.

- :class:`~sparsekit.DQNSBLRegressor` and :class:`~sparsekit.DQNSBLClassifier`: sparse Bayesian
  learning (relevance vector machines) solved with a diagonal quasi-Newton method.
- :class:`~sparsekit.AdaMoLEClassifier`: fine-tune a Hugging Face language model with an adaptive
  mixture of LoRA experts. Needs the ``adamole`` extra (torch, transformers, peft); it is imported
  lazily, so ``import sparsekit`` never imports torch, and ``from sparsekit import *`` leaves it out
  when those packages are missing.

The distribution is called ``sparsekit-learn`` on PyPI; the import name is ``sparsekit``.
"""

from ._version import __version__
from .exceptions import EmptyModelWarning, EvidenceWarning
from .sbl import DQNSBLClassifier, DQNSBLRegressor
from .utils._install import missing_adamole_dependencies as _missing_adamole_dependencies

_LAZY = {"AdaMoLEClassifier": "sparsekit.adamole"}


# `from sparsekit import *` resolves every name in __all__: list the torch-based estimator only
# where its dependencies are installed, so the SBL-only install can star-import.
__all__ = [
    "DQNSBLClassifier",
    "DQNSBLRegressor",
    "EmptyModelWarning",
    "EvidenceWarning",
    "__version__",
]
if not _missing_adamole_dependencies():
    __all__ += ["AdaMoLEClassifier"]


def __getattr__(name):
    # PEP 562: the torch-based estimator is imported on first use only.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
