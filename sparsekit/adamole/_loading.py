"""Model loading and adapter injection for :class:`AdaMoLEClassifier`. Private module.

Resolves ``base_model`` (local directory or hub id), loads the configuration, the tokenizer and
the transformers model for the head (``AutoModelForSequenceClassification`` for
``head="classifier"``, ``AutoModelForCausalLM`` for ``head="lm"``), adds the AdaMoLE adapters
(:func:`sparsekit.adamole.get_adamole_model`) and installs the result on its device.

Decoders without a pad token get the EOS token as pad, set on the tokenizer **and** on the model
config (transformers #34055).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from dataclasses import dataclass

__all__ = [
    "BuiltModel",
    "add_adapters",
    "build_model",
    "cap_max_length",
    "forward_supports",
    "install_model",
    "load_backbone",
    "load_config",
    "load_tokenizer",
    "quiet_peft",
    "quiet_transformers",
    "resolve_base_model",
    "resolve_head",
]

_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


@contextlib.contextmanager
def quiet_transformers(verbose):
    """Silence transformers' load reports and progress bars while loading (restored afterwards)."""
    if verbose and verbose >= 2:
        yield
        return
    from transformers.utils import logging as hf_logging

    old_level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old_level)
        if bars:
            hf_logging.enable_progress_bar()


def _looks_local(path: str) -> bool:
    return path.startswith(_LOCAL_PREFIXES) or os.path.isabs(path) or path.count("/") > 1


def _offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        constants = None
    if getattr(constants, "HF_HUB_OFFLINE", False):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    } or os.environ.get("TRANSFORMERS_OFFLINE", "0").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_base_model(base_model) -> str:
    """Return a loadable string: an existing local directory (absolute) or a hub id."""
    if base_model is None:
        raise ValueError(
            "base_model is required: pass a Hugging Face hub id (e.g. "
            "'sentence-transformers/all-MiniLM-L6-v2') or the path of a local model directory."
        )
    path = os.path.expanduser(os.fspath(base_model))
    if os.path.isdir(path):
        return os.path.abspath(path)
    if os.path.exists(path):
        raise ValueError(
            f"base_model={base_model!r} is a file, not a model directory. Pass the directory that "
            "holds config.json and the weights."
        )
    if _looks_local(path):
        raise ValueError(
            f"base_model={base_model!r} does not exist: no such local directory. Check the path (it is "
            f"resolved relative to the current directory {os.getcwd()!r})."
        )
    return path


def _load_error(base_model, what, exc):
    where = (
        "it is not a local directory, and the Hugging Face Hub is switched off (HF_HUB_OFFLINE/"
        "TRANSFORMERS_OFFLINE), so it can only come from the local cache, where it is not"
        if _offline()
        else "it is not a local directory, and it could not be fetched from the Hugging Face Hub or the "
        "local cache (no network, a typo in the id, or a gated/private model)"
    )
    return ValueError(
        f"Could not load the {what} of base_model={base_model!r}: {where}. Pass the path of a local "
        f"model directory instead. Original error: {type(exc).__name__}: {exc}"
    )


def load_config(base_model):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        if os.path.isdir(base_model):
            raise ValueError(
                f"base_model={base_model!r} is a directory but not a transformers model (no usable "
                f"config.json): {exc}"
            ) from exc
        raise _load_error(base_model, "configuration", exc) from exc


def load_tokenizer(base_model):
    """Load the tokenizer; give it a pad token if it has none (EOS, as most decoders need)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        if os.path.isdir(base_model):
            raise ValueError(
                f"base_model={base_model!r} has no usable tokenizer (tokenizer.json / "
                f"tokenizer_config.json): {exc}"
            ) from exc
        raise _load_error(base_model, "tokenizer", exc) from exc
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(
                f"The tokenizer of base_model={base_model!r} has neither a pad token nor an EOS token, "
                "so batches cannot be padded. Set one and save the tokenizer again, e.g. "
                "`tok.add_special_tokens({'pad_token': '<pad>'}); tok.save_pretrained(path)` (and "
                "resize the model's embeddings), or set `tok.pad_token = <an existing token>`."
            )
        tok.pad_token = tok.eos_token
    return tok


def _is_causal_lm(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def resolve_head(head, config) -> str:
    """``"auto"``: ``"lm"`` for causal decoders (the paper's scorer), ``"classifier"`` otherwise."""
    if head == "auto":
        return "lm" if _is_causal_lm(config) else "classifier"
    if head == "lm" and getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            "head='lm' needs a decoder-only causal language model; this base model is an "
            "encoder-decoder. Use head='classifier'."
        )
    return head


def load_backbone(base_model, *, head, n_classes, torch_dtype, pad_token_id):
    """Load the transformers model for ``head`` with a freshly initialised head where needed."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if head == "classifier":
            model = AutoModelForSequenceClassification.from_pretrained(
                base_model,
                num_labels=n_classes,
                dtype=torch_dtype,
                ignore_mismatched_sizes=True,
            )
            model.config.pad_token_id = pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch_dtype)
            if model.config.pad_token_id is None:
                model.config.pad_token_id = pad_token_id
    except ValueError as exc:
        msg = str(exc)
        if "Unrecognized configuration class" in msg or "not supported" in msg.lower():
            kind = (
                "sequence classification" if head == "classifier" else "causal language modelling"
            )
            other = "lm" if head == "classifier" else "classifier"
            raise ValueError(
                f"head={head!r}: transformers has no {kind} class for base_model={base_model!r} "
                f"({msg.splitlines()[0][:200]}). Try head={other!r}."
            ) from exc
        raise
    except OSError as exc:
        raise _load_error(base_model, "weights", exc) from exc
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def forward_supports(model) -> set:
    """Names of the optional keyword arguments the base model's forward accepts."""
    base = model
    for attr in ("get_base_model",):
        if hasattr(base, attr):
            base = base.get_base_model()
    params = inspect.signature(base.forward).parameters
    return {n for n in ("position_ids", "logits_to_keep", "token_type_ids") if n in params}


@contextlib.contextmanager
def quiet_peft():
    """Hide peft's deprecation notice about transformers' ``is_gradient_checkpointing``."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def cap_max_length(max_length, config) -> int:
    """``max_length`` capped at the number of positions the model can embed."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and getattr(config, "model_type", "") in (
        "roberta",
        "xlm-roberta",
        "camembert",
    ):
        limit -= 2  # padding_idx offset in learned position embeddings
    return int(min(max_length, limit)) if limit else int(max_length)


def add_adapters(backbone, est, task_type):
    """Wrap ``backbone`` in a PeftModel with fresh AdaMoLE adapters from ``est``'s parameters."""
    from ._config import AdaMoLEConfig
    from ._model import get_adamole_model

    target = est.target_modules
    if isinstance(target, tuple):
        target = list(target)
    config = AdaMoLEConfig(
        r=est.expert_rank,
        lora_alpha=est.lora_alpha,
        lora_dropout=est.lora_dropout,
        target_modules=target,
        num_experts=est.num_experts,
        max_threshold=est.max_threshold,
        routing=est.routing,
        top_k=est.top_k,
        balance_score=est.balance_score,
        threshold_budget=est.threshold_budget,
        threshold_entropy=est.threshold_entropy,
        expert_init=est.expert_init,
        task_type=task_type,
    )
    with quiet_peft():
        return get_adamole_model(backbone, config)


def install_model(model, device, gradient_checkpointing):
    """Move to ``device``, keep trainable weights in float32, enable checkpointing if asked."""
    import torch

    model.to(device)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if gradient_checkpointing:
        base = model.get_base_model()
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"gradient_checkpointing=True, but {type(base).__name__} does not support "
                "gradient checkpointing. Set gradient_checkpointing=False."
            )
        kwargs = {"use_reentrant": False}  # reentrant checkpointing would lose the aux loss
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.eval()
    return model


@dataclass
class BuiltModel:
    """What :func:`build_model` loads for a fresh fit."""

    tokenizer: object
    model: object  # peft.PeftModel with fresh adapters, not yet on its device
    strategy: object  # the head strategy: ClassifierHead or LMHead (see _heads.py)
    max_length: int


def build_model(est, classes, is_pair, *, init_seed):
    """Load the tokenizer and backbone of ``est.base_model_`` and add fresh AdaMoLE adapters.

    Resolves the head (``"auto"``: ``"lm"`` for causal decoders) and checks ``label_words``
    against it. The head and adapters are initialised under ``init_seed``.
    """
    from . import _device, _heads

    config = load_config(est.base_model_)
    head_name = resolve_head(est.head, config)
    if est.label_words is not None and head_name != "lm":
        raise ValueError(
            f"label_words is only used by head='lm', but the head is {head_name!r}. Remove "
            "label_words or set head='lm' (for a causal language model)."
        )
    tokenizer = load_tokenizer(est.base_model_)
    strategy = _heads.make_head(
        head_name,
        classes=classes,
        label_words=est.label_words,
        is_pair=is_pair,
        tokenizer=tokenizer,
    )
    with _device.local_torch_rng(init_seed, est.device_):
        backbone = load_backbone(
            est.base_model_,
            head=head_name,
            n_classes=len(classes),
            torch_dtype=_device.torch_dtype(est.dtype_),
            pad_token_id=tokenizer.pad_token_id,
        )
        model = add_adapters(backbone, est, strategy.task_type)
    return BuiltModel(tokenizer, model, strategy, cap_max_length(est.max_length, config))
