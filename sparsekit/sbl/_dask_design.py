"""Linear DQN-SBL on row-chunked dask arrays (issue 12): a design matrix whose passes are
map/reduce over the row chunks.

``DaskDesignMatrix`` has the interface of :class:`._design.DesignMatrix`. Its scaled (and, for
regression, centred) active basis lives on the workers as one block per row chunk (dense chunks:
a copy centred, scaled and compacted like ``DesignMatrix``'s buffer; scipy.sparse chunks: CSC
blocks with the centring and scaling applied inside the products). Every pass runs on the current
``dask.distributed`` client when there is one, on dask's threaded scheduler otherwise:

- ``matvec`` returns a chunked (persisted) n-vector (or n-by-K array);
- ``rmatvec``, ``sq_column_norms`` and ``gram`` sum per-chunk O(M) (or m-by-m) partials, and only
  those travel to the driver;
- ``compact`` (pruning) slices the blocks on the workers, and ``insert_columns`` (the classifier's
  re-admission) rebuilds them with columns taken from X's chunks.

Per-sample vectors (targets, weights, residuals, probabilities) are dask arrays with the same row
chunks, so the solvers' elementwise arithmetic on them stays on the workers; their reductions
(sums of squares, losses) are scalars or K-vectors.

The classifier's exact Laplace phase and re-admission sweeps have their own chunked passes in
:mod:`._dask_laplace`. Not chunked, so not run on dask input: kernel bases (one column per sample;
the n-by-n kernel is the thing that does not fit) and the constructive path for p >= n/2 (it reads
single columns and a small dense model; such data fit in memory). The estimators say so with a
clear error.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import prange

from ..utils._numba import jit
from ._dask_input import _blocks, _da, is_dask_array
from ._design import DesignMatrix, column_scaling, moment_divisor
from ._kernels import compact_columns_inplace, weighted_sq_column_norms


# ---------------------------------------------------------------------------------- block kernels
@jit(parallel=True)
def _weighted_column_sums(Phi, sw):
    n, m = Phi.shape
    out = np.empty(m, dtype=np.float64)
    for j in prange(m):
        acc = 0.0
        for i in range(n):
            acc += sw[i] * Phi[i, j]
        out[j] = acc
    return out


@jit(parallel=True)
def _weighted_deviation_squares(Phi, sw, mean):
    n, m = Phi.shape
    out = np.empty(m, dtype=np.float64)
    for j in prange(m):
        mu = mean[j]
        acc = 0.0
        for i in range(n):
            dev = Phi[i, j] - mu
            acc += sw[i] * dev * dev
        out[j] = acc
    return out


def _to_block(B, sparse, dtype):
    if sparse:
        B = sp.csc_matrix(B, dtype=dtype, copy=False)
        B.sum_duplicates()
        return B
    return np.asfortranarray(B, dtype=dtype)


def _amax_block(B, sparse):
    if B.shape[0] == 0:
        return np.zeros(B.shape[1]), True
    if sparse:
        B = sp.csc_matrix(B)
        a = np.asarray(abs(B).max(axis=0).toarray()).ravel().astype(np.float64)
        ok = np.all(np.isfinite(B.data))
    else:
        a = np.maximum(B.max(axis=0), -B.min(axis=0)).astype(np.float64)
        ok = bool(np.all(np.isfinite(a)))
    return a, ok


def _sum_block(B, sw, d, sparse):
    """Weighted column sums of B / d (and the weight sum) of one block."""
    sw = np.asarray(sw, dtype=np.float64)
    if sparse:
        B = sp.csc_matrix(B)
        cols = np.repeat(np.arange(B.shape[1]), np.diff(B.indptr))
        s = np.bincount(cols, sw[B.indices] * (B.data / d[cols]), minlength=B.shape[1])
    else:
        Bm = B if np.all(d == 1.0) else np.asfortranarray(B / d.astype(B.dtype))
        s = _weighted_column_sums(Bm, sw)
    return s


def _ssd_block(B, sw, d, mean, sparse):
    """Weighted sums of squared deviations of B / d from ``mean`` (of B / d), and for sparse
    blocks the weight on the stored entries of each column."""
    sw = np.asarray(sw, dtype=np.float64)
    if sparse:
        B = sp.csc_matrix(B)
        cols = np.repeat(np.arange(B.shape[1]), np.diff(B.indptr))
        w_nz = sw[B.indices]
        dev = B.data / d[cols] - mean[cols]
        ssd = np.bincount(cols, w_nz * dev * dev, minlength=B.shape[1])
        w_on = np.bincount(cols, w_nz, minlength=B.shape[1])
        return np.concatenate([ssd, w_on])
    Bm = B if np.all(d == 1.0) else np.asfortranarray(B / d.astype(B.dtype))
    return _weighted_deviation_squares(Bm, sw, mean)


def _phi_block(B, offset, inv_scale, pos, sparse, dtype):
    """The scaled active block: dense blocks centred, scaled and compacted (a Fortran copy),
    sparse blocks only restricted to the active columns (CSC)."""
    B = _to_block(B, sparse, dtype)
    if sparse:
        return B[:, pos]
    # One Fortran copy of the block, compacted in place (as DesignMatrix does with its buffer).
    Phi = np.array(B, dtype=dtype, order="F", copy=True)
    compact_columns_inplace(Phi, pos)
    Phi = Phi[:, : pos.shape[0]]
    Phi -= offset[pos].astype(dtype)
    Phi *= inv_scale[pos].astype(dtype)
    return Phi


def _compact_block(Phi, idx):
    """Keep columns ``idx`` of a block. Dense blocks are compacted in place and returned as a
    view, so pruning needs no second copy of the basis on a worker. That is safe here: the block
    is this design's own copy, and the solver has no pending task on the old blocks when it prunes
    (its pass results are computed first); a lost worker recomputes the old block from X."""
    if sp.issparse(Phi):
        return Phi[:, idx]
    if not Phi.flags.f_contiguous:
        Phi = np.array(Phi, order="F")
    compact_columns_inplace(Phi, idx)
    return Phi[:, : idx.shape[0]]


def _insert_block(Phi, raw, pos_old, pos_new, offset, inv_scale, dtype):
    """The block with re-admitted columns (``raw``, unscaled) put at ``pos_new``, as
    ``DesignMatrix.insert_columns`` does (sparse blocks stay raw; dense ones are scaled)."""
    if sp.issparse(Phi):
        cols = sp.csc_matrix(raw, dtype=dtype)
        order = np.argsort(np.concatenate([pos_old, pos_new]))
        return sp.csc_matrix(sp.hstack([Phi, cols], format="csc")[:, order])
    out = np.empty((Phi.shape[0], pos_old.size + pos_new.size), dtype=dtype, order="F")
    out[:, pos_old] = Phi
    raw = np.asarray(raw.toarray() if sp.issparse(raw) else raw, dtype=np.float64)
    out[:, pos_new] = ((raw - offset) * inv_scale).astype(dtype)
    return out


def _matvec_block(Phi, vs, shift):
    out = np.asarray(Phi @ vs, dtype=np.float64)
    if shift is not None:
        out -= shift
    return out


def _rmatvec_block(Phi, u):
    """(Phi' u, sum u) of one block, float64."""
    u = np.asarray(u, dtype=np.float64)
    if sp.issparse(Phi):
        r = np.asarray(Phi.T @ u, dtype=np.float64)
    else:
        r = np.asarray(Phi.T @ u.astype(Phi.dtype, copy=False), dtype=np.float64)
    return r, u.sum(axis=0)


def _sq_norms_block(Phi, b):
    b = np.asarray(b, dtype=np.float64)
    if sp.issparse(Phi):
        s2 = np.asarray(Phi.multiply(Phi).T @ b).ravel()
        s1 = np.asarray(Phi.T @ b).ravel()
        return s2, s1, b.sum()
    return weighted_sq_column_norms(Phi, b), None, b.sum()


def _gram_block(Phi, b, s):
    b = np.asarray(b, dtype=np.float64)
    if sp.issparse(Phi):
        Xa = sp.csc_matrix(Phi @ sp.diags(s))
        G = np.asarray((Xa.T @ Xa.multiply(b[:, None]).tocsc()).toarray(), dtype=np.float64)
        xb = np.asarray(Xa.T @ b).ravel()
    else:
        Pb = np.asarray(Phi * b[:, None].astype(Phi.dtype), dtype=Phi.dtype)
        G = np.asarray(Phi.T @ Pb, dtype=np.float64)
        xb = np.asarray(Phi.T @ b.astype(Phi.dtype), dtype=np.float64)
    return G, xb, b.sum()


def _add(parts):
    """Sum of a list of equally structured partials (arrays, tuples of arrays or None)."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_add([p[i] for p in parts]) for i in range(len(first)))
    if first is None:
        return None
    total = np.array(first, dtype=np.float64, copy=True)
    for p in parts[1:]:
        total += p
    return total


# ---------------------------------------------------------------------------------- the design
class DaskDesignMatrix(DesignMatrix):
    """``DesignMatrix`` over a row-chunked dask array (linear basis only); see the module docs.

    Parameters
    ----------
    B : dask array of shape (n_samples, n_features)
        Row-chunked features (one chunk across the columns), dense or scipy.sparse chunks.
    sample_weight : dask array of shape (n_samples,)
        Weights chunked like the rows of B.
    center, intercept_column : bool
        As for ``DesignMatrix``.
    """

    chunked = True

    def __init__(self, B, sample_weight, *, center, intercept_column):
        import dask

        self._dask = dask
        self.n_samples, n_cols = B.shape
        self.n_basis = n_cols
        self.sparse = sp.issparse(B._meta)
        self.intercept_column = bool(intercept_column)
        self.row_chunks = B.chunks[0]
        dtype = B.dtype
        sw = sample_weight
        Xb = B.persist()  # read three times below; released once Phi's blocks exist
        x_blocks, w_blocks = _blocks(Xb), _blocks(sw)
        amax_parts = dask.compute(
            *[dask.delayed(_amax_block)(x, self.sparse) for x in x_blocks], sw.sum()
        )
        self.weight_sum = float(amax_parts[-1])
        amax = np.max(np.stack([a for a, _ in amax_parts[:-1]]), axis=0)
        if not all(ok for _, ok in amax_parts[:-1]):
            raise ValueError(
                "Input X contains NaN or infinity (in at least one chunk); clean the data "
                "(e.g. with dask's da.nan_to_num or by dropping rows) before fitting."
            )
        d = moment_divisor(amax)
        sums = self._reduce(_sum_block, x_blocks, w_blocks, d, self.sparse)
        mean = sums / self.weight_sum
        part = self._reduce(_ssd_block, x_blocks, w_blocks, d, mean, self.sparse)
        if self.sparse:
            ssd, w_on = part[:n_cols], part[n_cols:]
            ssd = ssd + mean**2 * np.maximum(self.weight_sum - w_on, 0.0)
        else:
            ssd = part
        self.offset, self.inv_scale, constant = column_scaling(
            mean, ssd, self.weight_sum, d, center=center, intercept_column=intercept_column
        )
        pos = np.flatnonzero(~constant)
        self.active = pos
        self._Phi = Xb.map_blocks(
            _phi_block,
            self.offset,
            self.inv_scale,
            pos,
            self.sparse,
            dtype,
            chunks=(self.row_chunks, (pos.shape[0],)),
            dtype=dtype,
            meta=sp.csc_matrix((0, 0), dtype=dtype) if self.sparse else np.empty((0, 0), dtype),
        ).persist()
        del Xb, x_blocks

    # ------------------------------------------------------------------ map/reduce helpers
    def _reduce(self, fn, *args):
        """Sum over the row chunks of ``fn(block args..., extra args...)``: list arguments are
        per-block, others are passed whole."""
        n_blocks = len(self.row_chunks)
        parts = []
        for k in range(n_blocks):
            a = [x[k] if isinstance(x, list) else x for x in args]
            parts.append(self._dask.delayed(fn)(*a))
        return self._dask.compute(self._dask.delayed(_add)(parts))[0]

    def _rows(self, u):
        """Per-block delayed pieces of a per-sample dask array (rechunked to the design's rows)."""
        da = _da()
        if not is_dask_array(u):
            u = da.from_array(np.asarray(u), chunks=(self.row_chunks,) + np.shape(u)[1:])
        if u.chunks[0] != self.row_chunks:
            u = u.rechunk({0: self.row_chunks})
        if u.ndim == 2 and len(u.chunks[1]) > 1:
            u = u.rechunk({1: -1})
        return _blocks(u)

    def _phi_blocks(self):
        return _blocks(self._Phi)

    # ------------------------------------------------------------------ interface
    def sample_zeros(self):
        """A chunked zero vector of length n_samples."""
        return _da().zeros(self.n_samples, chunks=(self.row_chunks,))

    def dense_active(self):
        raise NotImplementedError(
            "The dense active basis of a dask design matrix is not formed (it would bring X to "
            "the driver); this solver path does not run on dask input."
        )

    def column(self, j):
        raise NotImplementedError(
            "Single columns of a dask design matrix are not formed; the constructive path does "
            "not run on dask input."
        )

    def matvec(self, w):
        """Phi @ w as a persisted dask array chunked like the rows, float64."""
        w = np.asarray(w, dtype=np.float64)
        b, v = self._split(w)
        act = self.active
        if self.sparse:
            vs = v * (self.inv_scale[act] if v.ndim == 1 else self.inv_scale[act][:, None])
            shift = self.offset[act] @ vs
        else:
            vs, shift = v.astype(self._Phi.dtype), None
        if b is not None:
            shift = -b if shift is None else shift - b
        if v.ndim == 1:
            out = self._Phi.map_blocks(
                _matvec_block, vs, shift, drop_axis=1, dtype=np.float64, meta=np.empty(0)
            )
        else:
            out = self._Phi.map_blocks(
                _matvec_block,
                vs,
                shift,
                chunks=(self.row_chunks, (v.shape[1],)),
                dtype=np.float64,
                meta=np.empty((0, 0)),
            )
        return out.persist()

    def rmatvec(self, u):
        """Phi.T @ u for a chunked u of shape (n,) or (n, k); numpy float64 (n_coef[, k])."""
        r, usum = self._reduce(_rmatvec_block, self._phi_blocks(), self._rows(u))
        if self.sparse:
            act = self.active
            if r.ndim == 1:
                r = (r - self.offset[act] * usum) * self.inv_scale[act]
            else:
                r = (r - np.outer(self.offset[act], usum)) * self.inv_scale[act][:, None]
        if self.intercept_column:
            lead = np.reshape(usum, (1,) + r.shape[1:])
            r = np.concatenate([lead, r])
        return r

    def sq_column_norms(self, b):
        s2, s1, bsum = self._reduce(_sq_norms_block, self._phi_blocks(), self._rows(b))
        if self.sparse:
            act = self.active
            o = self.offset[act]
            d = (s2 - 2.0 * o * s1 + o**2 * bsum) * self.inv_scale[act] ** 2
        else:
            d = s2
        if self.intercept_column:
            d = np.concatenate([[bsum], d])
        return d

    def gram(self, b):
        act = self.active
        s = self.inv_scale[act]
        G, xb, bsum = self._reduce(_gram_block, self._phi_blocks(), self._rows(b), s)
        if self.sparse:
            o = self.offset[act] * s
            G = G - np.outer(o, xb) - np.outer(xb, o) + bsum * np.outer(o, o)
            cross = xb - o * bsum
        else:
            cross = xb
        if self.intercept_column:
            m = G.shape[0] + 1
            G2 = np.empty((m, m))
            G2[0, 0] = bsum
            G2[0, 1:] = cross
            G2[1:, 0] = cross
            G2[1:, 1:] = G
            G = G2
        return G

    def compact(self, keep):
        keep = np.asarray(keep, dtype=bool)
        if keep.all():
            return
        idx = np.flatnonzero(keep)
        dtype = self._Phi.dtype
        self._Phi = self._Phi.map_blocks(
            _compact_block,
            idx,
            chunks=(self.row_chunks, (idx.shape[0],)),
            dtype=dtype,
            meta=self._Phi._meta,
        ).persist()
        self.active = self.active[idx]

    def insert_columns(self, js, raw):
        """Put basis functions ``js`` (not active, increasing) back into the active set, from
        ``raw``: their unscaled columns as a dask array chunked like the rows. The new blocks
        are built on the workers (a fresh block replaces the compacted one); returns the
        positions of the new columns in the active set, as ``DesignMatrix.insert_columns``."""
        js = np.asarray(js, dtype=np.intp)
        old = self.active
        new_active = np.sort(np.concatenate([old, js]))
        pos_new = np.searchsorted(new_active, js)
        pos_old = np.searchsorted(new_active, old)
        if raw.chunks[0] != self.row_chunks:
            raw = raw.rechunk({0: self.row_chunks})
        dtype = self._Phi.dtype
        self._Phi = (
            _da()
            .map_blocks(
                _insert_block,
                self._Phi,
                raw,
                pos_old,
                pos_new,
                self.offset[js],
                self.inv_scale[js],
                dtype,
                chunks=(self.row_chunks, (new_active.size,)),
                dtype=dtype,
                meta=self._Phi._meta,
            )
            .persist()
        )
        self.active = new_active
        return pos_new


def make_design(B, sample_weight, *, center, intercept_column, own=False, column_index=None):
    """``DaskDesignMatrix`` for dask input, ``DesignMatrix`` otherwise."""
    if is_dask_array(B):
        return DaskDesignMatrix(B, sample_weight, center=center, intercept_column=intercept_column)
    return DesignMatrix(
        B,
        sample_weight,
        center=center,
        intercept_column=intercept_column,
        own=own,
        column_index=column_index,
    )
