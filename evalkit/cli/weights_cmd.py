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
@click.option("--sha256", "sha256", default=None, metavar="HEX",
              help="The sha256 the file must have (overrides a pin in $EVALKIT_PINS or the pin file); only "
                   "with one NAME.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Download progress bar on stderr.")
def fetch_cmd(names: tuple[str, ...], force: bool, url: str | None, sha256: str | None, progress: bool) -> None:
    """Download the weights files NAME... (see `evalkit weights list`) into the cache and record their
    sha256. A download must match its pinned sha256 (--sha256, $EVALKIT_PINS, the pin file) or the
    published one (OpenAI publishes none; pytorch-fid's file name carries a prefix), and the Inception
    files must hold the network's tensors with their shapes; otherwise it is deleted. A file already
    present is checked, not downloaded again.

    \b
    Examples:
      evalkit weights fetch inception-pth
      evalkit weights fetch 64x64_diffusion 64x64_classifier
      evalkit weights fetch inception-pb --force
    """
    from evalkit import weights

    for option, value in (("--url", url), ("--sha256", sha256)):
        if value is not None and len(names) != 1:
            raise ConfigError(f"{option} applies to one file; got {len(names)} names ({', '.join(names)})")
    for name in names:
        weights.get(name)  # unknown names and malformed pins fail before any download
        weights.pinned_sha256(name, sha256)
    for name in names:
        path = weights.fetch(name, force=force, progress=progress, url=url, sha256=sha256,
                             check=_structure_check(name))
        click.echo(f"{name}: {path} sha256 {weights.file_sha256(path)}")


def _structure_check(name: str):
    """What a download of `name` must hold beyond its hash (the Inception files: the network's tensors)."""
    if name not in ("inception-pb", "inception-pth"):
        return None
    from evalkit.features.convert import load_weights_file  # noqa: PLC0415 (torch, only for these files)

    return lambda path: load_weights_file(path, expect="pb" if name == "inception-pb" else "pth")
