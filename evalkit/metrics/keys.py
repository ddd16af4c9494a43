"""Metric names, reused verbatim as results-CSV column names (one spelling everywhere)."""

KEY_IS = "inception_score"
KEY_FID = "fid"
KEY_SFID = "sfid"
KEY_PRECISION = "precision"
KEY_RECALL = "recall"

# Column order of the five numbers the reference evaluator prints.
METRIC_KEYS = (KEY_IS, KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL)
