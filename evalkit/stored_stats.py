"""Which precomputed statistics a batch file may contribute, and when they must be recomputed.

An npz may carry ``mu``/``sigma``/``mu_s``/``sigma_s``; the reference evaluator uses them in place of
statistics of the file's images, for the reference and for the sample alike. Such statistics are only
meaningful for the network that made them, so evalkit uses them only when it knows that network:

* a file evalkit built (``evalkit ref build``) records the network's identity: used when the network
  scoring now has the same name and weights sha256;
* OpenAI's files record nothing; their statistics come from the Inception-2015 graph, so they are used
  only with the canonical Inception-2015 weights (`canonical_inception`).

Otherwise the statistics are recomputed from the file's images, with a warning saying so; a file
without images to recompute from is refused.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from evalkit import weights
from evalkit.errors import BatchFormatError
from evalkit.metrics.keys import INCEPTION_FEATURES
from evalkit.store import STAT_KEYS, statistics_network

CANONICAL_FILES = ("inception-pb", "inception-pth")  # the WEIGHTS entries of the Inception-2015 weights


@dataclass(frozen=True)
class StoredStatistics:
    """The decision for one batch: the arrays to use (None: compute from features) and why."""

    arrays: dict[str, np.ndarray] | None
    source: str  # "file" or "computed"
    reason: str

    def provenance(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


def canonical_inception(identity: dict) -> bool:
    """Whether `identity` is the Inception-2015 network with the weights OpenAI's statistics came from.

    The weights are named by the sha256 of the file they were read from (``weights_sha256``; a
    converted file records its source's). It must be the pinned sha256 of ``inception-pb`` or
    ``inception-pth`` when pinned; else, for pytorch-fid's ``.pth``, start with the published prefix
    of its file name; else, for the ``.pb`` (no published hash), be the file evalkit downloaded from
    OpenAI's URL, as recorded in the weights cache.
    """
    if identity.get("name") not in INCEPTION_FEATURES:
        return False
    digest = str(identity.get("weights_sha256") or "")
    return bool(digest) and any(weights.is_known_file(name, digest) for name in CANONICAL_FILES)


def _describe(identity: dict) -> str:
    return f"{identity.get('name')!r} (weights {str(identity.get('weights_sha256'))[:12]}…)"


def trust(reader, identity: dict) -> tuple[bool, str]:
    """(whether the statistics stored in `reader` may be used with network `identity`, why)."""
    built_with = statistics_network(reader)
    if built_with is not None:
        differs = [k for k in ("name", "weights_sha256") if k in built_with and built_with.get(k) != identity.get(k)]
        if differs:
            return False, f"its statistics were computed with feature network {_describe(built_with)}, not {_describe(identity)}"
        return True, "computed by evalkit with this feature network (evalkit_meta)"
    if canonical_inception(identity):
        return True, "no network recorded; used with the canonical Inception-2015 weights"
    return False, (f"its statistics record no feature network and are used only with the canonical "
                   f"Inception-2015 weights, not {_describe(identity)}")


def _shapes_match(stats: dict, dims: dict[str, int]) -> tuple[bool, dict, dict]:
    want = {"mu": (dims["pool"],), "sigma": (dims["pool"], dims["pool"]),
            "mu_s": (dims["spatial"],), "sigma_s": (dims["spatial"], dims["spatial"])}
    found = {k: tuple(np.shape(stats[k])) for k in STAT_KEYS}
    return found == want, found, want


def choose(reader, extractor, what: str, source: str, *, use: bool = True,
           strict_shapes: bool = False) -> StoredStatistics:
    """The statistics to use for `reader` (the `what` batch, named `source` in messages).

    `use`: False ignores stored statistics (``--recompute-sample-stats``). Untrusted statistics →
    computed, with a warning; refused (BatchFormatError) when the file holds no images. Statistics of
    the wrong shape: BatchFormatError with `strict_shapes`, else a warning and computed.
    """
    if not reader.has_statistics:
        return StoredStatistics(None, "computed", "the file holds no statistics")
    if not use:
        return StoredStatistics(None, "computed", "stored statistics ignored (--recompute-sample-stats)")
    identity = extractor.identity()
    trusted, why = trust(reader, identity)
    if not trusted:
        if reader.num_images == 0:
            raise BatchFormatError(f"{what} {source}: {why}, and it holds no images to compute them from; "
                                   f"score it with the network that made its statistics")
        warnings.warn(f"{source}: {why}; computing the {what} statistics from its images instead", stacklevel=3)
        return StoredStatistics(None, "computed", why)
    stats = reader.statistics
    ok, found, want = _shapes_match(stats, dict(extractor.feature_dims))
    if not ok:
        message = (f"{source}: its stored statistics have shapes {found}, but feature network "
                   f"{identity.get('name')!r} gives {want}")
        if strict_shapes:
            raise BatchFormatError(f"{what} {message}; pass --recompute-sample-stats to ignore them")
        warnings.warn(f"{message}; computing the {what} statistics from its images instead", stacklevel=3)
        return StoredStatistics(None, "computed", "stored statistics have other shapes than the network's")
    return StoredStatistics({k: np.asarray(stats[k]) for k in STAT_KEYS}, "file", why)
