"""AdaMoLEClassifier: training behaviour on tiny offline models (BERT-like and Llama-like)."""

import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from numpy.testing import assert_allclose, assert_array_equal

from sparsekit.adamole import AdaMoLEClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# fast settings for the tiny models: these learn the trivially separable task in a few epochs
FAST = {
    "num_experts": 4,
    "expert_rank": 2,
    "learning_rate": 1e-2,
    "warmup": 0,
    "batch_size": 16,
    "max_length": 32,
}


def _est(path, **kw):
    params = dict(FAST, base_model=path, num_epochs=5, random_state=0)
    params.update(kw)
    return AdaMoLEClassifier(**params)


@pytest.fixture(scope="module")
def fitted_bert(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    return _est(clf_bert_dir).fit(X, y)


@pytest.fixture(scope="module")
def fitted_llama_lm(clf_llama_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    return _est(clf_llama_dir, head="auto").fit(X, y)


def test_bert_classifier_learns_separable_task(fitted_bert, sentiment_data):
    _, _, Xt, yt = sentiment_data
    est = fitted_bert
    assert est.head_ == "classifier"
    assert est.score(Xt, yt) >= 0.9
    assert est.history_[-1]["train_loss"] < 0.5 * est.history_[0]["train_loss"]
    assert_array_equal(est.classes_, ["neg", "pos"])


def test_llama_lm_head_learns_separable_task(fitted_llama_lm, sentiment_data):
    _, _, Xt, yt = sentiment_data
    est = fitted_llama_lm
    assert est.head_ == "lm"  # "auto" picks the paper's scorer for a causal decoder
    assert est.tokenizer_.convert_ids_to_tokens(est.answer_token_ids_) == ["A", "B"]
    assert est.score(Xt, yt) >= 0.85
    assert est.history_[-1]["train_loss"] < 0.3 * est.history_[0]["train_loss"]


def test_llama_classifier_head_without_pad_token(clf_llama_dir, sentiment_data):
    X, y, Xt, yt = sentiment_data
    est = _est(clf_llama_dir, head="classifier").fit(X, y)
    tok = est.tokenizer_
    # the tokenizer has no pad token: EOS is used, and set on the model config too
    assert tok.pad_token == "</s>"
    assert est.model_.get_base_model().config.pad_token_id == tok.eos_token_id
    assert est.score(Xt, yt) >= 0.9


def test_proba_predict_decision_function_agree(fitted_bert, sentiment_data):
    _, _, Xt, _ = sentiment_data
    est = fitted_bert
    proba = est.predict_proba(Xt)
    assert proba.shape == (len(Xt), 2) and proba.dtype == np.float64
    assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert_array_equal(est.predict(Xt), est.classes_[proba.argmax(axis=1)])
    dec = est.decision_function(Xt)
    assert dec.shape == (len(Xt),)
    assert_array_equal(dec > 0, proba[:, 1] > 0.5)
    assert_allclose(1 / (1 + np.exp(-dec)), proba[:, 1], rtol=1e-9)
    assert_allclose(est.predict_log_proba(Xt), np.log(proba), atol=1e-9)
    # order of the inputs does not matter (batches are length-sorted internally)
    rev = est.predict_proba(Xt[::-1])
    assert_allclose(rev[::-1], proba, atol=1e-5)


def test_unseen_labels_at_score(fitted_bert, sentiment_data):
    _, _, Xt, yt = sentiment_data
    y_bad = np.array(yt, dtype=object)
    y_bad[0] = "meh"
    with pytest.raises(ValueError, match=r"labels \['meh'\] that were not seen during fit"):
        fitted_bert.score(Xt, y_bad)


def test_history_and_expert_usage(fitted_bert):
    est = fitted_bert
    assert est.n_iter_ == 5 and len(est.history_) == 5
    assert est.n_steps_ == 5 * 6  # 96 samples / batch 16, no accumulation
    h = est.history_[-1]
    for key in (
        "epoch",
        "train_loss",
        "aux_loss",
        "learning_rate",
        "mean_active_experts",
        "zero_expert_fraction",
        "tau_mean",
        "tau_std",
        "expert_load",
        "duration_s",
    ):
        assert key in h, key
    assert 1.0 <= h["mean_active_experts"] <= 4.0
    assert 0 < h["tau_mean"] < 1 / 4  # adaptive threshold below tau_max = 1/N
    assert len(h["expert_load"]) == 4
    assert h["aux_loss"] > 0
    usage = est.expert_usage_
    assert set(est.target_modules_) >= {"query", "value"}
    assert len(usage["per_module"]) == 2 * len(est.target_modules_)  # 2 layers
    assert est.max_threshold_ == 0.25
    assert est.n_trainable_params_ > 0


def test_determinism_and_no_global_rng_side_effects(clf_bert_dir, sentiment_data):
    X, y, Xt, _ = sentiment_data
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    p1 = _est(clf_bert_dir, num_epochs=2, random_state=7).fit(X, y).predict_proba(Xt)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    p2 = _est(clf_bert_dir, num_epochs=2, random_state=7).fit(X, y).predict_proba(Xt)
    assert_array_equal(p1, p2)
    p3 = _est(clf_bert_dir, num_epochs=2, random_state=8).fit(X, y).predict_proba(Xt)
    assert not np.allclose(p1, p3)


def test_gradient_accumulation_matches_larger_batch(clf_bert_dir, sentiment_data):
    X, y, Xt, _ = sentiment_data
    kw = {"num_epochs": 2, "lora_dropout": 0.0, "aux_loss_coef": 0.0}
    big = _est(clf_bert_dir, batch_size=16, **kw).fit(X, y)
    acc = _est(clf_bert_dir, batch_size=8, gradient_accumulation_steps=2, **kw).fit(X, y)
    assert big.n_steps_ == acc.n_steps_ == 12
    assert_allclose(acc.predict_proba(Xt), big.predict_proba(Xt), atol=1e-4)


def test_gradient_checkpointing_gives_same_model(clf_bert_dir, sentiment_data):
    X, y, Xt, _ = sentiment_data
    plain = _est(clf_bert_dir, num_epochs=1).fit(X, y)
    ckpt = _est(clf_bert_dir, num_epochs=1, gradient_checkpointing=True).fit(X, y)
    base = ckpt.model_.get_base_model()
    assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.model_.modules())
    assert ckpt.history_[0]["aux_loss"] == pytest.approx(plain.history_[0]["aux_loss"], rel=1e-4)
    assert_allclose(ckpt.predict_proba(Xt), plain.predict_proba(Xt), atol=1e-5)


def test_warmup_schedule(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    est = _est(clf_bert_dir, num_epochs=1, warmup=60).fit(X, y)
    assert est.warmup_steps_ == 60
    # 6 optimizer steps: the last one used lr * 6 / 60
    assert est.history_[0]["learning_rate"] == pytest.approx(1e-2 * 6 / 60)
    est = _est(clf_bert_dir, num_epochs=2, warmup=0.5).fit(X, y)
    assert est.warmup_steps_ == 6
    assert est.history_[1]["learning_rate"] == pytest.approx(1e-2)


def test_warm_start_and_partial_fit_continue_training(clf_bert_dir, sentiment_data):
    X, y, Xt, _ = sentiment_data
    est = _est(clf_bert_dir, num_epochs=1, warm_start=True).fit(X, y)
    first_params = {
        n: p.detach().clone() for n, p in est.model_.named_parameters() if p.requires_grad
    }
    model = est.model_
    est.fit(X, y)
    assert est.model_ is model  # the same adapters, trained further
    assert est.n_iter_ == 2 and len(est.history_) == 2 and est.n_steps_ == 12
    changed = [
        not torch.equal(p, first_params[n])
        for n, p in model.named_parameters()
        if n in first_params
    ]
    assert any(changed)
    with pytest.raises(ValueError, match="cannot add classes"):
        est.fit(X[:4], ["neg", "pos", "meh", "neg"])
    # without warm_start, fit starts afresh
    est.set_params(warm_start=False).fit(X, y)
    assert est.n_iter_ == 1 and est.model_ is not model

    pf = _est(clf_bert_dir)
    pf.partial_fit(X[:40], y[:40], classes=["neg", "pos", "zzz"])
    assert_array_equal(pf.classes_, ["neg", "pos", "zzz"])
    pf.partial_fit(X[40:], y[40:])
    assert pf.n_iter_ == 2
    assert pf.predict_proba(Xt).shape == (len(Xt), 3)
    with pytest.raises(ValueError, match="not seen in the first fit"):
        pf.partial_fit(["good"], ["other"])


def test_early_stopping_on_validation_split(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    est = _est(
        clf_bert_dir,
        num_epochs=30,
        early_stopping=True,
        validation_fraction=0.25,
        n_iter_no_change=2,
    ).fit(X, y)
    assert est.n_iter_ < 30
    accs = [h["valid_accuracy"] for h in est.history_]
    assert all("valid_loss" in h for h in est.history_)
    assert est.best_epoch_ == int(np.argmax(accs)) + 1
    assert est.history_[0]["n_samples"] == 72  # 25 % of 96 held out


def test_callbacks_are_called_and_can_stop(clf_bert_dir, sentiment_data, recorder_cls):
    X, y, _, _ = sentiment_data
    cb = recorder_cls(stop_after=2)
    est = _est(clf_bert_dir, num_epochs=5, callbacks=[cb]).fit(X, y)
    # clone deep-copies the callbacks; fit uses the estimator's own list
    assert est.n_iter_ == 2
    kinds = [c[0] for c in cb.calls]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert kinds.count("epoch") == 2 and kinds.count("batch") == 12


def test_bad_callback_rejected(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    with pytest.raises(TypeError, match="has none of the hooks"):
        _est(clf_bert_dir, callbacks=[object()]).fit(X, y)


def test_nan_loss_stops_with_clear_error(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data

    class Poison:
        def on_batch_end(self, est, logs):
            with torch.no_grad():
                for p in est.model_.parameters():
                    if p.requires_grad:
                        p.fill_(float("nan"))

    est = _est(clf_bert_dir, num_epochs=2, learning_rate=5e-2, callbacks=[Poison()])
    with pytest.raises(
        FloatingPointError, match="loss became nan.*Likely cause: learning_rate=0.05"
    ):
        est.fit(X, y)
    assert not hasattr(est, "classes_")  # left unfitted, not half-trained


def test_truncation_warns_once_per_call(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    long_X = [x + " the film" * 20 for x in X[:20]]
    est = _est(clf_bert_dir, num_epochs=1, max_length=8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        est.fit(long_X, y[:20])
    msgs = [str(w.message) for w in rec if "truncated" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].startswith("20 of 20 texts")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        est.predict(["good", "bad movie"])  # short texts: no warning
    assert not [w for w in rec if "truncated" in str(w.message)]


def test_lm_prompt_truncates_text_not_choices(clf_llama_dir):
    est = _est(clf_llama_dir, head="lm", num_epochs=1, max_length=20)
    with pytest.warns(UserWarning, match="truncated"):
        est.fit(["good great " * 30, "bad awful " * 30], ["pos", "neg"])
    with pytest.warns(UserWarning, match="1 of 1 texts"):
        enc = est._encode(["good " * 50])
    ids = enc.input_ids[0]
    assert len(ids) == 20
    toks = est.tokenizer_.convert_ids_to_tokens(ids)
    assert toks[0] == "<s>" and toks[-2:] == ["Answer", ":"]
    with pytest.raises(ValueError, match="too small for the lm-head prompt"):
        _est(clf_llama_dir, head="lm", max_length=6).fit(["good", "bad"], ["pos", "neg"])


def test_text_pairs_with_both_heads(clf_bert_dir, clf_llama_dir, make_sentiment):
    first, _ = make_sentiment(96, seed=3)
    second, y = make_sentiment(96, seed=4)
    rng = np.random.RandomState(0)
    pairs = [(a, b) for a, b in zip(rng.permutation(first), second)]  # label follows text 2
    est = _est(clf_bert_dir, num_epochs=6).fit(pairs, y)
    assert est.pair_input_
    assert est.score(pairs, y) >= 0.85
    with pytest.raises(ValueError, match="trained on text pairs"):
        est.predict(["only one text"])
    lm = _est(clf_llama_dir, head="lm", num_epochs=2).fit(pairs[:32], y[:32])
    toks = lm.tokenizer_.convert_ids_to_tokens(lm._encode([("good", "bad")]).input_ids[0])
    assert toks[:6] == ["<s>", "Text", "1", ":", "good", "Text"]
    assert lm.predict_proba([("good", "bad")]).shape == (1, 2)


def test_labels_of_any_type_and_multiclass(clf_bert_dir, clf_llama_dir, make_sentiment):
    X, y_str = make_sentiment(48, seed=5)
    y_int = np.where(y_str == "pos", 7, 3)
    est = _est(clf_bert_dir, num_epochs=1).fit(X, y_int)
    assert_array_equal(est.classes_, [3, 7])
    assert est.predict(X[:3]).dtype == y_int.dtype
    y_bool = y_str == "pos"
    est = _est(clf_bert_dir, num_epochs=1).fit(X, y_bool)
    assert_array_equal(est.classes_, [False, True])
    # three classes, lm head with label words given as a dict
    y3 = np.array(["cat", "dog", "mixed"] * 16)
    est = _est(
        clf_llama_dir,
        head="lm",
        num_epochs=1,
        label_words={"cat": "negative", "dog": "positive", "mixed": "mixed"},
    ).fit(X, y3)
    assert est.tokenizer_.convert_ids_to_tokens(est.answer_token_ids_) == [
        "negative",
        "positive",
        "mixed",
    ]
    proba = est.predict_proba(X[:5])
    assert proba.shape == (5, 3)
    assert est.decision_function(X[:5]).shape == (5, 3)
    assert_allclose(proba.sum(1), 1.0)


def test_verbose_controls_output(clf_bert_dir, sentiment_data, capsys):
    X, y, _, _ = sentiment_data
    _est(clf_bert_dir, num_epochs=1, verbose=0).fit(X, y).predict(X[:2])
    out = capsys.readouterr()
    assert out.out == "" and "epoch" not in out.err and "Loading" not in out.err
    _est(clf_bert_dir, num_epochs=1, verbose=1).fit(X, y)
    out = capsys.readouterr()
    assert "epoch 1 | loss" in out.out + out.err


@pytest.mark.parametrize("tty", [False, True])
def test_verbose_auto_follows_the_terminal(clf_bert_dir, sentiment_data, capsys, monkeypatch, tty):
    """The default ``verbose="auto"`` reports epochs on a terminal and stays silent otherwise."""
    X, y, _, _ = sentiment_data
    est = _est(clf_bert_dir, num_epochs=1)
    assert est.get_params()["verbose"] == "auto"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    est.fit(X, y)
    out = capsys.readouterr()
    assert ("epoch 1 | loss" in out.out + out.err) is tty


def test_dense_single_expert_is_plain_lora(clf_bert_dir, sentiment_data):
    X, y, Xt, yt = sentiment_data
    lora = _est(clf_bert_dir, num_experts=1, routing="dense", expert_rank=8).fit(X, y)
    assert lora.max_threshold_ is None
    assert lora.history_[-1]["mean_active_experts"] is None  # no router, nothing to report
    assert lora.expert_usage_ == {}
    assert lora.history_[-1]["aux_loss"] == 0.0
    assert lora.score(Xt, yt) >= 0.9


def test_no_module_level_state_between_candidates(clf_bert_dir, sentiment_data):
    """Everything lives on the estimator, so a discarded estimator frees its model."""
    import gc
    import weakref

    X, y, _, _ = sentiment_data
    est = _est(clf_bert_dir, num_epochs=1).fit(X[:16], y[:16])
    ref = weakref.ref(est.model_)
    del est
    gc.collect()
    assert ref() is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no cuda device")
def test_gpu_mixed_precision_checkpointing(clf_llama_dir, sentiment_data):
    X, y, Xt, yt = sentiment_data
    est = _est(clf_llama_dir, head="lm", gradient_checkpointing=True, num_epochs=6).fit(X, y)
    assert est.device_.startswith("cuda")
    assert est.dtype_ == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
    assert all(p.dtype == torch.float32 for p in est.model_.parameters() if p.requires_grad)
    assert est.score(Xt, yt) >= 0.8
    fp16 = _est(clf_llama_dir, head="classifier", dtype="float16", num_epochs=5).fit(X, y)
    assert fp16.dtype_ == "float16"
    assert fp16.score(Xt, yt) >= 0.8
