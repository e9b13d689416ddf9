"""AdaMoLEClassifier options that must change what training does.

Each test fails when its option is silently ignored: ``aux_loss_coef`` (the load-balancing loss
must reach the router's gradient), ``warm_start`` (continue the adapters *and* the optimizer),
and the per-call parameter validation of ``partial_fit``.
"""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from sparsekit import adamole
from sparsekit.adamole import AdaMoLEClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "num_experts": 4,
    "expert_rank": 2,
    "learning_rate": 1e-2,
    "warmup": 0,
    "batch_size": 16,
    "max_length": 32,
    "random_state": 0,
    "lora_dropout": 0.0,
}


def _router_params(est):
    return {
        n: p.detach().clone()
        for n, p in est.model_.named_parameters()
        if "lora_gate" in n or "lora_threshold" in n
    }


def test_aux_loss_coef_reaches_the_router(clf_bert_dir, sentiment_data):
    """Same seed, same data: only the weight of the load-balancing loss differs, so only a
    router trained with it can end elsewhere; the experts' own task loss is unchanged."""
    X, y, _, _ = sentiment_data
    off = AdaMoLEClassifier(base_model=clf_bert_dir, num_epochs=1, aux_loss_coef=0.0, **FAST)
    on = AdaMoLEClassifier(base_model=clf_bert_dir, num_epochs=1, aux_loss_coef=1.0, **FAST)
    off.fit(X, y)
    on.fit(X, y)
    p_off, p_on = _router_params(off), _router_params(on)
    assert p_off.keys() == p_on.keys() and p_off
    diffs = [float((p_on[k] - p_off[k]).abs().max()) for k in p_off]
    assert max(diffs) > 1e-4, diffs
    # the logged aux loss is the unweighted one, so it is comparable between the two
    assert on.history_[0]["aux_loss"] > 0 and off.history_[0]["aux_loss"] > 0


def test_aux_loss_coef_is_in_the_training_loss(clf_bert_dir, sentiment_data, monkeypatch):
    """The loss passed to backward is ``task + aux_loss_coef * aux``: record both parts."""
    from sparsekit.adamole import _trainer

    X, y, _, _ = sentiment_data
    seen = []
    original = _trainer.Trainer._optimizer_step

    def spy(self, group_loss, epoch):
        seen.append(float(group_loss))
        return original(self, group_loss, epoch)

    monkeypatch.setattr(_trainer.Trainer, "_optimizer_step", spy)
    kw = dict(FAST, batch_size=96, num_epochs=1)  # one batch: one step
    AdaMoLEClassifier(base_model=clf_bert_dir, aux_loss_coef=0.0, **kw).fit(X, y)
    est = AdaMoLEClassifier(base_model=clf_bert_dir, aux_loss_coef=2.0, **kw).fit(X, y)
    rec = est.history_[0]
    assert seen[1] - seen[0] == pytest.approx(2.0 * rec["aux_loss"], rel=1e-4)


def test_warm_start_continues_the_optimizer(clf_bert_dir, sentiment_data):
    """A warm-started fit continues Adam's moments and step count, not only the weights."""
    X, y, _, _ = sentiment_data
    est = AdaMoLEClassifier(base_model=clf_bert_dir, num_epochs=1, warm_start=True, **FAST)
    est.fit(X, y)
    steps = [s["step"] for s in est._optim_state["state"].values()]
    assert all(int(s) == est.n_steps_ for s in steps)
    first_steps = est.n_steps_
    est.fit(X, y)
    steps = [s["step"] for s in est._optim_state["state"].values()]
    assert est.n_steps_ == 2 * first_steps
    assert all(int(s) == est.n_steps_ for s in steps)


def test_partial_fit_validates_parameters_on_every_call(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    est = AdaMoLEClassifier(base_model=clf_bert_dir, **FAST)
    est.partial_fit(X[:32], y[:32])
    est.set_params(batch_size=0)
    with pytest.raises(ValueError, match="'batch_size' parameter"):
        est.partial_fit(X[:32], y[:32])
    assert est.n_iter_ == 1


def test_lazy_names_match_all():
    assert sorted(adamole.__all__) == sorted(adamole._LAZY)
    for name in adamole.__all__:
        assert getattr(adamole, name) is not None


def test_recorder_callback_pickles(recorder_cls):
    est = AdaMoLEClassifier(base_model="x/y", callbacks=[recorder_cls(stop_after=1)])
    loaded = pickle.loads(pickle.dumps(est))
    assert type(loaded.callbacks[0]).__name__ == "Recorder"
    assert np.all([c.stop_after == 1 for c in loaded.callbacks])


class _Snapshots:
    """Keeps a copy of the trainable weights at the end of every epoch."""

    def __init__(self):
        self.states = {}

    def on_epoch_end(self, est, logs):
        self.states[logs["epoch"]] = {
            n: p.detach().clone() for n, p in est.model_.named_parameters() if p.requires_grad
        }


def test_early_stopping_restores_the_best_epoch(clf_bert_dir, sentiment_data):
    """After early stopping the adapters are those of ``best_epoch_``, not of the last epoch."""
    X, y, _, _ = sentiment_data
    snaps = _Snapshots()
    est = AdaMoLEClassifier(
        base_model=clf_bert_dir,
        num_epochs=30,
        early_stopping=True,
        validation_fraction=0.25,
        n_iter_no_change=2,
        callbacks=[snaps],
        **FAST,
    ).fit(X, y)
    assert est.best_epoch_ is not None and est.best_epoch_ < est.n_iter_
    final = {n: p.detach() for n, p in est.model_.named_parameters() if p.requires_grad}
    best, last = snaps.states[est.best_epoch_], snaps.states[est.n_iter_]
    assert all(torch.equal(final[n], best[n]) for n in final)
    assert not all(torch.equal(final[n], last[n]) for n in final)
