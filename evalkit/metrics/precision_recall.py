"""Improved precision and recall (Kynkäänniemi et al. 2019) as the ADM evaluator computes them.

Reference: openai/guided-diffusion, commit 22e0df8183507e13a7813f8d38d51b072ca1e67c,
``evaluations/evaluator.py`` (``DistanceBlock``, ``ManifoldEstimator``, ``Evaluator.compute_prec_recall``;
spec: shared/spec/evaluator.md §9).

Distances are SQUARED Euclidean. The radius of a point is the value at sorted position k (0-based) of
its distances to all points of its own set, self included (so the k-th nearest other point). A point is
inside the other set's manifold if ``d(i, j) <= radius[j]`` for some j.

Distance blocks, emulating a GPU's half precision deterministically on any device:

* float16 path: inputs rounded to float16; squared norms = float16 squares summed and rounded to
  float32 (an ideal float32 accumulator) then to float16; ``U @ V^T`` summed in float64 (exact for all
  practical purposes), rounded to float32 then float16; then ``max((nu - 2*M) + nv, 0)`` with every
  operation rounded to float16, left to right.
* float32 fallback, used for a whole block when any entry of its float16 result is not finite
  (overflow: squared norms above 65504): the same formula from the float32 inputs, squares and sums
  rounded to float32.

Every entry is a function of its two input rows alone, so results never depend on how blocks are
tiled internally. Only the fallback decision is per block, with the reference's granularity of
``row_batch`` × ``col_batch`` (10,000 × 10,000). It is taken only on overflow; features where no block
or every block overflows give identical results for any block sizes.

Two implementations with identical results. ``exact=True`` evaluates every entry as above, block
by block (the oracle; one block buffer of row_batch × col_batch float32, 400 MB at the defaults).
The default fast path (``evalkit.metrics._pr_fast``, torch on the CPU or the given device) filters
with a float32 GEMM under a proved error bound and evaluates exactly, with the same formula, only
the entries the bound cannot decide; it computes self-distance tiles once for both orientations.
Features whose float16 intermediates could overflow anywhere (squared norms near 16,000 or more)
take the exact path, which also reproduces the reference's per-block float32 fallback. Memory of
the fast path: a float32 copy of each feature set plus a few 4096 × 4096 tiles.
"""

from __future__ import annotations

import warnings

import numpy as np

from evalkit.errors import FeatureError
from evalkit.metrics._validate import check_features, check_same_dim

NHOOD_SIZE = 3  # k of the reference's nhood_sizes=(3,)
ROW_BATCH = 10000  # reference row/column block sizes (the float16 -> float32 fallback granularity)
COL_BATCH = 10000
_TILE_ENTRIES = 1 << 24  # entries per internal tile (bounds float64 temporaries to 128 MB)


# ---------------------------------------------------------------------------------------------
# Distance tiles. Two interchangeable backends with identical rounding semantics.

class _NumpyTiles:
    """Distance tiles computed with numpy on the CPU."""

    @staticmethod
    def to_backend(x: np.ndarray) -> np.ndarray:
        return x

    @staticmethod
    def to_numpy(x: np.ndarray) -> np.ndarray:
        return x

    @staticmethod
    def _r16(x: np.ndarray) -> np.ndarray:
        # Round float32 values to the nearest float16 (ties to even; overflow -> inf), keep float32.
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)

    def norms(self, x: np.ndarray, half: bool) -> np.ndarray:
        if half:
            x16 = self._r16(x)
            sq = self._r16(x16 * x16)
            return self._r16(sq.sum(axis=1, dtype=np.float64).astype(np.float32))
        return (x * x).sum(axis=1, dtype=np.float64).astype(np.float32)

    def tile(self, u: np.ndarray, v: np.ndarray, nu: np.ndarray, nv: np.ndarray, half: bool) -> np.ndarray:
        if half:
            u = self._r16(u)
            v = self._r16(v)
        m = (u.astype(np.float64) @ v.astype(np.float64).T).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            if half:
                m2 = self._r16(self._r16(m) * np.float32(2))
                d = self._r16(self._r16(nu[:, None] - m2) + nv[None, :])
            else:
                d = (nu[:, None] - m * np.float32(2)) + nv[None, :]
            return np.maximum(d, np.float32(0))

    @staticmethod
    def all_finite(x: np.ndarray) -> bool:
        return bool(np.isfinite(x).all())


class _TorchTiles:
    """Distance tiles computed with torch on a given device (same semantics as ``_NumpyTiles``)."""

    def __init__(self, device):
        import torch  # optional dependency, only for device blocks

        self.torch = torch
        self.device = torch.device(device)

    def to_backend(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return x.cpu().numpy()

    def _r16(self, x):
        return x.to(self.torch.float16).to(self.torch.float32)

    def norms(self, x, half: bool):
        t = self.torch
        if half:
            x16 = self._r16(x)
            sq = self._r16(x16 * x16)
            return self._r16(sq.to(t.float64).sum(dim=1).to(t.float32))
        return (x * x).to(t.float64).sum(dim=1).to(t.float32)

    def tile(self, u, v, nu, nv, half: bool):
        t = self.torch
        if half:
            u = self._r16(u)
            v = self._r16(v)
        m = (u.to(t.float64) @ v.to(t.float64).T).to(t.float32)
        if half:
            m2 = self._r16(self._r16(m) * 2)
            d = self._r16(self._r16(nu[:, None] - m2) + nv[None, :])
        else:
            d = (nu[:, None] - m * 2) + nv[None, :]
        return t.clamp_min(d, 0.0)

    def all_finite(self, x) -> bool:
        return bool(self.torch.isfinite(x).all())


def _backend(device):
    """numpy tiles for device None, torch tiles otherwise."""
    return _NumpyTiles() if device is None else _TorchTiles(device)


def _distance_block(tiles, u: np.ndarray, v: np.ndarray, out: np.ndarray) -> bool:
    """Fill ``out[:len(u), :len(v)]`` with one reference DistanceBlock; True if float16 was used."""
    m, n = u.shape[0], v.shape[0]
    step = max(1, _TILE_ENTRIES // max(n, 1))
    vb = tiles.to_backend(v)
    for half in (True, False):
        nv = tiles.norms(vb, half)
        # An infinite squared norm makes its whole row/column non-finite: skip to float32 at once.
        finite = not half or tiles.all_finite(nv)
        for r in range(0, m, step) if finite else ():
            ub = tiles.to_backend(u[r:min(r + step, m)])
            nu = tiles.norms(ub, half)
            if half and not tiles.all_finite(nu):
                finite = False
                break
            d = tiles.tile(ub, vb, nu, nv, half)
            if half and not tiles.all_finite(d):
                finite = False  # the reference recomputes the whole block in float32
                break
            out[r:min(r + step, m), :n] = tiles.to_numpy(d)
        if finite:
            return half
    raise AssertionError("unreachable: the float32 pass always completes")


def _check_batches(row_batch: int, col_batch: int) -> tuple[int, int]:
    if int(row_batch) < 1 or int(col_batch) < 1:
        raise FeatureError(f"row_batch/col_batch: expected positive block sizes, got {row_batch}/{col_batch}")
    return int(row_batch), int(col_batch)


def pairwise_distances(u, v, device=None) -> np.ndarray:
    """One reference distance block: squared distances [len(u), len(v)] float32 (float16 emulation).

    Args:
        u: [m, D] features; v: [n, D] features (cast to float32).
        device: None for numpy, else a torch device (string or ``torch.device``) for the block math.
    Returns:
        float32 [m, n]; float16-valued unless some entry overflowed float16, in which case the whole
        block is the float32 recomputation (as the reference's DistanceBlock).
    """
    u = check_features(u, "u", min_rows=1)
    v = check_features(v, "v", min_rows=1)
    check_same_dim(u, v, "u", "v")
    out = np.empty((u.shape[0], v.shape[0]), np.float32)
    _distance_block(_backend(device), u, v, out)
    return out


def _radii(tiles, feats: np.ndarray, k: int, row_batch: int, col_batch: int) -> np.ndarray:
    """float32 [N] value at sorted position k of each row's distances to all rows (self included)."""
    n = feats.shape[0]
    radii = np.empty(n, np.float32)
    buf = np.empty((min(row_batch, n), min(col_batch, n)), np.float32)
    for r0 in range(0, n, row_batch):
        rows = feats[r0:r0 + row_batch]
        m = rows.shape[0]
        best = np.empty((m, 0), np.float32)  # the k+1 smallest distances seen so far, per row
        for c0 in range(0, n, col_batch):
            cols = feats[c0:c0 + col_batch]
            _distance_block(tiles, rows, cols, buf)
            block = buf[:m, :cols.shape[0]]
            width = min(k + 1, best.shape[1] + cols.shape[0])
            merged = np.empty((m, width), np.float32)
            step = max(1, _TILE_ENTRIES // (best.shape[1] + cols.shape[0]))
            for t in range(0, m, step):
                cand = np.concatenate([best[t:t + step], block[t:t + step]], axis=1)
                if cand.shape[1] > width:
                    cand = np.partition(cand, width - 1, axis=1)[:, :width]
                merged[t:t + step] = cand
            best = merged
        radii[r0:r0 + m] = np.partition(best, k, axis=1)[:, k]
    return radii


def manifold_radii(features, k: int = NHOOD_SIZE, row_batch: int = ROW_BATCH, col_batch: int = COL_BATCH,
                   device=None, exact: bool = False) -> np.ndarray:
    """Squared k-NN radii of a feature set, as the reference's ``ManifoldEstimator.manifold_radii``.

    Args:
        features: [N, D] features, N > k.
        k: neighbourhood size (reference 3): the radius is the value at sorted position k of the
            row's squared distances including the self-distance.
        row_batch, col_batch: block sizes (float16 fallback granularity; reference 10,000).
        device: None (numpy, or torch on the CPU for the fast path) or a torch device.
        exact: evaluate every distance (the oracle of the fast path; same results, slower).
    Returns:
        float32 [N] squared radii (the reference returns them as [N, 1]).
    """
    feats = check_features(features, "features")
    k = _check_k(k, feats.shape[0], "features")
    row_batch, col_batch = _check_batches(row_batch, col_batch)
    if not exact:
        fast = _fast(device, lambda f, sets: f.radii(sets[0], k), feats)
        if fast is not None:
            return fast
    return _radii(_backend(device), feats, k, row_batch, col_batch)


def _check_k(k: int, n: int, name: str) -> int:
    if int(k) < 1:
        raise FeatureError(f"k: expected a neighbourhood size >= 1, got {k}")
    if n <= int(k):
        raise FeatureError(f"{name}: expected more than k={k} rows to find each row's k-th neighbour, found {n}")
    return int(k)


def manifold_membership(ref_features, ref_radii, sample_features, sample_radii, row_batch: int = ROW_BATCH,
                        col_batch: int = COL_BATCH, device=None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which points lie inside the other set's manifold (reference ``ManifoldEstimator.evaluate_pr``).

    Args:
        ref_features [N, D], ref_radii [N]; sample_features [M, D], sample_radii [M] (squared radii,
        e.g. from ``manifold_radii``).
    Returns:
        (ref_in_sample_manifold bool [N], sample_in_ref_manifold bool [M]); their means are recall and
        precision. Blocks are reference rows × sample columns; comparisons are ``<=`` in float32.
        ``exact=True`` evaluates every distance (same results, slower).
    """
    ref = check_features(ref_features, "ref_features")
    sample = check_features(sample_features, "sample_features")
    check_same_dim(sample, ref, "sample_features", "ref_features")
    r_ref = _check_radii(ref_radii, ref.shape[0], "ref_radii")
    r_sample = _check_radii(sample_radii, sample.shape[0], "sample_radii")
    row_batch, col_batch = _check_batches(row_batch, col_batch)
    if not exact:
        fast = _fast(device, lambda f, sets: f.membership(sets[0], r_ref, sets[1], r_sample), ref, sample)
        if fast is not None:
            return fast
    return _membership(_backend(device), ref, r_ref, sample, r_sample, row_batch, col_batch)


def _check_radii(radii, n: int, name: str) -> np.ndarray:
    r = np.asarray(radii, dtype=np.float32).reshape(-1)
    if r.shape[0] != n:
        raise FeatureError(f"{name}: expected one radius per feature row ({n}), found {r.shape[0]}")
    return r


def _membership(tiles, ref, r_ref, sample, r_sample, row_batch, col_batch):
    ref_in = np.zeros(ref.shape[0], bool)
    sample_in = np.zeros(sample.shape[0], bool)
    buf = np.empty((min(row_batch, ref.shape[0]), min(col_batch, sample.shape[0])), np.float32)
    for r0 in range(0, ref.shape[0], row_batch):
        rows = ref[r0:r0 + row_batch]
        m = rows.shape[0]
        for c0 in range(0, sample.shape[0], col_batch):
            cols = sample[c0:c0 + col_batch]
            n = cols.shape[0]
            _distance_block(tiles, rows, cols, buf)
            block = buf[:m, :n]
            step = max(1, _TILE_ENTRIES // n)
            for t in range(0, m, step):
                d = block[t:t + step]
                ref_in[r0 + t:r0 + t + d.shape[0]] |= np.any(d <= r_sample[None, c0:c0 + n], axis=1)
                sample_in[c0:c0 + n] |= np.any(d <= r_ref[r0 + t:r0 + t + d.shape[0], None], axis=0)
    return ref_in, sample_in


def _fast(device, run, *feature_arrays):
    """Run the fast path on the given feature sets; None where it does not apply (then use exact)."""
    try:
        import torch
    except ImportError:  # the exact numpy path needs no torch
        return None
    from evalkit.metrics import _pr_fast

    dev = torch.device("cpu" if device is None else device)
    sets = [_pr_fast.FeatureSet(torch, dev, f) for f in feature_arrays]
    if not all(_pr_fast.safe(a, b) for a in sets for b in sets):
        return None  # float16 could overflow somewhere: the exact path decides the float32 fallback
    try:
        return run(_pr_fast, sets)
    except _pr_fast.BoundViolation:
        warnings.warn("precision_recall: this device's float32 matmul exceeded the float32 error bound; "
                      "using the exact float64 path", RuntimeWarning, stacklevel=3)
        return None


def precision_recall(ref_features, sample_features, k: int = NHOOD_SIZE, row_batch: int = ROW_BATCH,
                     col_batch: int = COL_BATCH, device=None, exact: bool = False) -> tuple[float, float]:
    """Improved precision and recall of samples against references, as the ADM evaluator.

    Args:
        ref_features: [N, D] reference pool features (N > k).
        sample_features: [M, D] sample pool features (M > k), same D.
        k: neighbourhood size (reference 3).
        row_batch, col_batch: block sizes (reference 10,000; the float16->float32 fallback is decided
            per block, and only on overflow).
        device: None computes blocks with numpy; a torch device (e.g. "cuda") computes them with torch,
            with identical emulated float16 semantics.
        exact: evaluate every distance block in float64 (the previous implementation, kept as the
            oracle); the default fast path gives the same radii, memberships and numbers.
    Returns:
        (precision, recall) as Python floats: the fraction of samples inside the reference manifold and
        the fraction of references inside the sample manifold.
    Raises:
        FeatureError on non-finite values, wrong rank, mismatched dimensions or too few rows.
    """
    ref = check_features(ref_features, "ref_features")
    sample = check_features(sample_features, "sample_features")
    check_same_dim(sample, ref, "sample_features", "ref_features")
    k = _check_k(k, ref.shape[0], "ref_features")
    _check_k(k, sample.shape[0], "sample_features")
    row_batch, col_batch = _check_batches(row_batch, col_batch)
    if not exact:
        fast = _fast(device, lambda f, sets: _fast_pr(f, sets, k), ref, sample)
        if fast is not None:
            return fast
    tiles = _backend(device)
    r_ref = _radii(tiles, ref, k, row_batch, col_batch)
    r_sample = _radii(tiles, sample, k, row_batch, col_batch)
    ref_in, sample_in = _membership(tiles, ref, r_ref, sample, r_sample, row_batch, col_batch)
    return float(np.mean(sample_in)), float(np.mean(ref_in))


def _fast_pr(fast, sets, k: int) -> tuple[float, float]:
    ref, sample = sets
    r_ref = fast.radii(ref, k)
    r_sample = fast.radii(sample, k)
    ref_in, sample_in = fast.membership(ref, r_ref, sample, r_sample)
    return float(np.mean(sample_in)), float(np.mean(ref_in))
