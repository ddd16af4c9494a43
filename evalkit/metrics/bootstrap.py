"""Bootstrap confidence intervals for every metric, from features already extracted.

A replicate resamples the SAMPLE rows with replacement (the reference is held fixed) and is represented
by integer counts w (how often each of the N sample rows is drawn, sum N): no features are re-extracted
and no resampled copy of the features is made. Percentile intervals are the (1-c)/2 and (1+c)/2
quantiles (``np.quantile``, linear interpolation) of the replicate values.

Definitions per metric (each replicate value equals the metric computed on the explicitly resampled rows,
except where stated):

* FID / sFID: weighted mean (float32, as the reference's mean) and covariance ( ``(X_c^T diag(w) X_c - N m m^T) / (N-1)``,
  float64, one GEMM per replicate over the drawn rows only, in row blocks) then ``frechet_distance``.
  Equal to the explicit computation up to summation order (float32 for the mean, as the reference).
* IS: rows are resampled WITHIN each consecutive split of ``split_size`` rows (``bootstrap_weights`` with
  ``split_size``), so every resampled split has the size of the original and the estimator's splits are
  the same; the per-split score uses the weights in the reference's float32 expression. Weights of all
  ones give the point estimate bit for bit; other weights agree with the explicit computation to float32
  rounding of the means.
* precision: weighted mean of the per-sample flags "inside the reference manifold" (exact: a sample's flag
  does not depend on other samples).
* recall: reference i counts as recalled when at least one DRAWN sample has i inside its k-NN ball, with
  the sample radii computed once on the full sample set. (Radii recomputed on a resample would shrink to
  0 around every duplicated row, a degenerate artefact of resampling, so they are held fixed: the
  standard cheap choice.) Since a resample holds only ~63% distinct rows, a replicate is never above the
  point estimate and is biased low, by how much depends on how many samples cover each reference (little
  for coverage, whose reference balls hold ~k samples each; more for recall when few sample balls reach a
  reference): read recall/coverage intervals as spread, not as centred on the point estimate.
* density: weighted mean of per-sample ball counts (exact: the reference radii do not involve samples).
* coverage: reference i is covered when at least one DRAWN sample is inside its ball (exact).
* KID: the point estimate's subsets are kept; in replicate b each subset holds its sample rows with their
  counts w (about subset_size rows, some repeated, some absent), the reference subsets unchanged, and the
  unbiased MMD² is computed on that multiset (exact: equal to the direct estimator on the repeated rows).
  Rows shared by several subsets keep one count, so the replicate respects the subsets' overlap.

For recall and coverage, each reference keeps at most 64 of its covering samples (the first in sample
order); a reference with more is counted when one of those 64 is drawn. It can differ from the exact rule
only if none of those 64 samples is drawn, which has probability about e^-64 (1.6e-28) per replicate.
"""

from __future__ import annotations

import numpy as np

from evalkit.errors import FeatureError
from evalkit.metrics._validate import check_features, check_same_dim
from evalkit.metrics.density_coverage import DC_NEAREST_K, MAX_COVERERS, _record_coverers, density_coverage_rows
from evalkit.metrics.frechet import frechet_distance
from evalkit.metrics.inception_score import IS_SPLIT_SIZE, _check_probs
from evalkit.metrics.kid import KID_NUM_SUBSETS, KID_SEED, KID_SUBSET_SIZE, kid_subsets, polynomial_kernel
from evalkit.metrics.precision_recall import manifold_radii, pairwise_distances

BOOTSTRAP_CONFIDENCE = 0.95
PR_NEAREST_K = 3  # the ADM evaluator's neighbourhood size for precision/recall
PR_BLOCK = 10000  # the ADM evaluator's distance-block size (float16 fallback granularity)
FRECHET_BLOCK_ROWS = 4096


def check_num_replicates(num_replicates) -> int:
    """Positive integer B, or FeatureError naming the ``--bootstrap`` option."""
    try:
        b = int(num_replicates)
    except (TypeError, ValueError):
        b = None
    if b is None or b != num_replicates or b < 1:
        raise FeatureError(f"bootstrap: expected a positive number of replicates, got {num_replicates!r} "
                           f"(pass --bootstrap B with B >= 1, e.g. 100)")
    return b


def bootstrap_weights(num_rows: int, num_replicates: int, seed: int = 0,
                      split_size: int | None = None) -> np.ndarray:
    """Resampling counts: int32 [B, N], each row sums to N (multinomial, equal probabilities).

    Args:
        num_rows: N, the number of sample rows.
        num_replicates: B >= 1.
        seed: seed of ``np.random.default_rng`` (the same seed gives the same weights).
        split_size: None resamples over all rows; an integer resamples within each consecutive block of
            that many rows (each block keeps its size), as the Inception Score's splits need.
    """
    b = check_num_replicates(num_replicates)
    n = int(num_rows)
    if n < 1:
        raise FeatureError(f"bootstrap: expected at least one sample row, found {num_rows}")
    rng = np.random.default_rng(int(seed))
    step = n if split_size is None else int(split_size)
    if step < 1:
        raise FeatureError(f"bootstrap: expected a positive split size, got {split_size}")
    out = np.empty((b, n), np.int32)
    for s0 in range(0, n, step):
        size = min(step, n - s0)
        out[:, s0:s0 + size] = rng.multinomial(size, np.full(size, 1.0 / size), size=b)
    return out


def _check_weights(weights, num_rows: int) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != num_rows or not np.issubdtype(w.dtype, np.integer):
        raise FeatureError(f"bootstrap weights: expected integer counts of shape [B, {num_rows}], "
                           f"found {w.dtype} {tuple(w.shape)}")
    if w.shape[0] < 1:
        raise FeatureError("bootstrap weights: expected at least one replicate, found 0 "
                           "(pass --bootstrap B with B >= 1)")
    if (w < 0).any():
        raise FeatureError("bootstrap weights: expected non-negative counts, found a negative one")
    return w


def percentile_interval(replicates, confidence: float = BOOTSTRAP_CONFIDENCE) -> tuple[float, float]:
    """(low, high) percentile interval of replicate values at the given confidence (0 < c < 1)."""
    r = np.asarray(replicates, np.float64).reshape(-1)
    if not 0 < float(confidence) < 1:
        raise FeatureError(f"bootstrap: expected a confidence level in (0, 1), got {confidence}")
    if r.size < 1:
        raise FeatureError("bootstrap: expected at least one replicate value, found none")
    alpha = (1 - float(confidence)) / 2
    low, high = np.quantile(r, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_frechet(features, mu_ref, sigma_ref, weights, block_rows: int = FRECHET_BLOCK_ROWS) -> np.ndarray:
    """float64 [B] Fréchet distances of the weighted sample statistics to (mu_ref, sigma_ref).

    Args:
        features: [N, D] sample features (pool for FID, spatial for sFID).
        mu_ref, sigma_ref: reference statistics (as for ``frechet_distance``).
        weights: int [B, N] counts (``bootstrap_weights``).
        block_rows: rows per GEMM block (memory: ~2 blocks of block_rows × D float64 plus D × D).
    """
    x = check_features(features, "features")
    w_all = _check_weights(weights, x.shape[0])
    n, dim = x.shape
    shift = x.mean(axis=0, dtype=np.float64)
    out = np.empty(w_all.shape[0])
    for b, w in enumerate(w_all):
        total = float(w.sum())
        if total < 2:
            raise FeatureError(f"bootstrap weights: replicate {b} draws {total:g} rows; a covariance needs >= 2")
        sum32 = np.zeros((1, dim), np.float32)
        s1 = np.zeros(dim)
        gram = np.zeros((dim, dim))
        for r0 in range(0, n, int(block_rows)):
            wb = w[r0:r0 + int(block_rows)]
            drawn = wb > 0  # rows with count 0 contribute nothing: skip them (~37% of rows)
            xd = x[r0:r0 + int(block_rows)][drawn]
            # float32 row-by-row sum as the reference's np.mean (adding a skipped row's 0 is exact)
            sum32 = np.add.reduce(np.concatenate([sum32, xd * wb[drawn].astype(np.float32)[:, None]]),
                                  axis=0, keepdims=True)
            xc = xd.astype(np.float64) - shift
            wd = wb[drawn].astype(np.float64)
            s1 += wd @ xc
            z = xc * np.sqrt(wd)[:, None]
            gram += z.T @ z
        m = s1 / total
        sigma = (gram - total * np.outer(m, m)) / (total - 1)
        sigma = (sigma + sigma.T) / 2
        mu = sum32[0] / np.float32(total)
        out[b] = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    return out


def bootstrap_inception_score(probs, weights, split_size: int = IS_SPLIT_SIZE) -> np.ndarray:
    """float64 [B] Inception Scores with per-row counts, split by split as ``inception_score``.

    ``weights`` should resample within splits (``bootstrap_weights(N, B, seed, split_size)``); each split's
    score uses ``sum_i w_i p_i / n_s`` as marginal and ``sum_i w_i KL_i / n_s`` as mean KL (n_s the split's
    total count), in float32 like the reference; all-ones weights reproduce ``inception_score`` exactly.
    """
    p = _check_probs(probs)
    w_all = _check_weights(weights, p.shape[0])
    split_size = int(split_size)
    if split_size < 1:
        raise FeatureError(f"split_size: expected a positive number of rows per split, got {split_size}")
    out = np.empty(w_all.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = [np.log(p[s:s + split_size]) for s in range(0, p.shape[0], split_size)]
    for b, w in enumerate(w_all):
        scores = []
        for i, s0 in enumerate(range(0, p.shape[0], split_size)):
            part = p[s0:s0 + split_size]
            wf = w[s0:s0 + split_size].astype(np.float32)
            scale = np.float32(part.shape[0]) / np.float32(wf.sum())
            marg = np.expand_dims(np.mean(part * wf[:, None], 0) * scale, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                kl = part * (logs[i] - np.log(marg))
            kl = np.where(part > 0, kl, np.float32(0))
            kl = np.mean(np.sum(kl, 1) * wf) * scale
            scores.append(np.exp(kl))
        out[b] = float(np.mean(scores))
    return out


def _any_drawn(coverers: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """bool [N]: whether any listed coverer (-1 = none) is drawn."""
    valid = coverers >= 0
    return (drawn[np.where(valid, coverers, 0)] & valid).any(axis=1)


def bootstrap_precision_recall(ref_features, sample_features, weights, k: int = PR_NEAREST_K,
                               ref_radii=None, sample_radii=None) -> tuple[np.ndarray, np.ndarray]:
    """(precision [B], recall [B]) for the replicate counts ``weights`` (definitions in the module doc).

    Uses the public ``manifold_radii`` (skipped when the squared radii are passed) and
    ``pairwise_distances`` on the evaluator's 10,000 × 10,000 block grid, so the membership flags are the
    ones ``precision_recall`` computes; all-ones weights give its values exactly.
    """
    ref = check_features(ref_features, "ref_features")
    sample = check_features(sample_features, "sample_features")
    check_same_dim(sample, ref, "sample_features", "ref_features")
    w_all = _check_weights(weights, sample.shape[0])
    r_ref = np.asarray(manifold_radii(ref, k) if ref_radii is None else ref_radii, np.float32).reshape(-1)
    r_smp = np.asarray(manifold_radii(sample, k) if sample_radii is None else sample_radii,
                       np.float32).reshape(-1)
    if r_ref.shape[0] != ref.shape[0] or r_smp.shape[0] != sample.shape[0]:
        raise FeatureError(f"radii: expected {ref.shape[0]} reference and {sample.shape[0]} sample radii, "
                           f"found {r_ref.shape[0]} and {r_smp.shape[0]}")
    sample_in = np.zeros(sample.shape[0], bool)
    coverers = np.full((ref.shape[0], MAX_COVERERS), -1, np.int32)
    count = np.zeros(ref.shape[0], np.int64)
    for r0 in range(0, ref.shape[0], PR_BLOCK):
        rows = ref[r0:r0 + PR_BLOCK]
        for c0 in range(0, sample.shape[0], PR_BLOCK):
            d = pairwise_distances(rows, sample[c0:c0 + PR_BLOCK])
            for t in range(0, d.shape[0], 1000):  # bound the boolean temporaries
                dt = d[t:t + 1000]
                sample_in[c0:c0 + d.shape[1]] |= (dt <= r_ref[r0 + t:r0 + t + dt.shape[0], None]).any(axis=0)
                _record_coverers(dt <= r_smp[None, c0:c0 + d.shape[1]], r0 + t, c0, coverers, count)
            del d
    flags = sample_in.astype(np.float64)
    precision = (w_all @ flags) / w_all.sum(axis=1)
    recall = np.array([np.mean(_any_drawn(coverers, w > 0)) for w in w_all])
    return precision, recall


def bootstrap_density_coverage(ref_features, sample_features, weights,
                               k: int = DC_NEAREST_K) -> tuple[np.ndarray, np.ndarray]:
    """(density [B], coverage [B]) for the replicate counts ``weights`` (definitions in the module doc)."""
    sample = check_features(sample_features, "sample_features", min_rows=1)
    w_all = _check_weights(weights, sample.shape[0])
    rows = density_coverage_rows(ref_features, sample, k)
    density = (1.0 / rows.k) * ((w_all @ rows.sample_counts.astype(np.float64)) / w_all.sum(axis=1))
    coverage = np.array([np.mean(_any_drawn(rows.coverers, w > 0)) for w in w_all])
    return density, coverage


def bootstrap_kid(sample_features, ref_features, weights, num_subsets: int = KID_NUM_SUBSETS,
                  subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> np.ndarray:
    """float64 [B] KID means for the replicate counts ``weights`` (definition in the module doc).

    The subsets are those of ``kid(..., num_subsets, subset_size, seed)``; per subset the kernel blocks
    are computed once, then every replicate costs two matrix-vector products.
    """
    x = check_features(sample_features, "sample_features")
    y = check_features(ref_features, "ref_features")
    check_same_dim(x, y, "sample_features", "ref_features")
    w_all = _check_weights(weights, x.shape[0])
    subsets = kid_subsets(x.shape[0], y.shape[0], num_subsets, subset_size, seed)
    total = np.zeros(w_all.shape[0])
    for s, r in subsets:
        xs, ys = x[s].astype(np.float64), y[r].astype(np.float64)
        kyy = polynomial_kernel(ys, ys)
        m = ys.shape[0]
        yy = (float(kyy.sum()) - float(np.trace(kyy))) / (m * (m - 1))
        del kyy
        kxx = polynomial_kernel(xs, xs)
        kxy_rows = polynomial_kernel(xs, ys).sum(axis=1)
        v = w_all[:, s].astype(np.float64)  # [B, subset_size] counts of the subset's rows
        n_b = v.sum(axis=1)
        if (n_b < 2).any():
            raise FeatureError(f"KID bootstrap: a replicate draws fewer than 2 rows of a subset of "
                               f"{subset_size}; pass a larger --kid-subset-size")
        quad = np.einsum("bi,bi->b", v @ kxx, v) - v @ np.diagonal(kxx)
        total += quad / (n_b * (n_b - 1)) + yy - 2 * (v @ kxy_rows) / (n_b * m)
    return total / len(subsets)
