"""`evalkit ref build`: a reference batch (seeded image subset + statistics over all images) from your data."""

from __future__ import annotations

import click

from evalkit.cli.ref_cmd import ref
from evalkit.refbuild import DEFAULT_SUBSET


@ref.command("build")
@click.argument("source", metavar="SOURCE")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), metavar="REF.npz",
              help="Reference batch to write (.npz; written atomically, replaced if present).")
@click.option("--features", "features_name", default="inception", show_default=True, metavar="NAME",
              help="Feature network from the registry (inception, inception-tf, digits, or one registered by a "
                   "module in $EVALKIT_PLUGINS); score against this reference with the same network.")
@click.option("--weights", "weights_path", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PATH", help="Weights file for the feature network instead of its default/cached one.")
@click.option("--subset", type=click.IntRange(min=1), default=DEFAULT_SUBSET, show_default=True, metavar="N",
              help="Images kept in arr_0 for precision/recall (a seeded subset); statistics use every image.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S",
              help="Seed of the subset permutation (same seed and source → same subset).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
              help="Images per feature-network batch.")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="Where to run the feature network: auto, cpu, cuda, cuda:N.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def build_cmd(source: str, out: str, features_name: str, weights_path: str | None, subset: int, seed: int,
              batch_size: int, device: str, progress: bool) -> None:
    """Build a reference batch REF.npz from SOURCE (an image folder, an npz with images in arr_0, or an
    HDF5 file), in the layout of OpenAI's published reference batches: arr_0 a seeded subset of the
    images (default 10,000), arr_1 their labels when SOURCE has labels, and mu/sigma/mu_s/sigma_s over
    ALL images, computed as the ADM evaluator does. The feature network's identity is recorded in the
    file (evalkit_meta), which `evalkit score` and the reference evaluator ignore.

    \b
    Examples:
      evalkit ref build train_images/ --out my_ref.npz
      evalkit ref build train.npz --out my_ref.npz --subset 5000 --seed 1
      evalkit ref build digits.npz --out digits_ref.npz --features digits --subset 1797 --device cpu
      evalkit score samples.npz my_ref.npz
    """
    from evalkit.context import Context  # heavy imports after option parsing
    from evalkit.options import ScoreOptions
    from evalkit.refbuild import build_reference, reference_meta

    with Context.create(device) as ctx:
        path = build_reference(source, out, extractor=features_name, subset=subset, seed=seed,
                               options=ScoreOptions(batch_size=batch_size, cache=False, progress=progress), ctx=ctx,
                               extractor_path=weights_path)
    meta = reference_meta(path) or {}
    click.echo(f"wrote {path}: {meta.get('subset')} of {meta.get('source_num_images')} images in arr_0 "
               f"(seed {seed}), statistics over all {meta.get('source_num_images')} with "
               f"{meta.get('features')} features")
