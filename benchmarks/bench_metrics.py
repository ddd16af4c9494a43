"""Benchmark evalkit.metrics: fast vs exact Fréchet distance, and precision/recall time + peak RSS.

Prints, measured in this run:
* time of the default (factor + singular values) Fréchet distance vs the reference's exact sqrtm path
  at 2048-d, and their ratio (goal >= 3x);
* time and peak RSS of precision_recall at 10k x 10k and 50k x 10k (sample x reference) 2048-d
  features, each in its own subprocess (peak RSS from getrusage(RUSAGE_CHILDREN)); goal <= 2 GB.

Usage:  python benchmarks/bench_metrics.py [--quick] [--device cpu|cuda]
``--quick`` uses 512-d Fréchet statistics and P/R at 2k x 2k and 5k x 2k (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np


def _random_stats(dim: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-rank statistics of correlated, Inception-like nonnegative features."""
    from evalkit.metrics import feature_statistics

    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)).astype(np.float32) / np.sqrt(dim)
    x = np.abs(rng.normal(size=(rows, dim)).astype(np.float32) @ mix) + rng.gamma(1.0, 0.3, size=dim).astype(np.float32)
    return feature_statistics(x)


def bench_frechet(dim: int) -> None:
    from evalkit.metrics import frechet_distance

    rows = 2 * dim + 100
    mu1, s1 = _random_stats(dim, rows, 0)
    mu2, s2 = _random_stats(dim, rows, 1)
    fast_times, fast_cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        fast = frechet_distance(mu1, s1, mu2, s2)
        fast_times.append(time.perf_counter() - t0)
        fast_cpu.append(time.process_time() - c0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        exact = frechet_distance(mu1, s1, mu2, s2, exact=True)
        t_exact, c_exact = time.perf_counter() - t0, time.process_time() - c0
    t_fast, c_fast = min(fast_times), min(fast_cpu)
    print(f"frechet_distance {dim}-d (N={rows}): fast {t_fast:.2f} s wall / {c_fast:.2f} s CPU (min of 3), "
          f"exact sqrtm {t_exact:.2f} s wall / {c_exact:.2f} s CPU, speed-up {t_exact / t_fast:.1f}x wall, "
          f"{c_exact / c_fast:.1f}x CPU; values {fast!r} vs {exact!r} (rel diff "
          f"{abs(fast - exact) / abs(exact):.1e})", flush=True)


def pr_worker(n_sample: int, n_ref: int, dim: int, device: str | None) -> None:
    """Child process: build features, run precision_recall once, print JSON with time and own peak RSS."""
    from evalkit.metrics import precision_recall

    rng = np.random.default_rng(0)
    ref = np.empty((n_ref, dim), np.float32)
    sample = np.empty((n_sample, dim), np.float32)
    for arr, shift in ((ref, 0.0), (sample, 0.05)):
        for i in range(0, len(arr), 5000):  # fill in chunks (no float64 full-size temporaries)
            arr[i:i + 5000] = rng.gamma(2.0, 0.25, size=(min(5000, len(arr) - i), dim)).astype(np.float32) + shift
    t0 = time.perf_counter()
    precision, recall = precision_recall(ref, sample, device=device)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "precision": precision,
                      "recall": recall}))


def bench_pr(n_sample: int, n_ref: int, dim: int, device: str | None) -> None:
    cmd = [sys.executable, __file__, "--pr-worker", str(n_sample), str(n_ref), str(dim)]
    if device:
        cmd += ["--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"precision_recall {n_sample} samples x {n_ref} refs, {dim}-d, device {device or 'numpy'}: "
          f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB (max over children so far "
          f"{children_peak:.0f} MB); P={res['precision']:.4f} R={res['recall']:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--device", default=None, help="torch device for P/R blocks (default: numpy)")
    ap.add_argument("--skip-frechet", action="store_true", help="only run precision/recall")
    ap.add_argument("--pr-worker", nargs=3, type=int, metavar=("N_SAMPLE", "N_REF", "DIM"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pr_worker:
        pr_worker(*args.pr_worker, device=args.device)
        return
    if not args.skip_frechet:
        bench_frechet(512 if args.quick else 2048)
    sizes = [(2000, 2000), (5000, 2000)] if args.quick else [(10000, 10000), (50000, 10000)]
    for n_sample, n_ref in sizes:
        bench_pr(n_sample, n_ref, 2048, args.device)


if __name__ == "__main__":
    main()
