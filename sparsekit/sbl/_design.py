"""The design matrix of DQN-SBL, restricted to an active set of basis columns.

``DesignMatrix`` holds Phi = [1 |] (B - offset) * inv_scale, where B is the basis before scaling
(the features for the linear basis, a kernel matrix for RVM-style bases), ``offset`` is the
weighted column mean when the model is centred (regression) and zero otherwise, and ``inv_scale``
makes every column's weighted root mean square equal to one. Scaling to unit RMS (rather than to
unit norm) means precisions are on the scale of a standardised feature, as in ARDRegression on
standardised data, whatever the units of X.

Dense bases live in one Fortran-ordered buffer that is centred and scaled in place, and pruned
columns are compacted in place, so exactly one n-by-m buffer exists during a fit. Sparse (CSR/CSC)
linear bases stay sparse: centring and scaling are applied implicitly inside the products.

An optional intercept column of ones sits at position 0 of every coefficient vector; it is never
pruned (its RMS is already one, so it needs no scaling).
"""

from __future__ import annotations

import copy

import numba
import numpy as np
import scipy.sparse as sp

from ..utils._threads import map_blocks, parallel, row_runs
from ._kernels import (
    center_scale_inplace,
    compact_columns_inplace,
    csc_column_moments,
    csc_matmat,
    csc_rmatmat,
    weighted_column_moments,
    weighted_sq_column_norms,
)

_BIG = 1e100


def moment_divisor(amax):
    """Per-column divisor for computing moments: squares of entries beyond ~1e154 overflow and
    those below ~1e-154 underflow, so such columns' moments are taken on a copy divided by their
    largest magnitude ``amax`` (1 for every other column)."""
    return np.where((amax > _BIG) | ((amax < 1.0 / _BIG) & (amax > 0.0)), amax, 1.0)


def column_scaling(mean, ssd, weight_sum, d, *, center, intercept_column):
    """Offsets and inverse scales of the basis columns from their weighted moments.

    ``mean`` and ``ssd`` (weighted sum of squared deviations) are those of the columns divided
    by ``d`` (:func:`moment_divisor`). Returns ``(offset, inv_scale, constant)``: the column
    means when centring (else zeros), 1 / RMS (zero for dropped columns), and the mask of
    columns dropped as carrying no information or not scalable in float64.
    """
    mean = mean * d
    spread = np.sqrt(ssd / weight_sum) * d
    # A column carries no information when its spread is negligible next to its size; with an
    # intercept (explicit or by centring) a constant non-zero column is redundant too.
    size = np.abs(mean) + spread
    tiny = np.finfo(np.float64).tiny
    if center or intercept_column:
        constant = ~(spread > 1e-10 * np.maximum(size, tiny))
    else:
        constant = ~(size > tiny)
    # Columns too small (or too large) to scale to unit RMS in float64 are unusable too.
    rms = spread if center else np.sqrt(spread**2 + mean**2)
    with np.errstate(divide="ignore", over="ignore"):
        constant |= ~np.isfinite(1.0 / rms) | ~np.isfinite(rms) | ~np.isfinite(mean)
    offset = mean if center else np.zeros(mean.shape[0])
    inv_scale = np.zeros(mean.shape[0])
    inv_scale[~constant] = 1.0 / rms[~constant]
    return offset, inv_scale, constant


class DenseBasis:
    """The dense basis ``[1 | Phi_A]`` (``Phi_A`` alone without an intercept column) of a
    design's current active set, float64 (:func:`dense_basis`), built once and handed out again
    while the design's active set is the one it was built from.

    The classifier's exact phase needs this copy (its Newton solves take one contiguous array;
    :func:`held_dense_basis`), and so does the re-admission sweep that follows the
    exact step in the same iteration (:func:`._readmission.sweep_terms`); the next exact step needs
    it again when no basis was deleted or added in between. ``PathState.dense_basis`` holds one.

    The entry is keyed by identity: the design object, its ``active`` array and its column buffer
    (``_Phi``, or ``_B_act`` for a sparse design). Every change of the active columns replaces
    ``active`` (:meth:`DesignMatrix.compact`, :meth:`DesignMatrix.insert_columns`, the second
    start's swap of designs in :func:`._engine._second_start`) and the entry holds references to
    all three, so their ids cannot be reused while it lives: a changed design never matches, and
    the basis is built afresh. (The offsets and scales of active columns never change once the
    design is built; the subset path's scans set those of new pool columns only.) A deep copy
    (of a ``PathState``) starts empty.
    """

    def __init__(self):
        self._key = None
        self._basis = None

    def __deepcopy__(self, memo):
        return DenseBasis()

    @staticmethod
    def _key_of(design):
        buffer = design._B_act if design.sparse else design._Phi
        return (design, design.active, buffer)

    def get(self, design):
        """``[1 | Phi_A]`` of ``design`` (do not modify: it is shared until the design changes)."""
        key = self._key_of(design)
        if self._key is not None and all(a is b for a, b in zip(self._key, key)):
            return self._basis
        self._key = self._basis = None  # release the old basis before building the new one
        basis = dense_basis(design)
        self._key, self._basis = key, basis
        return basis


def held_dense_basis(design, state):
    """[1 | Phi_A] (or Phi_A) of ``design`` from ``state.dense_basis`` (:class:`DenseBasis`: built
    and kept there when the design changed), or built afresh for a state without one. Not to be
    modified: it is shared by the exact step, the re-admission sweep of the same iteration and
    later exact steps on the same design."""
    cache = getattr(state, "dense_basis", None)
    return dense_basis(design) if cache is None else cache.get(design)


def dense_basis(design):
    """[1 | Phi_A] (or Phi_A) of ``design`` as a new contiguous float64 array: column-major for
    a dense design (``np.hstack`` keeps the layout of the design's buffer), row-major for a
    sparse one."""
    Pa = np.asarray(design.dense_active(), dtype=np.float64)
    if design.intercept_column:
        return np.hstack([np.ones((design.n_samples, 1)), Pa])
    return np.ascontiguousarray(Pa)


def _width(v):
    """Number of right-hand sides of a product (1 for a vector)."""
    return 1 if v.ndim == 1 else v.shape[1]


def weighted_gram_runs(Phi, b):
    """``Phi' diag(b) Phi`` (m, m, float64) for non-negative ``b``: ``A' A`` with
    ``A = sqrt(b) Phi``, a symmetric rank-k update (numpy's SYRK) per run of rows
    (:func:`..utils._threads.row_runs`: one run up to 512 rows), the runs on the fit's threads
    (:func:`..utils._threads.map_blocks`: one BLAS thread each) and summed in order. The
    classifier's BLAS Laplace step and the design's :meth:`DesignMatrix.gram` use it.

    OpenBLAS's own threads would split the update by their count and round differently on two
    threads than on one (the subset path's Newton solves then took other paths: 578-604
    iterations against 523 at n = 5,000); fixed runs give the same bits on any number of
    threads."""
    n, m = Phi.shape
    sb = np.sqrt(b)
    starts, size = row_runs(n)

    def run(a):
        A = Phi[a : a + size] * sb[a : a + size, None]
        return A.T @ A

    G = np.zeros((m, m))
    for part in map_blocks(run, starts, n * m * m):
        G += part
    return G


def dense_matvec(Phi, v):
    """``Phi @ v`` (float64) for a dense basis: a BLAS product per run of rows
    (:func:`..utils._threads.row_runs`), the runs on the fit's threads
    (:func:`..utils._threads.map_blocks`). OpenBLAS's own threads round differently on two
    threads than on one; fixed runs give the same bits with any ``n_jobs``. Up to 512 rows it
    is one product, on BLAS's threads in a :func:`..utils._threads.parallel` block (for wide
    data, whose work is in the columns)."""
    v = v.astype(Phi.dtype, copy=False)
    starts, size = row_runs(Phi.shape[0])
    if len(starts) == 1:  # up to 512 rows: BLAS's own threads (wide dense data)
        with parallel(Phi.size * _width(v)):
            return np.asarray(Phi @ v, dtype=np.float64)
    parts = map_blocks(lambda a: Phi[a : a + size] @ v, starts, Phi.size * _width(v))
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def dense_rmatvec(Phi, u):
    """``Phi.T @ u`` (float64) for a dense basis: the products of the runs of rows of
    :func:`dense_matvec`, summed in order in float64."""
    u = u.astype(Phi.dtype, copy=False)
    starts, size = row_runs(Phi.shape[0])
    if len(starts) == 1:
        with parallel(Phi.size * _width(u)):
            return np.asarray(Phi.T @ u, dtype=np.float64)
    r = np.zeros(Phi.shape[1:] + u.shape[1:])
    for part in map_blocks(
        lambda a: Phi[a : a + size].T @ u[a : a + size], starts, Phi.size * _width(u)
    ):
        r += part
    return r


# Runs of columns a sparse product Phi @ v scatters into separate row buffers (in parallel):
# about one per SCATTER_PART_NNZ stored entries, at most one per core numba may use (its
# NUMBA_NUM_THREADS, fixed for the process), with the buffers' reduction (parts * n * k adds) at
# most a quarter of the product and their memory at most SCATTER_BUFFER_BYTES. The count follows
# the matrix and the machine, not n_jobs: the sums, and so the fit, are the same with any n_jobs.
SCATTER_PART_NNZ = 1 << 18
SCATTER_BUFFER_BYTES = 1 << 27


def scatter_parts(nnz, n_rows, k):
    """Number of column runs of :func:`._kernels.csc_matmat` for a product with ``nnz`` stored
    entries, ``n_rows`` rows and ``k`` right-hand sides."""
    rows = max(1, n_rows * k)
    parts = min(
        numba.config.NUMBA_NUM_THREADS,
        nnz // SCATTER_PART_NNZ,
        nnz // (4 * rows),
        SCATTER_BUFFER_BYTES // (8 * rows),
    )
    return max(1, int(parts))


def sparse_matmat(B, V):
    """``B @ V`` for a CSC matrix ``B`` and a float64 ``V`` of shape (m,) or (m, k), on the fit's
    threads when the product is large (:func:`._kernels.csc_matmat`)."""
    V2 = np.ascontiguousarray(V[:, None] if V.ndim == 1 else V)
    k = V2.shape[1]
    with parallel(B.nnz * k):
        out = csc_matmat(
            B.indptr, B.indices, B.data, V2, B.shape[0], scatter_parts(B.nnz, B.shape[0], k)
        )
    return out.ravel() if V.ndim == 1 else out


def sparse_rmatmat(B, U):
    """``B.T @ U`` for a CSC matrix ``B`` and a float64 ``U`` of shape (n,) or (n, k), on the
    fit's threads when the product is large (:func:`._kernels.csc_rmatmat`)."""
    U2 = np.ascontiguousarray(U[:, None] if U.ndim == 1 else U)
    with parallel(B.nnz * U2.shape[1]):
        out = csc_rmatmat(B.indptr, B.indices, B.data, U2)
    return out.ravel() if U.ndim == 1 else out


class DesignMatrix:
    """Scaled (and optionally centred) basis with an active column set.

    Parameters
    ----------
    B : ndarray or sparse matrix of shape (n_samples, n_basis)
        Basis before scaling. Dense input is copied into a Fortran-ordered buffer unless
        ``own=True`` (then it is modified in place).
    sample_weight : ndarray of shape (n_samples,)
        Non-negative weights (ones for an unweighted fit); their sum is the effective sample size.
    center : bool
        Subtract the weighted column means (regression with an implicit intercept).
    intercept_column : bool
        Prepend an implicit column of ones, never pruned (classification).
    own : bool
        Whether the dense ``B`` may be overwritten.
    """

    def __init__(self, B, sample_weight, *, center, intercept_column, own=False, column_index=None):
        self.n_samples, n_cols = B.shape
        self.sparse = sp.issparse(B)
        self.intercept_column = bool(intercept_column)
        # Column c of B is basis function column_index[c] out of n_basis (a kernel basis built
        # from the distinct training samples with positive weight has fewer columns than
        # samples; the others are never candidates).
        if column_index is None:
            column_index, self.n_basis = np.arange(n_cols), n_cols
        else:
            column_index, self.n_basis = np.asarray(column_index[0]), int(column_index[1])
        sw = np.asarray(sample_weight, dtype=np.float64)
        self.weight_sum = float(sw.sum())
        if self.sparse:
            self._B = sp.csc_matrix(B, dtype=B.dtype, copy=False)
            self._B.sum_duplicates()
            amax = np.asarray(abs(self._B).max(axis=0).toarray()).ravel().astype(np.float64)
        else:
            Phi = B if own and B.flags.f_contiguous else np.array(B, dtype=B.dtype, order="F")
            amax = np.maximum(Phi.max(axis=0), -Phi.min(axis=0)).astype(np.float64)
        d = moment_divisor(amax)
        if self.sparse:
            Bm = self._B if np.all(d == 1.0) else self._B @ sp.diags(1.0 / d)
            Bm = sp.csc_matrix(Bm)
            with parallel(Bm.nnz):
                mean, ssd = csc_column_moments(Bm.indptr, Bm.indices, Bm.data, sw, self.weight_sum)
        else:
            Bm = Phi if np.all(d == 1.0) else np.asfortranarray(Phi / d.astype(Phi.dtype))
            with parallel(2 * Bm.size):
                mean, ssd = weighted_column_moments(Bm, sw)
        del Bm
        offset, inv_scale, constant = column_scaling(
            mean, ssd, self.weight_sum, d, center=center, intercept_column=intercept_column
        )
        self.offset = np.zeros(self.n_basis)
        self.offset[column_index] = offset
        self.inv_scale = np.zeros(self.n_basis)
        self.inv_scale[column_index] = inv_scale
        pos = np.flatnonzero(~constant)
        self.active = column_index[pos]
        if self.sparse:
            self._B_act = self._B[:, pos]
        else:
            with parallel(Phi.size):
                center_scale_inplace(
                    Phi,
                    np.where(constant, 0.0, offset).astype(Phi.dtype),
                    inv_scale.astype(Phi.dtype),
                )
            compact_columns_inplace(Phi, pos)
            self._Phi = Phi

    @property
    def sparse_basis(self):
        """Every column of a sparse basis before scaling, CSC (duplicates summed); None for a
        dense one. Not to be modified."""
        return self._B if self.sparse else None

    # ------------------------------------------------------------------ shape of the active set
    @property
    def n_active(self):
        """Number of active basis columns (the intercept column is not counted)."""
        return self.active.shape[0]

    @property
    def n_coef(self):
        """Length of a coefficient vector over the active set, intercept column included."""
        return self.n_active + int(self.intercept_column)

    def dense_active(self):
        """The active part of Phi as a dense (n, n_active) array (a view for dense bases)."""
        if self.sparse:
            Xa = self._B_act.toarray()
            Xa -= self.offset[self.active]
            Xa *= self.inv_scale[self.active]
            return Xa
        return self._Phi[:, : self.n_active]

    def sample_zeros(self):
        """A zero vector over the samples (chunked like the rows for a dask design)."""
        return np.zeros(self.n_samples)

    def column(self, j):
        """Active column ``j`` of Phi (intercept column excluded) as a float64 vector of length n."""
        if self.sparse:
            c = np.asarray(self._B_act[:, [j]].toarray(), dtype=np.float64).ravel()
            act = self.active[j]
            return (c - self.offset[act]) * self.inv_scale[act]
        return np.asarray(self._Phi[:, j], dtype=np.float64)

    # ------------------------------------------------------------------ products
    def _split(self, w):
        if self.intercept_column:
            return w[0], w[1:]
        return None, w

    def matvec(self, w):
        """Phi @ w for w of shape (n_coef,) or (n_coef, k); returns float64."""
        w = np.asarray(w, dtype=np.float64)
        b, v = self._split(w)
        if self.sparse:
            act = self.active
            vs = v * (self.inv_scale[act] if v.ndim == 1 else self.inv_scale[act][:, None])
            out = sparse_matmat(self._B_act, vs)
            out -= self.offset[act] @ vs
        else:
            out = dense_matvec(self._Phi[:, : self.n_active], v)
        if b is not None:
            out += b
        return out

    def rmatvec(self, u):
        """Phi.T @ u for u of shape (n,) or (n, k); returns float64 of leading size n_coef."""
        u = np.asarray(u, dtype=np.float64)
        if self.sparse:
            act = self.active
            r = sparse_rmatmat(self._B_act, u)
            usum = u.sum(axis=0)
            if u.ndim == 1:
                r = (r - self.offset[act] * usum) * self.inv_scale[act]
            else:
                r = (r - np.outer(self.offset[act], usum)) * self.inv_scale[act][:, None]
        else:
            r = dense_rmatvec(self._Phi[:, : self.n_active], u)
        if self.intercept_column:
            lead = np.reshape(u.sum(axis=0), (1,) + r.shape[1:])
            r = np.concatenate([lead, r])
        return r

    def sq_column_norms(self, b):
        """Curvature diagonal (Phi * Phi).T @ b over the active set (intercept first when present)."""
        b = np.asarray(b, dtype=np.float64)
        if self.sparse:
            act = self.active
            Xa = self._B_act
            o = self.offset[act]
            s2 = np.asarray(Xa.multiply(Xa).T @ b).ravel()
            s1 = sparse_rmatmat(Xa, b)
            d = (s2 - 2.0 * o * s1 + o**2 * b.sum()) * self.inv_scale[act] ** 2
        else:
            Phi = self._Phi[:, : self.n_active]
            with parallel(Phi.size):
                d = weighted_sq_column_norms(Phi, b)
        if self.intercept_column:
            d = np.concatenate([[b.sum()], d])
        return d

    def gram(self, b):
        """Phi.T @ diag(b) @ Phi over the active set, dense (n_coef, n_coef). For exact steps only."""
        b = np.asarray(b, dtype=np.float64)
        if self.sparse:
            act = self.active
            s = self.inv_scale[act]
            # Scale the columns first, so that products cannot overflow whatever the units.
            Xa = sp.csc_matrix(self._B_act @ sp.diags(s))
            o = self.offset[act] * s
            XtbX = np.asarray((Xa.T @ Xa.multiply(b[:, None]).tocsc()).toarray(), dtype=np.float64)
            xb = sparse_rmatmat(Xa, b)
            G = XtbX - np.outer(o, xb) - np.outer(xb, o) + b.sum() * np.outer(o, o)
            cross = xb - o * b.sum()
        else:
            Phi = self._Phi[:, : self.n_active]
            G = weighted_gram_runs(Phi, b)  # the same bits with any n_jobs
            cross = dense_rmatvec(Phi, b)
        if self.intercept_column:
            m = G.shape[0] + 1
            G2 = np.empty((m, m))
            G2[0, 0] = b.sum()
            G2[0, 1:] = cross
            G2[1:, 0] = cross
            G2[1:, 1:] = G
            G = G2
        return G

    # ------------------------------------------------------------------ pruning
    def compact(self, keep):
        """Keep the active columns where ``keep`` (bool, length n_active) is True."""
        keep = np.asarray(keep, dtype=bool)
        if keep.all():
            return
        idx = np.flatnonzero(keep)
        if self.sparse:
            self._B_act = self._B_act[:, idx]
        else:
            compact_columns_inplace(self._Phi, idx)
        self.active = self.active[idx]

    def copy_active(self):
        """An independent copy over the active columns only (the buffer of a dense basis is cut
        to them; :meth:`insert_columns` grows it again when needed)."""
        out = copy.copy(self)
        out.active = self.active.copy()
        if self.sparse:
            out._B_act = self._B_act.copy()
        else:
            out._Phi = np.array(self._Phi[:, : self.n_active], order="F")
        return out

    def insert_columns(self, js, raw):
        """Put basis functions ``js`` (not active, increasing) back into the active set.

        ``raw`` holds their columns before scaling, (n_samples, len(js)). The active set stays in
        increasing order; returns the positions of the new columns in it (increasing).
        """
        js = np.asarray(js, dtype=np.intp)
        old = self.active
        new_active = np.sort(np.concatenate([old, js]))
        pos_new = np.searchsorted(new_active, js)
        pos_old = np.searchsorted(new_active, old)
        if self.sparse:
            cols = sp.csc_matrix(raw, dtype=self._B_act.dtype)
            order = np.argsort(np.concatenate([pos_old, pos_new]))
            self._B_act = sp.csc_matrix(sp.hstack([self._B_act, cols], format="csc")[:, order])
        else:
            Phi = self._Phi
            if new_active.size > Phi.shape[1]:
                # a basis built from a subset of the candidates can outgrow its buffer: double it
                grown = np.empty(
                    (Phi.shape[0], max(new_active.size, 2 * Phi.shape[1])), Phi.dtype, order="F"
                )
                grown[:, : old.size] = Phi[:, : old.size]
                self._Phi = Phi = grown
            for c in range(old.size - 1, -1, -1):  # move right, last first (pos_old[c] >= c)
                if pos_old[c] != c:
                    Phi[:, pos_old[c]] = Phi[:, c]
            raw = np.asarray(raw.toarray() if sp.issparse(raw) else raw, dtype=np.float64)
            Phi[:, pos_new] = ((raw - self.offset[js]) * self.inv_scale[js]).astype(Phi.dtype)
        self.active = new_active
        return pos_new

    # ------------------------------------------------------------------ back to original units
    def unscale(self, w):
        """Map coefficients over the active set to the units of B.

        Returns ``(coef, intercept_shift)``: ``B[:, active] @ coef + intercept_shift`` equals
        ``Phi @ w`` (the intercept column's weight included in the shift).
        """
        w = np.asarray(w, dtype=np.float64)
        b, v = self._split(w)
        s = self.inv_scale[self.active]
        coef = v * (s if v.ndim == 1 else s[:, None])
        shift = -(self.offset[self.active] @ coef)
        if b is not None:
            shift = shift + b
        return coef, shift
