"""AdaMoLE layer benchmark: forward+backward step time and activation memory.

Arms, all measured in the same run, interleaved repeat by repeat (so that load from other
processes hits every arm alike):

- ``peft LoRA r=32``: peft's own LoRA layer, rank 32 (the total rank of 8 experts x 4);
- ``AdaMoLE 8x4``: sparsekit's dense masked form (default), adaptive routing;
- ``AdaMoLE 8x4 gathered``: the gathered form (active pairs only), same weights;
- ``MoLE top-2 8x4``: the same machinery with top-2 routing;
- ``loop reference``: the official per-expert loop (zefang-liu/AdaMoLE ``AdaMoeLayer``: gather
  the active tokens of each expert with ``nonzero``, run expert 0 on every token for the output
  shape, one dropout mask per expert), with the same weights as ``AdaMoLE 8x4``.

Workloads: one adapted 576x576 projection at 4096 tokens (input requiring grad, as inside a
network), a tiny Llama (hidden 576, SmolLM-like, 4 layers) and a tiny BERT (hidden 384,
MiniLM-like, 4 layers) built from a config (vocabulary 2048), batch 4 x 128 tokens by default,
adapters on q, k, v, o. Each step is forward,
loss (+ 1e-3 x aux loss for the mixtures), backward. The gate is scaled so that about 4 of 8
experts are active per token, as after training (spec §11: 3.4-4.0); the measured mean is
reported. "saved MiB" is the size of the non-parameter tensors autograd saves for backward
(the activation memory); on CUDA the peak allocated memory of the step is reported too.

Usage::

    python benchmarks/bench_adamole_layer.py                 # CPU, 1 thread
    python benchmarks/bench_adamole_layer.py --device cuda   # writes adamole_layer_cuda.*

Writes ``benchmarks/results/adamole_layer[_cuda].md`` and ``.json`` (or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
N_EXPERTS, RANK, ALPHA, DROPOUT = 8, 4, 16, 0.05
LORA_RANK = N_EXPERTS * RANK
AUX_COEF = 1e-3
TARGETS = {
    "adamole_over_lora_max": 1.3,
    "loop_over_adamole_min_cpu": 3.0,
    "loop_over_adamole_min_cuda": 5.0,
}


# ----------------------------------------------------------------------------- loop reference
class LoopAdaMoLELinear(nn.Module):
    """The official AdaMoLE forward (per-expert Python loop), for comparison only."""

    def __init__(self, layer, adapter="default"):
        super().__init__()
        n, r = layer.num_experts[adapter], layer.r[adapter]
        A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        d_in, d_out = A.shape[1], B.shape[0]
        self.n, self.scaling, self.tau_max = n, layer.scaling[adapter], layer.tau_max[adapter]
        self.A = nn.ModuleList(nn.Linear(d_in, r, bias=False) for _ in range(n))
        self.B = nn.ModuleList(nn.Linear(r, d_out, bias=False) for _ in range(n))
        p = layer.lora_dropout[adapter].p if hasattr(layer.lora_dropout[adapter], "p") else 0.0
        self.drop = nn.ModuleList(nn.Dropout(p) for _ in range(n))
        self.gate = nn.Linear(d_in, n, bias=False)
        self.threshold = nn.Linear(d_in, 1)
        with torch.no_grad():
            for i in range(n):
                self.A[i].weight.copy_(A[i * r : (i + 1) * r])
                self.B[i].weight.copy_(B[:, i * r : (i + 1) * r])
            self.gate.weight.copy_(layer.lora_gate[adapter].weight)
            self.threshold.weight.copy_(layer.lora_threshold[adapter].weight)
            self.threshold.bias.copy_(layer.lora_threshold[adapter].bias)
        self.to(device=A.device, dtype=A.dtype)  # the adapter's device and dtype ...
        self.base = layer.get_base_layer()  # ... and the base layer unchanged
        self.layer_loss = None

    def expert(self, i, x):
        return self.B[i](self.A[i](self.drop[i](x))) * self.scaling

    def forward(self, x):
        y = self.base(x)
        X = x.reshape(-1, x.shape[-1]).to(self.A[0].weight.dtype)
        p = F.softmax(self.gate(X), dim=-1)
        tau = torch.sigmoid(self.threshold(X)) * self.tau_max
        a = p - tau
        m = (a >= 0).to(a.dtype)
        w = a * m
        s = w.sum(-1, keepdim=True)
        w = w / torch.where(s == 0, torch.ones_like(s), s)
        out = torch.zeros_like(self.expert(0, X))
        for i in range(self.n):
            idx = torch.where(m[:, i])[0]
            if len(idx) > 0:
                out[idx] += w[idx, i, None] * self.expert(i, X[idx])
        if x.requires_grad or torch.is_grad_enabled():
            self.layer_loss = self.n * (m.mean(0) * a.mean(0)).sum()
        return y + out.reshape(*x.shape[:-1], -1).to(y.dtype)


def swap_in_loop_layers(peft_model):
    """Replace every AdaMoLELinear of ``peft_model`` by a LoopAdaMoLELinear (same weights)."""
    from sparsekit.adamole import AdaMoLELinear

    loops = []
    for name, module in list(peft_model.named_modules()):
        if isinstance(module, AdaMoLELinear):
            parent = peft_model.get_submodule(name.rsplit(".", 1)[0])
            loop = LoopAdaMoLELinear(module)
            setattr(parent, name.rsplit(".", 1)[1], loop)
            loops.append(loop)
    for p in peft_model.parameters():
        p.requires_grad_(False)
    for loop in loops:
        for n, p in loop.named_parameters():
            p.requires_grad_(not n.startswith("base."))
    return loops


# ----------------------------------------------------------------------------- helpers
def calibrate_gate(layers, x_for, target=4.0):
    """Scale the gates so that about ``target`` experts are active per token on the benchmark
    inputs (an untrained gate activates nearly all 8). Returns the measured mean."""
    from sparsekit.adamole import collect_aux_loss, routing_statistics

    model, fwd = x_for
    best = None
    for std in (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3):
        with torch.no_grad():
            for layer in layers:
                gen = torch.Generator(device="cpu").manual_seed(7)
                w = layer.lora_gate["default"].weight
                w.copy_(torch.randn(w.shape, generator=gen).to(w) * std)
            routing_statistics(model)
            with collect_aux_loss(model):
                fwd()
            active = routing_statistics(model)["mean_active_experts"]
        if best is None or abs(active - target) < abs(best[1] - target):
            best = (std, active)
    std = best[0]
    with torch.no_grad():
        for layer in layers:
            gen = torch.Generator(device="cpu").manual_seed(7)
            w = layer.lora_gate["default"].weight
            w.copy_(torch.randn(w.shape, generator=gen).to(w) * std)
    return best[1]


class SavedTensorMeter:
    """Bytes of the distinct non-parameter storages autograd saves during the forward."""

    def __init__(self, params):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.storages = {}

    def pack(self, t):
        s = t.untyped_storage()
        if s.data_ptr() not in self.param_ptrs:
            self.storages[s.data_ptr()] = s.nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def mib(self):
        return sum(self.storages.values()) / 2**20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, forward_loss, uses_aux):
    from sparsekit.adamole import collect_aux_loss

    params = [p for p in model.parameters() if p.requires_grad]
    loops = [m for m in model.modules() if isinstance(m, LoopAdaMoLELinear)]

    def step():
        for p in params:
            p.grad = None
        if uses_aux and not loops:
            with collect_aux_loss(model, statistics=False) as aux:
                loss = forward_loss()
            loss = loss + AUX_COEF * aux.loss
        else:
            loss = forward_loss()
            if loops:
                loss = loss + AUX_COEF * sum(m.layer_loss for m in loops)
        loss.backward()
        return loss

    return step


def measure(arms, device, repeats, inner):
    """Median seconds per step for every arm; arms interleaved inside each repeat."""
    times = {name: [] for name in arms}
    cpu_times = {name: [] for name in arms}
    for name, arm in arms.items():  # warm-up (allocator, MKL/cuBLAS plans)
        for _ in range(2):
            arm["step"]()
        sync(device)
    for _ in range(repeats):
        for name, arm in arms.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner):
                arm["step"]()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
            cpu_times[name].append((time.process_time() - c0) / inner)
    out = {}
    for name, arm in arms.items():
        params = list(arm["model"].parameters())
        meter = SavedTensorMeter(params)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with meter:
            arm["step"]()
        sync(device)
        peak = None
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        out[name] = {
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "times_s": times[name],
            "cpu_median_s": statistics.median(cpu_times[name]),
            "cpu_times_s": cpu_times[name],
            "saved_mib": meter.mib,
            "cuda_peak_step_mib": peak,
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        }
    return out


# ----------------------------------------------------------------------------- workloads
class OneProjection(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return self.proj(x)


def build_arms(make_base, targets, forward_for, device, dtype):
    """peft LoRA, AdaMoLE (dense, gathered, top-2) and the loop reference on equal bases."""
    from peft import LoraConfig, get_peft_model

    from sparsekit.adamole import AdaMoLEConfig, AdaMoLELinear, get_adamole_model

    def prep(model):
        model.to(device=device, dtype=dtype)
        if dtype != torch.float32:  # peft's default: adapters in float32
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        return model.train()

    arms = {}
    torch.manual_seed(0)
    lora = get_peft_model(
        make_base(),
        LoraConfig(r=LORA_RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=targets),
    )
    arms["peft LoRA r=32"] = {"model": prep(lora)}

    def adamole(**kw):
        torch.manual_seed(0)
        cfg = AdaMoLEConfig(
            num_experts=N_EXPERTS,
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=DROPOUT,
            target_modules=targets,
            init_lora_weights=False,
            **kw,
        )
        return prep(get_adamole_model(make_base(), cfg))

    main = adamole()
    layers = [m for m in main.modules() if isinstance(m, AdaMoLELinear)]
    active = calibrate_gate(layers, (main, forward_for(main)))
    arms["AdaMoLE 8x4"] = {"model": main}
    gathered = adamole(expert_compute="gathered")
    gathered.load_state_dict(main.state_dict())
    arms["AdaMoLE 8x4 gathered"] = {"model": gathered}
    topk = adamole(routing="topk", top_k=2)
    topk.load_state_dict(main.state_dict(), strict=False)
    arms["MoLE top-2 8x4"] = {"model": topk}
    loop = adamole()
    loop.load_state_dict(main.state_dict())
    swap_in_loop_layers(loop)
    arms["loop reference"] = {"model": loop.train()}
    for name, arm in arms.items():
        arm["step"] = make_step(
            arm["model"], forward_for(arm["model"]), uses_aux=name != "peft LoRA r=32"
        )
    return arms, active


def projection_workload(device, dtype, tokens):
    d = 576
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(tokens, d, generator=gen).to(device=device, dtype=dtype)
    g = torch.randn(tokens, d, generator=gen).to(device=device, dtype=dtype)

    def forward_for(model):
        def fwd():
            xx = x.detach().requires_grad_()
            return (model(xx).float() * g.float()).sum() / tokens

        return fwd

    return build_arms(lambda: OneProjection(d), ["proj"], forward_for, device, dtype)


def model_workload(kind, device, dtype, batch, seq):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    gen = torch.Generator(device="cpu").manual_seed(2)
    vocab = 2048
    ids = torch.randint(1, vocab, (batch, seq), generator=gen).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=4,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=max(seq, 128),
            tie_word_embeddings=True,
        )

        def make_base():
            return LlamaForCausalLM(config)

        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]

        def forward_for(model):
            return lambda: model(input_ids=ids, attention_mask=mask, labels=ids).loss
    else:
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=4,
            num_attention_heads=12,
            max_position_embeddings=max(seq, 128),
            num_labels=2,
        )
        labels = torch.randint(0, 2, (batch,), generator=gen).to(device)

        def make_base():
            return BertForSequenceClassification(config)

        targets = ["query", "key", "value", "attention.output.dense"]

        def forward_for(model):
            return lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss

    return build_arms(make_base, targets, forward_for, device, dtype)


# ----------------------------------------------------------------------------- report
COLUMNS = [
    "peft LoRA r=32",
    "AdaMoLE 8x4",
    "AdaMoLE 8x4 gathered",
    "MoLE top-2 8x4",
    "loop reference",
]


def summarise(name, res, active):
    rows = []
    for arm in COLUMNS:
        r = res[arm]
        row = {
            "workload": name,
            "arm": arm,
            "ms": 1e3 * r["median_s"],
            "cpu_ms": 1e3 * r["cpu_median_s"],
            "saved_mib": r["saved_mib"],
            "cuda_peak_step_mib": r["cuda_peak_step_mib"],
            "trainable_params": r["trainable_params"],
            "mean_active_experts": active,
        }
        for key, clock in (("", "median_s"), ("cpu_", "cpu_median_s")):
            row[key + "vs_lora"] = r[clock] / res["peft LoRA r=32"][clock]
            row[key + "vs_adamole"] = r[clock] / res["AdaMoLE 8x4"][clock]
        rows.append(row)
    return rows


def markdown(rows, meta):
    cuda = meta["device"] == "cuda"
    head = ["workload", "arm", "wall ms", "x LoRA", "x AdaMoLE"]
    if not cuda:
        head += ["CPU ms", "x LoRA (CPU)", "x AdaMoLE (CPU)"]
    head.append("saved MiB")
    if cuda:
        head.append("CUDA peak MiB")
    head.append("trainable")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["workload"],
            r["arm"],
            f"{r['ms']:.1f}",
            f"{r['vs_lora']:.2f}",
            f"{r['vs_adamole']:.2f}",
        ]
        if not cuda:
            cells += [f"{r['cpu_ms']:.1f}", f"{r['cpu_vs_lora']:.2f}", f"{r['cpu_vs_adamole']:.2f}"]
        cells.append(f"{r['saved_mib']:.1f}")
        if cuda:
            cells.append(f"{r['cuda_peak_step_mib']:.1f}")
        cells.append(f"{r['trainable_params']:,}")
        lines.append("| " + " | ".join(cells) + " |")
    out = [
        f"# AdaMoLE layer benchmark ({meta['device']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['environment']}",
        "",
        (
            'Times are medians over the repeats of one forward+backward step; "wall" is '
            'wall-clock time, "CPU" the process CPU time (less sensitive to other processes on a '
            "shared machine; equal to wall time when the process is alone on its core). Ratios are "
            "taken between arms measured in this run."
        ),
        "",
        *lines,
        "",
    ]
    out.append(
        "Mean active experts (adaptive routing, calibrated gate): "
        + ", ".join(f"{k}: {v:.2f}" for k, v in meta["mean_active_experts"].items())
    )
    out.append("")
    out.append("Targets:")
    out += [f"- {v}" for v in meta["verdicts"]]
    out.append("")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32 (CPU default) or bfloat16 "
        "(CUDA default: base model in bf16, adapters in float32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (torch and BLAS/OpenMP, pinned). Default 1: on a "
        "shared 2-core machine, 2 OpenMP threads per process under load make "
        "every timing 5-10x slower and erratic; use 2 on a quiet machine",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument(
        "--stem",
        default=None,
        help="output file stem (default adamole_layer on CPU, adamole_layer_cuda on CUDA)",
    )
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    torch.set_num_threads(args.threads)
    inner = 5 if device.type == "cuda" else 1
    results, rows, actives = {}, [], {}
    with threadpool_limits(limits=args.threads):
        workloads = [
            (
                "projection 576x576, 4096 tokens"
                if args.tokens == 4096
                else f"projection 576x576, {args.tokens} tokens",
                lambda: projection_workload(device, dtype, args.tokens),
            )
        ]
        if not args.skip_models:
            shape = f"{args.batch}x{args.seq} tokens"
            workloads.append(
                (
                    f"tiny Llama h576 L4, {shape}",
                    lambda: model_workload("llama", device, dtype, args.batch, args.seq),
                )
            )
            workloads.append(
                (
                    f"tiny BERT h384 L4, {shape}",
                    lambda: model_workload("bert", device, dtype, args.batch, args.seq),
                )
            )
        for name, build in workloads:
            arms, active = build()
            res = measure(arms, device, args.repeats, inner)
            results[name] = res
            actives[name] = active
            rows += summarise(name, res, active)
            print(
                f"{name}: "
                + ", ".join(f"{k} {1e3 * v['median_s']:.1f} ms" for k, v in res.items()),
                flush=True,
            )
            del arms

    loop_min = TARGETS[
        "loop_over_adamole_min_cuda" if device.type == "cuda" else "loop_over_adamole_min_cpu"
    ]
    verdicts = []
    clocks = [("wall", "median_s")] + ([("CPU", "cpu_median_s")] if device.type == "cpu" else [])
    for name, res in results.items():
        for label, clock in clocks:
            ada = res["AdaMoLE 8x4"][clock]
            vs_lora = ada / res["peft LoRA r=32"][clock]
            speedup = res["loop reference"][clock] / ada
            ok1 = vs_lora <= TARGETS["adamole_over_lora_max"]
            ok2 = speedup >= loop_min
            verdicts.append(
                f"{name} ({label} time): AdaMoLE/LoRA = {vs_lora:.2f} (target <= 1.3: "
                f"{'met' if ok1 else 'MISSED'}), loop/AdaMoLE = {speedup:.2f} (target >= "
                f"{loop_min:g}: {'met' if ok2 else 'MISSED'})"
            )
    env = (
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"{args.threads} threads pinned (torch + threadpoolctl), dtype {dtype_name}, "
        f"{args.repeats} repeats (median; arms interleaved), dropout {DROPOUT}, "
        f"aux coefficient {AUX_COEF}"
    )
    if device.type == "cuda":
        env += f", GPU {torch.cuda.get_device_name(device)}, {inner} steps per timing"
    try:
        env += f", load average {os.getloadavg()[0]:.2f} at the end"
    except OSError:
        pass
    cmd = " ".join(
        ["python benchmarks/bench_adamole_layer.py", *(sys.argv[1:] if argv is None else argv)]
    )
    meta = {
        "device": device.type,
        "command": cmd,
        "environment": env,
        "mean_active_experts": actives,
        "verdicts": verdicts,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.stem or (
        "adamole_layer" if device.type == "cpu" else f"adamole_layer_{device.type}"
    )
    (out_dir / f"{stem}.md").write_text(markdown(rows, meta))
    (out_dir / f"{stem}.json").write_text(
        json.dumps(
            {"meta": meta, "targets": TARGETS, "rows": rows, "raw": results},
            indent=1,
            default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o),
        )
    )
    print("\n".join(verdicts))
    print(f"wrote {out_dir / stem}.md and .json")


if __name__ == "__main__":
    main()
