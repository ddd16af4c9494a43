"""`evalkit ref list|fetch`: OpenAI's published reference (and sample) batches by name.

The `ref` group is importable as ``from evalkit.cli.ref_cmd import ref`` so other modules can add
subcommands (e.g. ``ref build``).
"""

from __future__ import annotations

import click

from evalkit.cli.group import main
from evalkit.errors import ConfigError


@main.group("ref")
def ref() -> None:
    """Reference batches: OpenAI's published VIRTUAL_*.npz files (precomputed statistics plus images)
    by name, downloaded into $EVALKIT_CACHE/reference_batches. `evalkit score SAMPLES NAME` resolves
    a name through this cache.

    \b
    Examples:
      evalkit ref list
      evalkit ref fetch imagenet256
      evalkit score samples.npz imagenet256
    """


@ref.command("list")
@click.option("--all", "show_all", is_flag=True, default=False, show_default=True,
              help="Also list the paper's published sample batches (50,000 images each).")
def list_cmd(show_all: bool) -> None:
    """One line per published batch: name, file, resolution, image count, downloaded?, notes.

    \b
    Examples:
      evalkit ref list
      evalkit ref list --all
    """
    from evalkit import refbatches

    click.echo(f"cache folder: {refbatches.batches_dir()}")
    rows = [("name", "file", "res", "images", "present", "notes")]
    for name in refbatches.batch_names(None if show_all else "reference"):
        e = refbatches.get_batch(name)
        notes = e.notes if e.kind == "reference" else f"{e.label} sample batch; score against {e.reference}"
        rows.append((e.name, e.filename, str(e.resolution), str(e.num_images),
                     "yes" if refbatches.find_batch(name) else "no", notes))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5])


@ref.command("fetch")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--force", is_flag=True, default=False, show_default=True,
              help="Download again even if the batch is already in the cache.")
@click.option("--sha256", "sha256", default=None, metavar="HEX",
              help="The sha256 the file must have (overrides a pin in $EVALKIT_PINS or the pin file); only "
                   "with one NAME.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Download progress bar on stderr.")
def fetch_cmd(names: tuple[str, ...], force: bool, sha256: str | None, progress: bool) -> None:
    """Download the published batches NAME... (see `evalkit ref list --all`) into the cache and record
    their sha256. No checksum is published for them: a download must match its pin (--sha256,
    $EVALKIT_PINS, the pin file) when there is one, and hold the image count, resolution and statistics
    listed for it; otherwise it is deleted. Sizes follow the images: about 2 GB for a 10,000-image
    256×256 reference batch, about 39 GB for a 50,000-image 512×512 sample batch.

    \b
    Examples:
      evalkit ref fetch imagenet256
      evalkit ref fetch imagenet64 admnet_imagenet64
    """
    from evalkit import refbatches, weights

    if sha256 is not None and len(names) != 1:
        raise ConfigError(f"--sha256 applies to one file; got {len(names)} names ({', '.join(names)})")
    for name in names:
        refbatches.get_batch(name)  # unknown names and malformed pins fail before any download
        weights.pinned_sha256(name, sha256)
    for name in names:
        path = refbatches.fetch_batch(name, force=force, progress=progress, sha256=sha256)
        click.echo(f"{name}: {path} sha256 {refbatches.batch_sha256(name) or '(not recorded)'}")
