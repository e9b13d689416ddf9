"""The one Cholesky-with-jitter policy of the SBL solvers.

A posterior precision ``H = data curvature + diag(lam)`` is symmetric positive definite in exact
arithmetic but can fail to factorise numerically (duplicated basis columns with tiny precisions, a
Laplace curvature that underflows). Every solver then factorises ``H + jitter I`` with the first
jitter of the ladder ``JITTER_REL * scale * JITTER_GROWTH**k`` (``k = 0 .. JITTER_STEPS - 1``,
``scale = max(1, max_i |H_ii|)``) that works, and raises when none does. The numba Laplace kernel
(:mod:`._classifier_kernels`) runs the same ladder inside its Newton loop with these constants.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor

JITTER_REL = 1e-10  # first jitter, relative to the largest diagonal entry (at least 1)
JITTER_GROWTH = 10.0  # each further try multiplies the jitter by this
JITTER_STEPS = 13  # jittered tries after the plain one (the last adds 1e2 * scale)


def jitter_scale(diag_max):
    """The scale the jitter ladder is relative to: ``max(1, max_i |H_ii|)``."""
    return max(float(diag_max), 1.0)


def cholesky_jittered(H):
    """Lower Cholesky factor of the symmetric ``H`` under the jitter policy.

    Returns ``((c, True), jitter)`` as ``scipy.linalg.cho_factor`` would (``c`` holds the factor
    in its lower triangle) with the jitter that was needed (0.0 when none was). ``H`` is not
    modified. Raises ``numpy.linalg.LinAlgError`` when even the largest jitter fails, or when the
    factor is not finite (LAPACK passes NaN through without an error).
    """
    try:
        return _checked(cho_factor(H, lower=True, check_finite=False)), 0.0
    except LinAlgError as exc:
        if "non-finite" in str(exc):
            raise
    jitter = JITTER_REL * jitter_scale(np.max(np.abs(np.diag(H)), initial=0.0))
    eye = np.eye(H.shape[0])
    for _ in range(JITTER_STEPS):
        try:
            return _checked(cho_factor(H + jitter * eye, lower=True, check_finite=False)), jitter
        except LinAlgError as exc:
            if "non-finite" in str(exc):
                raise
            jitter *= JITTER_GROWTH
    raise LinAlgError(
        "The posterior precision matrix is not positive definite even with a jitter of "
        f"{jitter / JITTER_GROWTH:.3g} on its diagonal: the basis is numerically degenerate. "
        "Check the input for extreme scales or duplicated columns with huge weights."
    )


def _checked(factor):
    c = factor[0]
    if not np.all(np.isfinite(np.diagonal(c))):
        raise LinAlgError(
            "The posterior precision matrix has non-finite entries (inf or nan), so it cannot be "
            "factorised: check the input and the sample weights for inf/nan or overflowing "
            "values."
        )
    return factor
