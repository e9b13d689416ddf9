"""The add test's float32 screening (``_readmission.Screen``, used by ``_score`` in pool sweeps and
scans): the model products of a non-negative block are computed in float32, and only the
candidates that may pass by the float32 products' error bound are scored again in float64. These
tests hold it to the plain float64 scoring: every candidate the float64 products pass is kept
(candidates built to sit on the test's edge included), the same candidates are found with the same
scores, blocks it cannot bound fall back to float64, and whole fits end in the same model.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification, make_moons

import sparsekit.sbl._readmission as ra
from sparsekit.sbl import DQNSBLClassifier


def _rbf_problem(n, m, n_cand, seed, *, weight=1.0, gamma=0.3):
    """A realistic add-test problem: RBF columns of a model of ``m`` nearby centres (an
    ill-conditioned ``Sigma`` with large entries of both signs), curvature weights of a fitted
    logistic model, and candidate columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    centres = X[rng.choice(n, m + n_cand, replace=False)]
    K = np.exp(-gamma * ((X[:, None, :] - centres[None]) ** 2).sum(-1))
    Phi = np.hstack([np.ones((n, 1)), K[:, :m] * rng.uniform(0.5, 2.0, m)])
    raw = np.asfortranarray(K[:, m:])
    w = rng.normal(size=m + 1)
    p = 1.0 / (1.0 + np.exp(-Phi @ w))
    sw = np.full(n, weight)
    b = sw * p * (1 - p)
    lam = np.exp(rng.uniform(-3, 3, m + 1))
    S = np.linalg.inv(Phi.T @ (b[:, None] * Phi) + np.diag(lam))
    S = (S + S.T) / 2
    BP = b[:, None] * Phi
    scale = rng.uniform(0.5, 3.0, n_cand)
    sq = ((raw * raw).T @ b)[:, None] * (scale * scale)[:, None]
    C = (raw.T @ BP) * scale[:, None]
    s = sq[:, 0] - np.einsum("ij,ij->i", C @ S, C)
    q = rng.normal(size=n_cand) * np.sqrt(np.abs(s)) * rng.uniform(0, 2, n_cand)
    return raw, scale, sq, q, [(BP, S)], s


def _found(found):
    return [np.concatenate(a) if a else np.zeros(0) for f in found for a in zip(*f)] or None


def _score_both(
    raw, scale, sq, Qb, models, threshold, monkeypatch, keep=None, top=None, tol=0.0, width=64
):
    """Score the candidates of ``raw`` in blocks of ``width`` columns without and with a screen:
    the found candidates (gains, indices, precisions) of each, and the screen."""
    js = np.arange(sq.shape[0]) + 1000
    excluded = np.zeros((len(models), 2000), dtype=bool)
    excluded[0, js[::7]] = True
    monkeypatch.setattr(ra, "SCREEN_MIN_WORK", 0)
    cols = np.arange(raw.shape[1]) if keep is None else np.flatnonzero(keep)
    out = {}
    screen = ra.Screen.of(models, raw.shape[0], top, tol)
    for key, scr in (("f64", None), ("f32", screen)):
        found = [[] for _ in models]
        for a in range(0, raw.shape[1], width):
            block = raw[:, a : a + width]
            block = np.asfortranarray(block) if raw.flags.f_contiguous else block
            sub = (cols >= a) & (cols < a + width)
            kb = None if keep is None else keep[a : a + width]
            ra._score(
                *(js[sub], block, scale[sub], None, sq[sub], Qb[sub], models, excluded),
                *(threshold, found, kb, scr),
            )
        if scr is not None:
            scr.flush()
        out[key] = _found(found)
    return out, screen


def _top(found, k, tol=-np.inf):
    gain, js, _lam = found
    order = np.argsort(-gain, kind="stable")[:k]
    order = order[gain[order] > tol]
    return js[order], gain[order]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("weight, batch", [(1.0, 256), (1e4, 256), (1.0, 7)])
def test_screened_scores_are_the_float64_scores(seed, weight, batch, monkeypatch):
    """Random RBF problems: the screened ``_score`` finds the float64 candidates, gains and
    precisions to rounding (rescored in one product, or in several; float32 products in runs
    of 128 rows), and screens out the rest."""
    monkeypatch.setattr(ra, "RESCORE_COLUMNS", batch)
    monkeypatch.setattr(ra, "SCREEN_ROWS", 128)
    raw, scale, sq, q, models, _s = _rbf_problem(700, 25, 300, seed, weight=weight)
    out, screen = _score_both(raw, scale, sq, q[:, None], models, 1e12, monkeypatch)
    assert 0 < screen.rescored < 300  # the screen did work
    assert len(out["f32"]) == len(out["f64"]) == 3
    gain, js, lam = out["f32"]
    assert_array_equal(js, out["f64"][1])
    # float64 to rounding: the rescoring's product has another shape than the blocks', and
    # near q^2 = s the gain and precision amplify s's rounding (by 1 / (q^2 / s - 1))
    assert_allclose(gain, out["f64"][0], rtol=1e-5)
    assert_allclose(lam, out["f64"][2], rtol=1e-5)


def _subnormal32(A):
    """Whether the float32 array ``A`` has a nonzero entry below float32's smallest normal."""
    return bool(np.any((A != 0) & (np.abs(A) < np.finfo(np.float32).tiny)))


@pytest.mark.parametrize("seed", range(3))
def test_narrow_kernels_meet_no_subnormal_float32_number(seed, monkeypatch):
    """A narrow RBF kernel has entries far below float32's smallest normal number, which x86
    CPUs multiply 48-142x slower (benchmarks/bench_subnormal.py): the screen's float32 inputs
    hold none (entries below FLUSH32 become 0, so no product of two kept entries is subnormal
    either), and the scores are still the float64 ones."""
    monkeypatch.setattr(ra, "SCREEN_ROWS", 128)
    raw, scale, sq, q, models, _s = _rbf_problem(700, 25, 300, seed, gamma=12.0)
    tiny = (raw > 0) & (raw < ra.FLUSH32)
    assert tiny.mean() > 0.1  # the situation: many entries would be subnormal or make them
    A32, lo, hi = ra.float32_copy_range(np.ascontiguousarray(raw.T))
    assert not _subnormal32(A32) and np.all(A32.T[tiny] == 0.0)
    assert (lo, hi) == (raw.min(), raw.max())
    BP32 = ra.Screen.of(models, raw.shape[0]).BP32[0]
    assert not _subnormal32(BP32)
    assert float(BP32.astype(np.float64).min(initial=1.0)) == 0.0
    out, screen = _score_both(raw, scale, sq, q[:, None], models, 1e12, monkeypatch)
    assert screen.rescored < 300
    assert_array_equal(out["f32"][1], out["f64"][1])
    assert_allclose(out["f32"][0], out["f64"][0], rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("top", [1, 5, 40])
@pytest.mark.parametrize("at_tol", [False, True])
def test_the_best_candidates_are_the_float64_best(seed, top, at_tol, monkeypatch):
    """With ``top``, the ``top`` best candidates (above ``tol``) are those of the float64
    scores, with their gains, while far fewer candidates are rescored than pass; small
    rescoring batches and queue bounds, so that pruning runs between blocks."""
    monkeypatch.setattr(ra, "BLOCK", 8)
    raw, scale, sq, q, models, _s = _rbf_problem(800, 25, 600, seed)
    ref, _ = _score_both(raw, scale, sq, q[:, None], models, 1e12, monkeypatch)
    tol = float(np.median(ref["f64"][0])) if at_tol else 0.0
    out, screen = _score_both(raw, scale, sq, q[:, None], models, 1e12, monkeypatch, None, top, tol)
    js_ref, g_ref = _top(out["f64"], top, tol)
    js_new, g_new = _top(out["f32"], top, tol)
    assert_array_equal(js_new, js_ref)
    assert_allclose(g_new, g_ref, rtol=1e-5)
    assert out["f64"][1].size > 100
    assert screen.rescored < 0.5 * out["f64"][1].size


@pytest.mark.parametrize("top", [1, 3, 20])
def test_near_ties_are_rescored(top, monkeypatch):
    """Candidates whose gains differ by 1e-8 relative (far inside the float32 bounds) are all
    rescored, and the best ``top`` are the float64 ones."""
    raw, scale, sq, _q, models, s = _rbf_problem(700, 20, 300, 5)
    rng = np.random.default_rng(0)
    x = 3.0 * (1.0 + 1e-8 * rng.uniform(size=s.size))
    q = np.sqrt(s * x)
    out, _ = _score_both(raw, scale, sq, q[:, None], models, 1e300, monkeypatch, None, top)
    js_ref, g_ref = _top(out["f64"], top)
    js_new, g_new = _top(out["f32"], top)
    assert_array_equal(js_new, js_ref)
    assert_allclose(g_new, g_ref, rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("edge", [1e-9, 1e-6, 1e-4, 1e-2])
@pytest.mark.parametrize("rows", [1024, 97])
def test_candidates_on_the_edge_of_the_add_test_are_kept(seed, edge, rows, monkeypatch):
    """Candidates whose ``q^2`` exceeds their float64 ``s`` by a relative ``edge`` (far below the
    float32 products' error for the smaller ones) pass in float64, so the screen must keep every
    one of them; and those just below the edge must not be found. With one float32 product over
    all rows, and with runs of 97 rows summed in float64."""
    monkeypatch.setattr(ra, "SCREEN_ROWS", rows)
    raw, scale, sq, _q, models, s = _rbf_problem(900, 30, 400, seed)
    assert np.all(s > 0)
    sign = np.where(np.arange(s.size) % 2 == 0, 1.0, -1.0)
    q = np.sqrt(s * (1.0 + sign * edge))
    out, _ = _score_both(raw, scale, sq, q[:, None], models, 1e300, monkeypatch)
    js_ref = out["f64"][1]
    assert js_ref.size > 100  # most of the "above" half pass in float64
    assert_array_equal(out["f32"][1], js_ref)
    assert np.all((js_ref - 1000) % 2 == 0)


def test_keep_mask_and_row_major_blocks(monkeypatch):
    """A C-ordered block with dropped columns (the scans' blocks) screens the same as float64."""
    raw, scale, sq, q, models, _s = _rbf_problem(600, 20, 200, 7)
    keep = np.ones(200, dtype=bool)
    keep[::5] = False
    raw_c = np.ascontiguousarray(raw)
    out, _ = _score_both(
        raw_c, scale[keep], sq[keep], q[keep, None], models, 1e12, monkeypatch, keep
    )
    assert_array_equal(out["f32"][1], out["f64"][1])
    assert_allclose(out["f32"][0], out["f64"][0], rtol=1e-9)


def test_blocks_it_cannot_bound_are_scored_in_float64(monkeypatch):
    """A block with a negative entry, or entries too large for float32, and a model with a
    negative entry are not screened: the float64 scores, bit for bit."""
    raw, scale, sq, q, models, _s = _rbf_problem(500, 15, 100, 3)
    called = []
    monkeypatch.setattr(ra.Screen, "candidates", lambda *a: called.append(1))
    neg = raw.copy()
    neg[4, 9] = -1e-300
    big = raw.copy()
    big[0, 0] = 1e35
    for block in (neg, big):
        out, _ = _score_both(block, scale, sq, q[:, None], models, 1e12, monkeypatch, width=100)
        for a, b in zip(out["f32"], out["f64"]):
            assert_array_equal(a, b)
    BP, S = models[0]
    BP = BP.copy()
    BP[2, 3] = -0.5
    assert ra.Screen.of([(BP, S)], BP.shape[0]) is None
    assert not called


def _fits(X, y, monkeypatch, **params):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, work in (("f64", 2**62), ("f32", 0)):
            monkeypatch.setattr(ra, "SCREEN_MIN_WORK", work)
            out[key] = DQNSBLClassifier(gamma=0.2, **params).fit(X, y)
    return out["f32"], out["f64"]


@pytest.mark.parametrize("basis, classes", [("subset", 2), ("subset", 3), ("full", 2), ("full", 3)])
def test_screened_fit_is_the_float64_fit(basis, classes, small_pool, monkeypatch):
    """Whole fits (subset path with several scans, and the full kernel's re-admission sweeps)
    with every block screened end in the float64 fit's model: the same relevance vectors and
    iterations, coefficients to 1e-8; and the screen was used and set candidates aside. Small
    rescoring batches, so that both the batch and the final flush score candidates."""
    monkeypatch.setattr(ra, "RESCORE_COLUMNS", 16)
    X, y = make_classification(
        n_samples=300, n_features=5, n_informative=4, n_redundant=0, n_classes=classes,
        n_clusters_per_class=1, random_state=4,
    )  # fmt: skip
    kept, scored = [], []
    real = ra.Screen.candidates

    def counting(self, k, C, *args):
        sel = real(self, k, C, *args)
        kept.append(sel[0].size)
        scored.append(C.shape[0])
        return sel

    monkeypatch.setattr(ra.Screen, "candidates", counting)
    new, ref = _fits(X, y, monkeypatch, kernel_basis=basis)
    assert sum(scored) > 0 and sum(kept) < 0.5 * sum(scored)
    assert new.n_iter_ == ref.n_iter_
    assert_array_equal(new.relevance_, ref.relevance_)
    assert_allclose(new.dual_coef_, ref.dual_coef_, rtol=1e-8, atol=1e-8)
    assert_allclose(new.intercept_, ref.intercept_, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_second_start_with_no_room_left(seed, monkeypatch):
    """The second start re-admits up to ``exact_switch`` bases; when the model already holds that
    many it proposes none (a screen asked for the top 0 candidates raised a ValueError from
    ``np.partition``: make_moons(800), gamma 0.02, seed 6 with the defaults). Screened or not,
    the same fit."""
    X, y = make_moons(100, noise=0.3, random_state=seed)
    new, ref = _fits(X, y, monkeypatch, exact_switch=2)
    assert new.n_iter_ == ref.n_iter_
    assert_array_equal(new.relevance_, ref.relevance_)
    assert_allclose(new.dual_coef_, ref.dual_coef_, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("transposed", [False, True])
def test_product_sums_float32_runs_of_rows_in_float64(transposed, monkeypatch):
    """``Screen.product`` is the float64 sum of float32 products over runs of SCREEN_ROWS rows
    (the runs its error bound counts), and within that bound of the float64 product."""
    monkeypatch.setattr(ra, "SCREEN_ROWS", 100)
    rng = np.random.default_rng(1)
    n, b, m = 1050, 40, 12
    raw = rng.uniform(size=(n, b)) * rng.uniform(1e-3, 1e3, b)
    BP = rng.uniform(size=(n, m)) * rng.uniform(1e-3, 1e3, m)
    screen = ra.Screen([(BP, np.eye(m))], n)
    A32 = np.ascontiguousarray(raw.T if transposed else raw).astype(np.float32)
    got = screen.product(A32, 0, transposed)
    B32 = BP.astype(np.float32)
    ref = np.zeros((b, m))
    for a in range(0, n, 100):
        blk = A32[:, a : a + 100] if transposed else A32[a : a + 100].T
        ref += blk @ B32[a : a + 100]
    assert_array_equal(got, ref)
    exact = raw.T @ BP
    assert np.all(np.abs(got - exact) <= screen.gamma * got)
    assert screen.gamma < 1e-4  # runs of 100 rows, not one product of 1,050


def test_a_screen_stops_trying_after_blocks_it_cannot_bound(monkeypatch):
    """Blocks with negative entries (dense linear features) are converted to float32 for nothing:
    after SCREEN_MISSES of them a screen scores the rest in float64 without trying."""
    raw, scale, sq, q, models, _s = _rbf_problem(500, 15, 320, 2)
    raw = raw.copy()
    raw[3, :] = -1e-3  # every block has a negative entry
    tried = []
    real = ra.float32_copy_range
    monkeypatch.setattr(ra, "float32_copy_range", lambda A: tried.append(1) or real(A))
    out, screen = _score_both(raw, scale, sq, q[:, None], models, 1e12, monkeypatch, width=32)
    assert len(tried) == ra.SCREEN_MISSES == screen.misses
    for a, b in zip(out["f32"], out["f64"]):
        assert_array_equal(a, b)


def test_cache_float32_mirror_is_the_rounding_of_its_columns():
    """``CandidateColumns.float32`` of a range of cached columns is what the screen would compute
    from them (``float32_copy_range`` of the column-major block's transpose), a view of the
    mirror; columns filled by a later call are mirrored too; columns that are not a range of
    the cache, or not cached, give None."""
    rng = np.random.default_rng(5)
    n, M = 300, 40
    full = rng.uniform(size=(n, M)) * rng.uniform(1e-3, 1e3, M)
    full[7, 3] = 0.0
    cand = ra.CandidateColumns(lambda js: full[:, js].copy(order="C"), M, cache=True)
    assert cand.float32(np.arange(5), full[:, :5]) is None  # nothing cached yet
    cand.raw(np.arange(0, 20))
    cand.raw(np.arange(30, 40))
    for js in (np.arange(0, 20), np.arange(4, 9), np.arange(32, 40), np.array([11])):
        raw = cand.raw(js)
        got = cand.float32(js, raw)
        assert cand.float32(js, raw.copy(order="F")) is None  # not the cache's own columns
        assert raw.flags.f_contiguous
        ref = ra.float32_copy_range(np.ascontiguousarray(raw.T))
        assert_array_equal(got[0], ref[0])
        assert got[0].flags.c_contiguous and got[0].dtype == np.float32
        assert (got[1], got[2]) == (ref[1], ref[2])
    view = cand.raw(np.arange(0, 20))
    assert cand.float32(np.arange(15, 25), view) is None  # 20-24 not cached yet
    cand.raw(np.arange(20, 30))  # filled through the existing cache
    got = cand.float32(np.arange(15, 25), cand.raw(np.arange(15, 25)))
    assert_array_equal(got[0], full[:, 15:25].T.astype(np.float32))
    assert cand.float32(np.array([1, 3, 4]), view) is None  # not a range
    small = ra.CandidateColumns(lambda js: full[:, js], M, cache=True, cache_bytes=8 * n * M - 1)
    assert small.float32(np.arange(3), small.raw(np.arange(M))) is None  # no cache, no mirror


def test_pool_sweeps_round_from_the_mirror_with_the_same_fit(small_pool, monkeypatch):
    """The subset path's pool sweeps take their float32 blocks from the cache's mirror instead of
    rounding the cached columns at every sweep; the fit is the one that rounds them each time, to
    the last bit."""
    X, y = make_classification(
        n_samples=300, n_features=5, n_informative=4, n_redundant=0, random_state=4
    )
    monkeypatch.setattr(ra, "SCREEN_MIN_WORK", 0)
    rounded, mirrored = [], []
    real_copy, real_mirror = ra.float32_copy_range, ra.CandidateColumns.float32
    monkeypatch.setattr(ra, "float32_copy_range", lambda A: rounded.append(1) or real_copy(A))

    def mirror(self, js, raw):
        got = real_mirror(self, js, raw)
        mirrored.append(got is not None)
        return got

    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, fn in (("mirror", mirror), ("copy", lambda self, js, raw: None)):
            monkeypatch.setattr(ra.CandidateColumns, "float32", fn)
            rounded.clear()
            fits[key] = DQNSBLClassifier(gamma=0.2, kernel_basis="subset").fit(X, y), len(rounded)
    (new, n_new), (ref, n_ref) = fits["mirror"], fits["copy"]
    assert sum(mirrored) > 0 and n_new < n_ref
    assert new.n_iter_ == ref.n_iter_
    assert_array_equal(new.relevance_, ref.relevance_)
    assert_array_equal(new.dual_coef_, ref.dual_coef_)
    assert_array_equal(new.intercept_, ref.intercept_)
