"""The two heads of :class:`AdaMoLEClassifier`, as small strategy objects. Private module.

A head knows how texts are encoded for it, how the class logits come out of the model and which
loss trains it; the estimator and the trainer only call these methods (no ``head_ ==`` branches
elsewhere).

* :class:`ClassifierHead` (``head="classifier"``): ``AutoModelForSequenceClassification``; the new
  head is trained and saved with the adapters (peft ``SEQ_CLS`` puts it in ``modules_to_save``).
* :class:`LMHead` (``head="lm"``): ``AutoModelForCausalLM`` scored as the AdaMoLE paper does: a
  multiple-choice prompt ending in ``"Answer:"``; the class scores are the next-token logits of the
  answer letters (or label words). Only the answer token is a training target (the prompt is
  masked from the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _data

__all__ = [
    "ClassifierHead",
    "LMHead",
    "PromptTemplate",
    "answer_token_ids",
    "make_head",
    "make_template",
]


class ClassifierHead:
    """A sequence-classification head: the model's logits are the class logits."""

    name = "classifier"
    task_type = "SEQ_CLS"  # peft task type: the head is trained and saved with the adapters
    left_pad = False

    def encode(self, tokenizer, texts, is_pair, max_length) -> _data.EncodedTexts:
        """Token ids of ``texts`` (the tokenizer adds its special tokens)."""
        return _data.encode_for_classifier(tokenizer, texts, is_pair, max_length)

    def forward(self, model, batch, supports):
        """The model's output logits for a batch (here: over the classes)."""
        return model(**batch).logits

    def class_logits(self, logits):
        """Class logits from the output of :meth:`forward`."""
        return logits

    def loss(self, logits, y):
        """Cross-entropy of the output of :meth:`forward` against class indices ``y``."""
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), y)


class LMHead:
    """The paper's scorer: next-token logits of the answer tokens after a multiple-choice prompt.

    Parameters
    ----------
    template : PromptTemplate
        The prompt.
    answer_token_ids : list of int
        Token scored for each class, in ``classes_`` order.
    """

    name = "lm"
    task_type = "CAUSAL_LM"
    left_pad = True  # the scored position is the last one of every row

    def __init__(self, template, answer_token_ids):
        self.template = template
        self.answer_token_ids = list(answer_token_ids)

    def encode(self, tokenizer, texts, is_pair, max_length) -> _data.EncodedTexts:
        """Token ids of the prompts of ``texts`` (truncation only cuts the texts)."""
        return _data.encode_for_lm(tokenizer, texts, is_pair, max_length, self.template)

    def forward(self, model, batch, supports):
        """Logits over the vocabulary at the last position."""
        kwargs = dict(batch)
        if "logits_to_keep" in supports:
            kwargs["logits_to_keep"] = 1
        return model(**kwargs).logits[:, -1, :]

    def class_logits(self, logits):
        """The vocabulary logits of the answer tokens."""
        return logits[:, self.answer_token_ids]

    def loss(self, logits, y):
        """Causal-LM loss on the answer token only (over the whole vocabulary)."""
        import torch.nn.functional as F

        targets = y.new_tensor(self.answer_token_ids)[y]
        return F.cross_entropy(logits.float(), targets)


def make_head(
    name, *, classes=None, label_words=None, is_pair=False, tokenizer=None, token_ids=None
):
    """Build the head ``name``; the lm head needs ``classes`` and ``tokenizer`` or ``token_ids``."""
    if name == "classifier":
        return ClassifierHead()
    template = make_template(classes, label_words, is_pair)
    if token_ids is None:
        token_ids = answer_token_ids(tokenizer, template)
    return LMHead(template, token_ids)


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
