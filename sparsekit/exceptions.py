"""Warnings specific to sparsekit. Errors reuse scikit-learn's (NotFittedError, ValueError, ...)."""


class EvidenceWarning(UserWarning):
    """The marginal likelihood (evidence) cannot be trusted for this fit.

    Raised for instance on perfectly separable classification data, where the weights of the
    maximum a posteriori solution grow without bound and the Laplace approximation degenerates.
    """
