"""Score a sample batch against a reference batch: the five numbers of OpenAI's ADM evaluator.

As the reference evaluator (``evaluations/evaluator.py`` at ``evalkit.REFERENCE_COMMIT``) does:
features of every image of both batches (the reference's images are always needed for
precision/recall); statistics stored in a batch file used in place of those of its images, when the
network that made them is known (see `evalkit.stored_stats`); Inception Score of the sample's
softmax(logits); FID and sFID with the sample as the first argument; improved precision/recall on
the pool features. Under torchrun every rank extracts a slice; only rank 0 computes metrics.
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
    KEY_FID,
    KEY_IS,
    KEY_PRECISION,
    KEY_RECALL,
    KEY_SFID,
    METRIC_KEYS,
    ConditioningWarning,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
    softmax,
)
from evalkit.metrics.inception_score import IS_SPLIT_SIZE
from evalkit.metrics.keys import metric_label, metric_labels
from evalkit.metrics.precision_recall import NHOOD_SIZE
from evalkit.options import ScoreOptions
from evalkit.runtime import no_tf32
from evalkit.store import STAT_KEYS
from evalkit.stored_stats import StoredStatistics, choose


class ResolutionWarning(UserWarning):
    """Sample and reference images differ in resolution (allowed, as in the reference, but suspicious)."""


def _features_name(extractor) -> str:
    return getattr(extractor, "name", None) or extractor.identity().get("name")


def _warn_ill_conditioned(n: int, dims: dict[str, int], what: str) -> None:
    """One warning when `n` images cannot give full-rank pool/spatial covariances (N <= D)."""
    short = [(feat, label) for feat, label in (("pool", "FID"), ("spatial", "sFID")) if n <= dims[feat]]
    if short:
        sizes = ", ".join(f"{feat} {dims[feat]}" for feat, _ in short)
        metrics = " and ".join(label for _, label in short)
        warnings.warn(f"{what} has {n} images, no more than the feature dimensions ({sizes}): its covariance "
                      f"is singular and the {metrics} ill-conditioned (use more than "
                      f"{max(dims[f] for f, _ in short)} images)", ConditioningWarning, stacklevel=3)


def _check_inputs(sample_reader, ref_reader) -> None:
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


def _batch_info(reader, content_hash: str | None, stored: StoredStatistics) -> dict:
    return {"path": source_name(reader), "sha256": content_hash, "num_images": int(reader.num_images),
            "image_shape": [int(x) for x in reader.image_shape], "statistics": stored.provenance()}


def evaluate(sample, ref, extractor=None, options: ScoreOptions = ScoreOptions(),
             ctx: Context | None = None) -> dict | None:
    """Inception Score, FID, sFID, precision and recall of `sample` against `ref`, as the ADM evaluator.

    `sample`, `ref`: npz paths, known batch names (``imagenet256``) or open store readers.
    `extractor`: a feature extractor object, a registered name, or None for Inception.
    `ctx`: the process context (None: this process alone, on the extractor's device).
    Returns (on rank 0; None on other ranks) a dict with the five metric keys (Python floats: IS of a
    float32, FID/sFID of float64), ``labels`` (printed label per key) and ``provenance``.
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
    _check_inputs(sample_reader, ref_reader)
    for reader, stored, what in ((sample_reader, sample_stored, "sample"), (ref_reader, ref_stored, "reference")):
        if stored.arrays is None:
            _warn_ill_conditioned(reader.num_images, dims, f"{what} batch {source_name(reader)}")

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
    with no_tf32(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConditioningWarning)
        mu, sigma, mu_s, sigma_s = _statistics(sample_feats, sample_stored)
        ref_mu, ref_sigma, ref_mu_s, ref_sigma_s = _statistics(ref_feats, ref_stored)
        fid = frechet_distance(mu, sigma, ref_mu, ref_sigma, exact=options.exact_fid)
        sfid = frechet_distance(mu_s, sigma_s, ref_mu_s, ref_sigma_s, exact=options.exact_fid)
        score = inception_score(softmax(sample_feats["logits"]), split_size=IS_SPLIT_SIZE)
        precision, recall = precision_recall(ref_feats["pool"], sample_feats["pool"], k=NHOOD_SIZE,
                                             device=ctx.device if ctx.device.type == "cuda" else None)

    identity = extractor.identity()
    features = _features_name(extractor)
    provenance = {
        "evalkit_version": __version__,
        "extractor": identity,
        "features": features,
        "backend": identity.get("backend"),
        "weights_sha256": identity.get("weights_sha256"),
        "features_sha256": identity.get("weights_sha256"),
        "reference_sha256": hashes.get("ref"),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "batch_size": options.batch_size,
        "exact_fid": bool(options.exact_fid),
        "reference_statistics": ref_stored.source,
        "sample_statistics": sample_stored.source,
        "sample": _batch_info(sample_reader, hashes.get("sample"), sample_stored),
        "reference": _batch_info(ref_reader, hashes.get("ref"), ref_stored),
        "elapsed_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return {
        KEY_IS: float(np.float32(score)),
        KEY_FID: float(np.float64(fid)),
        KEY_SFID: float(np.float64(sfid)),
        KEY_PRECISION: float(precision),
        KEY_RECALL: float(recall),
        "labels": metric_labels(features, printed=True),
        "provenance": provenance,
    }


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
    """The five lines the reference evaluator prints (``print(label, value)``), in its order.

    Values print as Python floats, whose shortest round-trip repr equals ``str()`` of the numpy
    float32/float64 scalars the reference prints.
    """
    labels = result.get("labels") or {key: metric_label(key, printed=True) for key in METRIC_KEYS}
    return [f"{labels[key]}: {result[key]!r}" for key in METRIC_KEYS]
