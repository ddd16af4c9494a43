"""KID, density/coverage and the bootstrap engine, against independent oracles (direct O(n²) formulas,
prdc 0.2, and the point-estimate functions applied to explicitly resampled rows)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from evalkit.errors import FeatureError
from evalkit.metrics import (
    bootstrap_density_coverage,
    bootstrap_frechet,
    bootstrap_inception_score,
    bootstrap_kid,
    bootstrap_precision_recall,
    bootstrap_weights,
    density_coverage,
    feature_statistics,
    frechet_distance,
    inception_score,
    kid,
    manifold_membership,
    manifold_radii,
    percentile_interval,
    precision_recall,
    softmax,
)


def _feats(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 0.25, size=(n, d)) + shift).astype(np.float32)


def _direct_mmd2(x, y):
    """Unbiased polynomial MMD² written out pair by pair (independent of evalkit's GEMM form)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


# ---------------------------------------------------------------------------------------------- KID

def test_kid_matches_direct_pairwise_formula():
    """KID mean/std equal a pair-by-pair unbiased MMD² over the same subset draws (RandomState(seed),
    sample subset then reference subset, without replacement). Tolerance 1e-10 relative: both are float64,
    only the summation order differs (~1e-14). Catches: the biased V-statistic (diagonal kept), a
    kernel without the /d or without +1, a wrong degree, std with ddof=1, swapped draw order."""
    x, y = _feats(300, 8, 0), _feats(250, 8, 1, shift=0.05)
    mean, std = kid(x, y, num_subsets=4, subset_size=30, seed=3)
    rng = np.random.RandomState(3)
    vals = []
    for _ in range(4):
        s = rng.choice(300, 30, replace=False)
        r = rng.choice(250, 30, replace=False)
        vals.append(_direct_mmd2(x[s], y[r]))
    assert mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert std == pytest.approx(np.std(vals), rel=1e-10)
    assert mean > 0  # shifted distributions: a real signal, not an empty comparison


def test_kid_identical_sets_closed_form():
    """Sample set == reference set (n rows). Subsets are drawn independently without replacement, so
    E[MMD²_u] = 2 (mean_{i≠j} K_ij - (1/n²) sum_{ij} K_ij) = (2/n)(mean_{i≠j} K_ij - mean_i K_ii), a
    small negative number. Subsets are i.i.d., so the mean over S of them lies within 4 std/sqrt(S) of it
    (false-failure probability < 1e-4). Catches the biased estimator (mean ~ +2 mean_i K_ii / m)."""
    x = _feats(400, 6, 2)
    s_count, m = 200, 40
    mean, std = kid(x, x, num_subsets=s_count, subset_size=m, seed=1)
    x64 = x.astype(np.float64)
    kmat = (x64 @ x64.T / x.shape[1] + 1) ** 3
    n = len(x)
    expected = 2 / n * ((kmat.sum() - np.trace(kmat)) / (n * (n - 1)) - np.trace(kmat) / n)
    assert abs(mean - expected) <= 4 * std / np.sqrt(s_count)
    assert std > 0


def test_kid_too_few_rows_says_what_to_pass():
    with pytest.raises(FeatureError, match=r"found 50 sample rows.*subset size 100.*--kid-subset-size 50"):
        kid(_feats(50, 4, 0), _feats(200, 4, 1), subset_size=100)
    with pytest.raises(FeatureError, match=r"found 60 reference rows"):
        kid(_feats(200, 4, 0), _feats(60, 4, 1), subset_size=100)


# ----------------------------------------------------------------------------- density / coverage

def _prdc(real, fake, k):
    prdc = pytest.importorskip("prdc")
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        return prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)


@pytest.mark.parametrize("case", ["shifted", "same", "quantized"])
def test_density_coverage_match_prdc(case):
    """Exact equality with prdc 0.2's compute_prdc. Both round the same float64 expression
    (-2 x·y + |x|²) + |y|² to float32 before the float32 sqrt, compare with strict '<' and take the radius
    as the (k+1)-th smallest distance including self (0); only the float64 dot-product summation order
    may differ, which changes a float32 distance only within ~1e-16 relative of a rounding boundary (none
    occur at these sizes). "quantized" features (multiples of 1/4) make many exact distance ties with the
    radii, so '<' versus '<=' and the self-distance handling are exercised. Small block_entries force many
    blocks. Catches: '<=' instead of '<', the k-th instead of (k+1)-th smallest, squared distances
    compared with unsquared radii of different rounding, sample radii used for coverage."""
    rng = np.random.default_rng(5)
    real = _feats(700, 24, 3)
    fake = {"shifted": _feats(500, 24, 4, shift=0.08), "same": _feats(500, 24, 4),
            "quantized": None}[case]
    if case == "quantized":
        real = (np.round(rng.gamma(2.0, 0.5, size=(700, 6)) * 4) / 4).astype(np.float32)
        fake = (np.round(rng.gamma(2.0, 0.5, size=(500, 6)) * 4) / 4).astype(np.float32)
    ref = _prdc(real, fake, 5)
    for block in (1 << 23, 5000):
        density, coverage = density_coverage(real, fake, k=5, block_entries=block)
        assert density == ref["density"]
        assert coverage == ref["coverage"]
    assert 0 < coverage < 1


def test_density_coverage_k_too_large():
    with pytest.raises(FeatureError, match=r"found 5 reference rows, but k=5"):
        density_coverage(_feats(5, 4, 0), _feats(20, 4, 1), k=5)


# ------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_weights_seeded_and_stratified():
    w = bootstrap_weights(1200, 7, seed=4)
    assert w.shape == (7, 1200) and (w.sum(axis=1) == 1200).all()
    assert np.array_equal(w, bootstrap_weights(1200, 7, seed=4))
    assert not np.array_equal(w, bootstrap_weights(1200, 7, seed=5))
    ws = bootstrap_weights(1200, 3, seed=4, split_size=500)
    assert (ws[:, :500].sum(1) == 500).all() and (ws[:, 1000:].sum(1) == 200).all()


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bootstrap_bad_replicate_count(bad):
    with pytest.raises(FeatureError, match="--bootstrap"):
        bootstrap_weights(100, bad)


@pytest.fixture(scope="module")
def sets():
    ref = _feats(900, 12, 10)
    sample = _feats(800, 12, 11, shift=0.15)
    logits = np.random.default_rng(12).normal(scale=3.0, size=(800, 30)).astype(np.float32)
    return ref, sample, softmax(logits)


def test_all_ones_weights_reproduce_point_estimates(sets):
    """Weights of all ones must give the point estimates: IS, precision, recall, density and coverage
    bit for bit (same float32 expression / same flags and integer counts); FID to 1e-9 relative (the
    weighted covariance is X_c^T X_c - N m m^T around a float64 shift instead of np.cov, same value up to
    float64 summation order); KID to 1e-10 (same kernels, quadratic form instead of sums)."""
    ref, sample, probs = sets
    ones = np.ones((1, len(sample)), np.int64)
    assert bootstrap_inception_score(probs, ones, split_size=300)[0] == inception_score(probs, split_size=300)
    mu_r, s_r = feature_statistics(ref)
    fid = frechet_distance(*feature_statistics(sample), mu_r, s_r)
    assert bootstrap_frechet(sample, mu_r, s_r, ones, block_rows=300)[0] == pytest.approx(fid, rel=1e-9)
    p, r = bootstrap_precision_recall(ref, sample, ones)
    assert (p[0], r[0]) == precision_recall(ref, sample)
    d, c = bootstrap_density_coverage(ref, sample, ones)
    assert (d[0], c[0]) == density_coverage(ref, sample)
    kb = bootstrap_kid(sample, ref, ones, num_subsets=3, subset_size=100, seed=2)[0]
    assert kb == pytest.approx(kid(sample, ref, 3, 100, 2)[0], rel=1e-10)


def test_replicate_equals_direct_computation_on_resampled_rows(sets):
    """One replicate vs the point-estimate functions applied to the explicitly resampled rows.
    FID: within the float32 mean's summation bound (the mean is float32 as in the reference: x_j * w_j and
    w_j repeated additions round differently; bound 2|mu - mu_ref| n eps |mu|, ~1e-4 here), and 1e-9
    relative on 1/8-quantised features (exact float32 sums). IS: 1e-5 relative (float32 means over 300 rows summed
    in a different order: ~log2(300) * 6e-8 per mean, amplified by exp). Precision, density, coverage: exact
    (they involve reference radii only). Recall: exact against manifold_membership with the full-set sample
    radii (the documented definition). KID: 1e-10 against the pair-by-pair formula on each subset's
    repeated rows. Catches: weights ignored, weighted mean without renormalising, covariance without the
    N m m^T correction or with 1/N, drawn rows of weight 0 not skipped properly, KID duplicates' self
    terms dropped, coverers of a row lost across blocks."""
    ref, sample, probs = sets
    w = bootstrap_weights(len(sample), 2, seed=9)[1:]
    idx = np.repeat(np.arange(len(sample)), w[0])
    ws = bootstrap_weights(len(sample), 2, seed=9, split_size=300)[1:]
    idx_s = np.repeat(np.arange(len(sample)), ws[0])  # order kept, so each split stays in place
    assert bootstrap_inception_score(probs, ws, split_size=300)[0] == pytest.approx(
        inception_score(probs[idx_s], split_size=300), rel=1e-5)
    mu_r, s_r = feature_statistics(ref)
    mu_d, s_d = feature_statistics(sample[idx])
    # float32 sums of n rows: |error of mu| <= n * eps32 * |mu| (sequential summation bound)
    delta = len(idx) * np.finfo(np.float32).eps * np.linalg.norm(mu_d)
    tol = float(2 * np.linalg.norm(mu_d - mu_r) * delta + delta ** 2)
    fid_b = bootstrap_frechet(sample, mu_r, s_r, w, block_rows=256)[0]
    assert abs(fid_b - frechet_distance(mu_d, s_d, mu_r, s_r)) <= tol
    # ... and to 1e-9 relative on features in multiples of 1/8, whose float32 sums are exact, so only the
    # float64 covariance summation order differs
    q = (np.round(sample * 8) / 8).astype(np.float32)
    assert bootstrap_frechet(q, mu_r, s_r, w, block_rows=256)[0] == pytest.approx(
        frechet_distance(*feature_statistics(q[idx]), mu_r, s_r), rel=1e-9)
    p, r = bootstrap_precision_recall(ref, sample, w)
    r_ref, r_smp = manifold_radii(ref), manifold_radii(sample)
    ref_in, sample_in = manifold_membership(ref, r_ref, sample[idx], r_smp[idx])
    assert p[0] == np.mean(sample_in) and r[0] == np.mean(ref_in)
    d, c = bootstrap_density_coverage(ref, sample, w)
    direct = _prdc(ref, sample[idx], 5)
    assert d[0] == direct["density"] and c[0] == direct["coverage"]
    kb = bootstrap_kid(sample, ref, w, num_subsets=2, subset_size=25, seed=4)[0]
    rng = np.random.RandomState(4)
    vals = []
    for _ in range(2):
        s = rng.choice(len(sample), 25, replace=False)
        rr = rng.choice(len(ref), 25, replace=False)
        vals.append(_direct_mmd2(sample[np.repeat(s, w[0][s])], ref[rr]))
    assert kb == pytest.approx(np.mean(vals), rel=1e-10)
    # the replicate really differs from the point estimate (the comparison is not vacuous)
    assert abs(fid_b - frechet_distance(*feature_statistics(sample), mu_r, s_r)) > 5 * tol


def test_intervals_contain_point_estimates_and_are_deterministic(sets):
    """With 800 samples in 12-d the 95% percentile intervals of IS, FID, precision, density and KID contain
    their point estimates and have positive width; recall/coverage replicates are <= the point estimate
    (documented low bias); the same seed gives the same replicates."""
    ref, sample, probs = sets
    b = 40
    w = bootstrap_weights(len(sample), b, seed=1)
    ws = bootstrap_weights(len(sample), b, seed=1, split_size=400)
    mu_r, s_r = feature_statistics(ref)
    p, r = bootstrap_precision_recall(ref, sample, w)
    d, c = bootstrap_density_coverage(ref, sample, w)
    pp, rr = precision_recall(ref, sample)
    dd, cc = density_coverage(ref, sample)
    checks = {
        "is": (bootstrap_inception_score(probs, ws, 400), inception_score(probs, 400)),
        "fid": (bootstrap_frechet(sample, mu_r, s_r, w), frechet_distance(*feature_statistics(sample), mu_r, s_r)),
        "precision": (p, pp), "density": (d, dd),
        "kid": (bootstrap_kid(sample, ref, w, 10, 200, 0), kid(sample, ref, 10, 200, 0)[0]),
    }
    for name, (reps, point) in checks.items():
        low, high = percentile_interval(reps)
        assert low <= point <= high and high > low, name
    # Recall/coverage replicates use the drawn rows only (a subset of the samples), so by definition they
    # never exceed the point estimate; they must still vary.
    for reps, point in ((r, rr), (c, cc)):
        assert (reps <= point).all() and reps.max() > reps.min()
    assert np.array_equal(bootstrap_frechet(sample, mu_r, s_r, bootstrap_weights(len(sample), b, seed=1)),
                          checks["fid"][0])


def test_bootstrap_bad_weights_and_confidence(sets):
    ref, sample, _ = sets
    mu_r, s_r = feature_statistics(ref)
    with pytest.raises(FeatureError, match=r"shape \[B, 800\]"):
        bootstrap_frechet(sample, mu_r, s_r, np.ones((2, 10), np.int32))
    with pytest.raises(FeatureError, match="confidence"):
        percentile_interval([1.0, 2.0], confidence=1.5)
