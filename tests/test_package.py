"""Package-level contracts: the SBL part never needs torch, and the LLM part says how to get it."""

import subprocess
import sys

import pytest


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_sparsekit_does_not_import_torch():
    out = _run(
        "import sys, sparsekit; from sparsekit import DQNSBLRegressor, DQNSBLClassifier; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_sbl_works_without_torch_and_adamole_error_is_clear():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'peft'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
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
    assert "sparsekit[adamole]" in out.stdout


def test_public_names():
    import sparsekit

    assert set(sparsekit.__all__) >= {"DQNSBLRegressor", "DQNSBLClassifier", "AdaMoLEClassifier"}
    with pytest.raises(AttributeError):
        sparsekit.NoSuchThing  # noqa: B018
