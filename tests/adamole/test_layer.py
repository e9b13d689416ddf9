"""AdaMoLELinear against a per-expert loop reference (the routing of sparsekit/adamole/_routing.py).

Tolerances: float32 layer vs float64 reference: ``rtol=1e-4, atol=1e-5`` on outputs and on the
gradient of every parameter (and of the input). bfloat16 layer (all weights and inputs bf16) vs
the float64 reference evaluated on the same bf16-rounded values: relative Frobenius error
``<= 2e-2`` (bf16 has 8 mantissa bits, eps = 7.8e-3).
"""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from torch import nn

from sparsekit.adamole import AdaMoLEConfig, AdaMoLELinear
from sparsekit.adamole._layer import _route

from .layer_helpers import PARAMETER_SYMBOLS

ROUTINGS = ["adaptive", "topk", "threshold", "dense"]
D_IN, D_OUT, N, R = 24, 20, 4, 3


# ----------------------------------------------------------------------------- reference
def loop_reference(x, P, *, routing, n_experts, rank, scaling, tau_max, top_k):
    """Official-style AdaMoLE/MoLE forward (zefang-liu/AdaMoLE): a Python loop over experts, each
    gathering its active tokens with ``nonzero``. ``P`` holds plain tensors: W0, b0, A [N*r, d],
    B [d_out, N*r], Wg [N, d], Wt [1, d], bt [1]."""
    y = x @ P["W0"].T + P["b0"]
    X = x.reshape(-1, x.shape[-1])
    T = X.shape[0]
    if P.get("Wg") is None:  # no router: plain LoRA
        w = torch.ones(T, 1, dtype=X.dtype)
        m = torch.ones(T, 1)
    else:
        p = torch.softmax(X @ P["Wg"].T, dim=-1)
        if routing == "adaptive":
            tau = torch.sigmoid(X @ P["Wt"].T + P["bt"]) * tau_max
            a = p - tau
            m = (a >= 0).to(X.dtype)
            w = a * m
            s = w.sum(-1, keepdim=True)
            w = w / torch.where(s == 0, torch.ones_like(s), s)
        elif routing == "threshold":
            m = (p >= tau_max).to(X.dtype)
            w = p * m
            s = w.sum(-1, keepdim=True)
            w = w / torch.where(s == 0, torch.ones_like(s), s)
        elif routing == "topk":
            vals, idx = torch.topk(p, top_k, dim=-1)
            vals = vals / vals.sum(-1, keepdim=True)
            m = torch.zeros_like(p)
            w = torch.zeros_like(p)
            for i in range(n_experts):  # weights of the experts each token selected
                rows, slot = torch.where(idx == i)
                m[rows, i] = 1.0
                w = w.index_put((rows, torch.full_like(rows, i)), vals[rows, slot])
        else:
            m = torch.ones_like(p)
            w = p
    out = torch.zeros(T, P["B"].shape[0], dtype=X.dtype)
    for i in range(n_experts):
        idx = torch.nonzero(m[:, i]).flatten()
        if len(idx) > 0:
            A_i = P["A"][i * rank : (i + 1) * rank]
            B_i = P["B"][:, i * rank : (i + 1) * rank]
            expert = (X[idx] @ A_i.T) @ B_i.T * scaling
            out = out.index_add(0, idx, w[idx, i, None] * expert)
    return y + out.reshape(*x.shape[:-1], -1)


def make_layer(dtype=torch.float32, seed=0, gate_std=0.5, **cfg):
    kwargs = {"num_experts": N, "r": R, "lora_alpha": 6, "init_lora_weights": False}
    kwargs.update(cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = AdaMoLELinear(nn.Linear(D_IN, D_OUT), "default", config=AdaMoLEConfig(**kwargs))
        if "default" in layer.lora_gate:
            with torch.no_grad():
                layer.lora_gate["default"].weight.normal_(0, gate_std)
    return layer.to(dtype)


def reference_params(layer):
    return {
        PARAMETER_SYMBOLS[name]: p.detach().to("cpu", torch.float64).requires_grad_()
        for name, p in layer.named_parameters()
    }


def run_reference(layer, x, P):
    a = "default"
    return loop_reference(
        x,
        P,
        routing=layer.routing[a],
        n_experts=layer.num_experts[a],
        rank=layer.r[a],
        scaling=layer.scaling[a],
        tau_max=layer.tau_max[a],
        top_k=layer.top_k[a],
    )


def inputs(dtype, seed=1, shape=(2, 13), device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, D_IN, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    g = torch.randn(*shape, D_OUT, generator=gen).to(device)
    return x, g


def assert_matches(fast, ref, dtype, what):
    fast = fast.detach().to("cpu", torch.float64)
    ref = ref.detach()
    if dtype == torch.float32:
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")
    else:
        err = (fast - ref).norm() / ref.norm().clamp_min(1e-12)
        assert err <= 2e-2, f"{what}: relative error {err:.3g} > 2e-2"


def compare_with_reference(layer, dtype, seed=1, device="cpu"):
    x, g = inputs(dtype, seed, device=device)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (*x.shape[:-1], D_OUT)
    (out.float() * g).sum().backward()
    P = reference_params(layer)
    x_ref = x.detach().to("cpu", torch.float64).requires_grad_()
    ref = run_reference(layer, x_ref, P)
    (ref * g.cpu().double()).sum().backward()
    assert_matches(out, ref, dtype, "output")
    assert_matches(x.grad, x_ref.grad, dtype, "grad x")
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert_matches(p.grad, P[PARAMETER_SYMBOLS[name]].grad, dtype, f"grad {name}")


# ----------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("expert_compute", ["dense", "gathered"])
def test_layer_matches_loop_reference(routing, dtype, expert_compute):
    """Outputs and gradients of every parameter equal the per-expert loop (dropout 0)."""
    layer = make_layer(dtype, routing=routing, expert_compute=expert_compute, top_k=2)
    compare_with_reference(layer, dtype)


def test_reference_routing_is_not_trivial():
    """The test inputs give mixed routing: some tokens with 1, some with several experts."""
    layer = make_layer(routing="adaptive")
    x, _ = inputs(torch.float32)
    logits = torch.cat(
        [layer.lora_gate["default"].weight, layer.lora_threshold["default"].weight], 0
    )
    logits = x.detach().reshape(-1, D_IN) @ logits.T
    logits[:, -1] += layer.lora_threshold["default"].bias.detach()
    mask = _route(logits, "adaptive", N, 1 / N, 2).mask
    counts = mask.sum(-1)
    assert counts.min() >= 1 and counts.max() >= 2 and (counts == 1).any()


@pytest.mark.parametrize("routing", ["adaptive", "topk", "threshold"])
def test_unfused_path_with_dropout_module(routing):
    """With an active (here: deterministic) dropout, the experts see dropped inputs, the router
    does not; the unfused code path matches the reference given the same mask."""
    layer = make_layer(routing=routing, lora_dropout=0.1).train()
    gen = torch.Generator().manual_seed(5)
    keep = (torch.rand(2 * 13, D_IN, generator=gen) > 0.3).float()

    class FixedDropout(nn.Module):
        def forward(self, x):
            return x * keep.to(x.dtype)

    layer.lora_dropout["default"] = FixedDropout()
    x, g = inputs(torch.float32)
    out = layer(x)
    (out * g).sum().backward()
    P = reference_params(layer)
    # reference: router and base on x, experts on the masked x
    x64 = x.detach().double()
    full = _reference_split_inputs(layer, x64, x64.reshape(-1, D_IN) * keep.double(), P)
    assert_matches(out, full, torch.float32, "output")
    (full * g.double()).sum().backward()
    for name, p in layer.named_parameters():
        assert_matches(p.grad, P[PARAMETER_SYMBOLS[name]].grad, torch.float32, f"grad {name}")


def _reference_split_inputs(layer, x, x_experts, P):
    """Loop reference whose experts read ``x_experts`` and whose router and base read ``x``."""
    a = "default"
    n, r = layer.num_experts[a], layer.r[a]
    base = x @ P["W0"].T + P["b0"]
    X = x.reshape(-1, D_IN)
    p = torch.softmax(X @ P["Wg"].T, -1)
    routing = layer.routing[a]
    if routing == "adaptive":
        tau = torch.sigmoid(X @ P["Wt"].T + P["bt"]) * layer.tau_max[a]
        s_ = p - tau
        m = s_ >= 0
        w = torch.where(m, s_, torch.zeros_like(s_))
    elif routing == "threshold":
        m = p >= layer.tau_max[a]
        w = torch.where(m, p, torch.zeros_like(p))
    else:
        _vals, idx = torch.topk(p, layer.top_k[a], -1)
        m = torch.zeros_like(p, dtype=torch.bool).scatter(1, idx, True)
        w = torch.where(m, p, torch.zeros_like(p))
    tot = w.sum(-1, keepdim=True)
    w = w / torch.where(tot == 0, torch.ones_like(tot), tot)
    out = torch.zeros(X.shape[0], D_OUT, dtype=X.dtype)
    for i in range(n):
        idx = torch.nonzero(m[:, i]).flatten()
        if len(idx):
            e = (x_experts[idx] @ P["A"][i * r : (i + 1) * r].T) @ P["B"][:, i * r : (i + 1) * r].T
            out = out.index_add(0, idx, w[idx, i, None] * e * layer.scaling[a])
    return base + out.reshape(*x.shape[:-1], -1)


def test_gathered_padded_fallback_matches(monkeypatch):
    """The padded-bmm fallback of the gathered form (used where ``torch._grouped_mm`` is not
    available for the device/dtype) gives the same outputs and gradients."""
    import sparsekit.adamole._layer as layer_mod

    def unavailable(*args, **kwargs):
        raise RuntimeError("grouped mm not supported here")

    monkeypatch.setattr(layer_mod.torch, "_grouped_mm", unavailable, raising=False)
    layer = make_layer(routing="adaptive", expert_compute="gathered")
    compare_with_reference(layer, torch.float32)


def test_single_expert_without_router_is_plain_lora():
    """num_experts=1, routing='dense': no gate, no threshold; y = W0x + B A x * alpha/r."""
    layer = make_layer(num_experts=1, routing="dense")
    assert "default" not in layer.lora_gate and "default" not in layer.lora_threshold
    x, _ = inputs(torch.float32)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + (x @ A.T @ B.T) * (6 / R)
    torch.testing.assert_close(layer(x), expected)


def test_dense_and_gathered_agree_with_zero_active_tokens():
    """tau_max > 1/N with a large threshold bias: tokens with no active expert get exactly the
    base output, in both expert forms."""
    outs = []
    for compute in ("dense", "gathered"):
        layer = make_layer(routing="adaptive", max_threshold=2 / N, expert_compute=compute)
        with torch.no_grad():
            layer.lora_threshold["default"].bias.fill_(20.0)
        x, _ = inputs(torch.float32)
        out = layer(x)
        base = layer.base_layer(x)
        same = (out == base).all(-1)
        assert same.any() and not same.all()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- routing rules
def _random_logits(n_tokens, n_experts, scale, seed, with_threshold=True):
    gen = torch.Generator().manual_seed(seed)
    cols = n_experts + (1 if with_threshold else 0)
    logits = torch.randn(n_tokens, cols, generator=gen) * scale
    return logits


@pytest.mark.parametrize("n_experts", [2, 4, 8, 16])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_tau_max_at_most_one_over_n_keeps_an_expert(n_experts, scale):
    """tau_max <= 1/N => every token has at least one active expert, weights sum to 1."""
    logits = _random_logits(4000, n_experts, scale, seed=n_experts)
    logits[:100, -1] = 50.0  # sigmoid -> 1: tau at its maximum
    for tau_max in (1 / n_experts, 0.5 / n_experts):
        w, mask, _, tau, *_ = _route(logits, "adaptive", n_experts, tau_max, 2)
        assert mask.sum(-1).min() >= 1
        torch.testing.assert_close(w.sum(-1), torch.ones(4000))
        assert (tau < tau_max + 1e-7).all()


def test_tau_max_above_one_over_n_can_leave_tokens_without_expert():
    logits = _random_logits(2000, 4, 0.1, seed=0)
    logits[:, -1] = 10.0
    w, mask, _, _, *_ = _route(logits, "adaptive", 4, 2 / 4, 2)
    zero = mask.sum(-1) == 0
    assert zero.float().mean() > 0.5
    assert (w[zero] == 0).all()


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_topk_activates_exactly_k(k):
    logits = _random_logits(3000, 8, 2.0, seed=k, with_threshold=False)
    w, mask, _, _, *_ = _route(logits, "topk", 8, 1 / 8, k)
    assert (mask.sum(-1) == k).all()
    assert ((w > 0) == mask).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3000))


def test_threshold_routing_uses_fixed_threshold():
    logits = _random_logits(1000, 4, 2.0, seed=3, with_threshold=False)
    w, mask, _, tau, *_ = _route(logits, "threshold", 4, 0.25, 2)
    p = torch.softmax(logits, -1)
    assert tau == 0.25 and torch.equal(mask, p >= 0.25) and mask.sum(-1).min() >= 1
    torch.testing.assert_close(w, torch.where(mask, p, 0) / (p * mask).sum(-1, keepdim=True))


def test_dense_routing_is_softmax():
    logits = _random_logits(100, 4, 2.0, seed=3, with_threshold=False)
    w, mask, _, tau, *_ = _route(logits, "dense", 4, 0.25, 2)
    torch.testing.assert_close(w, torch.softmax(logits, -1))
    assert mask.all() and tau is None


def test_router_runs_in_float32_for_bfloat16_layers():
    """With bf16 weights and inputs, the router logits are computed in float32: the routing
    equals the one computed in float32 from the same bf16 values."""
    layer = make_layer(torch.bfloat16, routing="adaptive")
    x, _ = inputs(torch.bfloat16)
    seen = {}
    import sparsekit.adamole._layer as layer_mod

    original = layer_mod._route

    def spy(logits, *args):
        seen["dtype"] = logits.dtype
        return original(logits, *args)

    layer_mod._route = spy
    try:
        layer(x)
    finally:
        layer_mod._route = original
    assert seen["dtype"] == torch.float32


def test_router_stays_float32_under_autocast():
    """Under torch.autocast (bf16) the router logits are still computed in float32: they equal
    the logits of the same layer without autocast."""
    import sparsekit.adamole._layer as layer_mod

    layer = make_layer(torch.float32, routing="adaptive")
    x, _ = inputs(torch.float32)
    seen = []
    original = layer_mod._route

    def spy(logits, *args):
        seen.append(logits.detach().clone())
        return original(logits, *args)

    layer_mod._route = spy
    try:
        layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
    finally:
        layer_mod._route = original
    assert seen[1].dtype == torch.float32 and out.dtype == torch.bfloat16
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-6, atol=1e-6)


def test_init_follows_lora_convention():
    """Default init: B = 0 (adapter starts as identity), A kaiming-uniform with fan-in d_in."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = AdaMoLELinear(nn.Linear(64, 32), "default", config=AdaMoLEConfig(num_experts=8))
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert A.shape == (8 * 4, 64) and B.shape == (32, 8 * 4)
    assert (B == 0).all()
    bound = 1 / math.sqrt(64)
    assert A.abs().max() <= bound and A.abs().max() > 0.8 * bound
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_scaling_and_rslora():
    layer = make_layer(lora_alpha=16, r=4)
    assert layer.scaling["default"] == 4.0
    layer = make_layer(lora_alpha=16, r=4, use_rslora=True)
    assert layer.scaling["default"] == 8.0


def test_mixed_adapter_batches_raise():
    layer = make_layer()
    with pytest.raises(ValueError, match="mixed-adapter"):
        layer(torch.randn(2, D_IN), adapter_names=["default", "default"])


def test_layer_rejects_plain_lora_config():
    from peft import LoraConfig

    with pytest.raises(TypeError, match="AdaMoLEConfig"):
        AdaMoLELinear(nn.Linear(4, 4), "default", config=LoraConfig(r=2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"routing": "softmax"}, "routing"),
        ({"num_experts": 0}, "num_experts"),
        ({"r": 0}, "'r'"),
        ({"routing": "topk", "top_k": 9, "num_experts": 8}, "top_k"),
        ({"routing": "topk", "top_k": 0}, "top_k"),
        ({"max_threshold": 1.5}, "max_threshold"),
        ({"max_threshold": 0.0}, "max_threshold"),
        ({"aux_loss_reduction": "max"}, "aux_loss_reduction"),
        ({"expert_compute": "sparse"}, "expert_compute"),
        ({"use_dora": True}, "use_dora"),
        ({"lora_bias": True}, "lora_bias"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaMoLEConfig(**kwargs)


def test_config_defaults():
    config = AdaMoLEConfig()
    assert (config.num_experts, config.r, config.lora_alpha) == (8, 4, 16)
    assert config.resolved_max_threshold == 1 / 8
    assert config.routing == "adaptive" and config.expert_compute == "dense"
    assert config._custom_modules == {nn.Linear: AdaMoLELinear}


# ----------------------------------------------------------------------------- CUDA
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("expert_compute", ["dense", "gathered"])
def test_layer_matches_loop_reference_on_cuda(routing, dtype, expert_compute):
    """Same check as on CPU, with the layer on the GPU (reference in float64 on the CPU)."""
    layer = make_layer(dtype, routing=routing, expert_compute=expert_compute, top_k=2).cuda()
    compare_with_reference(layer, dtype, device="cuda")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("routing", ROUTINGS)
def test_dense_form_has_no_host_sync_on_cuda(routing):
    """Forward, aux loss, routing statistics and backward of the dense form never synchronise
    with the host (torch raises on any synchronising call in sync-debug 'error' mode)."""
    from sparsekit.adamole import collect_aux_loss

    layer = make_layer(torch.bfloat16, routing=routing).cuda()
    for name, p in layer.named_parameters():  # adapters in float32, as peft keeps them
        if "lora_" in name:
            p.data = p.data.float()
    x, g = inputs(torch.bfloat16, device="cuda")
    mask = torch.ones(x.shape[:-1], device="cuda")
    mask[1, 7:] = 0

    def step():
        with collect_aux_loss(layer, attention_mask=mask) as aux:
            out = layer(x)
        ((out.float() * g).sum() + aux.loss).backward()

    step()  # warm-up: first-call allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
