"""scikit-learn text classifier that fine-tunes a language model with AdaMoLE adapters."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted

from . import _data, _heads, _train

__all__ = ["AdaMoLEClassifier"]

_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
_META_FILE = "sparsekit_adamole.json"
_FORMAT_VERSION = 1
# fitted attributes written by save_pretrained and restored by from_pretrained (all JSON-friendly)
_SAVED_ATTRS = (
    "base_model_",
    "head_",
    "pair_input_",
    "answer_token_ids_",
    "max_length_",
    "target_modules_",
    "max_threshold_",
    "n_trainable_params_",
    "n_iter_",
    "n_steps_",
    "warmup_steps_",
    "history_",
    "expert_usage_",
    "best_epoch_",
)


class AdaMoLEClassifier(ClassifierMixin, BaseEstimator):
    """Text classifier that fine-tunes a pretrained language model with AdaMoLE adapters.

    AdaMoLE (Liu & Luo, COLM 2024) replaces each adapted ``nn.Linear`` by a mixture of LoRA experts
    with a softmax gate and a learned, token-wise threshold that decides how many experts are active.
    Only the adapters (and the classification head) are trained. The estimator loads the model in
    ``fit``, so it can be cloned, grid-searched, put in a Pipeline and pickled like any scikit-learn
    classifier.

    Parameters
    ----------
    base_model : str or path-like, default=None
        Hugging Face hub id or local directory of the pretrained model. Required; loaded in ``fit``.
        With ``HF_HUB_OFFLINE=1`` (or no network) only local directories and the local cache work.
    num_experts : int, default=8
        Number of LoRA experts per adapted layer.
    expert_rank : int, default=4
        Rank of each expert (the paper: 8 experts of rank 4).
    lora_alpha : float, default=16
        LoRA alpha; the expert scaling is ``lora_alpha / expert_rank``.
    lora_dropout : float, default=0.05
        Dropout on the adapter input.
    max_threshold : float or None, default=None
        Largest threshold tau_max (``routing="adaptive"``) or the fixed threshold
        (``routing="threshold"``). ``None`` means ``1 / num_experts``; the paper found ``1 / (2 *
        num_experts)`` better in its ablation.
    routing : {"adaptive", "topk", "threshold", "dense"}, default="adaptive"
        ``"adaptive"`` is AdaMoLE; ``"topk"`` and ``"threshold"`` are the MoLE baselines; ``"dense"``
        with ``num_experts=1`` is plain LoRA.
    top_k : int, default=2
        Active experts per token for ``routing="topk"``.
    aux_loss_coef : float, default=1e-3
        Weight of the load-balancing loss added to the task loss (paper: 1e-3).
    target_modules : list of str, str or None, default=None
        Names of the linear layers to adapt; ``None`` auto-detects the attention projections (e.g.
        ``query/key/value`` for BERT, ``q_proj/k_proj/v_proj/o_proj`` for Llama).
    head : {"auto", "classifier", "lm"}, default="auto"
        ``"classifier"``: a sequence-classification head (encoders and decoders), trained and saved
        with the adapters. ``"lm"``: the paper's scorer: a multiple-choice prompt ("Text: ...
        Choices: A. <class> ... Answer:") whose next-token logits of the answer letters (or
        ``label_words``) are the class scores; only the answer token is a training target.
        ``"auto"`` picks ``"lm"`` for causal decoders and ``"classifier"`` otherwise.
    label_words : list of str, dict or None, default=None
        ``head="lm"`` only: one word per class (a list in ``classes_`` order or a dict class -> word)
        scored instead of the letters A, B, ...
    max_length : int, default=256
        Maximum number of tokens per example (longer texts are truncated, with one warning per call).
    batch_size : int, default=16
        Examples per forward pass.
    gradient_accumulation_steps : int, default=1
        Forward passes per optimizer step (effective batch = ``batch_size *
        gradient_accumulation_steps``).
    learning_rate : float, default=1e-4
        AdamW learning rate after warm-up (the paper's value; small encoders with a new head often
        like 5e-4).
    warmup : int or float, default=0.1
        Linear warm-up: an int is a number of optimizer steps, a float in [0, 1) a fraction of the
        optimizer steps of the first ``fit``. The learning rate is constant afterwards (as in the
        paper).
    num_epochs : int, default=3
        Passes over the training data in ``fit`` (``partial_fit`` always runs one).
    weight_decay : float, default=0.0
        AdamW weight decay.
    device : str or None, default=None
        ``None``: CUDA if available, then MPS, then CPU. The resolved device is ``device_``.
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Precision of the frozen base model; ``"auto"`` is bfloat16 on GPUs that support it and
        float32 elsewhere. Below float32 the forward pass runs under autocast (mixed precision) and
        the adapters are kept in float32; float16 uses a gradient scaler.
    gradient_checkpointing : bool, default=False
        Recompute activations in the backward pass (non-reentrant) to save memory.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified), evaluate its accuracy
        after each epoch, stop after ``n_iter_no_change`` epochs without improvement and restore the
        best adapters.
    validation_fraction : float, default=0.1
        Share of the training data held out when ``early_stopping=True``.
    n_iter_no_change : int, default=2
        Epochs without improvement of the validation accuracy before stopping.
    callbacks : list or None, default=None
        Objects with any of the methods ``on_train_begin``, ``on_batch_end``, ``on_epoch_end`` and
        ``on_train_end``, each called as ``hook(estimator, logs)`` with a dict of plain Python
        values; ``on_epoch_end`` returning True stops training. Callbacks must be deep-copyable
        (``clone`` copies them).
    warm_start : bool, default=False
        If True and the estimator is fitted, ``fit`` continues training the current adapters instead
        of starting afresh (the structure of the adapters is kept from the first fit).
    random_state : int, RandomState instance or None, default=None
        Seeds the adapter and head initialisation, dropout, shuffling and the validation split.
        Only local generators are used (``torch.random.fork_rng``), so the global torch/numpy RNGs
        are left untouched. With an int, two fits on CPU give identical predictions.
    verbose : int, default=0
        0: silent; 1: progress bars and one line per epoch; 2: also transformers' own load messages.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    model_ : peft.PeftModel
        The base model with AdaMoLE adapters (rebuilt on first use after unpickling).
    tokenizer_ : transformers tokenizer
    base_model_ : str
        ``base_model`` resolved to an absolute directory or a hub id.
    head_ : {"classifier", "lm"}
    device_ : str
    dtype_ : str
    pair_input_ : bool
        Whether the model was trained on text pairs.
    answer_token_ids_ : list of int or None
        ``head="lm"``: token ids scored for each class.
    max_length_ : int
        ``max_length`` capped at the model's maximum number of positions.
    target_modules_ : list of str
    max_threshold_ : float or None
    n_trainable_params_ : int
    n_iter_ : int
        Epochs trained in total.
    n_steps_ : int
        Optimizer steps taken in total.
    warmup_steps_ : int
    history_ : list of dict
        One dict per epoch: ``epoch``, ``train_loss`` (task loss), ``aux_loss`` (unweighted
        load-balancing loss), ``learning_rate``, ``n_samples``, ``duration_s``, the routing
        statistics (``mean_active_experts``, ``zero_expert_fraction``, ``tau_mean``, ``tau_std``,
        ``expert_load``) and, with early stopping, ``valid_loss`` and ``valid_accuracy``.
    expert_usage_ : dict
        Routing statistics of the last training epoch (see
        :func:`sparsekit.adamole.routing_statistics`), including ``per_module``.
    best_epoch_ : int or None
        Epoch whose adapters were kept by early stopping.

    See Also
    --------
    sparsekit.adamole.get_adamole_model : Add AdaMoLE adapters to any transformers model.

    Notes
    -----
    Pickles hold the adapter weights as safetensors bytes, never torch pickles; the base model is
    re-read from ``base_model_`` when the unpickled estimator is first used (on CPU if the original
    device is missing). With ``GridSearchCV(n_jobs>1)`` on one GPU, the workers compete for its
    memory: prefer ``n_jobs=1`` there.

    Examples
    --------
    >>> from sparsekit.adamole import AdaMoLEClassifier  # doctest: +SKIP
    >>> clf = AdaMoLEClassifier(base_model="path/to/model", num_epochs=2)  # doctest: +SKIP
    >>> clf.fit(["great film", "dull plot"], ["pos", "neg"]).predict(["a great plot"])  # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "base_model": [str, os.PathLike, None],
        "num_experts": [Interval(Integral, 1, None, closed="left")],
        "expert_rank": [Interval(Integral, 1, None, closed="left")],
        "lora_alpha": [Interval(Real, 0, None, closed="neither")],
        "lora_dropout": [Interval(Real, 0, 1, closed="left")],
        "max_threshold": [Interval(Real, 0, 1, closed="right"), None],
        "routing": [StrOptions({"adaptive", "topk", "threshold", "dense"})],
        "top_k": [Interval(Integral, 1, None, closed="left")],
        "aux_loss_coef": [Interval(Real, 0, None, closed="left")],
        "target_modules": [list, tuple, str, None],
        "head": [StrOptions({"auto", "classifier", "lm"})],
        "label_words": [list, tuple, dict, None],
        "max_length": [Interval(Integral, 2, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "gradient_accumulation_steps": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "warmup": [Interval(Integral, 0, None, closed="left"), Interval(Real, 0, 1, closed="left")],
        "num_epochs": [Interval(Integral, 1, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "device": [str, None],
        "dtype": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "gradient_checkpointing": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "callbacks": [list, tuple, None],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        base_model=None,
        num_experts=8,
        expert_rank=4,
        lora_alpha=16,
        lora_dropout=0.05,
        max_threshold=None,
        routing="adaptive",
        top_k=2,
        aux_loss_coef=1e-3,
        target_modules=None,
        head="auto",
        label_words=None,
        max_length=256,
        batch_size=16,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        warmup=0.1,
        num_epochs=3,
        weight_decay=0.0,
        device=None,
        dtype="auto",
        gradient_checkpointing=False,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=2,
        callbacks=None,
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        self.base_model = base_model
        self.num_experts = num_experts
        self.expert_rank = expert_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.max_threshold = max_threshold
        self.routing = routing
        self.top_k = top_k
        self.aux_loss_coef = aux_loss_coef
        self.target_modules = target_modules
        self.head = head
        self.label_words = label_words
        self.max_length = max_length
        self.batch_size = batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.learning_rate = learning_rate
        self.warmup = warmup
        self.num_epochs = num_epochs
        self.weight_decay = weight_decay
        self.device = device
        self.dtype = dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = True
        tags.classifier_tags.poor_score = True
        return tags

    def __sklearn_is_fitted__(self):
        d = self.__dict__
        return "classes_" in d and (
            d.get("_model") is not None or d.get("_adapter_files") is not None
        )

    @property
    def model_(self):
        """The peft model with AdaMoLE adapters (built lazily after unpickling/from_pretrained)."""
        self._ensure_model()
        return self._model

    @property
    def tokenizer_(self):
        """The tokenizer of ``base_model_`` (with a pad token)."""
        self._ensure_model()
        return self._tokenizer

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fine-tune the adapters (and head) on texts ``X`` and labels ``y``.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts, or text pairs (premise/hypothesis, passage/question) as a list of 2-tuples, a
            2-column array or DataFrame.
        y : array-like of shape (n_samples,)
            Class labels of any hashable, sortable type.

        Returns
        -------
        self : AdaMoLEClassifier
        """
        texts, is_pair = _data.validate_texts(X)
        y = self._validate_y(y, len(texts))
        continuing = self.warm_start and self.__sklearn_is_fitted__()
        if continuing:
            self._check_continuation(y, is_pair)
            self._ensure_model()
        else:
            classes = np.unique(y)
            if len(classes) < 2:
                raise ValueError(
                    f"AdaMoLEClassifier requires 2 or more distinct classes; got 1 class "
                    f"({classes[0]!r}). Check y, or the split that produced it."
                )
            self._reset_fitted()
            self._initialize_or_reset(classes, is_pair)
        y_enc = np.searchsorted(self.classes_, y)
        self._run_training(texts, y_enc, self.num_epochs, self.early_stopping, fresh=not continuing)
        return self

    def partial_fit(self, X, y, classes=None):
        """Train one more epoch on ``X, y`` (initialises on the first call).

        Each call is one pass over ``X`` with the current adapters and optimizer state; there is no
        early stopping and ``num_epochs`` is ignored.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
        y : array-like of shape (n_samples,)
        classes : array-like or None, default=None
            All classes, needed on the first call if ``y`` does not contain every class. Ignored
            afterwards.

        Returns
        -------
        self : AdaMoLEClassifier
        """
        if not self.__sklearn_is_fitted__():
            self._validate_params()
        texts, is_pair = _data.validate_texts(X)
        y = self._validate_y(y, len(texts))
        fresh = not self.__sklearn_is_fitted__()
        if fresh:
            all_classes = np.unique(y if classes is None else np.asarray(classes))
            if len(all_classes) < 2:
                raise ValueError(
                    "AdaMoLEClassifier requires 2 or more distinct classes; got 1 class. Pass "
                    "classes=[...] with every class on the first call to partial_fit."
                )
            unseen = np.setdiff1d(np.unique(y), all_classes)
            if len(unseen):
                raise ValueError(f"y contains labels {unseen.tolist()!r} missing from classes.")
            self._initialize_or_reset(all_classes, is_pair)
        else:
            self._check_continuation(y, is_pair)
            self._ensure_model()
        y_enc = np.searchsorted(self.classes_, y)
        self._run_training(texts, y_enc, 1, False, fresh=fresh)
        return self

    def _validate_y(self, y, n):
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
            missing = [i for i, v in enumerate(y) if _data._is_missing(v)]
            if missing:
                raise ValueError(
                    f"y contains missing labels (None/NaN) at positions {missing[:10]}."
                )
        elif y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError("y contains NaN labels.")
        check_classification_targets(y)
        if type_of_target(y) not in ("binary", "multiclass"):
            raise ValueError(f"Unsupported target type {type_of_target(y)!r}.")
        return y

    def _check_continuation(self, y, is_pair):
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if len(unseen):
            raise ValueError(
                f"y contains labels {unseen.tolist()!r} that were not seen in the first fit "
                f"(classes_={self.classes_.tolist()!r}). Continued training (warm_start/partial_fit) "
                "cannot add classes; refit from scratch with warm_start=False."
            )
        if is_pair != self.pair_input_:
            kind = "text pairs" if self.pair_input_ else "single texts"
            raise ValueError(f"This estimator was trained on {kind}; X must be {kind} too.")

    def _reset_fitted(self):
        for k in [k for k in self.__dict__ if k.endswith("_") and not k.startswith("__")]:
            del self.__dict__[k]
        for k in ("_model", "_tokenizer", "_adapter_files", "_optim_state"):
            self.__dict__.pop(k, None)

    def _seeds(self):
        rng = check_random_state(self.random_state)
        return [int(s) for s in rng.randint(np.iinfo(np.int32).max, size=3)]

    def _initialize_or_reset(self, classes, is_pair):
        try:
            self._initialize(classes, is_pair)
        except BaseException:
            self._reset_fitted()  # no half-initialised attributes after an error
            raise

    def _initialize(self, classes, is_pair):
        """Resolve settings, load the tokenizer and model and add fresh adapters."""
        self.classes_ = classes
        self.base_model_ = _heads.resolve_base_model(self.base_model)
        self.device_ = _train.resolve_device(self.device)
        self.dtype_ = _train.resolve_dtype(self.dtype, self.device_)
        _train.check_callbacks(self.callbacks)
        with _heads.quiet_transformers(self.verbose):
            config = _heads.load_config(self.base_model_)
            self.head_ = _heads.resolve_head(self.head, config)
            if self.label_words is not None and self.head_ != "lm":
                raise ValueError(
                    f"label_words is only used by head='lm', but the head is {self.head_!r}. Remove "
                    "label_words or set head='lm' (for a causal language model)."
                )
            self.pair_input_ = bool(is_pair)
            tokenizer = _heads.load_tokenizer(self.base_model_, head=self.head_)
            self.max_length_ = self._cap_max_length(config, tokenizer)
            self.answer_token_ids_ = (
                _heads.answer_token_ids(tokenizer, self._template()) if self.head_ == "lm" else None
            )
            init_seed = self._seeds()[0]
            with _train.local_torch_rng(init_seed, self.device_):
                backbone = _heads.load_backbone(
                    self.base_model_,
                    head=self.head_,
                    n_classes=len(classes),
                    torch_dtype=_train.torch_dtype(self.dtype_),
                    pad_token_id=tokenizer.pad_token_id,
                )
                model = self._add_adapters(backbone)
        self._tokenizer = tokenizer
        self._install_model(model)
        self.target_modules_ = sorted(set(model.peft_config["default"].target_modules or []))
        self.max_threshold_ = (
            (self.max_threshold if self.max_threshold is not None else 1.0 / self.num_experts)
            if self.routing in ("adaptive", "threshold")
            else None
        )
        self.n_trainable_params_ = int(
            sum(p.numel() for p in model.parameters() if p.requires_grad)
        )
        self.n_iter_ = 0
        self.n_steps_ = 0
        self.warmup_steps_ = None
        self.history_ = []
        self.expert_usage_ = {}
        self.best_epoch_ = None
        self._optim_state = None

    def _cap_max_length(self, config, tokenizer):
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and getattr(config, "model_type", "") in (
            "roberta",
            "xlm-roberta",
            "camembert",
        ):
            limit -= 2  # padding_idx offset in learned position embeddings
        return int(min(self.max_length, limit)) if limit else int(self.max_length)

    def _template(self):
        label_words = self.label_words
        return _heads.make_template(self.classes_, label_words, self.pair_input_)

    def _add_adapters(self, backbone):
        from ._config import AdaMoLEConfig
        from ._model import get_adamole_model

        target = self.target_modules
        if isinstance(target, tuple):
            target = list(target)
        config = AdaMoLEConfig(
            r=self.expert_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=target,
            num_experts=self.num_experts,
            max_threshold=self.max_threshold,
            routing=self.routing,
            top_k=self.top_k,
            task_type="SEQ_CLS" if self.head_ == "classifier" else "CAUSAL_LM",
        )
        with _quiet_peft():
            return get_adamole_model(backbone, config)

    def _install_model(self, model):
        """Move to the device, keep trainable weights in float32, enable checkpointing."""
        import torch

        model.to(self.device_)
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        if self.gradient_checkpointing:
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
        self._model = model
        self._supports = _heads.forward_supports(model)

    # ------------------------------------------------------------------ training loop

    def _encode(self, texts):
        if self.head_ == "lm":
            return _data.encode_for_lm(
                self._tokenizer, texts, self.pair_input_, self.max_length_, self._template()
            )
        return _data.encode_for_classifier(
            self._tokenizer, texts, self.pair_input_, self.max_length_
        )

    def _to_device(self, batch):
        import torch

        out = {}
        for k, v in batch.items():
            if k == "token_type_ids" and "token_type_ids" not in self._supports:
                continue
            if k == "position_ids" and "position_ids" not in self._supports:
                continue
            out[k] = torch.from_numpy(v).to(self.device_, non_blocking=True)
        return out

    def _batch(self, encoded, idx):
        return self._to_device(
            _data.collate(
                encoded,
                idx,
                self._tokenizer.pad_token_id,
                left_pad=self.head_ == "lm",
                pad_multiple=8 if self.device_.startswith("cuda") else 1,
            )
        )

    def _forward_logits(self, model, batch):
        """Logits over the vocabulary (lm, last position) or over the classes (classifier)."""
        if self.head_ == "lm":
            kwargs = dict(batch)
            if "logits_to_keep" in self._supports:
                kwargs["logits_to_keep"] = 1
            return model(**kwargs).logits[:, -1, :]
        return model(**batch).logits

    def _class_logits(self, logits):
        if self.head_ == "lm":
            return logits[:, self.answer_token_ids_]
        return logits

    def _task_loss(self, logits, y):
        import torch.nn.functional as F

        if self.head_ == "lm":
            # causal-LM loss on the answer token only (the prompt is masked from the loss)
            targets = y.new_tensor(self.answer_token_ids_)[y]
            return F.cross_entropy(logits.float(), targets)
        return F.cross_entropy(logits.float(), y)

    def _run_training(self, texts, y_enc, n_epochs, use_early_stopping, *, fresh):
        try:
            self._train_epochs(texts, y_enc, n_epochs, use_early_stopping)
        except BaseException:
            if fresh:
                self._reset_fitted()
            raise

    def _train_epochs(self, texts, y_enc, n_epochs, use_early_stopping):
        import torch
        from tqdm.auto import tqdm

        from ._model import collect_aux_loss, routing_statistics

        model = self._model
        init_seed, shuffle_seed, split_seed = self._seeds()
        if use_early_stopping:
            train_idx, valid_idx = self._validation_split(y_enc, split_seed)
        else:
            train_idx, valid_idx = np.arange(len(texts)), None
        with _heads.quiet_transformers(self.verbose):
            enc_train = self._encode([texts[i] for i in train_idx])
            enc_valid = (
                self._encode([texts[i] for i in valid_idx]) if valid_idx is not None else None
            )
        y_train = torch.as_tensor(y_enc[train_idx], dtype=torch.long)
        n = len(train_idx)
        accum = self.gradient_accumulation_steps
        n_batches = math.ceil(n / self.batch_size)
        steps_per_epoch = math.ceil(n_batches / accum)
        if self.warmup_steps_ is None:
            self.warmup_steps_ = _train.n_warmup_steps(self.warmup, steps_per_epoch * n_epochs)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self._optim_state is not None:
            optimizer.load_state_dict(self._optim_state)
            for group in optimizer.param_groups:
                group["weight_decay"] = self.weight_decay
        scaler = None
        if self.dtype_ == "float16" and self.device_.startswith("cuda"):
            scaler = torch.amp.GradScaler("cuda")
        coef = float(self.aux_loss_coef)
        logs = {"n_samples": n, "n_epochs": n_epochs, "n_batches": n_batches}
        _train.call_callbacks(self.callbacks, "on_train_begin", self, logs)

        best = (-np.inf, None, None)  # (accuracy, epoch, adapter state on CPU)
        no_improve = 0
        torch_seed = (init_seed + 7919 * (self.n_iter_ + 1)) % (2**63)
        with _train.local_torch_rng(torch_seed, self.device_):
            for _ in range(n_epochs):
                epoch = self.n_iter_ + 1
                t0 = time.perf_counter()
                model.train()
                routing_statistics(model, reset=True)
                order = np.random.RandomState((shuffle_seed + epoch) % (2**32)).permutation(n)
                loss_sum = torch.zeros((), device=self.device_)
                aux_sum = torch.zeros((), device=self.device_)
                group_loss = torch.zeros((), device=self.device_)
                bar = tqdm(
                    total=n_batches,
                    desc=f"epoch {epoch}",
                    leave=False,
                    disable=not self.verbose or self.verbose < 1,
                )
                try:
                    batches = list(_data.iter_batches(n, self.batch_size, order=order))
                    for b, idx in enumerate(batches):
                        group_start = (b // accum) * accum
                        group_size = min(accum, n_batches - group_start)
                        batch = self._batch(enc_train, idx)
                        yb = y_train[idx].to(self.device_)
                        with _train.autocast(self.device_, self.dtype_):
                            with collect_aux_loss(
                                model, attention_mask=batch["attention_mask"]
                            ) as aux:
                                logits = self._forward_logits(model, batch)
                            task_loss = self._task_loss(logits, yb)
                            aux_loss = aux.loss.float()
                            loss = task_loss + coef * aux_loss
                        scaled = loss / group_size
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                        loss_sum += task_loss.detach() * len(idx)
                        aux_sum += aux_loss.detach() * len(idx)
                        group_loss += loss.detach()
                        if b - group_start + 1 == group_size:
                            self._optimizer_step(optimizer, scaler, params, group_loss, epoch)
                            group_loss.zero_()
                            if bar.disable is False:
                                bar.set_postfix(loss=f"{loss.item():.4f}")
                        bar.update(1)
                        if self.callbacks:
                            _train.call_callbacks(
                                self.callbacks,
                                "on_batch_end",
                                self,
                                {"epoch": epoch, "batch": b, "loss": float(loss.detach())},
                            )
                finally:
                    bar.close()
                stats = routing_statistics(model, reset=True)
                record = {
                    "epoch": epoch,
                    "train_loss": float(loss_sum) / n,
                    "aux_loss": float(aux_sum) / n,
                    "learning_rate": float(optimizer.param_groups[0]["lr"]),
                    "n_samples": n,
                }
                for key in ("mean_active_experts", "zero_expert_fraction", "tau_mean", "tau_std"):
                    record[key] = stats.get(key)
                record["expert_load"] = stats.get("expert_load")
                if enc_valid is not None:
                    v_logits = self._predict_logits(enc_valid)
                    v_y = y_enc[valid_idx]
                    v_logp = v_logits - _logsumexp(v_logits)
                    record["valid_loss"] = float(-v_logp[np.arange(len(v_y)), v_y].mean())
                    record["valid_accuracy"] = float((v_logits.argmax(1) == v_y).mean())
                    model.train()
                record["duration_s"] = time.perf_counter() - t0
                self.n_iter_ = epoch
                self.history_.append(record)
                self.expert_usage_ = stats
                if self.verbose:
                    tqdm.write(_format_record(record))
                stop = _train.call_callbacks(self.callbacks, "on_epoch_end", self, dict(record))
                if enc_valid is not None:
                    if record["valid_accuracy"] > best[0]:
                        best = (record["valid_accuracy"], epoch, _trainable_state(model))
                        no_improve = 0
                    else:
                        no_improve += 1
                        if no_improve >= self.n_iter_no_change:
                            stop = True
                if stop:
                    break
        if best[2] is not None and best[1] != self.n_iter_:
            _load_trainable_state(model, best[2])
        self.best_epoch_ = best[1]
        self._optim_state = optimizer.state_dict()
        model.eval()
        _train.call_callbacks(self.callbacks, "on_train_end", self, {"n_iter": self.n_iter_})

    def _optimizer_step(self, optimizer, scaler, params, group_loss, epoch):
        import torch

        if not bool(torch.isfinite(group_loss)):
            raise _train.divergence_error(
                float(group_loss),
                epoch=epoch,
                step=self.n_steps_ + 1,
                learning_rate=self.learning_rate,
                dtype_name=self.dtype_,
                aux_loss_coef=self.aux_loss_coef,
            )
        lr = self.learning_rate * _train.warmup_lr_factor(self.n_steps_, self.warmup_steps_)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.n_steps_ += 1

    def _validation_split(self, y_enc, seed):
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y_enc))
        n_valid = int(math.ceil(self.validation_fraction * len(idx)))
        counts = np.bincount(y_enc)
        stratify = y_enc if (counts[counts > 0].min() >= 2 and n_valid >= len(counts)) else None
        if n_valid < 1 or len(idx) - n_valid < 2:
            raise ValueError(
                f"early_stopping=True needs more data: validation_fraction={self.validation_fraction} "
                f"of {len(idx)} samples leaves no usable validation or training split."
            )
        train_idx, valid_idx = train_test_split(
            idx, test_size=n_valid, random_state=seed, stratify=stratify
        )
        return np.sort(train_idx), np.sort(valid_idx)

    # ------------------------------------------------------------------ prediction

    def _predict_logits(self, encoded):
        """Class logits (float64 numpy) for encoded texts, in input order."""
        import torch

        model = self._model
        model.eval()
        lengths = np.array([len(ids) for ids in encoded.input_ids])
        order = np.argsort(-lengths, kind="stable")  # similar lengths together: less padding
        out = np.empty((len(lengths), len(self.classes_)), dtype=np.float64)
        with torch.inference_mode(), _train.autocast(self.device_, self.dtype_):
            for idx in _data.iter_batches(len(lengths), self.batch_size, order=order):
                logits = self._class_logits(self._forward_logits(model, self._batch(encoded, idx)))
                out[idx] = logits.float().cpu().numpy()
        return out

    def _logits_for(self, X):
        check_is_fitted(self)
        self._ensure_model()
        texts, is_pair = _data.validate_texts(X)
        if is_pair != self.pair_input_:
            kind = "text pairs" if self.pair_input_ else "single texts"
            raise ValueError(f"This estimator was trained on {kind}; X must be {kind} too.")
        with _heads.quiet_transformers(self.verbose):
            encoded = self._encode(texts)
        return self._predict_logits(encoded)

    def decision_function(self, X):
        """Class logits.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs

        Returns
        -------
        scores : ndarray of shape (n_samples,) for two classes, else (n_samples, n_classes)
            Logits in ``classes_`` order; for two classes the log-odds of ``classes_[1]``.
        """
        logits = self._logits_for(X)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits), columns in ``classes_`` order.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        logits = self._logits_for(X)
        return np.exp(logits - _logsumexp(logits))

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        logits = self._logits_for(X)
        return logits - _logsumexp(logits)

    def predict(self, X):
        """Most probable class of each text.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        logits = self._logits_for(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``X, y``; raises if ``y`` holds labels that were not seen in ``fit``.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        y_arr = np.asarray(y)
        unseen = np.setdiff1d(np.unique(y_arr), self.classes_)
        if len(unseen):
            raise ValueError(
                f"y contains labels {unseen.tolist()!r} that were not seen during fit "
                f"(classes_={self.classes_.tolist()!r}); the classifier can never predict them, so the "
                "accuracy would be misleading. Remove those samples or refit with them."
            )
        return super().score(X, y, sample_weight=sample_weight)

    # ------------------------------------------------------------------ persistence

    def _adapter_files_from_model(self):
        with tempfile.TemporaryDirectory() as tmp:
            with _heads.quiet_transformers(self.verbose):
                self._model.save_pretrained(tmp, safe_serialization=True)
            files = {}
            for name in _ADAPTER_FILES:
                with open(os.path.join(tmp, name), "rb") as fh:
                    files[name] = fh.read()
        return files

    def _ensure_model(self):
        if self.__dict__.get("_model") is not None:
            return
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )
        from ._model import load_adamole_model

        files = self._adapter_files
        with _heads.quiet_transformers(self.verbose):
            tokenizer = _heads.load_tokenizer(self.base_model_, head=self.head_)
            with _train.local_torch_rng(0, self.device_):
                backbone = _heads.load_backbone(
                    self.base_model_,
                    head=self.head_,
                    n_classes=len(self.classes_),
                    torch_dtype=_train.torch_dtype(self.dtype_),
                    pad_token_id=tokenizer.pad_token_id,
                )
                with tempfile.TemporaryDirectory() as tmp:
                    for name, blob in files.items():
                        with open(os.path.join(tmp, name), "wb") as fh:
                            fh.write(blob)
                    with _quiet_peft():
                        model = load_adamole_model(backbone, tmp, is_trainable=True)
        self._tokenizer = tokenizer
        self._install_model(model)
        self._optim_state = None
        self._adapter_files = None

    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.pop("_model", None)
        state.pop("_tokenizer", None)
        state.pop("_optim_state", None)
        state.pop("_supports", None)
        if model is not None:
            state["_adapter_files"] = self._adapter_files_from_model()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_model", None)
        self.__dict__.setdefault("_tokenizer", None)
        self.__dict__.setdefault("_optim_state", None)
        if "device_" in state:
            self._relocate()

    def _relocate(self):
        """Map a saved device to one that exists here (skorch's rule: fall back to CPU, warn)."""
        import torch

        old = self.device_
        dev = torch.device(old)
        ok = (
            dev.type == "cpu"
            or (
                dev.type == "cuda"
                and torch.cuda.is_available()
                and (dev.index or 0) < torch.cuda.device_count()
            )
            or (
                dev.type == "mps"
                and getattr(torch.backends, "mps", None)
                and torch.backends.mps.is_available()
            )
        )
        if not ok:
            new = _train.resolve_device(None)
            _train.device_warning(old, new)
            self.device_ = new
            if self.dtype == "auto":
                self.dtype_ = _train.resolve_dtype("auto", new)
            elif self.dtype_ != "float32" and new == "cpu":
                self.dtype_ = "float32"

    def save_pretrained(self, directory):
        """Save the fitted estimator to ``directory``.

        Writes ``adapter/adapter_model.safetensors`` and ``adapter/adapter_config.json`` (a standard
        peft adapter, including the classification head when ``head_="classifier"``) and
        ``sparsekit_adamole.json`` (parameters, ``classes_``, the base-model reference, training
        history). The base model itself is not copied: it is re-read from ``base_model_``.

        Parameters
        ----------
        directory : str or path-like
        """
        check_is_fitted(self)
        directory = os.fspath(directory)
        os.makedirs(os.path.join(directory, "adapter"), exist_ok=True)
        files = (
            self._adapter_files_from_model()
            if self.__dict__.get("_model") is not None
            else self._adapter_files
        )
        for name, blob in files.items():
            with open(os.path.join(directory, "adapter", name), "wb") as fh:
                fh.write(blob)
        meta = {
            "format": "sparsekit.adamole.AdaMoLEClassifier",
            "format_version": _FORMAT_VERSION,
            "params": _jsonable_params(self),
            "classes": _classes_to_json(self.classes_),
            "fitted": {k: getattr(self, k) for k in _SAVED_ATTRS if k in self.__dict__},
            "device_": self.device_,
            "dtype_": self.dtype_,
        }
        try:
            from .. import __version__ as version
        except ImportError:  # pragma: no cover
            version = None
        meta["sparsekit_version"] = version
        with open(os.path.join(directory, _META_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, default=_json_default)

    @classmethod
    def from_pretrained(cls, directory, **params):
        """Load an estimator written by :meth:`save_pretrained`.

        Parameters
        ----------
        directory : str or path-like
        **params
            Parameters to override, e.g. ``device="cpu"`` or ``base_model=<new location of the
            base model>``.

        Returns
        -------
        estimator : AdaMoLEClassifier
            Fitted; the model is loaded on first use.
        """
        directory = os.fspath(directory)
        meta_path = os.path.join(directory, _META_FILE)
        if not os.path.isfile(meta_path):
            raise ValueError(
                f"{directory!r} is not a saved AdaMoLEClassifier: {_META_FILE} is missing. Save with "
                "est.save_pretrained(directory)."
            )
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("format_version", 0) > _FORMAT_VERSION:
            raise ValueError(
                f"{directory!r} was saved by a newer sparsekit (format {meta['format_version']}); "
                "upgrade sparsekit to load it."
            )
        init_params = dict(meta["params"])
        init_params.update(params)
        est = cls(**init_params)
        est._validate_params()
        for k, v in meta["fitted"].items():
            setattr(est, k, v)
        est.classes_ = _classes_from_json(meta["classes"])
        if "base_model" in params:
            est.base_model_ = _heads.resolve_base_model(params["base_model"])
        est.device_ = _train.resolve_device(est.device)
        est.dtype_ = _train.resolve_dtype(est.dtype, est.device_)
        files = {}
        for name in _ADAPTER_FILES:
            path = os.path.join(directory, "adapter", name)
            if not os.path.isfile(path):
                raise ValueError(f"{directory!r} is incomplete: adapter/{name} is missing.")
            with open(path, "rb") as fh:
                files[name] = fh.read()
        est._adapter_files = files
        est._model = None
        est._tokenizer = None
        est._optim_state = None
        return est


# ---------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet_peft():
    """Hide peft's deprecation notice about transformers' ``is_gradient_checkpointing``."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def _logsumexp(a):
    m = a.max(axis=1, keepdims=True)
    return m + np.log(np.exp(a - m).sum(axis=1, keepdims=True))


def _trainable_state(model):
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def _load_trainable_state(model, state):
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.device))


def _format_record(r):
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}", f"aux {r['aux_loss']:.4f}"]
    if r.get("valid_accuracy") is not None:
        parts.append(f"valid_acc {r['valid_accuracy']:.4f}")
    if r.get("mean_active_experts") is not None:
        parts.append(f"active_experts {r['mean_active_experts']:.2f}")
    parts.append(f"{r['duration_s']:.1f}s")
    return " | ".join(parts)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _jsonable_params(est):
    import warnings

    params = est.get_params(deep=False)
    if params.get("callbacks"):
        warnings.warn(
            "callbacks are not saved by save_pretrained; pass them again to from_pretrained(..., "
            "callbacks=[...]) if you continue training.",
            UserWarning,
            stacklevel=3,
        )
        params["callbacks"] = None
    if not (params.get("random_state") is None or isinstance(params["random_state"], Integral)):
        params["random_state"] = None
    if params.get("base_model") is not None:
        params["base_model"] = os.fspath(params["base_model"])
    if isinstance(params.get("label_words"), dict):
        params["label_words"] = [params["label_words"][c] for c in est.classes_]
    if isinstance(params.get("target_modules"), tuple):
        params["target_modules"] = list(params["target_modules"])
    return params


def _classes_to_json(classes):
    values = classes.tolist()
    try:
        json.dumps(values)
    except TypeError:
        raise ValueError(
            "save_pretrained needs JSON-compatible class labels (str, int, float or bool); got "
            f"{type(values[0]).__name__}. Pickle the estimator instead."
        ) from None
    return {"values": values, "dtype": classes.dtype.str}


def _classes_from_json(d):
    dtype = np.dtype(d["dtype"])
    if dtype.kind == "O":
        out = np.empty(len(d["values"]), dtype=object)
        out[:] = d["values"]
        return out
    return np.asarray(d["values"], dtype=dtype)
