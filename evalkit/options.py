"""Run-time options shared by several entry points, as frozen values built once (by the CLI).

These never change a number: they say how work is done (batch sizes, caching, progress), not what
is computed. Settings that change images or metrics live in the request objects of their stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.errors import InputError


def _positive(value: int, option: str) -> int:
    if int(value) != value or value < 1:
        raise InputError(f"{option}: found {value!r}, expected a positive whole number")
    return int(value)


@dataclass(frozen=True)
class ScoreOptions:
    """How to score: feature batch size, feature cache, progress bars, exact sqrtm FID, stored statistics.

    `use_sample_stats`: use ``mu/sigma/mu_s/sigma_s`` stored in a sample npz, as the reference
    evaluator does (False: recompute them from the sample's features).
    """

    batch_size: int = 64
    cache: bool = True
    progress: bool = True
    exact_fid: bool = False
    use_sample_stats: bool = True

    def __post_init__(self) -> None:
        _positive(self.batch_size, "--feature-batch-size")


@dataclass(frozen=True)
class RunOptions:
    """How to sample: images per batch (per process), progress bars, whether shards stay after assembly."""

    batch_size: int = 16
    progress: bool = True
    keep_shards: bool = False

    def __post_init__(self) -> None:
        _positive(self.batch_size, "--batch-size")
