"""Warnings specific to sparsekit. Errors reuse scikit-learn's (NotFittedError, ValueError, ...)."""


class EvidenceWarning(UserWarning):
    """The marginal likelihood (evidence) cannot be trusted for this fit.

    Raised for instance on perfectly separable classification data, where the weights of the
    maximum a posteriori solution grow without bound and the Laplace approximation degenerates.
    """


class EmptyModelWarning(UserWarning):
    """A regression fit pruned every basis function although the target varies.

    The model then predicts the mean of the target everywhere. Either nothing in the features
    explains the target better than noise, or the solver failed; comparing with
    ``solver="exact"`` (on small problems) or a lower ``threshold_lambda`` tells which.
    """
