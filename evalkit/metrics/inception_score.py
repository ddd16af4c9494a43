"""Inception Score from class probabilities, with the ADM evaluator's splits and float32 arithmetic.

Re-implements ``Evaluator.compute_inception_score`` of the reference evaluator
(``evaluations/evaluator.py`` at ``evalkit.REFERENCE_COMMIT``).
The probabilities are ``softmax(pool_features @ W)`` over the graph's 1008 classes, without bias; the
logits themselves come from the feature extractor.
"""

from __future__ import annotations

import numpy as np

from evalkit.errors import FeatureError
from evalkit.metrics._validate import check_features

IS_SPLIT_SIZE = 5000  # consecutive rows per split, in file order


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float32 (as TensorFlow's ``tf.nn.softmax`` in the evaluator's graph).

    Args:
        logits: [N, K] array (cast to float32), finite.
    Returns:
        float32 [N, K] probabilities; each row sums to 1 up to float32 rounding. Rows are
        independent (the reference's 512-row chunks do not change the result).
    """
    x = check_features(logits, "logits", min_rows=1)
    x = x - np.max(x, axis=1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=1, keepdims=True)


def _check_probs(probs) -> np.ndarray:
    """float32 [N, K] probabilities, or FeatureError saying what is wrong."""
    p = check_features(probs, "probs", min_rows=1)
    lo, hi = float(p.min()), float(p.max())
    if lo < 0 or hi > 1:
        raise FeatureError(f"probs: expected class probabilities in [0, 1], found values in [{lo:.4g}, {hi:.4g}] "
                           f"(pass softmax(logits), not logits)")
    sums = p.sum(axis=1, dtype=np.float64)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > 1e-3:
        raise FeatureError(f"probs: expected each row to sum to 1, found row {worst} summing to "
                           f"{sums[worst]:.6g} (pass softmax(logits))")
    return p


def inception_score(probs, split_size: int = IS_SPLIT_SIZE) -> float:
    """Inception Score of class probabilities, exactly as the ADM evaluator computes it.

    Rows are split into consecutive chunks of ``split_size`` in the given order (a final partial chunk
    is a split of equal weight); per split ``exp(mean_i KL(p_i || mean_j p_j))``; the score is the mean
    over splits. All arithmetic is float32, as in the reference. Zero probabilities contribute 0
    (the limit of p log p), where the reference would produce NaN.

    Args:
        probs: [N, K] class probabilities (rows sum to 1), e.g. ``softmax(logits)``.
        split_size: rows per split (reference default 5000: 10 splits for 50,000 samples).
    Returns:
        The score as a Python float (a float32 value), between 1 and K.
    """
    p = _check_probs(probs)
    if int(split_size) < 1:
        raise FeatureError(f"split_size: expected a positive number of rows per split, got {split_size}")
    split_size = int(split_size)
    scores = []
    for start in range(0, p.shape[0], split_size):
        part = p[start:start + split_size]
        marg = np.expand_dims(np.mean(part, 0), 0)
        # Same float32 expression as the reference; 0 * log(0) terms are set to their limit 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(marg))
        kl = np.where(part > 0, kl, np.float32(0))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return float(np.mean(scores))
