"""scikit-learn text classifier that fine-tunes a language model with AdaMoLE adapters.

This module is the estimator: parameters, validation and the scikit-learn API. The other jobs
live in their own modules: the heads in ``_heads.py``, model loading and adapter injection in
``_loading.py``, the training loop in ``_trainer.py``, encoding and the prediction methods in
``_prediction.py``, pickling and save/load in ``_persistence.py``, the routing maths in
``_routing.py``.
"""

from __future__ import annotations

import os
import sys
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from . import _data, _device, _distributed, _heads, _loading, _trainer
from ._persistence import PersistenceMixin
from ._prediction import PredictionMixin

__all__ = ["AdaMoLEClassifier"]


class AdaMoLEClassifier(PredictionMixin, PersistenceMixin, ClassifierMixin, BaseEstimator):
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
    balance_score : {"adapted", "probs"}, default="probs"
        ``routing="adaptive"``: the routing score of the load-balancing loss, the gate
        probability ``p`` (Switch-style) or ``p - tau`` (the paper's code, whose gradient pushes
        every threshold to ``max_threshold``; :class:`~sparsekit.adamole.AdaMoLEConfig` keeps it
        as its default for paper parity). ``"probs"`` is the default here because in the study
        (README, ``benchmarks/bench_adamole_study.py``) it kept the thresholds off their cap at
        convergence with no loss of accuracy against ``"adapted"``.
    threshold_budget : float or None, default=None
        ``routing="adaptive"`` only: target mean number of active experts per token, in [1,
        num_experts]; a squared penalty on the gap between a smooth active count (averaged over
        each batch's tokens) and this target joins the load-balancing loss, so the thresholds
        cannot all drift to their cap. ``None``: no budget (the paper).
    threshold_entropy : float or None, default=None
        ``routing="adaptive"`` only: weight (> 0) of an entropy regulariser that rewards a spread
        of the number of active experts over each batch's tokens (see
        :class:`~sparsekit.adamole.AdaMoLEConfig`), added to the load-balancing loss. ``None``:
        off (the paper).
    expert_init : {"lora", "orthogonal"}, default="lora"
        ``"lora"``: B = 0 for every expert (the router gets no task gradient until the experts
        have moved). ``"orthogonal"``: orthogonal A rows across experts and a tiny random B, so
        experts differ from the first step.
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
    verbose : int or "auto", default="auto"
        0: silent; 1: progress bars and one line per epoch; 2: also transformers' own load messages.
        ``"auto"`` is 1 when standard error is a terminal and 0 otherwise (logs, CI, notebooks
        that capture stderr stay clean).
    distributed : "auto" or bool, default="auto"
        Multi-process training when the script runs under ``torchrun --nproc_per_node N``
        (detected from ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``): gloo on CPU, NCCL on CUDA
        (one GPU per process, ``cuda:LOCAL_RANK``). Each process trains on its shard of every
        epoch with ``batch_size`` examples per step (global batch ``N * batch_size``), the
        gradients are averaged over the processes and every process returns the same fitted
        estimator. ``"auto"``: multi-process when launched so, otherwise one process; ``True``:
        raise if not launched so; ``False``: always one process.

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
        load-balancing loss), ``learning_rate``, ``n_samples``, ``world_size`` (processes that
        trained, 1 outside ``torchrun``), ``duration_s``, the routing statistics
        (``mean_active_experts``, ``active_experts_std``, ``zero_expert_fraction``, ``tau_mean``,
        ``tau_std``, ``tau_over_max``, ``near_cap_fraction``, ``expert_load``; rank 0's shard under
        ``torchrun``) and, with early stopping, ``valid_loss`` and ``valid_accuracy``.
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

    _parameter_constraints: ClassVar[dict] = {
        "base_model": [str, os.PathLike, None],
        "num_experts": [Interval(Integral, 1, None, closed="left")],
        "expert_rank": [Interval(Integral, 1, None, closed="left")],
        "lora_alpha": [Interval(Real, 0, None, closed="neither")],
        "lora_dropout": [Interval(Real, 0, 1, closed="left")],
        "max_threshold": [Interval(Real, 0, 1, closed="right"), None],
        "routing": [StrOptions({"adaptive", "topk", "threshold", "dense"})],
        "top_k": [Interval(Integral, 1, None, closed="left")],
        "balance_score": [StrOptions({"adapted", "probs"})],
        "threshold_budget": [Interval(Real, 1, None, closed="left"), None],
        "threshold_entropy": [Interval(Real, 0, None, closed="neither"), None],
        "expert_init": [StrOptions({"lora", "orthogonal"})],
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
        "verbose": ["verbose", StrOptions({"auto"})],
        "distributed": ["boolean", StrOptions({"auto"})],
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
        balance_score="probs",
        threshold_budget=None,
        threshold_entropy=None,
        expert_init="lora",
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
        verbose="auto",
        distributed="auto",
    ):
        self.base_model = base_model
        self.num_experts = num_experts
        self.expert_rank = expert_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.max_threshold = max_threshold
        self.routing = routing
        self.top_k = top_k
        self.balance_score = balance_score
        self.threshold_budget = threshold_budget
        self.threshold_entropy = threshold_entropy
        self.expert_init = expert_init
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
        self.distributed = distributed

    # ------------------------------------------------------------------ sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = True
        tags.classifier_tags.poor_score = True
        return tags

    def _verbosity(self):
        """``verbose`` with ``"auto"`` resolved: 1 when stderr is a terminal, else 0."""
        if self.verbose == "auto":
            isatty = getattr(sys.stderr, "isatty", None)
            return 1 if isatty is not None and isatty() else 0
        return self.verbose

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
            The fitted estimator.
        """
        texts, is_pair = _data.validate_texts(X)
        y = _data.validate_labels(y, len(texts))
        continuing = self.warm_start and self.__sklearn_is_fitted__()
        if continuing:
            self._check_continuation(y, is_pair)
            self._ensure_model()
        else:
            classes = _data.check_classes(y)
            self._reset_fitted()
            self._initialize_or_reset(classes, is_pair)
        y_enc = np.searchsorted(self.classes_, y)
        self._run_training(texts, y_enc, self.num_epochs, self.early_stopping, fresh=not continuing)
        return self

    def partial_fit(self, X, y, classes=None):
        """Train one more epoch on ``X, y`` (initialises on the first call).

        Each call is one pass over ``X`` with the current adapters and optimizer state; there is no
        early stopping and ``num_epochs`` is ignored. The parameters are validated on every call.

        Parameters
        ----------
        X : list-like of str, or of (str, str) pairs
            Texts or text pairs, as in :meth:`fit`.
        y : array-like of shape (n_samples,)
            Class labels.
        classes : array-like or None, default=None
            All classes, needed on the first call if ``y`` does not contain every class. Ignored
            afterwards.

        Returns
        -------
        self : AdaMoLEClassifier
            The updated estimator.
        """
        self._validate_params()
        texts, is_pair = _data.validate_texts(X)
        y = _data.validate_labels(y, len(texts))
        fresh = not self.__sklearn_is_fitted__()
        if fresh:
            self._initialize_or_reset(_data.check_classes(y, classes, partial=True), is_pair)
        else:
            self._check_continuation(y, is_pair)
            self._ensure_model()
        y_enc = np.searchsorted(self.classes_, y)
        self._run_training(texts, y_enc, 1, False, fresh=fresh)
        return self

    def _check_continuation(self, y, is_pair):
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if len(unseen):
            raise ValueError(
                f"y contains labels {unseen.tolist()!r} that were not seen in the first fit "
                f"(classes_={self.classes_.tolist()!r}). Continued training (warm_start/partial_fit) "
                "cannot add classes; refit from scratch with warm_start=False."
            )
        self._check_pair_input(is_pair)

    def _check_pair_input(self, is_pair):
        if is_pair != self.pair_input_:
            kind = "text pairs" if self.pair_input_ else "single texts"
            raise ValueError(f"This estimator was trained on {kind}; X must be {kind} too.")

    def _reset_fitted(self):
        for k in [k for k in self.__dict__ if k.endswith("_") and not k.startswith("__")]:
            del self.__dict__[k]
        for k in ("_model", "_tokenizer", "_adapter_files", "_optim_state"):
            self.__dict__.pop(k, None)

    def _seeds(self):
        """Seeds of the initialisation, the shuffling and the validation split."""
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
        self.base_model_ = _loading.resolve_base_model(self.base_model)
        self.device_ = _device.resolve_device(self.device)
        if _distributed.check_distributed(self.distributed):
            self.device_ = _distributed.local_device(self.device_)  # cuda -> cuda:LOCAL_RANK
        self.dtype_ = _device.resolve_dtype(self.dtype, self.device_)
        _trainer.check_callbacks(self.callbacks)
        self.pair_input_ = bool(is_pair)
        with _loading.quiet_transformers(self._verbosity()):
            built = _loading.build_model(self, classes, is_pair, init_seed=self._seeds()[0])
        tokenizer, model, strategy = built.tokenizer, built.model, built.strategy
        self.head_ = strategy.name
        self.max_length_ = built.max_length
        self.answer_token_ids_ = getattr(strategy, "answer_token_ids", None)
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

    def _install_model(self, model):
        self._model = _loading.install_model(model, self.device_, self.gradient_checkpointing)
        self._supports = _loading.forward_supports(model)

    def _head_strategy(self):
        """The head strategy object of the fitted estimator (see ``_heads.py``)."""
        return _heads.make_head(
            self.head_,
            classes=self.classes_,
            label_words=self.label_words,
            is_pair=self.pair_input_,
            token_ids=self.answer_token_ids_,
        )

    def _run_training(self, texts, y_enc, n_epochs, use_early_stopping, *, fresh):
        try:
            _trainer.Trainer(self, self._head_strategy()).train(
                texts, y_enc, n_epochs, use_early_stopping
            )
        except BaseException:
            if fresh:
                self._reset_fitted()
            raise
