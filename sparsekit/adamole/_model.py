"""peft integration of AdaMoLE: target-module detection, adapter injection and loading.

The auxiliary loss and the routing statistics live in ``_routing.py``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import fields

from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ._config import AdaMoLEConfig
from ._layer import AdaMoLELinear

__all__ = [
    "default_target_modules",
    "get_adamole_model",
    "load_adamole_model",
]

# Attention projections of common Hugging Face families, most specific first. Each entry:
# (family, required names, optional extra names). Names are module-name suffixes as peft matches
# them (``key == name or key.endswith("." + name)``).
_TARGET_FAMILIES = (
    ("llama-like", ("q_proj", "k_proj", "v_proj"), ("o_proj", "out_proj")),
    ("bert-like", ("query", "key", "value"), ("attention.output.dense",)),
    ("deberta-like", ("query_proj", "key_proj", "value_proj"), ("attention.output.dense",)),
    ("distilbert-like", ("q_lin", "k_lin", "v_lin"), ("out_lin",)),
    ("t5/mpnet-like", ("q", "k", "v"), ("o",)),
    ("fused-qkv", ("query_key_value",), ()),
    ("fused-qkv", ("qkv_proj",), ("o_proj", "out_proj")),
    ("fused-qkv", ("Wqkv",), ("out_proj",)),
)


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _has_suffix(names, suffix):
    return any(name == suffix or name.endswith("." + suffix) for name in names)


def default_target_modules(model: nn.Module) -> list[str]:
    """Auto-detect the attention projections to adapt.

    Llama-like models (Llama, Mistral, Qwen, Gemma, OPT, ...): ``q_proj, k_proj, v_proj, o_proj``
    (or ``out_proj``). BERT-like encoders (BERT, RoBERTa, MiniLM, ELECTRA, ...): ``query, key,
    value`` and the attention output projection ``attention.output.dense``. Also DeBERTa,
    DistilBERT, T5/MPNet and fused-QKV layouts. Fallback: every ``nn.Linear`` whose qualified name
    contains ``attn`` or ``attention``.

    Parameters
    ----------
    model : nn.Module
        The base model (a ``transformers`` model or any module with ``nn.Linear`` layers).

    Returns
    -------
    list of str
        Module-name suffixes, suitable for ``AdaMoLEConfig(target_modules=...)``.

    Raises
    ------
    ValueError
        If no ``nn.Linear`` attention projection can be identified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"default_target_modules expects a torch nn.Module; got {type(model)}.")
    names = _linear_names(model)
    for _family, required, optional in _TARGET_FAMILIES:
        if all(_has_suffix(names, n) for n in required):
            return list(required) + [n for n in optional if _has_suffix(names, n)]
    fallback = sorted(
        {name.rsplit(".", 1)[-1] for name in names if "attn" in name or "attention" in name}
    )
    if fallback:
        return fallback
    raise ValueError(
        f"Could not auto-detect attention projections to adapt in {type(model).__name__}: it has "
        "no nn.Linear named like q_proj/k_proj/v_proj, query/key/value or inside an attention "
        "module (AdaMoLE adapts nn.Linear layers only). Pass target_modules explicitly, e.g. "
        "AdaMoLEConfig(target_modules=['q_proj', 'v_proj'])."
    )


def _check_injection(peft_model):
    layers = [(n, m) for n, m in peft_model.named_modules() if isinstance(m, BaseTunerLayer)]
    foreign = [n for n, m in layers if not isinstance(m, AdaMoLELinear)]
    if foreign:
        raise TypeError(
            "These target modules are not nn.Linear, so peft wrapped them with plain LoRA instead "
            f"of AdaMoLE: {foreign[:5]}{' ...' if len(foreign) > 5 else ''}. Restrict "
            "target_modules to nn.Linear layers."
        )


def _prepared_config(config, model):
    if not isinstance(config, AdaMoLEConfig):
        raise TypeError(
            f"config must be an AdaMoLEConfig; got {type(config).__name__}. Build one with "
            "sparsekit.adamole.AdaMoLEConfig(num_experts=..., r=..., ...)."
        )
    config = copy.deepcopy(config)
    if config.target_modules is None:
        config.target_modules = set(default_target_modules(model))
    config._register_custom_module({nn.Linear: AdaMoLELinear})
    return config


def get_adamole_model(
    model: nn.Module,
    config: AdaMoLEConfig,
    adapter_name: str = "default",
    autocast_adapter_dtype: bool = True,
) -> PeftModel:
    """Inject AdaMoLE layers into a model and wrap it in a :class:`peft.PeftModel`.

    Parameters
    ----------
    model : nn.Module
        The base model, e.g. a ``transformers`` ``PreTrainedModel``; it is modified in place.
    config : AdaMoLEConfig
        The adapter configuration (not modified). ``target_modules=None`` uses
        :func:`default_target_modules`. ``task_type`` selects the peft wrapper (``"SEQ_CLS"``
        makes the classification head trainable and saved).
    adapter_name : str, default="default"
        Name of the adapter.
    autocast_adapter_dtype : bool, default=True
        The peft option: adapter weights of a float16/bfloat16 model are kept in float32.

    Returns
    -------
    peft.PeftModel
        Only the adapter parameters (experts, gates, thresholds) and ``modules_to_save`` are
        trainable. ``print_trainable_parameters()``, ``disable_adapter()``,
        ``save_pretrained(dir)`` work as for LoRA; reload with :func:`load_adamole_model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module; got {type(model).__name__}.")
    if isinstance(model, PeftModel):  # a wrong value of the right type: ValueError, tested
        raise ValueError(  # noqa: TRY004
            "model is already a PeftModel; pass the base model, or add another adapter with "
            "peft_model.add_adapter(name, AdaMoLEConfig(...))."
        )
    if not isinstance(adapter_name, str) or not adapter_name:
        raise ValueError(f"adapter_name must be a non-empty string; got {adapter_name!r}.")
    config = _prepared_config(config, model)
    peft_model = get_peft_model(
        model, config, adapter_name=adapter_name, autocast_adapter_dtype=autocast_adapter_dtype
    )
    _check_injection(peft_model)
    return peft_model


def _read_adapter_config(adapter_dir) -> AdaMoLEConfig:
    path = os.path.join(os.fspath(adapter_dir), "adapter_config.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"No adapter_config.json in {adapter_dir!r}; save an adapter there with "
            "peft_model.save_pretrained(dir) first."
        )
    with open(path) as fh:
        raw = json.load(fh)
    if "num_experts" not in raw or "routing" not in raw:
        raise ValueError(
            f"{path} is not an AdaMoLE adapter configuration (no num_experts/routing); load plain "
            "LoRA adapters with peft.PeftModel.from_pretrained."
        )
    known = {f.name for f in fields(AdaMoLEConfig) if f.init}
    unknown = sorted(set(raw) - known - {"runtime_config"})
    if unknown:
        warnings.warn(f"Ignoring unknown keys in {path}: {unknown}.")
    return AdaMoLEConfig(**{k: v for k, v in raw.items() if k in known})


def load_adamole_model(
    model: nn.Module, adapter_dir, adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load an AdaMoLE adapter saved with ``peft_model.save_pretrained(adapter_dir)``.

    peft does not persist custom modules, so the configuration is read back as an
    :class:`AdaMoLEConfig` (which registers the custom layer) before peft loads the safetensors.

    Parameters
    ----------
    model : nn.Module
        A fresh base model of the same architecture as the one the adapter was trained on.
    adapter_dir : str or path-like
        Directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
    adapter_name : str, default="default"
        Name given to the loaded adapter.
    is_trainable : bool, default=False
        Whether the adapter parameters are trainable after loading (otherwise inference mode).

    Returns
    -------
    peft.PeftModel
        ``model`` with the loaded adapter, checked to hold AdaMoLE layers only.
    """
    if isinstance(model, PeftModel):
        raise ValueError(  # noqa: TRY004
            "model is already a PeftModel; pass a fresh base model, or use "
            "peft_model.load_adapter for an extra adapter."
        )
    config = _prepared_config(_read_adapter_config(adapter_dir), model)
    peft_model = PeftModel.from_pretrained(
        model,
        os.fspath(adapter_dir),
        adapter_name=adapter_name,
        is_trainable=is_trainable,
        config=config,
    )
    _check_injection(peft_model)
    return peft_model
