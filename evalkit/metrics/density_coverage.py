"""Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative
Models", arXiv:2002.09797), with the definitions of their reference code (``prdc`` 0.2, ``compute_prdc``).

With real = reference pool features X_1..X_N, fake = sample pool features Y_1..Y_M, Euclidean distances
and r_i = the distance from X_i to its k-th nearest other reference (k = 5):

* density  = 1/(k M) Σ_j Σ_i 1[d(X_i, Y_j) < r_i]   (strict ``<``, as prdc);
* coverage = 1/N Σ_i 1[min_j d(X_i, Y_j) < r_i].

Distances follow scikit-learn's ``euclidean_distances`` for float32 inputs, which prdc calls: rows upcast
to float64, ``(-2 x·y + |x|²) + |y|²`` in float64 (squared norms by ``einsum``), rounded to float32,
clipped at 0, square root in float32; self-distances are 0. The radius is the value at sorted position k
of a reference row's distances to all references (self included). The only possible difference from prdc
is the summation order inside the float64 dot products (BLAS blocking), which can move a distance by one
float32 rounding step only when its float64 value lies within ~1e-16 relative of a float32 rounding
boundary, and matters only if that distance also ties a radius; in practice results are identical.

Memory is bounded: blocks of at most ``block_entries`` distances (float64 during the GEMM), never an
N × M matrix. ``density_coverage_rows`` also returns the per-row facts the bootstrap needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.errors import FeatureError
from evalkit.metrics._validate import check_features, check_same_dim

DC_NEAREST_K = 5
BLOCK_ENTRIES = 1 << 23  # distances per block (64 MB of float64 while the GEMM result is alive)
MAX_COVERERS = 64  # sample indices kept per reference row for the bootstrap (see DensityCoverageRows)


@dataclass(frozen=True)
class DensityCoverageRows:
    """Per-row facts behind density and coverage.

    Attributes:
        ref_radii: float32 [N] k-NN radii of the references (Euclidean, not squared).
        sample_counts: int64 [M] number of reference balls containing each sample (density numerator).
        coverers: int32 [N, T] the first T (in sample order) sample indices strictly inside each
            reference's ball, -1 padded; T = ``MAX_COVERERS``.
        num_coverers: int64 [N] how many samples lie inside each reference's ball (may exceed T).
        k: the neighbourhood size.
    """

    ref_radii: np.ndarray
    sample_counts: np.ndarray
    coverers: np.ndarray
    num_coverers: np.ndarray
    k: int

    @property
    def density(self) -> float:
        return float((1.0 / self.k) * (self.sample_counts.sum() / self.sample_counts.shape[0]))  # prdc's order

    @property
    def coverage(self) -> float:
        return float(np.mean(self.num_coverers > 0))


def _row_norms64(x64: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x64, x64)


def _euclidean_block(a64: np.ndarray, aa: np.ndarray, b64: np.ndarray, bb: np.ndarray) -> np.ndarray:
    """float32 [len(a), len(b)] Euclidean distances with scikit-learn's float32-input rounding."""
    d = -2 * (a64 @ b64.T)
    d += aa[:, None]
    d += bb[None, :]
    d32 = d.astype(np.float32)
    np.maximum(d32, np.float32(0), out=d32)
    return np.sqrt(d32, out=d32)


def _col_step(num_rows: int, block_entries: int) -> int:
    return max(1, int(block_entries) // max(num_rows, 1))


def _check_k(k: int, num_ref: int) -> int:
    if int(k) < 1:
        raise FeatureError(f"density/coverage: expected a neighbourhood size k >= 1, got {k}")
    if num_ref <= int(k):
        raise FeatureError(f"density/coverage: found {num_ref} reference rows, but k={k} needs more than k "
                           f"rows to find each reference's k-th nearest neighbour; pass a smaller k or "
                           f"more reference rows")
    return int(k)


def reference_radii(ref_features, k: int = DC_NEAREST_K, block_entries: int = BLOCK_ENTRIES) -> np.ndarray:
    """float32 [N] Euclidean distance of each reference row to its k-th nearest other reference row."""
    ref = check_features(ref_features, "ref_features")
    k = _check_k(k, ref.shape[0])
    return _radii(ref, k, block_entries)


def _radii(ref: np.ndarray, k: int, block_entries: int) -> np.ndarray:
    n = ref.shape[0]
    row_step = max(1, min(n, int(np.sqrt(block_entries))))
    col_step = _col_step(row_step, block_entries)
    radii = np.empty(n, np.float32)
    for r0 in range(0, n, row_step):
        a64 = ref[r0:r0 + row_step].astype(np.float64)
        aa = _row_norms64(a64)
        best = np.empty((a64.shape[0], 0), np.float32)  # the k+1 smallest distances so far, per row
        for c0 in range(0, n, col_step):
            b64 = ref[c0:c0 + col_step].astype(np.float64)
            d = _euclidean_block(a64, aa, b64, _row_norms64(b64))
            # Self-distances are exactly 0, as scikit-learn sets them.
            lo, hi = max(r0, c0), min(r0 + a64.shape[0], c0 + b64.shape[0])
            if lo < hi:
                idx = np.arange(lo, hi)
                d[idx - r0, idx - c0] = 0
            cand = np.concatenate([best, d], axis=1)
            if cand.shape[1] > k + 1:
                cand = np.partition(cand, k, axis=1)[:, :k + 1]
            best = cand
        radii[r0:r0 + a64.shape[0]] = np.max(best, axis=1)
    return radii


def density_coverage_rows(ref_features, sample_features, k: int = DC_NEAREST_K,
                          block_entries: int = BLOCK_ENTRIES, ref_radii=None) -> DensityCoverageRows:
    """Density/coverage with the per-row facts (see ``DensityCoverageRows``); one blocked pass.

    Args:
        ref_features: [N, D] reference (real) pool features, N > k.
        sample_features: [M, D] sample (fake) pool features, M >= 1, same D.
        k: neighbourhood size (default 5, as the paper).
        block_entries: distances per block (memory bound).
        ref_radii: optional precomputed ``reference_radii(ref_features, k)``.
    """
    ref = check_features(ref_features, "ref_features")
    sample = check_features(sample_features, "sample_features", min_rows=1)
    check_same_dim(sample, ref, "sample_features", "ref_features")
    k = _check_k(k, ref.shape[0])
    if ref_radii is None:
        radii = _radii(ref, k, block_entries)
    else:
        radii = np.asarray(ref_radii, np.float32).reshape(-1)
        if radii.shape[0] != ref.shape[0]:
            raise FeatureError(f"ref_radii: expected one radius per reference row ({ref.shape[0]}), "
                               f"found {radii.shape[0]}")
    n, m = ref.shape[0], sample.shape[0]
    counts = np.zeros(m, np.int64)
    coverers = np.full((n, MAX_COVERERS), -1, np.int32)
    num_cov = np.zeros(n, np.int64)
    col_step = max(1, min(m, int(np.sqrt(block_entries))))
    row_step = _col_step(col_step, block_entries)
    for c0 in range(0, m, col_step):
        b64 = sample[c0:c0 + col_step].astype(np.float64)
        bb = _row_norms64(b64)
        for r0 in range(0, n, row_step):
            a64 = ref[r0:r0 + row_step].astype(np.float64)
            inside = _euclidean_block(a64, _row_norms64(a64), b64, bb) < radii[r0:r0 + a64.shape[0], None]
            counts[c0:c0 + b64.shape[0]] += inside.sum(axis=0)
            _record_coverers(inside, r0, c0, coverers, num_cov)
    return DensityCoverageRows(radii, counts, coverers, num_cov, k)


def _record_coverers(inside: np.ndarray, r0: int, c0: int, coverers: np.ndarray, num_cov: np.ndarray) -> None:
    """Append the column indices of ``inside`` (rows r0.., columns c0..) to each row's coverer list."""
    rows, cols = np.nonzero(inside)  # row-major: per row, columns ascending
    if rows.size == 0:
        return
    per_row = np.bincount(rows, minlength=inside.shape[0])
    first = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    grow = rows + r0
    slot = num_cov[grow] + (np.arange(rows.size) - first[rows])
    keep = slot < coverers.shape[1]
    coverers[grow[keep], slot[keep]] = (cols[keep] + c0).astype(np.int32)
    num_cov[r0:r0 + inside.shape[0]] += per_row


def density_coverage(ref_features, sample_features, k: int = DC_NEAREST_K,
                     block_entries: int = BLOCK_ENTRIES) -> tuple[float, float]:
    """Density and coverage of samples against references, as prdc's ``compute_prdc`` (see module doc).

    Args:
        ref_features: [N, D] reference (real) pool features, N > k.
        sample_features: [M, D] sample (fake) pool features, same D.
        k: neighbourhood size (default 5).
        block_entries: distances per block (memory bound; the result does not depend on it).
    Returns:
        (density, coverage) as Python floats; density is >= 0 (1 on average for matching
        distributions, can exceed 1), coverage in [0, 1].
    Raises:
        FeatureError on malformed or mismatched features, or when k >= N (too few reference rows).
    """
    rows = density_coverage_rows(ref_features, sample_features, k, block_entries)
    return rows.density, rows.coverage
