"""Metric names, reused verbatim as results-CSV column names, and the labels users read (torch-free)."""

from __future__ import annotations

import math

from evalkit.errors import InputError

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

# The keys each metric group of `--metrics` (evalkit.options.METRIC_GROUPS) computes.
GROUP_KEYS: dict[str, tuple[str, ...]] = {
    "is": (KEY_IS,), "fid": (KEY_FID,), "sfid": (KEY_SFID,), "pr": (KEY_PRECISION, KEY_RECALL),
    "kid": (KEY_KID, KEY_KID_STD), "dc": (KEY_DENSITY, KEY_COVERAGE),
}
# Keys that get a bootstrap interval ``<key>_ci_low`` / ``<key>_ci_high`` (KID's std over subsets does not).
CI_KEYS: tuple[str, ...] = (*METRIC_KEYS, KEY_KID, KEY_DENSITY, KEY_COVERAGE)

# Feature networks that are the Inception-2015 graph: their distances are FID and sFID.
INCEPTION_FEATURES = ("inception", "inception-tf")

# Short labels for tables and figures (Inception features).
_SHORT = {KEY_IS: "IS", KEY_FID: "FID", KEY_SFID: "sFID", KEY_PRECISION: "Precision", KEY_RECALL: "Recall",
          KEY_KID: "KID", KEY_KID_STD: "KID std", KEY_DENSITY: "Density", KEY_COVERAGE: "Coverage"}
# The reference evaluator's printed labels (``print("Inception Score:", ...)``), Inception features only.
_PRINTED = {**_SHORT, KEY_IS: "Inception Score"}
# Any other network: a Fréchet (kernel) distance, not an Inception distance, and the network named.
_OTHER = {KEY_IS: "IS", KEY_FID: "FD", KEY_SFID: "sFD", KEY_PRECISION: "Precision", KEY_RECALL: "Recall",
          KEY_KID: "KD", KEY_KID_STD: "KD std", KEY_DENSITY: "Density", KEY_COVERAGE: "Coverage"}


def is_inception(features: str | float | None) -> bool:
    """Whether `features` names the Inception network (missing/empty means the default, Inception)."""
    if features is None or (isinstance(features, float) and math.isnan(features)):
        return True
    return str(features) in ("", *INCEPTION_FEATURES)


def metric_label(key: str, features: str | float | None = None, *, printed: bool = False) -> str:
    """What users read for metric `key` computed on features of network `features`.

    Inception (``inception``, ``inception-tf``, or missing): "IS", "FID", "sFID", "Precision", "Recall";
    with `printed`, the reference evaluator's own "Inception Score" for IS. Any other network is named:
    ``metric_label("fid", "digits") == "FD (digits features)"``. The extra keys read "KID", "KID std",
    "Density", "Coverage" ("KD (digits features)": a kernel distance that is not Inception's). Raises
    InputError for an unknown key.
    """
    if key not in _SHORT:
        raise InputError(f"unknown metric {key!r}; expected one of {', '.join((*METRIC_KEYS, *EXTRA_METRIC_KEYS))}")
    if is_inception(features):
        return (_PRINTED if printed else _SHORT)[key]
    return f"{_OTHER[key]} ({features} features)"


def metric_labels(features: str | float | None = None, *, printed: bool = False,
                  keys: tuple[str, ...] = METRIC_KEYS) -> dict[str, str]:
    """`metric_label` of every key of `keys` (default METRIC_KEYS), in order."""
    return {key: metric_label(key, features, printed=printed) for key in keys}
