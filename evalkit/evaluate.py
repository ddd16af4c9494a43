"""Score a sample batch against a reference batch: the five numbers of OpenAI's ADM evaluator.

Follows ``evaluations/evaluator.py`` of openai/guided-diffusion (commit
22e0df8183507e13a7813f8d38d51b072ca1e67c): features of every image of both batches (the reference's
images are always needed for precision/recall); the reference's precomputed ``mu``/``sigma``/``mu_s``/
``sigma_s`` when the file has them, else statistics computed from its features; sample statistics
always computed; Inception Score of the sample's softmax(logits) in splits of 5000; FID and sFID with
the sample as the first argument; improved precision/recall (k = 3) on the pool features.

Under ``torchrun`` each rank extracts a contiguous slice of every batch; the slices are gathered in
rank order, so the numbers equal those of one process. Only rank 0 computes metrics.
"""

from __future__ import annotations

import datetime
import sys
import time
import warnings

import numpy as np
import torch
from tqdm import tqdm

from evalkit import __version__
from evalkit.cache import feature_key, load_cached, releases_claims, store_cached, write_features
from evalkit.errors import BatchFormatError, FeatureError, InputError
from evalkit.features import DEFAULT_EXTRACTOR, FEATURE_NAMES, get_extractor
from evalkit.metrics import (
    KEY_FID,
    KEY_IS,
    KEY_PRECISION,
    KEY_RECALL,
    KEY_SFID,
    ConditioningWarning,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
    softmax,
)
from evalkit.plugins import load_plugins
from evalkit.refbatches import resolve_batch
from evalkit.runtime import is_main, no_tf32, rank, resolve_device, shard_range, world_size
from evalkit.store import STAT_KEYS, open_batch

# The order and labels of the reference evaluator's printout (spec evaluator.md §1).
METRIC_ORDER = (KEY_IS, KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL)
INCEPTION_LABELS = {KEY_IS: "Inception Score", KEY_FID: "FID", KEY_SFID: "sFID",
                    KEY_PRECISION: "Precision", KEY_RECALL: "Recall"}
INCEPTION_NAMES = ("inception", "inception-tf")  # extractors whose numbers may be called IS/FID/sFID
IS_SPLIT_SIZE = 5000  # reference evaluator's Inception Score split
PR_K = 3  # reference evaluator's nhood_sizes=(3,)
MIN_IMAGES = PR_K + 1  # precision/recall need each point's 3rd nearest other point


class ResolutionWarning(UserWarning):
    """Sample and reference images differ in resolution (allowed, as in the reference, but suspicious)."""


# ---------------------------------------------------------------------------------------------
# Inputs

def _open(batch):
    """A store reader for a path, a batch name, or an already open reader."""
    if hasattr(batch, "iter_images"):
        return batch
    return open_batch(resolve_batch(batch))


def _source(reader) -> str:
    return str(getattr(reader, "path", None) or getattr(reader, "name", None) or "batch")


def build_extractor(name: str | None = None, device: str | torch.device | None = None, path: str | None = None):
    """Build the registered feature extractor `name` (default Inception) after loading ``$EVALKIT_PLUGINS``."""
    load_plugins()
    options = {"device": resolve_device(device)}
    if path is not None:
        options["path"] = path
    return get_extractor(name or DEFAULT_EXTRACTOR, **options)


def metric_labels(extractor) -> dict[str, str]:
    """Printed label per metric key: the extractor's own, else Inception's names only for Inception."""
    own = dict(getattr(extractor, "metric_labels", None) or {})
    name = getattr(extractor, "name", "features")
    labels = {}
    for key in METRIC_ORDER:
        if key in own:
            labels[key] = own[key]
        elif name in INCEPTION_NAMES or key in (KEY_PRECISION, KEY_RECALL):
            labels[key] = INCEPTION_LABELS[key]
        else:
            labels[key] = {KEY_IS: f"IS ({name})", KEY_FID: f"FD ({name} features)",
                           KEY_SFID: f"sFD ({name} features)"}[key]
    return labels


def _check_images(images: np.ndarray, source: str, offset: int) -> np.ndarray:
    """Every batch must be uint8 NHWC RGB (the store converts and validates other dtypes, NaN included)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise BatchFormatError(f"{source}: images {offset}.. have shape {images.shape} and dtype {images.dtype}; "
                               f"expected uint8 N×H×W×3")
    return images


# ---------------------------------------------------------------------------------------------
# Distributed helpers (no-ops in one process)

def _distributed() -> bool:
    return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def _broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not _distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather_rows(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's rows in rank order, on every rank (padded all_gather)."""
    if not _distributed():
        return local
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    rows = next(iter(local.values())).shape[0]
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([rows], dtype=torch.int64, device=device))
    counts = [int(c.item()) for c in counts]
    longest = max(counts)
    out = {}
    for name, array in local.items():
        padded = torch.zeros((longest, array.shape[1]), dtype=torch.float32, device=device)
        padded[:rows] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out[name] = np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts)])
    return out


# ---------------------------------------------------------------------------------------------
# Features

@releases_claims  # a cache miss claims the key until stored; never past this call
def compute_features(batch, extractor, batch_size: int = 64, device: str | torch.device | None = None,
                     cache: bool = True, progress: bool = True, *, content_hash: str | None = None,
                     desc: str = "features") -> dict[str, np.ndarray]:
    """Features of every image of a batch, streamed `batch_size` images at a time, in file order.

    `batch` is a path, a known batch name or an open store reader; `extractor` a registered feature
    extractor (``extractor(uint8 [B, H, W, 3]) -> {"pool", "spatial", "logits"}``). Returns float32
    arrays ``pool`` [N, D_pool], ``spatial`` [N, D_spatial], ``logits`` [N, K] (on every rank under
    torchrun: each rank extracts its ``shard_range`` slice, then rows are gathered in order).
    With `cache`, features are read from / written to the feature cache keyed by the batch content
    hash (`content_hash` if already known) and ``extractor.identity()``. `device` is accepted for
    symmetry; the extractor already lives on its device.
    """
    del device  # the extractor was built on its device
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1; got {batch_size}")
    reader = _open(batch)
    source = _source(reader)
    n = int(reader.num_images)
    dims = dict(extractor.feature_dims)

    # Cache lookup: rank 0 decides (hashing the batch once), every rank follows.
    key = None
    if cache:
        if is_main():
            key = feature_key(content_hash or reader.content_hash(), n, extractor.identity())
            hit = load_cached(key) is not None
        key, hit = _broadcast((key, hit if is_main() else None))
        if hit:
            cached = load_cached(key)
            if cached is not None:
                return cached
            if _distributed():  # rank 0 found it but this rank cannot read it: stop rather than hang
                raise FeatureError(f"rank {rank()}: cannot read the feature cache file rank 0 found for {source}; "
                                   f"rerun with --no-cache")

    # Extract this rank's contiguous slice.
    shard = shard_range(n)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FEATURE_NAMES}
    done = shard.start
    with tqdm(total=len(shard), unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True,
              disable=not (progress and is_main())) as bar:
        for images in reader.iter_images(batch_size, start=shard.start, stop=shard.stop):
            images = _check_images(images, source, done)
            out = extractor(images)
            for name in FEATURE_NAMES:
                if name not in out:
                    raise FeatureError(f"feature extractor {extractor.name!r} returned no {name!r} features "
                                       f"(got {sorted(out)})")
                array = np.asarray(out[name], dtype=np.float32)
                array = array.reshape(len(array), -1)
                if array.shape != (len(images), dims[name]):
                    raise FeatureError(f"feature extractor {extractor.name!r} returned {name} features of shape "
                                       f"{array.shape} for {len(images)} images; expected "
                                       f"({len(images)}, {dims[name]})")
                if not np.isfinite(array).all():
                    raise FeatureError(f"feature extractor {extractor.name!r} produced non-finite {name} "
                                       f"features for images {done}..{done + len(images) - 1} of {source}")
                parts[name].append(array)
            done += len(images)
            bar.update(len(images))
    local = {name: np.concatenate(parts[name]) if parts[name] else np.zeros((0, dims[name]), np.float32)
             for name in FEATURE_NAMES}
    if done != shard.stop:
        raise BatchFormatError(f"{source}: expected images {shard.start}..{shard.stop - 1}, read up to {done - 1}")
    features = _gather_rows(local)
    assert all(len(array) == n for array in features.values()), "gathered feature rows != images"
    if is_main() and key is not None:
        try:
            store_cached(key, features)
        except OSError as exc:  # a read-only or full cache must not fail the evaluation
            warnings.warn(f"could not write the feature cache for {source}: {exc}", stacklevel=2)
    return features


# ---------------------------------------------------------------------------------------------
# Evaluation

def _reference_statistics(reader, dims: dict[str, int], source: str,
                          identity: dict | None = None) -> dict[str, np.ndarray] | None:
    """The reference file's precomputed statistics if usable with this extractor, else None (warns).

    A reference written by `evalkit ref build` records the feature network its statistics came from
    (``evalkit_meta``); statistics of another network, or of other weights, are not used.
    """
    stats = reader.statistics
    if not stats:
        return None
    built_with = _statistics_extractor(reader)
    if built_with is not None and identity is not None:
        differs = [k for k in ("name", "weights_sha256") if k in built_with and built_with.get(k) != identity.get(k)]
        if differs:
            warnings.warn(f"{source}: its statistics were computed with feature network "
                          f"{built_with.get('name')!r} (weights {str(built_with.get('weights_sha256'))[:12]}…), not "
                          f"{identity.get('name')!r} (weights {str(identity.get('weights_sha256'))[:12]}…); "
                          f"computing the reference statistics from its images instead", stacklevel=3)
            return None
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise BatchFormatError(f"{source}: has precomputed statistics but lacks {', '.join(missing)}; "
                               f"expected all of {', '.join(STAT_KEYS)}")
    want = {"mu": (dims["pool"],), "sigma": (dims["pool"], dims["pool"]),
            "mu_s": (dims["spatial"],), "sigma_s": (dims["spatial"], dims["spatial"])}
    found = {k: tuple(np.shape(stats[k])) for k in STAT_KEYS}
    if found != want:
        warnings.warn(f"{source}: its precomputed statistics have shapes {found}, but the feature network "
                      f"gives {want}; computing the reference statistics from its images instead", stacklevel=3)
        return None
    return {k: np.asarray(stats[k]) for k in STAT_KEYS}


def _statistics_extractor(reader) -> dict | None:
    """The extractor identity an `evalkit ref build` reference records, or None (OpenAI's files)."""
    from evalkit.refbuild import META_KEY, reference_meta

    if reader.format != "npz" or META_KEY not in getattr(reader, "extra_keys", ()):
        return None
    return (reference_meta(reader.path) or {}).get("extractor")


def _warn_ill_conditioned(n: int, dims: dict[str, int], what: str) -> None:
    """One warning when `n` images cannot give full-rank pool/spatial covariances (N <= D)."""
    short = [(feat, label) for feat, label in (("pool", "FID"), ("spatial", "sFID")) if n <= dims[feat]]
    if short:
        sizes = ", ".join(f"{feat} {dims[feat]}" for feat, _ in short)
        metrics = " and ".join(label for _, label in short)
        warnings.warn(f"{what} has {n} images, no more than the feature dimensions ({sizes}): its covariance "
                      f"is singular and the {metrics} ill-conditioned (use more than "
                      f"{max(dims[f] for f, _ in short)} images)", ConditioningWarning, stacklevel=3)


def _batch_info(reader, content_hash: str | None) -> dict:
    return {"path": _source(reader), "sha256": content_hash, "num_images": int(reader.num_images),
            "image_shape": [int(x) for x in reader.image_shape]}


def evaluate(sample, ref, extractor=None, *, batch_size: int = 64, device: str | torch.device | None = None,
             cache: bool = True, progress: bool = True, exact_fid: bool = False) -> dict | None:
    """Inception Score, FID, sFID, precision and recall of `sample` against `ref`, as the ADM evaluator.

    `sample`, `ref`: npz paths, known batch names (``imagenet256``) or open store readers.
    `extractor`: a feature extractor object, a registered name, or None for Inception.
    Returns (on rank 0; None on other ranks) a dict with the five metric keys (Python floats: IS of a
    float32, FID/sFID of float64), ``labels`` (printed label per key) and ``provenance``.
    """
    start = time.perf_counter()
    device = resolve_device(device)
    if extractor is None or isinstance(extractor, str):
        extractor = build_extractor(extractor, device)
    sample_reader, ref_reader = _open(sample), _open(ref)
    sample_src, ref_src = _source(sample_reader), _source(ref_reader)
    dims = dict(extractor.feature_dims)

    # Bad input first, before any expensive work.
    for reader, src, what in ((sample_reader, sample_src, "sample batch"), (ref_reader, ref_src, "reference batch")):
        if reader.num_images < MIN_IMAGES:
            raise BatchFormatError(f"{what} {src} holds {reader.num_images} image(s); at least {MIN_IMAGES} are "
                                   f"needed (covariances need 2, precision/recall the {PR_K} nearest neighbours)")
    (sh, sw), (rh, rw) = sample_reader.image_shape[:2], ref_reader.image_shape[:2]
    if (sh, sw) != (rh, rw):
        warnings.warn(ResolutionWarning(f"sample images are {sh}x{sw} but reference images are {rh}x{rw}; the "
                                        f"network resizes both, but compare batches of the same resolution"),
                      stacklevel=2)
    ref_stats = _reference_statistics(ref_reader, dims, ref_src, extractor.identity())
    _warn_ill_conditioned(sample_reader.num_images, dims, f"sample batch {sample_src}")
    if ref_stats is None:
        _warn_ill_conditioned(ref_reader.num_images, dims, f"reference batch {ref_src}")

    # Hash each file once (rank 0): cache key and provenance.
    hashes = {}
    if is_main():
        hashes = {"sample": sample_reader.content_hash(), "ref": ref_reader.content_hash()}
    ref_feats = compute_features(ref_reader, extractor, batch_size, device, cache, progress,
                                 content_hash=hashes.get("ref"), desc="reference features")
    sample_feats = compute_features(sample_reader, extractor, batch_size, device, cache, progress,
                                    content_hash=hashes.get("sample"), desc="sample features")
    if not is_main():
        return None

    # Metrics (TF32 off: precision/recall may run on the GPU). Conditioning was warned about above.
    with no_tf32(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConditioningWarning)
        mu, sigma = feature_statistics(sample_feats["pool"])
        mu_s, sigma_s = feature_statistics(sample_feats["spatial"])
        if ref_stats is None:
            ref_mu, ref_sigma = feature_statistics(ref_feats["pool"])
            ref_mu_s, ref_sigma_s = feature_statistics(ref_feats["spatial"])
        else:
            ref_mu, ref_sigma, ref_mu_s, ref_sigma_s = (ref_stats[k] for k in STAT_KEYS)
        fid = frechet_distance(mu, sigma, ref_mu, ref_sigma, exact=exact_fid)
        sfid = frechet_distance(mu_s, sigma_s, ref_mu_s, ref_sigma_s, exact=exact_fid)
        score = inception_score(softmax(sample_feats["logits"]), split_size=IS_SPLIT_SIZE)
        precision, recall = precision_recall(ref_feats["pool"], sample_feats["pool"], k=PR_K,
                                             device=device if device.type == "cuda" else None)

    identity = extractor.identity()
    provenance = {
        "evalkit_version": __version__,
        "extractor": identity,
        "features": getattr(extractor, "name", identity.get("name")),
        "backend": identity.get("backend"),
        "weights_sha256": identity.get("weights_sha256"),
        "device": str(device),
        "world_size": world_size(),
        "batch_size": batch_size,
        "exact_fid": bool(exact_fid),
        "reference_statistics": "file" if ref_stats is not None else "computed",
        "sample": _batch_info(sample_reader, hashes.get("sample")),
        "reference": _batch_info(ref_reader, hashes.get("ref")),
        "elapsed_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return {
        KEY_IS: float(np.float32(score)),
        KEY_FID: float(np.float64(fid)),
        KEY_SFID: float(np.float64(sfid)),
        KEY_PRECISION: float(precision),
        KEY_RECALL: float(recall),
        "labels": metric_labels(extractor),
        "provenance": provenance,
    }


def write_batch_features(batch, out, extractor, *, batch_size: int = 64, cache: bool = True,
                         progress: bool = True) -> dict[str, tuple[int, ...]] | None:
    """Compute the features of `batch` and write them to the HDF5 file `out` atomically (rank 0).

    Datasets ``pool``, ``spatial``, ``logits`` (float32 [N, D]); attributes ``extractor`` (identity
    JSON), ``batch`` (path), ``batch_sha256``, ``num_images``, ``evalkit_version``. Returns the array
    shapes on rank 0, None on other ranks.
    """
    reader = _open(batch)
    digest = reader.content_hash() if is_main() else None
    features = compute_features(reader, extractor, batch_size, None, cache, progress, content_hash=digest,
                                desc="features")
    if not is_main():
        return None
    try:
        write_features(out, features, {"extractor": extractor.identity(), "batch": _source(reader),
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
    labels = result.get("labels") or INCEPTION_LABELS
    return [f"{labels[key]}: {result[key]!r}" for key in METRIC_ORDER]
