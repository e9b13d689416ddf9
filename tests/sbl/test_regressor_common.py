"""scikit-learn API compliance of DQNSBLRegressor, for the linear basis and kernel bases.

No check is expected to fail: kernel bases are built from the distinct samples with positive
weight, so sample weights are equivalent to repeated (or removed) samples for every basis.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sparsekit import DQNSBLRegressor

ESTIMATORS = [
    DQNSBLRegressor(),
    DQNSBLRegressor(solver="exact"),
    DQNSBLRegressor(kernel="rbf"),
    DQNSBLRegressor(kernel="poly", degree=2, exact_switch=50),
    DQNSBLRegressor(kernel="rbf", solver="exact"),
    DQNSBLRegressor(kernel="precomputed"),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_api(estimator, check):
    check(estimator)
