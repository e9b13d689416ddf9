"""peft integration of AdaMoLE: injection, loading, auxiliary loss and routing statistics."""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ._config import AdaMoLEConfig
from ._layer import AdaMoLELinear

__all__ = [
    "AuxLoss",
    "collect_aux_loss",
    "default_target_modules",
    "get_adamole_model",
    "load_adamole_model",
    "routing_statistics",
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


def _adamole_layers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AdaMoLELinear)]


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
        peft's option: adapter weights of a float16/bfloat16 model are kept in float32.

    Returns
    -------
    peft.PeftModel
        Only the adapter parameters (experts, gates, thresholds) and ``modules_to_save`` are
        trainable. ``print_trainable_parameters()``, ``disable_adapter()``,
        ``save_pretrained(dir)`` work as for LoRA; reload with :func:`load_adamole_model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module; got {type(model).__name__}.")
    if isinstance(model, PeftModel):
        raise ValueError(
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
    """
    if isinstance(model, PeftModel):
        raise ValueError(
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


class AuxLoss:
    """Load-balancing losses of the AdaMoLE layers run inside :func:`collect_aux_loss`.

    Attributes
    ----------
    terms : list of torch.Tensor
        One 0-dim float32 tensor per (adapted module, adapter, forward pass), in call order:
        ``L_mod = N * sum_i f_i * P_i`` (spec §1.4), over non-padding tokens.
    """

    def __init__(self, attention_mask=None, statistics=True, reduction=None, device=None):
        self.statistics = statistics
        self.reduction = reduction
        self.terms: list[torch.Tensor] = []
        self._reductions: list[str] = []
        self._device = device
        self._mask = None
        self._mask_by_device: dict[torch.device, torch.Tensor] = {}
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask)
            if mask.dim() == 0:
                raise ValueError("attention_mask must have one entry per token, e.g. [batch, seq].")
            self._mask = mask.reshape(-1) != 0

    @property
    def loss(self) -> torch.Tensor:
        """The reduced auxiliary loss (0-dim float32 tensor, with grad in training).

        ``"sum"`` adds the module terms (paper parity), ``"mean"`` averages them; it is 0.0 if no
        AdaMoLE layer with a router ran in the context. Not multiplied by any coefficient.
        """
        if not self.terms:
            return torch.zeros((), dtype=torch.float32, device=self._device)
        device = self.terms[0].device
        groups: dict[str, list[torch.Tensor]] = {}
        for term, red in zip(self.terms, self._reductions):
            groups.setdefault(self.reduction or red, []).append(term.to(device))
        total = None
        for red, terms in groups.items():
            stacked = torch.stack(terms)
            value = stacked.sum() if red == "sum" else stacked.mean()
            total = value if total is None else total + value
        return total

    def __len__(self) -> int:
        return len(self.terms)

    def _valid(self, n_tokens, device):
        if self._mask is None:
            return None
        if self._mask.numel() != n_tokens:
            raise ValueError(
                f"attention_mask has {self._mask.numel()} entries but an AdaMoLE layer received "
                f"{n_tokens} tokens; pass the attention_mask of exactly the batch given to the "
                "model (shape [batch, seq_len])."
            )
        valid = self._mask_by_device.get(device)
        if valid is None:
            valid = self._mask.to(device=device, dtype=torch.float32)
            self._mask_by_device[device] = valid
        return valid

    def _record(self, layer, adapter, routing, n_experts, mask, score, tau):
        n_tokens = mask.shape[0]
        valid = self._valid(n_tokens, score.device)
        # The identity hooks keep what the aux loss saves for backward out of a surrounding
        # non-reentrant checkpoint: its recompute (which skips this method) must save exactly
        # the tensors the checkpointed forward saved.
        with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            fmask = mask.to(score.dtype)
            if valid is None:
                frac = fmask.mean(0)
                prob = score.mean(0)
            else:
                denom = valid.sum().clamp_min(1.0)
                frac = (valid @ fmask) / denom
                prob = (valid @ score) / denom
            self.terms.append(n_experts * (frac @ prob))
        self._reductions.append(layer.aux_loss_reduction[adapter])
        if self.statistics:
            _accumulate_statistics(layer, adapter, mask, tau, valid)


def _keep(tensor):
    return tensor


def _accumulate_statistics(layer, adapter, mask, tau, valid):
    with torch.no_grad():
        device = mask.device
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        fmask = mask.to(acc_dtype)
        n_active = fmask.sum(-1)
        zero = (n_active == 0).to(acc_dtype)
        if isinstance(tau, torch.Tensor):
            tau_t = tau.detach().reshape(-1).to(acc_dtype)
        else:
            tau_t = None
        if valid is None:
            count = fmask.new_full((), mask.shape[0])
            load = fmask.sum(0)
            active, zeros = n_active.sum(), zero.sum()
            if tau_t is not None:
                tau_sum, tau_sq = tau_t.sum(), (tau_t * tau_t).sum()
        else:
            v = valid.to(acc_dtype)
            count = v.sum()
            load = v @ fmask
            active, zeros = v @ n_active, v @ zero
            if tau_t is not None:
                tau_sum, tau_sq = v @ tau_t, v @ (tau_t * tau_t)
        if tau_t is None:
            fixed = float(tau) if tau is not None else 0.0
            tau_sum, tau_sq = count * fixed, count * (fixed * fixed)
        vec = torch.cat([torch.stack([count, active, zeros, tau_sum, tau_sq]), load])
        acc = layer._routing_accumulators.get(adapter)
        if acc is None or acc.shape != vec.shape or acc.device != vec.device:
            layer._routing_accumulators[adapter] = vec
        else:
            acc.add_(vec)


@contextmanager
def collect_aux_loss(
    model: nn.Module, attention_mask=None, *, statistics: bool = True, reduction: str | None = None
) -> Iterator[AuxLoss]:
    """Collect the AdaMoLE load-balancing loss of the forward passes run inside the context.

    Usage::

        with collect_aux_loss(peft_model, attention_mask=batch["attention_mask"]) as aux:
            out = peft_model(**batch)
        loss = out.loss + coef * aux.loss

    The loss of each adapted module is computed from that forward's routing (spec §1.4: f_i the
    share of tokens activating expert i, P_i the mean score, ``p - tau`` for adaptive routing and
    ``p`` otherwise, ``L = N * sum_i f_i * P_i``) over the tokens where ``attention_mask`` is
    non-zero, and reduced over modules with the adapter's ``aux_loss_reduction``. Nothing is
    stored on the modules, so the value is fresh under ``torch.no_grad`` and correct with DDP and
    non-reentrant gradient checkpointing (recomputes in the backward pass are ignored). With
    reentrant checkpointing the first forward runs without grad, so the loss has no gradient:
    use ``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``.

    Parameters
    ----------
    model : nn.Module
        A model holding AdaMoLE layers (a PeftModel, possibly wrapped in DDP).
    attention_mask : tensor-like of shape (batch, seq_len), default=None
        1 for real tokens, 0 for padding. Padding is excluded from the loss and statistics.
    statistics : bool, default=True
        Also accumulate routing statistics on device (read with :func:`routing_statistics`).
    reduction : {"sum", "mean"} or None, default=None
        Overrides the configured ``aux_loss_reduction``.

    Yields
    ------
    AuxLoss
        ``aux.loss`` is a 0-dim tensor (0.0 if no router ran), not multiplied by a coefficient.
    """
    if reduction not in (None, "sum", "mean"):
        raise ValueError(f"reduction must be None, 'sum' or 'mean'; got {reduction!r}.")
    layers = [m for _, m in _adamole_layers(model)]
    device = None
    for param in model.parameters():
        device = param.device
        break
    collector = AuxLoss(attention_mask, statistics=statistics, reduction=reduction, device=device)
    previous = [layer._adamole_collector for layer in layers]
    for layer in layers:
        layer._adamole_collector = collector
    try:
        yield collector
    finally:
        for layer, prev in zip(layers, previous):
            layer._adamole_collector = prev


def _short_name(name: str) -> str:
    for prefix in ("module.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name


def routing_statistics(model: nn.Module, reset: bool = True) -> dict:
    """Routing statistics accumulated inside :func:`collect_aux_loss` since the last reset.

    The on-device accumulators of every AdaMoLE layer are read with one device-to-host copy.

    Parameters
    ----------
    model : nn.Module
        A model holding AdaMoLE layers.
    reset : bool, default=True
        Clear the accumulators after reading.

    Returns
    -------
    dict
        ``{}`` if no (non-padding) token was routed. Otherwise plain Python values:
        ``mean_active_experts`` (mean over modules of the mean number of active experts per
        token), ``zero_expert_fraction`` (share of tokens with no active expert),
        ``tau_mean``/``tau_std`` (threshold over all tokens and modules; NaN for top-k and dense
        routing, which have none), ``expert_load`` (mean over modules of the share of tokens
        activating each expert) and ``per_module`` (the same per module, keyed by module name).
    """
    items = []
    for name, layer in _adamole_layers(model):
        adapters = list(layer._routing_accumulators)
        for adapter in adapters:
            key = _short_name(name) if len(adapters) == 1 else f"{_short_name(name)}[{adapter}]"
            items.append((key, layer, adapter, layer._routing_accumulators[adapter]))
    if not items:
        return {}
    device = items[0][3].device
    flat = torch.cat([acc.to(device) for *_, acc in items]).cpu().tolist()  # the one sync
    if reset:
        for _, layer, adapter, _ in items:
            layer._routing_accumulators.pop(adapter, None)

    per_module = {}
    loads = []
    tau_n = tau_s = tau_s2 = 0.0
    offset = 0
    for key, layer, adapter, acc in items:
        vec = flat[offset : offset + acc.numel()]
        offset += acc.numel()
        count, active, zeros, t_sum, t_sq = vec[:5]
        if count <= 0:
            continue
        has_tau = layer.routing[adapter] in ("adaptive", "threshold")
        t_mean = t_sum / count if has_tau else math.nan
        t_std = math.sqrt(max(t_sq / count - t_mean * t_mean, 0.0)) if has_tau else math.nan
        load = [v / count for v in vec[5:]]
        per_module[key] = {
            "mean_active_experts": active / count,
            "zero_expert_fraction": zeros / count,
            "tau_mean": t_mean,
            "tau_std": t_std,
            "expert_load": load,
            "tokens": int(count),
        }
        loads.append(load)
        if has_tau:
            tau_n, tau_s, tau_s2 = tau_n + count, tau_s + t_sum, tau_s2 + t_sq
    if not per_module:
        return {}
    n_mod = len(per_module)
    width = max(len(load) for load in loads)
    same = [load for load in loads if len(load) == width]
    pooled_mean = tau_s / tau_n if tau_n else math.nan
    return {
        "mean_active_experts": sum(m["mean_active_experts"] for m in per_module.values()) / n_mod,
        "zero_expert_fraction": sum(m["zero_expert_fraction"] for m in per_module.values()) / n_mod,
        "tau_mean": pooled_mean,
        "tau_std": (math.sqrt(max(tau_s2 / tau_n - pooled_mean**2, 0.0)) if tau_n else math.nan),
        "expert_load": [sum(col) / len(same) for col in zip(*same)],
        "per_module": per_module,
    }
