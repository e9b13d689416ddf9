"""AdaMoLEClassifier: scikit-learn API contract and the errors users hit (mostly without training)."""

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as ec
from sklearn.utils._param_validation import InvalidParameterError

from sparsekit.adamole import AdaMoLEClassifier
from sparsekit.adamole._data import validate_texts
from sparsekit.adamole._heads import answer_token_ids, make_template

DATA_FREE_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_valid_tag_types",
    "check_estimator_tags_renamed",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_data_free_sklearn_checks(check):
    est = AdaMoLEClassifier(base_model="some/model", num_experts=2, random_state=0)
    getattr(ec, check)(type(est).__name__, est)


def test_init_only_assigns_and_loads_nothing():
    est = AdaMoLEClassifier(base_model="/definitely/not/here", device="cuda:7", num_experts=3)
    assert est.base_model == "/definitely/not/here"
    assert est.device == "cuda:7"
    assert not [k for k in vars(est) if k.endswith("_")]


def test_clone_and_params_round_trip(recorder_cls):
    cb = recorder_cls()
    est = AdaMoLEClassifier(
        base_model="x/y",
        num_experts=3,
        expert_rank=2,
        target_modules=["query"],
        callbacks=[cb],
        label_words=["no", "yes"],
        random_state=5,
        warmup=10,
    )
    params = est.get_params()
    cloned = clone(est)
    assert cloned is not est
    for k, v in params.items():
        if k == "callbacks":
            assert len(cloned.callbacks) == 1 and cloned.callbacks[0] is not cb
        else:
            assert cloned.get_params()[k] == v
    est2 = AdaMoLEClassifier().set_params(**{k: v for k, v in params.items() if k != "callbacks"})
    for k, v in params.items():
        if k != "callbacks":
            assert est2.get_params()[k] == v


def test_tags_declare_string_input():
    tags = AdaMoLEClassifier().__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert tags.estimator_type == "classifier"


def test_not_fitted_errors(tmp_path):
    est = AdaMoLEClassifier(base_model="x/y")
    with pytest.raises(NotFittedError):
        est.predict(["a"])
    with pytest.raises(NotFittedError):
        est.predict_proba(["a"])
    with pytest.raises(NotFittedError):
        _ = est.model_
    with pytest.raises(NotFittedError):
        est.save_pretrained(tmp_path / "x")
    assert not hasattr(est, "model_")


@pytest.mark.parametrize(
    "params",
    [
        {"num_experts": 0},
        {"routing": "softmax"},
        {"head": "mlm"},
        {"learning_rate": 0.0},
        {"dtype": "int8"},
        {"warmup": 1.5},
        {"lora_dropout": 1.0},
        {"max_threshold": 0.0},
        {"validation_fraction": 1.0},
    ],
)
def test_invalid_parameters_raise_at_fit(params):
    est = AdaMoLEClassifier(base_model="x/y", **params)  # no error in __init__
    with pytest.raises(InvalidParameterError):
        est.fit(["good", "bad"], [1, 0])


# ---------------------------------------------------------------------- text validation


def test_validate_texts_accepts_lists_arrays_series_and_pairs():
    pd = pytest.importorskip("pandas")
    texts, pair = validate_texts(["a b", "c"])
    assert texts == ["a b", "c"] and not pair
    texts, pair = validate_texts(np.array(["a", "b"]))
    assert texts == ["a", "b"] and not pair
    texts, pair = validate_texts(pd.Series(["a", "b"]))
    assert texts == ["a", "b"] and not pair
    texts, pair = validate_texts([("p", "h"), ["p2", "h2"]])
    assert texts == [("p", "h"), ("p2", "h2")] and pair
    texts, pair = validate_texts(np.array([["p", "h"], ["p2", "h2"]], dtype=object))
    assert pair and texts[1] == ("p2", "h2")
    texts, pair = validate_texts(pd.DataFrame({"premise": ["p"], "hypothesis": ["h"]}))
    assert pair and texts == [("p", "h")]


@pytest.mark.parametrize(
    "X, exc, match",
    [
        (["good", None, "bad"], ValueError, r"missing values.*positions \[1\]"),
        (["good", float("nan")], ValueError, "missing values"),
        (["good", "", "bad"], ValueError, r"empty.*positions \[1\]"),
        (["good", "   "], ValueError, "empty"),
        (["good", 3], TypeError, "must contain strings.*position 1"),
        ("just one string", TypeError, "single string"),
        ([], ValueError, "empty"),
        ([("a", "b"), "c"], TypeError, "mixes single texts and text pairs"),
        (["c", ("a", "b")], TypeError, "mixes single texts and text pairs"),
        ([("a", None)], ValueError, "missing values"),
        ([("a", "")], ValueError, "empty"),
        (np.zeros((2, 3)), ValueError, "shape"),
    ],
)
def test_bad_texts_are_rejected_before_loading_anything(X, exc, match):
    est = AdaMoLEClassifier(base_model="/does/not/exist")
    n = 2 if not isinstance(X, (list, np.ndarray)) else max(len(X), 1)
    with pytest.raises(exc, match=match):
        est.fit(X, ["a", "b"][:n] * (n // 2 + 1) if n else [])


def test_label_problems():
    est = AdaMoLEClassifier(base_model="/does/not/exist")
    with pytest.raises(ValueError, match="2 or more distinct classes; got 1 class"):
        est.fit(["good", "nice"], ["pos", "pos"])
    with pytest.raises(ValueError, match="3 texts but y has 2 labels"):
        est.fit(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="1-dimensional"):
        est.fit(["a", "b"], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="missing labels"):
        est.fit(["a", "b", "c"], np.array(["x", None, "y"], dtype=object))
    with pytest.raises(ValueError, match="Unknown label type|continuous"):
        est.fit(["a", "b", "c"], [0.5, 1.5, 2.25])


# ---------------------------------------------------------------------- base model problems


def test_base_model_required():
    with pytest.raises(ValueError, match="base_model is required"):
        AdaMoLEClassifier().fit(["good", "bad"], [1, 0])


def test_base_model_local_path_missing(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="does not exist: no such local directory"):
        AdaMoLEClassifier(base_model=missing).fit(["good", "bad"], [1, 0])


def test_base_model_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a transformers model"):
        AdaMoLEClassifier(base_model=str(tmp_path / "empty")).fit(["good", "bad"], [1, 0])


def test_hub_id_offline_says_so(monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Hub is switched off.*Pass the path of a local model"):
        AdaMoLEClassifier(base_model="nobody-xyz/no-such-model").fit(["good", "bad"], [1, 0])


def test_cuda_requested_without_cuda(clf_bert_dir):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        AdaMoLEClassifier(base_model=clf_bert_dir, device="cuda").fit(["good", "bad"], [1, 0])


def test_tokenizer_without_pad_or_eos(clf_llama_no_eos_dir):
    est = AdaMoLEClassifier(base_model=clf_llama_no_eos_dir, head="classifier")
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        est.fit(["good", "bad"], [1, 0])


def test_label_words_need_lm_head(clf_bert_dir):
    est = AdaMoLEClassifier(base_model=clf_bert_dir, label_words=["no", "yes"])
    with pytest.raises(ValueError, match="label_words is only used by head='lm'"):
        est.fit(["good", "bad"], [1, 0])
    assert not [k for k in vars(est) if k.endswith("_")]  # nothing half-initialised is left


def test_unknown_target_modules(clf_bert_dir):
    est = AdaMoLEClassifier(base_model=clf_bert_dir, target_modules=["no_such_proj"])
    with pytest.raises(ValueError):
        est.fit(["good", "bad"], [1, 0])
    assert not hasattr(est, "classes_")


def test_answer_tokens_must_be_distinct_and_known(clf_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(clf_llama_dir)
    classes = np.array(["neg", "pos"])
    ids = answer_token_ids(tok, make_template(classes, None, False))
    assert tok.convert_ids_to_tokens(ids) == ["A", "B"]
    ids = answer_token_ids(
        tok, make_template(classes, {"neg": "negative", "pos": "positive"}, False)
    )
    assert tok.convert_ids_to_tokens(ids) == ["negative", "positive"]
    with pytest.raises(ValueError, match="start with the same token"):
        answer_token_ids(tok, make_template(classes, ["yes", "yes"], False))
    with pytest.raises(ValueError, match="unknown token"):
        answer_token_ids(tok, make_template(classes, ["zzzz", "yes"], False))
    with pytest.raises(ValueError, match="2 classes"):
        make_template(classes, ["yes"], False)
