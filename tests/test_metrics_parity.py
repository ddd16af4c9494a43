"""Parity of evalkit.metrics with OpenAI's evaluator on the `evaluator_metrics` fixture.

The fixture holds synthetic Inception-like activations (rebuilt exactly here, sha256-checked) and
the numbers the reference evaluator (guided-diffusion 22e0df8, TensorFlow 2.21 CPU, scipy 1.17.1)
computed from them. Every tolerance is a stated bound, valid for any BLAS kernel and thread count:

* FID/sFID = mean term + trace part. The reference's mean term is a float32 BLAS dot of
  d = mu1 - mu2 (float32); its value depends on the kernel's summation order, bounded by
  |fl(d.d) - d.d| <= gamma_D * sum d_i^2 (gamma_D = D u / (1 - D u), u = 2^-24; Higham, Accuracy and
  Stability of Numerical Algorithms, 2nd ed., eq. 3.5). Both sides are checked against that bound; on
  the same machine evalkit's mean term is asserted equal, bit for bit, to d.dot(d) of this machine.
  The trace part tr S1 + tr S2 - 2 tr sqrt(S1 S2) is float64 linear algebra on D x D matrices whose
  backward errors are O(D eps) of the magnitudes involved (eps = 2^-52): it must agree to
  TRACE_C * D * eps * (tr S1 + tr S2 + 2 tr sqrt(S1 S2)) with TRACE_C = 16 (~1e-9 pool, 2e-9 spatial).
* Singular covariances: the reference's sqrtm adds sqrt(rounding noise) for each zero eigenvalue, a
  documented bias of <= 2e-5 relative (its sign is asserted); evalkit's noise-free value is checked
  against the nuclear norm of the centred data product to 1e-9.
* IS: same float32 numpy operations in the same order on probabilities that differ by a few float32
  ulps (TF's softmax vs numpy's): <= IS_ULPS = 3 float32 ulps, and the score is a float32 number.
  float64 arithmetic lands 23 ulps (split 5000) / 6.8 ulps (split 1000) away, so this fails it.
* Precision/recall: exact on the float32 path; on the float16 path evalkit emulates GPU half
  arithmetic and the fixture comes from TF's CPU half kernels, so distances may differ by a few
  float16 steps of the squared norms and memberships may flip only where a distance is that close
  to a radius (checked row by row).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from conftest import load_fixture
from evalkit.metrics import (
    ConditioningWarning,
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_membership,
    manifold_radii,
    pairwise_distances,
    precision_recall,
    softmax,
)

pytestmark = pytest.mark.parity

META, Z = load_fixture("evaluator_metrics")
RESULTS = META["results"]


def _activations(family: str, which: str) -> np.ndarray:
    """float32 activations of family pool/spatial and set ref/sample, rebuilt in int32 as documented."""
    codes = (Z[f"{family}_{which}_base"].astype(np.int32)[None, :]
             + Z[f"{family}_{which}_latent"].astype(np.int32) @ Z[f"{family}_basis"].astype(np.int32)
             + Z[f"{family}_{which}_noise"].astype(np.int32))
    lo, hi = Z[f"{family}_clip"]
    acts = np.clip(codes, lo, hi).astype(np.float32) / 16
    want = META["how_to_rebuild_features"]["sha256_of_float32_bytes"][f"{family}_{which}"]
    assert hashlib.sha256(acts.tobytes()).hexdigest() == want, f"rebuilt {family}_{which} differs"
    return acts


@pytest.fixture(scope="module")
def acts() -> dict[str, np.ndarray]:
    return {f"{f}_{w}": _activations(f, w) for f in ("pool", "spatial") for w in ("ref", "sample")}


@pytest.fixture(scope="module")
def stats(acts) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mu, sigma) per case side, computed once per module (covariances are the slow part)."""
    out = {k: feature_statistics(v) for k, v in acts.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConditioningWarning)
        out["ill_sample"] = feature_statistics(acts["pool_sample"][:400])
        out["ill_ref"] = feature_statistics(acts["pool_ref"][:500])
    # Zeroing feature columns 0..299 zeroes those entries of mu and rows/columns of sigma exactly.
    for side in ("sample", "ref"):
        mu, sigma = (a.copy() for a in out[f"ill_{side}"])
        mu[:300] = 0
        sigma[:300, :] = 0
        sigma[:, :300] = 0
        out[f"dead_{side}"] = (mu, sigma)
    return out


FULL_RANK = {"fid_pool": ("pool_sample", "pool_ref"), "fid_spatial": ("spatial_sample", "spatial_ref")}
ILL = {"fid_ill_conditioned": ("ill_sample", "ill_ref"),
       "fid_ill_conditioned_dead_units": ("dead_sample", "dead_ref")}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


U32 = 2.0 ** -24  # float32 unit roundoff
EPS64 = 2.0 ** -52  # float64 machine epsilon
TRACE_C = 16  # constant of the O(D eps) float64 bound on the trace part
IS_ULPS = 3  # float32 ulps between evalkit's and the reference's Inception Score


def _mean_term_bound(d: np.ndarray) -> tuple[float, float]:
    """(exact d.d of the float32 vector d, bound gamma_D * sum d_i^2 on any float32 dot's error)."""
    assert d.dtype == np.float32
    exact = float(np.sum(d.astype(np.float64) ** 2))  # float64 sum of exact squares: error ~1e-13 relative
    n = d.size
    return exact, n * U32 / (1 - n * U32) * exact


def _trace_part_tolerance(sigma1: np.ndarray, sigma2: np.ndarray, trace_sqrt: float) -> float:
    """TRACE_C * D * eps * (tr S1 + tr S2 + 2 tr sqrt(S1 S2)): the O(D eps) float64 error scale."""
    return TRACE_C * sigma1.shape[0] * EPS64 * (np.trace(sigma1) + np.trace(sigma2) + 2 * trace_sqrt)


def test_mean_term_is_the_float32_dot_of_float32_means(stats):
    """Same machine, same kernel: with zero covariances the distance IS the mean term, and it equals
    numpy's float32 d.dot(d) of d = mu1 - mu2 (float32) bit for bit. Catches a mean term computed in
    float64 (promoted means or a float64 dot), which differs by ~4e-8 relative here."""
    for s, r in FULL_RANK.values():
        mu1, mu2 = stats[s][0], stats[r][0]
        zero = np.zeros((mu1.size, mu1.size))
        d = mu1 - mu2
        assert frechet_distance(mu1, zero, mu2, zero) == float(d.dot(d))
        assert float(d.dot(d)) != float(np.sum(d.astype(np.float64) ** 2))  # float64 would be told apart


def test_statistics_match_reference(stats):
    mu_s, sigma_s = stats["pool_sample"]
    mu_r, sigma_r = stats["pool_ref"]
    assert mu_s.dtype == np.float32 and sigma_s.dtype == np.float64
    # mu is the reference's float32 reduction, bit for bit; sigma's diagonal to float64 rounding.
    np.testing.assert_array_equal(mu_s, Z["fid_pool_mu_sample"])
    np.testing.assert_array_equal(mu_r, Z["fid_pool_mu_ref"])
    np.testing.assert_allclose(np.diagonal(sigma_s), Z["fid_pool_sigma_diag_sample"], rtol=1e-12)
    np.testing.assert_allclose(np.diagonal(sigma_r), Z["fid_pool_sigma_diag_ref"], rtol=1e-12)
    res = RESULTS["fid_pool"]
    assert float(np.trace(sigma_s)) == pytest.approx(res["trace_sigma_self"], rel=1e-12)
    d = mu_s - mu_r
    exact, bound = _mean_term_bound(d)
    assert abs(res["mean_diff_sq"] - exact) <= bound and abs(float(d.dot(d)) - exact) <= bound


@pytest.mark.parametrize("case", sorted(FULL_RANK))
def test_fid_fast_full_rank(stats, case):
    s, r = FULL_RANK[case]
    """Mean term within the float32 dot bound on both sides, trace part within the float64 bound.

    Catches covariances used in float32 (moves the trace part by 5e-8 pool / 9e-9 spatial, over the
    1e-9 / 2e-9 bound) or any formula error; the reference's own sFID moves by ~2e-8 relative between
    OpenBLAS kernels through its float32 mean term, which is why the total is not compared tighter.
    """
    mu1, sigma1 = stats[s]
    mu2, sigma2 = stats[r]
    res = RESULTS[case]
    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(value, float)
    d = mu1 - mu2
    exact, bound = _mean_term_bound(d)
    assert abs(res["mean_diff_sq"] - exact) <= bound  # the reference's float32 dot, on its machine
    ours_trace = value - float(d.dot(d))  # evalkit's mean term is this machine's d.dot(d) (test above)
    ref_trace = res["fid"] - res["mean_diff_sq"]
    tol = _trace_part_tolerance(sigma1, sigma2, res["diag_trace_sqrtm_real"])
    assert abs(ours_trace - ref_trace) <= tol, (ours_trace - ref_trace, tol)
    assert abs(value - res["fid"]) <= tol + 2 * bound


@pytest.mark.parametrize("case", ["fid_ill_conditioned",
                                  pytest.param("fid_ill_conditioned_dead_units", marks=pytest.mark.slow)])
def test_fid_fast_ill_conditioned(stats, acts, case):
    """Singular covariances: the reference's sqrtm adds sqrt(rounding noise) of ~1650 zero eigenvalues
    (its tiny imaginary parts are the negative ones), inflating trace(C) by ~2e-5. The fast path returns
    the noise-free value: checked against the nuclear norm of the centred data product
    Xc Yc^T / sqrt((n1-1)(n2-1)), whose singular values are exactly the square roots of the non-zero
    eigenvalues of S1 S2, and against the reference within that documented bias."""
    s, r = ILL[case]
    value = frechet_distance(*stats[s], *stats[r])
    x = acts["pool_sample"][:400].astype(np.float64)
    y = acts["pool_ref"][:500].astype(np.float64)
    if case.endswith("dead_units"):
        x[:, :300] = 0
        y[:, :300] = 0
    xc, yc = x - x.mean(0), y - y.mean(0)
    trace_c = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
    mu1, s1 = stats[s]
    mu2, s2 = stats[r]
    d = mu1 - mu2
    from_data = float(d.dot(d) + np.trace(s1) + np.trace(s2) - 2 * trace_c)
    # Same float32 mean term on both sides of this comparison; the rest is float64 (O(D eps), 1e-9).
    assert _rel(value, from_data) <= 1e-9
    # Against the reference, trace parts (mean terms removed: each carries its own float32 dot error):
    # the reference's is smaller by twice its sqrt(noise) excess in tr sqrt(S1 S2), at most 2e-5 of its FID.
    res = RESULTS[case]
    bias = (value - float(d.dot(d))) - (res["fid"] - res["mean_diff_sq"])
    # The bias is real and positive (so this test notices an implementation that copies sqrt(noise)).
    assert 0 < bias <= 2e-5 * res["fid"], bias


@pytest.mark.slow
def test_fid_identical(stats):
    value = frechet_distance(*stats["pool_ref"], *stats["pool_ref"])
    # Reference: 8e-13; both are rounding noise around 0: the trace bound at traces of ~37 is ~1e-9.
    assert abs(value) < 1e-9
    assert abs(RESULTS["fid_identical"]["fid"]) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FULL_RANK) + sorted(ILL) + ["fid_identical"])
def test_fid_exact_path_matches_reference(stats, case):
    """The reference's own sqrtm path (2048-d sqrtm: ~10-60 s each on 2 cores)."""
    s, r = (FULL_RANK | ILL).get(case, ("pool_ref", "pool_ref"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = frechet_distance(*stats[s], *stats[r], exact=True)
    if case == "fid_identical":
        assert abs(value) < 1e-9
        return
    res = RESULTS[case]
    mu1, sigma1 = stats[s]
    mu2, sigma2 = stats[r]
    d = mu1 - mu2
    trace_diff = (value - float(d.dot(d))) - (res["fid"] - res["mean_diff_sq"])
    # Full rank: the float64 bound of the module docstring. Singular: scipy's sqrtm on a singular
    # product is ill-conditioned (sqrt(noise) terms of ~1e-8 each, their sum kernel-dependent): 1e-6.
    tol = (_trace_part_tolerance(sigma1, sigma2, res["diag_trace_sqrtm_real"]) if case in FULL_RANK
           else 1e-6 * res["fid"])
    assert abs(trace_diff) <= tol


@pytest.fixture(scope="module")
def probs(acts) -> np.ndarray:
    w = Z["softmax_w_codes"].astype(np.float32) / 2
    return softmax(acts["pool_sample"] @ w)


def test_softmax_matches_reference(probs):
    """float32 softmax vs TF's: the logits are exact here (features on a 1/16 grid times weights on a 1/2
    grid sum exactly in float32, on any BLAS), so only exp (<= 4 ulps for numpy's/TF's SIMD float32 exp),
    the row sum (pairwise/tree order: <= 11 ulps for 1008 terms) and the division (0.5 ulp) differ, per side:
    rtol 32 u."""
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs[:16], Z["is_softmax_first16"], rtol=32 * U32, atol=0)


def _is_float64(probs: np.ndarray, split_size: int) -> float:
    """The reference's IS formula evaluated in float64 (the deliberate bug the parity test must catch)."""
    p = probs.astype(np.float64)
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i:i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


@pytest.mark.parametrize("split_size", [5000, 1000])
def test_inception_score_matches_reference(probs, split_size):
    """Within IS_ULPS float32 ulps of the reference, and a float32 number.

    Bound: the reference evaluates IS with float32 numpy log/mean/sum/exp; evalkit runs the same operations in
    the same order, so on equal inputs it rounds identically. The inputs differ by a few ulps per entry (the
    softmax test), which moves the score by first order IS * mean_i sum_k dp_ik log(p_ik / m_k) with
    uncorrelated signs (far below an ulp) plus re-rounding of the last few float32 operations: <= 3 ulps
    (checked below by perturbing every probability). float32 arithmetic itself is ~23 ulps from the exact
    value, so the float64 formula fails this test (23 ulps at split 5000, 6.8 at 1000): caught deliberately
    by ``test_inception_score_tolerance_separates_float64``.
    """
    expected = RESULTS["inception_score"]["by_split_size"][str(split_size)]
    value = inception_score(probs, split_size=split_size)
    assert float(np.float32(value)) == value  # computed in float32, as the reference
    assert abs(value - expected) <= IS_ULPS * float(np.spacing(np.float32(expected)))


@pytest.mark.parametrize("split_size", [5000, 1000])
def test_inception_score_tolerance_separates_float64(probs, split_size):
    """The IS tolerance pins float32 semantics: the same formula in float64 is outside it, while
    probabilities moved by up to the largest softmax difference seen against TF stay inside it."""
    expected = RESULTS["inception_score"]["by_split_size"][str(split_size)]
    ulp = float(np.spacing(np.float32(expected)))
    assert abs(_is_float64(probs, split_size) - expected) > 2 * IS_ULPS * ulp
    worst = int(np.max(np.abs(probs[:16].view(np.int32) - Z["is_softmax_first16"].view(np.int32))))
    rng = np.random.default_rng(0)
    for _ in range(3):
        steps = rng.integers(-worst, worst + 1, size=probs.shape, dtype=np.int32)
        moved = (probs.view(np.int32) + steps).view(np.float32)  # positive floats: int steps are ulps
        assert abs(inception_score(moved, split_size) - expected) <= IS_ULPS * ulp


def test_inception_score_split_order_matters(probs):
    """Consecutive splits in file order: shuffling rows changes a multi-split score."""
    shuffled = probs[np.random.default_rng(0).permutation(len(probs))]
    assert abs(inception_score(shuffled, 1000) - inception_score(probs, 1000)) > 1e-3


def test_distance_blocks_match_reference(acts):
    """5x5 DistanceBlock outputs: float16-quantised; TF-on-CPU half arithmetic differs from the GPU
    semantics evalkit emulates by at most 2 float16 ulps (ulp 0.0625 at 64-128, 16 at 16k-32k)."""
    u, v = acts["pool_ref"][:5], acts["pool_ref"][5:10]
    for scale, key, ulp in ((1, "distblock_pool_ref0to5_vs_ref5to10", 0.0625),
                            (16, "distblock_x16_ref0to5_vs_ref5to10", 16.0)):
        mine = pairwise_distances(u * scale, v * scale)
        ref = Z[key]
        np.testing.assert_array_equal(mine.astype(np.float16).astype(np.float32), mine)  # fp16 path
        assert np.abs(mine - ref).max() <= 4 * ulp
        exact = ((u * scale).astype(np.float64)[:, None, :] - (v * scale).astype(np.float64)[None]) ** 2
        assert np.abs(mine - exact.sum(-1)).max() <= 4 * ulp


def test_precision_recall_float32_fallback_exact(acts):
    """x16 features overflow float16 -> float32 blocks: radii, memberships and P/R all exact."""
    ref, sample = acts["pool_ref"] * 16, acts["pool_sample"] * 16
    radii_ref = manifold_radii(ref)
    radii_sample = manifold_radii(sample)
    np.testing.assert_array_equal(radii_ref, Z["pr_x16_radii_ref"][:, 0])
    np.testing.assert_array_equal(radii_sample, Z["pr_x16_radii_sample"][:, 0])
    ref_in, sample_in = manifold_membership(ref, radii_ref, sample, radii_sample)
    np.testing.assert_array_equal(ref_in, Z["pr_x16_ref_in_sample_manifold"])
    np.testing.assert_array_equal(sample_in, Z["pr_x16_sample_in_ref_manifold"])
    res = RESULTS["prec_recall_pool_x16"]
    assert (float(sample_in.mean()), float(ref_in.mean())) == (res["precision"], res["recall"])


def _ulp16(x: np.ndarray) -> np.ndarray:
    """float16 step at |x| (float64 result)."""
    return np.spacing(np.abs(x).astype(np.float16)).astype(np.float64)


def test_precision_recall_float16_path(acts):
    """Float16 path: evalkit emulates GPU half precision; the fixture came from TF on a CPU.

    Bound: both round the same float16 inputs and squares; they differ only in how the squared norms and
    U V^T are accumulated before rounding to float16, and in the two float16 roundings after them. Each of
    nu, 2 u.v, nv is <= nu + nv, so every distance differs by <= 5 float16 steps of nu + nv, and so does
    every radius (it is one of the distances). A membership can therefore differ only where some distance is
    within that margin of a radius: asserted row by row. Portability: features here lie on a 1/16 grid, so
    evalkit's float16 products accumulate exactly in float64 whatever the BLAS kernel or thread count; its
    memberships, and their 22/2500 and 43/2400 differences from TF-on-CPU, are the same on every machine,
    so the counts (1% / 2%) and |P - P_ref|, |R - R_ref| <= 0.005 are not tied to the machine that measured
    them. Catches an exact float64 distance (P/R of the float64_exact_* fields) and a wrong radius rank.
    """
    ref, sample = acts["pool_ref"], acts["pool_sample"]
    precision, recall = precision_recall(ref, sample)
    res = RESULTS["prec_recall_pool"]
    assert abs(precision - res["precision"]) <= 0.005
    assert abs(recall - res["recall"]) <= 0.005
    # Sanity: the float16 emulation is measurably different from exact float64 distances.
    assert (precision, recall) != (res["float64_exact_precision"], res["float64_exact_recall"])
    half = lambda x: x.astype(np.float16).astype(np.float64)  # noqa: E731
    n_ref = (half(ref) ** 2).sum(1)
    n_sample = (half(sample) ** 2).sum(1)
    radii_ref, radii_sample = manifold_radii(ref), manifold_radii(sample)
    diff = np.abs(radii_ref - Z["pr_pool_radii_ref"][:, 0])
    assert (diff <= 5 * _ulp16(2 * n_ref.max())).all()
    ref_in, sample_in = manifold_membership(ref, radii_ref, sample, radii_sample)
    assert (ref_in != Z["pr_pool_ref_in_sample_manifold"]).sum() <= 0.01 * len(ref)
    assert (sample_in != Z["pr_pool_sample_in_ref_manifold"]).sum() <= 0.02 * len(sample)
    assert (float(sample_in.mean()), float(ref_in.mean())) == (precision, recall)
    # Every differing membership lies where the distance bound makes the decision ambiguous.
    d = pairwise_distances(sample, ref).astype(np.float64)  # [sample, ref]
    margin = d - radii_ref[None, :]
    delta = 5 * _ulp16(n_sample[:, None] + n_ref[None, :]) + 5 * _ulp16(2 * n_ref.max())
    ambiguous = ~((margin < -delta).any(1) | (margin > delta).all(1))
    flipped = sample_in != Z["pr_pool_sample_in_ref_manifold"]
    assert flipped.any() and not (flipped & ~ambiguous).any()
