"""Fit a battery of DQN-SBL configurations and record what they learned, to check that a
refactor of the solvers changes nothing (issue 8, item 2: the outer loop written once).

    python benchmarks/engine_battery.py --save /tmp/ref.npz      # before the change
    python benchmarks/engine_battery.py --compare /tmp/ref.npz   # after: max relative differences

Each configuration records ``coef_`` (or ``dual_coef_``), ``intercept_``, ``lambda_``,
``alpha_`` (regressor), ``sigma_``, ``n_iter_`` and ``scores_``. The comparison prints, per
configuration, the largest relative difference of the floating-point arrays and whether the
iteration counts are identical, and exits non-zero when a difference exceeds ``--rtol``.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_digits, make_classification, make_moons

from sparsekit import DQNSBLClassifier, DQNSBLRegressor

FIELDS = ("coef_", "dual_coef_", "intercept_", "lambda_", "alpha_", "sigma_", "n_iter_", "scores_")


def _regression(n=200, p=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, 3] = 100.0 * X[:, 3] + 7.0
    coef = np.zeros(p)
    coef[[0, 3, 8, 11]] = [2.0, 0.03, -1.0, 0.5]
    y = X @ coef + 0.3 * rng.normal(size=n) + 4.0
    return X, y


def _hard(n=300, p=140, seed=7):
    """Correlated columns and many small coefficients: a long diagonal phase."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, p))
    X = Z + 0.8 * np.roll(Z, 1, axis=1) + 0.5 * rng.normal(size=(n, 1))
    coef = rng.normal(size=p) * (rng.uniform(size=p) < 0.3)
    coef[:5] = [3.0, -2.0, 1.5, 1.0, -1.0]
    y = X @ coef + 1.0 * rng.normal(size=n)
    return X, y, rng.uniform(0.1, 2.0, size=n)


def _wide(n=60, p=200, k=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    coef = np.zeros(p)
    coef[rng.choice(p, k, replace=False)] = rng.uniform(1.0, 2.0, size=k)
    y = X @ coef + 0.05 * rng.normal(size=n)
    return X, y


def _sinc(n=100, seed=2):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-10, 10, size=n))[:, None]
    y = np.sinc(x[:, 0] / np.pi) + 0.1 * rng.normal(size=n)
    return x, y


def regressor_configs():
    X, y = _regression()
    w = np.random.default_rng(5).uniform(0.2, 3.0, size=X.shape[0])
    Xw, yw = _wide()
    Xm, ym = _regression(n=400, p=150, seed=6)
    Xh, yh, wh = _hard()
    xs, ys = _sinc()
    Xs = sp.random(300, 120, density=0.1, random_state=3, format="csr")
    ysp = np.asarray(Xs[:, :5] @ np.arange(1.0, 6.0)).ravel() + 0.1 * np.random.default_rng(
        3
    ).normal(size=300)
    return {
        "reg_dense": (DQNSBLRegressor(), X, y, None),
        "reg_dense_score": (DQNSBLRegressor(compute_score=True), X, y, None),
        "reg_csr": (DQNSBLRegressor(compute_score=True), Xs, ysp, None),
        "reg_diag_only": (DQNSBLRegressor(exact_switch=0), X, y, None),
        "reg_switch5": (DQNSBLRegressor(exact_switch=5, compute_score=True), X, y, None),
        "reg_mid": (DQNSBLRegressor(compute_score=True), Xm, ym, None),
        "reg_mid_diag_only": (DQNSBLRegressor(exact_switch=0, compute_score=True), Xm, ym, None),
        "reg_mid_em": (DQNSBLRegressor(update="em", exact_switch=0), Xm, ym, None),
        "reg_hard": (DQNSBLRegressor(compute_score=True), Xh, yh, None),
        "reg_hard_diag_only": (DQNSBLRegressor(exact_switch=0, compute_score=True), Xh, yh, None),
        "reg_hard_switch40": (DQNSBLRegressor(exact_switch=40), Xh, yh, wh),
        "reg_em": (DQNSBLRegressor(update="em"), X, y, None),
        "reg_exact": (DQNSBLRegressor(solver="exact", compute_score=True), X, y, None),
        "reg_exact_priors": (
            DQNSBLRegressor(solver="exact", alpha_1=1e-3, lambda_2=1e-3),
            X,
            y,
            None,
        ),
        "reg_weights": (DQNSBLRegressor(compute_score=True), X, y, w),
        "reg_exact_weights": (DQNSBLRegressor(solver="exact"), X, y, w),
        "reg_fix_noise": (DQNSBLRegressor(fix_noise=True), X, y, None),
        "reg_wide": (DQNSBLRegressor(compute_score=True), Xw, yw, None),
        "reg_wide_fix_noise": (DQNSBLRegressor(fix_noise=True), Xw, yw, None),
        "reg_rbf": (DQNSBLRegressor(kernel="rbf", gamma=0.2, compute_score=True), xs, ys, None),
        "reg_rbf_exact": (DQNSBLRegressor(kernel="rbf", gamma=0.2, solver="exact"), xs, ys, None),
    }


def classifier_configs():
    Xm, ym = make_moons(n_samples=150, noise=0.25, random_state=0)
    Xd, yd = load_digits(return_X_y=True)
    idx = np.random.RandomState(0).permutation(len(yd))[:250]
    Xd, yd = Xd[idx] / 16.0, yd[idx]
    yd4 = yd % 4
    Xl, yl = make_classification(
        n_samples=300, n_features=20, n_informative=5, n_classes=3, random_state=1
    )
    Xb = Xl
    yb = (yl == 0).astype(int)
    w = np.random.default_rng(4).uniform(0.2, 3.0, size=len(ym))
    Xs, ys = make_moons(n_samples=600, noise=0.3, random_state=1)
    return {
        "clf_moons": (DQNSBLClassifier(gamma=2.0), Xm, ym, None),
        "clf_moons_exact": (DQNSBLClassifier(gamma=2.0, solver="exact"), Xm, ym, None),
        "clf_moons_switch0": (DQNSBLClassifier(gamma=2.0, exact_switch=0), Xm, ym, None),
        "clf_moons_psb": (DQNSBLClassifier(gamma=2.0, diag_update="psb"), Xm, ym, None),
        "clf_moons_diagexact": (DQNSBLClassifier(gamma=2.0, diag_update="exact"), Xm, ym, None),
        "clf_moons_em": (DQNSBLClassifier(gamma=2.0, update="em"), Xm, ym, None),
        "clf_moons_weights": (DQNSBLClassifier(gamma=2.0), Xm, ym, w),
        "clf_digits_readmit": (DQNSBLClassifier(exact_switch=30), Xd, (yd >= 5).astype(int), None),
        "clf_digits_ovr": (DQNSBLClassifier(), Xd, yd4, None),
        "clf_subset": (DQNSBLClassifier(gamma=2.0, kernel_basis="subset"), Xs, ys, None),
        "clf_digits_multinomial": (
            DQNSBLClassifier(multi_class="multinomial", max_iter=200),
            Xd,
            yd4,
            None,
        ),
        "clf_lin_binary": (DQNSBLClassifier(kernel=None), Xb, yb, None),
        "clf_lin_ovr": (DQNSBLClassifier(kernel=None), Xl, yl, None),
        "clf_lin_multinomial": (
            DQNSBLClassifier(kernel=None, multi_class="multinomial"),
            Xl,
            yl,
            None,
        ),
        "clf_lin_multinomial_exact": (
            DQNSBLClassifier(kernel=None, multi_class="multinomial", solver="exact"),
            Xl[:, :6],
            yl,
            None,
        ),
        "clf_lin_sparse_switch0": (
            DQNSBLClassifier(kernel=None, exact_switch=0),
            sp.csr_matrix(np.where(np.abs(Xl) > 1.0, Xl, 0.0)),
            yb,
            None,
        ),
    }


def warm_configs():
    """Warm starts: fit with few iterations, then continue with more."""
    X, y = _regression()
    Xw, yw = _wide()
    Xm, ym = make_moons(n_samples=150, noise=0.25, random_state=0)
    out = {}
    for name, est, XX, yy in (
        ("warm_reg", DQNSBLRegressor(warm_start=True, max_iter=5), X, y),
        ("warm_reg_wide", DQNSBLRegressor(warm_start=True, max_iter=20), Xw, yw),
        ("warm_clf", DQNSBLClassifier(gamma=2.0, warm_start=True, max_iter=5), Xm, ym),
    ):
        est.fit(XX, yy)
        est.set_params(max_iter=300)
        out[name] = (est, XX, yy, None)
    return out


def dask_configs():
    try:
        import dask
        import dask.array as da
    except ImportError:  # pragma: no cover
        return {}
    dask.config.set(scheduler="synchronous")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 12))
    X[:, 3] = 100.0 * X[:, 3] + 7.0
    y = X[:, 0] * 2.0 - X[:, 8] + 0.5 * rng.normal(size=400)
    sw = rng.uniform(0.5, 2.0, size=400)
    dX = da.from_array(X, chunks=(150, 12))
    yc = np.where(X[:, 0] - 0.04 * X[:, 3] + 0.8 * rng.normal(size=400) > 0, "yes", "no")
    clf = dict(kernel=None, exact_switch=0, diag_update="exact")
    return {
        "dask_reg": (DQNSBLRegressor(), dX, da.from_array(y, chunks=150), sw),
        "dask_reg_exact_finish": (
            DQNSBLRegressor(exact_switch=10, compute_score=True),
            dX,
            da.from_array(y, chunks=150),
            sw,
        ),
        "dask_clf": (DQNSBLClassifier(**clf), dX, da.from_array(yc, chunks=150), sw),
        "dask_clf_exact_readmit": (
            DQNSBLClassifier(kernel=None, exact_switch=8),
            dX,
            da.from_array(yc, chunks=150),
            sw,
        ),
    }


def run():
    results = {}
    groups = (regressor_configs, classifier_configs, warm_configs, dask_configs)
    for group in groups:
        for name, (est, X, y, sw) in group().items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(X, y, sample_weight=sw)
            for field in FIELDS:
                if hasattr(est, field):
                    value = getattr(est, field)
                    results[f"{name}/{field}"] = np.asarray(value, dtype=np.float64)
            print(name, "n_iter_", est.n_iter_, flush=True)
    return results


def _rel(a, b):
    if a.shape != b.shape:
        return np.inf
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb]):
        return np.inf
    if not fa.any():
        return 0.0
    a, b = a[fa], b[fb]
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


def compare(results, ref, rtol):
    bad = []
    names = sorted({k.split("/")[0] for k in ref} | {k.split("/")[0] for k in results})
    for name in names:
        keys = sorted(k for k in ref if k.startswith(name + "/"))
        keys_new = sorted(k for k in results if k.startswith(name + "/"))
        if keys != keys_new:
            bad.append(name)
            print(f"{name}: fields differ {keys} vs {keys_new}")
            continue
        worst = max(_rel(results[k], ref[k]) for k in keys if not k.endswith("n_iter_"))
        it_new, it_ref = results[f"{name}/n_iter_"], ref[f"{name}/n_iter_"]
        same_iter = bool(np.array_equal(it_new, it_ref))
        flag = "" if (same_iter and worst <= rtol) else "   <-- DIFFERS"
        print(f"{name:32s} max rel diff {worst:9.2e}  n_iter {int(it_new)} / {int(it_ref)}{flag}")
        if flag:
            bad.append(name)
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write the results to this .npz")
    group.add_argument("--compare", help="compare with the results in this .npz")
    parser.add_argument("--rtol", type=float, default=1e-10)
    args = parser.parse_args(argv)
    import sparsekit

    print("sparsekit from", sparsekit.__file__)
    results = run()
    if args.save:
        np.savez(args.save, **results)
        return 0
    with np.load(args.compare) as f:
        ref = {k: f[k] for k in f.files}
    bad = compare(results, ref, args.rtol)
    print("all identical within rtol" if not bad else f"{len(bad)} configurations differ: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
