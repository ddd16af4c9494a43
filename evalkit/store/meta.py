"""Reference metadata: how evalkit built a reference npz, stored beside its statistics.

``evalkit ref build`` writes ``evalkit_meta``, a uint8 array of UTF-8 JSON (the feature network's
identity, the source's name and sha256, the subset rule and seed, evalkit's version). The file still
loads with ``np.load(..., allow_pickle=False)``, and readers that do not know the key ignore it.
OpenAI's published batches carry no such entry.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from evalkit.errors import BatchFormatError

META_KEY = "evalkit_meta"  # uint8 array of UTF-8 JSON describing how the reference was built
META_FORMAT = "evalkit-reference/1"


def encode_meta(meta: dict[str, Any]) -> np.ndarray:
    """JSON-serialisable dict → uint8 [n] array of its UTF-8 JSON (sorted keys)."""
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def decode_meta(array: np.ndarray) -> dict[str, Any]:
    """Inverse of `encode_meta`; raises BatchFormatError for an array that is not UTF-8 JSON bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise BatchFormatError(f"{META_KEY} has shape {array.shape} and dtype {array.dtype}; expected uint8 JSON bytes")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchFormatError(f"{META_KEY} is not UTF-8 JSON ({exc})") from exc


def reference_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """How a reference npz was built (the ``evalkit_meta`` dict), or None for files without it."""
    with np.load(path, allow_pickle=False) as f:
        if META_KEY not in f.files:
            return None
        return decode_meta(f[META_KEY])


def statistics_network(reader) -> dict | None:
    """The feature-network identity an evalkit-built npz records for its statistics, else None."""
    if getattr(reader, "format", None) != "npz" or META_KEY not in getattr(reader, "extra_keys", ()):
        return None
    return (reference_meta(reader.path) or {}).get("extractor")
