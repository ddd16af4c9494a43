"""Benchmark the extra metrics against the cost of extracting Inception features, measured in this run.

Prints:
* evalkit's Inception feature extraction (random weights, 256x256 uint8 input, CPU/torch threads as set)
  in images/s, EXTRAPOLATED to 50,000 images (a few batches are timed, not 50k);
* KID (100 subsets x 1000), density/coverage (k=5) and a B-replicate bootstrap of every metric (IS, FID,
  sFID, precision/recall, KID, density/coverage) on N samples x M references (2048-d pool, 2023-d
  spatial, 1008 classes), each with its time and its ratio to the extrapolated extraction of N images.
The bootstrap of precision/recall includes computing both sets' radii (as a caller without them would).

Usage:  python benchmarks/bench_extra_metrics.py [--quick] [--replicates B]
Full size: 50,000 samples x 10,000 references, B = 100 (hours on 2 CPU cores). ``--quick``: 5,000 x 3,000,
B = 10, KID 10 subsets (a smoke run; ratios then refer to 5,000 images).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def extraction_seconds_per_image(batch_size: int = 16, batches: int = 2) -> float:
    """Seconds per 256x256 image for evalkit's Inception (random weights; speed does not depend on them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_features import random_weights

    from evalkit.features.inception import InceptionExtractor

    extractor = InceptionExtractor(random_weights(), "cpu", batch_size=batch_size)
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8)
    extractor(images[:2])  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        out = extractor(images)
    seconds = (time.perf_counter() - t0) / (batches * batch_size)
    assert float(out["pool"].std()) > 0  # the net computes something
    return seconds


def _features(n: int, dim: int, seed: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 5000):  # chunked fill: no full-size float64 temporaries
        out[i:i + 5000] = rng.gamma(2.0, 0.25, size=(min(5000, n - i), dim)).astype(np.float32) + shift
    return out


def _timed(label: str, fn, per_image: float, n_images: int):
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    ratio = seconds / (per_image * n_images)
    print(f"{label}: {seconds:.1f} s = {ratio:.3f} x extraction of {n_images} images (extrapolated)", flush=True)
    return value, seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 x 3,000 rows, B = 10, 10 KID subsets")
    parser.add_argument("--replicates", type=int, default=None, help="bootstrap replicates (default 100; 10 quick)")
    args = parser.parse_args(argv)
    from evalkit.metrics import (bootstrap_density_coverage, bootstrap_frechet, bootstrap_inception_score,
                                 bootstrap_kid, bootstrap_precision_recall, bootstrap_weights, density_coverage,
                                 feature_statistics, kid, softmax)

    n, m = (5000, 3000) if args.quick else (50000, 10000)  # quick: still more rows than dimensions
    b = args.replicates or (10 if args.quick else 100)
    subsets = 10 if args.quick else 100
    per_image = extraction_seconds_per_image()
    print(f"evalkit Inception, random weights, 256x256 input, CPU: {1 / per_image:.2f} images/s; "
          f"EXTRAPOLATED: 50,000 images = {50000 * per_image / 60:.1f} min, {n} images = {n * per_image / 60:.1f} min",
          flush=True)
    pool, ref_pool = _features(n, 2048, 0, 0.02), _features(m, 2048, 1, 0.0)
    spatial, ref_spatial = _features(n, 2023, 2, 0.02), _features(m, 2023, 3, 0.0)
    probs = softmax(np.random.default_rng(4).normal(scale=3.0, size=(n, 1008)).astype(np.float32))
    _timed(f"KID ({subsets} subsets x 1000) {n} x {m}", lambda: kid(pool, ref_pool, subsets, 1000), per_image, n)
    _timed(f"density/coverage k=5 {n} x {m}", lambda: density_coverage(ref_pool, pool), per_image, n)
    w = bootstrap_weights(n, b, seed=0)
    w_is = bootstrap_weights(n, b, seed=0, split_size=5000)
    mu_p, s_p = feature_statistics(ref_pool)
    mu_s, s_s = feature_statistics(ref_spatial)
    total = 0.0
    for label, fn in (("IS", lambda: bootstrap_inception_score(probs, w_is)),
                      ("FID", lambda: bootstrap_frechet(pool, mu_p, s_p, w)),
                      ("sFID", lambda: bootstrap_frechet(spatial, mu_s, s_s, w)),
                      ("precision/recall (incl. radii)", lambda: bootstrap_precision_recall(ref_pool, pool, w)),
                      ("KID", lambda: bootstrap_kid(pool, ref_pool, w, subsets, 1000)),
                      ("density/coverage", lambda: bootstrap_density_coverage(ref_pool, pool, w))):
        _, seconds = _timed(f"bootstrap B={b} {label} {n} x {m}", fn, per_image, n)
        total += seconds
    print(f"bootstrap B={b}, all metrics: {total:.1f} s = {total / (per_image * n):.3f} x extraction of {n} "
          f"images (extrapolated); goal < 1", flush=True)


if __name__ == "__main__":
    main()
