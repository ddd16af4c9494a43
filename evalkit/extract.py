"""Features of a whole batch: open it, look in the feature cache, extract this process's slice, gather.

`compute_features` is the one entry point; each step is its own small function: the cache protocol
(rank 0 decides, every rank follows), the validation of what an extractor returns, and the
extraction of a contiguous slice with a progress bar. Under torchrun every rank extracts its
``ctx.shard_range`` slice and the rows are gathered in rank order, so the arrays equal one process's.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch
from tqdm import tqdm

from evalkit.cache import feature_key, load_cached, releases_claims, store_cached
from evalkit.context import Context
from evalkit.errors import BatchFormatError, FeatureError
from evalkit.features import DEFAULT_EXTRACTOR, FEATURE_NAMES, get_extractor
from evalkit.metrics.precision_recall import NHOOD_SIZE
from evalkit.options import ScoreOptions
from evalkit.plugins import load_plugins
from evalkit.refbatches import resolve_batch
from evalkit.runtime import resolve_device
from evalkit.store import open_batch

MIN_IMAGES = NHOOD_SIZE + 1  # precision/recall need each point's k-th nearest other point


def open_reader(batch):
    """A store reader for a path, a batch name, or an already open reader."""
    if hasattr(batch, "iter_images"):
        return batch
    return open_batch(resolve_batch(batch))


def source_name(reader) -> str:
    """How messages and provenance name a batch: its path, else its name."""
    return str(getattr(reader, "path", None) or getattr(reader, "name", None) or "batch")


def build_extractor(name: str | None = None, ctx_or_device: Context | str | torch.device | None = None,
                    path: str | None = None):
    """The registered feature extractor `name` (default Inception) on the context's (or given) device,
    after loading ``$EVALKIT_PLUGINS``; `path` is a weights file instead of the default one."""
    load_plugins()
    device = ctx_or_device.device if isinstance(ctx_or_device, Context) else resolve_device(ctx_or_device)
    options = {"device": device}
    if path is not None:
        options["path"] = path
    return get_extractor(name or DEFAULT_EXTRACTOR, **options)


def check_images(images: np.ndarray, source: str, offset: int) -> np.ndarray:
    """Every batch must be uint8 NHWC RGB (the store converts and validates other dtypes, NaN included)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise BatchFormatError(f"{source}: images {offset}.. have shape {images.shape} and dtype {images.dtype}; "
                               f"expected uint8 N×H×W×3")
    return images


def check_output(out: dict, extractor, count: int, first: int, source: str) -> dict[str, np.ndarray]:
    """The extractor's arrays for `count` images as float32 [count, D]; FeatureError if any is missing,
    misshapen or not finite."""
    dims = dict(extractor.feature_dims)
    arrays = {}
    for name in FEATURE_NAMES:
        if name not in out:
            raise FeatureError(f"feature extractor {extractor.name!r} returned no {name!r} features "
                               f"(got {sorted(out)})")
        array = np.asarray(out[name], dtype=np.float32)
        array = array.reshape(len(array), -1)
        if array.shape != (count, dims[name]):
            raise FeatureError(f"feature extractor {extractor.name!r} returned {name} features of shape "
                               f"{array.shape} for {count} images; expected ({count}, {dims[name]})")
        if not np.isfinite(array).all():
            raise FeatureError(f"feature extractor {extractor.name!r} produced non-finite {name} "
                               f"features for images {first}..{first + count - 1} of {source}")
        arrays[name] = array
    return arrays


def lookup_cache(reader, extractor, ctx: Context, content_hash: str | None):
    """(cache key, cached features or None). Rank 0 hashes the batch and looks; every rank follows."""
    key, hit = None, None
    if ctx.is_main:
        key = feature_key(content_hash or reader.content_hash(), int(reader.num_images), extractor.identity())
        hit = load_cached(key) is not None
    key, hit = ctx.broadcast((key, hit))
    if not hit:
        return key, None
    cached = load_cached(key)
    if cached is None and ctx.distributed:  # rank 0 found it but this rank cannot read it: stop rather than hang
        raise FeatureError(f"rank {ctx.rank}: cannot read the feature cache file rank 0 found for "
                           f"{source_name(reader)}; rerun with --no-cache")
    return key, cached


def extract_slice(reader, extractor, shard: range, options: ScoreOptions, show: bool,
                  desc: str) -> dict[str, np.ndarray]:
    """Features of images ``shard.start..shard.stop-1``, `options.batch_size` at a time, in file order."""
    source = source_name(reader)
    dims = dict(extractor.feature_dims)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FEATURE_NAMES}
    done = shard.start
    with tqdm(total=len(shard), unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True,
              disable=not (options.progress and show)) as bar:
        for images in reader.iter_images(options.batch_size, start=shard.start, stop=shard.stop):
            images = check_images(images, source, done)
            for name, array in check_output(extractor(images), extractor, len(images), done, source).items():
                parts[name].append(array)
            done += len(images)
            bar.update(len(images))
    if done != shard.stop:
        raise BatchFormatError(f"{source}: expected images {shard.start}..{shard.stop - 1}, read up to {done - 1}")
    return {name: np.concatenate(parts[name]) if parts[name] else np.zeros((0, dims[name]), np.float32)
            for name in FEATURE_NAMES}


@releases_claims  # a cache miss claims the key until stored; never past this call
def compute_features(batch, extractor, options: ScoreOptions = ScoreOptions(), ctx: Context | None = None, *,
                     content_hash: str | None = None, desc: str = "features") -> dict[str, np.ndarray]:
    """Features of every image of `batch` (a path, a known batch name or an open store reader).

    `extractor` maps uint8 [B, H, W, 3] to ``{"pool", "spatial", "logits"}``. Returns float32 arrays
    ``pool`` [N, D_pool], ``spatial`` [N, D_spatial], ``logits`` [N, K] on every rank. With
    ``options.cache``, features are read from / written to the feature cache, keyed by the batch's
    content hash (`content_hash` when already known) and ``extractor.identity()``.
    """
    ctx = ctx or Context.local("cpu")
    reader = open_reader(batch)
    key = None
    if options.cache:
        key, cached = lookup_cache(reader, extractor, ctx, content_hash)
        if cached is not None:
            return cached
    n = int(reader.num_images)
    local = extract_slice(reader, extractor, ctx.shard_range(n), options, ctx.is_main, desc)
    features = ctx.gather_rows(local)
    assert all(len(array) == n for array in features.values()), "gathered feature rows != images"
    if ctx.is_main and key is not None:
        try:
            store_cached(key, features)
        except OSError as exc:  # a read-only or full cache must not fail the evaluation
            warnings.warn(f"could not write the feature cache for {source_name(reader)}: {exc}", stacklevel=2)
    return features
