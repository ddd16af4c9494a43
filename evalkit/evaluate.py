"""Score a sample batch against a reference batch: the five numbers of OpenAI's ADM evaluator.

As the reference evaluator (``evaluations/evaluator.py`` at ``evalkit.REFERENCE_COMMIT``) does:
features of every image of both batches (the reference's images are always needed for
precision/recall); statistics stored in a batch file used in place of those of its images, when the
network that made them is known (see `evalkit.stored_stats`); Inception Score of the sample's
softmax(logits); FID and sFID with the sample as the first argument; improved precision/recall on
the pool features. Under torchrun every rank extracts a slice; only rank 0 computes metrics.

Beyond the five (selected by `ScoreOptions.metrics`, never changing the five): KID and
density/coverage on the same pool features, and percentile bootstrap intervals that resample the
sample's rows of the features already extracted (`evalkit.metrics.bootstrap`). The recall and
coverage intervals are biased low by construction (a resample holds ~63% distinct samples); the
result's provenance says so next to the numbers.
"""

from __future__ import annotations

import datetime
import time
import warnings

import numpy as np

from evalkit import __version__
from evalkit.cache import write_features
from evalkit.context import Context
from evalkit.errors import BatchFormatError, InputError
from evalkit.extract import MIN_IMAGES, build_extractor, compute_features, open_reader, source_name
from evalkit.metrics import (
    EXTRA_METRIC_KEYS,
    KEY_COVERAGE,
    KEY_DENSITY,
    KEY_FID,
    KEY_IS,
    KEY_KID,
    KEY_KID_STD,
    KEY_PRECISION,
    KEY_RECALL,
    KEY_SFID,
    METRIC_KEYS,
    ConditioningWarning,
    bootstrap_density_coverage,
    bootstrap_frechet,
    bootstrap_inception_score,
    bootstrap_kid,
    bootstrap_precision_recall,
    bootstrap_weights,
    density_coverage,
    feature_statistics,
    frechet_distance,
    inception_score,
    kid,
    manifold_radii,
    percentile_interval,
    precision_recall,
    softmax,
)
from evalkit.metrics.inception_score import IS_SPLIT_SIZE
from evalkit.metrics.keys import CI_KEYS, metric_label, metric_labels
from evalkit.metrics.kid import KID_SEED
from evalkit.metrics.precision_recall import NHOOD_SIZE
from evalkit.options import ScoreOptions
from evalkit.runtime import no_tf32
from evalkit.store import STAT_KEYS
from evalkit.stored_stats import StoredStatistics, choose


class ResolutionWarning(UserWarning):
    """Sample and reference images differ in resolution (allowed, as in the reference, but suspicious)."""


def features_name(extractor) -> str:
    return getattr(extractor, "name", None) or extractor.identity().get("name")


def warn_ill_conditioned(n: int, dims: dict[str, int], what: str, options: ScoreOptions = ScoreOptions()) -> None:
    """One warning when `n` images cannot give full-rank pool/spatial covariances (N <= D) for a
    selected FID/sFID."""
    short = [(feat, label) for feat, label, group in (("pool", "FID", "fid"), ("spatial", "sFID", "sfid"))
             if n <= dims[feat] and options.wants(group)]
    if short:
        sizes = ", ".join(f"{feat} {dims[feat]}" for feat, _ in short)
        metrics = " and ".join(label for _, label in short)
        warnings.warn(f"{what} has {n} images, no more than the feature dimensions ({sizes}): its covariance "
                      f"is singular and the {metrics} ill-conditioned (use more than "
                      f"{max(dims[f] for f, _ in short)} images)", ConditioningWarning, stacklevel=3)


def check_inputs(sample_reader, ref_reader) -> None:
    """Too few images (an error), mismatched resolutions (a warning)."""
    for reader, what in ((sample_reader, "sample batch"), (ref_reader, "reference batch")):
        if reader.num_images < MIN_IMAGES:
            raise BatchFormatError(f"{what} {source_name(reader)} holds {reader.num_images} image(s); at least "
                                   f"{MIN_IMAGES} are needed (covariances need 2, precision/recall the "
                                   f"{NHOOD_SIZE} nearest neighbours)")
    (sh, sw), (rh, rw) = sample_reader.image_shape[:2], ref_reader.image_shape[:2]
    if (sh, sw) != (rh, rw):
        warnings.warn(ResolutionWarning(f"sample images are {sh}x{sw} but reference images are {rh}x{rw}; the "
                                        f"network resizes both, but compare batches of the same resolution"),
                      stacklevel=3)


def _statistics(features: dict[str, np.ndarray], stored: StoredStatistics) -> tuple[np.ndarray, ...]:
    """(mu, sigma, mu_s, sigma_s): the stored ones, else those of the features."""
    if stored.arrays is not None:
        return tuple(stored.arrays[k] for k in STAT_KEYS)
    return (*feature_statistics(features["pool"]), *feature_statistics(features["spatial"]))


def batch_info(reader, content_hash: str | None, stored: StoredStatistics) -> dict:
    return {"path": source_name(reader), "sha256": content_hash, "num_images": int(reader.num_images),
            "image_shape": [int(x) for x in reader.image_shape], "statistics": stored.provenance()}


def check_metric_settings(num_sample: int, num_ref: int, options: ScoreOptions, sample_name: str = "sample batch",
                          ref_name: str = "reference batch") -> None:
    """Refuse, before any extraction, KID subsets larger than a batch and a density/coverage k that
    leaves no k-th neighbour in the reference (InputError naming the option and what to pass)."""
    if options.wants("kid"):
        for n, what in ((num_sample, sample_name), (num_ref, ref_name)):
            if n < options.kid_subset_size:
                raise InputError(f"--kid-subset-size {options.kid_subset_size}: {what} holds {n} images, fewer "
                                 f"than the KID subset size; pass --kid-subset-size {min(num_sample, num_ref)} "
                                 f"or less (or score at least {options.kid_subset_size} images)")
    if options.wants("dc") and num_ref <= options.dc_k:
        raise InputError(f"--dc-k {options.dc_k}: {ref_name} holds {num_ref} images; density/coverage need more "
                         f"than k reference images (each one's k-th nearest other reference); pass --dc-k "
                         f"{num_ref - 1} or less")


def _interval_notes(options: ScoreOptions, sample_stored: StoredStatistics) -> dict[str, str]:
    """What each interval means, where it is not simply the spread of the metric under resampling."""
    notes = {}
    if sample_stored.arrays is not None and (options.wants("fid") or options.wants("sfid")):
        notes["fid"] = notes["sfid"] = ("the point estimate uses the statistics stored in the sample file; the "
                                        "replicates resample the sample's features")
    low = ("biased low by construction: a resample holds ~63% distinct samples, and a reference counts only "
           "when a drawn sample reaches it, so no replicate exceeds the point estimate; read the interval as "
           "the spread under resampling, not as centred on the point estimate (replicate_mean shows the shift)")
    if options.wants("pr"):
        notes[KEY_RECALL] = low + "; sample k-NN radii are held at their full-sample values"
    if options.wants("dc"):
        notes[KEY_COVERAGE] = low
    if options.wants("is"):
        notes[KEY_IS] = f"rows are resampled within each split of {IS_SPLIT_SIZE} (the estimator's splits)"
    return notes


def score_features(sample_feats: dict[str, np.ndarray], ref_feats: dict[str, np.ndarray],
                   options: ScoreOptions = ScoreOptions(), *, sample_stored: StoredStatistics | None = None,
                   ref_stored: StoredStatistics | None = None, device=None) -> tuple[dict, dict]:
    """The selected metrics (and bootstrap intervals) of already extracted features.

    `sample_feats`, `ref_feats`: ``{"pool", "spatial", "logits"}`` float32 arrays; `*_stored`: statistics
    stored in the batch files (None or ``arrays`` None: computed from the features); `device`: a CUDA
    device for precision/recall, else None. Returns (values, provenance): values maps metric keys (the
    five as `evaluate` defines them, then KID, its std, density, coverage) and, with
    ``options.bootstrap``, ``<key>_ci_low``/``<key>_ci_high`` to Python floats; provenance holds the
    metric settings and the bootstrap's (``None`` without one).
    """
    none = StoredStatistics(None, "computed", "")
    sample_stored, ref_stored = sample_stored or none, ref_stored or none
    values: dict[str, float] = {}
    sample_pool, ref_pool = sample_feats["pool"], ref_feats["pool"]
    with no_tf32(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConditioningWarning)
        frechet = options.wants("fid") or options.wants("sfid")
        mu, sigma, mu_s, sigma_s = _statistics(sample_feats, sample_stored) if frechet else (None,) * 4
        ref_mu, ref_sigma, ref_mu_s, ref_sigma_s = _statistics(ref_feats, ref_stored) if frechet else (None,) * 4
        if options.wants("is"):
            values[KEY_IS] = float(np.float32(inception_score(softmax(sample_feats["logits"]),
                                                              split_size=IS_SPLIT_SIZE)))
        if options.wants("fid"):
            values[KEY_FID] = float(np.float64(frechet_distance(mu, sigma, ref_mu, ref_sigma, exact=options.exact_fid)))
        if options.wants("sfid"):
            values[KEY_SFID] = float(np.float64(frechet_distance(mu_s, sigma_s, ref_mu_s, ref_sigma_s,
                                                                 exact=options.exact_fid)))
        if options.wants("pr"):
            precision, recall = precision_recall(ref_pool, sample_pool, k=NHOOD_SIZE, device=device)
            values[KEY_PRECISION], values[KEY_RECALL] = float(precision), float(recall)
        if options.wants("kid"):
            values[KEY_KID], values[KEY_KID_STD] = kid(sample_pool, ref_pool, options.kid_subsets,
                                                       options.kid_subset_size, KID_SEED)
        if options.wants("dc"):
            values[KEY_DENSITY], values[KEY_COVERAGE] = density_coverage(ref_pool, sample_pool, k=options.dc_k)
        settings = {}
        if options.wants("kid"):
            settings["kid"] = {"num_subsets": options.kid_subsets, "subset_size": options.kid_subset_size,
                               "seed": KID_SEED, "kernel": "(x.y/d + 1)^3", "features": "pool",
                               "std": "np.std over subsets (ddof=0)"}
        if options.wants("dc"):
            settings["dc"] = {"k": options.dc_k, "features": "pool", "distance": "euclidean"}
        boot = None
        if options.bootstrap is not None:
            replicates = _bootstrap(sample_feats, ref_feats, options, (ref_mu, ref_sigma, ref_mu_s, ref_sigma_s),
                                    device)
            for key, reps in replicates.items():
                values[f"{key}_ci_low"], values[f"{key}_ci_high"] = percentile_interval(reps, options.confidence)
            boot = {"replicates": options.bootstrap, "seed": options.bootstrap_seed,
                    "confidence": options.confidence,
                    "ci_method": "percentile (np.quantile, linear) of B replicates; the sample's rows are "
                                 "resampled with replacement (multinomial counts from "
                                 "np.random.default_rng(seed)), the reference is held fixed, and the features "
                                 "already extracted are reused",
                    "replicate_mean": {key: float(np.mean(reps)) for key, reps in replicates.items()},
                    "notes": _interval_notes(options, sample_stored)}
    return values, {"metric_settings": settings, "bootstrap": boot}


def _bootstrap(sample_feats, ref_feats, options: ScoreOptions, ref_stats, device) -> dict[str, np.ndarray]:
    """Replicate values [B] of every selected metric that has an interval (module `evalkit.metrics.bootstrap`)."""
    n, b, seed = sample_feats["pool"].shape[0], options.bootstrap, options.bootstrap_seed
    weights = bootstrap_weights(n, b, seed)
    ref_mu, ref_sigma, ref_mu_s, ref_sigma_s = ref_stats
    pool, ref_pool = sample_feats["pool"], ref_feats["pool"]
    out: dict[str, np.ndarray] = {}
    if options.wants("is"):
        out[KEY_IS] = bootstrap_inception_score(softmax(sample_feats["logits"]),
                                                bootstrap_weights(n, b, seed, split_size=IS_SPLIT_SIZE), IS_SPLIT_SIZE)
    if options.wants("fid"):
        out[KEY_FID] = bootstrap_frechet(pool, ref_mu, ref_sigma, weights)
    if options.wants("sfid"):
        out[KEY_SFID] = bootstrap_frechet(sample_feats["spatial"], ref_mu_s, ref_sigma_s, weights)
    if options.wants("pr"):
        radii = manifold_radii(ref_pool, NHOOD_SIZE, device=device), manifold_radii(pool, NHOOD_SIZE, device=device)
        out[KEY_PRECISION], out[KEY_RECALL] = bootstrap_precision_recall(ref_pool, pool, weights, NHOOD_SIZE, *radii)
    if options.wants("kid"):
        out[KEY_KID] = bootstrap_kid(pool, ref_pool, weights, options.kid_subsets, options.kid_subset_size, KID_SEED)
    if options.wants("dc"):
        out[KEY_DENSITY], out[KEY_COVERAGE] = bootstrap_density_coverage(ref_pool, pool, weights, options.dc_k)
    return out


def evaluate(sample, ref, extractor=None, options: ScoreOptions = ScoreOptions(),
             ctx: Context | None = None) -> dict | None:
    """Inception Score, FID, sFID, precision and recall of `sample` against `ref`, as the ADM evaluator,
    and the extra metrics and bootstrap intervals `options` selects.

    `sample`, `ref`: npz paths, known batch names (``imagenet256``) or open store readers.
    `extractor`: a feature extractor object, a registered name, or None for Inception.
    `ctx`: the process context (None: this process alone, on the extractor's device).
    Returns (on rank 0; None on other ranks) a dict with the selected metric keys (Python floats: IS of
    a float32, FID/sFID of float64; by default the five), ``<key>_ci_low``/``_ci_high`` with
    ``options.bootstrap``, ``labels`` (printed label per metric key) and ``provenance`` (including the
    metric settings and the bootstrap's replicates, seed and method). Features are extracted once and
    every metric reuses them.
    """
    start = time.perf_counter()
    if extractor is None or isinstance(extractor, str):
        ctx = ctx or Context.local(None)
        extractor = build_extractor(extractor, ctx)
    ctx = ctx or Context.local(getattr(extractor, "device", "cpu"))
    sample_reader, ref_reader = open_reader(sample), open_reader(ref)
    dims = dict(extractor.feature_dims)

    # Bad input first, before any expensive work: untrusted statistics without images, then too few images.
    ref_stored = choose(ref_reader, extractor, "reference", source_name(ref_reader))
    sample_stored = choose(sample_reader, extractor, "sample", source_name(sample_reader),
                           use=options.use_sample_stats, strict_shapes=True)
    check_inputs(sample_reader, ref_reader)
    check_metric_settings(int(sample_reader.num_images), int(ref_reader.num_images), options,
                          f"sample batch {source_name(sample_reader)}", f"reference batch {source_name(ref_reader)}")
    for reader, stored, what in ((sample_reader, sample_stored, "sample"), (ref_reader, ref_stored, "reference")):
        if stored.arrays is None:
            warn_ill_conditioned(reader.num_images, dims, f"{what} batch {source_name(reader)}", options)

    # Hash each file once (rank 0): cache key and provenance.
    hashes = {}
    if ctx.is_main:
        hashes = {"sample": sample_reader.content_hash(), "ref": ref_reader.content_hash()}
    ref_feats = compute_features(ref_reader, extractor, options, ctx, content_hash=hashes.get("ref"),
                                 desc="reference features")
    sample_feats = compute_features(sample_reader, extractor, options, ctx, content_hash=hashes.get("sample"),
                                    desc="sample features")
    if not ctx.is_main:
        return None

    # Metrics (TF32 off: precision/recall may run on the GPU). Conditioning was warned about above.
    values, extra = score_features(sample_feats, ref_feats, options, sample_stored=sample_stored,
                                   ref_stored=ref_stored, device=ctx.device if ctx.device.type == "cuda" else None)
    provenance = base_provenance(extractor, options, ctx, hashes.get("ref"), ref_stored, sample_stored)
    provenance.update({
        **extra,
        "sample": batch_info(sample_reader, hashes.get("sample"), sample_stored),
        "reference": batch_info(ref_reader, hashes.get("ref"), ref_stored),
        "elapsed_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return result_dict(values, features_name(extractor), provenance)


def base_provenance(extractor, options: ScoreOptions, ctx: Context, ref_sha256: str | None,
                    ref_stored: StoredStatistics, sample_stored: StoredStatistics) -> dict:
    """Versions, network identity, device and settings of a scoring run (the start of its provenance)."""
    identity = extractor.identity()
    return {
        "evalkit_version": __version__,
        "extractor": identity,
        "features": features_name(extractor),
        "backend": identity.get("backend"),
        "weights_sha256": identity.get("weights_sha256"),
        "features_sha256": identity.get("weights_sha256"),
        "reference_sha256": ref_sha256,
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "batch_size": options.batch_size,
        "exact_fid": bool(options.exact_fid),
        "metrics": list(options.metrics),
        "reference_statistics": ref_stored.source,
        "sample_statistics": sample_stored.source,
    }


def result_dict(values: dict[str, float], features: str, provenance: dict) -> dict:
    """`evaluate`'s dict: metric values in column order (five, extras, intervals), labels, provenance."""
    keys = [k for k in (*METRIC_KEYS, *EXTRA_METRIC_KEYS) if k in values]
    ordered = {k: values[k] for k in keys}
    ordered.update({f"{k}_ci_{end}": values[f"{k}_ci_{end}"] for k in CI_KEYS for end in ("low", "high")
                    if f"{k}_ci_{end}" in values})
    return {**ordered, "labels": metric_labels(features, printed=True, keys=tuple(keys)), "provenance": provenance}


def write_batch_features(batch, out, extractor, options: ScoreOptions = ScoreOptions(),
                         ctx: Context | None = None) -> dict[str, tuple[int, ...]] | None:
    """Compute the features of `batch` and write them to the HDF5 file `out` atomically (rank 0).

    Datasets ``pool``, ``spatial``, ``logits`` (float32 [N, D]); attributes ``extractor`` (identity
    JSON), ``batch`` (path), ``batch_sha256``, ``num_images``, ``evalkit_version``. Returns the array
    shapes on rank 0, None on other ranks.
    """
    ctx = ctx or Context.local(getattr(extractor, "device", "cpu"))
    reader = open_reader(batch)
    digest = reader.content_hash() if ctx.is_main else None
    features = compute_features(reader, extractor, options, ctx, content_hash=digest, desc="features")
    if not ctx.is_main:
        return None
    try:
        write_features(out, features, {"extractor": extractor.identity(), "batch": source_name(reader),
                                       "batch_sha256": digest, "num_images": int(reader.num_images),
                                       "evalkit_version": __version__})
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write the feature file ({exc})") from exc
    return {name: tuple(array.shape) for name, array in features.items()}


def format_lines(result: dict) -> list[str]:
    """The lines `evalkit score` prints: the reference evaluator's (``print(label, value)``, in its order)
    for the five numbers present, then the extra metrics, then the bootstrap intervals.

    The five print as Python floats, whose shortest round-trip repr equals ``str()`` of the numpy
    float32/float64 scalars the reference prints. KID prints ×10³ with its std over subsets, as is
    customary (``KID: 1.234 ± 0.050 (×10³)``); density and coverage as the five. Intervals print as
    ``FID 95% CI: [a, b]`` (6 significant digits; KID ×10³); the recall and coverage lines say that
    their intervals are biased low.
    """
    labels = result.get("labels") or {}
    label = (lambda key: labels.get(key) or metric_label(key, printed=True))
    lines = [f"{label(key)}: {result[key]!r}" for key in METRIC_KEYS if key in result]
    if KEY_KID in result:
        lines.append(f"{label(KEY_KID)}: {result[KEY_KID] * 1e3:.3f} ± {result.get(KEY_KID_STD, float('nan')) * 1e3:.3f} "
                     f"(×10³)")
    lines += [f"{label(key)}: {result[key]!r}" for key in (KEY_DENSITY, KEY_COVERAGE) if key in result]
    boot = (result.get("provenance") or {}).get("bootstrap") or {}
    level = f"{100 * boot.get('confidence', 0.95):g}%"
    for key in CI_KEYS:
        if f"{key}_ci_low" not in result:
            continue
        low, high = result[f"{key}_ci_low"], result[f"{key}_ci_high"]
        scale, unit = (1e3, " (×10³)") if key == KEY_KID else (1.0, "")
        note = " (biased low, see README)" if key in (KEY_RECALL, KEY_COVERAGE) else ""
        lines.append(f"{label(key)} {level} CI: [{low * scale:.6g}, {high * scale:.6g}]{unit}{note}")
    return lines
