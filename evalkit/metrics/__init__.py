"""Metric engines: pure functions over numpy feature arrays (no IO, no device choice).

Re-implements the metrics of OpenAI's ADM evaluator (openai/guided-diffusion commit
22e0df8183507e13a7813f8d38d51b072ca1e67c, ``evaluations/evaluator.py``): Inception Score, FID, sFID,
and improved precision/recall; plus KID, density/coverage and bootstrap confidence intervals. The ``KEY_*`` names are the results-CSV column names.
"""

from evalkit.metrics.bootstrap import (
    bootstrap_density_coverage,
    bootstrap_frechet,
    bootstrap_inception_score,
    bootstrap_kid,
    bootstrap_precision_recall,
    bootstrap_weights,
    percentile_interval,
)
from evalkit.metrics.density_coverage import density_coverage
from evalkit.metrics.frechet import (
    ConditioningWarning,
    StatisticsAccumulator,
    check_conditioning,
    feature_statistics,
    frechet_distance,
    sqrtm,
)
from evalkit.metrics.inception_score import inception_score, softmax
from evalkit.metrics.keys import KEY_FID, KEY_IS, KEY_PRECISION, KEY_RECALL, KEY_SFID, METRIC_KEYS
from evalkit.metrics.keys import EXTRA_METRIC_KEYS, KEY_COVERAGE, KEY_DENSITY, KEY_KID, KEY_KID_STD
from evalkit.metrics.kid import kid
from evalkit.metrics.precision_recall import (
    manifold_membership,
    manifold_radii,
    pairwise_distances,
    precision_recall,
)

__all__ = [
    "KEY_IS", "KEY_FID", "KEY_SFID", "KEY_PRECISION", "KEY_RECALL", "METRIC_KEYS",
    "ConditioningWarning", "StatisticsAccumulator", "check_conditioning", "feature_statistics",
    "frechet_distance", "sqrtm", "softmax", "inception_score", "manifold_membership", "manifold_radii", "pairwise_distances",
    "precision_recall",
    "KEY_KID", "KEY_KID_STD", "KEY_DENSITY", "KEY_COVERAGE", "EXTRA_METRIC_KEYS", "kid", "density_coverage",
    "bootstrap_weights", "percentile_interval", "bootstrap_frechet", "bootstrap_inception_score",
    "bootstrap_precision_recall", "bootstrap_density_coverage", "bootstrap_kid",
]
