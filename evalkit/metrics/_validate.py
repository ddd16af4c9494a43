"""Shared input checks for the metric functions: one clear FeatureError per bad input."""

from __future__ import annotations

import numpy as np

from evalkit.errors import FeatureError


def check_features(x, name: str, min_rows: int = 2) -> np.ndarray:
    """Return `x` as a C-contiguous float32 [N, D] array, or raise FeatureError naming `name`.

    Rejects: non-numeric arrays, rank other than 2, fewer than `min_rows` rows, zero columns,
    NaN/inf values (reporting how many and the first row/column where one occurs).
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise FeatureError(f"{name}: expected a numeric feature array, found dtype {arr.dtype}")
    if arr.ndim != 2:
        raise FeatureError(f"{name}: expected a 2-D feature array [num_rows, feature_dim], "
                           f"found shape {tuple(arr.shape)} (rank {arr.ndim})")
    if arr.shape[0] < min_rows:
        raise FeatureError(f"{name}: expected at least {min_rows} rows (feature vectors), found {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise FeatureError(f"{name}: expected at least one feature column, found shape {tuple(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise FeatureError if `arr` holds NaN or inf, saying how many and where the first one is."""
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(bad.shape[0] - n_nan)
    where = ", ".join(str(int(i)) for i in bad[0])
    raise FeatureError(f"{name}: found {bad.shape[0]} non-finite value(s) ({n_nan} NaN, {n_inf} inf) "
                       f"in an array of shape {tuple(arr.shape)}; first at index ({where}); "
                       f"expected finite features")


def check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise FeatureError when two feature arrays have different feature dimensions."""
    if a.shape[1] != b.shape[1]:
        raise FeatureError(f"mismatched feature dimensions: {name_a} has {a.shape[1]} columns, "
                           f"{name_b} has {b.shape[1]}; both must come from the same feature layer")
