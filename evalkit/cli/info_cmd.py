"""`evalkit info PATH`: what a sample or reference batch holds (format, images, labels, statistics, size)."""

from __future__ import annotations

import json

import click

from evalkit.cli.group import main
from evalkit.store import describe_batch


def _human_size(n: int) -> str:
    """Bytes as a short IEC string, e.g. 39.1 GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _text(info: dict) -> str:
    h, w, c = info["image_shape"]
    fmt = info["format"] + {True: " (compressed)", False: " (stored)"}.get(info.get("compressed"), "")
    lab = info["labels"]
    labels = "none" if lab is None else (f"{lab['count']}, classes {lab['min']}..{lab['max']} "
                                         f"({lab['distinct']} distinct)")
    stats = info["statistics"]
    stats_text = "none" if stats is None else ", ".join(f"{k} {tuple(s)}" for k, s in stats.items())
    other = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in info["extra_keys"].items()) or "none"
    rows = [("path", info["path"]), ("format", fmt), ("images", str(info["num_images"])),
            ("shape", f"{h}×{w}×{c} (H×W×C)"), ("dtype", info["dtype"]), ("labels", labels),
            ("statistics", stats_text), ("other keys", other),
            ("file size", f"{_human_size(info['file_size'])} ({info['file_size']} bytes)")]
    return "\n".join(f"{k + ':':<12} {v}" for k, v in rows)


@main.command("info")
@click.argument("path", metavar="PATH", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, default=False, show_default=True,
              help="Print one JSON object instead of aligned text.")
def info_cmd(path: str, as_json: bool) -> None:
    """Show what the sample or reference batch PATH holds: format, image count and shape, dtype, labels,
    precomputed statistics, other arrays and file size. PATH is an .npz, an HDF5 file or an image folder.

    \b
    Examples:
      evalkit info samples_50000x256x256x3.npz
      evalkit info VIRTUAL_imagenet256_labeled.npz --json
      evalkit info path/to/png_folder
    """
    info = describe_batch(path)
    click.echo(json.dumps(info, indent=2) if as_json else _text(info))
