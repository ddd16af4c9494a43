"""Feature cache: the pool/spatial/logits features of a batch, stored in HDF5, keyed by what changes them.

A cache key names the batch's content hash and image count and the extractor identity (network name,
weights sha256, backend, resize mode; whatever ``extractor.identity()`` reports). The file is
``cache_dir()/features/<sha256 of the key JSON>.h5`` and stores the key JSON inside, so a stale or
colliding file is detected rather than trusted. Writes are atomic: a reader never sees half a file.
The same HDF5 layout is what ``evalkit features BATCH --out FILE.h5`` writes.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from evalkit.atomic import atomic_path
from evalkit.errors import FeatureError
from evalkit.features.registry import FEATURE_NAMES
from evalkit.hashing import sha256_bytes
from evalkit.weights import cache_dir

CACHE_FORMAT = 1  # bump when the stored layout changes: old entries are then simply not found


def features_dir() -> Path:
    """Folder of cached feature files (``cache_dir()/features``)."""
    return cache_dir() / "features"


def feature_key(content_hash: str, num_images: int, identity: dict) -> dict:
    """The cache key of a batch's features: everything that changes the numbers."""
    return {"format": CACHE_FORMAT, "batch_sha256": str(content_hash), "num_images": int(num_images),
            "extractor": identity}


def key_json(key: dict) -> str:
    """Canonical JSON of a key (sorted keys, no whitespace), the text that is hashed and stored."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def cache_path(key: dict) -> Path:
    """Where the features for `key` live: ``features_dir()/<sha256(key_json)>.h5``."""
    return features_dir() / f"{sha256_bytes(key_json(key).encode())}.h5"


def write_features(path: str | os.PathLike, features: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write the feature arrays (float32, [N, D] each) and JSON-able `attrs` to HDF5 at `path`, atomically."""
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            for name, array in features.items():
                f.create_dataset(name, data=np.asarray(array, dtype=np.float32))
            for name, value in (attrs or {}).items():
                if value is None or isinstance(value, (dict, list, tuple, bool)):
                    value = json.dumps(value, sort_keys=True, default=str)  # structures as JSON text
                f.attrs[name] = value


def read_features(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read an HDF5 feature file: (arrays by name, attributes; structured ones are JSON text)."""
    try:
        with h5py.File(path, "r") as f:
            arrays = {name: f[name][()] for name in f.keys()}
            attrs = {name: value.decode() if isinstance(value, bytes) else value for name, value in f.attrs.items()}
    except OSError as exc:
        raise FeatureError(f"{path}: not a readable HDF5 feature file ({exc})") from exc
    return arrays, attrs


def load_cached(key: dict) -> dict[str, np.ndarray] | None:
    """The cached features for `key`, or None (missing, unreadable or stored under another key)."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        arrays, attrs = read_features(path)
    except FeatureError as exc:
        warnings.warn(f"ignoring unreadable feature cache file: {exc}", stacklevel=2)
        return None
    if attrs.get("key") != key_json(key) or any(name not in arrays for name in FEATURE_NAMES):
        warnings.warn(f"ignoring feature cache file {path}: it was written for another key", stacklevel=2)
        return None
    n = key["num_images"]
    if any(arrays[name].shape[0] != n for name in FEATURE_NAMES):
        warnings.warn(f"ignoring feature cache file {path}: row count differs from {n}", stacklevel=2)
        return None
    return {name: arrays[name] for name in FEATURE_NAMES}


def store_cached(key: dict, features: dict[str, np.ndarray]) -> Path:
    """Cache `features` under `key` (atomic write); return the file path."""
    path = cache_path(key)
    write_features(path, {name: features[name] for name in FEATURE_NAMES},
                   {"key": key_json(key), "extractor": key["extractor"]})
    return path
