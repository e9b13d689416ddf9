"""Kernel bases without the n-by-n kernel matrix: a candidate subset, then scans over all samples.

A relevance vector classifier has one basis function per training sample, so the full-kernel fit
holds the n-by-n matrix ``K(X, X)`` (7.5 GiB at n = 30,000). Its model is small, though (tens to
hundreds of relevance vectors), and the exact phase's re-admission (Tipping & Faul's add test,
:mod:`._readmission`) already scores candidate bases whose columns are not held. The subset path
(``kernel_basis="subset"``, or ``"auto"`` beyond :func:`full_kernel_max` distinct samples) uses that:

1. the basis starts as the kernel columns of a *pool* of ``subset_size(n)`` training samples drawn
   at random (fixed seed), ``K(X, X[pool])``, computed in row blocks into one n-by-m0 buffer;
2. the ordinary path (:func:`._engine.run_path`) runs on it: the diagonal phase prunes
   the pool down to ``exact_switch`` bases, then the exact phase re-admits bases *from the pool*
   (their columns computed once and cached, n-by-pool) until none is worth adding; each sweep
   adds up to ``POOL_BATCH`` bases per class that pass the add test jointly
   (:func:`._readmission.choose_batched`), since a scan brings in many candidates at once;
3. a *scan* scores every other distinct training sample by the same add test at the exact
   posterior, the kernel computed in column blocks of ``SCAN_BLOCK`` samples (``K(X, X[js])``,
   n-by-256) and never kept; the best ``class_scan_additions`` per class with a gain above the
   re-admission tolerance join the pool, and step 2 continues from the current model. Between
   two scans step 2 stops early (``SCAN_NO_CHANGE`` calm iterations, evidence-flat tolerance
   ``SCAN_FLAT_TOL``): the next scan moves the model anyway (at n = 5,000 each scan raised the
   evidence by tens of nats, after a path on the pool that had crept for a hundred iterations at
   0.01 nats each). When a scan finds nothing after such a path, step 2 runs again with the
   estimator's own stop rule, and another scan follows.

Once a path has reached the exact phase, the later paths stay in it (their ``exact_switch`` is
raised to the model's size): a pool sweep can take the model past ``exact_switch`` bases, and
:func:`._engine.run_path` would then start the next path in the diagonal phase again, whose
variances undo the exact phase's model (at n = 20,000, 240 bases, the log evidence fell from
-1494 to -2245 and the fit ended there).

Measured and left out (issue 9): a coarse-to-fine start (the estimator fitted first on a
stratified random quarter of the samples, recursively, the fit at n warm-started from its model
and pool). make_classification, gamma 0.05, n = 10,000: the same CPU time (175.6 s both, run side
by side), 1,192 iterations against 772, log evidence -448.8 against -462.5 but accuracy 0.964
against 0.9685, and with the coarse iterations counted in ``max_iter`` the default fit stopped at
1,000 unconverged; at n = 20,000 about 20 % ahead after four scans, neither fit converged.

The fit ends when a scan after a fully converged path finds no sample outside the pool worth
adding, so at the end no basis
function among all n samples passes the add test: the stopping condition of the full-kernel path,
whose sweeps score all n columns at every exact iteration. Scanning all n samples costs
O(n^2 (d + m)) for a model of m bases; the pool sweeps cost O(n m0 (d + m)) each, and the scans run
a few times per fit rather than once per added basis. Memory is O(n m0) (the pool's buffer) plus
O(n SCAN_BLOCK) per scan block: never n-by-n.

The regressor (:meth:`KernelSubset.fit_gaussian`) shares the pool, its row-blocked columns, the
scan blocks and the "auto" rule (:func:`make_subset`); it runs Tipping & Faul's constructive
path (:mod:`._constructive`) on the pool instead of the diagonal and exact phases, scans with the
Gaussian add test at the constructive path's exact posterior, and rebuilds the pool's columns
(the starting pool, the model and the new samples) before the constructive path continues from
the current model and noise. It ends, like the classifier's, when a scan finds nothing to add.

The pool is drawn at random rather than by k-means++ seeding: on half-splits of make_moons (300,
gamma 2), make_classification (400 x 6, gamma 0.1) and make_classification (3,000 x 20, gamma
0.05) with pools of 50, 100 and 500, neither won (final log-evidence of k-means++ minus random:
+0.7, +0.5, +1.1, -0.6, -3.1; test accuracy within 1 pp either way), and random costs nothing.
The subset path ends at a local optimum of the evidence that need not be the full path's (whose
diagonal phase starts from every sample): on those problems, with a random pool, its test
accuracy was within 1 pp of the full path's and its log-evidence 0.5 to 2.6 lower, with
different relevance vectors. Up to ``FULL_KERNEL_MAX`` samples "auto" therefore keeps the full
kernel, whose time grows faster than the subset path's beyond (measured at 2,500 and 3,500
samples, see the constant).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import row_norms

from ..utils._threads import map_blocks, row_runs
from ._constructive import GAIN_TOL as CONSTRUCTIVE_GAIN_TOL
from ._constructive import addition_gain, constructive_path
from ._dask_input import is_dask_array
from ._design import DesignMatrix, column_scaling, dense_rmatvec, moment_divisor
from ._engine import run_path
from ._features import distinct_rows, kernel_block, kernel_params
from ._kernels import block_column_stats, flush_tiny, rbf_exponent_inplace
from ._readmission import (
    CACHE_BYTES,
    GAIN_TOL,
    CandidateColumns,
    Screen,
    _score,
    choose_additions,
    sweep_terms,
)

# "auto", classifier: the full kernel up to this many distinct samples.
# `python benchmarks/bench_kernel_crossover.py` on c20bd25 (make_classification, 20 features,
# RBF gamma 0.05, seeds 0-2, one thread; results/sbl_kernel_crossover.md), subset against full
# kernel: n = 1,500 0.37-0.50x the time, accuracy -0.25, -0.85, -0.85 pp, log evidence -42.1
# (the subset path at max_iter), -5.5, -17.7; n = 2,000 0.29-0.76x, +0.15, +1.0, +0.6 pp, -0.5,
# -9.8, -1.4; n = 2,500 0.28-0.62x, -0.1, -0.35, -0.85 pp, -1.4, -7.6, +0.4; n = 3,000
# 0.12-0.22x, -0.05, -0.4, +0.7 pp, +6.8, -3.2, -5.3. Up to 2,500 the subset path's evidence is
# lower on most seeds (and at 2,500 its accuracy on all three), so the full kernel, the
# reference, stays; at 3,000 the subset path is 4.6-8.6x faster and the evidence and accuracy go
# both ways. It was 3,000 while small exact steps ran in the numba kernel
# (_classifier_kernels.BLAS_MIN_WORK): the full kernel at 2,500 then took 19.8-32.4 s.
FULL_KERNEL_MAX = 2500
# "auto", regressor: the full kernel while it takes at most 2 GiB in float64. Its subset path
# re-settles the constructive path after every scan and is slower than the full kernel where
# both run (Friedman #1, gamma 0.05, 1 thread: 2.2x at n=2,000, 1.7x at 5,000 and at 10,000,
# where it stops at max_iter; benchmarks/results/rvr_scale_*.md), so it is for kernels that do
# not fit in memory.
FULL_KERNEL_MAX_REGRESSION = 16384


def full_kernel_max(likelihood):
    """Distinct training samples up to which "auto" keeps the full kernel."""
    return FULL_KERNEL_MAX_REGRESSION if likelihood == "gaussian" else FULL_KERNEL_MAX


SUBSET_PER_ROOT = 8  # pool size m0 = 8 sqrt(n), clipped to [SUBSET_MIN, SUBSET_MAX]
SUBSET_MIN = 500
SUBSET_MAX = 2000
ROW_BLOCK = 2048  # rows of K(X, X[pool]) per block
SCAN_BLOCK = 256  # candidate samples per block of a scan
MAX_SCANS = 50  # scans per fit (each one adds to the pool or ends the fit)
SEED = 0  # the pool is random but reproducible (a fit is deterministic)
SCAN_NO_CHANGE = 3  # n_iter_no_change of the path on the pool between two scans (0: the fit's)
SCAN_FLAT_TOL = 1e-5  # ... and its evidence-flat tolerance per unit of weight (PathSettings)
POOL_BATCH = 8  # additions per class and pool sweep that pass the add test jointly
POOL_CACHE_MAX = 2**30  # largest n-by-pool cache of the pool's kernel columns (bytes)


def subset_size(n_candidates):
    """Size m0 of the starting pool for ``n_candidates`` distinct training samples."""
    m0 = math.ceil(SUBSET_PER_ROOT * math.sqrt(n_candidates))
    return min(n_candidates, max(SUBSET_MIN, min(SUBSET_MAX, m0)))


def scan_additions(m0):
    """Candidates a regressor's scan may add to the pool."""
    return max(16, m0 // 16)


def class_scan_additions(m0):
    """Candidates per class a classifier's scan may add to the pool.

    A quarter of the starting pool (the regressor's scans take a sixteenth): with a sixteenth,
    the fit at n = 5,000 and 10,000 used up ``max_iter`` (1,000) in six or more rounds of scan and
    path on the pool, the evidence still rising by tens of nats at each scan; with a quarter (and
    POOL_BATCH, SCAN_NO_CHANGE) the fit at n = 5,000 converged in 602 iterations at a higher
    evidence (make_classification, gamma 0.05). The pool sweeps' joint add test picks among them,
    so redundant neighbours cost only pool columns.
    """
    return max(16, m0 // 4)


def use_subset(est, n_distinct, likelihood):
    """Whether the fit takes the subset path, from ``est.kernel_basis``; raises a ValueError for a
    combination the subset path cannot fit. ``likelihood`` is "gaussian" for the regressor."""
    mode = est.kernel_basis
    if mode == "full":
        return False
    reason = None
    if est.kernel is None or (isinstance(est.kernel, str) and est.kernel == "precomputed"):
        reason = f"a kernel computed from X (kernel={est.kernel!r} has no kernel columns to skip)"
    elif likelihood == "gaussian":
        if est.solver != "dqn":
            reason = (
                "solver='dqn' (its constructive path scores candidate bases whose columns are not "
                "held; solver='exact' works on the whole kernel)"
            )
    elif likelihood != "bernoulli":
        reason = (
            "binary or one-vs-rest problems (its scans over all samples use the one-vs-rest add "
            "test; multi_class='multinomial' re-admits within the full kernel only)"
        )
    elif est.solver == "dqn" and est.exact_switch == 0:
        reason = (
            "the exact finish (exact_switch > 0): the scans over all samples run at the exact "
            "Laplace posterior"
        )
    if mode == "auto":
        return reason is None and n_distinct > full_kernel_max(likelihood)
    if reason is not None:
        raise ValueError(
            f"kernel_basis='subset' needs {reason}; use kernel_basis='full' or 'auto'."
        )
    return True


def make_subset(est, X, sample_weight, gamma_, likelihood, cls=None):
    """The subset path of a fit (``est.kernel_basis``, :func:`use_subset`), or None for the full
    kernel basis. ``cls`` is the :class:`KernelSubset` class to build (default KernelSubset)."""
    if is_dask_array(X) or est.kernel_basis == "full":
        return None
    no_kernel = est.kernel is None or (isinstance(est.kernel, str) and est.kernel == "precomputed")
    if est.kernel_basis == "auto" and no_kernel:
        return None
    distinct = None
    if est.kernel_basis == "auto" and X.shape[0] > full_kernel_max(likelihood):
        distinct = distinct_rows(X, sample_weight)
    n_distinct = X.shape[0] if distinct is None else distinct.size
    if not use_subset(est, n_distinct, likelihood):
        return None
    return (cls or KernelSubset)(est, X, sample_weight, gamma_, distinct)


def _rbf_terms(est, X, gamma_):
    """``(squared row norms of X, -gamma)`` when the scans can compute the RBF kernel themselves
    (:meth:`KernelSubset._scan_kernel`: ``kernel="rbf"``, dense C-ordered float64 X, finite
    gamma), else None."""
    if not (isinstance(est.kernel, str) and est.kernel == "rbf"):
        return None
    if sp.issparse(X) or not isinstance(X, np.ndarray) or X.dtype != np.float64:
        return None
    if not X.flags.c_contiguous:
        return None  # scikit-learn's row norms and products of an F-ordered X differ in rounding
    params = kernel_params(est, gamma_)
    if set(params) - {"gamma", "degree", "coef0"}:
        return None
    gamma = params.get("gamma")
    gamma = 1.0 / X.shape[1] if gamma is None else float(gamma)  # rbf_kernel's default
    if not (np.isfinite(gamma) and np.all(np.isfinite(X))):
        return None  # kernel_block raises its error
    return row_norms(X, squared=True), -gamma


def block_scaling(raw, sw, Bw, R, design, *, center):
    """Scaling of a block of raw candidate columns as ``design`` scales its own, from one fused
    pass (:func:`._kernels.block_column_stats`, rows outer: the kernel block is C-ordered).

    Returns ``(base, inv_scale, scale, offset, keep, sq, qr)``: ``base`` is ``raw``, or
    ``raw / d`` (float64) when a column's :func:`._design.moment_divisor` ``d`` is not 1 (entries
    whose squares would overflow or underflow); ``inv_scale`` the design's inverse scales of the
    raw columns, ``scale`` those of ``base``'s (``inv_scale * d``), ``offset`` the offsets of
    ``base``'s columns (``offset / d``; zeros unless ``center``),
    ``keep`` the columns that are not constant, and ``sq[j, k] = sum_i Bw[i, k] base[i, j]^2``,
    ``qr[j, k] = sum_i R[i, k] base[i, j]`` (unscaled, all columns). The moments are
    :func:`._kernels.weighted_column_moments`'s, summed in the same order."""
    raw = np.ascontiguousarray(raw)
    amax, mean, ssd, sq, qr = block_column_stats(raw, sw, Bw, R)  # one thread (its docstring)
    d = moment_divisor(amax)
    base = raw
    if np.any(d != 1.0):
        base = raw / d
        _amax, mean, ssd, sq, qr = block_column_stats(base, sw, Bw, R)
    offset, s, constant = column_scaling(
        mean,
        ssd,
        design.weight_sum,
        d,
        center=center,
        intercept_column=design.intercept_column,
    )
    return base, s, s * d, offset / d, ~constant, sq, qr


class KernelSubset:
    """The subset path of one fit (module docstring): :meth:`fit` for the classifier,
    :meth:`fit_gaussian` for the regressor.

    Parameters
    ----------
    est : DQNSBLClassifier or DQNSBLRegressor
        The estimator (kernel parameters).
    X : ndarray or sparse matrix of shape (n_samples, n_features)
        Training data.
    sample_weight : ndarray of shape (n_samples,)
        Sample weights; only distinct samples with positive weight are basis functions.
    gamma_ : float or None
        The resolved kernel coefficient.
    distinct : ndarray of int, default=None
        ``distinct_rows(X, sample_weight)`` when the caller has it already.
    """

    def __init__(self, est, X, sample_weight, gamma_, distinct=None):
        self.est = est
        self.X = X
        self.sw = sample_weight
        self.gamma_ = gamma_
        if distinct is None:
            distinct = distinct_rows(X, sample_weight)
        self.candidates_all = distinct  # increasing
        self.m0 = subset_size(self.candidates_all.size)
        rng = np.random.RandomState(SEED)
        pick = rng.choice(self.candidates_all.size, self.m0, replace=False)
        self.pool = np.sort(self.candidates_all[pick])
        self.first_pool = self.pool
        self.n_scans = 0
        self._rbf = _rbf_terms(est, X, gamma_)

    def _scan_kernel(self, js):
        """K(X, X[js]) for a scan block: for the RBF kernel on dense float64 X, scikit-learn's
        ``rbf_kernel`` arithmetic (the same Gram product, squared row norms and operation order,
        numpy's ``exp``) with its elementwise passes fused (:func:`._kernels.rbf_exponent_inplace`),
        in kernel_block's runs of rows on the fit's threads; :func:`._features.kernel_block`
        otherwise."""
        if self._rbf is None:
            return self._kernel(js)
        xx, neg_gamma = self._rbf
        X, Y, yy = self.X, self.X[js], xx[js]
        n = X.shape[0]
        G = np.empty((n, js.size))
        starts, size = row_runs(n)

        def run(a):  # kernel_block's runs of rows, on the fit's threads
            g = G[a : a + size]
            np.matmul(X[a : a + size], Y.T, out=g)
            rbf_exponent_inplace(g, xx[a : a + size], yy, neg_gamma)
            np.exp(g, out=g)
            flush_tiny(g)  # as compute_kernel does

        for _ in map_blocks(run, starts, G.size * X.shape[1]):
            pass
        return G

    def _kernel(self, js):
        Y = self.X[js]
        return kernel_block(self.est, self.X, Y, self.gamma_)

    def initial_basis(self):
        """``(B, own, column_index)`` as :func:`._features.training_basis` returns them, for the
        pool's columns: B = K(X, X[pool]), Fortran-ordered, built in row blocks."""
        X, n = self.X, self.X.shape[0]
        Y = X[self.pool]
        B = np.empty((n, self.pool.size), dtype=X.dtype, order="F")
        for start in range(0, n, ROW_BLOCK):
            stop = min(n, start + ROW_BLOCK)
            B[start:stop] = kernel_block(self.est, X[start:stop], Y, self.gamma_)
        return B, True, (self.pool, n)

    def candidate_columns(self, n_basis):
        """Source of pool columns for the exact phase's sweeps: computed in blocks the first time
        a sweep asks for them and kept in an n-by-pool cache when that takes at most
        POOL_CACHE_MAX bytes (or CACHE_BYTES when that is larger; its float32 mirror, the
        screen's input, takes half that again): the sweeps score the pool at
        every few iterations, and recomputing its kernel columns took a fifth of the fit at
        n = 3,000 and 65 of 483 s at n = 10,000. The bound keeps the fit at n = 100,000 (a pool
        of 2,000 and more: 1.6 GB and more per copy) within its memory budget; there the
        columns are recomputed at each sweep, as without the cache."""
        nbytes = 8 * self.X.shape[0] * self.pool.size
        return CandidateColumns(
            self._kernel,
            n_basis,
            cache=True,
            universe=self.pool,
            cache_bytes=POOL_CACHE_MAX if nbytes <= POOL_CACHE_MAX else CACHE_BYTES,
            batch=POOL_BATCH,
        )

    def fit(self, design, state, lik, settings, on_iter=None):
        """Alternate the ordinary path on the pool with scans over all samples (module
        docstring; between two scans with the looser stop of ``SCAN_NO_CHANGE`` and
        ``SCAN_FLAT_TOL``) until a scan after a path with the estimator's stop rule adds nothing,
        ``max_iter`` is used up (if in the diagonal phase, there is no exact posterior to scan at
        and the model holds pool samples only), or ``MAX_SCANS`` scans ran. A diagonal phase that
        stops with more than ``exact_switch`` bases hands over to the exact phase
        (:func:`._engine._switch_down`), whose model then stays within ``HAND_OVER_GROWTH``
        times ``exact_switch`` bases: once a pool sweep holds back an addition for that
        (:func:`._engine._within_cap`), the fit ends without scanning."""
        candidates = self.candidate_columns(design.n_basis)
        if np.setdiff1d(self.candidates_all, self.pool).size:
            # One start when scans can add: the exact phase's second start (_engine.run_path)
            # would share max_iter with the scans' paths; at n = 10,000 (RBF,
            # make_classification) the fit then stopped at max_iter = 1000 before its scans
            # were done, accuracy 0.9685 against 0.975 with one start (issue 9). A pool of every
            # sample is the full kernel's path, second start included.
            state.lam_restart = None
        loose = settings
        if SCAN_NO_CHANGE:
            loose = replace(
                settings,
                n_iter_no_change=min(SCAN_NO_CHANGE, settings.n_iter_no_change),
                flat_tol=max(SCAN_FLAT_TOL, settings.flat_tol),
            )
        tight = loose is settings
        exact = False  # whether the last path reached the exact phase
        while True:
            path_settings = settings
            if exact:
                # between scans the path on the pool stops after fewer calm iterations (the
                # next scan changes the model anyway); and it stays in the exact phase when
                # the pool's additions took the model past exact_switch bases (run_path would
                # start it in the diagonal phase again: measured at n = 20,000, 240 bases,
                # the log evidence fell from -1494 to -2245)
                path_settings = replace(
                    settings if tight else loose,
                    exact_switch=max(settings.exact_switch, lik.exact_size(design, state)),
                )
            run_path(design, state, lik, path_settings, on_iter=on_iter, candidates=candidates)
            between = exact and not tight
            exact = state.sigma_full is not None
            if (
                state.sigma_full is None  # no exact posterior: max_iter in the diagonal phase
                or state.n_iter >= settings.max_iter
                or self.n_scans >= MAX_SCANS
                or state.held_back  # at the hand-over's cap (_engine._within_cap): none can join
            ):
                return state
            if not self.scan(design, state, lik.T, lik.sw, settings.threshold_lambda):
                if between:
                    tight = True  # converge on the pool with the full stop rule, then scan again
                    state.converged = False
                    continue
                return state
            state.converged = False
            # new pool columns: the cached pool blocks no longer match the sweep's blocks
            candidates = self.candidate_columns(design.n_basis)

    def _scaled_blocks(self, design, Bw, R, *, center):
        """The samples outside the pool in blocks of ``SCAN_BLOCK``, each block's kernel columns
        computed once (:meth:`_scan_kernel`) and scaled by :func:`block_scaling`: yields ``(js,
        *block_scaling(...))`` for the blocks with a column that is not constant."""
        others = np.setdiff1d(self.candidates_all, self.pool, assume_unique=True)
        for start in range(0, others.size, SCAN_BLOCK):
            js = others[start : start + SCAN_BLOCK]
            terms = block_scaling(self._scan_kernel(js), self.sw, Bw, R, design, center=center)
            if terms[4].any():  # keep
                yield js, *terms

    def centred_scan_blocks(self, design):
        """The regressor's scan blocks: yields ``(js, base, scale)`` per block of ``SCAN_BLOCK``
        samples outside the pool whose columns are not constant: ``base`` holds their columns of
        K(X, X[js]) centred as the design centres its own (float64, divided by
        :func:`._design.moment_divisor` where a column needs it, the block's own buffer centred
        in place), ``scale`` the factors that give them unit weighted RMS. The scale is left to
        the products, so a block is never copied (scaled copies of the centred columns took a
        quarter of the 5,000-sample fit)."""
        none = np.zeros((self.sw.size, 0))
        for js, base, _inv, scale, offset, keep, _sq, _qr in self._scaled_blocks(
            design, none, none, center=True
        ):
            if not keep.all():
                js, base, scale, offset = js[keep], base[:, keep], scale[keep], offset[keep]
            base = np.asarray(base, dtype=np.float64)
            base -= offset
            yield js, base, scale

    def scan_products(self, design, Bw, R):
        """The classifier's scan blocks: yields ``(js, inv_scale, base, scale, keep, sq, Qb)`` per
        block of ``SCAN_BLOCK`` samples outside the pool: ``base`` holds the block's columns of
        K(X, X[js]) (the raw kernel block, or that block divided by
        :func:`._design.moment_divisor` when a column needs it), ``keep`` marks its columns that
        are not constant, ``js`` their samples, ``inv_scale`` the design's inverse scales of the
        columns ``js`` (unit weighted RMS, uncentred), ``scale`` those of ``base``'s kept columns,
        and ``sq``, ``Qb`` (len(js), K) the scaled columns' ``phi' B phi`` and ``phi' sw (t -
        p)``. One fused pass over each block (:func:`._kernels.block_column_stats`)
        gives the scaling and these products; the scale is applied to them, and to the model
        products, rather than to a copy of the block."""
        for js, base, inv_scale, scale, _offset, keep, sq, qr in self._scaled_blocks(
            design, Bw, R, center=False
        ):
            sc = scale[keep]
            sq = sq[keep] * (sc * sc)[:, None]
            yield js[keep], inv_scale[keep], base, sc, keep, sq, qr[keep] * sc[:, None]

    def scan(self, design, state, T, sw, threshold_lambda):
        """Score every distinct sample outside the pool by the add test at the current exact
        posterior; the best ``class_scan_additions(m0)`` per class with a gain above the re-admission
        tolerance join the pool (their scaling is set in ``design``). Returns how many joined."""
        self.n_scans += 1
        K = T.shape[1]
        Bw, R, models, excluded = sweep_terms(design, state, T, sw)
        top = class_scan_additions(self.m0)
        screen = Screen.of(models, design.n_samples, top, GAIN_TOL * design.weight_sum)
        found = [[] for _ in range(K)]
        inv_scale = {}
        for js, s, base, scale, keep, sq, Qb in self.scan_products(design, Bw, R):
            inv_scale.update(zip(js.tolist(), s.tolist()))
            _score(
                *(js, base, scale, None, sq, Qb, models, excluded, threshold_lambda, found),
                keep=keep,
                screen=screen,
            )
        if screen is not None:
            screen.flush()
        chosen = choose_additions(found, design, per_class=top)
        new = {j for j, _k, _lam in chosen}
        if not new:
            return 0
        js = np.asarray(sorted(new), dtype=np.intp)
        design.inv_scale[js] = [inv_scale[j] for j in js.tolist()]
        self.pool = np.union1d(self.pool, js)
        return js.size

    # ------------------------------------------------------------------ regression
    def gaussian_design(self):
        """The regressor's design over the pool's columns (centred, no intercept column)."""
        B, own, column_index = self.initial_basis()
        return DesignMatrix(
            B, self.sw, center=True, intercept_column=False, own=own, column_index=column_index
        )

    def fit_gaussian(self, design, t, state, settings, *, init=None, on_iter=None):
        """The regressor's subset path: Tipping & Faul's constructive path
        (:func:`._constructive.constructive_path`) on the pool's columns (``design``, from
        :meth:`gaussian_design`), then a scan of all other samples by the Gaussian add test
        (:meth:`gaussian_scan`); the best candidates join the pool, whose design is rebuilt, and
        the constructive path continues from the current model, precisions and noise. Ends when
        a scan adds nothing, ``settings.max_iter`` is used up or ``MAX_SCANS`` scans ran.
        ``init`` (sample indices, precisions) warm-starts the first run; its samples join the
        pool. Returns the design, compacted to the model.
        """
        if init is not None and len(init[0]):
            init = (np.asarray(init[0], dtype=np.intp), np.asarray(init[1], dtype=np.float64))
            grown = np.union1d(self.pool, init[0])
            if grown.size > self.pool.size:
                self.pool = grown
                del design
                design = self.gaussian_design()
        while True:
            start = None
            if init is not None and len(init[0]):
                # every model sample is in the pool, and its column is as informative as before
                held = np.isin(init[0], design.active)
                start = (np.searchsorted(design.active, init[0][held]), init[1][held])
            state.converged = False
            constructive_path(
                design, t, self.sw, state, settings=settings, init=start, on_iter=on_iter
            )
            if (
                not state.converged
                or state.n_iter >= settings.max_iter
                or self.n_scans >= MAX_SCANS
            ):
                return design
            added = self.gaussian_scan(design, state, t, settings.threshold_lambda)
            if not added.size:
                return design
            # the next pool: the starting one, the model and the new samples (samples added
            # earlier and deleted since are left to the scans, so the pool's buffer stays
            # O(n (m0 + m)))
            self.pool = np.union1d(np.union1d(self.first_pool, design.active), added)
            init = (design.active.copy(), state.lam[:, 0].copy())
            del design
            design = self.gaussian_design()

    def gaussian_terms(self, design, state, t):
        """``(Bw, r, Sigma, beta)`` of the Gaussian add test at the current posterior:
        ``Bw = sw Phi_A`` (n-by-m), ``r = sw (t - Phi_A mu)``."""
        sw = self.sw
        beta = float(state.beta)
        m = design.n_active
        if m == 0:
            return np.zeros((sw.size, 0)), sw * t, np.zeros((0, 0)), beta
        Pa = np.asarray(design.dense_active(), dtype=np.float64)
        r = sw * (t - Pa @ state.coef[:, 0])
        return Pa * sw[:, None], r, state.sigma_full, beta

    def gaussian_scan(self, design, state, t, threshold_lambda):
        """Score every distinct sample outside the pool by the Gaussian add test at the current
        posterior (B = beta sw)::

            S_i = beta phi_i' SW phi_i - beta^2 c_i' Sigma c_i,  c_i = Phi_A' SW phi_i
                = beta wsum - beta^2 c_i' Sigma c_i             (unit weighted RMS)
            Q_i = beta phi_i' SW (t - Phi_A mu)

        A sample is worth adding when Q_i^2 > S_i, its optimal precision ``S_i^2 / (Q_i^2 -
        S_i)`` is below ``threshold_lambda`` (as the constructive path applies it) and its
        evidence gain exceeds the constructive path's tolerance. Returns the best
        ``scan_additions(m0)`` such samples (sample indices, increasing)."""
        self.n_scans += 1
        Bw, r, Sigma, beta = self.gaussian_terms(design, state, t)
        wsum = design.weight_sum
        small = CONSTRUCTIVE_GAIN_TOL * wsum
        W = np.column_stack([Bw, r])  # the model's products and Q in one product per block
        m = Bw.shape[1]
        js_all, gains = [], []
        for js, base, scale in self.centred_scan_blocks(design):
            P = dense_rmatvec(base, W)  # runs of rows on the fit's threads
            P *= scale[:, None]
            C = P[:, :m]
            # phi' SW phi = wsum: the columns have unit weighted RMS (as the path's S)
            S = beta * wsum - beta * beta * np.einsum("ij,ij->i", C @ Sigma, C)
            Q = beta * P[:, m]
            theta = Q * Q - S
            good = (S > 0) & (theta > 0) & (theta * threshold_lambda > S * S)
            if not good.any():
                continue
            gain = addition_gain(S[good], Q[good])
            big = gain > small
            js_all.append(js[good][big])
            gains.append(gain[big])
        if not js_all:
            return np.zeros(0, dtype=np.intp)
        js_all, gains = np.concatenate(js_all), np.concatenate(gains)
        best = np.argsort(-gains, kind="stable")[: scan_additions(self.m0)]
        return np.sort(js_all[best]).astype(np.intp)
