"""Feature cache: the pool/spatial/logits features of a batch, stored in HDF5, keyed by what changes them.

A cache key names the batch's content hash and image count and the extractor identity (network name,
weights sha256, backend, resize mode; whatever ``extractor.identity()`` reports). The file is
``cache_dir()/features/<sha256 of the key JSON>.h5`` and stores the key JSON inside, so a stale or
colliding file is detected rather than trusted. Writes are atomic: a reader never sees half a file.

Several jobs may share the cache: a miss claims the key (``load_cached`` takes the entry's lock in
``cache_dir()/locks``, held until ``store_cached`` or ``release_claim``), so a second job that needs
the same features waits for the first and then reads its file instead of computing them again.
The same HDF5 layout is what ``evalkit features BATCH --out FILE.h5`` writes.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import h5py
import numpy as np

from evalkit.atomic import atomic_path
from evalkit.errors import FeatureError
from evalkit.features.registry import FEATURE_NAMES
from evalkit.locks import FileLock, cache_lock_path, note_waiting, try_acquire
from evalkit.hashing import sha256_bytes
from evalkit.weights import cache_dir

T = TypeVar("T")
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


# Keys this process has claimed (it is computing their features): cache file path -> lock.
_claims: dict[str, FileLock] = {}


def load_cached(key: dict, claim: bool = True) -> dict[str, np.ndarray] | None:
    """The cached features for `key`, or None (missing, unreadable or stored under another key).

    With `claim`, a miss takes the key's lock before returning None: the caller is expected to
    compute the features and ``store_cached`` them (or ``release_claim(key)``). While another process
    holds the claim this waits, then returns what that process stored (or claims it if it stored
    nothing). A filesystem that cannot lock only costs a warning.
    """
    path = cache_path(key)
    found = _load(path, key)
    if found is not None or not claim or str(path) in _claims:
        return found
    lock = FileLock(cache_lock_path("features", path, cache_dir()), what=f"feature cache entry {path.name}",
                    on_wait=note_waiting(f"features another job is computing ({path.name})"))
    if not try_acquire(lock):
        return None
    found = _load(path, key) if lock.waited else None  # stored while we waited?
    if found is not None:
        lock.release()
        return found
    _claims[str(path)] = lock
    return None


def releases_claims(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: claims that `fn` took and did not store are released when it returns or raises."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        before = set(_claims)
        try:
            return fn(*args, **kwargs)
        finally:
            for path in set(_claims) - before:
                _claims.pop(path).release()
    return wrapper


def release_claim(key: dict) -> None:
    """Give up the claim a miss of ``load_cached(key)`` took (a no-op when none is held)."""
    lock = _claims.pop(str(cache_path(key)), None)
    if lock is not None:
        lock.release()


def _load(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        arrays, attrs = read_features(path)
    except FeatureError as exc:
        warnings.warn(f"ignoring unreadable feature cache file: {exc}", stacklevel=3)
        return None
    if attrs.get("key") != key_json(key) or any(name not in arrays for name in FEATURE_NAMES):
        warnings.warn(f"ignoring feature cache file {path}: it was written for another key", stacklevel=3)
        return None
    n = key["num_images"]
    if any(arrays[name].shape[0] != n for name in FEATURE_NAMES):
        warnings.warn(f"ignoring feature cache file {path}: row count differs from {n}", stacklevel=3)
        return None
    return {name: arrays[name] for name in FEATURE_NAMES}


def store_cached(key: dict, features: dict[str, np.ndarray]) -> Path:
    """Cache `features` under `key` (atomic write) and release this process's claim on it; return the path."""
    path = cache_path(key)
    try:
        write_features(path, {name: features[name] for name in FEATURE_NAMES},
                       {"key": key_json(key), "extractor": key["extractor"]})
    finally:
        release_claim(key)
    return path
