"""AdaMoLE: adaptive mixture of LoRA experts, plugged into peft, and a scikit-learn text classifier.

Needs the ``adamole`` extra, with torch installed first in the build you want::

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # CPU build
    pip install "sparsekit-learn[adamole]"

Names are resolved lazily (PEP 562), so importing this package costs nothing until a name is used.
"""

import importlib

from ..utils._install import TORCH_CPU, missing_adamole_dependencies, pip_install_hint

_MISSING = missing_adamole_dependencies()
if _MISSING:
    raise ImportError(
        f"sparsekit.adamole needs {', '.join(_MISSING)}, which is not installed. Install torch "
        f"first, pinned, in the build you want (CPU: `{TORCH_CPU}`; CUDA on Linux: "
        f"`pip install torch==2.13.0`), then the 'adamole' extra: `{pip_install_hint('adamole')}`."
    )

_LAZY = {
    # layer, configuration, routing and peft integration
    "AdaMoLEConfig": "sparsekit.adamole._config",
    "AdaMoLELinear": "sparsekit.adamole._layer",
    "get_adamole_model": "sparsekit.adamole._model",
    "load_adamole_model": "sparsekit.adamole._model",
    "collect_aux_loss": "sparsekit.adamole._routing",
    "AuxLoss": "sparsekit.adamole._routing",
    "routing_statistics": "sparsekit.adamole._routing",
    "default_target_modules": "sparsekit.adamole._model",
    # scikit-learn estimator
    "AdaMoLEClassifier": "sparsekit.adamole._classifier",
}

__all__ = [  # the names of _LAZY (tests/test_package.py checks they match)
    "AdaMoLEClassifier",
    "AdaMoLEConfig",
    "AdaMoLELinear",
    "AuxLoss",
    "collect_aux_loss",
    "default_target_modules",
    "get_adamole_model",
    "load_adamole_model",
    "routing_statistics",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsekit.adamole' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
