"""Device, dtype and RNG helpers for :class:`AdaMoLEClassifier`. Private module."""

from __future__ import annotations

import contextlib
import warnings

__all__ = [
    "autocast",
    "device_available",
    "device_warning",
    "local_torch_rng",
    "resolve_device",
    "resolve_dtype",
    "torch_dtype",
]


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
    return dtype


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


def device_warning(old, new):
    warnings.warn(
        f"This AdaMoLEClassifier was fitted on device {old!r}, which is not available here; it is "
        f"loaded on {new!r} instead.",
        UserWarning,
        stacklevel=3,
    )


def device_available(device: str) -> bool:
    """Whether a saved device string names a device that exists on this machine."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    return False
