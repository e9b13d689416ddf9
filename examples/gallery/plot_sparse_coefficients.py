"""
Sparse coefficients: DQN-SBL against ARDRegression and Lasso
============================================================

A linear problem with 400 correlated features of which 12 matter. Three sparse linear models:

- :class:`~sparsekit.DQNSBLRegressor` (default: linear basis, diagonal quasi-Newton solver),
- :class:`sklearn.linear_model.ARDRegression` (the same Bayesian model, solved with a full
  covariance matrix),
- :class:`sklearn.linear_model.LassoCV` (L1 penalty, strength chosen by cross-validation).

The stem plots show every estimated coefficient against the true ones. All three find the 12
true features; DQN-SBL prunes everything else, while ARDRegression (with its default pruning
threshold) and the Lasso keep a tail of small weights, mostly on features correlated with the
true ones.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import ARDRegression, LassoCV
from sklearn.metrics import r2_score

from sparsekit import DQNSBLRegressor

rng = np.random.default_rng(0)
n, M, k = 600, 400, 12
X = rng.normal(size=(n, M))
X[:, 1:] = 0.5 * X[:, :-1] + np.sqrt(0.75) * X[:, 1:]  # neighbouring features correlate
w = np.zeros(M)
support = rng.choice(M, k, replace=False)
w[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 3, k)
y = X @ w + rng.normal(scale=0.5, size=n)
X_test = rng.normal(size=(500, M))
X_test[:, 1:] = 0.5 * X_test[:, :-1] + np.sqrt(0.75) * X_test[:, 1:]
y_test = X_test @ w + rng.normal(scale=0.5, size=500)

# %%
# Fit the three models and time them (one run; absolute times depend on the machine).
models = {
    "DQNSBLRegressor": DQNSBLRegressor(),
    "ARDRegression": ARDRegression(),
    "LassoCV": LassoCV(cv=5, random_state=0),
}
results = {}
for name, model in models.items():
    t0 = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - t0
    coef = model.coef_
    results[name] = coef
    print(
        f"{name:16s} fit {seconds:6.2f} s  non-zero {np.count_nonzero(coef):4d}  "
        f"test R² {r2_score(y_test, model.predict(X_test)):.4f}  "
        f"max |error| on true weights {np.abs(coef[support] - w[support]).max():.3f}"
    )

# %%
# Coefficients. Black circles: the true weights.
fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True, sharey=True)
for ax, (name, coef) in zip(axes, results.items()):
    nz = np.flatnonzero(coef)
    ax.vlines(nz, 0, coef[nz], color="C0", lw=1)
    ax.plot(nz, coef[nz], "o", ms=3, color="C0")
    ax.plot(support, w[support], "o", ms=8, mfc="none", mec="k", label="true weight")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"{name}: {len(nz)} non-zero coefficients", fontsize=10)
axes[0].legend(fontsize=8, loc="upper right")
axes[-1].set_xlabel("feature index")
fig.supylabel("coefficient")
fig.tight_layout()
plt.show()
