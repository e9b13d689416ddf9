"""Configuration of AdaMoLE adapters: a :class:`peft.LoraConfig` with mixture-of-experts fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from numbers import Integral, Real

from peft import LoraConfig

from ._routing import BALANCE_SCORES

ROUTINGS = ("adaptive", "topk", "threshold", "dense")
AUX_LOSS_REDUCTIONS = ("sum", "mean")
EXPERT_COMPUTES = ("dense", "gathered")
_SUPPORTED_INIT = (True, False, "gaussian")
EXPERT_INITS = ("lora", "orthogonal")


@dataclass
class AdaMoLEConfig(LoraConfig):
    """Configuration of an AdaMoLE adapter (adaptive mixture of LoRA experts).

    A :class:`peft.LoraConfig` whose ``r`` is the rank of **each** expert. Every adapted
    ``nn.Linear`` gets ``num_experts`` LoRA experts, a softmax gate (``Linear(d_in, N)``, no bias)
    and, for ``routing="adaptive"``, a threshold network (``Linear(d_in, 1)``). The expert scaling
    is ``lora_alpha / r`` (per-expert rank, as in the official code), or ``lora_alpha / sqrt(r)``
    with ``use_rslora=True``.

    Instances register :class:`~sparsekit.adamole.AdaMoLELinear` as peft's custom module for
    ``nn.Linear`` (``LoraConfig._register_custom_module``), so ``peft.get_peft_model(model,
    config)`` injects AdaMoLE layers; prefer :func:`~sparsekit.adamole.get_adamole_model`, which
    also auto-detects ``target_modules`` and checks that every target was adapted.

    Parameters
    ----------
    r : int, default=4
        Rank of each expert (the paper uses 8 experts of rank 4).
    lora_alpha : int or float, default=16
        LoRA alpha; the expert scaling is ``lora_alpha / r``.
    num_experts : int, default=8
        Number of LoRA experts N per adapted layer.
    max_threshold : float or None, default=None
        For ``routing="adaptive"``: the largest threshold tau_max, tau = tau_max *
        sigmoid(W_tau x + b_tau). For ``routing="threshold"``: the fixed threshold. ``None`` means
        ``1 / num_experts``, which guarantees at least one active expert per token.
    routing : {"adaptive", "topk", "threshold", "dense"}, default="adaptive"
        ``"adaptive"``: AdaMoLE (experts with p_i >= tau(x), weights p_i - tau renormalised).
        ``"topk"``: MoLE top-k (the ``top_k`` largest gate probabilities, renormalised).
        ``"threshold"``: MoLE with the fixed threshold ``max_threshold`` (p renormalised over the
        active experts). ``"dense"``: softmax over all experts. With ``num_experts=1`` and
        ``routing="dense"`` there is no router and the layer is plain LoRA.
    top_k : int, default=2
        Number of active experts for ``routing="topk"``.
    aux_loss_reduction : {"sum", "mean"}, default="sum"
        How :func:`~sparsekit.adamole.collect_aux_loss` reduces the per-module load-balancing
        losses: ``"sum"`` over adapted modules (paper parity; the effective coefficient grows
        with the number of targets) or ``"mean"``.
    balance_score : {"adapted", "probs"}, default="adapted"
        Routing score ``P_i`` of the load-balancing loss for ``routing="adaptive"``:
        ``"adapted"`` is ``p - tau`` (the paper's code; its gradient raises every threshold
        towards ``tau_max``), ``"probs"`` is the gate probability ``p`` (Switch-style; the loss
        then pushes tau only through the active fractions, which carry no gradient). The other
        routings always use ``p``.
    threshold_budget : float or None, default=None
        ``routing="adaptive"`` only: a target for the mean number of active experts per token.
        Adds ``(mean_t k_t - threshold_budget)^2`` to each module's load-balancing term, where
        ``k_t = sum_i sigmoid((p_i - tau) / (tau_max / 10))`` is a smooth count of token t's
        active experts, so the thresholds cannot all drift to ``tau_max``. Only the batch mean is
        tied to the target; each token's count stays free. In [1, num_experts].
    threshold_entropy : float or None, default=None
        ``routing="adaptive"`` only: weight ``beta > 0`` of an entropy regulariser of the active
        count. With ``pi_t`` the (smoothed, Poisson-binomial) distribution of token t's number of
        active experts and ``q`` its mean over the batch's tokens, ``beta * (log(N + 1) - H(q))``
        joins each module's load-balancing term: it is smallest when the counts are spread over
        0..N, so it rewards thresholds that differ between tokens instead of one value at
        ``tau_max``. Can be combined with ``threshold_budget``.
    expert_init : {"lora", "orthogonal"}, default="lora"
        ``"lora"``: every expert is a LoRA pair with B = 0 (see ``init_lora_weights``): all experts
        output 0 at the start, so the gate gets no gradient from the task loss until the B's have
        moved. ``"orthogonal"``: the stacked A has orthogonal rows (each expert reads its own
        input subspace; row norms as kaiming-uniform's on average) and B is drawn from N(0, 1e-6),
        so experts differ from the first step and the task loss reaches the gate at once (the
        model's initial output moves by a negligible amount). Ignored with
        ``init_lora_weights=False``.
    expert_compute : {"dense", "gathered"}, default="dense"
        ``"dense"``: masked dense form, two GEMMs over the stacked experts, no host sync (best
        when ``num_experts * r`` is small compared with the layer width). ``"gathered"``: only the
        (token, expert) pairs that are active are computed, with grouped GEMMs; one host sync per
        module (worth it only for large experts).
    **kwargs
        Every other :class:`peft.LoraConfig` field (``lora_dropout``, ``target_modules``,
        ``modules_to_save``, ``task_type``, ``init_lora_weights`` in {True, False, "gaussian"},
        ``use_rslora``, ...). DoRA, ``lora_bias`` and the other LoRA variants are not supported.

    Notes
    -----
    The dense form draws one dropout mask shared by all experts, while the official code draws
    one per expert; at dropout 0 both are identical.
    """

    r: int = field(default=4, metadata={"help": "Rank of each LoRA expert."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha; scaling is lora_alpha / r."})
    num_experts: int = field(default=8, metadata={"help": "Number of LoRA experts per layer."})
    max_threshold: float | None = field(
        default=None,
        metadata={
            "help": "tau_max for adaptive routing, fixed threshold for 'threshold' routing; "
            "None means 1/num_experts."
        },
    )
    routing: str = field(
        default="adaptive", metadata={"help": "One of 'adaptive', 'topk', 'threshold', 'dense'."}
    )
    top_k: int = field(default=2, metadata={"help": "Active experts for routing='topk'."})
    aux_loss_reduction: str = field(
        default="sum", metadata={"help": "Reduction of the per-module aux losses: 'sum' or 'mean'."}
    )
    expert_compute: str = field(
        default="dense", metadata={"help": "'dense' masked experts or 'gathered' active pairs."}
    )
    balance_score: str = field(
        default="adapted",
        metadata={"help": "Score of the balance loss (adaptive routing): 'adapted' or 'probs'."},
    )
    threshold_budget: float | None = field(
        default=None,
        metadata={"help": "Target mean active experts per token (adaptive routing), or None."},
    )
    threshold_entropy: float | None = field(
        default=None,
        metadata={"help": "Weight of the active-count entropy term (adaptive routing), or None."},
    )
    expert_init: str = field(
        default="lora", metadata={"help": "'lora' (B = 0) or 'orthogonal' (distinct experts)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self._validate_adamole()
        # imported here: the layer module imports this one
        from torch import nn

        from ._layer import AdaMoLELinear

        self._register_custom_module({nn.Linear: AdaMoLELinear})

    def _validate_adamole(self):
        def _int(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise ValueError(
                    f"The {name!r} parameter of AdaMoLEConfig must be an int >= {low}. "
                    f"Got {value!r} instead."
                )

        _int("r", 1)
        _int("num_experts", 1)
        if self.routing not in ROUTINGS:
            raise ValueError(
                f"The 'routing' parameter of AdaMoLEConfig must be one of {ROUTINGS}. "
                f"Got {self.routing!r} instead."
            )
        if self.routing == "topk":
            _int("top_k", 1)
            if self.top_k > self.num_experts:
                raise ValueError(
                    f"top_k={self.top_k} is larger than num_experts={self.num_experts}; choose "
                    "top_k <= num_experts."
                )
        if self.max_threshold is not None and (
            isinstance(self.max_threshold, bool)
            or not isinstance(self.max_threshold, Real)
            or not 0 < self.max_threshold <= 1
        ):
            raise ValueError(
                "The 'max_threshold' parameter of AdaMoLEConfig must be None (1/num_experts) or a "
                f"float in (0, 1]. Got {self.max_threshold!r} instead."
            )
        if self.aux_loss_reduction not in AUX_LOSS_REDUCTIONS:
            raise ValueError(
                "The 'aux_loss_reduction' parameter of AdaMoLEConfig must be one of "
                f"{AUX_LOSS_REDUCTIONS}. Got {self.aux_loss_reduction!r} instead."
            )
        if self.expert_compute not in EXPERT_COMPUTES:
            raise ValueError(
                "The 'expert_compute' parameter of AdaMoLEConfig must be one of "
                f"{EXPERT_COMPUTES}. Got {self.expert_compute!r} instead."
            )
        self._validate_threshold_options()
        if self.init_lora_weights not in _SUPPORTED_INIT:
            raise ValueError(
                "AdaMoLEConfig supports init_lora_weights in (True, False, 'gaussian'). "
                f"Got {self.init_lora_weights!r} instead."
            )
        # every LoRA variant (DoRA, aLoRA, ...) plus the options the AdaMoLE layer cannot honour
        names = [f.name for f in fields(self) if f.metadata.get("is_lora_variant")]
        names += [
            "lora_bias",
            "fan_in_fan_out",
            "target_parameters",
            "trainable_token_indices",
            "layer_replication",
        ]
        unsupported = {name: getattr(self, name, None) for name in names}
        for name, value in unsupported.items():
            if value:
                raise ValueError(
                    f"AdaMoLEConfig does not support {name}={value!r}; leave it at its default."
                )
        if self.rank_pattern or self.alpha_pattern:
            raise ValueError(
                "AdaMoLEConfig does not support rank_pattern/alpha_pattern: all adapted layers "
                "share r, lora_alpha and num_experts."
            )

    def _validate_threshold_options(self):
        if self.balance_score not in BALANCE_SCORES:
            raise ValueError(
                "The 'balance_score' parameter of AdaMoLEConfig must be one of "
                f"{BALANCE_SCORES}. Got {self.balance_score!r} instead."
            )
        if self.expert_init not in EXPERT_INITS:
            raise ValueError(
                "The 'expert_init' parameter of AdaMoLEConfig must be one of "
                f"{EXPERT_INITS}. Got {self.expert_init!r} instead."
            )
        if self.threshold_budget is not None:
            budget = self.threshold_budget
            if (
                isinstance(budget, bool)
                or not isinstance(budget, Real)
                or not 1 <= budget <= self.num_experts
            ):
                raise ValueError(
                    "The 'threshold_budget' parameter of AdaMoLEConfig must be None or a number "
                    f"of active experts in [1, num_experts={self.num_experts}]. Got {budget!r} "
                    "instead."
                )
            if self.routing != "adaptive":
                raise ValueError(
                    f"threshold_budget={budget!r} needs routing='adaptive' (a learned threshold); "
                    f"got routing={self.routing!r}. Leave threshold_budget=None."
                )

        if self.threshold_entropy is not None:
            beta = self.threshold_entropy
            if (
                isinstance(beta, bool)
                or not isinstance(beta, Real)
                or not math.isfinite(beta)
                or beta <= 0
            ):
                raise ValueError(
                    "The 'threshold_entropy' parameter of AdaMoLEConfig must be None or a positive "
                    f"finite weight (e.g. 1.0). Got {beta!r} instead."
                )
            if self.routing != "adaptive":
                raise ValueError(
                    f"threshold_entropy={beta!r} needs routing='adaptive' (a learned threshold); "
                    f"got routing={self.routing!r}. Leave threshold_entropy=None."
                )

    @property
    def resolved_max_threshold(self) -> float:
        """``max_threshold``, with ``None`` resolved to ``1 / num_experts``."""
        if self.max_threshold is None:
            return 1.0 / self.num_experts
        return float(self.max_threshold)
