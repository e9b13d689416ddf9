"""The distribution name and the install commands that messages print.

The import name is ``sparsekit``; the distribution on PyPI is ``sparsekit-learn`` (the name
``sparsekit`` belongs to an unrelated project). Every message that tells users what to install goes
through :func:`pip_install_hint`, so the two names cannot drift apart.
"""

from __future__ import annotations

import importlib.util

DISTRIBUTION = "sparsekit-learn"

#: The packages of the ``adamole`` extra that ``sparsekit.adamole`` cannot import without.
ADAMOLE_DEPENDENCIES = ("torch", "transformers", "peft")

#: The torch pin and where its CPU build comes from (a plain ``pip install torch`` on Linux pulls the
#: CUDA build from PyPI).
TORCH_CPU = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def pip_install_hint(extra: str | None = None) -> str:
    """Return the ``pip install`` command for the distribution, with an optional extra.

    Parameters
    ----------
    extra : str or None, default=None
        Name of an optional-dependency group (``"adamole"``, ``"demo"``, ...).

    Returns
    -------
    str
        A shell command, quoted so that the brackets survive zsh.

    Examples
    --------
    >>> from sparsekit.utils._install import pip_install_hint
    >>> pip_install_hint("adamole")
    'pip install "sparsekit-learn[adamole]"'
    >>> pip_install_hint()
    'pip install sparsekit-learn'
    """
    if extra is None:
        return f"pip install {DISTRIBUTION}"
    return f'pip install "{DISTRIBUTION}[{extra}]"'


def missing_adamole_dependencies() -> list[str]:
    """Return the packages of :data:`ADAMOLE_DEPENDENCIES` that cannot be found.

    ``importlib.util.find_spec`` locates a package without importing it, so this never imports
    torch.

    Returns
    -------
    list of str
        Names of the missing packages, empty when the ``adamole`` extra is installed.
    """
    missing = []
    for name in ADAMOLE_DEPENDENCIES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing
