"""Metric names, reused verbatim as results-CSV column names (one spelling everywhere)."""

KEY_IS = "inception_score"
KEY_FID = "fid"
KEY_SFID = "sfid"
KEY_PRECISION = "precision"
KEY_RECALL = "recall"

# Column order of the five numbers the reference evaluator prints.
METRIC_KEYS = (KEY_IS, KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL)

# Optional metrics beyond the reference's five (KID mean and its std over subsets, density, coverage).
KEY_KID = "kid"
KEY_KID_STD = "kid_std"
KEY_DENSITY = "density"
KEY_COVERAGE = "coverage"
EXTRA_METRIC_KEYS = (KEY_KID, KEY_KID_STD, KEY_DENSITY, KEY_COVERAGE)
