"""Build a reference batch from any image source, in the layout of OpenAI's published reference batches.

The reference evaluator reads a reference npz with ``arr_0`` (N×H×W×3 uint8 images, used for
precision/recall) and, when present, precomputed ``mu``/``sigma`` (pool features) and ``mu_s``/``sigma_s``
(spatial features) that replace statistics of ``arr_0``. OpenAI's ``VIRTUAL_*.npz`` files hold 10,000
images but statistics over the whole training set; `build_reference` writes the same for your data:

* ``arr_0``: a seeded subset of the source images (`subset_indices`), in source order;
* ``arr_1``: the subset's labels, when the source has labels;
* ``mu``/``sigma``/``mu_s``/``sigma_s``: ``feature_statistics`` of the features of ALL source images;
* ``evalkit_meta``: how it was built, the feature network's identity included (`evalkit.store.meta`).

The file is written atomically: on any error nothing is left at the output path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evalkit import __version__
from evalkit.errors import BatchFormatError, ConfigError, InputError
from evalkit.context import Context
from evalkit.extract import MIN_IMAGES, build_extractor, compute_features
from evalkit.features import DEFAULT_EXTRACTOR, extractor_names
from evalkit.metrics import feature_statistics
from evalkit.metrics.precision_recall import NHOOD_SIZE
from evalkit.options import ScoreOptions
from evalkit.plugins import load_plugins
from evalkit.store import STAT_KEYS, NpzWriter, open_batch
from evalkit.store.meta import META_FORMAT, META_KEY, decode_meta, encode_meta, reference_meta  # noqa: F401

DEFAULT_SUBSET = 10_000  # images kept in arr_0, as in OpenAI's published reference batches


def subset_indices(num_images: int, subset: int, seed: int = 0) -> np.ndarray:
    """Sorted int64 indices of the first `subset` entries of a seeded permutation of ``range(num_images)``.

    Deterministic for a given (num_images, subset, seed); ``subset == num_images`` gives every index.
    Raises InputError when `subset` is not in 1..num_images.
    """
    if subset < 1 or subset > num_images:
        raise InputError(f"--subset {subset}: expected 1..{num_images} (the source holds {num_images} images)")
    order = np.random.default_rng(seed).permutation(num_images)
    return np.sort(order[:subset]).astype(np.int64)


def _check_out(out: Path, source: Path) -> None:
    """`out` must be a new or existing ``.npz`` file path that is not the source itself."""
    if out.suffix.lower() != ".npz":
        raise InputError(f"--out {out}: expected a path ending in .npz (the reference batch is an npz file)")
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory; expected an .npz file path")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise InputError(f"--out {out}: is the source batch itself; write the reference to another file")


def build_reference(source: str | os.PathLike, out: str | os.PathLike, extractor: str | Any = DEFAULT_EXTRACTOR,
                    subset: int | None = DEFAULT_SUBSET, seed: int = 0, options: ScoreOptions = ScoreOptions(),
                    ctx: Context | None = None, extractor_path: str | os.PathLike | None = None) -> Path:
    """Write a reference batch for `source` to `out` (see the module doc for the layout) and return `out`.

    source: image folder, npz (``arr_0`` images, optional ``arr_1`` labels) or HDF5 file (anything
    ``evalkit.store.open_batch`` reads). extractor: registered feature-network name (after
    ``$EVALKIT_PLUGINS``) or an extractor object. subset: images kept in ``arr_0`` (None: all of them);
    seed: seed of the subset permutation; options: feature batch size and progress (the cache is not
    used); ctx: the process (one process); extractor_path: weights file for a named extractor.

    Raises (before anything is written) InputError for a bad ``--out`` or a source with fewer images
    than `subset`, ConfigError for an unknown feature network (listing the known ones),
    BatchFormatError for an empty/unreadable source or mixed resolutions (naming the files).
    """
    source, out = Path(source), Path(out)
    ctx = ctx or Context.local(None)
    batch_size, progress = options.batch_size, options.progress
    _check_out(out, source)
    # Unknown network names fail before the source is read.
    if isinstance(extractor, str):
        load_plugins()
        if extractor not in extractor_names():
            raise ConfigError(f"--features: unknown feature network {extractor!r}; known: {', '.join(extractor_names())}")

    with open_batch(source) as reader:
        n = int(reader.num_images)
        if n < MIN_IMAGES:
            raise InputError(f"{source}: holds {n} image(s); a reference batch needs at least {MIN_IMAGES} "
                             f"(covariances need 2, precision/recall the {NHOOD_SIZE} nearest neighbours)")
        if subset is None:
            subset = n
        if subset > n:
            raise InputError(f"{source}: holds {n} images, fewer than the requested subset of {subset}; "
                             f"pass --subset {n} (or fewer) to keep every image")
        if subset < MIN_IMAGES:
            raise InputError(f"--subset {subset}: expected at least {MIN_IMAGES} images for precision/recall")
        keep = subset_indices(n, subset, seed)

        if isinstance(extractor, str):
            extractor = build_extractor(extractor, ctx, None if extractor_path is None else str(extractor_path))
        # Pass 1: features of every image → statistics exactly as the evaluator computes them.
        feats = compute_features(reader, extractor, ScoreOptions(batch_size, cache=False, progress=progress), ctx,
                                 desc="reference features")
        stats = {}
        stats["mu"], stats["sigma"] = feature_statistics(feats["pool"])
        stats["mu_s"], stats["sigma_s"] = feature_statistics(feats["spatial"])
        del feats

        identity = extractor.identity()
        meta = {
            "format": META_FORMAT,
            "extractor": identity,
            "features": getattr(extractor, "name", identity.get("name")),
            "source": source.name,
            "source_format": reader.format,
            "source_sha256": reader.content_hash(),
            "source_num_images": n,
            "image_shape": [int(s) for s in reader.image_shape],
            "subset": int(subset),
            "seed": int(seed),
            "subset_rule": "np.sort(np.random.default_rng(seed).permutation(source_num_images)[:subset])",
            "statistics_over": "all source images",
            "has_labels": reader.labels is not None,
            "evalkit_version": __version__,
        }

        # Pass 2: stream the kept images (in source order) into the npz, then labels, statistics, meta.
        labels = reader.labels
        with NpzWriter(out) as writer, tqdm(total=n, unit="img", desc="reference images", file=sys.stderr,
                                           dynamic_ncols=True, disable=not progress) as bar:
            pos = 0
            for images in reader.iter_images(batch_size):
                lo, hi = np.searchsorted(keep, [pos, pos + len(images)])
                if hi > lo:
                    rows = keep[lo:hi] - pos
                    writer.append(images[rows], None if labels is None else labels[keep[lo:hi]])
                pos += len(images)
                bar.update(len(images))
            if writer.num_images != subset:
                raise BatchFormatError(f"{source}: read {pos} images but expected {n}; the source changed "
                                       f"while the reference was built")
            for key in STAT_KEYS:
                writer.add_array(key, stats[key])
            writer.add_array(META_KEY, encode_meta(meta))
    return out
