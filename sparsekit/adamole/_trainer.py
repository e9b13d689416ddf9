"""The training loop of :class:`AdaMoLEClassifier`. Private module.

:class:`Trainer` runs epochs of AdamW steps on the task loss plus ``aux_loss_coef`` times the
load-balancing loss (``_routing.py``), with linear warm-up, gradient accumulation, a gradient
scaler for float16, one history record per epoch and the callbacks. Early stopping is the
built-in callback :class:`EarlyStopping`. Under ``torchrun`` the collectives of a multi-process
fit (sharding, gradient averaging, agreeing on validation and stopping) come from
``_distributed.py``; ``self.dist`` is None in a single process. The estimator owns the model and the fitted
attributes; the trainer reads its parameters and updates ``n_iter_``, ``n_steps_``,
``warmup_steps_``, ``history_``, ``expert_usage_`` and ``best_epoch_``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import _data, _device, _distributed, _loading

__all__ = ["EarlyStopping", "Trainer", "call_callbacks", "check_callbacks"]

_HOOKS = ("on_train_begin", "on_batch_end", "on_epoch_end", "on_train_end")


def call_callbacks(callbacks, hook: str, estimator, logs) -> bool:
    """Call ``hook`` on every callback that has it; True if any asked to stop training."""
    stop = False
    for cb in callbacks or ():
        fn = getattr(cb, hook, None)
        if fn is not None:
            stop = bool(fn(estimator, logs)) or stop
    return stop


def check_callbacks(callbacks):
    """Raise a TypeError for a callback with none of the hooks."""
    for cb in callbacks or ():
        if not any(callable(getattr(cb, h, None)) for h in _HOOKS):
            raise TypeError(
                f"callback {cb!r} has none of the hooks {', '.join(_HOOKS)}; a callback is any "
                "object with one or more of these methods, each called as hook(estimator, logs)."
            )


def warmup_lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up to the full learning rate, then constant (the paper's schedule)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def n_warmup_steps(warmup, total_steps: int) -> int:
    """``warmup`` as a number of optimizer steps (an int, or a fraction of ``total_steps``)."""
    if isinstance(warmup, (int, np.integer)) and not isinstance(warmup, bool):
        return int(warmup)
    return math.ceil(float(warmup) * total_steps)


def divergence_error(value, *, epoch, step, learning_rate, dtype_name, aux_loss_coef):
    """The error raised when the training loss is not finite, with its likely cause."""
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


def logsumexp(a):
    """Row-wise log-sum-exp of a 2-d float array, keeping the dimension."""
    m = a.max(axis=1, keepdims=True)
    return m + np.log(np.exp(a - m).sum(axis=1, keepdims=True))


def trainable_state(model):
    """Copy of the trainable parameters on the CPU."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable_state(model, state):
    """Write a :func:`trainable_state` back into ``model``."""
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.device))


def validation_split(y_enc, validation_fraction, seed):
    """Stratified (where possible) train/validation indices, each sorted."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y_enc))
    n_valid = math.ceil(validation_fraction * len(idx))
    counts = np.bincount(y_enc)
    stratify = y_enc if (counts[counts > 0].min() >= 2 and n_valid >= len(counts)) else None
    if n_valid < 1 or len(idx) - n_valid < 2:
        raise ValueError(
            f"early_stopping=True needs more data: validation_fraction={validation_fraction} "
            f"of {len(idx)} samples leaves no usable validation or training split."
        )
    train_idx, valid_idx = train_test_split(
        idx, test_size=n_valid, random_state=seed, stratify=stratify
    )
    return np.sort(train_idx), np.sort(valid_idx)


def format_record(r):
    """One line per epoch for ``verbose >= 1``."""
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}", f"aux {r['aux_loss']:.4f}"]
    if r.get("valid_accuracy") is not None:
        parts.append(f"valid_acc {r['valid_accuracy']:.4f}")
    if r.get("mean_active_experts") is not None:
        parts.append(f"active_experts {r['mean_active_experts']:.2f}")
    parts.append(f"{r['duration_s']:.1f}s")
    return " | ".join(parts)


class EarlyStopping:
    """Built-in callback: stop when the validation accuracy stops improving.

    Keeps a CPU copy of the adapters of the best epoch and restores them when training ends.

    Parameters
    ----------
    n_iter_no_change : int
        Epochs without a better ``valid_accuracy`` before stopping.
    """

    def __init__(self, n_iter_no_change):
        self.n_iter_no_change = n_iter_no_change
        self.best_score = -np.inf
        self.best_epoch = None
        self._best_state = None
        self._no_improve = 0

    def on_epoch_end(self, estimator, logs):
        """Remember the adapters if ``logs["valid_accuracy"]`` improved; True to stop."""
        if logs["valid_accuracy"] > self.best_score:
            self.best_score = logs["valid_accuracy"]
            self.best_epoch = logs["epoch"]
            self._best_state = trainable_state(estimator._model)
            self._no_improve = 0
            return False
        self._no_improve += 1
        return self._no_improve >= self.n_iter_no_change

    def on_train_end(self, estimator, logs):
        """Restore the best adapters (unless the last epoch was the best)."""
        if self._best_state is not None and self.best_epoch != estimator.n_iter_:
            load_trainable_state(estimator._model, self._best_state)
        self._best_state = None


class _EpochSums:
    """Per-epoch running sums on the device (read once per epoch)."""

    def __init__(self, device):
        import torch

        self.loss = torch.zeros((), device=device)
        self.aux = torch.zeros((), device=device)
        self.group = torch.zeros((), device=device)


class Trainer:
    """Runs the epochs of one ``fit`` or ``partial_fit`` call of an :class:`AdaMoLEClassifier`.

    Parameters
    ----------
    estimator : AdaMoLEClassifier
        Initialised (model, tokenizer and fitted attributes in place).
    strategy : ClassifierHead or LMHead
        The estimator's head strategy (``_heads.py``).
    """

    def __init__(self, estimator, strategy):
        self.est = estimator
        self.strategy = strategy
        self.model = estimator._model
        self.device = estimator.device_
        self.dist = None

    # ------------------------------------------------------------------ setup
    def _prepare_data(self, texts, y_enc, use_early_stopping, split_seed):
        import torch

        est = self.est
        if use_early_stopping:
            train_idx, valid_idx = validation_split(y_enc, est.validation_fraction, split_seed)
        else:
            train_idx, valid_idx = np.arange(len(texts)), None
        if valid_idx is not None and self.dist is not None:
            if len(valid_idx) < self.dist.world_size:
                raise ValueError(
                    f"early_stopping=True with {self.dist.world_size} processes needs at least one "
                    f"validation sample per process; validation_fraction={est.validation_fraction} "
                    f"of {len(texts)} samples gives {len(valid_idx)}. Raise validation_fraction."
                )
            valid_idx = valid_idx[self.dist.split_range(len(valid_idx))]  # metrics all-reduced
        enc_train = est._encode([texts[i] for i in train_idx], self.strategy)
        enc_valid = None
        y_valid = None
        if valid_idx is not None:
            enc_valid = est._encode([texts[i] for i in valid_idx], self.strategy)
            y_valid = y_enc[valid_idx]
        y_train = torch.as_tensor(y_enc[train_idx], dtype=torch.long)
        return enc_train, y_train, enc_valid, y_valid

    def _make_optimizer(self, params):
        import torch

        est = self.est
        optimizer = torch.optim.AdamW(params, lr=est.learning_rate, weight_decay=est.weight_decay)
        if est._optim_state is not None:
            optimizer.load_state_dict(est._optim_state)
            for group in optimizer.param_groups:
                group["weight_decay"] = est.weight_decay
        scaler = None
        if est.dtype_ == "float16" and self.device.startswith("cuda"):
            scaler = torch.amp.GradScaler("cuda")
        return optimizer, scaler

    # ------------------------------------------------------------------ the loop
    def train(self, texts, y_enc, n_epochs, use_early_stopping):
        """Train ``n_epochs`` epochs (fewer if a callback or early stopping stops training)."""
        est = self.est
        self.dist = _distributed.resolve(est.distributed, self.device)
        init_seed, shuffle_seed, split_seed = est._seeds()
        if self.dist is not None:  # rank 0's seeds everywhere (random_state=None differs)
            init_seed, shuffle_seed, split_seed = self.dist.broadcast_object(
                (init_seed, shuffle_seed, split_seed)
            )
        with _loading.quiet_transformers(est._verbosity()):
            enc_train, y_train, enc_valid, y_valid = self._prepare_data(
                texts, y_enc, use_early_stopping, split_seed
            )
        n = len(y_train)
        n_local = n if self.dist is None else len(self.dist.shard(np.arange(n)))
        n_batches = math.ceil(n_local / est.batch_size)
        if est.warmup_steps_ is None:
            steps_per_epoch = math.ceil(n_batches / est.gradient_accumulation_steps)
            est.warmup_steps_ = n_warmup_steps(est.warmup, steps_per_epoch * n_epochs)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scaler = self._make_optimizer(self.params)
        if self.dist is not None:
            self.dist.broadcast_trainable(self.params)  # same start on every rank
        early = EarlyStopping(est.n_iter_no_change) if enc_valid is not None else None
        logs = {"n_samples": n, "n_epochs": n_epochs, "n_batches": n_batches}
        call_callbacks(est.callbacks, "on_train_begin", est, logs)
        torch_seed = (init_seed + 7919 * (est.n_iter_ + 1)) % (2**63)
        with _device.local_torch_rng(torch_seed, self.device):
            for _ in range(n_epochs):
                epoch = est.n_iter_ + 1
                t0 = time.perf_counter()
                record, stats = self._epoch(epoch, enc_train, y_train, shuffle_seed)
                if enc_valid is not None:
                    record.update(self._validate(enc_valid, y_valid))
                record["duration_s"] = time.perf_counter() - t0
                if self._end_epoch(record, stats, early):
                    break
        if early is not None:
            early.on_train_end(est, {"n_iter": est.n_iter_})
        est.best_epoch_ = early.best_epoch if early is not None else None
        if self.dist is not None:
            self._share_rank0_result()
        est._optim_state = self.optimizer.state_dict()
        self.model.eval()
        call_callbacks(est.callbacks, "on_train_end", est, {"n_iter": est.n_iter_})

    def _share_rank0_result(self):
        """Every rank ends with rank 0's adapters, history and routing statistics."""
        est = self.est
        self.dist.broadcast_trainable(self.params)
        est.history_, est.expert_usage_, est.best_epoch_ = self.dist.broadcast_object(
            (est.history_, est.expert_usage_, est.best_epoch_)
        )

    def _epoch(self, epoch, enc_train, y_train, shuffle_seed):
        """One pass over the training data; returns the history record and the statistics."""
        from tqdm.auto import tqdm

        from ._routing import routing_statistics

        est, model = self.est, self.model
        model.train()
        routing_statistics(model, reset=True)
        n = len(y_train)
        order = np.random.RandomState((shuffle_seed + epoch) % (2**32)).permutation(n)
        if self.dist is not None:
            order = self.dist.shard(order)  # same permutation everywhere, strided slice
        sums = _EpochSums(self.device)
        batches = list(_data.iter_batches(len(order), est.batch_size, order=order))
        bar = tqdm(
            total=len(batches), desc=f"epoch {epoch}", leave=False, disable=not est._verbosity()
        )
        try:
            for b, idx in enumerate(batches):
                loss = self._batch_step(b, len(batches), enc_train, y_train, idx, sums, epoch)
                if loss is not None and bar.disable is False:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                bar.update(1)
        finally:
            bar.close()
        stats = routing_statistics(model, reset=True)
        loss_sum, aux_sum, n_seen = float(sums.loss), float(sums.aux), len(order)
        world_size = 1
        if self.dist is not None:  # means over every rank's shard (padding included)
            loss_sum, aux_sum, n_seen = self.dist.sum([loss_sum, aux_sum, n_seen])
            world_size = self.dist.world_size
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / n_seen,
            "aux_loss": aux_sum / n_seen,
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
            "n_samples": n,
            "world_size": world_size,
        }
        keys = (
            "mean_active_experts",
            "active_experts_std",
            "zero_expert_fraction",
            "tau_mean",
            "tau_std",
            "tau_over_max",
            "near_cap_fraction",
        )
        for key in keys:
            record[key] = stats.get(key)
        record["expert_load"] = stats.get("expert_load")
        return record, stats

    def _batch_step(self, b, n_batches, enc_train, y_train, idx, sums, epoch):
        """Forward and backward of one batch; an optimizer step at the end of each group.

        Returns the batch loss when an optimizer step was taken, else None.
        """
        from ._routing import collect_aux_loss

        est, model = self.est, self.model
        accum = est.gradient_accumulation_steps
        group_start = (b // accum) * accum
        group_size = min(accum, n_batches - group_start)
        batch = est._batch(enc_train, idx, self.strategy)
        yb = y_train[idx].to(self.device)
        with _device.autocast(self.device, est.dtype_):
            with collect_aux_loss(model, attention_mask=batch["attention_mask"]) as aux:
                if self.dist is not None and est.aux_loss_coef > 0:
                    aux.sum_over_ranks = self.dist.sum_with_grad  # global-batch statistics
                logits = self.strategy.forward(model, batch, est._supports)
            task_loss = self.strategy.loss(logits, yb)
            aux_loss = aux.loss.float()
            loss = task_loss + float(est.aux_loss_coef) * aux_loss
        scaled = loss / group_size
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        sums.loss += task_loss.detach() * len(idx)
        sums.aux += aux_loss.detach() * len(idx)
        sums.group += loss.detach()
        stepped = b - group_start + 1 == group_size
        if stepped:
            self._optimizer_step(sums.group, epoch)
            sums.group.zero_()
        if est.callbacks:
            call_callbacks(
                est.callbacks,
                "on_batch_end",
                est,
                {"epoch": epoch, "batch": b, "loss": float(loss.detach())},
            )
        return loss if stepped else None

    def _optimizer_step(self, group_loss, epoch):
        import torch

        est = self.est
        if self.dist is not None:  # mean gradients and loss over the ranks, in one all-reduce
            group_loss = self.dist.average_gradients(self.params, group_loss)
        if not bool(torch.isfinite(group_loss)):
            raise divergence_error(
                float(group_loss),
                epoch=epoch,
                step=est.n_steps_ + 1,
                learning_rate=est.learning_rate,
                dtype_name=est.dtype_,
                aux_loss_coef=est.aux_loss_coef,
            )
        lr = est.learning_rate * warmup_lr_factor(est.n_steps_, est.warmup_steps_)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        est.n_steps_ += 1

    def _validate(self, enc_valid, y_valid):
        logits = self.est._predict_logits(enc_valid, self.strategy)
        logp = logits - logsumexp(logits)
        self.model.train()
        sums = [
            float(-logp[np.arange(len(y_valid)), y_valid].sum()),
            float((logits.argmax(1) == y_valid).sum()),
            len(y_valid),
        ]
        if self.dist is not None:  # each rank scored its share of the validation set
            sums = self.dist.sum(sums)
        return {"valid_loss": sums[0] / sums[2], "valid_accuracy": sums[1] / sums[2]}

    def _end_epoch(self, record, stats, early):
        """Store the record, call the callbacks; True to stop training."""
        from tqdm.auto import tqdm

        est = self.est
        est.n_iter_ = record["epoch"]
        est.history_.append(record)
        est.expert_usage_ = stats
        if est._verbosity():
            tqdm.write(format_record(record))
        stop = call_callbacks(est.callbacks, "on_epoch_end", est, dict(record))
        if early is not None:
            stop = early.on_epoch_end(est, record) or stop
        if self.dist is not None:  # one rank's callback stopping stops all
            stop = self.dist.any(stop)
        return stop
