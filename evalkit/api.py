"""The Python API: score samples held in memory or on disk from a training loop or a notebook.

    import evalkit
    ref = evalkit.ReferenceStats("imagenet64")            # reference features, computed once
    result = evalkit.score(samples_uint8_nhwc, ref)       # numpy array, torch tensor, path or batches
    print(result.fid, result)                             # numbers; the lines `evalkit score` prints

`score` and `ReferenceStats` accept a path or a known batch name (``imagenet256``), an open store
reader, a uint8 N×H×W×3 numpy array or torch tensor (any device), or an iterable of such batches
(concatenated in memory first: the metrics need every row). Other dtypes follow the store's rules
(integers or whole-number floats in [0, 255]; samples in [-1, 1] must be converted first, the error
says how). In-memory input is never written to the feature cache (a training loop would fill it); it is
hashed (sha256 of its bytes and shape) for the provenance. Files use the cache as `evalkit score` does.

The numbers are those of `evalkit.evaluate` on the same features: `score(array, ref)` equals
``evalkit score`` on the array saved as an npz. One process (no torchrun).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from evalkit.context import Context
from evalkit.errors import InputError
from evalkit.evaluate import (
    base_provenance,
    batch_info,
    build_extractor,
    check_inputs,
    check_metric_settings,
    features_name,
    format_lines,
    result_dict,
    score_features,
    warn_ill_conditioned,
)
from evalkit.extract import MIN_IMAGES, compute_features, open_reader, source_name
from evalkit.metrics import EXTRA_METRIC_KEYS, METRIC_KEYS
from evalkit.metrics.keys import CI_KEYS
from evalkit.options import DEFAULT_METRICS, ScoreOptions
from evalkit.store import ArrayReader
from evalkit.stored_stats import StoredStatistics, choose

_KINDS = "a path, a batch name, a uint8 N×H×W×3 numpy array or torch tensor, or an iterable of such batches"


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def _to_array(x, what: str) -> np.ndarray:
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InputError(f"{what}: found a batch of type {type(x).__name__}; expected {_KINDS}")


def as_reader(images, what: str) -> tuple[Any, bool, bool]:
    """(store reader, in memory?, opened here?) for any accepted input (module doc); InputError otherwise."""
    if isinstance(images, (str, os.PathLike)):
        return open_reader(images), False, True
    if hasattr(images, "iter_images"):
        return images, isinstance(images, ArrayReader), False
    if isinstance(images, np.ndarray) or _is_tensor(images):
        return ArrayReader(_to_array(images, what), name=f"<{what} array>"), True, True
    if isinstance(images, (bytes, dict)) or not isinstance(images, Iterable):
        raise InputError(f"{what}: found {type(images).__name__}; expected {_KINDS}")
    batches = [_to_array(b, f"{what} batch {i}") for i, b in enumerate(images)]
    if not batches:
        raise InputError(f"{what}: the iterator yielded no batches; expected uint8 N×H×W×3 image batches")
    for i, b in enumerate(batches):
        if b.ndim != 4 or b.shape[1:] != batches[0].shape[1:] or b.dtype != batches[0].dtype:
            raise InputError(f"{what}: batch {i} has shape {b.shape} and dtype {b.dtype}, batch 0 "
                             f"{batches[0].shape} {batches[0].dtype}; expected N×H×W×3 batches of one size and dtype")
    return ArrayReader(np.concatenate(batches), name=f"<{what} batches>"), True, True


class ReferenceStats:
    """Features (and stored statistics) of a reference batch, computed or loaded once, for many `score` calls.

    `reference`: any input `score` accepts. `extractor`: a feature extractor object, a registered name or
    None (Inception), built on `device` (None: CUDA when present). A file is read through the feature
    cache (`cache`); an array is extracted once here. Attributes: ``extractor``, ``features`` (``pool``,
    ``spatial``, ``logits`` float32 arrays), ``stored`` (statistics from the file, when trusted),
    ``sha256``, ``name``, ``num_images``, ``image_shape``, ``info`` (provenance of the batch).
    """

    def __init__(self, reference, *, extractor=None, device=None, batch_size: int = 64, cache: bool = True,
                 progress: bool = False, weights: str | None = None):
        options = ScoreOptions(batch_size=batch_size, cache=cache, progress=progress)
        if extractor is None or isinstance(extractor, str):
            extractor = build_extractor(extractor, Context.local(device), weights)
        self.extractor = extractor
        ctx = Context.local(device if device is not None else getattr(extractor, "device", "cpu"))
        reader, memory, owned = as_reader(reference, "reference")
        try:
            self.name = source_name(reader)
            self.stored: StoredStatistics = choose(reader, extractor, "reference", self.name)
            self.num_images, self.image_shape = int(reader.num_images), tuple(reader.image_shape)
            if self.num_images < MIN_IMAGES:
                raise InputError(f"reference batch {self.name} holds {self.num_images} image(s); at least "
                                 f"{MIN_IMAGES} are needed (precision/recall need each image's nearest neighbours)")
            if self.stored.arrays is None:
                warn_ill_conditioned(self.num_images, dict(extractor.feature_dims), f"reference batch {self.name}")
            self.sha256 = reader.content_hash()
            self.features = compute_features(reader, extractor, dataclasses.replace(options, cache=cache and not memory),
                                             ctx, content_hash=self.sha256, desc="reference features")
            self.info = batch_info(reader, self.sha256, self.stored)
            self._shape_reader = _Shape(self.name, self.num_images, self.image_shape)
        finally:
            if owned:
                reader.close()

    def __repr__(self) -> str:
        return f"<ReferenceStats {self.name} {self.num_images} images, {features_name(self.extractor)} features>"


@dataclass(frozen=True)
class _Shape:
    """What the input checks read of a batch that is no longer open."""

    name: str
    num_images: int
    image_shape: tuple


@dataclass(frozen=True)
class ScoreResult:
    """The result of `score`: metric values (None when not computed), intervals, labels, provenance.

    ``intervals`` maps a metric key to its bootstrap (low, high); ``labels`` the printed label per key.
    ``str(result)`` gives the lines `evalkit score` prints; ``to_dict()`` the dict `--json` writes.
    KID values are raw (the printed line shows them ×10³).
    """

    inception_score: float | None = None
    fid: float | None = None
    sfid: float | None = None
    precision: float | None = None
    recall: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    density: float | None = None
    coverage: float | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, result: dict) -> "ScoreResult":
        """From `evalkit.evaluate.evaluate`'s dict (or `to_dict`'s)."""
        values = {k: result[k] for k in (*METRIC_KEYS, *EXTRA_METRIC_KEYS) if k in result}
        spans = {k: (result[f"{k}_ci_low"], result[f"{k}_ci_high"]) for k in CI_KEYS if f"{k}_ci_low" in result}
        return cls(**values, intervals=spans, labels=dict(result.get("labels") or {}),
                   provenance=dict(result.get("provenance") or {}))

    def to_dict(self) -> dict:
        """The `evalkit score --json` dict: metric keys present, ``<key>_ci_low/_high``, labels, provenance."""
        out: dict[str, Any] = {k: getattr(self, k) for k in (*METRIC_KEYS, *EXTRA_METRIC_KEYS)
                               if getattr(self, k) is not None}
        for key in CI_KEYS:
            if key in self.intervals:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = (float(v) for v in self.intervals[key])
        return {**out, "labels": dict(self.labels), "provenance": dict(self.provenance)}

    def __str__(self) -> str:
        return "\n".join(format_lines(self.to_dict()))


def _extractor_for(extractor, ref: ReferenceStats, device):
    """The reference's extractor, or `extractor` when it is the same network (else InputError)."""
    if extractor is None:
        return ref.extractor
    if isinstance(extractor, str):
        if extractor == features_name(ref.extractor):
            return ref.extractor
        extractor = build_extractor(extractor, Context.local(device))
    if extractor.identity() != ref.extractor.identity():
        raise InputError(f"extractor {features_name(extractor)!r} is not the network the ReferenceStats "
                         f"{ref.name} were computed with ({features_name(ref.extractor)!r}); build the "
                         f"ReferenceStats with this extractor")
    return extractor


def score(samples, reference, *, metrics=DEFAULT_METRICS, extractor=None, device=None, bootstrap: int | None = None,
          bootstrap_seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000, dc_k: int = 5,
          confidence: float = 0.95, batch_size: int = 64, cache: bool = True, progress: bool = False,
          exact_fid: bool = False, use_sample_stats: bool = True) -> ScoreResult:
    """Score `samples` against `reference` (a `ReferenceStats`, or any input it accepts) as `evalkit score`.

    `metrics`: names from ``is, fid, sfid, pr, kid, dc`` (a tuple or "is,fid,kid"), default the five.
    `bootstrap`: B replicates for intervals at `confidence` (seeded by `bootstrap_seed`); the recall
    and coverage intervals are biased low (provenance ``bootstrap.notes``). Other keywords as the CLI
    options of the same names. Bad input (an unknown metric, float images in [-1, 1], NCHW arrays, too
    few images for the KID subsets, ...) raises `evalkit.errors.InputError` before any extraction.
    """
    start = time.perf_counter()
    options = ScoreOptions(batch_size=batch_size, cache=cache, progress=progress, exact_fid=exact_fid,
                           use_sample_stats=use_sample_stats, metrics=metrics, bootstrap=bootstrap,
                           bootstrap_seed=bootstrap_seed, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                           dc_k=dc_k, confidence=confidence)
    reader, memory, owned = as_reader(samples, "samples")  # bad samples fail before the reference is read
    try:
        if not isinstance(reference, ReferenceStats):
            reference = ReferenceStats(reference, extractor=extractor, device=device, batch_size=batch_size,
                                       cache=cache, progress=progress)
        ext = _extractor_for(extractor, reference, device)
        ctx = Context.local(device if device is not None else getattr(ext, "device", "cpu"))
        name = source_name(reader)
        sample_stored = choose(reader, ext, "sample", name, use=options.use_sample_stats, strict_shapes=True)
        check_inputs(reader, reference._shape_reader)
        check_metric_settings(int(reader.num_images), reference.num_images, options, f"sample batch {name}",
                              f"reference batch {reference.name}")
        if sample_stored.arrays is None:
            warn_ill_conditioned(int(reader.num_images), dict(ext.feature_dims), f"sample batch {name}", options)
        digest = reader.content_hash()
        feats = compute_features(reader, ext, dataclasses.replace(options, cache=options.cache and not memory), ctx,
                                 content_hash=digest, desc="sample features")
        info = batch_info(reader, digest, sample_stored)
    finally:
        if owned:
            reader.close()
    values, extra = score_features(feats, reference.features, options, sample_stored=sample_stored,
                                   ref_stored=reference.stored, device=ctx.device if ctx.device.type == "cuda" else None)
    provenance = base_provenance(ext, options, ctx, reference.sha256, reference.stored, sample_stored)
    provenance.update({**extra, "sample": info, "reference": reference.info, "in_memory_sample": memory,
                       "elapsed_seconds": round(time.perf_counter() - start, 3),
                       "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return ScoreResult.from_dict(result_dict(values, features_name(ext), provenance))
