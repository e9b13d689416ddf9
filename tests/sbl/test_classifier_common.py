"""scikit-learn's estimator checks on DQNSBLClassifier configurations."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sparsekit.sbl import DQNSBLClassifier

CONFIGS = [
    DQNSBLClassifier(),  # rbf basis, one-vs-rest on multiclass checks
    DQNSBLClassifier(kernel=None, multi_class="multinomial", diag_update="psb"),  # coef_, CSR
    DQNSBLClassifier(kernel=None, solver="exact"),
    DQNSBLClassifier(kernel="precomputed", exact_switch=0),
]


def _expected_failures(estimator):
    failures = {}
    if estimator.kernel == "precomputed":
        failures["check_decision_proba_consistency"] = (
            "The check fits on raw (80, 2) features without turning them into a Gram matrix "
            "(unlike the checks that honour the pairwise tag), so fit rightly raises ValueError."
        )
    return failures


@parametrize_with_checks(CONFIGS, expected_failed_checks=_expected_failures)
def test_sklearn_compatible(estimator, check):
    check(estimator)
