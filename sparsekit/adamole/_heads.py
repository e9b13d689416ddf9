"""Loading the base model and the two heads of :class:`AdaMoLEClassifier`.

Private module.

* ``head="classifier"``: ``AutoModelForSequenceClassification``; the new head is trained and saved with the
  adapters (peft ``SEQ_CLS`` puts it in ``modules_to_save``). Decoders without a pad token get the EOS
  token as pad, set on the tokenizer **and** on the model config (transformers #34055).
* ``head="lm"``: ``AutoModelForCausalLM`` scored as the AdaMoLE paper does: a multiple-choice prompt
  ending in ``"Answer:"``; the class scores are the next-token logits of the answer letters (or label
  words). Only the answer token is a training target (the prompt is masked from the loss).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass

__all__ = [
    "PromptTemplate",
    "answer_token_ids",
    "forward_supports",
    "load_backbone",
    "load_config",
    "load_tokenizer",
    "quiet_transformers",
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

        if constants.HF_HUB_OFFLINE:
            return True
    except Exception:  # pragma: no cover - very old huggingface_hub
        pass
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


def load_tokenizer(base_model, *, head):
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
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)


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


@dataclass(frozen=True)
class PromptTemplate:
    """The multiple-choice prompt of the lm head.

    Single texts::

        Text: <text>
        Choices:
        A. <class 0>
        B. <class 1>
        Answer: A

    Pairs use ``Text 1:``/``Text 2:``. With ``label_words`` the choices are listed as ``- <word>`` and the
    answer is the word itself.
    """

    first_field: str
    second_field: str
    suffix: str  # "Choices:\n...\nAnswer:"
    answers: tuple  # the strings whose first token is scored, in classes_ order


def make_template(classes, label_words, is_pair) -> PromptTemplate:
    names = [str(c) for c in classes]
    if label_words is None:
        if len(names) > 26:
            raise ValueError(
                f"head='lm' with letter answers supports at most 26 classes, got {len(names)}. Pass "
                "label_words (one distinct word per class) or use head='classifier'."
            )
        answers = tuple(chr(ord("A") + i) for i in range(len(names)))
        choices = "\n".join(f"{a}. {n}" for a, n in zip(answers, names))
    else:
        if isinstance(label_words, dict):
            missing = [c for c in classes if c not in label_words]
            if missing:
                raise ValueError(
                    f"label_words has no entry for the classes {missing!r}; give one word per class."
                )
            answers = tuple(str(label_words[c]) for c in classes)
        else:
            answers = tuple(str(w) for w in label_words)
            if len(answers) != len(names):
                raise ValueError(
                    f"label_words has {len(answers)} words but y has {len(names)} classes; give one word "
                    "per class, in the sorted order of classes_ (or pass a dict class -> word)."
                )
        if any(not a.strip() for a in answers):
            raise ValueError("label_words must be non-empty strings.")
        choices = "\n".join(f"- {a}" for a in answers)
    return PromptTemplate(
        first_field="Text 1:" if is_pair else "Text:",
        second_field="Text 2:",
        suffix=f"Choices:\n{choices}\nAnswer:",
        answers=answers,
    )


def answer_token_ids(tokenizer, template: PromptTemplate) -> list:
    """Token id that starts each answer right after ``"Answer:"``, checked to be distinct."""
    base = tokenizer(template.suffix, add_special_tokens=False)["input_ids"]
    ids = []
    for answer in template.answers:
        full = tokenizer(template.suffix + " " + answer, add_special_tokens=False)["input_ids"]
        if len(full) > len(base) and full[: len(base)] == base:
            ids.append(full[len(base)])
        else:  # the tokenizer merged across the boundary: fall back to the word on its own
            alone = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
            # skip a leading bare-space piece (SentencePiece "▁")
            real = [i for i in alone if tokenizer.decode([i]).strip()]
            ids.append(real[0] if real else alone[0])
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = [a for a, i in zip(template.answers, ids) if unk is not None and i == unk]
    if bad:
        raise ValueError(
            f"The answers {bad!r} map to the tokenizer's unknown token, so the lm head cannot score "
            "them. Pass label_words that the tokenizer knows, or use head='classifier'."
        )
    if len(set(ids)) != len(ids):
        seen = {}
        for a, i in zip(template.answers, ids):
            seen.setdefault(i, []).append(a)
        clash = [v for v in seen.values() if len(v) > 1]
        raise ValueError(
            f"The answers {clash!r} start with the same token, so the lm head cannot tell them apart. "
            "Pass label_words whose first tokens differ, or leave label_words=None (letters A, B, ...)."
        )
    return ids


def forward_supports(model) -> set:
    """Names of the optional keyword arguments the base model's forward accepts."""
    base = model
    for attr in ("get_base_model",):
        if hasattr(base, attr):
            base = base.get_base_model()
    params = inspect.signature(base.forward).parameters
    return {n for n in ("position_ids", "logits_to_keep", "token_type_ids") if n in params}
