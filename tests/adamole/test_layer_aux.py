"""Auxiliary load-balancing loss and routing statistics (sparsekit/adamole/_routing.py)."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from torch import nn

from sparsekit.adamole import (
    AdaMoLEConfig,
    AdaMoLELinear,
    collect_aux_loss,
    get_adamole_model,
    routing_statistics,
)

from .layer_helpers import HAND_X, hand_made_layer


class Two(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.second(self.first(x))


def test_aux_loss_matches_hand_computation():
    """f = [2/3, 2/3], P = [0.65/3, 0.85/3] -> L = 2 * sum f P = 2/3."""
    layer = hand_made_layer()
    with collect_aux_loss(layer) as aux:
        layer(HAND_X)
    assert len(aux) == 1
    assert aux.loss.dtype == torch.float32 and aux.loss.dim() == 0
    torch.testing.assert_close(aux.loss, torch.tensor(2 / 3), rtol=1e-6, atol=1e-6)


def test_aux_loss_excludes_padding():
    """Masking token 3 out: f = [1, 1/2], P = [0.4, 0.1] -> L = 2 * (0.4 + 0.05) = 0.9."""
    layer = hand_made_layer()
    with collect_aux_loss(layer, attention_mask=torch.tensor([[1, 1, 0]])) as aux:
        layer(HAND_X)
    torch.testing.assert_close(aux.loss, torch.tensor(0.9), rtol=1e-6, atol=1e-6)
    # the padded token's content does not matter
    x = HAND_X.clone()
    x[0, 2] = torch.tensor([5.0, -3.0])
    with collect_aux_loss(layer, attention_mask=[[1, 1, 0]]) as aux2:
        layer(x)
    torch.testing.assert_close(aux2.loss, aux.loss)


def test_attention_mask_of_the_wrong_size_raises():
    layer = hand_made_layer()
    with (
        pytest.raises(ValueError, match="attention_mask has 2 entries"),
        collect_aux_loss(layer, attention_mask=torch.ones(1, 2)),
    ):
        layer(HAND_X)


def test_aux_loss_has_gradient_that_raises_the_threshold():
    """In training the aux loss has a gradient for the gate and the threshold net; its gradient
    on the threshold bias is negative (descent raises tau, see _routing.py)."""
    layer = hand_made_layer()
    with collect_aux_loss(layer) as aux:
        layer(HAND_X)
    aux.loss.backward()
    # f = [2/3, 2/3] is balanced, so the gate gets no gradient here (softmax of a constant) ...
    torch.testing.assert_close(layer.lora_gate["default"].weight.grad, torch.zeros(2, 2))
    assert layer.lora_threshold["default"].bias.grad.item() < 0
    # dL/dtau_t = -(N/T) sum_i f_i = -(2/3)(4/3); dtau/db = tau_max * s(0)(1 - s(0)) = 1/8
    torch.testing.assert_close(
        layer.lora_threshold["default"].bias.grad, torch.tensor([-3 * (2 / 3) * (4 / 3) * (1 / 8)])
    )
    # ... while an unbalanced load (f = [1, 1/2] with the mask) pushes the busy expert down
    layer.zero_grad()
    with collect_aux_loss(layer, attention_mask=[[1, 1, 0]]) as aux:
        layer(HAND_X)
    aux.loss.backward()
    grad = layer.lora_gate["default"].weight.grad
    assert grad.abs().sum() > 0
    # descent direction lowers expert 0's logit for the tokens it serves: d/dW[0,0] > 0
    assert grad[0, 0] > 0


def test_aux_loss_is_fresh_under_no_grad():
    """An evaluation forward under no_grad reports its own value (no stale training value)."""
    layer = hand_made_layer().train()
    gen = torch.Generator().manual_seed(0)
    x_train, x_eval = torch.randn(2, 5, 2, generator=gen), torch.randn(2, 5, 2, generator=gen)
    with collect_aux_loss(layer) as train_aux:
        layer(x_train)
    with collect_aux_loss(layer) as expected:
        layer(x_eval)
    layer.eval()
    with torch.no_grad(), collect_aux_loss(layer) as eval_aux:
        layer(x_eval)
    assert train_aux.loss.requires_grad and not eval_aux.loss.requires_grad
    torch.testing.assert_close(eval_aux.loss, expected.loss.detach())
    assert not torch.allclose(eval_aux.loss, train_aux.loss.detach())


def test_nothing_is_recorded_outside_the_context():
    layer = hand_made_layer()
    with collect_aux_loss(layer) as aux:
        pass
    layer(HAND_X)
    assert len(aux) == 0 and aux.loss.item() == 0.0
    assert layer._adamole_collector is None
    assert routing_statistics(layer) == {}


def test_sum_and_mean_reduction():
    first, second = hand_made_layer(), hand_made_layer()
    with torch.no_grad():
        second.lora_gate["default"].weight.mul_(2.0)
    model = Two(first, second)
    with collect_aux_loss(model) as aux:
        model(HAND_X)
    assert len(aux) == 2
    torch.testing.assert_close(aux.loss, aux.terms[0] + aux.terms[1])
    with collect_aux_loss(model, reduction="mean") as aux_mean:
        model(HAND_X)
    torch.testing.assert_close(aux_mean.loss, (aux.terms[0] + aux.terms[1]) / 2)
    for layer in (first, second):  # as configured by AdaMoLEConfig(aux_loss_reduction="mean")
        layer.aux_loss_reduction["default"] = "mean"
    with collect_aux_loss(model) as aux_cfg:
        model(HAND_X)
    torch.testing.assert_close(aux_cfg.loss, aux_mean.loss)
    with pytest.raises(ValueError, match="reduction"), collect_aux_loss(model, reduction="max"):
        pass


@pytest.mark.parametrize("routing", ["topk", "threshold", "dense"])
def test_aux_loss_of_mole_variants_uses_raw_probabilities(routing):
    """MoLE variants: f from the selection, P from p (official TopK/Threshold layers)."""
    config = AdaMoLEConfig(num_experts=2, r=1, routing=routing, top_k=1, init_lora_weights=False)
    layer = AdaMoLELinear(nn.Linear(2, 2), "default", config=config)
    with torch.no_grad():
        layer.lora_gate["default"].weight.copy_(torch.eye(2))
    with collect_aux_loss(layer) as aux:
        layer(HAND_X)
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]])
    if routing == "dense":
        f = torch.ones(2)
    elif routing == "threshold":  # p >= 1/2
        f = torch.tensor([2 / 3, 2 / 3])
    else:  # top-1; the tie at [0.5, 0.5] goes to one expert
        f = (torch.zeros(3, 2).scatter(1, p.argmax(-1, keepdim=True), 1.0)).mean(0)
    torch.testing.assert_close(aux.loss, 2 * (f * p.mean(0)).sum(), rtol=1e-5, atol=1e-6)


def test_routing_statistics_hand_made():
    layer = hand_made_layer()
    with collect_aux_loss(layer, attention_mask=[[1, 1, 0]]):
        layer(HAND_X)
        layer(HAND_X)
    stats = routing_statistics(layer, reset=False)
    assert stats["mean_active_experts"] == pytest.approx(1.5)
    assert stats["zero_expert_fraction"] == 0.0
    assert stats["expert_load"] == pytest.approx([1.0, 0.5])
    assert stats["tau_mean"] == pytest.approx(0.25) and stats["tau_std"] == pytest.approx(
        0, abs=1e-6
    )
    ((name, module_stats),) = stats["per_module"].items()
    assert module_stats["tokens"] == 4
    # unmasked, accumulated on top
    with collect_aux_loss(layer):
        layer(HAND_X)
    stats = routing_statistics(layer)  # reads and resets
    assert stats["per_module"][name]["tokens"] == 7
    assert stats["mean_active_experts"] == pytest.approx((1.5 * 4 + 4) / 7)
    assert routing_statistics(layer) == {}


def test_routing_statistics_are_accumulated_on_device_without_sync():
    """Accumulators are device tensors updated in place (no .item() per forward)."""
    layer = hand_made_layer()
    with collect_aux_loss(layer):
        layer(HAND_X)
    acc = layer._routing_accumulators["default"]
    assert isinstance(acc, torch.Tensor) and acc.device == HAND_X.device
    with collect_aux_loss(layer, statistics=False):
        layer(HAND_X)
    assert layer._routing_accumulators["default"] is acc and acc[0].item() == 3


def test_statistics_zero_expert_fraction_and_topk():
    config = AdaMoLEConfig(num_experts=4, r=1, max_threshold=0.5, init_lora_weights=False)
    layer = AdaMoLELinear(nn.Linear(8, 8), "default", config=config)
    with torch.no_grad():
        layer.lora_threshold["default"].bias.fill_(20.0)
        layer.lora_gate["default"].weight.mul_(0.01)  # p ~ 1/4 < tau ~ 1/2
    x = torch.randn(4, 6, 8)
    with collect_aux_loss(layer):
        layer(x)
    stats = routing_statistics(layer)
    assert stats["zero_expert_fraction"] == 1.0 and stats["mean_active_experts"] == 0.0
    assert stats["tau_mean"] == pytest.approx(0.5, abs=1e-6)

    config = AdaMoLEConfig(num_experts=4, r=1, routing="topk", top_k=3)
    layer = AdaMoLELinear(nn.Linear(8, 8), "default", config=config)
    with collect_aux_loss(layer):
        layer(x)
    stats = routing_statistics(layer)
    assert stats["mean_active_experts"] == 3.0 and sum(stats["expert_load"]) == pytest.approx(3)
    assert math.isnan(stats["tau_mean"]) and math.isnan(stats["tau_std"])


@pytest.mark.parametrize("backward_inside", [True, False])
def test_aux_loss_with_non_reentrant_gradient_checkpointing(
    tiny_llama_factory, token_batch, backward_inside
):
    """Non-reentrant checkpointing: same aux value, same gradients, no double counting from
    the recompute, whether backward runs inside the context or after it."""
    ids, mask = token_batch
    config = AdaMoLEConfig(num_experts=4, r=2, init_lora_weights=False)
    grads, values = [], []
    for checkpointing in (False, True):
        with torch.random.fork_rng():
            torch.manual_seed(1)
            model = get_adamole_model(tiny_llama_factory(seed=0), config)
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        with collect_aux_loss(model, attention_mask=mask) as aux:
            out = model(input_ids=ids, attention_mask=mask, labels=ids)
            loss = out.loss + 0.5 * aux.loss
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        assert len(aux) == 8  # 2 layers x 4 projections, recomputes not recorded
        values.append(aux.loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        stats = routing_statistics(model)
        assert stats["per_module"]["model.layers.0.self_attn.q_proj"]["tokens"] == int(mask.sum())
    torch.testing.assert_close(values[0], values[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)
    gate_grads = [g for n, g in grads[0].items() if "lora_threshold" in n]
    assert gate_grads and all(g.abs().sum() > 0 for g in gate_grads)


def test_aux_loss_through_distributed_data_parallel(tiny_llama_factory, token_batch, tmp_path):
    """Wrapped in DDP (gloo, one process), the aux loss is collected through the wrapper, every
    parameter receives a gradient (no find_unused_parameters needed) and the gradients equal
    those of the unwrapped model."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    ids, mask = token_batch
    config = AdaMoLEConfig(num_experts=4, r=2, init_lora_weights=False)

    def build():
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return get_adamole_model(tiny_llama_factory(seed=0), config).train()

    def step(model, inner):
        with collect_aux_loss(model, attention_mask=mask) as aux:
            out = model(input_ids=ids, attention_mask=mask, labels=ids)
        (out.loss + aux.loss).backward()
        return aux, {n: p.grad for n, p in inner.named_parameters() if p.requires_grad}

    plain = build()
    aux_plain, grads_plain = step(plain, plain)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        inner = build()
        ddp = DistributedDataParallel(inner)
        aux_ddp, grads_ddp = step(ddp, inner)
    finally:
        dist.destroy_process_group()
    assert len(aux_ddp) == len(aux_plain) == 8
    torch.testing.assert_close(aux_ddp.loss, aux_plain.loss)
    assert all(g is not None for g in grads_ddp.values())
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ddp[name], grad, rtol=1e-5, atol=1e-6)
