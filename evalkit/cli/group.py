"""The click group every command registers on, and the translation of library errors."""

from __future__ import annotations

import click

from evalkit import __version__
from evalkit.errors import EvalkitError


class EvalkitGroup(click.Group):
    """A click group that turns ``EvalkitError`` into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EvalkitError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=EvalkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="evalkit")
def main() -> None:
    """evalkit: Inception Score, FID, sFID, precision and recall exactly as OpenAI's ADM evaluator
    computes them, the guided-diffusion sampling stack, guidance sweeps and paper-ready reports.

    \b
    Start with:
      evalkit demo                       # the whole path offline on a small bundled model
      evalkit score samples.npz imagenet256
      evalkit COMMAND --help
    """
