"""`evalkit weights list|fetch`: the network weights evalkit knows, where they are, and downloading them."""

from __future__ import annotations

import click

from evalkit.cli.group import main
from evalkit.errors import ConfigError


@main.group("weights")
def weights_group() -> None:
    """List and download network weights (Inception for scoring, guided-diffusion checkpoints for
    sampling) into the cache ($EVALKIT_CACHE/weights, default ~/.cache/evalkit/weights).

    \b
    Examples:
      evalkit weights list
      evalkit weights fetch inception-pth
    """


@weights_group.command("list")
@click.option("--verify", is_flag=True, default=False, show_default=True,
              help="Hash every present file (slow for large checkpoints) and check it against the known sha256.")
def list_cmd(verify: bool) -> None:
    """One line per known weights file: name, file name, present?, sha256 (recorded at download, or the
    known one), URL. Missing files can be fetched with `evalkit weights fetch NAME`.

    \b
    Examples:
      evalkit weights list
      evalkit weights list --verify
    """
    from evalkit import weights

    click.echo(f"cache folder: {weights.weights_dir()}")
    rows = [("name", "file", "present", "sha256", "url")]
    for entry in weights.WEIGHTS.values():
        path = weights.find(entry.name)
        if path is not None and verify:
            digest = weights.verify(entry.name, path) + " (verified)"
        elif path is not None:
            digest = weights.recorded_sha256(path) or "(not recorded; use --verify)"
        else:
            digest = entry.sha256 or (f"{entry.sha256_prefix}... (expected prefix)" if entry.sha256_prefix else "-")
        rows.append((entry.name, entry.filename, "yes" if path else "no", digest, entry.url))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])


@weights_group.command("fetch")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--force", is_flag=True, default=False, show_default=True,
              help="Download again even if the file is already in the cache.")
@click.option("--url", default=None, metavar="URL",
              help="Download from this URL (a mirror) instead of the registered one; only with one NAME.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Download progress bar on stderr.")
def fetch_cmd(names: tuple[str, ...], force: bool, url: str | None, progress: bool) -> None:
    """Download the weights files NAME... (see `evalkit weights list`) into the cache, verifying the
    sha256 where it is known and recording it. A file already present is verified, not downloaded again.

    \b
    Examples:
      evalkit weights fetch inception-pth
      evalkit weights fetch 64x64_diffusion 64x64_classifier
      evalkit weights fetch inception-pb --force
    """
    from evalkit import weights

    if url is not None and len(names) != 1:
        raise ConfigError(f"--url names one file's mirror; got {len(names)} names ({', '.join(names)})")
    for name in names:
        weights.get(name)  # unknown names fail before any download
    for name in names:
        path = weights.fetch(name, force=force, progress=progress, url=url)
        click.echo(f"{name}: {path} sha256 {weights.recorded_sha256(path) or weights.sha256_file(path)}")
