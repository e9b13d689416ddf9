"""scikit-learn API compliance of DQNSBLRegressor, for the linear basis and kernel bases."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sparsekit import DQNSBLRegressor

ESTIMATORS = [
    DQNSBLRegressor(),
    DQNSBLRegressor(solver="exact"),
    DQNSBLRegressor(kernel="rbf"),
    DQNSBLRegressor(kernel="poly", degree=2, exact_switch=50),
]

_KERNEL = (
    "a kernel basis has one basis function per training sample, so repeating a sample adds a "
    "basis function (with its own prior), which a sample weight cannot do"
)


def _expected_failed_checks(estimator):
    if estimator.kernel is not None:
        return {
            "check_sample_weight_equivalence_on_dense_data": _KERNEL,
            "check_sample_weight_equivalence_on_sparse_data": _KERNEL,
        }
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_api(estimator, check):
    check(estimator)
