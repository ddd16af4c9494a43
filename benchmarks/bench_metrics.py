"""Benchmark evalkit.metrics: fast vs exact Fréchet distance; precision/recall vs the reference evaluator.

Prints, measured in this run:
* time of the default (factor + singular values) Fréchet distance vs the reference's exact sqrtm path
  at 2048-d, and their ratio (goal >= 3x);
* precision/recall at 10k x 10k and 50k x 10k (sample x reference) 2048-d seeded features: evalkit's
  time and peak RSS (goal <= 2 GB), each in its own subprocess; with ``--reference-evaluator PATH``
  (guided-diffusion's ``evaluations/evaluator.py``, imported by path, never copied) and TensorFlow
  installed, the reference's ``ManifoldEstimator`` (TF on the CPU, the calls ``compute_prec_recall``
  makes) on the same features, both results and the speed ratio (goal >= 1.5x); and whether evalkit's
  radii, memberships and P/R equal the previous float64-exact path (``exact=True``, slow: skip with
  ``--skip-exact``).

* with ``--extras``: after those, ``bench_extra_metrics.py`` in the same process (its own ``--quick``
  when this run is quick): evalkit's Inception feature-extraction rate, then KID (100 subsets x 1000),
  density/coverage (k = 5) and a B = 100 bootstrap of every metric, each with its ratio to extracting
  the features of the same images (goal for the bootstrap: < 1).

Usage:  python benchmarks/bench_metrics.py [--quick] [--device cpu|cuda] [--reference-evaluator PATH]
        [--skip-exact] [--skip-frechet] [--pr-sizes 10000x10000,50000x10000] [--extras [--replicates B]]
``--quick`` uses 512-d Fréchet statistics and P/R at 2k x 2k and 5k x 2k (a smoke run).
One command for the whole metric cost table (issue figures):
        python benchmarks/bench_metrics.py --extras --reference-evaluator PATH
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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


def pr_features(n_sample: int, n_ref: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded Inception-like (nonnegative, gamma) features: (ref [n_ref, dim], sample [n_sample, dim])."""
    rng = np.random.default_rng(0)
    ref = np.empty((n_ref, dim), np.float32)
    sample = np.empty((n_sample, dim), np.float32)
    for arr, shift in ((ref, 0.0), (sample, 0.05)):
        for i in range(0, len(arr), 5000):  # fill in chunks (no float64 full-size temporaries)
            arr[i:i + 5000] = rng.gamma(2.0, 0.25, size=(min(5000, len(arr) - i), dim)).astype(np.float32) + shift
    return ref, sample


def pr_worker(n_sample: int, n_ref: int, dim: int, device: str | None, mode: str, out: str) -> None:
    """Child process: one P/R computation (evalkit fast/exact or the reference's TF estimator); prints
    JSON with time and its own peak RSS; saves radii and memberships (evalkit only) to ``out`` (npz)."""
    ref, sample = pr_features(n_sample, n_ref, dim)
    # imports and session set-up happen before the clock starts, for both implementations
    if mode == "tf":
        est = _reference_estimator(os.environ["BENCH_REFERENCE_EVALUATOR"])
    else:
        import torch  # noqa: F401  (imported lazily by the fast path)

        from evalkit.metrics import manifold_membership, manifold_radii
    t0 = time.perf_counter()
    if mode == "tf":
        r_ref, r_sample, precision, recall = _reference_pr(est, ref, sample)
        ref_in = sample_in = np.zeros(0, bool)  # the reference returns only the means
    else:
        exact = mode == "exact"
        r_ref = manifold_radii(ref, device=device, exact=exact)
        r_sample = manifold_radii(sample, device=device, exact=exact)
        ref_in, sample_in = manifold_membership(ref, r_ref, sample, r_sample, device=device, exact=exact)
        precision, recall = float(np.mean(sample_in)), float(np.mean(ref_in))
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.savez(out, r_ref=r_ref, r_sample=r_sample, ref_in=ref_in, sample_in=sample_in)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "precision": precision, "recall": recall}))


def _reference_estimator(path: str):
    """The reference evaluator's ManifoldEstimator (module imported by path) on a CPU-only TF session."""
    import importlib.util

    if not hasattr(np, "bool"):
        np.bool = bool  # the reference uses np.bool (removed in numpy 1.24); restore it here, not in its file
    spec = importlib.util.spec_from_file_location("reference_evaluator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tf = module.tf
    return module.ManifoldEstimator(tf.Session(config=tf.ConfigProto(device_count={"GPU": 0})))


def _reference_pr(est, ref: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(radii_ref, radii_sample, precision, recall) with the calls Evaluator.compute_prec_recall makes."""
    radii_ref = est.manifold_radii(ref)
    radii_sample = est.manifold_radii(sample)
    precision, recall = est.evaluate_pr(ref, radii_ref, sample, radii_sample)
    return radii_ref[:, 0], radii_sample[:, 0], float(precision[0]), float(recall[0])


def _run_worker(n_sample: int, n_ref: int, dim: int, device: str | None, mode: str, out: str,
                env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--pr-worker", str(n_sample), str(n_ref), str(dim), "--mode", mode, "--out", out]
    if device:
        cmd += ["--device", device]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _tf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def bench_pr(n_sample: int, n_ref: int, dim: int, device: str | None, reference: str | None,
             check_exact: bool) -> None:
    """evalkit vs the reference's estimator (same features, same run) and vs evalkit's exact path."""
    label = f"P/R {n_sample} samples x {n_ref} refs, {dim}-d"
    with tempfile.TemporaryDirectory() as tmp:
        fast = _run_worker(n_sample, n_ref, dim, device, "fast", os.path.join(tmp, "fast.npz"))
        print(f"{label}: evalkit ({device or 'cpu'}) {fast['seconds']:.1f} s, peak RSS {fast['peak_rss_mb']:.0f} MB; "
              f"P={fast['precision']!r} R={fast['recall']!r}", flush=True)
        if reference and _tf_available():
            env = dict(os.environ, BENCH_REFERENCE_EVALUATOR=reference, CUDA_VISIBLE_DEVICES="",
                       TF_CPP_MIN_LOG_LEVEL="2")
            ref = _run_worker(n_sample, n_ref, dim, None, "tf", os.path.join(tmp, "tf.npz"), env=env)
            print(f"{label}: reference ManifoldEstimator (TF CPU) {ref['seconds']:.1f} s, peak RSS "
                  f"{ref['peak_rss_mb']:.0f} MB; P={ref['precision']!r} R={ref['recall']!r}; "
                  f"evalkit speed-up {ref['seconds'] / fast['seconds']:.2f}x (goal >= 1.5x; P/R differ by "
                  f"{abs(ref['precision'] - fast['precision']):.1e}/{abs(ref['recall'] - fast['recall']):.1e}: "
                  f"TF-on-CPU half arithmetic vs the emulated GPU semantics)", flush=True)
        elif reference:
            print(f"{label}: reference comparison skipped (TensorFlow is not installed: pip install evalkit[tf])")
        else:
            print(f"{label}: reference comparison skipped (no --reference-evaluator PATH given)")
        if check_exact:
            ex = _run_worker(n_sample, n_ref, dim, device, "exact", os.path.join(tmp, "exact.npz"))
            a, b = np.load(os.path.join(tmp, "fast.npz")), np.load(os.path.join(tmp, "exact.npz"))
            same = {key: bool(np.array_equal(a[key], b[key])) for key in ("r_ref", "r_sample", "ref_in", "sample_in")}
            same_pr = (fast["precision"], fast["recall"]) == (ex["precision"], ex["recall"])
            print(f"{label}: previous float64-exact path {ex['seconds']:.1f} s; identical to evalkit: "
                  f"P/R {same_pr}, " + ", ".join(f"{k} {v}" for k, v in same.items()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--device", default=None, help="torch device for P/R (default: the CPU)")
    ap.add_argument("--skip-frechet", action="store_true", help="only run precision/recall")
    ap.add_argument("--skip-exact", action="store_true", help="do not run the slow float64-exact P/R check")
    ap.add_argument("--reference-evaluator", metavar="PATH", default=None,
                    help="guided-diffusion evaluations/evaluator.py, to time its ManifoldEstimator (needs TensorFlow)")
    ap.add_argument("--pr-sizes", default=None, metavar="SxR,...",
                    help="P/R sizes as samples x refs (default 10000x10000,50000x10000; --quick 2000x2000,5000x2000)")
    ap.add_argument("--extras", action="store_true",
                    help="also run bench_extra_metrics.py: KID, density/coverage and the B = 100 bootstrap next to "
                         "the feature-extraction time")
    ap.add_argument("--replicates", type=int, default=None,
                    help="bootstrap replicates of --extras (default 100; 10 with --quick)")
    ap.add_argument("--pr-worker", nargs=3, type=int, metavar=("N_SAMPLE", "N_REF", "DIM"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="fast", choices=("fast", "exact", "tf"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pr_worker:
        pr_worker(*args.pr_worker, device=args.device, mode=args.mode, out=args.out)
        return
    if args.reference_evaluator and not os.path.isfile(args.reference_evaluator):
        ap.error(f"--reference-evaluator: no such file: {args.reference_evaluator}")
    if not args.skip_frechet:
        bench_frechet(512 if args.quick else 2048)
    sizes = [(2000, 2000), (5000, 2000)] if args.quick else [(10000, 10000), (50000, 10000)]
    if args.pr_sizes:
        try:
            sizes = [tuple(int(v) for v in item.lower().split("x")) for item in args.pr_sizes.split(",")]
            assert all(len(sz) == 2 and min(sz) > 3 for sz in sizes)
        except (ValueError, AssertionError):
            ap.error(f"--pr-sizes: expected SAMPLESxREFS[,...] with sizes > 3, got {args.pr_sizes!r}")
    for n_sample, n_ref in sizes:
        bench_pr(n_sample, n_ref, 2048, args.device, args.reference_evaluator, not args.skip_exact)
    if args.extras:
        bench_extras(args.quick, args.replicates)


def bench_extras(quick: bool, replicates: int | None) -> None:
    """bench_extra_metrics.py's main (same folder), with its --quick and --replicates."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_extra_metrics

    print("--- extra metrics (bench_extra_metrics.py) ---", flush=True)
    bench_extra_metrics.main((["--quick"] if quick else []) + ([f"--replicates={replicates}"] if replicates else []))


if __name__ == "__main__":
    main()
