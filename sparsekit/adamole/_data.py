"""Input validation, tokenisation and batching for :class:`AdaMoLEClassifier`.

Private module: nothing here is public API. Texts are validated into plain Python lists, tokenised once
per call into lists of token ids, and padded into tensors batch by batch.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.utils.multiclass import check_classification_targets, type_of_target

__all__ = [
    "EncodedTexts",
    "check_classes",
    "collate",
    "encode_for_classifier",
    "encode_for_lm",
    "is_missing",
    "iter_batches",
    "to_device",
    "validate_labels",
    "validate_texts",
]


def is_missing(value) -> bool:
    """True for None, NaN, pandas.NA and pandas.NaT."""
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return bool(np.isnan(value))
        except TypeError:  # pragma: no cover - exotic number types
            return False
    return type(value).__name__ in {"NAType", "NaTType"}  # pandas.NA / NaT, without pandas


def _positions(idx, limit=10) -> str:
    idx = list(idx)
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"[{shown}{', ...' if len(idx) > limit else ''}] ({len(idx)} in total)"


def _rows(X, name):
    """The rows of X as a list (strings, or tuples for text pairs)."""
    if isinstance(X, (str, bytes)):
        raise TypeError(
            f"{name} must be a list-like of strings (or of string pairs), got a single string. "
            f"Wrap it in a list: [{X[:30]!r}...]."
        )
    if hasattr(X, "iloc") and hasattr(X, "columns"):  # pandas DataFrame
        if X.shape[1] == 1:
            return X.iloc[:, 0].tolist()
        if X.shape[1] == 2:
            return [tuple(r) for r in X.itertuples(index=False, name=None)]
        raise ValueError(
            f"{name} is a DataFrame with {X.shape[1]} columns; pass one text column, or two columns "
            "for text pairs (e.g. premise and hypothesis)."
        )
    if hasattr(X, "tolist") and hasattr(X, "ndim"):  # numpy array or pandas Series
        if X.ndim == 1:
            return X.tolist()
        if X.ndim == 2 and X.shape[1] in (1, 2):
            return [r[0] for r in X.tolist()] if X.shape[1] == 1 else [tuple(r) for r in X.tolist()]
        raise ValueError(
            f"{name} has shape {X.shape}; expected (n_samples,) texts or (n_samples, 2) text pairs."
        )
    try:
        return list(X)
    except TypeError:
        raise TypeError(
            f"{name} must be a list-like of strings (or of string pairs), got {type(X).__name__}."
        ) from None


_SEQUENCES = (tuple, list, np.ndarray)


def _row_parts(row, i, is_pair, name):
    """The texts of one row: (text,) or (text, text_pair)."""
    if is_pair and (not isinstance(row, _SEQUENCES) or len(row) != 2):
        raise TypeError(
            f"{name} mixes single texts and text pairs (position {i} is "
            f"{type(row).__name__}); pass either only strings or only (text, text_pair) pairs."
        )
    if not is_pair and isinstance(row, _SEQUENCES):
        raise TypeError(
            f"{name} mixes single texts and text pairs (position {i} is a "
            f"{type(row).__name__}); pass either only strings or only (text, text_pair) pairs."
        )
    return tuple(row) if is_pair else (row,)


def _problem(parts):
    """What is wrong with the texts of one row: "missing", a type name, "empty" or None."""
    for part in parts:
        if is_missing(part):
            return "missing"
        if not isinstance(part, str):
            return type(part).__name__
        if not part.strip():
            return "empty"
    return None


def _raise_problems(missing, wrong_type, empty, name):
    if missing:
        raise ValueError(
            f"{name} contains missing values (None/NaN) at positions {_positions(missing)}. Drop those "
            "rows or replace them with real text before calling fit/predict."
        )
    if wrong_type:
        i, t = wrong_type[0]
        raise TypeError(
            f"{name} must contain strings, but position {i} is a {t} ({len(wrong_type)} non-string "
            "entries in total). Convert them with str() if they really are texts."
        )
    if empty:
        raise ValueError(
            f"{name} contains empty or whitespace-only strings at positions {_positions(empty)}. A "
            "language model cannot classify an empty text: drop those rows or fill them in."
        )


def validate_texts(X, *, name="X"):
    """Validate texts or text pairs.

    Parameters
    ----------
    X : list, tuple, numpy array, pandas Series or DataFrame
        Either a sequence of strings, or a sequence of ``(text, text_pair)`` pairs (a 2-column array or
        DataFrame, or a list of 2-tuples/lists).

    Returns
    -------
    texts : list of str or list of tuple of (str, str)
    is_pair : bool
    """
    rows = _rows(X, name)
    if len(rows) == 0:
        raise ValueError(f"{name} is empty: at least one text is needed.")
    is_pair = isinstance(rows[0], _SEQUENCES)
    missing, empty, wrong_type = [], [], []
    out = []
    for i, row in enumerate(rows):
        parts = _row_parts(row, i, is_pair, name)
        problem = _problem(parts)
        if problem == "missing":
            missing.append(i)
        elif problem == "empty":
            empty.append(i)
        elif problem is not None:
            wrong_type.append((i, problem))
        out.append(tuple(str(p) for p in parts) if is_pair else parts[0])
    _raise_problems(missing, wrong_type, empty, name)
    return out, is_pair


def validate_labels(y, n):
    """Validate the labels of ``n`` texts; returns a 1-d array."""
    if y is None:
        raise ValueError("y is required: AdaMoLEClassifier is a supervised classifier.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(
            f"y must be 1-dimensional (one label per text), got shape {y.shape}. Multi-label and "
            "multi-output targets are not supported."
        )
    if len(y) != n:
        raise ValueError(f"X has {n} texts but y has {len(y)} labels; they must match.")
    if y.dtype == object:
        missing = [i for i, v in enumerate(y) if is_missing(v)]
        if missing:
            raise ValueError(f"y contains missing labels (None/NaN) at positions {missing[:10]}.")
    elif y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError("y contains NaN labels.")
    check_classification_targets(y)
    if type_of_target(y) not in ("binary", "multiclass"):
        raise ValueError(f"Unsupported target type {type_of_target(y)!r}.")
    return y


def check_classes(y, classes=None, *, partial=False):
    """The sorted classes of a first fit: ``np.unique(y)``, or of ``classes`` (``partial_fit``)."""
    found = np.unique(y if classes is None else np.asarray(classes))
    if len(found) < 2:
        hint = (
            ". Pass classes=[...] with every class on the first call to partial_fit."
            if partial
            else f" ({found[0]!r}). Check y, or the split that produced it."
        )
        raise ValueError(
            f"AdaMoLEClassifier requires 2 or more distinct classes; got 1 class {hint}"
        )
    unseen = np.setdiff1d(np.unique(y), found)
    if len(unseen):
        raise ValueError(f"y contains labels {unseen.tolist()!r} missing from classes.")
    return found


@dataclass
class EncodedTexts:
    """Token ids (unpadded) of a set of texts."""

    input_ids: list  # list[list[int]]
    token_type_ids: list | None  # list[list[int]] or None
    n_truncated: int


def _warn_truncation(n_truncated, n_total, max_length):
    if n_truncated:
        warnings.warn(
            f"{n_truncated} of {n_total} texts are longer than max_length={max_length} tokens and were "
            "truncated (this warning is emitted once per call). Increase max_length to use more of each "
            "text, at a higher cost.",
            UserWarning,
            stacklevel=4,
        )


def encode_for_classifier(tokenizer, texts, is_pair, max_length) -> EncodedTexts:
    """Tokenise for a sequence-classification head (the tokenizer adds its special tokens)."""
    if is_pair:
        args = ([a for a, _ in texts], [b for _, b in texts])
    else:
        args = (list(texts),)
    kwargs = {"truncation": True, "padding": False, "return_attention_mask": False}
    # One extra token tells truncated sequences apart from sequences of exactly max_length.
    probe = tokenizer(*args, max_length=max_length + 1, **kwargs)
    n_truncated = sum(len(ids) > max_length for ids in probe["input_ids"])
    enc = tokenizer(*args, max_length=max_length, **kwargs) if n_truncated else probe
    _warn_truncation(n_truncated, len(texts), max_length)
    token_type_ids = enc.get("token_type_ids") if is_pair else None
    return EncodedTexts(list(enc["input_ids"]), token_type_ids, n_truncated)


def special_prefix_ids(tokenizer) -> list:
    """Special tokens the tokenizer puts before a text (e.g. BOS), found by comparison."""
    with_special = tokenizer("x y", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x y", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def _truncate_pair(la, lb, budget):
    """Longest-first truncation lengths for two segments that must fit into ``budget`` tokens."""
    if la + lb <= budget:
        return la, lb
    short = min(la, lb)
    if short <= budget // 2:
        keep_short, keep_long = short, budget - short
    else:
        keep_long, keep_short = budget - budget // 2, budget // 2
    return (keep_long, keep_short) if la >= lb else (keep_short, keep_long)


def encode_for_lm(tokenizer, texts, is_pair, max_length, template) -> EncodedTexts:
    """Tokenise multiple-choice prompts for the ``head="lm"`` scorer.

    The prompt is assembled from token pieces so that truncation only ever cuts the texts, never the
    "Choices ... Answer:" part. ``template`` is a :class:`sparsekit.adamole._heads.PromptTemplate`.
    """

    def enc(strings):
        return tokenizer(list(strings), add_special_tokens=False)["input_ids"]

    prefix = special_prefix_ids(tokenizer)
    if is_pair:
        fixed = enc([template.first_field, "\n" + template.second_field, "\n" + template.suffix])
        seg_a = enc(" " + a for a, _ in texts)
        seg_b = enc(" " + b for _, b in texts)
    else:
        fixed = enc([template.first_field, "\n" + template.suffix])
        seg_a = enc(" " + t for t in texts)
        seg_b = None
    n_fixed = len(prefix) + sum(len(f) for f in fixed)
    budget = max_length - n_fixed
    min_budget = 2 if is_pair else 1
    if budget < min_budget:
        raise ValueError(
            f"max_length={max_length} is too small for the lm-head prompt: the template and the "
            f"answer choices alone take {n_fixed} tokens. Increase max_length (or use shorter class "
            "names / label_words)."
        )
    input_ids = []
    n_truncated = 0
    for i in range(len(texts)):
        if is_pair:
            la, lb = _truncate_pair(len(seg_a[i]), len(seg_b[i]), budget)
            n_truncated += (la, lb) != (len(seg_a[i]), len(seg_b[i]))
            ids = prefix + fixed[0] + seg_a[i][:la] + fixed[1] + seg_b[i][:lb] + fixed[2]
        else:
            n_truncated += len(seg_a[i]) > budget
            ids = prefix + fixed[0] + seg_a[i][:budget] + fixed[1]
        input_ids.append(ids)
    _warn_truncation(n_truncated, len(texts), max_length)
    return EncodedTexts(input_ids, None, n_truncated)


def _pad(seqs, length, value, left):
    out = np.full((len(seqs), length), value, dtype=np.int64)
    for row, s in enumerate(seqs):
        if left:
            out[row, length - len(s) :] = s
        else:
            out[row, : len(s)] = s
    return out


def collate(encoded: EncodedTexts, index, pad_token_id, *, left_pad, pad_multiple=1):
    """Pad the sequences ``index`` into a batch of numpy arrays."""
    seqs = [encoded.input_ids[i] for i in index]
    length = max(len(s) for s in seqs)
    if pad_multiple > 1:
        length = -(-length // pad_multiple) * pad_multiple
    batch = {
        "input_ids": _pad(seqs, length, pad_token_id, left_pad),
        "attention_mask": _pad([[1] * len(s) for s in seqs], length, 0, left_pad),
    }
    if encoded.token_type_ids is not None:
        batch["token_type_ids"] = _pad(
            [encoded.token_type_ids[i] for i in index], length, 0, left_pad
        )
    if left_pad:
        # positions count real tokens only, so a left-padded prompt sees the same positions as an
        # unpadded one
        batch["position_ids"] = np.clip(np.cumsum(batch["attention_mask"], axis=1) - 1, 0, None)
    return batch


def iter_batches(n, batch_size, *, order=None):
    """Yield index arrays of at most ``batch_size`` from ``order`` (default ``range(n)``)."""
    order = np.arange(n) if order is None else np.asarray(order)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def to_device(batch, device, supports):
    """Torch tensors on ``device``; drops the optional inputs the model's forward lacks."""
    import torch

    out = {}
    for k, v in batch.items():
        if k in ("token_type_ids", "position_ids") and k not in supports:
            continue
        out[k] = torch.from_numpy(v).to(device, non_blocking=True)
    return out
