"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", arXiv:1801.01401).

KID is the unbiased estimator of the squared maximum mean discrepancy (MMD²) between sample and
reference pool features with the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)³`` (d = feature
dimension), averaged over random subsets:

* ``num_subsets`` times, ``subset_size`` sample rows and ``subset_size`` reference rows are drawn, each
  WITHOUT replacement within the subset (independently across subsets), with
  ``np.random.RandomState(seed).choice(n, m, replace=False)``, first the sample subset then the reference
  subset, as torch-fidelity and the authors' ``compute_scores.py`` draw them (torch-fidelity's default
  seed is 2020; evalkit's is 0);
* per subset, MMD²_u = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j);
* the result is the mean and the standard deviation (``np.std``, ddof=0, as torch-fidelity) over subsets.

Arithmetic is float64: kernel values are O(1-100) while MMD² is O(1e-3) or smaller, a difference of
averages of ~10^6 kernel values; in float32 the rounding of those sums (~1e-7 relative of each sum) is of
the order of the result itself. The kernel blocks are GEMMs of [subset_size, d] float64 matrices.
"""

from __future__ import annotations

import numpy as np

from evalkit.errors import FeatureError
from evalkit.metrics._validate import check_features, check_same_dim

KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 [len(x), len(y)] cubic kernel ``(x·y / d + 1)³`` of two float64 feature blocks."""
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k


def check_kid_settings(num_sample: int, num_ref: int, num_subsets: int, subset_size: int) -> tuple[int, int]:
    """Validate the KID subset settings against the row counts; FeatureError says what to pass."""
    if int(num_subsets) < 1:
        raise FeatureError(f"KID: expected a number of subsets >= 1, got {num_subsets}")
    m = int(subset_size)
    if m < 2:
        raise FeatureError(f"KID: expected a subset size >= 2 (the unbiased estimator needs pairs), "
                           f"got {subset_size} (--kid-subset-size)")
    for what, n in (("sample", num_sample), ("reference", num_ref)):
        if n < m:
            raise FeatureError(f"KID: found {n} {what} rows, fewer than the KID subset size {m}; "
                               f"pass --kid-subset-size {min(num_sample, num_ref)} or less "
                               f"(or provide at least {m} {what} rows)")
    return int(num_subsets), m


def kid_subsets(num_sample: int, num_ref: int, num_subsets: int = KID_NUM_SUBSETS,
                subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (sample rows, reference rows) index pairs of every subset, in draw order (see module doc)."""
    num_subsets, m = check_kid_settings(num_sample, num_ref, num_subsets, subset_size)
    rng = np.random.RandomState(int(seed))
    out = []
    for _ in range(num_subsets):
        s = rng.choice(num_sample, m, replace=False)
        r = rng.choice(num_ref, m, replace=False)
        out.append((s, r))
    return out


def _offdiag_mean(k: np.ndarray) -> float:
    n = k.shape[0]
    return (float(k.sum()) - float(np.trace(k))) / (n * (n - 1))


def kid(sample_features, ref_features, num_subsets: int = KID_NUM_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = KID_SEED) -> tuple[float, float]:
    """KID of samples against references: mean and std of the unbiased polynomial MMD² over subsets.

    Args:
        sample_features: [N, D] sample pool features; ref_features: [M, D] reference pool features.
        num_subsets: number of random subsets (default 100).
        subset_size: rows per subset on each side (default 1000); must not exceed N or M.
        seed: seed of ``np.random.RandomState`` drawing the subsets (deterministic for a seed).
    Returns:
        (kid_mean, kid_std) as Python floats (the customary printed value is ×1e3). The mean can be
        slightly negative: the estimator is unbiased, so for identical distributions it is 0 on average.
    Raises:
        FeatureError on malformed features, or when N or M is smaller than ``subset_size`` (the message
        says how many rows were found and which ``--kid-subset-size`` to pass).
    """
    x = check_features(sample_features, "sample_features")
    y = check_features(ref_features, "ref_features")
    check_same_dim(x, y, "sample_features", "ref_features")
    mmds = np.array([_mmd2_subset(x[s].astype(np.float64), y[r].astype(np.float64))
                     for s, r in kid_subsets(x.shape[0], y.shape[0], num_subsets, subset_size, seed)])
    return float(np.mean(mmds)), float(np.std(mmds))


def _mmd2_subset(xs: np.ndarray, ys: np.ndarray) -> float:
    """Unbiased polynomial MMD² of two float64 subsets."""
    return (_offdiag_mean(polynomial_kernel(xs, xs)) + _offdiag_mean(polynomial_kernel(ys, ys))
            - 2.0 * float(polynomial_kernel(xs, ys).mean()))
