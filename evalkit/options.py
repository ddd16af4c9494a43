"""Run-time options shared by several entry points, as frozen values built once (by the CLI).

They say how work is done (batch sizes, caching, progress) and, for scoring, which metrics beyond
the reference's five are computed with which settings; none changes the five numbers. Settings that
change images live in the request objects of their stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from evalkit.errors import InputError

#: Metric groups `--metrics` selects: the reference evaluator's five (``pr`` is precision and recall)
#: and the extras (``kid``: KID mean and std; ``dc``: density and coverage).
METRIC_GROUPS: tuple[str, ...] = ("is", "fid", "sfid", "pr", "kid", "dc")
DEFAULT_METRICS: tuple[str, ...] = ("is", "fid", "sfid", "pr")


def _positive(value: int, option: str, hint: str = "") -> int:
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or value < 1:
        raise InputError(f"{option}: found {value!r}, expected a positive whole number{hint}")
    return int(value)


def parse_metrics(text: str | tuple[str, ...] | list[str], option: str = "--metrics") -> tuple[str, ...]:
    """``"is,fid,kid"`` (or a sequence of names) → ("is", "fid", "kid"), validated.

    Raises InputError naming `option` for an empty list, an unknown name (the known ones listed) or a
    name given twice.
    """
    items = [s.strip().lower() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    if not items or items == [""]:
        raise InputError(f"{option} is empty; expected comma-separated names from {','.join(METRIC_GROUPS)}")
    for item in items:
        if item not in METRIC_GROUPS:
            raise InputError(f"{option}: unknown metric {item!r}; expected names from {', '.join(METRIC_GROUPS)} "
                             f"(pr = precision and recall, dc = density and coverage)")
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise InputError(f"{option}: {', '.join(twice)} listed twice; list each metric once")
    return tuple(items)


@dataclass(frozen=True)
class ScoreOptions:
    """How to score: feature batch size, feature cache, progress bars, exact sqrtm FID, stored statistics,
    which metrics, and their settings.

    `use_sample_stats`: use ``mu/sigma/mu_s/sigma_s`` stored in a sample npz, as the reference
    evaluator does (False: recompute them from the sample's features).
    `metrics`: names from METRIC_GROUPS (default the reference evaluator's five numbers).
    `bootstrap`: None, or B >= 1 replicates for percentile confidence intervals at `confidence`,
    drawn with `bootstrap_seed`. `kid_subsets` × `kid_subset_size`: KID's random subsets (rows on
    each side). `dc_k`: the neighbourhood size of density/coverage. Settings of metrics that are not
    selected are validated but unused.
    """

    batch_size: int = 64
    cache: bool = True
    progress: bool = True
    exact_fid: bool = False
    use_sample_stats: bool = True
    metrics: tuple[str, ...] = DEFAULT_METRICS
    bootstrap: int | None = None
    bootstrap_seed: int = 0
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    dc_k: int = 5
    confidence: float = 0.95

    def __post_init__(self) -> None:
        _positive(self.batch_size, "--feature-batch-size")
        object.__setattr__(self, "metrics", parse_metrics(self.metrics))
        if self.bootstrap is not None:
            _positive(self.bootstrap, "--bootstrap", " of bootstrap replicates, e.g. 100 (omit it for no intervals)")
        try:
            seed_ok = not isinstance(self.bootstrap_seed, bool) and int(self.bootstrap_seed) == self.bootstrap_seed >= 0
        except (TypeError, ValueError, OverflowError):
            seed_ok = False
        if not seed_ok:
            raise InputError(f"--bootstrap-seed: found {self.bootstrap_seed!r}, expected a whole number >= 0")
        _positive(self.kid_subsets, "--kid-subsets")
        if _positive(self.kid_subset_size, "--kid-subset-size") < 2:
            raise InputError("--kid-subset-size: found 1, expected at least 2 (the unbiased estimator needs pairs)")
        _positive(self.dc_k, "--dc-k")
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or not 0 < c < 1:
            raise InputError(f"confidence: found {c!r}, expected a level strictly between 0 and 1, e.g. 0.95")

    def wants(self, group: str) -> bool:
        """Whether metric group `group` (one of METRIC_GROUPS) is selected."""
        return group in self.metrics


@dataclass(frozen=True)
class RunOptions:
    """How to sample: images per batch (per process), progress bars, whether shards stay after assembly."""

    batch_size: int = 16
    progress: bool = True
    keep_shards: bool = False

    def __post_init__(self) -> None:
        _positive(self.batch_size, "--batch-size")
