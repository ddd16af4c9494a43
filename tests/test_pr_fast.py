"""The fast precision/recall path equals the exact float64 emulation entry by entry.

Oracle: ``exact=True`` (the previous implementation: every distance block summed in float64, then
the float16 chain), independent of the fast path's filter, bounds and candidate logic.
"""

from __future__ import annotations

import numpy as np
import pytest

import evalkit.metrics._pr_fast as fast
from evalkit.metrics import manifold_membership, manifold_radii, pairwise_distances, precision_recall

pytest.importorskip("torch")


def _gamma(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).gamma(2.0, scale, size=(n, d)) + shift).astype(np.float32)


def _assert_same(ref, sample, k=3):
    """Radii, memberships and P/R of the fast path equal the exact path's."""
    r_ref, r_sample = manifold_radii(ref, k=k, exact=True), manifold_radii(sample, k=k, exact=True)
    np.testing.assert_array_equal(manifold_radii(ref, k=k), r_ref)
    np.testing.assert_array_equal(manifold_radii(sample, k=k), r_sample)
    want = manifold_membership(ref, r_ref, sample, r_sample, exact=True)
    got = manifold_membership(ref, r_ref, sample, r_sample)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert precision_recall(ref, sample, k=k) == precision_recall(ref, sample, k=k, exact=True)


@pytest.mark.parametrize("tile", [4096, 23, 4])
def test_fast_equals_exact_any_tiling(monkeypatch, tile):
    """Bug caught: dropping the transposed (column) candidates of off-diagonal self tiles makes
    radii too large (fails at tile 23 and 4); so does thresholding with the wrong tile's bound."""
    monkeypatch.setattr(fast, "TILE", tile)
    _assert_same(_gamma(130, 48, 0), _gamma(110, 48, 1, shift=0.05))


def test_fast_equals_exact_signed_and_duplicates(monkeypatch):
    """Signed features (no nonneg shortcut) and exact duplicates (ties at the radius, zero radii)."""
    monkeypatch.setattr(fast, "TILE", 16)
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(90, 24)).astype(np.float32)
    ref[40:50] = ref[0]  # 11 identical rows: radius 0 and many ties
    sample = np.concatenate([ref[:30], rng.normal(size=(60, 24)).astype(np.float32)])
    _assert_same(ref, sample)


def test_fast_near_duplicate_tiles_fall_back_exactly(monkeypatch):
    """Many near-identical rows exceed the candidate budget: those tiles are evaluated exactly."""
    monkeypatch.setattr(fast, "TILE", 32)
    monkeypatch.setattr(fast, "CAND_PER_ROW", 2)
    base = _gamma(1, 16, 4)
    ref = base + _gamma(100, 16, 5, scale=1e-3)
    sample = base + _gamma(80, 16, 6, scale=1e-3)
    _assert_same(ref, sample)


def _planted(n_pairs: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (u_i, v_i) whose exact emulated distance sits on float16 rounding boundaries."""
    rng = np.random.default_rng(seed)
    u = (rng.integers(0, 64, size=(n_pairs, d)) / 16).astype(np.float32)  # exact in float16
    v = u.copy()
    # v differs from u in one coordinate by delta: d(u, v) = delta^2 computed through nu + nv - 2m,
    # and m, nu, nv land on float16 midpoints/boundaries for many pairs (coarse grid, ties).
    v[:, 0] += (rng.integers(1, 9, size=n_pairs) / 8).astype(np.float32)
    return u, v


def test_planted_rounding_boundaries_and_radius_ties():
    """Entries on float16 rounding boundaries and exactly at a radius (<= ties).

    Features on a 1/16 grid make sums of products exact dyadic numbers, so many entries of the
    float16 chain are exact ties (round half to even) and many distances equal radii exactly.
    Bug caught: computing the candidates' exact values with float32 sums (instead of float64),
    or using ``<`` instead of ``<=``, changes radii/memberships here.
    """
    u, v = _planted(200, 64, 7)
    d_fast = fast.exact_pairs(*_sets(u, v), np.arange(200), np.arange(200))
    np.testing.assert_array_equal(d_fast, np.diag(pairwise_distances(u, v)))
    # All 40,000 pairs of 2048-d Inception-like rows: a float32 sum of the products is a few float32
    # ulps off, which moves the float16 rounding of m for ~1 in 10^3 pairs; the float64 sum matches.
    x, y = _gamma(200, 2048, 14, scale=0.25), _gamma(200, 2048, 15, scale=0.25)
    ii, jj = np.divmod(np.arange(200 * 200), 200)
    np.testing.assert_array_equal(fast.exact_pairs(*_sets(x, y), ii, jj), pairwise_distances(x, y).reshape(-1))
    ref = np.concatenate([u, v])
    sample = np.concatenate([v[:100], u[100:]]) + np.float32(1 / 16)
    r = manifold_radii(ref, exact=True)
    # many memberships are decided by an exact tie d == radius
    d = pairwise_distances(ref, sample)
    assert (d == r[:, None]).sum() > 10
    _assert_same(ref, sample)


def _sets(*arrays):
    import torch

    return [fast.FeatureSet(torch, torch.device("cpu"), a) for a in arrays]


def test_norms_equal_exact_path():
    """The fast path's float16 norms are the exact path's (values spanning subnormal to large)."""
    from evalkit.metrics.precision_recall import _NumpyTiles

    x = _gamma(50, 300, 16) * np.float32(3.0) ** np.random.default_rng(17).integers(-12, 3, size=(50, 300))
    (a,) = _sets(x.astype(np.float32))
    np.testing.assert_array_equal(a.norms, _NumpyTiles().norms(x.astype(np.float32), True))


def test_bound_holds_and_is_not_vacuous():
    """|emulated d - G| <= E0 + c|G| on every entry of a tile, and the bound is < 0.5% of d.

    Bug caught: dropping the float16 rounding terms (e2, e3) from E0 makes some entries exceed it.
    """
    import torch

    x, y = _gamma(300, 512, 8), _gamma(200, 512, 9, shift=0.1)
    a, b = _sets(x, y)
    g = (a.L @ b.right_t(0, b.n)).double().numpy()
    e0 = fast.tile_bound(float(a.absn.max()), float(b.absn.max()), float(a.norms.max()), float(b.norms.max()),
                         a.kp, True)
    d = pairwise_distances(x, y).astype(np.float64)
    assert np.all(fast.lower(g, e0) <= d) and np.all(d <= fast.upper(g, e0))
    assert e0 < 0.005 * np.median(d)
    # float32 thresholds are on the safe side: every d <= t passes the candidate test, every entry
    # passing the sure test has d <= t, and both tests are informative (neither all nor nothing)
    t = np.float32(np.quantile(d, 0.1))
    cand = g <= fast.may_be_le(np.array([t]), e0)[0]
    sure = g <= fast.surely_le(np.array([t]), e0)[0]
    assert np.all(cand[d <= t]) and np.all(d[sure] <= t)
    assert 0 < sure.sum() < (d <= t).sum() <= cand.sum() < d.size
    before = torch.get_float32_matmul_precision()
    precision_recall(x[:20], y[:20])
    assert torch.get_float32_matmul_precision() == before  # the fast path restores the setting


def test_overflowing_features_use_exact_path():
    """Squared norms beyond the float16 range: the fast path declines, results equal exact=True
    (including the reference's per-block float32 fallback)."""
    ref, sample = _gamma(60, 16, 10) * 64, _gamma(50, 16, 11) * 64
    a, b = _sets(ref, sample)
    assert not fast.safe(a, b)
    assert precision_recall(ref, sample, row_batch=7) == precision_recall(ref, sample, row_batch=7, exact=True)


def test_bound_violation_falls_back(monkeypatch):
    """A GEMM that breaks the float32 bound is detected and the exact path is used."""
    monkeypatch.setattr(fast, "spot_check", lambda *a, **k: False)
    ref, sample = _gamma(40, 8, 12), _gamma(30, 8, 13)
    with pytest.warns(RuntimeWarning, match="error bound"):
        got = precision_recall(ref, sample)
    assert got == precision_recall(ref, sample, exact=True)
