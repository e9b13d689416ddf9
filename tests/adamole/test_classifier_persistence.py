"""AdaMoLEClassifier: pickling, save_pretrained/from_pretrained, Pipeline and GridSearchCV."""

import io
import json
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from numpy.testing import assert_allclose, assert_array_equal
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from sparsekit.adamole import AdaMoLEClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "num_experts": 4,
    "expert_rank": 2,
    "learning_rate": 1e-2,
    "warmup": 0,
    "batch_size": 16,
    "max_length": 32,
}


def _est(path, **kw):
    params = dict(FAST, base_model=path, num_epochs=3, random_state=0)
    params.update(kw)
    return AdaMoLEClassifier(**params)


@pytest.fixture(scope="module")
def fitted_bert_int(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    return _est(clf_bert_dir).fit(X, np.where(y == "pos", 10, -3))


@pytest.fixture(scope="module")
def fitted_llama_lm(clf_llama_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    return _est(clf_llama_dir, head="lm").fit(X[:48], y[:48])


def _lowercase(texts):
    return [t.lower() for t in texts]


def test_pickle_round_trip_identical_proba(fitted_bert_int, sentiment_data):
    _, _, Xt, _ = sentiment_data
    est = fitted_bert_int
    before = est.predict_proba(Xt)
    blob = pickle.dumps(est)
    # weights travel as safetensors bytes, never as torch pickles
    assert b"_rebuild_tensor" not in blob and b"torch.storage" not in blob
    loaded = pickle.loads(blob)
    assert loaded.__dict__.get("_model") is None  # rebuilt lazily on first use
    assert_array_equal(loaded.classes_, [-3, 10])
    assert_array_equal(loaded.predict_proba(Xt), before)
    assert_array_equal(loaded.predict(Xt), est.predict(Xt))
    assert loaded.history_ == est.history_
    # an unpickled estimator that was never used pickles again
    again = pickle.loads(pickle.dumps(pickle.loads(blob)))
    assert_array_equal(again.predict_proba(Xt), before)


def test_pickle_lm_head_and_joblib(fitted_llama_lm, sentiment_data, tmp_path):
    joblib = pytest.importorskip("joblib")
    _, _, Xt, _ = sentiment_data
    path = tmp_path / "est.joblib"
    joblib.dump(fitted_llama_lm, path)
    loaded = joblib.load(path)
    assert_array_equal(loaded.predict_proba(Xt), fitted_llama_lm.predict_proba(Xt))
    assert loaded.answer_token_ids_ == fitted_llama_lm.answer_token_ids_


def test_unfitted_estimator_pickles():
    est = AdaMoLEClassifier(base_model="x/y", num_experts=3)
    loaded = pickle.loads(pickle.dumps(est))
    assert loaded.get_params() == est.get_params()


def test_unpickle_on_machine_without_the_training_device(
    fitted_bert_int, sentiment_data, monkeypatch
):
    """A model fitted on a GPU loads on CPU, with a warning (skorch's rule)."""
    _, _, Xt, _ = sentiment_data
    before = fitted_bert_int.predict_proba(Xt)
    state = fitted_bert_int.__getstate__()
    state["device_"] = "cuda:0"  # as if it had been fitted on a GPU
    state["dtype_"] = "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = AdaMoLEClassifier.__new__(AdaMoLEClassifier)
    with pytest.warns(UserWarning, match="fitted on device 'cuda:0'.*loaded on 'cpu'"):
        loaded.__setstate__(state)
    assert loaded.device_ == "cpu" and loaded.dtype_ == "float32"
    assert_allclose(loaded.predict_proba(Xt), before, atol=1e-6)


def test_unpickled_estimator_continues_training(fitted_bert_int, sentiment_data):
    X, y, _, _ = sentiment_data
    loaded = pickle.loads(pickle.dumps(fitted_bert_int))
    loaded.set_params(warm_start=True, num_epochs=1)
    loaded.fit(X, np.where(y == "pos", 10, -3))
    assert loaded.n_iter_ == fitted_bert_int.n_iter_ + 1


def test_save_pretrained_round_trip(fitted_bert_int, sentiment_data, tmp_path):
    _, _, Xt, _ = sentiment_data
    est = fitted_bert_int
    est.save_pretrained(tmp_path / "saved")
    files = sorted(os.listdir(tmp_path / "saved" / "adapter"))
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "saved" / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert any("classifier" in k for k in keys)  # the trained head is saved with the adapters
    assert any("lora_A" in k for k in keys)
    meta = json.loads((tmp_path / "saved" / "sparsekit_adamole.json").read_text())
    assert meta["params"]["num_experts"] == 4 and meta["classes"]["values"] == [-3, 10]
    assert meta["fitted"]["base_model_"] == est.base_model_
    loaded = AdaMoLEClassifier.from_pretrained(tmp_path / "saved", device="cpu", verbose=0)
    assert loaded.get_params()["num_experts"] == 4 and loaded.device == "cpu"
    assert loaded.classes_.dtype == est.classes_.dtype
    assert_array_equal(loaded.predict_proba(Xt), est.predict_proba(Xt))
    assert loaded.history_ == json.loads(json.dumps(est.history_))
    assert loaded.n_iter_ == est.n_iter_ and loaded.head_ == "classifier"


def test_save_pretrained_lm_head_and_string_classes(fitted_llama_lm, sentiment_data, tmp_path):
    _, _, Xt, _ = sentiment_data
    fitted_llama_lm.save_pretrained(tmp_path / "lm")
    loaded = AdaMoLEClassifier.from_pretrained(str(tmp_path / "lm"))
    assert_array_equal(loaded.classes_, ["neg", "pos"])
    assert_array_equal(loaded.predict_proba(Xt), fitted_llama_lm.predict_proba(Xt))
    # a loaded estimator can be pickled and saved again
    loaded2 = pickle.loads(pickle.dumps(loaded))
    loaded2.save_pretrained(tmp_path / "lm2")
    assert os.path.isfile(tmp_path / "lm2" / "adapter" / "adapter_model.safetensors")


def test_from_pretrained_errors(tmp_path, fitted_bert_int):
    with pytest.raises(ValueError, match="not a saved AdaMoLEClassifier"):
        AdaMoLEClassifier.from_pretrained(tmp_path)
    fitted_bert_int.save_pretrained(tmp_path / "s")
    os.remove(tmp_path / "s" / "adapter" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="incomplete"):
        AdaMoLEClassifier.from_pretrained(tmp_path / "s")


def test_save_pretrained_float_labels(clf_bert_dir, sentiment_data, tmp_path):
    X, y, _, _ = sentiment_data
    est = _est(clf_bert_dir, num_epochs=1).fit(X[:16], np.where(y[:16] == "pos", 1.0, 2.0))
    est.save_pretrained(tmp_path / "floats")
    assert AdaMoLEClassifier.from_pretrained(tmp_path / "floats").classes_.tolist() == [1.0, 2.0]


def test_pipeline_and_grid_search_over_num_experts(clf_bert_dir, sentiment_data):
    X, y, Xt, _yt = sentiment_data
    pipe = Pipeline(
        [
            ("lower", FunctionTransformer(_lowercase)),
            ("clf", _est(clf_bert_dir, num_epochs=2)),
        ]
    )
    search = GridSearchCV(pipe, {"clf__num_experts": [1, 2]}, cv=2, n_jobs=1, error_score="raise")
    search.fit(X[:48], y[:48])
    assert search.best_params_["clf__num_experts"] in (1, 2)
    assert search.cv_results_["mean_test_score"].shape == (2,)
    best = search.best_estimator_.named_steps["clf"]
    assert best.num_experts == search.best_params_["clf__num_experts"]
    assert search.predict(Xt).shape == (len(Xt),)
    # the template estimator is untouched
    assert not hasattr(pipe.named_steps["clf"], "classes_")


@pytest.mark.slow
def test_grid_search_in_worker_processes(clf_bert_dir, sentiment_data):
    """n_jobs=2 sends clones to joblib workers and pickles the results back."""
    X, y, _, _ = sentiment_data
    search = GridSearchCV(
        _est(clf_bert_dir, num_epochs=1),
        {"expert_rank": [1, 2]},
        cv=2,
        n_jobs=2,
        error_score="raise",
    )
    search.fit(X[:32], y[:32])
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda device")
def test_gpu_pickle_round_trip(clf_bert_dir, sentiment_data):
    X, y, Xt, _ = sentiment_data
    est = _est(clf_bert_dir, device="cuda").fit(X, y)
    before = est.predict_proba(Xt)
    buf = io.BytesIO()
    pickle.dump(est, buf)
    loaded = pickle.loads(buf.getvalue())
    assert loaded.device_.startswith("cuda")
    assert_allclose(loaded.predict_proba(Xt), before, atol=1e-5)
