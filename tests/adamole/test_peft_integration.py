"""AdaMoLE inside peft: injection, accounting, enable/disable, save/load, N=1 == LoRA, merging."""

import json

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from sparsekit.adamole import (
    AdaMoLEConfig,
    AdaMoLELinear,
    collect_aux_loss,
    default_target_modules,
    get_adamole_model,
    load_adamole_model,
)


def seeded(fn, seed=1):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn()


# ----------------------------------------------------------------------------- targets
def test_default_targets_llama_and_bert(tiny_llama_factory, tiny_bert_factory):
    assert default_target_modules(tiny_llama_factory()) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_target_modules(tiny_bert_factory()) == [
        "query",
        "key",
        "value",
        "attention.output.dense",
    ]


def test_default_targets_fallback_and_error():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.ModuleDict({"wq": nn.Linear(4, 4), "wo": nn.Linear(4, 4)})
            self.mlp = nn.Linear(4, 4)

    assert default_target_modules(Attn()) == ["wo", "wq"]
    with pytest.raises(ValueError, match="Pass target_modules explicitly"):
        default_target_modules(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        default_target_modules("bert-base-uncased")


def test_injection_auto_targets_only_attention(tiny_llama_factory, tiny_bert_factory):
    model = get_adamole_model(tiny_llama_factory(), AdaMoLEConfig(num_experts=2, r=2))
    adapted = {n for n, m in model.named_modules() if isinstance(m, AdaMoLELinear)}
    assert len(adapted) == 8 and all(
        n.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj"} for n in adapted
    )
    bert = get_adamole_model(tiny_bert_factory(), AdaMoLEConfig(task_type="SEQ_CLS"))
    adapted = sorted(n for n, m in bert.named_modules() if isinstance(m, AdaMoLELinear))
    assert len(adapted) == 8
    assert not any(
        "intermediate" in n or "pooler" in n or n.endswith("output.dense") and "attention" not in n
        for n in adapted
    )


def test_conv1d_targets_are_refused():
    """GPT-2's c_attn is a transformers Conv1D, not nn.Linear: never silently plain LoRA."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16)
    )
    with pytest.raises(TypeError, match="not nn.Linear"):
        get_adamole_model(model, AdaMoLEConfig(target_modules=["c_attn"]))


def test_argument_errors(tiny_llama_factory):
    with pytest.raises(TypeError, match="AdaMoLEConfig"):
        get_adamole_model(tiny_llama_factory(), LoraConfig(r=2))
    model = get_adamole_model(tiny_llama_factory(), AdaMoLEConfig())
    with pytest.raises(ValueError, match="already a PeftModel"):
        get_adamole_model(model, AdaMoLEConfig())
    with pytest.raises(TypeError, match="nn.Module"):
        get_adamole_model("llama", AdaMoLEConfig())


def test_user_config_is_not_modified(tiny_llama_factory):
    config = AdaMoLEConfig(num_experts=2)
    model = get_adamole_model(tiny_llama_factory(), config)
    assert config.target_modules is None
    assert set(model.peft_config["default"].target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }


# ----------------------------------------------------------------------------- accounting
def expected_adapter_params(model, n, r, routing="adaptive"):
    total = 0
    for _, m in model.named_modules():
        if isinstance(m, AdaMoLELinear):
            d_in, d_out = m.in_features, m.out_features
            total += n * r * (d_in + d_out)  # experts
            if n > 1 or routing == "adaptive":
                total += n * d_in  # gate
            if routing == "adaptive":
                total += d_in + 1  # threshold net
    return total


@pytest.mark.parametrize("routing", ["adaptive", "topk", "dense"])
def test_trainable_parameter_accounting(tiny_llama_factory, routing):
    model = get_adamole_model(
        tiny_llama_factory(), AdaMoLEConfig(num_experts=4, r=2, routing=routing)
    )
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == expected_adapter_params(model, 4, 2, routing) > 0
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in names)
    assert any("lora_gate" in n for n in names)
    assert any("lora_threshold" in n for n in names) == (routing == "adaptive")
    base = sum(p.numel() for p in tiny_llama_factory().parameters())
    assert total == base + trainable


def test_seq_cls_head_is_trainable_and_counted(tiny_bert_factory):
    model = get_adamole_model(
        tiny_bert_factory(num_labels=3), AdaMoLEConfig(num_experts=2, r=2, task_type="SEQ_CLS")
    )
    trainable, _ = model.get_nb_trainable_parameters()
    head = 32 * 3 + 3
    assert trainable == expected_adapter_params(model, 2, 2) + head
    assert any("classifier" in n and p.requires_grad for n, p in model.named_parameters())


def test_paper_parameter_count_per_module():
    """8x4 + gate + threshold on a 4096-wide projection = 299,009 parameters (the paper's count)."""
    layer = AdaMoLELinear(
        nn.Linear(4096, 4096, device="meta"), "default", config=AdaMoLEConfig(num_experts=8, r=4)
    )
    n = sum(p.numel() for n, p in layer.named_parameters() if "lora_" in n)
    assert n == 299_009


# ----------------------------------------------------------------------------- N=1 == LoRA
def test_single_expert_equals_peft_lora(tiny_llama_factory, token_batch):
    """num_experts=1, routing='dense' has LoRA's parameters (same names and shapes) and gives
    peft LoRA's outputs and gradients for the same weights."""
    ids, mask = token_batch
    lora = seeded(
        lambda: get_peft_model(
            tiny_llama_factory(),
            LoraConfig(
                r=4,
                lora_alpha=8,
                init_lora_weights=False,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            ),
        )
    )
    ada = get_adamole_model(
        tiny_llama_factory(),
        AdaMoLEConfig(
            num_experts=1,
            r=4,
            lora_alpha=8,
            routing="dense",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )
    lora_sd = {k: v for k, v in lora.state_dict().items() if "lora_" in k}
    ada_sd = {k: v for k, v in ada.state_dict().items() if "lora_" in k}
    assert {k: v.shape for k, v in lora_sd.items()} == {k: v.shape for k, v in ada_sd.items()}
    ada.load_state_dict(lora_sd, strict=False)
    assert lora.get_nb_trainable_parameters() == ada.get_nb_trainable_parameters()
    for model in (lora, ada):
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        model.logits_ = out.logits
    torch.testing.assert_close(ada.logits_, lora.logits_, rtol=0, atol=1e-6)
    lora_grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    ada_grads = {n: p.grad for n, p in ada.named_parameters() if p.requires_grad}
    assert lora_grads.keys() == ada_grads.keys()
    for name, grad in lora_grads.items():
        torch.testing.assert_close(ada_grads[name], grad, rtol=1e-5, atol=1e-7)
    with collect_aux_loss(ada) as aux:
        ada(input_ids=ids)
    assert len(aux) == 0 and aux.loss.item() == 0.0  # no router, no balancing loss


def test_single_expert_merges_like_lora(tiny_llama_factory, token_batch):
    ids, _ = token_batch
    model = seeded(
        lambda: get_adamole_model(
            tiny_llama_factory(),
            AdaMoLEConfig(num_experts=1, routing="dense", init_lora_weights=False),
        )
    )
    with torch.no_grad():
        before = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        assert not any(isinstance(m, AdaMoLELinear) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)


def test_mixtures_cannot_be_merged(tiny_llama_factory):
    model = get_adamole_model(tiny_llama_factory(), AdaMoLEConfig(num_experts=2))
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()


# ----------------------------------------------------------------------------- enable / disable
def test_disable_adapter_gives_base_outputs(tiny_llama_factory, token_batch):
    ids, mask = token_batch
    with torch.no_grad():
        base_logits = tiny_llama_factory()(input_ids=ids, attention_mask=mask).logits
    model = seeded(
        lambda: get_adamole_model(
            tiny_llama_factory(), AdaMoLEConfig(num_experts=4, r=2, init_lora_weights=False)
        )
    )
    with torch.no_grad():
        adapted = model(input_ids=ids, attention_mask=mask).logits
        assert (adapted - base_logits).abs().max() > 1e-3
        with model.disable_adapter():
            torch.testing.assert_close(
                model(input_ids=ids, attention_mask=mask).logits, base_logits, rtol=0, atol=0
            )
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, adapted)


def test_set_adapter_switches_and_freezes(tiny_llama_factory, token_batch):
    ids, _ = token_batch
    model = seeded(
        lambda: get_adamole_model(
            tiny_llama_factory(), AdaMoLEConfig(num_experts=2, r=2, init_lora_weights=False)
        )
    )
    model.add_adapter(
        "second",
        AdaMoLEConfig(
            num_experts=3,
            r=2,
            routing="topk",
            top_k=1,
            init_lora_weights=False,
            target_modules=["q_proj", "v_proj"],
        ),
    )
    with torch.no_grad():
        first = model(input_ids=ids).logits
        model.set_adapter("second")
        second = model(input_ids=ids).logits
    assert (first - second).abs().max() > 1e-4
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".second" in n for n in trainable)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.num_experts == {"default": 2, "second": 3}


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("routing", ["adaptive", "topk"])
def test_save_and_load_into_fresh_base_model(tiny_llama_factory, token_batch, tmp_path, routing):
    ids, mask = token_batch
    config = AdaMoLEConfig(
        num_experts=4,
        r=2,
        routing=routing,
        max_threshold=0.2,
        init_lora_weights=False,
        aux_loss_reduction="mean",
    )
    model = seeded(lambda: get_adamole_model(tiny_llama_factory(), config)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["num_experts"] == 4 and saved["routing"] == routing
    assert saved["max_threshold"] == 0.2 and saved["aux_loss_reduction"] == "mean"

    loaded = load_adamole_model(tiny_llama_factory(), tmp_path)
    assert isinstance(loaded, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits,
            model(input_ids=ids, attention_mask=mask).logits,
            rtol=0,
            atol=0,
        )
    assert loaded.get_nb_trainable_parameters()[0] == 0
    layer = loaded.base_model.model.model.layers[1].self_attn.o_proj
    assert layer.routing["default"] == routing and layer.tau_max["default"] == 0.2
    trainable = load_adamole_model(tiny_llama_factory(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]


def test_save_and_load_sequence_classifier(tiny_bert_factory, token_batch, tmp_path):
    """The classification head (modules_to_save) is saved and reloaded with the experts."""
    ids, mask = token_batch
    model = seeded(
        lambda: get_adamole_model(
            tiny_bert_factory(num_labels=3),
            AdaMoLEConfig(num_experts=2, r=2, task_type="SEQ_CLS", init_lora_weights=False),
        )
    )
    with torch.no_grad():
        head = model.base_model.model.classifier.modules_to_save["default"]
        head.weight.add_(1.0)
    model.eval().save_pretrained(tmp_path)
    loaded = load_adamole_model(tiny_bert_factory(num_labels=3), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits,
            model(input_ids=ids, attention_mask=mask).logits,
            rtol=0,
            atol=0,
        )


def test_load_errors(tiny_llama_factory, tmp_path):
    with pytest.raises(ValueError, match="No adapter_config.json"):
        load_adamole_model(tiny_llama_factory(), tmp_path)
    lora = get_peft_model(tiny_llama_factory(), LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an AdaMoLE adapter"):
        load_adamole_model(tiny_llama_factory(), tmp_path)


def test_bfloat16_model_keeps_float32_adapters(tiny_llama_factory, token_batch):
    ids, mask = token_batch
    model = get_adamole_model(
        tiny_llama_factory().to(torch.bfloat16),
        AdaMoLEConfig(num_experts=4, r=2, init_lora_weights=False),
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.dtype == torch.float32
    assert layer.base_layer.weight.dtype == torch.bfloat16
    with collect_aux_loss(model, attention_mask=mask) as aux:
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    (out.loss + aux.loss).backward()
    assert torch.isfinite(layer.lora_gate["default"].weight.grad).all()
