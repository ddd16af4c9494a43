"""`evalkit features BATCH --out FILE.h5`: pool/spatial/logits features of every image, in file order."""

from __future__ import annotations

import click

from evalkit.cli.group import main
from evalkit.cli.score_cmd import extractor_name, feature_network_options, warnings_to_stderr


@main.command("features")
@click.argument("batch", metavar="BATCH")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), metavar="FILE.h5",
              help="HDF5 file to write (atomically): datasets pool, spatial, logits (float32, one row per "
                   "image) and the extractor identity, batch path and sha256 as attributes.")
@feature_network_options
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def features_cmd(batch: str, out: str, device: str, batch_size: int, backend: str, features_name: str | None,
                 weights_path: str | None, no_cache: bool, progress: bool) -> None:
    """Compute the feature-network activations of every image of BATCH (an .npz, HDF5 file, image
    folder or reference batch name) and write them to an HDF5 file: `pool` [N, 2048], `spatial`
    [N, 2023] and `logits` [N, 1008] for Inception. Uses and fills the feature cache.

    \b
    Examples:
      evalkit features samples.npz --out samples_features.h5
      evalkit features imagenet256 --out ref_features.h5 --backend tf
      torchrun --nproc_per_node=2 -m evalkit features samples.npz --out f.h5
    """
    from evalkit.context import Context  # heavy imports after option parsing
    from evalkit.evaluate import build_extractor, write_batch_features
    from evalkit.options import ScoreOptions

    name = extractor_name(backend, features_name)
    options = ScoreOptions(batch_size=batch_size, cache=not no_cache, progress=progress)
    with warnings_to_stderr(), Context.create(device) as ctx:
        extractor = build_extractor(name, ctx, weights_path)
        shapes = write_batch_features(batch, out, extractor, options, ctx)
        if ctx.is_main:
            described = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
            click.echo(f"wrote {out}: {described}")
