"""Multi-process training of :class:`AdaMoLEClassifier` under ``torchrun``. Private module.

``torchrun --nproc_per_node N script.py`` starts N processes with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in their environment. When ``fit`` runs in such a process (and ``distributed`` is
``"auto"`` or True) the trainer uses a :class:`DistContext`:

- the process group is initialised from the environment if nobody did it yet (gloo on CPU, NCCL on
  CUDA; each process then uses the GPU ``cuda:LOCAL_RANK``) and is left initialised;
- rank 0's seeds and adapters are broadcast before training, so every rank starts identically;
- each epoch every rank draws the same permutation from the shared seed and takes the strided slice
  ``order[rank::world_size]`` of it, padded by wrapping around so that every rank runs the same
  number of steps (as ``torch.utils.data.DistributedSampler``);
- at each optimizer step the gradients of the trainable parameters (adapters and head) are
  averaged by one all-reduce, together with the loss of the step (so that a non-finite loss on any
  rank stops every rank);
- the validation set is split over the ranks and its loss and accuracy are all-reduced, the stop
  decision is all-reduced too: early stopping agrees everywhere;
- when training ends, rank 0's adapters, history and routing statistics are broadcast, so every
  rank returns the same fitted estimator.

With a local batch of ``batch_size`` on each of W ranks, an optimizer step averages the gradients
of ``W * batch_size`` examples: the global batch.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["DistContext", "check_distributed", "launched_by_torchrun", "resolve"]

_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """True if the torch.distributed environment variables of a multi-process launch are set."""
    return all(k in os.environ for k in _ENV) and int(os.environ["WORLD_SIZE"]) > 1


def check_distributed(distributed) -> bool:
    """Whether to train with several processes; raises if True is asked without a launcher."""
    if distributed is False:
        return False
    launched = launched_by_torchrun()
    if distributed is True and not launched:
        missing = [k for k in _ENV if k not in os.environ]
        raise ValueError(
            "distributed=True but this process was not started by a multi-process launcher "
            f"(missing or single-process environment: {', '.join(missing) or 'WORLD_SIZE=1'}). "
            "Run the script with `torchrun --nproc_per_node N script.py`, or use "
            "distributed='auto' (multi-process only when launched so) or False."
        )
    return launched


def local_device(device: str) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` when ``device`` is a plain ``cuda``."""
    if device == "cuda":
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def resolve(distributed, device: str):
    """A :class:`DistContext` if this fit runs under torchrun (and ``distributed`` allows it)."""
    if not check_distributed(distributed):
        return None
    return DistContext(device)


class DistContext:
    """The process group of a multi-process fit and the collectives the trainer needs.

    Parameters
    ----------
    device : str
        The device of this process's model (``cuda:k`` selects NCCL, anything else gloo).
    """

    def __init__(self, device):
        import torch
        import torch.distributed as dist

        self.backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        if not dist.is_initialized():
            dist.init_process_group(backend=self.backend, init_method="env://")
        else:
            self.backend = dist.get_backend()
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        # gloo reduces CPU tensors; NCCL tensors on this process's GPU
        self.comm_device = torch.device(device if self.backend == "nccl" else "cpu")

    # ------------------------------------------------------------------ broadcasts
    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (small Python objects: seeds, history)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def _object_device(self):
        return self.comm_device if self.backend == "nccl" else None

    def broadcast_trainable(self, params):
        """Overwrite ``params`` (the trainable tensors) with rank 0's values."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in params]).to(self.comm_device)
            dist.broadcast(flat, src=0)
            self._unflatten(flat, params, lambda p, v: p.copy_(v))

    @staticmethod
    def _unflatten(flat, params, write):
        start = 0
        for p in params:
            n = p.numel()
            write(p, flat[start : start + n].view_as(p).to(p.device, p.dtype))
            start += n

    # ------------------------------------------------------------------ reductions
    def average_gradients(self, params, group_loss):
        """Average the gradients of ``params`` over the ranks; returns the mean group loss.

        One all-reduce of the flattened gradients with the loss and one has-a-gradient flag per
        parameter appended. A parameter without a gradient on this rank (an expert no token
        reached) contributes zeros; one without a gradient on every rank keeps ``grad=None``, so
        that AdamW skips it as it does in one process.
        """
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            parts = [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in params
            ]
            parts.append(group_loss.detach().reshape(1).float())
            parts.append(torch.tensor([float(p.grad is not None) for p in params]))
            flat = torch.cat([t.to(self.comm_device) for t in parts])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            has_grad = (flat[-len(params) :] > 0).tolist()
            flat = flat[: -len(params)] / self.world_size

            def write(p, v):
                if p.grad is not None:
                    p.grad.copy_(v)
                elif has_grad[index[id(p)]]:
                    p.grad = v.clone()

            index = {id(p): i for i, p in enumerate(params)}
            self._unflatten(flat[:-1], params, write)
            return flat[-1].to(group_loss.device)

    def sum(self, values):
        """Elementwise sum over the ranks of a list of floats (float64)."""
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy().tolist()

    def sum_with_grad(self, tensor):
        """Sum of ``tensor`` over the ranks, differentiable (the backward sums the gradients over
        the ranks too): the aux loss's routing statistics of the global batch. Every rank must
        call it the same number of times, which holds in training steps (equal shards)."""
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor.to(self.comm_device)).to(tensor.device)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    # ------------------------------------------------------------------ sharding
    def shard(self, order):
        """This rank's strided slice of ``order``, padded by wrap-around to equal length."""
        n = len(order)
        per_rank = -(-n // self.world_size)
        total = per_rank * self.world_size
        if total > n:
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[self.rank : total : self.world_size]

    def split_range(self, n):
        """This rank's strided share of ``range(n)`` (no padding: sums are all-reduced)."""
        return np.arange(self.rank, n, self.world_size)
