"""Multi-process AdaMoLE training (issue 12, part 3): two gloo processes under torchrun.

The two-process run launches ``examples/adamole_torchrun.py`` with ``python -m
torch.distributed.run --nproc_per_node 2`` on the tiny BERT of ``conftest.py``; each rank writes
its predictions, rank 0 the pickle. It is compared with one process trained on the same global
batch (2 x 8 = 16).

What "close" means: with ``lora_dropout=0`` (and a dropout-free model), 96 training texts (six
global batches of 16, no padding) and the same seed, rank r's local batch k is the strided slice
``order[r::2][8k:8k+8]`` of the epoch permutation, and the two local batches together are exactly
the one-process batch ``order[16k:16k+16]``. With ``aux_loss_coef=0`` the averaged gradient is the
gradient of the one-process batch, so the two fits differ only by float32 summation order: we
require the class probabilities within 1e-4 and identical predictions. The load-balancing loss
is a nonlinear function of the batch's routing statistics; those are summed over the ranks in the
forward, so with ``aux_loss_coef > 0`` the same holds (checked with the same tolerance).
"""

import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from sparsekit.adamole import AdaMoLEClassifier

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "adamole_torchrun.py"
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(**overrides):
    s = dict(
        batch_size=8,
        epochs=2,
        learning_rate=5e-3,
        max_length=16,
        num_experts=4,
        aux_loss_coef=0.0,
        lora_dropout=0.0,
    )
    s.update(overrides)
    return s


def _cli(settings):
    out = []
    for k, v in settings.items():
        if k == "early_stopping":
            if v:
                out.append("--early-stopping")
            continue
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _torchrun(tmp_path, model_dir, data, settings, nproc=2, launcher="torchrun"):
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    out = tmp_path / "out"
    if launcher == "torchrun":
        launch = ["torch.distributed.run", "--nproc_per_node", str(nproc)]
        launch += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    else:  # accelerate's multi-process launcher (torch.distributed.run underneath)
        launch = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port())]
    cmd = [
        sys.executable,
        "-m",
        *launch,
        str(SCRIPT),
        "--base-model",
        model_dir,
        "--data",
        str(data_file),
        "--out",
        str(out),
        "--device",
        "cpu",
        *_cli(settings),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    return ranks, out


@pytest.fixture(scope="module")
def data(sentiment_data):
    X, y, Xt, yt = sentiment_data
    return {"X_train": list(X), "y_train": list(y), "X_test": list(Xt), "y_test": list(yt)}


def _without_times(history):
    return [{k: v for k, v in h.items() if k != "duration_s"} for h in history]


def _one_process(model_dir, data, settings, batch_size):
    clf = AdaMoLEClassifier(
        base_model=model_dir,
        num_experts=settings["num_experts"],
        expert_rank=4,
        aux_loss_coef=settings["aux_loss_coef"],
        threshold_budget=settings.get("threshold_budget"),
        threshold_entropy=settings.get("threshold_entropy"),
        lora_dropout=settings["lora_dropout"],
        head="classifier",
        batch_size=batch_size,
        learning_rate=settings["learning_rate"],
        warmup=0.06,
        num_epochs=settings["epochs"],
        max_length=settings["max_length"],
        early_stopping=settings.get("early_stopping", False),
        device="cpu",
        random_state=0,
        verbose=0,
    )
    return clf.fit(data["X_train"], data["y_train"])


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tmp_path, clf_bert_dir, data
):
    settings = _settings()
    ranks, out = _torchrun(tmp_path, clf_bert_dir, data, settings)
    r0, r1 = ranks
    # every rank returns the same fitted estimator
    assert r0["predictions"] == r1["predictions"]
    np.testing.assert_array_equal(np.array(r0["proba"]), np.array(r1["proba"]))
    assert _without_times(r0["history"]) == _without_times(r1["history"])
    assert [h["world_size"] for h in r0["history"]] == [2, 2]
    assert r0["n_steps"] == r1["n_steps"] == 2 * 96 // 16  # 6 global steps per epoch
    # one process, same global batch (2 x 8)
    single = _one_process(clf_bert_dir, data, settings, batch_size=16)
    assert single.n_steps_ == r0["n_steps"]
    assert [h["world_size"] for h in single.history_] == [1, 1]
    p1 = single.predict_proba(data["X_test"])
    np.testing.assert_allclose(np.array(r0["proba"]), p1, atol=1e-4, rtol=0)
    assert r0["predictions"] == [str(c) for c in single.predict(data["X_test"])]
    for h_dist, h_one in zip(r0["history"], single.history_):
        assert h_dist["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-4)
        assert h_dist["n_samples"] == h_one["n_samples"] == 96
    # the training made a difference (the comparison is not between two untrained models)
    assert r0["accuracy"] >= 0.9
    # rank 0's pickle and save_pretrained hold the same model
    from_pickle = pickle.loads((out / "model.pkl").read_bytes())
    np.testing.assert_allclose(from_pickle.predict_proba(data["X_test"]), r0["proba"], atol=1e-6)
    loaded = AdaMoLEClassifier.from_pretrained(out / "model")
    np.testing.assert_allclose(loaded.predict_proba(data["X_test"]), r0["proba"], atol=1e-6)


def _two_ranks_and_one_process(tmp_path, clf_bert_dir, data, settings):
    """Fit with ``settings`` on 2 torchrun ranks and in one process on the same global batch;
    check that the ranks predict alike, that rank 0's probabilities are the one-process fit's
    (1e-4) and its per-epoch aux and training losses too (rel 1e-4). Returns (r0, r1, single)."""
    ranks, _ = _torchrun(tmp_path, clf_bert_dir, data, settings)
    r0, r1 = ranks
    assert r0["predictions"] == r1["predictions"]
    single = _one_process(clf_bert_dir, data, settings, batch_size=16)
    np.testing.assert_allclose(
        np.array(r0["proba"]), single.predict_proba(data["X_test"]), atol=1e-4, rtol=0
    )
    for h_dist, h_one in zip(r0["history"], single.history_):
        assert h_dist["aux_loss"] == pytest.approx(h_one["aux_loss"], rel=1e-4)
        assert h_dist["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-4)
    return r0, r1, single


def test_two_processes_with_aux_loss_match_one_process(tmp_path, clf_bert_dir, data):
    """The load-balancing loss takes the routing statistics of the global batch (token sums and
    counts all-reduced in the forward, with their gradient), so with it on the two-process fit is
    still the one-process fit on the same global batch, up to float summation order."""
    r0, _r1, single = _two_ranks_and_one_process(
        tmp_path, clf_bert_dir, data, _settings(aux_loss_coef=1e-2)
    )
    assert r0["predictions"] == [str(c) for c in single.predict(data["X_test"])]


def test_two_processes_with_threshold_budget_match_one_process(tmp_path, clf_bert_dir, data):
    """The threshold-budget term ``(mean_t k_t - budget)^2`` takes the mean smooth count of the
    global batch (its token sum and count all-reduced in the forward, with their gradient), so
    the two-process fit is the one-process fit on the same global batch; with per-rank means the
    squared term (and its gradient) would be the average over the ranks of their own."""
    _two_ranks_and_one_process(
        tmp_path, clf_bert_dir, data, _settings(aux_loss_coef=0.5, threshold_budget=3.0)
    )


def test_two_processes_with_threshold_entropy_match_one_process(tmp_path, clf_bert_dir, data):
    """The threshold-entropy term ``beta * (log(N + 1) - H(q))`` is the entropy of the batch's
    mean active-count distribution q; the per-rank token sums of each token's distribution and
    the token counts are all-reduced in the forward (with their gradient), so every rank gets the
    q of the global batch and the two-process fit is the one-process fit on that batch. With
    per-rank q the term would be the mean of the ranks' entropies (smaller: H is concave)."""
    r0, r1, single = _two_ranks_and_one_process(
        tmp_path, clf_bert_dir, data, _settings(aux_loss_coef=0.5, threshold_entropy=2.0)
    )
    assert _without_times(r0["history"]) == _without_times(r1["history"])
    assert r0["predictions"] == [str(c) for c in single.predict(data["X_test"])]


def _aux_term(logits, valid, sum_over_ranks=None):
    """The aux loss of one adaptive module with every option on, on tokens ``logits``."""
    from sparsekit.adamole._routing import AuxLoss, route

    aux = AuxLoss(attention_mask=valid, statistics=False)
    aux.sum_over_ranks = sum_over_ranks
    decision = route(logits, "adaptive", 4, 0.25, None)
    aux.record(decision, n_experts=4, reduction="sum", threshold_budget=2.0, threshold_entropy=0.7)
    return aux.loss


def test_every_aux_term_of_a_rank_is_the_global_batch_term():
    """In one process: the token sums of "rank 1" (the second part of the batch) are recorded,
    then "rank 0" computes its terms with them added, as the all-reduce does. The load-balancing
    statistics, the budget's mean count and the entropy's q are then the ones of the whole batch,
    so the value and the gradient on rank 0's tokens are the one-process ones (any term left as a
    per-rank mean breaks both)."""
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(21, 5, generator=gen)).requires_grad_()  # float32, as routed
    valid = torch.ones(21)
    valid[[4, 5, 17, 20]] = 0  # padding on both "ranks"
    full = _aux_term(logits, valid)
    (full_grad,) = torch.autograd.grad(full, logits)
    head, tail = 9, slice(9, None)
    received = []
    _aux_term(logits[tail].detach(), valid[tail], lambda t: received.append(t) or t)
    assert len(received) == 3  # balance statistics, mean count, count distribution
    sent = iter(received)
    mine = logits[:head].detach().requires_grad_()
    local = _aux_term(mine, valid[:head], lambda t: t + next(sent))
    torch.testing.assert_close(local, full, rtol=1e-5, atol=1e-6)
    (local_grad,) = torch.autograd.grad(local, mine)
    torch.testing.assert_close(local_grad, full_grad[:head], rtol=1e-4, atol=1e-6)
    # the split matters: rank 0's own batch alone gives another loss
    assert abs(float(_aux_term(mine.detach(), valid[:head])) - float(full)) > 1e-3


def test_accelerate_launch_trains_with_ddp(tmp_path, clf_bert_dir, data):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine starts two gloo ranks
    (it sets the same environment as torchrun) and gives the torchrun fit: the one-process fit on
    the same global batch. (``accelerate launch --cpu`` starts a single process without MPI.)"""
    pytest.importorskip("accelerate")
    settings = _settings()
    ranks, _ = _torchrun(tmp_path, clf_bert_dir, data, settings, launcher="accelerate")
    r0, r1 = ranks
    assert [h["world_size"] for h in r0["history"]] == [2, 2]
    assert r0["n_steps"] == 2 * 96 // 16
    np.testing.assert_array_equal(np.array(r0["proba"]), np.array(r1["proba"]))
    single = _one_process(clf_bert_dir, data, settings, batch_size=16)
    np.testing.assert_allclose(
        np.array(r0["proba"]), single.predict_proba(data["X_test"]), atol=1e-4, rtol=0
    )


def test_two_processes_agree_with_aux_loss_early_stopping_and_padding(tmp_path, clf_bert_dir, data):
    """93 texts (not a multiple of 2): rank 1's shard is padded; the aux loss is on; early
    stopping splits the validation set over the ranks and must stop both at the same epoch."""
    data = dict(data, X_train=data["X_train"][:93], y_train=data["y_train"][:93])
    settings = _settings(aux_loss_coef=1e-2, epochs=6, early_stopping=True, lora_dropout=0.05)
    ranks, _ = _torchrun(tmp_path, clf_bert_dir, data, settings)
    r0, r1 = ranks
    assert r0["predictions"] == r1["predictions"]
    np.testing.assert_array_equal(np.array(r0["proba"]), np.array(r1["proba"]))
    assert r0["best_epoch"] == r1["best_epoch"] is not None
    assert r0["n_iter"] == r1["n_iter"] and r0["n_steps"] == r1["n_steps"]  # stopped together
    assert len(r0["history"]) == len(r1["history"])
    for a, b in zip(r0["history"], r1["history"]):
        assert a["valid_accuracy"] == b["valid_accuracy"]
        assert a["aux_loss"] == b["aux_loss"] > 0
        assert a["world_size"] == 2


_WORKER = """
import json, os, sys
from sparsekit.adamole import AdaMoLEClassifier

class Probe:
    # what each rank saw at the end of each epoch, before anything is broadcast
    def __init__(self):
        self.seen = []
    def on_epoch_end(self, est, logs):
        self.seen.append([logs["epoch"], logs["valid_loss"], logs["valid_accuracy"]])
        # only rank 1 asks to stop, after epoch 2: every rank must stop there
        return os.environ["RANK"] == "1" and logs["epoch"] == 2

data = json.load(open(sys.argv[1]))
probe = Probe()
clf = AdaMoLEClassifier(
    base_model=sys.argv[2], num_experts=2, batch_size=8, learning_rate=5e-3, num_epochs=5,
    max_length=16, early_stopping=True, validation_fraction=0.25, n_iter_no_change=5,
    callbacks=[probe], device="cpu", random_state=0, verbose=0,
)
clf.fit(data["X_train"], data["y_train"])
out = {"seen": probe.seen, "n_iter": clf.n_iter_, "n_steps": clf.n_steps_}
with open(os.path.join(sys.argv[3], "probe%s.json" % os.environ["RANK"]), "w") as fh:
    json.dump(out, fh)
import torch.distributed as dist
dist.destroy_process_group()
"""


def test_validation_metrics_and_stop_decisions_agree_across_ranks(tmp_path, clf_bert_dir, data):
    """Each rank scores half of the validation set; the logged metrics are the all-reduced ones
    (the same on both ranks before any broadcast), and a callback stopping on rank 1 only stops
    both ranks at the same epoch."""
    (tmp_path / "data.json").write_text(json.dumps(data))
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(worker)]
    cmd += [str(tmp_path / "data.json"), clf_bert_dir, str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    p0, p1 = (json.loads((tmp_path / f"probe{r}.json").read_text()) for r in range(2))
    assert p0["seen"] == p1["seen"]
    assert [s[0] for s in p0["seen"]] == [1, 2]
    assert p0["n_iter"] == p1["n_iter"] == 2 and p0["n_steps"] == p1["n_steps"]


def test_distributed_parameter_is_validated(clf_bert_dir, sentiment_data, monkeypatch):
    X, y, _, _ = sentiment_data
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    clf = AdaMoLEClassifier(base_model=clf_bert_dir, distributed=True, device="cpu", verbose=0)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        clf.fit(X[:8], y[:8])
    with pytest.raises(ValueError, match="distributed"):
        AdaMoLEClassifier(base_model=clf_bert_dir, distributed="yes").fit(X[:8], y[:8])


def test_single_process_history_records_world_size_one(clf_bert_dir, sentiment_data):
    X, y, _, _ = sentiment_data
    clf = AdaMoLEClassifier(
        base_model=clf_bert_dir, num_epochs=1, device="cpu", verbose=0, random_state=0
    )
    clf.fit(X[:16], y[:16])
    assert clf.history_[0]["world_size"] == 1


def _context(rank, world_size):
    from sparsekit.adamole._distributed import DistContext

    ctx = DistContext.__new__(DistContext)  # sharding needs no process group
    ctx.rank, ctx.world_size = rank, world_size
    return ctx


def test_shards_are_strided_padded_and_cover_the_epoch():
    order = np.array([5, 3, 0, 6, 1, 4, 2])
    shards = [_context(r, 3).shard(order) for r in range(3)]
    assert [s.tolist() for s in shards] == [[5, 6, 2], [3, 1, 5], [0, 4, 3]]
    assert set(np.concatenate(shards)) == set(order)
    assert [len(_context(r, 2).split_range(5)) for r in range(2)] == [3, 2]


def test_gradient_average_keeps_grad_none_for_parameters_no_rank_used():
    """One-process gloo group: averaged gradients are unchanged, the loss comes back, and a
    parameter without a gradient stays without one (AdamW then skips it, as in one process)."""
    import torch.distributed as dist

    from sparsekit.adamole._distributed import DistContext

    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0
    )
    try:
        ctx = DistContext("cpu")
        used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        used.grad = torch.tensor([1.0, -2.0, 3.0])
        loss = ctx.average_gradients([used, unused], torch.tensor(0.5))
        assert unused.grad is None
        torch.testing.assert_close(used.grad, torch.tensor([1.0, -2.0, 3.0]))
        assert float(loss) == 0.5
        assert ctx.sum([1.0, 2.0]) == [1.0, 2.0] and ctx.any(True) and not ctx.any(False)
    finally:
        dist.destroy_process_group()
