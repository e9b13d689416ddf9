"""The second start of the regressor's constructive path for p >> n: ARD from every feature.

The constructive path (:mod:`._constructive`) starts from one basis and adds, re-estimates or
deletes one at a time. Near the sparse-recovery transition it can settle in a local optimum of
the evidence that ARDRegression, which starts with every feature in the model, avoids (issue 8:
n=100, M=200, k=40, noise 0.01, a log evidence 240 below ARD's on a problem whose support ARD
finds). For a linear basis with at least as many features as samples, and where it is cheap
(:func:`cheap`), the regressor therefore also runs ARDRegression's own iteration (MacKay updates,
uncapped noise update, ARD's stop test; :class:`._regression_solver.Gaussian` with
``solver="exact"``) from every feature, in the n-by-n Woodbury form (O(n^2 m) per iteration for
m active features, never an m-by-m matrix), lets the constructive path polish its end, and keeps
whichever end, this one or the constructive path's own, has the higher log evidence (both
computed by :func:`._regression_solver.model_log_evidence`).

Measured (bench_phase_transition.py's problems, n=100, 10 trials a k, one thread):

- two ends against one run (ARD's start polished by the constructive path, no one-basis start):
  at M=200, noise 0.01, k=30/35/40 the success rates are 1.0/0.9/0.4 against 0.9/0.7/0.4, and
  noiseless 1.0/0.8/0.4 against 0.9/0.7/0.4 (the constructive path alone: 0.9/0.8/0.1 and
  0.9/0.6/0.1). Both ends are kept.
- ARD's end without the polish: 0 of 5 at k=40, noise 0.01; the iteration stops after 10-26
  steps with ~80 features (a 100 times smaller ``tol`` changes nothing); the polish from there
  reaches the support where ARDRegression does.
- the cost bound: at n=100, M=10,000 (n^2 M = 1e8) ARD's iteration stopped with thousands of
  features and the fit took 13 s instead of 0.3 s; with ``WORK_BUDGET = 4e7`` (M <= 4000 at
  n=100) the mean fit time over the benchmark's k grid is 0.26-0.69 of LassoCV's at every M.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._constructive import constructive_path
from ._engine import PathState, run_path
from ._regression_solver import Gaussian, model_log_evidence

ARD_MAX_ITER = 300  # ARDRegression's default max_iter for the all-feature start
# Cost bound of the all-feature start: n^2 M multiply-adds per iteration at most WORK_BUDGET
# (n = samples with positive weight), and n at most MAX_SAMPLES (its n-by-n factorisations).
WORK_BUDGET = 4e7
MAX_SAMPLES = 2000


def cheap(design, sw):
    """Whether the all-feature start runs: at least as many features as samples with positive
    weight, ``n^2 M <= WORK_BUDGET`` and ``n <= MAX_SAMPLES``."""
    n = int(np.count_nonzero(sw))
    M = design.n_active
    return n <= M and n <= MAX_SAMPLES and float(n) ** 2 * M <= WORK_BUDGET


def end_log_evidence(design, t, sw, state, settings):
    """Log evidence (:func:`._regression_solver.model_log_evidence`) of a fit's end: ``design``
    compacted to the model, ``state.lam`` and ``state.beta`` its hyperparameters."""
    lam = state.lam[:, 0]
    if lam.shape[0] == 0:
        G, p = np.zeros((0, 0)), np.zeros(0)
    else:
        G, p = design.gram(sw), design.rmatvec(sw * t)
    tt = float(sw @ (t * t))
    return model_log_evidence(G, p, tt, design.weight_sum, state.beta, lam, settings)


def all_feature_path(design, t, sw, settings, *, on_iter=None):
    """ARDRegression's iteration from every active column of ``design`` (left unchanged), then
    the constructive path from its end over all columns. Returns ``(design, state)`` of the end
    (a compacted copy of ``design``; ``state.n_iter`` counts both parts), or None when ARD's
    iteration stopped with more features than samples with positive weight: such an end
    interpolates the targets, and its m-by-m posterior would cost more than the fit (measured at
    n=100, M=10,000, k=5: ARD stopped after a few iterations with thousands of features)."""
    ard = dataclasses.replace(
        settings,
        solver="exact",
        max_iter=min(ARD_MAX_ITER, settings.max_iter),
        compute_score=False,
        exact_switch=0,
    )
    work = design.copy_active()
    m = work.n_active
    state = PathState(np.zeros((m, 1)), np.ones((m, 1)), beta=1.0 / (1.0 + np.finfo(float).eps))
    run_path(work, state, Gaussian(t, sw, ard), ard, on_iter=on_iter)
    if work.n_active > np.count_nonzero(sw):
        return None
    # the constructive path from ARD's end, every column a candidate again
    pos = np.searchsorted(design.active, work.active)
    init = (pos, state.lam[:, 0].copy()) if len(pos) else None
    end = design.copy_active()
    polish = PathState(np.zeros((0, 1)), np.zeros((0, 1)), beta=state.beta)
    polish.n_iter = state.n_iter
    polish.pruned_lam = state.pruned_lam.copy()
    constructive_path(end, t, sw, polish, settings=settings, init=init, on_iter=on_iter)
    return end, polish
