"""Known answers, invariances and bad inputs of evalkit.metrics (small synthetic arrays, fast)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import scipy.linalg

import evalkit.metrics as metrics
from evalkit.errors import FeatureError
from evalkit.metrics import (
    KEY_FID,
    KEY_IS,
    KEY_PRECISION,
    KEY_RECALL,
    KEY_SFID,
    METRIC_KEYS,
    ConditioningWarning,
    StatisticsAccumulator,
    check_conditioning,
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    pairwise_distances,
    precision_recall,
    softmax,
)


def test_metric_keys():
    assert METRIC_KEYS == (KEY_IS, KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL)
    assert METRIC_KEYS == ("inception_score", "fid", "sfid", "precision", "recall")


# ---------------------------------------------------------------------------------------------
# Statistics

def test_feature_statistics_matches_numpy_reference():
    x = np.random.default_rng(0).normal(size=(300, 20)).astype(np.float32) * 3 + 1
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float32 and sigma.dtype == np.float64
    np.testing.assert_array_equal(mu, np.mean(x, axis=0))
    np.testing.assert_array_equal(sigma, np.cov(x, rowvar=False))
    # Non-float32 input is used as the evaluator's float32 activations.
    mu64, _ = feature_statistics(x.astype(np.float64))
    np.testing.assert_array_equal(mu64, mu)


@pytest.mark.parametrize("blocks", [[300], [1, 299], [7, 100, 64, 129], [50] * 6])
def test_statistics_accumulator_equals_batch(blocks):
    x = np.random.default_rng(1).normal(size=(300, 24)).astype(np.float32) * 2 + 5
    acc = StatisticsAccumulator()
    start = 0
    for b in blocks:
        acc.update(x[start:start + b])
        start += b
    mu, sigma = acc.finalize()
    ref_mu, ref_sigma = feature_statistics(x)
    np.testing.assert_array_equal(mu, ref_mu)  # same float32 reduction order
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-9, atol=1e-12 * np.abs(ref_sigma).max())


def test_statistics_accumulator_bad_input():
    acc = StatisticsAccumulator()
    acc.update(np.ones((1, 4)))
    with pytest.raises(FeatureError, match="at least 2 rows"):
        acc.finalize()
    with pytest.raises(FeatureError, match="expected 4 columns"):
        acc.update(np.ones((3, 5)))


def test_conditioning_warning():
    x = np.random.default_rng(2).normal(size=(10, 16)).astype(np.float32)
    with pytest.warns(ConditioningWarning, match="10 rows in 16 dimensions"):
        feature_statistics(x)
    with pytest.warns(ConditioningWarning):
        assert check_conditioning(16, 16) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_conditioning(17, 16) is True
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.warns(ConditioningWarning, match="n1"):
        frechet_distance(mu, sigma, mu, sigma, n1=3, n2=100)


# ---------------------------------------------------------------------------------------------
# Fréchet distance: closed forms

def _commuting_gaussians(d: int, seed: int):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b)))
    return mu1, s1, mu2, s2, closed


@pytest.mark.parametrize("exact", [False, True])
def test_frechet_closed_form_commuting(exact):
    mu1, s1, mu2, s2, closed = _commuting_gaussians(64, 3)
    assert frechet_distance(mu1, s1, mu2, s2, exact=exact) == pytest.approx(closed, rel=1e-10)


@pytest.mark.parametrize("exact", [False, True])
def test_frechet_closed_form_diagonal_and_scalar(exact):
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    value = frechet_distance(np.array([1.0, 0, 0]), np.diag(a), np.zeros(3), np.diag(b), exact=exact)
    # |mu|^2 + sum (sqrt a - sqrt b)^2 = 1 + 1 + 1 + 0
    assert value == pytest.approx(3.0, rel=1e-12)
    # 1-D statistics (atleast_1d / atleast_2d as the reference): N(0, 1) vs N(2, 4) -> 4 + (1 - 2)^2.
    assert frechet_distance(0.0, 1.0, 2.0, 4.0, exact=exact) == pytest.approx(5.0, rel=1e-12)


def test_frechet_fast_matches_exact_on_random_full_rank():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(400, 96)), rng.normal(size=(500, 96)) @ rng.normal(size=(96, 96)) * 0.3
    m1, s1 = feature_statistics(x)
    m2, s2 = feature_statistics(y)
    fast = frechet_distance(m1, s1, m2, s2)
    exact = frechet_distance(m1, s1, m2, s2, exact=True)
    assert fast == pytest.approx(exact, rel=1e-9)
    # Argument order matters for neither value, but the product order is the reference's (S1 @ S2).
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(fast, rel=1e-9)


def test_frechet_fast_singular_never_nan():
    """Rank-deficient covariances (N < D, dead units): finite, real, equal to the data-based value."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(30, 64)) + 0.5
    x[:, :10] = 0
    with pytest.warns(ConditioningWarning):
        m1, s1 = feature_statistics(x)
        m2, s2 = feature_statistics(y)
    value = frechet_distance(m1, s1, m2, s2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    trace_c = np.linalg.svd(xc.astype(np.float32).astype(np.float64) @ yc.astype(np.float32).astype(np.float64).T,
                            compute_uv=False).sum() / np.sqrt(19 * 29)
    d = m1.astype(np.float64) - m2
    expected = float(d @ d + np.trace(s1) + np.trace(s2) - 2 * trace_c)
    assert np.isfinite(value) and isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-6)


def test_frechet_identical_is_zero():
    mu1, s1, _, _, _ = _commuting_gaussians(32, 6)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-10
    assert abs(frechet_distance(mu1, s1, mu1, s1, exact=True)) < 1e-10


# ---------------------------------------------------------------------------------------------
# Exact path: scipy-version-robust sqrtm, eps retry, imaginary check

def test_sqrtm_wrapper_never_passes_disp(monkeypatch):
    real = scipy.linalg.sqrtm
    calls = []

    def strict_sqrtm(a, **kwargs):  # SciPy >= 1.18: no `disp`
        if kwargs:
            raise TypeError(f"sqrtm() got an unexpected keyword argument {next(iter(kwargs))!r}")
        calls.append(a.shape)
        return real(a)

    monkeypatch.setattr(scipy.linalg, "sqrtm", strict_sqrtm)
    mu1, s1, mu2, s2, closed = _commuting_gaussians(16, 7)
    assert frechet_distance(mu1, s1, mu2, s2, exact=True) == pytest.approx(closed, rel=1e-10)
    assert calls == [(16, 16)]


def test_sqrtm_wrapper_accepts_tuple_return(monkeypatch):
    real = scipy.linalg.sqrtm
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: (real(a), 1e-20))  # old (X, errest) style
    mu1, s1, mu2, s2, closed = _commuting_gaussians(16, 8)
    assert frechet_distance(mu1, s1, mu2, s2, exact=True) == pytest.approx(closed, rel=1e-10)
    assert metrics.sqrtm(np.diag([4.0, 9.0])) == pytest.approx(np.diag([2.0, 3.0]))


def test_exact_path_eps_retry_on_non_finite(monkeypatch):
    real = scipy.linalg.sqrtm
    seen = []

    def flaky(a):
        seen.append(a.copy())
        out = real(a)
        return np.full_like(out, np.nan) if len(seen) == 1 else out

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky)
    mu1, s1, mu2, s2, _ = _commuting_gaussians(8, 9)
    with pytest.warns(RuntimeWarning, match="adding 1e-06"):
        value = frechet_distance(mu1, s1, mu2, s2, exact=True)
    eye = np.eye(8) * 1e-6
    np.testing.assert_array_equal(seen[1], (s1 + eye).dot(s2 + eye))
    diff = mu1 - mu2
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(real(seen[1]).real)
    assert value == pytest.approx(expected, rel=1e-12)


def test_exact_path_imaginary_component(monkeypatch):
    real = scipy.linalg.sqrtm
    mu1, s1, mu2, s2, closed = _commuting_gaussians(8, 10)
    # Tiny imaginary parts (as the reference sees on singular products) are dropped ...
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: real(a) + 1e-9j)
    assert frechet_distance(mu1, s1, mu2, s2, exact=True) == pytest.approx(closed, rel=1e-10)
    # ... large ones on the diagonal raise with the max |imag|.
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: real(a) + 0.5j * np.eye(len(a)))
    with pytest.raises(FeatureError, match="imaginary component of 0.5"):
        frechet_distance(mu1, s1, mu2, s2, exact=True)


# ---------------------------------------------------------------------------------------------
# Fréchet distance: bad inputs

@pytest.mark.parametrize("exact", [False, True])
def test_frechet_bad_inputs(exact):
    mu, s = np.zeros(4), np.eye(4)
    cases = [
        ((np.zeros(3), s, mu, s), "4x4 covariance matching its mean|3x3"),
        ((mu, s, np.zeros(5), np.eye(5)), "mismatched statistics: sample mean has 4 dimensions, reference mean has 5"),
        ((mu, np.eye(3), mu, s), "sigma1 .*found shape \\(3, 3\\)"),
        ((np.array([0, np.nan, 0, 0]), s, mu, s), "mu1 .*1 non-finite value"),
        ((mu, s, mu, np.where(np.eye(4) > 0, np.inf, 0)), "sigma2 .*4 non-finite value\\(s\\) \\(0 NaN, 4 inf\\)"),
        ((np.zeros((2, 2)), s, mu, s), "mu1 .*1-D mean vector"),
    ]
    for args, pattern in cases:
        with pytest.raises(FeatureError, match=pattern):
            frechet_distance(*args, exact=exact)


def test_frechet_fast_rejects_non_covariances():
    mu = np.zeros(3)
    with pytest.raises(FeatureError, match="sigma1 .*symmetric"):
        frechet_distance(mu, np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), mu, np.eye(3))
    with pytest.raises(FeatureError, match="sigma2 .*positive semi-definite"):
        frechet_distance(mu, np.eye(3), mu, np.diag([1.0, -1.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# Inception Score

def test_inception_score_one_hot_and_uniform():
    k = 10
    one_hot = np.eye(k, dtype=np.float32)[np.arange(50) % k]
    assert inception_score(one_hot) == pytest.approx(k, rel=1e-6)
    assert inception_score(np.full((40, k), 1 / k, np.float32)) == pytest.approx(1.0, abs=1e-6)
    # All samples the same class: score 1.
    assert inception_score(np.eye(k, dtype=np.float32)[np.zeros(30, int)]) == pytest.approx(1.0, abs=1e-6)


def test_inception_score_splits_equal_weight():
    """Splits are consecutive; a final partial split weighs as much as a full one."""
    k = 8
    first = np.eye(k, dtype=np.float32)[np.arange(16) % k]  # score 8 (first split of 16 rows)
    second = np.eye(k, dtype=np.float32)[np.zeros(3, int)]  # partial split, one class: score 1
    probs = np.concatenate([first, second])
    assert inception_score(probs, split_size=16) == pytest.approx((8 + 1) / 2, rel=1e-6)
    # Matches the reference formula in float32 on positive probabilities.
    p = softmax(np.random.default_rng(0).normal(size=(25, 7)) * 3)
    parts = [p[i:i + 10] for i in range(0, 25, 10)]
    scores = [np.exp(np.mean(np.sum(q * (np.log(q) - np.log(np.mean(q, 0)[None])), 1))) for q in parts]
    assert inception_score(p, split_size=10) == float(np.mean(scores))


def test_softmax_rows_independent():
    logits = np.random.default_rng(1).normal(size=(9, 1008)).astype(np.float32) * 10
    p = softmax(logits)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(softmax(logits[4:5]), p[4:5])


def test_inception_score_bad_inputs():
    with pytest.raises(FeatureError, match="probs: expected class probabilities in \\[0, 1\\]"):
        inception_score(np.random.default_rng(0).normal(size=(10, 5)))
    with pytest.raises(FeatureError, match="row 1 summing to 0.5"):
        inception_score(np.array([[1.0, 0], [0.25, 0.25]]))
    with pytest.raises(FeatureError, match="probs: found 1 non-finite"):
        inception_score(np.array([[1.0, 0], [np.nan, 1]]))
    with pytest.raises(FeatureError, match="probs: expected a 2-D"):
        inception_score(np.ones(5) / 5)
    with pytest.raises(FeatureError, match="split_size"):
        inception_score(np.eye(3), split_size=0)


# ---------------------------------------------------------------------------------------------
# Precision / recall

def _clusters(n: int, d: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 0.5, size=(n, d)) + offset).astype(np.float32)


def test_precision_recall_identical_and_far_apart():
    x = _clusters(120, 32, 0)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # Same distribution, different draws: strictly between.
    p, r = precision_recall(x, _clusters(150, 32, 1))
    assert 0.3 < p < 1 and 0.3 < r < 1


def test_pairwise_distances_float16_semantics():
    u = np.array([[1.0, 2.0], [0.1, 0.3]], np.float32)
    v = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    d = pairwise_distances(u, v)
    assert d.dtype == np.float32
    assert d[0, 0] == 0.0  # identical rows
    np.testing.assert_array_equal(d.astype(np.float16).astype(np.float32), d)
    np.testing.assert_allclose(d, ((u[:, None] - v[None]) ** 2).sum(-1), rtol=2e-3, atol=2e-3)
    # Overflow anywhere in the block -> whole block recomputed in float32 (not float16-valued).
    big = np.array([[300.0, 0.0], [0.1, 0.3]], np.float32)
    d32 = pairwise_distances(big, v)
    np.testing.assert_allclose(d32, ((big[:, None] - v[None]) ** 2).sum(-1), rtol=1e-6)
    assert d32[1, 1] != np.float32(np.float16(d32[1, 1]))


def test_manifold_radii_counts_self_and_duplicates():
    x = np.array([[0.0], [1.0], [2.0], [4.0], [8.0]], np.float32)
    # k=3: sorted squared distances of row 0 are 0, 1, 4, 16, 64 -> 16.
    np.testing.assert_array_equal(manifold_radii(x, k=3), [16, 9, 4, 16, 49])
    dup = np.array([[0.0], [0.0], [0.0], [0.0], [5.0]], np.float32)
    np.testing.assert_array_equal(manifold_radii(dup, k=3), [0, 0, 0, 0, 25])


@pytest.mark.parametrize("scale", [1.0, 64.0])  # float16 path, then every block overflowing (float32)
def test_precision_recall_block_size_invariance(scale):
    ref, sample = _clusters(90, 16, 2) * scale, _clusters(70, 16, 3) * scale
    base = precision_recall(ref, sample)
    radii = manifold_radii(ref)
    for rb, cb in ((7, 13), (1, 90), (90, 4), (33, 33)):
        assert precision_recall(ref, sample, row_batch=rb, col_batch=cb) == base
        np.testing.assert_array_equal(manifold_radii(ref, row_batch=rb, col_batch=cb), radii)


def test_precision_recall_internal_tiling_invariance(monkeypatch):
    """Each emulated entry depends only on its two rows: tiny internal tiles give the same block."""
    pr = importlib.import_module("evalkit.metrics.precision_recall")  # the module, not the function

    u, v = _clusters(50, 24, 4), _clusters(40, 24, 5)
    full = pairwise_distances(u, v)
    monkeypatch.setattr(pr, "_TILE_ENTRIES", 7)
    np.testing.assert_array_equal(pairwise_distances(u, v), full)
    for i in (0, 17, 49):
        np.testing.assert_array_equal(pairwise_distances(u[i:i + 1], v), full[i:i + 1])


def test_precision_recall_torch_cpu_device_matches_numpy():
    pytest.importorskip("torch")
    ref, sample = _clusters(60, 16, 6), _clusters(50, 16, 7)
    u = ref[:20]
    np.testing.assert_array_equal(pairwise_distances(u, sample, device="cpu"), pairwise_distances(u, sample))
    np.testing.assert_array_equal(pairwise_distances(u * 64, sample * 64, device="cpu"),
                                  pairwise_distances(u * 64, sample * 64))
    assert precision_recall(ref, sample, device="cpu", row_batch=17) == precision_recall(ref, sample)


def test_precision_recall_bad_inputs():
    good = _clusters(10, 4, 8)
    bad_nan = good.copy()
    bad_nan[3, 2] = np.nan
    bad_nan[5, 1] = np.inf
    cases = [
        ((bad_nan, good), "ref_features: found 2 non-finite value\\(s\\) \\(1 NaN, 1 inf\\).*index \\(3, 2\\)"),
        ((good, bad_nan), "sample_features: found 2 non-finite"),
        ((good, _clusters(10, 5, 9)), "mismatched feature dimensions: sample_features has 5 columns, ref_features has 4"),
        ((good[0], good), "ref_features: expected a 2-D feature array .* found shape \\(4,\\)"),
        ((good[:1], good), "ref_features: expected at least 2 rows"),
        ((good[:3], good), "ref_features: expected more than k=3 rows"),
        ((good, np.array([["a"] * 4] * 10)), "sample_features: expected a numeric feature array"),
    ]
    for args, pattern in cases:
        with pytest.raises(FeatureError, match=pattern):
            precision_recall(*args)
    with pytest.raises(FeatureError, match="row_batch/col_batch"):
        precision_recall(good, good, row_batch=0)


def test_feature_statistics_bad_inputs():
    with pytest.raises(FeatureError, match="features: expected at least 2 rows .* found 1"):
        feature_statistics(np.ones((1, 3)))
    with pytest.raises(FeatureError, match="rank 3"):
        feature_statistics(np.ones((2, 3, 4)))
    with pytest.raises(FeatureError, match="features: found 1 non-finite value.*\\(0 NaN, 1 inf\\)"):
        feature_statistics(np.array([[1.0, np.inf], [0, 1], [1, 1]]))


def test_membership_is_inclusive():
    """A sample exactly at a reference radius is inside (the reference compares with <=)."""
    ref = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)  # radii (k=3): 9, 4, 4, 9
    sample = np.array([[-3.0], [100.0], [101.0], [102.0]], np.float32)  # -3 is at distance 9 of ref 0
    np.testing.assert_array_equal(manifold_radii(ref), [9, 4, 4, 9])
    precision, _ = precision_recall(ref, sample)
    assert precision == 0.25
