"""Device, dtype, RNG and optimisation helpers for :class:`AdaMoLEClassifier`. Private module."""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

__all__ = [
    "autocast",
    "call_callbacks",
    "divergence_error",
    "local_torch_rng",
    "resolve_device",
    "resolve_dtype",
    "warmup_lr_factor",
]

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def resolve_device(device) -> str:
    """``None`` means CUDA, then MPS, then CPU. Returns a canonical device string."""
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use None (auto), 'cpu', 'cuda', "
            "'cuda:1' or 'mps'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine (torch "
            f"{torch.__version__}, built with CUDA {torch.version.cuda}). Use device=None to pick the "
            "best available device, or device='cpu'."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r}: this machine has only {torch.cuda.device_count()} CUDA device(s)."
        )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} was requested but MPS is not available.")
    return str(dev)


def resolve_dtype(dtype, device: str) -> str:
    """``"auto"``: bfloat16 on CUDA GPUs that support it, float32 everywhere else."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float32"
    return _DTYPES[dtype]


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


@contextlib.contextmanager
def local_torch_rng(seed: int, device: str):
    """Run the block with torch's global RNGs seeded, then restore them (no global side effects)."""
    import torch

    devices = []
    if device.startswith("cuda"):
        idx = torch.device(device).index
        devices = [torch.cuda.current_device() if idx is None else idx]
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(int(seed))
        yield


def autocast(device: str, dtype_name: str):
    """Mixed precision for non-float32 runs; a no-op context for float32."""
    import torch

    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype(dtype_name))


def warmup_lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up to the full learning rate, then constant (the paper's schedule)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def n_warmup_steps(warmup, total_steps: int) -> int:
    if isinstance(warmup, (int, np.integer)) and not isinstance(warmup, bool):
        return int(warmup)
    return int(math.ceil(float(warmup) * total_steps))


def divergence_error(value, *, epoch, step, learning_rate, dtype_name, aux_loss_coef):
    if dtype_name == "float16":
        cause = (
            "float16 overflow. Use dtype='bfloat16' (on GPUs that support it) or dtype='float32'"
        )
    elif learning_rate > 1e-3:
        cause = (
            f"learning_rate={learning_rate:g} is too high for fine-tuning a pretrained model. Try "
            "1e-4 to 5e-4"
        )
    elif aux_loss_coef > 0.1:
        cause = f"aux_loss_coef={aux_loss_coef:g} is very large. The paper uses 1e-3"
    else:
        cause = (
            "a learning rate too high for this model (try a smaller learning_rate or a longer "
            "warmup), or NaN/inf values in the base model's weights"
        )
    return FloatingPointError(
        f"The training loss became {value} at epoch {epoch}, optimizer step {step}; training was "
        f"stopped and the estimator is left unfitted. Likely cause: {cause}."
    )


def call_callbacks(callbacks, hook: str, estimator, logs) -> bool:
    """Call ``hook`` on every callback that has it; True if any asked to stop training."""
    stop = False
    for cb in callbacks or ():
        fn = getattr(cb, hook, None)
        if fn is not None:
            stop = bool(fn(estimator, logs)) or stop
    return stop


def check_callbacks(callbacks):
    hooks = ("on_train_begin", "on_batch_end", "on_epoch_end", "on_train_end")
    for cb in callbacks or ():
        if not any(callable(getattr(cb, h, None)) for h in hooks):
            raise TypeError(
                f"callback {cb!r} has none of the hooks {', '.join(hooks)}; a callback is any object "
                "with one or more of these methods, each called as hook(estimator, logs)."
            )


def device_warning(old, new):
    warnings.warn(
        f"This AdaMoLEClassifier was fitted on device {old!r}, which is not available here; it is "
        f"loaded on {new!r} instead.",
        UserWarning,
        stacklevel=3,
    )
