"""DQNSBLClassifier: sparse Bayesian classification (relevance vector classification)."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets

from ..exceptions import EvidenceWarning
from ..utils._threads import fit_threads
from ._base import BaseDQNSBL
from ._classifier_prediction import ClassifierPredictionMixin
from ._classifier_solver import FREE_LAMBDA, LIKELIHOODS, LINEAR_INNER_FORCING, probabilities
from ._dask_design import make_design
from ._dask_input import dask_classification_targets, is_dask_array
from ._dask_laplace import DaskCandidateColumns
from ._engine import (
    HAND_OVER_GROWTH,
    STALL_WINDOW,
    PathSettings,
    PathState,
    evidence_stalled,
    run_path,
)
from ._features import compute_kernel, training_basis
from ._kernel_basis import make_subset
from ._readmission import CandidateColumns

SEPARATION_PROBABILITY = 0.9


class DQNSBLClassifier(ClassifierPredictionMixin, ClassifierMixin, BaseDQNSBL):
    """Sparse Bayesian classification solved without inverting a covariance matrix.

    A relevance vector machine for classification (Tipping 2001): a Bernoulli (or softmax)
    likelihood on ``f(x) = sum_j w_j phi_j(x) + b``, an automatic-relevance-determination prior
    ``w_j ~ N(0, 1 / lambda_j)`` with one precision per basis function, and the precisions
    estimated by type-II maximum likelihood under a Laplace approximation of the posterior. Bases
    whose precision grows past ``threshold_lambda`` are pruned; the survivors are the relevance
    vectors (kernel bases) or the relevant features (``kernel=None``).

    The default ``solver="dqn"`` (DQN-SBL) finds the posterior mode by diagonal quasi-Newton steps
    with an Armijo line search, two passes over the basis per step, and uses the quasi-Newton
    diagonal in place of the posterior covariance in the precision update: no covariance matrix
    is formed or inverted, and the extra memory is O(M) per class. Once at most ``exact_switch``
    bases remain, exact Laplace iterations (Newton steps with a Cholesky factor of the posterior
    precision) remove the bias of the diagonal approximation; with one-vs-rest or binary problems
    they also re-admit pruned bases by Tipping and Faul's test (``q_i^2 > s_i`` at the Laplace
    posterior, every basis function scored in O(n M m)), so the bases the diagonal phase pruned
    wrongly come back. ``solver="exact"`` runs the exact iterations from the start (O(M^3) per
    iteration), for small problems and as a reference.

    Multiclass problems are solved one-vs-rest, all classes in the same passes over the data
    (matrix-matrix products), or with a softmax likelihood (``multi_class="multinomial"``).

    Parameters
    ----------
    kernel : {"rbf", "linear", "poly", "sigmoid", "cosine", "laplacian", "chi2", \
"additive_chi2", "precomputed"}, callable or None, default="rbf"
        Basis. A kernel gives one basis function per training sample, ``K(x, x_i)``, named as in
        :class:`sklearn.kernel_ridge.KernelRidge` (``"precomputed"`` expects Gram matrices).
        None: the features themselves (a sparse linear model with ``coef_``).
    gamma : "scale", float or None, default="scale"
        Kernel coefficient for rbf, laplacian, poly, sigmoid and chi2. ``"scale"`` uses
        ``1 / (n_features * X.var())`` as :class:`sklearn.svm.SVC`; None uses
        :func:`sklearn.metrics.pairwise.pairwise_kernels`' default.
    degree : float, default=3
        Degree of the polynomial kernel.
    coef0 : float, default=1
        Zero coefficient of the polynomial and sigmoid kernels.
    kernel_params : dict, default=None
        Extra keyword arguments for a callable kernel (or overrides for a named one).
    kernel_basis : {"auto", "full", "subset"}, default="auto"
        How a kernel basis is held during fit. "full": the n-by-n kernel matrix (memory
        O(n^2)). "subset": never more than O(n m0) kernel entries; the fit starts from the
        kernel columns of m0 = 8 sqrt(n) training samples (clipped to [500, 2000]) drawn at
        random with a fixed seed, and the exact phase's re-admission, extended by scans over all
        training samples in blocks of 256, adds any sample whose evidence gain says so; it ends
        when no sample outside the model passes Tipping and Faul's add test, the stopping rule of
        the full path. Needs a kernel computed from X (not None or "precomputed"), binary or
        one-vs-rest problems and the exact finish (``exact_switch > 0``). "auto": "subset" for
        more than 2,500 distinct training samples where it applies, "full" otherwise.
    multi_class : {"ovr", "multinomial"}, default="ovr"
        With more than two classes: independent one-vs-rest problems (solved together, each with
        its own precisions and relevance vectors), or one softmax model.
    solver : {"dqn", "exact"}, default="dqn"
        "dqn": diagonal quasi-Newton Laplace steps (O(nM) per step, O(M) extra memory), finished
        by exact iterations (see ``exact_switch``). "exact": full Laplace approximation (Newton
        with Cholesky, O(nM^2 + M^3) per iteration).
    diag_update : {"dbfgs", "psb", "exact"}, default="dbfgs"
        Diagonal curvature approximation of the "dqn" phase: diagonal BFGS, the weak-secant
        least-change update (Zhu, Nazareth and Wolkowicz 1999), or the exact diagonal
        ``(Phi * Phi)' b`` (one extra pass over the basis per class and step).
    update : {"mackay", "em"}, default="mackay"
        Precision re-estimation: MacKay's ``gamma_j / w_j^2`` or the EM update
        ``1 / (w_j^2 + Sigma_jj)``.
    max_iter : int, default=1000
        Maximum number of precision updates (both phases together). An exact phase whose log
        evidence cycles (50 iterations no higher than the 50 before, rising and falling by turns,
        and 50 more no higher) stops earlier, at the cycle's best iterate, with a
        ``ConvergenceWarning``.
    tol : float, default=1e-3
        Stopping tolerance on ``max |d log lambda_j|`` over the relevant bases in the exact phase.
    dqn_tol : float, default=0.1
        The same tolerance in the "dqn" phase, whose quasi-Newton diagonal jitters too much for
        ``tol`` to be reached. The "dqn" phase also ends once the model has settled: the training
        logits changed by less than 0.1 % (relative norm) in each of ``n_iter_no_change``
        iterations, over which at most 1 % of the active bases were pruned.
    n_iter_no_change : int, default=10
        A phase stops after this many consecutive iterations with an unchanged active set and
        log-precision changes below its tolerance.
    inner_max_iter : int, default=20
        Quasi-Newton steps towards the posterior mode per precision update ("dqn").
    inner_tol : float, default=1e-6
        The quasi-Newton steps stop once every gradient entry is below ``inner_tol`` times the
        sum of sample weights.
    exact_switch : int, default=200
        With ``solver="dqn"``, switch to exact iterations once at most this many bases remain
        (0 disables the exact finish: then no matrix larger than the data is ever allocated).
        With a kernel, a diagonal phase that stops with more bases keeps the ``exact_switch``
        with the smallest precisions and the exact phase finishes the fit, re-admitting any
        pruned basis the add test favours (narrow kernels: the diagonal phase's own answer can
        be far below exact SBL's); a linear basis keeps the diagonal phase's model then. That
        exact phase does not grow a model past 1.5 times ``exact_switch`` bases (each
        one-vs-rest problem's own; a softmax model's coefficients over all classes), and a
        ``ConvergenceWarning`` says when it held back a basis the add test favoured.
    threshold_lambda : float, default=1e9
        Bases whose precision exceeds this are pruned. Precisions are measured on columns scaled
        to unit root mean square.
    fit_intercept : bool, default=True
        Add a free intercept (never pruned, flat prior).
    class_weight : dict or "balanced", default=None
        Weights of the classes, multiplied into ``sample_weight``; "balanced" uses
        ``n_samples / (n_classes * np.bincount(y))``.
    moderated : bool, default=True
        ``predict_proba`` and ``decision_function`` use MacKay's probit moderation
        ``f(x) / sqrt(1 + pi var(x) / 8)``, which shrinks the logits of uncertain points towards
        zero. False uses the posterior mode only.
    warm_start : bool, default=False
        Start from the previous fit's weights and precisions (same basis size and classes).
        Where the exact phase re-admits bases (``solver="exact"`` or ``exact_switch > 0``;
        binary, one-vs-rest and multinomial), the fit resumes from the previous model alone and
        pruned bases come back through re-admission only.
    n_jobs : int, default=None
        Threads for the large passes over the basis (kernel matrix, products with the basis)
        during fit, and for BLAS and numba during prediction; the small per-step operations of
        a fit always run on one thread, and so do the exact Laplace steps (their m-by-m LAPACK
        calls are slower on several). During fit the count is also capped by the cores the
        load average leaves idle. None: the libraries' own thread count (every core unless
        ``OMP_NUM_THREADS``, ``NUMBA_NUM_THREADS`` or a threadpoolctl limit says otherwise)
        for the large passes of a fit; the libraries' defaults during prediction.
    verbose : int, default=0
        Print progress (phase, active bases, log-evidence estimate) every iteration when > 0.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Posterior mean weights of the features (``kernel=None`` only; zero for pruned features).
    dual_coef_ : ndarray of shape (1, n_relevance) or (n_classes, n_relevance)
        Posterior mean weights of the relevance vectors (kernel bases only).
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Intercepts.
    lambda_ : ndarray of shape (1, n_basis) or (n_classes, n_basis)
        Precisions on the unit-RMS scale, one per basis function (feature or training sample):
        pruned bases keep the value that pruned them; constant bases are ``inf``.
    sigma_ : ndarray of shape (1, n_relevance) or (n_classes, n_relevance)
        Posterior variances of the relevant weights (the diagonal of the Laplace covariance;
        exact after the exact finish, the quasi-Newton approximation otherwise). Zero where a
        one-vs-rest problem pruned a basis that another kept.
    relevance_ : ndarray of shape (n_relevance,)
        Indices of the relevant bases (features or training samples), in any class.
    relevance_vectors_ : ndarray of shape (n_relevance, n_features) or None
        Training samples kept as relevance vectors (kernel bases other than "precomputed").
    scores_ : list of float
        Laplace estimate of the log marginal likelihood (up to a constant) at each iteration;
        with the diagonal log-determinant during the "dqn" phase.
    n_iter_ : int
        Number of precision updates performed.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when X has string feature names.

    See Also
    --------
    DQNSBLRegressor : sparse Bayesian regression with the same solver.
    sklearn.svm.SVC : support vector classification (many more support vectors).

    Notes
    -----
    The diagonal approximation under-estimates posterior variances of correlated bases
    (``(H^-1)_jj >= 1 / H_jj``), so the "dqn" phase prunes more eagerly than exact SBL; the exact
    finish (``exact_switch``) corrects this: it re-admits pruned bases (binary, one-vs-rest and
    ``multi_class="multinomial"``), recomputing their kernel columns in blocks (kept between
    sweeps up to 64 MiB). Memory is one n-by-M copy of the basis (the kernel matrix for kernel
    bases, or its columns for the starting subset with ``kernel_basis="subset"``), compacted in
    place as bases are pruned. The subset path ends at a local optimum of the evidence that can
    differ from the full path's (other relevance vectors, similar accuracy); each scan over all
    samples costs O(n^2 (d + m)) time for m relevance vectors, in blocks of O(256 n) memory.

    References
    ----------
    M. E. Tipping, "Sparse Bayesian learning and the relevance vector machine", JMLR 1, 2001.
    J. Luo, C.-M. Vong, J. Du, "Sparse Bayesian learning with diagonal quasi-Newton method for
    large scale classification", arXiv:2107.08195, 2021.
    D. J. C. MacKay, "The evidence framework applied to classification networks", Neural
    Computation 4(5), 1992.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from sparsekit import DQNSBLClassifier
    >>> X, y = make_moons(n_samples=200, noise=0.2, random_state=0)
    >>> clf = DQNSBLClassifier(gamma=2.0).fit(X, y)
    >>> bool(clf.score(X, y) > 0.9), bool(len(clf.relevance_) < 40)
    (True, True)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    _parameter_constraints: ClassVar[dict] = {
        **{k: v for k, v in BaseDQNSBL._parameter_constraints.items() if k != "compute_score"},
        "multi_class": [StrOptions({"ovr", "multinomial"})],
        "diag_update": [StrOptions({"dbfgs", "psb", "exact"})],
        "dqn_tol": [Interval(Real, 0, None, closed="neither")],
        "inner_tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "fit_intercept": ["boolean"],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "moderated": ["boolean"],
        "kernel_basis": [StrOptions({"auto", "full", "subset"})],
    }

    def __init__(
        self,
        *,
        kernel="rbf",
        gamma="scale",
        degree=3,
        coef0=1,
        kernel_params=None,
        kernel_basis="auto",
        multi_class="ovr",
        solver="dqn",
        diag_update="dbfgs",
        update="mackay",
        max_iter=1000,
        tol=1e-3,
        dqn_tol=0.1,
        n_iter_no_change=10,
        inner_max_iter=20,
        inner_tol=1e-6,
        exact_switch=200,
        threshold_lambda=1e9,
        fit_intercept=True,
        class_weight=None,
        moderated=True,
        warm_start=False,
        n_jobs=None,
        verbose=0,
    ):
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.kernel_params = kernel_params
        self.kernel_basis = kernel_basis
        self.multi_class = multi_class
        self.solver = solver
        self.diag_update = diag_update
        self.update = update
        self.max_iter = max_iter
        self.tol = tol
        self.dqn_tol = dqn_tol
        self.n_iter_no_change = n_iter_no_change
        self.inner_max_iter = inner_max_iter
        self.inner_tol = inner_tol
        self.exact_switch = exact_switch
        self.threshold_lambda = threshold_lambda
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.moderated = moderated
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model by type-II maximum likelihood under the Laplace approximation.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            Training data; with ``kernel="precomputed"`` the Gram matrix (n_samples, n_samples).
            A row-chunked dask array (``kernel=None`` only) is fitted chunk-wise on the workers
            (README "Scaling out").
        y : array-like of shape (n_samples,)
            Class labels (numbers or strings).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; a weight of k acts like k copies of the sample in the
            likelihood (the kernel basis still has one column per distinct training sample).

        Returns
        -------
        self : object
            Fitted estimator.
        """
        warm = getattr(self, "_warm", None) if self.warm_start else None
        X, sw, classes, T, counts = self._training_targets(X, y, sample_weight)
        self.classes_ = classes
        if classes.shape[0] == 2:
            likelihood = "bernoulli"
        else:
            likelihood = "bernoulli" if self.multi_class == "ovr" else "softmax"
        self._likelihood = likelihood
        dtype = X.dtype
        with fit_threads(self.n_jobs):
            self._gamma = self._resolve_gamma(X, sw)
            subset = self._kernel_subset(X, sw, likelihood)
            if subset is None:
                B, own, column_index = training_basis(self, X, self._gamma, sw)
            else:
                B, own, column_index = subset.initial_basis()
            design = make_design(
                B,
                sw,
                center=False,
                intercept_column=self.fit_intercept,
                own=own,
                column_index=column_index,
            )
            del B
            lik = LIKELIHOODS[likelihood](T, sw)
            state = self._initial_state(design, T.shape[1], lik, warm)
            settings = PathSettings(
                solver=self.solver,
                diag_update=self.diag_update,
                update=self.update,
                max_iter=self.max_iter,
                tol=self.tol,
                dqn_tol=self.dqn_tol,
                n_iter_no_change=self.n_iter_no_change,
                inner_max_iter=self.inner_max_iter,
                inner_tol=self.inner_tol,
                inner_forcing=LINEAR_INNER_FORCING if self.kernel is None else 0.0,
                exact_switch=self.exact_switch,
                threshold_lambda=self.threshold_lambda,
                force_switch=self.kernel is not None,
            )
            on_iter = self._print_progress if self.verbose else None
            if subset is not None:
                subset.fit(design, state, lik, settings, on_iter=on_iter)
            else:
                candidates = self._candidate_columns(X, design)
                run_path(design, state, lik, settings, on_iter=on_iter, candidates=candidates)
            if not state.converged:
                warnings.warn(self._not_converged(state), ConvergenceWarning)
            if state.held_back:
                warnings.warn(self._held_back(state), ConvergenceWarning)
            self._check_evidence(design, state, T, sw, counts)
            self._store_fit(X, design, state, dtype)
        return self

    def _not_converged(self, state):
        """The message of a fit that did not converge: whether more iterations would help. A path
        that stopped for a cycle says so (``state.stalled``); at ``max_iter``, the log evidence of
        its last exact iterations (``state.scores``) tells."""
        hint = (
            "with an RBF kernel, a smaller gamma (a wider kernel)"
            if self.kernel is not None
            else "fewer, less correlated features"
        )
        why = (
            "MacKay's simultaneous updates of many correlated bases overshoot back and forth (seen "
            f"with narrow kernels on noisy labels); try {hint}."
        )
        if state.stalled is not None:
            lo, hi = state.stalled
            return (
                f"{type(self).__name__} stopped after {state.n_iter} iterations without "
                f"converging: its log evidence has not risen for {2 * STALL_WINDOW} iterations "
                f"and cycles between {lo:.6g} and {hi:.6g}, so more iterations would not help. "
                f"{why} The iterate of the cycle with the highest "
                f"log evidence is kept ({state.scores[-1]:.6g})."
            )
        head = f"{type(self).__name__} did not converge in max_iter={self.max_iter} iterations"
        stall = evidence_stalled(state.scores)
        if stall is None:
            return f"{head}; increase max_iter (or tol and dqn_tol)."
        lo, hi = stall
        return (
            f"{head}: over its last {STALL_WINDOW} iterations the log evidence moved between "
            f"{lo:.6g} and {hi:.6g} without rising above that of the {STALL_WINDOW} before, so "
            f"more iterations will not help. {why} The model of the last iteration is kept."
        )

    def _held_back(self, state):
        """The message of a fit whose exact phase ended at the hand-over's cap
        (``state.held_back``, :func:`._engine._within_cap`)."""
        per = ""
        if state.coef.shape[1] > 1:
            per = (
                " coefficients over all classes"
                if self._likelihood == "softmax"
                else " bases per one-vs-rest problem"
            )
        return (
            f"{type(self).__name__}: the diagonal phase stopped with more than "
            f"exact_switch={self.exact_switch} bases, so the exact phase started from the "
            f"{self.exact_switch} most relevant and was kept within {state.readmit_cap} "
            f"({HAND_OVER_GROWTH:g} x exact_switch){per}; at its end {state.held_back} more "
            "passed the add test, so the model is not exact SBL's optimum. This happens with a "
            "kernel too narrow for the data (RBF: try a smaller gamma); a larger exact_switch "
            "lets the model grow, at a cost per iteration that grows with it."
        )

    def _kernel_subset(self, X, sw, likelihood):
        """The subset path of this fit (``kernel_basis``), or None for the full basis."""
        return make_subset(self, X, sw, self._gamma, likelihood)

    def _candidate_columns(self, X, design):
        """Source of the training basis columns, for re-admitting pruned bases."""
        n_basis = design.n_basis
        if is_dask_array(X):
            return DaskCandidateColumns(X, n_basis)
        if self.kernel is None or self.kernel == "precomputed":
            # a sparse X: the design's own CSC copy of every column (no second one)
            B = design.sparse_basis if sp.issparse(X) else X
            return CandidateColumns(lambda js: B[:, js], n_basis)
        gamma = self._gamma

        def kernel_columns(js):
            K = compute_kernel(self, X, X[js], gamma)
            return K.toarray() if sp.issparse(K) else K

        return CandidateColumns(kernel_columns, n_basis, cache=True)

    def _training_targets(self, X, y, sample_weight):
        """Validated X and weights, the classes, the per-sample targets T (one column for two
        classes, one-hot otherwise) and the number of positive-weight samples per class."""
        if is_dask_array(X):
            return dask_classification_targets(self, X, y, sample_weight)
        X, y, sw = self._validate_training_data(X, y, sample_weight, y_numeric=False)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} requires 2 or more distinct classes; got "
                f"{classes.shape[0]} class ({classes[0]!r})."
            )
        if self.class_weight is not None:
            sw = sw * compute_sample_weight(self.class_weight, y)
        counts = np.bincount(y_enc[sw > 0], minlength=classes.shape[0])
        present = np.flatnonzero(counts)
        if present.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} requires 2 or more distinct classes with a positive "
                f"sample (or class) weight; got 1 class ({classes[present[0]]!r})."
            )
        if classes.shape[0] == 2:
            T = (y_enc == 1).astype(np.float64)[:, None]
        else:
            T = np.zeros((y_enc.shape[0], classes.shape[0]))
            T[np.arange(y_enc.shape[0]), y_enc] = 1.0
        return X, sw, classes, T, counts

    def _initial_state(self, design, K, lik, warm):
        n_coef = design.n_coef
        f = int(design.intercept_column)
        wsum = design.weight_sum
        lam0 = wsum / float(max(n_coef, 1)) ** 2  # 1/M^2 on unit-norm columns (SB1, sklearn-rvm)
        coef = np.zeros((n_coef, K))
        lam = np.full((n_coef, K), lam0)
        if f:
            lam[0] = FREE_LAMBDA
        mask = np.ones((n_coef, K), dtype=bool)
        D = np.full((n_coef, K), lik.initial_curvature(wsum, K))
        if (
            warm is not None
            and warm["lam"].shape == (K, design.n_basis)
            and warm["intercept_column"] == design.intercept_column
        ):
            lam_w = warm["lam"][:, design.active].T
            ok = np.isfinite(lam_w) & (lam_w < self.threshold_lambda)
            lam[f:] = np.where(ok, lam_w, lam0)
            coef[f:] = np.where(ok, warm["coef"][:, design.active].T, 0.0)
            if f:
                coef[0] = warm["coef0"]
            if lik.readmits and (self.solver == "exact" or self.exact_switch > 0):
                # The exact phase re-admits pruned bases (Tipping-Faul test, one-vs-rest and
                # multinomial), so resume from the previous model alone rather than putting every
                # pruned basis back.
                mask[f:] = ok
        # the exact phase's second start (_engine.run_path) is for kernel bases, whose correlated
        # columns are what the diagonal phase's variances get wrong
        restart = lam0 if self.kernel is not None else None
        return PathState(coef, lam, mask=mask, curvature=D, lam_restart=restart)

    def _print_progress(self, state, design, step, dlog):
        score = state.scores[-1] if state.scores else float("nan")
        newton = ""
        if state.phase == "exact" and state.newton_status is not None:
            capped = sum(s == 1 for s in state.newton_status)
            jittered = sum(s == 2 for s in state.newton_status)
            if capped or jittered:
                newton = f" Newton: {capped} at its iteration cap, {jittered} jittered"
        print(
            f"[{type(self).__name__}] iter {state.n_iter:4d} ({state.phase}): "
            f"active={design.n_active} log-evidence~{score:.6g} max|dlog lambda|={dlog:.3g}"
            f"{newton}"
        )

    def _check_evidence(self, design, state, T, sw, counts):
        """Warn where the Laplace evidence cannot be trusted (``counts``: positive-weight
        samples per class)."""
        if counts.min() < 2:
            warnings.warn(
                f"Class {self.classes_[np.argmin(counts)]!r} has a single training sample: its "
                "weights, precisions and the evidence are poorly determined.",
                EvidenceWarning,
            )
            return
        Z = design.matvec(state.coef)
        P = probabilities(Z, self._likelihood)
        # Probability of the true class (softmax; T one-hot) or of each binary problem's true
        # side, over the samples with positive weight (elementwise, so chunked input stays so).
        if self._likelihood == "softmax":
            p_true = (P * T).sum(axis=1)
        else:
            p_true = np.where(T > 0.5, P, 1.0 - P).min(axis=1)
        p_true = np.where(sw > 0, p_true, 1.0)
        if float(p_true.min()) >= SEPARATION_PROBABILITY:
            warnings.warn(
                "The training data are perfectly separated by the fitted model (every training "
                f"sample gets probability >= {SEPARATION_PROBABILITY} for its class): the "
                "likelihood is flat along the separating directions, so the Laplace "
                "approximation, the evidence and the precisions cannot be trusted and the "
                "probabilities are over-confident.",
                EvidenceWarning,
            )

    def _store_fit(self, X, design, state, dtype):
        K = state.coef.shape[1]
        f = int(design.intercept_column)
        M = design.n_basis
        self._store_basis(X, design)
        coef_rel, shift = design.unscale(state.coef)  # (m, K), (K,)
        if not f:
            shift = np.broadcast_to(shift, (K,)).astype(np.float64)
        s = design.inv_scale[design.active]
        lam_full = np.full((K, M), np.inf)
        state.pruned_lam.fill(lam_full)  # (column, class): hundreds of thousands on text
        lam_act = np.where(state.mask[f:], state.lam[f:], np.inf)
        for k in range(K):
            pruned_here = ~state.mask[f:, k]
            lam_full[k, design.active[~pruned_here]] = lam_act[~pruned_here, k]
        self.lambda_ = lam_full
        sig = state.sigma_diag
        self.sigma_ = (sig[f:].T * s**2).astype(dtype, copy=False)
        self._intercept_var = sig[0].copy() if f else np.zeros(K)
        self._cov = None
        if state.sigma_full is not None:
            scale = np.concatenate([np.ones(f), s])
            n_coef = design.n_coef
            if self._likelihood == "softmax":
                # one covariance over all classes' coefficients, class-major
                ((idx, S),) = state.sigma_full
                flat_scale = np.tile(scale, K)[idx]
                full = np.zeros((K * n_coef, K * n_coef))
                full[np.ix_(idx, idx)] = S * np.outer(flat_scale, flat_scale)
                self._cov = [full]
            else:
                covs = []
                for idx, S in state.sigma_full:
                    full = np.zeros((n_coef, n_coef))
                    full[np.ix_(idx, idx)] = S * np.outer(scale[idx], scale[idx])
                    covs.append(full)
                self._cov = covs
        self.intercept_ = np.asarray(shift, dtype=dtype).reshape(K)
        if self.kernel is None:
            coef = np.zeros((K, M), dtype=dtype)
            coef[:, design.active] = coef_rel.T
            self.coef_ = coef
            if hasattr(self, "dual_coef_"):
                del self.dual_coef_
        else:
            self.dual_coef_ = np.ascontiguousarray(coef_rel.T).astype(dtype, copy=False)
            if hasattr(self, "coef_"):
                del self.coef_
        self._coef_rel = coef_rel  # (m, K) float64
        self._intercept = np.asarray(shift, dtype=np.float64).reshape(K)
        self.n_iter_ = int(state.n_iter)
        self.scores_ = list(state.scores)
        coef_full = np.zeros((K, M))
        coef_full[:, design.active] = state.coef[f:].T
        self._warm = {
            "lam": lam_full.copy(),
            "coef": coef_full,
            "coef0": state.coef[0].copy() if f else None,
            "intercept_column": design.intercept_column,
        }
