"""AdaMoLE routing: the routing equations, the load-balancing loss and the routing statistics.

Everything that turns router outputs into numbers lives here; :mod:`._layer` only computes the
router logits and the experts. Per token x of an adapted ``nn.Linear`` with N experts::

    p   = softmax(W_g x)                        # [N], float32
    tau = tau_max * sigmoid(W_tau x + b_tau)    # adaptive routing only
    a   = p - tau;  m = a >= 0                  # active experts
    w   = a * m / sum(a * m)                    # 0 for every expert when none is active

``routing="threshold"`` uses the fixed ``tau = tau_max`` and ``w = p * m / sum(p * m)``;
``"topk"`` keeps the k largest ``p`` (renormalised); ``"dense"`` uses ``w = p``.

Load-balancing loss of one adapted module (AdaMoLE, Liu & Luo 2024, after the Switch
Transformer's)::

    L_mod = N * sum_i f_i * P_i  [+ (mean_t k_t - k_budget)^2]

with ``f_i`` the share of (non-padding) tokens that activate expert i and ``P_i`` the mean
routing score of expert i: ``p - tau`` for adaptive routing with ``balance_score="adapted"``
(the paper's code), ``p`` otherwise. Its gradient on tau is ``-(N/T) sum_i f_i < 0``, so on its
own it raises every threshold towards ``tau_max``. The optional threshold budget (adaptive routing
only) counters that drift: ``k_t = sum_i sigmoid((p_i - tau) / (tau_max / 10))`` is a smooth count
of the active experts of token t, and the squared gap between its mean over the batch's tokens and
the target ``k_budget`` joins the module's term. Only the batch mean is tied to the target, so
the count of each token stays free to vary.

The optional threshold entropy (adaptive routing only, weight ``beta``) asks instead that the
number of active experts *differ* between tokens: with ``s_ti = sigmoid((p_ti - tau_t) /
(tau_max / 10))`` read as independent chances that expert i is active for token t, ``pi_t(k)``
(k = 0..N) is the distribution of token t's active count (Poisson-binomial), ``q(k)`` its mean
over the batch's tokens (the global batch in a multi-process fit, as for the budget's mean
count), and ``beta * (log(N + 1) - H(q))`` joins the module's term, with
``H(q) = -sum_k q(k) log q(k)``. The term is 0 when the counts are spread evenly over 0..N and
``beta * log(N + 1)`` when every token has the same hard count (e.g. every tau at its cap with
the same number of gate probabilities above it), so it pulls the thresholds apart instead of
towards one value.

Interface between a layer and the collector
-------------------------------------------
Inside :func:`collect_aux_loss` every AdaMoLE layer holds the active :class:`AuxLoss`
(installed with ``layer.attach_collector``). For each routed forward pass the layer calls
:meth:`AuxLoss.record` with its :class:`Routing`; the collector keeps the loss term and returns
the layer's statistics increment (or None), which the layer adds to its own accumulators
(``layer.add_routing_statistics``). :func:`routing_statistics` reads and resets those
accumulators through ``layer.routing_accumulators`` and ``layer.reset_routing_statistics``.
The collector never writes into a layer, and a layer never writes into the collector except
through ``record``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "AuxLoss",
    "Routing",
    "active_count_distribution",
    "active_count_entropy",
    "collect_aux_loss",
    "route",
    "routing_statistics",
    "statistics_increment",
]

# Layout of a statistics increment / accumulator: these sums, then the per-expert load.
# "near_cap" counts the tokens whose threshold is at least NEAR_CAP * tau_max.
_STAT_FIELDS = ("tokens", "active", "active_sq", "zero", "tau_sum", "tau_sq", "near_cap")
NEAR_CAP = 0.9
BALANCE_SCORES = ("adapted", "probs")
# temperature of the smooth active count of the threshold budget, as a fraction of tau_max
_BUDGET_TEMPERATURE = 0.1
# smallest probability inside the log of the active-count entropy
_ENTROPY_FLOOR = 1e-12


class Routing(NamedTuple):
    """The routing decision of one forward pass of one adapter (T tokens, N experts)."""

    weights: torch.Tensor  # [T, N] mixture weights, 0 for inactive experts
    mask: torch.Tensor  # [T, N] bool, active experts
    score: torch.Tensor  # [T, N] score of the load-balancing loss
    tau: torch.Tensor | float | None  # [T, 1] (adaptive), the fixed threshold, or None
    margin: torch.Tensor | None = None  # [T, N] p - tau (adaptive routing), else None
    tau_max: float | None = None  # the cap of tau (adaptive) or the fixed threshold


def route(
    logits, routing, n_experts, tau_max, top_k, threshold_logits=None, balance_score="adapted"
) -> Routing:
    """Routing weights from float32 router logits.

    ``logits`` are the gate logits ``[T, N]``; for adaptive routing ``threshold_logits``
    ``[T, 1]`` are the threshold-net outputs (if None, they are the last column of ``logits``).

    Returns a :class:`Routing` ``(weights, mask, score, tau, margin, tau_max)`` where ``score``
    is the per-expert score used by the load-balancing loss (``p - tau`` for adaptive routing
    with ``balance_score="adapted"``, ``p`` otherwise), ``tau`` is the per-token threshold
    ``[T, 1]`` (adaptive), a float (fixed threshold) or None, and ``margin`` is ``p - tau``
    (adaptive routing only).
    """
    if balance_score not in BALANCE_SCORES:
        raise ValueError(f"balance_score must be one of {BALANCE_SCORES}; got {balance_score!r}.")
    if routing == "adaptive":
        if threshold_logits is None:
            logits, threshold_logits = logits[:, :n_experts], logits[:, n_experts:]
        probs = torch.softmax(logits, dim=-1)
        tau = torch.sigmoid(threshold_logits) * tau_max  # [T, 1]
        margin = probs - tau
        mask = margin >= 0
        weights = torch.where(mask, margin, 0.0)
        total = weights.sum(-1, keepdim=True)
        weights = weights / torch.where(total == 0, 1.0, total)  # rows without experts stay 0
        score = margin if balance_score == "adapted" else probs
        return Routing(weights, mask, score, tau, margin, float(tau_max))
    elif routing == "threshold":
        probs = torch.softmax(logits, dim=-1)
        tau = tau_max
        score = probs
        mask = probs >= tau_max
        weights = torch.where(mask, probs, 0.0)
        total = weights.sum(-1, keepdim=True)
        weights = weights / torch.where(total == 0, 1.0, total)  # rows without experts stay 0
        return Routing(weights, mask, score, tau, None, float(tau_max))
    elif routing == "topk":
        probs = torch.softmax(logits, dim=-1)
        top_vals, top_idx = torch.topk(probs, top_k, dim=-1)
        mask = torch.zeros_like(probs, dtype=torch.bool).scatter(1, top_idx, True)
        top_vals = top_vals / top_vals.sum(-1, keepdim=True)
        return Routing(torch.zeros_like(probs).scatter(1, top_idx, top_vals), mask, probs, None)
    elif routing == "dense":
        probs = torch.softmax(logits, dim=-1)
        mask = torch.ones_like(probs, dtype=torch.bool)
        return Routing(probs, mask, probs, None)
    else:
        raise ValueError(
            f"routing must be 'adaptive', 'topk', 'threshold' or 'dense'; got {routing!r}."
        )


def statistics_increment(decision: Routing, valid=None) -> torch.Tensor:
    """Routing statistics of one forward pass as one on-device vector (no host sync).

    ``[tokens, active experts, active experts^2, tokens with no expert, sum tau, sum tau^2,
    tokens with tau >= NEAR_CAP * tau_max, load_1..load_N]``, each summed over the tokens where
    ``valid`` (float ``[T]``, 1 = real token) is 1.
    """
    mask, tau = decision.mask, decision.tau
    with torch.no_grad():
        device = mask.device
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        fmask = mask.to(acc_dtype)
        n_active = fmask.sum(-1)
        zero = (n_active == 0).to(acc_dtype)
        tau_t = tau.detach().reshape(-1).to(acc_dtype) if isinstance(tau, torch.Tensor) else None
        near = None
        if tau_t is not None and decision.tau_max is not None:
            near = (tau_t >= NEAR_CAP * decision.tau_max).to(acc_dtype)
        if valid is None:
            count = fmask.new_full((), mask.shape[0])
            load = fmask.sum(0)
            active, active_sq, zeros = n_active.sum(), (n_active * n_active).sum(), zero.sum()
            if tau_t is not None:
                tau_sum, tau_sq = tau_t.sum(), (tau_t * tau_t).sum()
            near_cap = near.sum() if near is not None else None
        else:
            v = valid.to(acc_dtype)
            count = v.sum()
            load = v @ fmask
            active, active_sq, zeros = v @ n_active, v @ (n_active * n_active), v @ zero
            if tau_t is not None:
                tau_sum, tau_sq = v @ tau_t, v @ (tau_t * tau_t)
            near_cap = v @ near if near is not None else None
        if tau_t is None:
            fixed = float(tau) if tau is not None else 0.0
            tau_sum, tau_sq = count * fixed, count * (fixed * fixed)
        if near_cap is None:  # a fixed threshold sits at its cap; top-k and dense have none
            near_cap = count if tau is not None else count * 0.0
        head = torch.stack([count, active, active_sq, zeros, tau_sum, tau_sq, near_cap])
        return torch.cat([head, load])


def _keep(tensor):
    return tensor


def _routing_means(fmask, score, valid, sum_over_ranks=None):
    """Fraction of tokens routed to each expert and mean router probability per expert, over the
    batch's non-padding tokens.

    With ``sum_over_ranks`` (a multi-process fit) the token sums and the token count are summed
    over the ranks first, so every rank gets the statistics of the global batch, and the
    load-balancing loss (with its gradient, through the autograd all-reduce) is the one-process
    loss of that batch.
    """
    if sum_over_ranks is None:
        if valid is None:
            return fmask.mean(0), score.mean(0)
        denom = valid.sum().clamp_min(1.0)
        return (valid @ fmask) / denom, (valid @ score) / denom
    if valid is None:
        count = torch.full((1,), float(fmask.shape[0]), device=score.device)
        sums = [fmask.sum(0), score.sum(0)]
    else:
        count = valid.sum().reshape(1)
        sums = [valid @ fmask, valid @ score]
    n = fmask.shape[1]
    total = sum_over_ranks(torch.cat([sums[0].float(), sums[1].float(), count.float()]))
    denom = total[-1].clamp_min(1.0)
    return (total[:n] / denom).to(score.dtype), (total[n : 2 * n] / denom).to(score.dtype)


def _token_mean(values, valid, sum_over_ranks=None):
    """Mean over the batch's non-padding tokens of per-token ``values`` (``[T]``, or ``[T, K]``
    for a mean per column); with ``sum_over_ranks`` (a multi-process fit) over the global batch,
    as :func:`_routing_means` does: the token sums and the token count are all-reduced (with
    autograd) before the division, so the budget and entropy terms and their gradients are those
    of one process on the global batch."""
    if sum_over_ranks is None:
        if valid is None:
            return values.mean(0)
        return (valid @ values) / valid.sum().clamp_min(1.0)
    if valid is None:
        sums = values.sum(0)
        count = values.new_tensor(float(values.shape[0]))
    else:
        sums, count = valid @ values, valid.sum()
    local = torch.cat([sums.reshape(-1).float(), count.reshape(1).float()])
    total = sum_over_ranks(local)
    mean = total[:-1] / total[-1].clamp_min(1.0)
    return mean.reshape(values.shape[1:]).to(values.dtype)


class AuxLoss:
    """Load-balancing losses of the AdaMoLE layers run inside :func:`collect_aux_loss`.

    Parameters
    ----------
    attention_mask : tensor-like of shape (batch, seq_len), default=None
        1 for real tokens, 0 for padding; padding is left out of the loss and the statistics.
    statistics : bool, default=True
        Whether :meth:`record` returns routing-statistics increments.
    reduction : {"sum", "mean"} or None, default=None
        Overrides each adapter's ``aux_loss_reduction``.
    device : torch.device or None, default=None
        Device of the zero loss returned when no layer recorded anything.

    Attributes
    ----------
    terms : list of torch.Tensor
        One 0-dim float32 tensor per (adapted module, adapter, forward pass), in call order:
        ``L_mod = N * sum_i f_i * P_i`` over non-padding tokens (see the module docstring).
    statistics : bool
        Whether routing statistics are collected.
    reduction : str or None
        The reduction override.
    """

    def __init__(self, attention_mask=None, statistics=True, reduction=None, device=None):
        self.statistics = statistics
        self.reduction = reduction
        self.terms: list[torch.Tensor] = []
        self._reductions: list[str] = []
        self._device = device
        self._mask = None
        self._mask_by_device: dict[torch.device, torch.Tensor] = {}
        # Set by a multi-process trainer: sums a tensor over the ranks (with autograd), so that
        # the load-balancing statistics are those of the global batch (see _routing_means).
        self.sum_over_ranks = None
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

    def record(
        self,
        decision: Routing,
        *,
        n_experts: int,
        reduction: str,
        threshold_budget=None,
        threshold_entropy=None,
    ):
        """Add the load-balancing term of one routed forward pass.

        Called by an AdaMoLE layer for each adapter with a router.

        Parameters
        ----------
        decision : Routing
            The routing of the pass (T tokens).
        n_experts : int
            Number of experts N of the adapter.
        reduction : {"sum", "mean"}
            The adapter's ``aux_loss_reduction`` (unless overridden by ``self.reduction``).
        threshold_budget : float or None, default=None
            Target mean number of active experts per token (adaptive routing): adds
            ``(mean_t k_t - threshold_budget)^2`` with the smooth count ``k_t`` of the module
            docstring.
        threshold_entropy : float or None, default=None
            Weight ``beta`` of the active-count entropy term (adaptive routing): adds
            ``beta * (log(N + 1) - H(q))`` (see :func:`active_count_entropy`).

        Returns
        -------
        torch.Tensor or None
            The statistics increment of the pass (see :func:`statistics_increment`) for the
            layer to accumulate, or None when ``statistics=False``.
        """
        mask, score = decision.mask, decision.score
        valid = self._valid(mask.shape[0], score.device)
        # The identity hooks keep what the aux loss saves for backward out of a surrounding
        # non-reentrant checkpoint: its recompute (which skips this method) must save exactly
        # the tensors the checkpointed forward saved.
        with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            fmask = mask.to(score.dtype)
            frac, prob = _routing_means(fmask, score, valid, self.sum_over_ranks)
            term = n_experts * (frac @ prob)
            if threshold_budget is not None:
                if decision.margin is None:
                    raise ValueError("threshold_budget needs adaptive routing (a learned tau).")
                temperature = _BUDGET_TEMPERATURE * decision.tau_max
                soft_count = torch.sigmoid(decision.margin / temperature).sum(-1)  # [T]
                mean_count = _token_mean(soft_count, valid, self.sum_over_ranks)
                term = term + (mean_count - threshold_budget) ** 2
            if threshold_entropy is not None:
                entropy = active_count_entropy(decision, valid, self.sum_over_ranks)
                term = term + threshold_entropy * (math.log(n_experts + 1) - entropy)
            self.terms.append(term)
        self._reductions.append(reduction)
        if not self.statistics:
            return None
        return statistics_increment(decision, valid)


def active_count_distribution(decision: Routing) -> torch.Tensor:
    """Distribution of each token's number of active experts, smoothed: ``[T, N + 1]``.

    Expert i is read as active for token t with the independent chance ``s_ti = sigmoid((p_ti -
    tau_t) / (tau_max / 10))`` (the smooth indicator of the threshold budget), so row t is the
    distribution ``pi_t(k)``, k = 0..N, of the number of successes among those N chances
    (Poisson-binomial), built one expert at a time. Differentiable in the gate and the threshold.
    """
    if decision.margin is None:
        raise ValueError("threshold_entropy needs adaptive routing (a learned tau).")
    temperature = _BUDGET_TEMPERATURE * decision.tau_max
    chance = torch.sigmoid(decision.margin / temperature)  # [T, N]
    n_tokens, n_experts = chance.shape
    dist = chance.new_zeros(n_tokens, n_experts + 1)
    dist[:, 0] = 1.0
    for i in range(n_experts):
        s = chance[:, i : i + 1]
        shifted = torch.cat([dist.new_zeros(n_tokens, 1), dist[:, :-1]], dim=1)
        dist = dist * (1.0 - s) + shifted * s
    return dist


def active_count_entropy(decision: Routing, valid=None, sum_over_ranks=None) -> torch.Tensor:
    """Entropy (nats) of the batch's distribution of active-expert counts, ``H(q)``.

    ``q(k)`` is the mean over the tokens where ``valid`` (float ``[T]``) is 1 of
    :func:`active_count_distribution`; at most ``log(N + 1)``. It is the entropy of the
    batch-averaged distribution, not the mean of per-token entropies (a token's own count may be
    certain; what the term rewards is counts that differ between tokens).

    With ``sum_over_ranks`` (a multi-process fit) ``q`` is the mean over the global batch: the
    per-rank token sums of ``pi_t(k)`` and the token counts are all-reduced with autograd before
    the division (see :func:`_token_mean`), so every rank gets the one-process ``H(q)`` of the
    global batch and its gradient. Averaging per-rank entropies instead would not: H is concave,
    so that mean is at most the global entropy, and the gap depends on how the batch is split.
    """
    q = _token_mean(active_count_distribution(decision), valid, sum_over_ranks)
    # q(k) is exactly 0 where the smooth indicators saturate; log(0) would give an infinite
    # gradient there (and NaN through the zero chances), so the log sees at least 1e-12
    return -(q * torch.log(q.clamp_min(_ENTROPY_FLOOR))).sum()


def _routed_layers(model: nn.Module):
    from ._layer import AdaMoLELinear  # the layer module imports this one

    return [(name, m) for name, m in model.named_modules() if isinstance(m, AdaMoLELinear)]


@contextmanager
def collect_aux_loss(
    model: nn.Module, attention_mask=None, *, statistics: bool = True, reduction: str | None = None
) -> Iterator[AuxLoss]:
    """Collect the AdaMoLE load-balancing loss of the forward passes run inside the context.

    Usage::

        with collect_aux_loss(peft_model, attention_mask=batch["attention_mask"]) as aux:
            out = peft_model(**batch)
        loss = out.loss + coef * aux.loss

    The loss of each adapted module is computed from that forward's routing (f_i the share of
    tokens activating expert i, P_i the mean score, ``p - tau`` for adaptive routing and ``p``
    otherwise, ``L = N * sum_i f_i * P_i``; see :mod:`sparsekit.adamole._routing`) over the
    tokens where ``attention_mask`` is non-zero, and reduced over modules with the adapter's
    ``aux_loss_reduction``. Nothing is stored on the modules, so the value is fresh under
    ``torch.no_grad`` and correct with DDP and non-reentrant gradient checkpointing (recomputes
    in the backward pass are ignored). With reentrant checkpointing the first forward runs
    without grad, so the loss has no gradient: use
    ``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``.

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
    layers = [m for _, m in _routed_layers(model)]
    device = None
    for param in model.parameters():
        device = param.device
        break
    collector = AuxLoss(attention_mask, statistics=statistics, reduction=reduction, device=device)
    previous = [layer.attach_collector(collector) for layer in layers]
    try:
        yield collector
    finally:
        for layer, prev in zip(layers, previous):
            layer.attach_collector(prev)


def _short_name(name: str) -> str:
    for prefix in ("module.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name


def _module_summary(vec, has_tau, tau_max):
    count, active, active_sq, zeros, t_sum, t_sq, near = vec[: len(_STAT_FIELDS)]
    t_mean = t_sum / count if has_tau else math.nan
    t_std = math.sqrt(max(t_sq / count - t_mean * t_mean, 0.0)) if has_tau else math.nan
    a_mean = active / count
    return {
        "mean_active_experts": a_mean,
        "active_experts_std": math.sqrt(max(active_sq / count - a_mean * a_mean, 0.0)),
        "zero_expert_fraction": zeros / count,
        "tau_mean": t_mean,
        "tau_std": t_std,
        "tau_over_max": t_mean / tau_max if has_tau else math.nan,
        "near_cap_fraction": near / count if has_tau else math.nan,
        "expert_load": [v / count for v in vec[len(_STAT_FIELDS) :]],
        "tokens": int(count),
    }


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
        token), ``active_experts_std`` (mean over modules of its standard deviation over tokens),
        ``zero_expert_fraction`` (share of tokens with no active expert),
        ``tau_mean``/``tau_std`` (threshold over all tokens and modules; NaN for top-k and dense
        routing, which have none), ``tau_over_max`` (mean over modules of mean tau / tau_max),
        ``near_cap_fraction`` (share of tokens with tau >= 0.9 tau_max; 1 for a fixed
        threshold), ``expert_load`` (mean over modules of the share of tokens
        activating each expert) and ``per_module`` (the same per module, keyed by module name).
    """
    items = []
    for name, layer in _routed_layers(model):
        accumulators = layer.routing_accumulators()
        for adapter, acc in accumulators.items():
            key = _short_name(name) if len(accumulators) == 1 else f"{_short_name(name)}[{adapter}]"
            items.append((key, layer, adapter, acc))
    if not items:
        return {}
    device = items[0][3].device
    flat = torch.cat([acc.to(device) for *_, acc in items]).cpu().tolist()  # the one sync
    if reset:
        for _, layer, adapter, _ in items:
            layer.reset_routing_statistics(adapter)

    per_module = {}
    loads = []
    tau_n = tau_s = tau_s2 = near_n = near_s = 0.0
    offset = 0
    for key, layer, adapter, acc in items:
        vec = flat[offset : offset + acc.numel()]
        offset += acc.numel()
        if vec[0] <= 0:
            continue
        has_tau = layer.routing[adapter] in ("adaptive", "threshold")
        per_module[key] = _module_summary(vec, has_tau, layer.tau_max[adapter])
        loads.append(per_module[key]["expert_load"])
        if has_tau:
            tau_n, tau_s, tau_s2 = tau_n + vec[0], tau_s + vec[4], tau_s2 + vec[5]
            near_n, near_s = near_n + vec[0], near_s + vec[6]
    if not per_module:
        return {}
    n_mod = len(per_module)
    ratios = [m["tau_over_max"] for m in per_module.values() if not math.isnan(m["tau_over_max"])]
    width = max(len(load) for load in loads)
    same = [load for load in loads if len(load) == width]
    pooled_mean = tau_s / tau_n if tau_n else math.nan
    return {
        "mean_active_experts": sum(m["mean_active_experts"] for m in per_module.values()) / n_mod,
        "zero_expert_fraction": sum(m["zero_expert_fraction"] for m in per_module.values()) / n_mod,
        "tau_mean": pooled_mean,
        "tau_std": (math.sqrt(max(tau_s2 / tau_n - pooled_mean**2, 0.0)) if tau_n else math.nan),
        "tau_over_max": sum(ratios) / len(ratios) if ratios else math.nan,
        "near_cap_fraction": near_s / near_n if near_n else math.nan,
        "active_experts_std": sum(m["active_experts_std"] for m in per_module.values()) / n_mod,
        "expert_load": [sum(col) / len(same) for col in zip(*same)],
        "per_module": per_module,
    }
