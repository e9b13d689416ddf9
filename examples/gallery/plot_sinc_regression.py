"""
Relevance vector regression with predictive bands
=================================================

Tipping's ``sinc`` problem: 100 noisy samples of ``sin(x)/x`` on [-10, 10]. With an RBF basis,
:class:`~sparsekit.DQNSBLRegressor` is a relevance vector machine: a few training points carry the
fit, and ``predict(X, return_std=True)`` returns the predictive standard deviation (noise plus the
posterior uncertainty of the weights). The shaded band is the mean ± 2σ.
"""

import matplotlib.pyplot as plt
import numpy as np

from sparsekit import DQNSBLRegressor

rng = np.random.default_rng(0)
X = np.sort(rng.uniform(-10, 10, size=100))[:, None]
y = np.sinc(X[:, 0] / np.pi) + rng.normal(scale=0.1, size=100)

# %%
# Fit. ``gamma=0.1`` is a kernel width of about 2.2 in x units.
reg = DQNSBLRegressor(kernel="rbf", gamma=0.1).fit(X, y)
print(f"{len(reg.relevance_)} relevance vectors out of {len(X)} samples")
print(f"estimated noise standard deviation {reg.alpha_**-0.5:.3f} (true 0.1)")

# %%
# Predictive mean and ±2σ band. Outside the data the band widens to the noise level and the
# mean returns to the intercept: the RBF bases have nothing to say there.
grid = np.linspace(-12, 12, 500)[:, None]
mean, std = reg.predict(grid, return_std=True)

fig, ax = plt.subplots(figsize=(7, 4))
ax.fill_between(
    grid[:, 0], mean - 2 * std, mean + 2 * std, color="C0", alpha=0.2, label="mean ± 2σ"
)
ax.plot(grid[:, 0], np.sinc(grid[:, 0] / np.pi), "k--", lw=1, label="sin(x)/x")
ax.plot(grid[:, 0], mean, "C0", lw=2, label="predictive mean")
ax.scatter(X[:, 0], y, s=10, c="grey", label="training data")
ax.scatter(
    reg.relevance_vectors_[:, 0],
    y[reg.relevance_],
    s=120,
    facecolors="none",
    edgecolors="C3",
    linewidths=1.5,
    label=f"{len(reg.relevance_)} relevance vectors",
)
ax.set(xlabel="x", ylabel="y", title="DQNSBLRegressor(kernel='rbf') on sinc")
ax.legend(fontsize=8, loc="lower center", ncols=3)
fig.tight_layout()
plt.show()
