"""Distributed search (issue 12, part 2): GridSearchCV under joblib's dask backend on a
LocalCluster gives the default backend's results, and fitted estimators pickle small."""

import pickle

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

from sparsekit import DQNSBLClassifier, DQNSBLRegressor

pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")


def _regression(n=120, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.uniform(-3, 3, size=(n, 3))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] + 0.05 * rng.randn(n)
    return X, y


def _classification(n=120, seed=1):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 2)
    y = (X[:, 0] ** 2 + X[:, 1] > 0.8).astype(int)
    return X, y


def _search_both_ways(client, est, grid, X, y, cv):
    """The same search with the default backend and with the dask backend."""
    local = GridSearchCV(est, grid, cv=cv, n_jobs=1).fit(X, y)
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(est, grid, cv=cv, n_jobs=-1).fit(X, y)
    return local, remote


def _assert_same_search(local, remote):
    # Same folds, same fits; scores agree to rounding only (rtol 1e-9; measured differences are
    # ~5e-12): BLAS may sum in another order in another process (array alignment, SIMD path).
    assert remote.best_params_ == local.best_params_
    for key in local.cv_results_:
        if key.startswith(("split", "mean_test", "std_test", "rank_test")):
            np.testing.assert_allclose(
                remote.cv_results_[key], local.cv_results_[key], rtol=1e-9, atol=1e-12, err_msg=key
            )
    assert [p for p in remote.cv_results_["params"]] == list(local.cv_results_["params"])


def test_gridsearch_regressor_dask_equals_default(dask_client):
    X, y = _regression()
    grid = {"kernel": ["rbf"], "gamma": [0.1, 0.5, 2.0]}
    cv = KFold(3, shuffle=True, random_state=0)
    local, remote = _search_both_ways(dask_client, DQNSBLRegressor(), grid, X, y, cv)
    # the work really ran on the cluster's workers
    assert len(dask_client.scheduler_info()["workers"]) == 2
    _assert_same_search(local, remote)
    # Rounding only, at the scale of y: the constructive path's rank-one updates carry the
    # processes' different BLAS summation orders into predictions near zero (measured 9e-12).
    np.testing.assert_allclose(
        remote.predict(X), local.predict(X), rtol=1e-9, atol=1e-9 * np.max(np.abs(y))
    )


def test_gridsearch_classifier_dask_equals_default(dask_client):
    X, y = _classification()
    grid = {"kernel": ["rbf", None], "gamma": [0.3, 1.0]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    local, remote = _search_both_ways(dask_client, DQNSBLClassifier(), grid, X, y, cv)
    _assert_same_search(local, remote)
    np.testing.assert_array_equal(remote.predict(X), local.predict(X))


def _arrays(obj, depth=0):
    """Every ndarray reachable from ``obj`` through dicts, lists and tuples."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v, depth + 1)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _arrays(v, depth + 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DQNSBLRegressor(kernel="rbf", gamma=0.5),
        lambda: DQNSBLRegressor(kernel=None),
        lambda: DQNSBLClassifier(kernel="rbf", gamma=0.5),
        lambda: DQNSBLClassifier(kernel=None),
    ],
    ids=["reg-rbf", "reg-linear", "clf-rbf", "clf-linear"],
)
def test_fitted_estimator_holds_no_design_matrix(make):
    """No matrix with a row per training sample (design, kernel, X) is left on a fitted estimator,
    and the pickle grows at most linearly in n (the per-basis precisions ``lambda_``), never like
    n * n_features or n**2."""
    sizes = {}
    n_features = 4
    for n in (200, 1600):
        rng = np.random.RandomState(0)
        X = rng.uniform(-2, 2, size=(n, n_features))
        f = np.sin(2 * X[:, 0]) + X[:, 1]
        y = f + 0.05 * rng.randn(n)
        est = make()
        if isinstance(est, DQNSBLClassifier):
            y = (f > 0.2).astype(int)
        est.fit(X, y)
        n_rel = len(est.relevance_)
        for a in _arrays(vars(est)):
            if a.ndim >= 2:
                assert n not in a.shape or a.shape[0] == 1, (
                    f"a {a.shape} array (a matrix with a row or column per training sample) is "
                    "left on the fitted estimator"
                )
            # the posterior covariance of the relevant weights (full when the solver formed it,
            # as the exact and constructive paths do) is m-by-m, whatever n
            assert a.size <= 2 * n + 64 or a.shape == (n_rel, n_rel), (
                f"array of {a.size} values left on the fitted estimator"
            )
        blob = len(pickle.dumps(est))
        # bound: relevant vectors and their covariance, plus a few O(n) per-basis vectors
        bound = 8 * (n_rel * (n_features + n_rel + 8) + 4 * n) + 8192
        assert blob <= bound, (n, n_rel, blob, bound)
        # what grows with n beyond the relevant vectors and their covariance (a sparse model
        # keeps more of them on more data: 93 -> 211 here for the RBF regressor, as fastrvm)
        sizes[n] = blob - 8 * n_rel * (n_features + n_rel)
    # a design matrix (n * n_features doubles) or a kernel (n**2) would add > 8 * 1400 * 4 bytes
    assert sizes[1600] - sizes[200] < 8 * 1400 * 4
