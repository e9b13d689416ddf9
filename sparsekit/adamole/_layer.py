"""The AdaMoLE layer: a peft LoRA layer holding a mixture of LoRA experts.

Per token x of an adapted ``nn.Linear``: ``y = W0 x + sum_i w_i * (alpha / r) * B_i A_i
dropout(x)``, with the routing weights ``w`` of :func:`sparsekit.adamole._routing.route` (the
routing equations, the load-balancing loss and the statistics all live in ``_routing.py``).

The experts are stacked (``lora_A``: ``[N*r, d_in]``, ``lora_B``: ``[d_out, N*r]``), so the
default "dense" form is two GEMMs, ``h = x A^T`` and ``y += (h * w) B^T``, with no per-expert Python
loop and no host sync; it equals the per-expert sum exactly because inactive experts have weight 0.
The "gathered" form computes the experts on the active (token, expert) pairs only, with grouped
GEMMs (``_SegmentMatmul``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

from ._config import AdaMoLEConfig
from ._routing import route as _route

_NULL_CONTEXT = contextlib.nullcontext()
_ORTHOGONAL_B_STD = 1e-3  # expert_init="orthogonal": B ~ N(0, 1e-6)


def _in_autograd_backward() -> bool:
    """True while the autograd engine runs a backward pass (e.g. a checkpoint recompute)."""
    try:
        return torch._C._current_graph_task_id() != -1
    except AttributeError:  # pragma: no cover - very old or very new torch
        return False


class _SegmentMatmul(torch.autograd.Function):
    """``out[s] = x[s] @ w[g]`` for the rows ``s`` of each group ``g`` (rows sorted by group).

    ``offs`` holds the cumulative group ends (int32, like ``torch._grouped_mm``). Uses
    ``torch._grouped_mm`` where the device and dtype support it, else a padded ``bmm``.
    """

    @staticmethod
    def forward(ctx, x, w, offs, counts):
        ctx.save_for_backward(x, w, offs, counts)
        return _segment_mm(x, w, offs, counts)

    @staticmethod
    def backward(ctx, grad):
        x, w, offs, counts = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _segment_mm(grad, w.transpose(1, 2), offs, counts)
        if ctx.needs_input_grad[1]:
            grad_w = _segment_wgrad(x, grad, offs, counts, w.shape[0])
        return grad_x, grad_w, None, None


def _padded_index(counts, offs, total):
    n_groups = counts.shape[0]
    group = torch.repeat_interleave(
        torch.arange(n_groups, device=counts.device), counts, output_size=total
    )
    starts = offs.long() - counts
    pos = torch.arange(total, device=counts.device) - starts[group]
    return group, pos


def _segment_mm(x, w, offs, counts):
    try:
        return torch._grouped_mm(x, w, offs=offs)
    except (AttributeError, RuntimeError, NotImplementedError):
        pass
    group, pos = _padded_index(counts, offs, x.shape[0])
    capacity = int(counts.max())  # a host sync, in this fallback only
    buf = x.new_zeros(w.shape[0], capacity, x.shape[1])
    buf[group, pos] = x
    return torch.bmm(buf, w)[group, pos]


def _segment_wgrad(x, grad, offs, counts, n_groups):
    try:
        return torch._grouped_mm(x.t(), grad, offs=offs)
    except (AttributeError, RuntimeError, NotImplementedError):
        pass
    group, pos = _padded_index(counts, offs, x.shape[0])
    capacity = int(counts.max())
    bx = x.new_zeros(n_groups, capacity, x.shape[1])
    bg = grad.new_zeros(n_groups, capacity, grad.shape[1])
    bx[group, pos] = x
    bg[group, pos] = grad
    return torch.bmm(bx.transpose(1, 2), bg)


class AdaMoLELinear(nn.Module, LoraLayer):
    """An ``nn.Linear`` adapted with an adaptive mixture of LoRA experts (AdaMoLE).

    A peft LoRA custom layer (``nn.Module`` + :class:`peft.tuners.lora.LoraLayer`); peft builds
    it through ``LoraConfig._register_custom_module``, which :class:`AdaMoLEConfig` does on
    creation. State is kept per adapter name in ``ModuleDict``\\ s whose names start with
    ``lora_``, so peft's trainable-parameter accounting, ``set_adapter``, ``disable_adapter`` and
    ``save_pretrained``/``from_pretrained`` handle it like any LoRA layer.

    Parameters
    ----------
    base_layer : nn.Linear
        The frozen layer to adapt.
    adapter_name : str
        Name of the adapter to create.
    config : AdaMoLEConfig
        Adapter configuration (``r`` is the rank of each expert).
    r : int, default=None
        Per-expert rank; defaults to ``config.r``.
    lora_alpha : float, default=None
        Defaults to ``config.lora_alpha``.
    **kwargs
        Passed on by peft and ignored.

    Attributes
    ----------
    lora_A : nn.ModuleDict
        Per adapter, ``nn.Linear(d_in, N*r)``: the stacked down-projections, rows ``i*r:(i+1)*r``
        belong to expert i.
    lora_B : nn.ModuleDict
        Per adapter, ``nn.Linear(N*r, d_out)``: the stacked up-projections, columns
        ``i*r:(i+1)*r`` belong to expert i.
    lora_gate : nn.ModuleDict
        Per adapter, the gate ``nn.Linear(d_in, N, bias=False)``; absent without a router
        (``num_experts=1`` with a non-adaptive routing, i.e. plain LoRA).
    lora_threshold : nn.ModuleDict
        Per adapter with ``routing="adaptive"``, the threshold net ``nn.Linear(d_in, 1)``.

    Notes
    -----
    The auxiliary load-balancing loss is not stored on the module: each routed forward pass
    made inside :func:`~sparsekit.adamole.collect_aux_loss` hands its routing to the collector
    (:meth:`sparsekit.adamole.AuxLoss.record`; skipped during checkpoint recomputes), which
    returns the statistics increment that the layer adds to its own on-device accumulators
    (read by :func:`~sparsekit.adamole.routing_statistics`).
    """

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_gate", "lora_threshold")
    other_param_names = LoraLayer.other_param_names + (
        "num_experts",
        "routing",
        "top_k",
        "tau_max",
        "expert_compute",
        "aux_loss_reduction",
        "balance_score",
        "threshold_budget",
        "threshold_entropy",
        "expert_init",
    )

    def __init__(self, base_layer, adapter_name, config, r=None, lora_alpha=None, **kwargs):
        if not isinstance(config, AdaMoLEConfig):
            raise TypeError(
                "AdaMoLELinear needs an AdaMoLEConfig; got "
                f"{type(config).__name__}. Build the model with sparsekit.adamole.get_adamole_model."
            )
        super().__init__()
        LoraLayer.__init__(self, base_layer, ephemeral_gpu_offload=False)
        if not isinstance(self.get_base_layer(), nn.Linear):
            raise TypeError(
                f"AdaMoLELinear adapts nn.Linear layers only; got {type(self.get_base_layer())}."
            )
        self.lora_gate = nn.ModuleDict({})
        self.lora_threshold = nn.ModuleDict({})
        self.num_experts: dict[str, int] = {}
        self.routing: dict[str, str] = {}
        self.top_k: dict[str, int] = {}
        self.tau_max: dict[str, float] = {}
        self.expert_compute: dict[str, str] = {}
        self.aux_loss_reduction: dict[str, str] = {}
        self.balance_score: dict[str, str] = {}
        self.threshold_budget: dict[str, float | None] = {}
        self.threshold_entropy: dict[str, float | None] = {}
        self.expert_init: dict[str, str] = {}
        self.fan_in_fan_out = False
        # set by collect_aux_loss for the duration of its context; never part of the state dict
        self._adamole_collector = None
        # routing statistics accumulators (on device), per adapter; see routing_statistics
        self._routing_accumulators: dict[str, torch.Tensor] = {}
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            config.r if r is None else r,
            lora_alpha=config.lora_alpha if lora_alpha is None else lora_alpha,
            config=config,
        )

    # ------------------------------------------------------------------ construction
    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs) -> None:
        """Create (or replace) the experts and router of ``adapter_name``.

        Parameters
        ----------
        adapter_name : str
            The adapter to create.
        r : int
            Rank of each expert.
        lora_alpha : float
            LoRA alpha; the expert scaling is ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA).
        config : AdaMoLEConfig
            The adapter configuration.
        **kwargs
            Passed on by peft and ignored.
        """
        if not isinstance(config, AdaMoLEConfig):
            raise TypeError(
                f"AdaMoLELinear needs an AdaMoLEConfig; got {type(config).__name__}. All adapters "
                "of an AdaMoLE model must be AdaMoLE adapters."
            )
        if r <= 0:
            raise ValueError(f"The per-expert rank r must be a positive integer; got {r}.")
        n = config.num_experts
        d_in, d_out = self.in_features, self.out_features

        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.use_rslora[adapter_name] = config.use_rslora
        self.use_dora[adapter_name] = False
        self.lora_bias[adapter_name] = False
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.num_experts[adapter_name] = n
        self.routing[adapter_name] = config.routing
        self.top_k[adapter_name] = config.top_k
        self.tau_max[adapter_name] = config.resolved_max_threshold
        self.expert_compute[adapter_name] = config.expert_compute
        self.aux_loss_reduction[adapter_name] = config.aux_loss_reduction
        self.balance_score[adapter_name] = config.balance_score
        self.threshold_budget[adapter_name] = config.threshold_budget
        self.threshold_entropy[adapter_name] = config.threshold_entropy
        self.expert_init[adapter_name] = config.expert_init

        dropout = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.lora_dropout[adapter_name] = dropout
        self.lora_A[adapter_name] = nn.Linear(d_in, n * r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(n * r, d_out, bias=False)
        has_router = n > 1 or config.routing == "adaptive"
        for container in (self.lora_gate, self.lora_threshold):
            if adapter_name in container:
                del container[adapter_name]
        if has_router:
            self.lora_gate[adapter_name] = nn.Linear(d_in, n, bias=False)
            if config.routing == "adaptive":
                self.lora_threshold[adapter_name] = nn.Linear(d_in, 1)
        self.reset_routing_statistics(adapter_name)
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_lora_parameters(self, adapter_name, init_lora_weights):
        """Initialise the experts: A kaiming-uniform (or Gaussian), B zeros.

        ``init_lora_weights=False`` keeps ``nn.Linear``'s default init for B as well (non-zero;
        useful for tests). The stacked A has fan-in ``d_in``, so every expert gets the same
        bound as a separately initialised ``[r, d_in]`` matrix. Gate and threshold keep
        ``nn.Linear``'s default init (the threshold bias makes tau start near tau_max / 2).
        With the adapter's ``expert_init="orthogonal"`` (and ``init_lora_weights`` not False),
        the stacked A gets orthogonal rows scaled to kaiming-uniform's expected row norm
        ``1/sqrt(3)`` and B is drawn from N(0, 1e-6), which makes the experts distinct from the
        first step.

        Parameters
        ----------
        adapter_name : str
            The adapter to initialise.
        init_lora_weights : bool or "gaussian"
            The peft option: True (kaiming-uniform A), "gaussian" or False (see above).
        """
        if init_lora_weights is False or adapter_name not in self.lora_A:
            return
        weight_a = self.lora_A[adapter_name].weight
        if self.expert_init.get(adapter_name) == "orthogonal":
            with torch.no_grad():
                nn.init.orthogonal_(weight_a)  # rows orthonormal when N*r <= d_in
                weight_a.mul_(1.0 / math.sqrt(3.0))
                nn.init.normal_(self.lora_B[adapter_name].weight, std=_ORTHOGONAL_B_STD)
            return
        if init_lora_weights == "gaussian":
            nn.init.normal_(weight_a, std=1.0 / self.r[adapter_name])
        else:
            nn.init.kaiming_uniform_(weight_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[adapter_name].weight)

    # ------------------------------------------------------------------ merging (plain LoRA only)
    def _check_mergeable(self, adapter):
        if adapter in self.lora_gate:
            raise ValueError(
                f"Adapter {adapter!r} routes tokens to experts with a learned router, so its update "
                "depends on the input and cannot be merged into the base weight. Only a single "
                "expert without router (num_experts=1, routing='dense') can be merged."
            )

    def get_delta_weight(self, adapter) -> torch.Tensor:
        """Weight update of a router-less adapter (plain LoRA): ``B @ A * scaling``.

        Parameters
        ----------
        adapter : str
            A router-less adapter (``num_experts=1`` with ``routing="dense"``).

        Returns
        -------
        torch.Tensor
            The ``[d_out, d_in]`` update, in the dtype of ``lora_B``.
        """
        self._check_mergeable(adapter)
        weight_a = self.lora_A[adapter].weight
        weight_b = self.lora_B[adapter].weight
        dtype = weight_b.dtype
        if weight_b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            weight_a, weight_b = weight_a.float(), weight_b.float()
        return ((weight_b @ weight_a) * self.scaling[adapter]).to(dtype)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        """Merge router-less adapters into the base weight; raise for mixtures.

        Parameters
        ----------
        safe_merge : bool, default=False
            Check the merged weights for NaNs before writing them.
        adapter_names : list of str or None, default=None
            Adapters to merge; None merges the active ones.
        """
        from peft.tuners.tuners_utils import check_adapters_to_merge

        adapter_names = check_adapters_to_merge(self, adapter_names)
        for adapter in adapter_names:
            self._check_mergeable(adapter)
        base = self.get_base_layer()
        for adapter in adapter_names:
            if adapter not in self.lora_A:
                continue
            delta = self.get_delta_weight(adapter).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights of adapter {adapter!r}.")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_A:
                base.weight.data -= self.get_delta_weight(adapter).to(base.weight.dtype)

    # ------------------------------------------------------------------ routing collector
    def attach_collector(self, collector):
        """Install the aux-loss collector used by the next forward passes.

        Parameters
        ----------
        collector : AuxLoss or None
            The collector of :func:`~sparsekit.adamole.collect_aux_loss`; None collects nothing.

        Returns
        -------
        AuxLoss or None
            The collector installed before (to restore it afterwards).
        """
        previous, self._adamole_collector = self._adamole_collector, collector
        return previous

    def add_routing_statistics(self, adapter, increment):
        """Add a statistics increment to the adapter's on-device accumulator.

        Parameters
        ----------
        adapter : str
            The adapter whose routing the increment describes.
        increment : torch.Tensor
            The vector returned by :meth:`sparsekit.adamole.AuxLoss.record`.
        """
        acc = self._routing_accumulators.get(adapter)
        if acc is None or acc.shape != increment.shape or acc.device != increment.device:
            self._routing_accumulators[adapter] = increment
        else:
            acc.add_(increment)

    def routing_accumulators(self) -> dict:
        """The on-device statistics accumulators, per adapter.

        Returns
        -------
        dict of str to torch.Tensor
            A copy of the mapping adapter -> accumulator (layout in ``_routing.py``).
        """
        return dict(self._routing_accumulators)

    def reset_routing_statistics(self, adapter=None):
        """Clear routing statistics.

        Parameters
        ----------
        adapter : str or None, default=None
            The adapter whose accumulator is cleared; None clears all.
        """
        if adapter is None:
            self._routing_accumulators.clear()
        else:
            self._routing_accumulators.pop(adapter, None)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(
                "AdaMoLE layers do not support mixed-adapter batches (adapter_names=...); use "
                "set_adapter to choose the active adapter."
            )
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)

        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        lead_shape = result.shape[:-1]
        out = result.reshape(-1, self.out_features)
        collector = self._adamole_collector
        if collector is not None and _in_autograd_backward():
            collector = None  # a checkpoint recompute: the first pass already reported
        flat_x = x.reshape(-1, self.in_features)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            out = self._adapter_forward(adapter, flat_x, out, collector)
        return out.reshape(*lead_shape, self.out_features).to(result_dtype)

    def _adapter_forward(self, adapter, x, out, collector):
        lora_a = self.lora_A[adapter].weight
        lora_b = self.lora_B[adapter].weight
        dropout = self.lora_dropout[adapter]
        scaling = self.scaling[adapter]
        x = self._cast_input_dtype(x, lora_a.dtype)

        if adapter not in self.lora_gate:  # plain LoRA, computed exactly as peft does
            delta = F.linear(F.linear(dropout(x), lora_a), lora_b) * scaling
            return out + delta

        n_experts = self.num_experts[adapter]
        rank = self.r[adapter]
        routing = self.routing[adapter]
        fuse = (
            isinstance(dropout, nn.Identity)
            or not dropout.training
            or getattr(dropout, "p", None) == 0
        )
        fuse = fuse and lora_a.dtype == torch.float32 and self.expert_compute[adapter] == "dense"
        autocast = torch.is_autocast_enabled(x.device.type)
        fuse = fuse and not autocast  # autocast would run the fused GEMM in low precision

        # ---- router, in float32; with no dropout and float32 adapters, the gate, the threshold
        # net and the expert down-projection share one GEMM
        gate_w = self.lora_gate[adapter].weight
        thr = self.lora_threshold[adapter] if routing == "adaptive" else None
        thr_logits = None
        if fuse:
            weights_ = [lora_a, gate_w] + ([thr.weight] if thr is not None else [])
            fused = F.linear(x, torch.cat(weights_, dim=0))
            n_a = lora_a.shape[0]
            h = fused[:, :n_a]
            gate_logits = fused[:, n_a : n_a + n_experts]
            if thr is not None:
                thr_logits = fused[:, n_a + n_experts :] + thr.bias
        else:
            h = None
            with torch.autocast(x.device.type, enabled=False) if autocast else _NULL_CONTEXT:
                xf = x.float()
                gate_logits = F.linear(xf, gate_w.float())
                if thr is not None:
                    thr_logits = F.linear(xf, thr.weight.float(), thr.bias.float())
        decision = _route(
            gate_logits.float(),
            routing,
            n_experts,
            self.tau_max[adapter],
            self.top_k[adapter],
            None if thr_logits is None else thr_logits.float(),
            self.balance_score[adapter],
        )

        # ---- experts
        if self.expert_compute[adapter] == "gathered":
            out = self._gathered_experts(
                x, dropout, lora_a, lora_b, decision, scaling, n_experts, rank, out
            )
        else:
            if h is None:
                h = F.linear(dropout(x), lora_a)  # [T, N*r]
            weights = decision.weights.to(h.dtype).unsqueeze(-1)
            h = (h.unflatten(1, (n_experts, rank)) * weights).flatten(1)
            out = torch.addmm(out.to(h.dtype), h, lora_b.t(), alpha=scaling)  # out + s*h B^T

        if collector is not None:
            increment = collector.record(
                decision,
                n_experts=n_experts,
                reduction=self.aux_loss_reduction[adapter],
                threshold_budget=self.threshold_budget[adapter],
                threshold_entropy=self.threshold_entropy[adapter],
            )
            if increment is not None:
                self.add_routing_statistics(adapter, increment)
        return out

    def _gathered_experts(
        self, x, dropout, lora_a, lora_b, decision, scaling, n_experts, rank, out
    ):
        """Experts on the active (token, expert) pairs only: one host sync."""
        weights = decision.weights
        pairs = decision.mask.t().nonzero()  # [K, 2] (expert, token), sorted by expert; syncs once
        n_pairs = pairs.shape[0]
        out = out.to(lora_a.dtype)
        if n_pairs == 0:
            return out
        expert_idx, token_idx = pairs[:, 0], pairs[:, 1]
        counts = torch.bincount(expert_idx, minlength=n_experts)
        offs = counts.cumsum(0).to(torch.int32)
        xg = dropout(x)[token_idx]  # [K, d_in]
        a3 = lora_a.unflatten(0, (n_experts, rank)).transpose(1, 2)  # [N, d_in, r]
        b3 = lora_b.unflatten(1, (n_experts, rank)).permute(1, 2, 0)  # [N, r, d_out]
        hg = _SegmentMatmul.apply(xg, a3, offs, counts)  # [K, r]
        wg = (weights[token_idx, expert_idx] * scaling).to(hg.dtype)
        og = _SegmentMatmul.apply(hg * wg.unsqueeze(-1), b3, offs, counts)
        return out.index_add(0, token_idx, og)

    def __repr__(self) -> str:
        return "adamole." + super().__repr__()
