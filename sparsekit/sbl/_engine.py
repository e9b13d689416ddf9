"""The outer loop of sparse Bayesian learning, written once for the regressor and the classifier.

A fit alternates a posterior step with a re-estimate of the weight precisions ``lam``
(ARDRegression's ``lambda_``). What depends on the likelihood comes from a likelihood object
(:class:`._regression_solver.Gaussian`, :class:`._classifier_solver.Bernoulli`,
:class:`._classifier_solver.Softmax`): the posterior step of each phase, the curvature diagonal,
the noise precision ``beta`` (Gaussian only), the evidence and the stop statistic. Everything
else is here, in :func:`run_path`:

- the diagonal phase (posterior mode by an inner solve, ``Sigma_jj ~ 1 / (d_j + lam_j)`` from the
  data-curvature diagonal ``d``) and the exact phase (full posterior over the active set), with the
  switch once at most ``exact_switch`` bases remain (``solver="exact"``: exact from the start);
- the MacKay / EM re-estimate of ``lam`` with the floors ``GAMMA_FLOOR`` and ``LAMBDA_FLOOR``;
- pruning at ``threshold_lambda`` and compaction of the design;
- re-admission of pruned bases in the exact phase (Tipping & Faul's add and delete tests, see
  :mod:`._readmission`), when the estimator supplies the candidate columns;
- the stop rule: ``n_iter_no_change`` consecutive iterations with an unchanged active set and a
  small change (of the coefficients, or of the relevant log precisions, as the likelihood says),
  or ARDRegression's own test for the Gaussian ``solver="exact"``.

Notation: ``coef`` (n_coef, K) posterior means, one column per target (K = 1 for regression and
binary classification, one per class otherwise); ``mask`` (n_coef, K) which (basis, column) pairs
are in the model; the first row is the free intercept basis when the design has one (never
re-estimated or pruned). The settings of a fit are one frozen :class:`PathSettings`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from ._design import DenseBasis
from ._kernels import EM, MACKAY, reestimate_lambda
from ._readmission import apply_additions, joint_delete, propose_additions

_EPS = np.finfo(np.float64).eps
GAMMA_FLOOR = 1e-12
LAMBDA_FLOOR = 1e-12
RELEVANT_GAMMA = 1e-3  # bases with gamma below this are "creeping" and ignored by the stop rule
# Diagonal-phase "settled" test (see _Settle): the training logits move by less than this
# (relative L2 norm) per iteration while at most SETTLE_PRUNE_FRACTION of the active bases are
# pruned over n_iter_no_change iterations.
SETTLE_LOGIT_TOL = 1e-3
SETTLE_PRUNE_FRACTION = 0.01
# PathSettings.flat_tol's default: the evidence change per iteration and unit of weight below
# which the exact phase with re-admission counts as calm. Most exact iterations of a kernel
# classifier are tails in which a few precisions creep (max |d log lam| ~ 1e-2, decaying by ~1 %
# per iteration) while the evidence moves by a few 1e-3 nats. make_classification(n=2000, RBF,
# gamma 0.05), seeds 0-2: 1e-6 (the add test's GAIN_TOL) 673/922/564 iterations, log evidence
# -165.22/-199.45/-172.44; 3e-6 555/703/496 iterations, -165.14/-199.62/-172.43 (the same
# accuracy to 0.1 pp); 1e-5 479/612/352 iterations but -165.15/-199.12/-173.57 (seed 2: -1.1
# nats and -0.35 pp). Over-relaxed MacKay steps in log scale (omega x1.5 per step in the same
# direction, reset on a reversal) were tried on seed 0: omega <= 4 911 iterations (-164.4),
# omega <= 10 567 iterations (-169.9): dropped.
FLAT_TOL = 3e-6
# Exact phase with re-admission: deletes per class and iteration by Tipping and Faul's test run
# jointly at the Laplace mode (:func:`._readmission.joint_delete`). Without a cap (every basis the
# joint test removes), make_classification(n=2000, RBF, gamma 0.05, seed 0) deleted 63 of 133
# bases at the first exact iteration and 156 at the second start's, then re-added them one per
# sweep: max_iter (1000) reached, log evidence -168.4 against -165.2 with one delete per
# iteration (673 iterations); joint deletes only in iterations without an addition changed
# nothing (675 iterations, the same evidence): the deletes are not what keeps the phase running.
DELETE_CAP = 1
# The exact phase with re-admission stops when it cycles: its log evidence over the last
# STALL_WINDOW iterations moved without rising above the best of the STALL_WINDOW before (to
# STALL_RTOL), turning between rise and fall at STALL_TURNS of its steps or more
# (:func:`evidence_stalled`). MacKay's simultaneous updates of correlated bases can
# fall into a cycle that damping does not end (narrow RBF kernels on noisy labels:
# make_classification(2400, 20, n_informative=8, flip_y=0.05), 400 rows to fit, gamma 0.2: 6 of
# 8 seeds cycled until max_iter; with the stop, 5 stop for a cycle and 1 converges from the
# second start, in 5,212 iterations against 7,133, the evidence 0 to +56 nats higher; python
# benchmarks/bench_narrow_kernels.py). A falling evidence without turns is not a cycle: MacKay's
# steps can lower the Laplace evidence for 100 iterations and more, with a turn at a few % of
# them (seed 1 there: its second start peaked at -220.2 and converged at -225.9; on
# make_classification(400) seed 1 fell from -222 to -262, then rose to -121). Once a cycle is
# confirmed by STALL_WINDOW more iterations (:class:`_Stall`), the path runs on until an
# iteration's evidence is within STALL_RETURN of the cycle's range from its best and stops there,
# before that iteration's update, so the fit keeps the best iterate of the cycle rather than
# wherever max_iter falls, and the iterations left go to the second start.
STALL_WINDOW = 50
STALL_RTOL = 1e-6
STALL_TURNS = 0.5
STALL_RETURN = 0.05
# After a hand-over (_switch_down) the exact phase's re-admission grows the model to at most
# HAND_OVER_GROWTH times exact_switch bases (_within_cap). Without a bound, the start from the
# hand-over's precisions can re-admit bases worth a few thousandths of a nat each, one per
# iteration, until max_iter, and the second start, which converges, gets what is left:
# make_classification(2 x 2,000, 20 features, n_informative=8, flip_y=0.03), RBF gamma 0.4 (SVC
# at chance), seed 1: the first start grew to 955 bases, 207.0 s, log evidence -464.9. Bound at
# 1.5: 63.5 s, -431.5 (the second start converged with 272 bases); seed 2: 65.6 s, -494.0
# against 85.1 s, -484.4 (benchmarks/bench_kernel_widths.py). At 1.25 (scratch): -442.5 and
# -555.8; at 1.0: 5.7 and 8.4 s but -729.1 and -903.3, and at gamma 0.2 a bound at 1.0 changed the
# fits (seed 1: -308.5 against -277.7); no start there grew past 212 bases. The bound is per
# one-vs-rest problem: one bound on the bases all problems hold together left each of four
# classes a fraction of it (make_classification(2 x 1,200, n_classes=4), gamma 0.2, seeds 0-2:
# log evidence 286 to 585 nats lower, accuracy 0.546-0.687 against 0.661-0.731 per problem and
# SVC's 0.636-0.717; benchmarks/bench_kernel_widths.py --classes 4).
HAND_OVER_GROWTH = 1.5

_CHOICES = {
    "solver": ("dqn", "exact"),
    "update": ("mackay", "em"),
    "diag_update": ("dbfgs", "psb", "exact"),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class PathSettings:
    """Settings of one fit, built by the estimator from its validated parameters.

    ``tol`` bounds the stop statistic of the exact phase (and, for the Gaussian likelihood, of
    both phases: the relative change of the coefficients); ``dqn_tol`` that of the classifier's
    diagonal phase (log precisions). ``alpha_1``, ``alpha_2``, ``lambda_1``, ``lambda_2`` are the
    Gamma hyperpriors of the noise and weight precisions (ARDRegression's names). ``noise_every``
    is the constructive path's noise schedule (:mod:`._constructive`); ``inner_forcing`` the
    classifier's inexact-Newton forcing term (0: off). ``flat_tol`` is the evidence change per
    iteration and unit of weight below which the exact phase with re-admission counts as settled
    (the subset path loosens it between its scans). ``force_switch``: a diagonal phase that stops
    with more than ``exact_switch`` bases still hands over to the exact phase, with the
    ``exact_switch`` most relevant (:func:`_switch_down`; the classifier's kernel bases), and
    that exact phase's re-admission keeps the model within ``HAND_OVER_GROWTH`` times
    ``exact_switch`` (:func:`_within_cap`).
    """

    max_iter: int
    tol: float
    n_iter_no_change: int
    threshold_lambda: float
    solver: str = "dqn"
    update: str = "mackay"
    exact_switch: int = 0
    dqn_tol: float = 0.0
    diag_update: str = "dbfgs"
    inner_max_iter: int = 20
    inner_tol: float = 0.0
    inner_forcing: float = 0.0
    alpha_1: float = 0.0
    alpha_2: float = 0.0
    lambda_1: float = 0.0
    lambda_2: float = 0.0
    fix_noise: bool = False
    compute_score: bool = False
    noise_every: int = 0
    flat_tol: float = FLAT_TOL
    force_switch: bool = False

    def __post_init__(self):
        for name, options in _CHOICES.items():
            if getattr(self, name) not in options:
                raise ValueError(
                    f"PathSettings.{name} must be one of {options}; got {getattr(self, name)!r}."
                )
        for name in ("max_iter", "n_iter_no_change"):
            if getattr(self, name) < 1:
                raise ValueError(f"PathSettings.{name} must be >= 1; got {getattr(self, name)!r}.")
        for name in ("exact_switch", "inner_max_iter", "noise_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"PathSettings.{name} must be >= 0; got {getattr(self, name)!r}.")
        nonneg = ("tol", "dqn_tol", "inner_tol", "inner_forcing", "alpha_1", "alpha_2", "flat_tol")
        for name in (*nonneg, "lambda_1", "lambda_2"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"PathSettings.{name} must be >= 0; got {getattr(self, name)!r}.")
        if not self.threshold_lambda > 0.0:
            raise ValueError(
                f"PathSettings.threshold_lambda must be > 0; got {self.threshold_lambda!r}."
            )

    @property
    def mode(self):
        """The re-estimate of :func:`._kernels.reestimate_lambda`: MACKAY or EM."""
        return EM if self.update == "em" else MACKAY


class PrunedPrecisions:
    """``(original column index, class) -> precision`` at which a basis was pruned: a mapping
    recorded in bulk (:meth:`record`, one array per pruning round) and read in bulk
    (:meth:`fill`). On text a fit prunes hundreds of thousands of bases; a dict with a tuple key
    per basis took 1 s of a 6.6 s IMDB fit to build and read (``_apply_update``,
    ``_store_fit``). A later record of a key replaces an earlier one, as in a dict."""

    def __init__(self):
        self._batches = []  # (columns, classes, precisions), in recording order

    def record(self, js, ks, vals):
        """Record precisions ``vals`` for the pairs ``(js[i], ks[i])`` (distinct pairs)."""
        js = np.array(js, dtype=np.intp).ravel()
        if js.size:
            ks = np.broadcast_to(np.asarray(ks, dtype=np.intp), js.shape).copy()
            vals = np.broadcast_to(np.asarray(vals, dtype=np.float64), js.shape).copy()
            self._batches.append((js, ks, vals))

    def __setitem__(self, key, value):
        self.record([key[0]], [key[1]], [value])

    def pop(self, key, default=None):
        """Remove ``key`` and return its precision (``default`` when it is not recorded)."""
        found = default
        kept = []
        for js, ks, vals in self._batches:
            hit = (js == key[0]) & (ks == key[1])
            if hit.any():
                found = float(vals[hit][-1])
                js, ks, vals = js[~hit], ks[~hit], vals[~hit]
            if js.size:
                kept.append((js, ks, vals))
        self._batches = kept
        return found

    def fill(self, out):
        """Write the precisions into ``out``: ``out[class, column]`` (2-D) or ``out[column]``."""
        for js, ks, vals in self._batches:
            if out.ndim == 2:
                out[ks, js] = vals
            else:
                out[js] = vals

    def to_dict(self):
        """The mapping as a dict."""
        out = {}
        for js, ks, vals in self._batches:
            out.update(zip(zip(js.tolist(), ks.tolist()), vals.tolist()))
        return out

    def __iter__(self):
        return iter(self.to_dict())

    def __bool__(self):
        return bool(self._batches)

    def copy(self):
        out = PrunedPrecisions()
        out._batches = list(self._batches)  # batches are never modified in place
        return out


class PathState:
    """Mutable state of a fit (notation in the module docstring).

    ``curvature`` (n_coef, K) is the quasi-Newton data-curvature diagonal of the classifier's
    diagonal phase (None for the Gaussian likelihood, whose diagonal is exact and constant);
    ``beta`` the noise precision (Gaussian; None otherwise).
    """

    def __init__(self, coef, lam, *, mask=None, curvature=None, beta=None, lam_restart=None):
        self.coef = coef
        self.lam = lam
        # the fit's initial precision: when set, the exact phase after a diagonal phase also
        # runs from a restart at this precision (:func:`run_path`); None: it does not
        self.lam_restart = lam_restart
        self.mask = np.ones(coef.shape, dtype=bool) if mask is None else mask
        self.curvature = curvature
        self.beta = beta
        self.sigma_diag = None
        # full posterior covariance(s), exact phase: Gaussian the (m, m) matrix; Bernoulli a list
        # of K pairs (coefficient index, covariance); Softmax one pair over flat positions
        self.sigma_full = None
        # Gaussian, a final model with more bases than samples (Woodbury steps): V (n, m) with
        # Sigma = diag(1 / lam) - V'V, in place of sigma_full
        self.sigma_factor = None
        self.n_iter = 0
        self.converged = False
        # (low, high) log evidence of the cycle where the exact phase stopped (_Stall); None
        # when it did not stop for a cycle
        self.stalled = None
        # after the hand-over of a diagonal phase that stopped with more than exact_switch bases
        # (_switch_down): the exact phase's model size that re-admission does not grow past
        # (HAND_OVER_GROWTH * exact_switch); None: no bound
        self.readmit_cap = None
        # additions that bound held back at the last re-admission sweep (0: none)
        self.held_back = 0
        self.scores = []
        self.pruned_lam = PrunedPrecisions()  # (original column index, k) -> precision when pruned
        self.phase = "dqn"
        self.logits = None  # training logits at the end of the last diagonal inner solve
        self.readmitted = {}  # (original column index, k) -> times re-admitted
        self.class_evidence = []  # exact phase, bernoulli: Laplace evidence per class and step
        # exact phase, bernoulli: per class, the status of the last Newton solve (0 converged,
        # 1 stopped at its iteration cap, 2 converged on a jittered precision)
        self.newton_status = None
        # exact phase, bernoulli: per class, (basis ids, data Gram matrix, its curvature weights)
        # of the last Newton solve, the next one's chord matrix (:func:`._classifier_solver
        # .exact_step`)
        self.gram = {}
        # exact phase: [1 | Phi_A] of the design's current active set, shared by the exact step and
        # the re-admission sweep (:class:`._design.DenseBasis`; rebuilt when the design changes)
        self.dense_basis = DenseBasis()


def free_rows(design):
    """Rows of the free intercept basis (never re-estimated nor pruned): 0 or 1."""
    return 1 if design.intercept_column else 0


def run_path(design, state, lik, settings, *, on_iter=None, candidates=None):
    """Fit: the diagonal phase until at most ``exact_switch`` bases remain (or exact from the
    start for ``solver="exact"``), then exact iterations, until the stop rule fires or
    ``max_iter`` iterations have run in all (``state.converged`` tells which).

    With a ``candidates`` source (:class:`._readmission.CandidateColumns`) and a likelihood that
    supports it (one-vs-rest Bernoulli and Softmax), the exact phase re-admits pruned bases by
    Tipping and Faul's test: a sweep over every basis function at the first exact iteration, after
    every sweep that added a basis, and before the phase may stop, so it stops only when no basis
    outside the model is worth adding; each iteration also prunes, per class, the basis whose
    removal raises the evidence most (Tipping and Faul's delete test) rather than waiting for its
    precision to creep up to ``threshold_lambda``. ``on_iter(state, design, step, dlog)`` is called after every
    iteration (``step`` is what the likelihood's posterior step returned).

    With re-admission, ``solver="dqn"``, ``state.lam_restart`` set and the design in memory, the
    exact phase runs from two starts and the fit keeps the end with the higher Laplace evidence:
    after a diagonal phase, from the diagonal phase's precisions and from a restart
    (:func:`_restart`) at the hand-over; when it ran from the start, from its end
    (:func:`_restart_from_end`). The subset path (:mod:`._kernel_basis`) runs one start.
    ``state.n_iter`` then counts the iterations of both (``on_iter`` sees both;
    ``state.scores`` holds the kept path's).
    """
    exact = settings.solver == "exact"
    readmit = candidates is not None and lik.readmits
    if readmit:
        # a warm start may leave bases out of every class's model: they are candidates only
        _compact_unused(design, state, lik)
    lik.start(design, state)
    split = (
        readmit
        and settings.solver == "dqn"
        and state.lam_restart is not None
        and not getattr(design, "chunked", False)
    )
    at_switch, exact = _iterate(
        design, state, lik, settings, exact, readmit, split, on_iter, candidates
    )
    if at_switch:
        alt = design.copy_active(), copy.deepcopy(state)
        _iterate(design, state, lik, settings, True, readmit, False, on_iter, candidates)
        _second_start(design, state, *alt, lik, settings, on_iter, candidates)
    lik.finish(design, state, settings, exact)
    if split and exact and not at_switch:
        _restart_from_end(design, state, lik, settings, on_iter=on_iter, candidates=candidates)
    return state


def _restart_from_end(design, state, lik, settings, *, on_iter=None, candidates=None):
    """A second start (:func:`_restart`) of a fit that ended in the exact phase, from its end;
    keeps the end with the higher Laplace evidence and finishes the fit again. For a path that
    never ran a diagonal phase (exact from the start: at most ``exact_switch`` bases). Does nothing
    without an exact posterior, ``state.lam_restart`` or iterations left."""
    if state.sigma_full is None or state.lam_restart is None or state.n_iter >= settings.max_iter:
        return state
    alt = design.copy_active(), copy.deepcopy(state)
    _second_start(design, state, *alt, lik, settings, on_iter, candidates)
    lik.finish(design, state, settings, True)
    return state


def _second_start(design, state, alt_design, alt_state, lik, settings, on_iter, candidates):
    """Run the exact phase from the restart of ``alt_design``/``alt_state`` (copies taken
    where ``state`` started its own exact phase, which has run) and keep, in ``design`` and
    ``state``, the end with the higher evidence; ``state.n_iter`` counts both runs."""
    _restart(alt_design, alt_state, lik, settings, candidates)
    alt_state.n_iter = state.n_iter  # max_iter bounds both starts together
    alt_state.converged = False
    _iterate(alt_design, alt_state, lik, settings, True, True, False, on_iter, candidates)
    if _last_score(alt_state) > _last_score(state):
        design.__dict__.update(alt_design.__dict__)
        state.__dict__.update(alt_state.__dict__)
    state.n_iter = alt_state.n_iter


def _iterate(design, state, lik, settings, exact, readmit, split, on_iter, candidates):
    """The iterations of :func:`run_path`, from the phase ``exact`` on, until the stop rule
    fires or ``max_iter`` iterations have run. Returns ``(at_switch, exact)``; with ``split`` it
    returns early, ``at_switch`` True, where the diagonal phase hands over to the exact phase
    after at least one diagonal iteration."""
    stop = _StopRule(settings, lik.stop_statistic, cycles=readmit)
    settle = _Settle(settings.n_iter_no_change)
    sweep_next = True
    diagonal_ran = False
    stop.enter(state, exact)
    while state.n_iter < settings.max_iter:
        if lik.stops_when_empty and design.n_coef == 0:
            state.converged = True
            break
        if not exact and lik.exact_size(design, state) <= settings.exact_switch:
            if split and diagonal_ran:
                return True, True
            exact = True
            stop.enter(state, exact)
        state.n_iter += 1
        state.phase = "exact" if exact else "dqn"
        step = _posterior_step(design, state, lik, settings, exact)
        diagonal_ran = diagonal_ran or not exact
        additions = []
        if exact and readmit and (sweep_next or stop.calm + 1 >= settings.n_iter_no_change):
            additions = _within_cap(
                design,
                state,
                lik,
                propose_additions(
                    design, state, lik.T, lik.sw, candidates, settings.threshold_lambda, lik.name
                ),
            )
            sweep_next = bool(additions)
        update = _reestimate(design, state, settings)
        if update is not None and not settings.fix_noise:
            lik.update_noise(design, state, step, update.gamma, settings, exact)
        score = lik.log_evidence(design, state, step, update, settings, exact)
        if stop.stall.record(state, score):
            break  # cycling: keep this iterate, its update not applied
        coef_seen = state.coef.copy() if stop.needs_coef else None
        changed, dlog, keep = False, 0.0, None
        if update is not None:
            # a class whose evidence fell since the last update overshot: damp its next update
            ev = state.class_evidence
            damp = exact and readmit and len(ev) > 1 and ev[-1] < ev[-2]
            changed, dlog, keep = _apply_update(
                design, state, lik, update, settings, delete_test=exact and readmit, damp=damp
            )
        if additions:
            apply_additions(design, state, candidates, additions, 0.25 * design.weight_sum)
            changed = True
        if on_iter is not None:
            on_iter(state, design, step, dlog)
        tol = settings.tol if exact else settings.dqn_tol
        settled = dlog < tol or (
            exact and readmit and _evidence_flat(state, design, settings.flat_tol)
        )
        done = stop.observe(coef_seen, keep, changed, settled, exact)
        if not exact and lik.uses_settle_test and settle.update(state.logits, design.n_active):
            done = True
        if done:
            if exact or (
                lik.exact_size(design, state) > settings.exact_switch
                and not (readmit and _switch_down(design, state, lik, settings))
            ):
                state.converged = True
                break
            if split:
                return True, True
            exact = True  # the diagonal phase converged with few bases: finish exactly
            stop.enter(state, exact)
    return False, exact


def _switch_down(design, state, lik, settings):
    """With ``settings.force_switch``, a diagonal phase that stopped with more than
    ``exact_switch`` bases (``exact_switch > 0``; :func:`_iterate` calls it then) hands over to
    the exact phase anyway: only the ``exact_switch`` bases with the smallest precisions stay
    (per basis its smallest over the one-vs-rest problems; the softmax's coupled coefficients one
    by one), the others are pruned with their precisions recorded (:func:`_prune`), and the exact
    phase's re-admission brings back any of them that Tipping and Faul's add test favours.
    Returns whether it pruned.

    Why: on correlated kernel columns the diagonal phase can stop far from exact SBL with many
    bases (make_classification(2,000, 20 features), RBF gamma 0.2, seeds 0-2: 359-466 bases, log
    evidence -715 to -836, test accuracy 0.75-0.80 against SVC's 0.84-0.88); the fit used to end
    there. Finishing exactly from the 200 of smallest precision: 153-166 bases, -263 to -292,
    0.88-0.89, at 7-10x the time (benchmarks/bench_kernel_widths.py). Ranking by |w| instead
    ended lower on two seeds (-274 and -283 against -263 and -278)."""
    m = settings.exact_switch
    if not settings.force_switch or m <= 0:
        return False
    f = free_rows(design)
    mask, lam = state.mask[f:], state.lam[f:]
    held = np.where(mask, lam, np.inf)
    if lik.name == "softmax":  # exact_size counts coefficients
        drop = np.zeros(mask.size, dtype=bool)
        drop[np.argsort(held, axis=None, kind="stable")[m:]] = True
        drop = drop.reshape(mask.shape) & mask
    else:  # ... or bases, whichever problems hold them
        rows = np.zeros(mask.shape[0], dtype=bool)
        rows[np.argsort(held.min(axis=1), kind="stable")[m:]] = True
        drop = mask & rows[:, None]
    rows, cols = np.nonzero(drop)
    _prune(design, state, lik, rows, cols, lam[rows, cols])
    state.readmit_cap = math.ceil(HAND_OVER_GROWTH * m)
    return True


def _within_cap(design, state, lik, additions):
    """The ``additions`` a sweep proposed that keep the model within ``state.readmit_cap``
    (``HAND_OVER_GROWTH`` times ``exact_switch`` after :func:`_switch_down`; all of them without
    a cap), taken in the order proposed (best gain first, :func:`._readmission.choose_additions`)
    while they fit; records in ``state.held_back`` how many it held back. One-vs-rest problems
    are capped one by one (each its own bases: its exact step is over those), the softmax's
    coefficients together (its exact step couples them)."""
    cap = state.readmit_cap
    state.held_back = 0
    if cap is None:
        return additions
    per_class = lik.name != "softmax"
    if per_class:
        sizes = dict(enumerate(state.mask[free_rows(design) :].sum(axis=0).tolist()))
    else:
        sizes = {None: lik.exact_size(design, state)}
    kept = []
    for j, k, a in additions:
        key = k if per_class else None
        if sizes[key] >= cap:
            state.held_back += 1
            continue
        sizes[key] += 1
        kept.append((j, k, a))
    return kept


def evidence_stalled(scores, window=STALL_WINDOW):
    """``(low, high)`` of the last ``window`` log evidences when they cycle: their best is no
    higher than the best of the ``window`` before (to STALL_RTOL) while they still move by more
    than that, turning from rise to fall (or back) at STALL_TURNS of their steps or more; None
    otherwise (too few, still rising, flat, or falling or wandering without a cycle)."""
    if len(scores) < 2 * window:
        return None
    before = np.asarray(scores[-2 * window : -window], dtype=np.float64)
    last = np.asarray(scores[-window:], dtype=np.float64)
    tol = STALL_RTOL * max(np.abs(before).max(), 1.0)
    lo, hi = float(last.min()), float(last.max())
    if hi > before.max() + tol or hi - lo <= tol:
        return None
    step = np.diff(last)
    direction = np.sign(step[np.abs(step) > tol])
    if direction.size < 2 or np.mean(direction[1:] != direction[:-1]) < STALL_TURNS:
        return None
    return lo, hi


class _Stall:
    """The cycle stop of the exact phase with re-admission (STALL_WINDOW, above): :meth:`record`
    says, after each iteration's log evidence, whether to stop before that iteration's update.

    Three stages: a cycle is suspected when :func:`evidence_stalled` holds for the last
    2 STALL_WINDOW evidences; it is confirmed when the next STALL_WINDOW stay at or below the
    best of those (to STALL_RTOL; else the suspicion is dropped: the path left the cycle), and those
    STALL_WINDOW evidences are the cycle's range (the suspect window can still hold the approach
    to the cycle: digits, multinomial, a period-3 cycle whose best, -83.29, was below the best of
    its approach, -83.05); then the path stops at the first evidence within STALL_RETURN of that
    range from its best (at most STALL_WINDOW more iterations)."""

    def __init__(self):
        self.start = None  # index in state.scores where the exact phase began; None: off
        self.suspect = None  # the best evidence of the window where a cycle was suspected
        self.found = None  # (low, high) of the confirmed cycle's evidence
        self.waited = 0  # iterations since the suspicion

    def enter(self, state, on):
        """Start a phase: ``on`` for the exact phase with re-admission; nothing has stalled."""
        self.start = len(state.scores) if on else None
        self.suspect = self.found = None
        self.waited = 0
        state.stalled = None

    def record(self, state, score):
        """Append ``score`` (None: nothing to record) to ``state.scores``; returns whether to stop
        here (then ``state.stalled`` holds the cycle's range)."""
        if score is None:
            return False
        state.scores.append(score)
        if self._stop(state.scores):
            state.stalled = self.found
            return True
        return False

    def _stop(self, scores):
        if self.start is None or len(scores) <= self.start:
            return False
        if self.suspect is None:
            recent = scores[max(self.start, len(scores) - 2 * STALL_WINDOW) :]
            if evidence_stalled(recent) is not None:
                self.suspect = max(recent)
                self.waited = 0
            return False
        self.waited += 1
        if self.found is None:
            hi = self.suspect
            if scores[-1] > hi + STALL_RTOL * max(abs(hi), 1.0):
                self.suspect = None  # rose above the suspect window: not a cycle
            elif self.waited == STALL_WINDOW:
                last = scores[-STALL_WINDOW:]
                self.found = (float(min(last)), float(max(last)))
            return False
        lo, hi = self.found
        return scores[-1] >= hi - STALL_RETURN * (hi - lo) or self.waited > 2 * STALL_WINDOW


def _posterior_step(design, state, lik, settings, exact):
    """The likelihood's exact step, or its inner solve with the diagonal covariance."""
    if exact:
        return lik.exact_step(design, state, settings)
    step = lik.inner_solve(design, state, settings)
    H = lik.curvature(design, state) + state.lam
    state.sigma_diag = np.where(state.mask, 1.0 / H, 0.0)
    step.logdet = float(np.sum(np.log(H[state.mask])))
    return step


def _restart(design, state, lik, settings, candidates):
    """The second start of the exact phase: at the exact posterior for the diagonal phase's
    precisions, the pruned bases that pass Tipping and Faul's add test come back at once, best
    gain first, up to ``exact_switch`` bases in all; then every precision of the model restarts at
    ``state.lam_restart``, as ``solver="exact"`` starts on all bases. The weights stay (a warm
    start for the first Newton solve).

    Why: the diagonal phase's precisions come from ``Sigma_jj ~ 1 / (d_j + lam_j)``, which
    ignores the correlation between bases (RBF columns of nearby samples), under-estimates the
    posterior variances and so counts every basis as well determined (``gamma_j = 1 - lam_j
    Sigma_jj`` near 1). Inherited by the exact phase, those precisions start MacKay's updates in
    a different basin of the evidence, whose end is a local optimum that no single add, delete
    or re-estimate leaves (breast cancer, RBF, split 0: log evidence -28.1, the best single move
    +0.4; the exact method from the start reaches -24.8). The restart reaches a higher evidence
    on breast cancer's splits 1 and 2 (-23.7 against -24.5; -23.2, the exact method's, against
    -25.8) and Image's split 2 (-117.0 against -185.4), not on breast cancer's splits 0, 3, 4 or
    Image's 0, 1: hence two starts. Without the ``exact_switch`` bound 750 bases came back on
    Image (a 6x slower fit)."""
    lik.exact_step(design, state, settings)
    additions = propose_additions(
        design,
        state,
        lik.T,
        lik.sw,
        candidates,
        settings.threshold_lambda,
        lik.name,
        per_class=max(settings.exact_switch - lik.exact_size(design, state), 0),
    )
    if additions:
        apply_additions(design, state, candidates, additions, 0.25 * design.weight_sum)
        state.readmitted.clear()  # a new start: MAX_READMIT counts within one path
    f = free_rows(design)
    lam = state.lam[f:]
    lam[...] = np.where(state.mask[f:], state.lam_restart, lam)


def _last_score(state):
    """The last recorded log evidence of a path (-inf when none was recorded)."""
    return state.scores[-1] if state.scores else -np.inf


class _Update:
    """A re-estimate of the precisions over the masked, non-free coefficients."""

    def __init__(self, lam_old, lam_new, gamma, sub):
        self.lam_old = lam_old
        self.lam_new = lam_new
        self.gamma = gamma
        self.sub = sub  # the (row, column) pairs re-estimated, rows below the free ones


def _reestimate(design, state, settings):
    """MacKay/EM update (Tipping 2001 eqs. 16, 44, 48) over the masked, non-free coefficients;
    None when there are none. Nothing in ``state`` changes."""
    f = free_rows(design)
    sub = state.mask[f:]
    if not sub.any():
        return None
    lam_old = state.lam[f:][sub]
    lam_new, gamma = reestimate_lambda(
        state.coef[f:][sub].copy(),
        state.sigma_diag[f:][sub].copy(),
        lam_old.copy(),
        settings.mode,
        settings.lambda_1,
        settings.lambda_2,
        GAMMA_FLOOR,
        LAMBDA_FLOOR,
    )
    return _Update(lam_old, lam_new, gamma, sub)


def _apply_update(design, state, lik, update, settings, *, delete_test, damp):
    """Store the re-estimated precisions, prune those at ``threshold_lambda`` and compact.

    With ``delete_test`` (the exact phase with re-admission), the basis of each class whose
    removal raises the evidence most is also pruned, up to ``DELETE_CAP`` per class tested on the
    posterior conditioned on the earlier deletes (:func:`._readmission.joint_delete`; for a
    softmax model the classes' deletes are coupled through the joint covariance).
    With ``damp`` (one bool per class), the precisions of those classes move half-way (in log
    scale) to their new values: MacKay's simultaneous update of many correlated bases can fall
    into a two-cycle (measured: 70 RBF bases, the evidence alternating between two values until
    ``max_iter``).

    Returns ``(changed, dlog, keep_rows)``: whether the active set changed, the largest change of
    log precision over the relevant coefficients (gamma above RELEVANT_GAMMA), and which rows of
    the state were kept (None when none was removed).
    """
    f = free_rows(design)
    sub, lam_old, lam_new, gamma = update.sub, update.lam_old, update.lam_new, update.gamma
    coef, lam = state.coef, state.lam
    if damp is not False and np.any(damp):
        rows_damped = np.asarray(damp)[np.nonzero(sub)[1]] & np.isfinite(lam_new)
        lam_new = np.where(rows_damped, np.sqrt(lam_new * lam_old), lam_new)
    if delete_test:
        full_new = np.full(lam.shape, np.nan)
        full_new[f:][sub] = lam_new
        dead = joint_delete(
            state.sigma_full, coef, lam, full_new, f, lik.name, DELETE_CAP, GAMMA_FLOOR
        )
        lam_new = np.where(dead[f:][sub], np.inf, lam_new)
    relevant = (gamma > RELEVANT_GAMMA) & np.isfinite(lam_new)
    if relevant.any():
        dlog = float(np.max(np.abs(np.log(lam_new[relevant]) - np.log(lam_old[relevant]))))
    else:
        dlog = 0.0
    prune = ~(lam_new < settings.threshold_lambda)
    lam_sub = lam[f:]
    lam_sub[sub] = np.where(prune, 1.0, lam_new)
    if not prune.any():
        return False, dlog, None
    rows, cols = np.nonzero(sub)
    return True, dlog, _prune(design, state, lik, rows[prune], cols[prune], lam_new[prune])


def _prune(design, state, lik, rows, cols, lam_at):
    """Take the (basis, class) pairs ``(rows, cols)`` out of the model (``rows`` below the free
    ones): their precisions ``lam_at`` recorded, their weights zeroed, the bases no class holds
    any more compacted away. Returns the rows kept (:func:`_compact_unused`)."""
    state.pruned_lam.record(design.active[rows], cols, lam_at)
    state.mask[free_rows(design) :][rows, cols] = False
    state.coef[~state.mask] = 0.0
    return _compact_unused(design, state, lik)


def _compact_unused(design, state, lik):
    """Remove from the design (and the state) the bases that no column has in its model.
    Returns the boolean rows kept (None when nothing was removed)."""
    f = free_rows(design)
    keep = state.mask[f:].any(axis=1)
    if keep.all():
        return None
    keep_rows = np.concatenate([np.ones(f, dtype=bool), keep])
    design.compact(keep)
    state.coef = np.ascontiguousarray(state.coef[keep_rows])
    state.lam = np.ascontiguousarray(state.lam[keep_rows])
    state.mask = np.ascontiguousarray(state.mask[keep_rows])
    if state.curvature is not None:
        state.curvature = np.ascontiguousarray(state.curvature[keep_rows])
    if state.sigma_diag is not None:
        state.sigma_diag = np.ascontiguousarray(state.sigma_diag[keep_rows])
    lik.compact(keep_rows)
    return keep_rows


def _evidence_flat(state, design, flat_tol):
    """Whether the last re-estimate raised the evidence by less than the re-admission gain
    tolerance ``flat_tol`` (per unit of weight; ``PathSettings.flat_tol``): the stop of Tipping and
    Faul's algorithm, for a precision that creeps slowly towards a distant optimum after the model
    has otherwise settled."""
    if len(state.scores) < 2:
        return False
    return abs(state.scores[-1] - state.scores[-2]) <= flat_tol * design.weight_sum


class _StopRule:
    """``n_iter_no_change`` consecutive calm iterations: the active set unchanged and the stop
    statistic small. The likelihood names the statistic:

    - ``"log_precision"``: ``max |d log lam|`` over the relevant coefficients below ``tol`` (exact
      phase) or ``dqn_tol`` (diagonal phase), or a flat evidence with re-admission;
    - ``"coefficients"``: ``max |d coef| <= tol * max |coef|`` (the log-precision rule alone never
      fires for a diagonal solver: precisions of irrelevant bases creep for hundreds of iterations);
    - ``"ard"`` (exact phase; the diagonal phase uses "coefficients"): ARDRegression's test
      ``sum |d coef| < tol``, at once, for the iterates of ``solver="exact"`` to be ARDRegression's.

    Coefficients are compared with those of the previous iteration of the same phase, pruned
    ones counted as zero. With ``cycles`` (re-admission), the exact phase also stops when its
    evidence cycles (``stall``, a :class:`_Stall`, which records the evidence).
    """

    def __init__(self, settings, statistic, *, cycles=False):
        self.settings = settings
        self.statistic = statistic
        self.needs_coef = statistic in ("coefficients", "ard")
        self.cycles = cycles
        self.stall = _Stall()
        self.calm = 0
        self.previous = None

    def enter(self, state, exact):
        """Start a phase: nothing is calm yet; the diagonal phase compares with the start."""
        self.calm = 0
        self.previous = None if exact else state.coef.ravel().copy()
        self.stall.enter(state, exact and self.cycles)

    def observe(self, coef, keep, changed, settled, exact):
        """Record one iteration (``coef`` before pruning, ``keep`` the rows kept); returns
        whether the phase has converged."""
        tol = self.settings.tol
        if self.needs_coef:
            coef = coef.ravel()
            if keep is not None:
                coef = np.where(keep, coef, 0.0)
            prev = self.previous
            if self.statistic == "ard" and exact:
                done = prev is not None and np.sum(np.abs(prev - coef)) < tol
                self.previous = coef if keep is None else coef[keep]
                return bool(done)
            if prev is None or prev.shape != coef.shape:
                settled = False
            else:
                settled = np.max(np.abs(coef - prev)) <= tol * max(np.max(np.abs(coef)), _EPS)
            self.previous = coef if keep is None else coef[keep]
        self.calm = self.calm + 1 if (settled and not changed) else 0
        return self.calm >= self.settings.n_iter_no_change


class _Settle:
    """Second stopping test of the classifier's diagonal phase: the model has settled when, for
    ``window`` consecutive iterations, the training logits moved by less than SETTLE_LOGIT_TOL
    (relative L2 norm) each time and at most SETTLE_PRUNE_FRACTION of the active bases were pruned
    in total.

    On wide sparse problems (text) the diagonal phase ends with a thousand or more bases, above
    ``exact_switch``, and the log-precision test alone waits for hundreds of iterations while
    weakly relevant bases creep, one every few iterations, towards the pruning threshold: the
    jitter of the quasi-Newton diagonal keeps ``max |d log lambda|`` near ``dqn_tol`` although
    the predictions no longer change. The basis count of the window keeps the test from firing
    while the active set is still shrinking in earnest (the usual kernel path towards the exact
    phase).
    """

    def __init__(self, window):
        self.window = window
        self.prev = None
        self.history = []  # (logits settled?, active bases) per iteration

    def update(self, logits, n_active):
        """Record one diagonal iteration; returns whether the model has settled."""
        if logits is None:
            return False
        settled = False
        if self.prev is not None and self.prev.shape == logits.shape:
            norm = float(np.linalg.norm(logits))
            change = float(np.linalg.norm(logits - self.prev))
            settled = change <= SETTLE_LOGIT_TOL * max(norm, np.finfo(float).tiny)
        self.prev = logits.copy()
        self.history.append((settled, n_active))
        recent = self.history[-(self.window + 1) :]
        if len(recent) <= self.window or not all(ok for ok, _ in recent[1:]):
            return False
        first, last = recent[0][1], recent[-1][1]
        return first - last <= SETTLE_PRUNE_FRACTION * first
