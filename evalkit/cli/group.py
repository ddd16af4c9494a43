"""The click group every command registers on, lazy command loading, and the translation of errors."""

from __future__ import annotations

import importlib

import click

from evalkit import __version__
from evalkit.errors import EvalkitError

# Command → (modules that define it, its line in `evalkit --help`). A command module is imported only
# when its command runs or shows its own help, so the group's help needs no torch. tests/test_cli.py
# checks that this table names exactly the commands the modules register.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "baselines": (("report_cmd",), "List the published baselines packaged with evalkit, with sources."),
    "demo": (("demo_cmd",), "The whole pipeline offline on bundled 8x8 digits, in minutes."),
    "features": (("features_cmd",), "Write the feature-network activations of a batch to HDF5."),
    "info": (("info_cmd",), "Show what a sample or reference batch holds, without reading its images."),
    "presets": (("presets_cmd",), "List the model presets, or show one in full."),
    "ref": (("ref_cmd", "refbuild_cmd"), "Reference batches: list, fetch (OpenAI's) or build (your own)."),
    "report": (("report_cmd",), "Tradeoff figures, tables and a README from a results CSV."),
    "sample": (("sample_cmd",), "Generate samples into a resumable run directory."),
    "sample-and-score": (("sweep_cmd",), "Sample one setting, score it and append its results row."),
    "score": (("score_cmd",), "IS, FID, sFID, precision and recall of samples against a reference."),
    "sweep": (("sweep_cmd",), "Sample and score a guidance sweep into one results CSV."),
    "upsample": (("sample_cmd",), "Upsample existing base samples with an upsampler preset."),
    "weights": (("weights_cmd",), "List and download network weights into the cache."),
}


class EvalkitGroup(click.Group):
    """A click group that loads commands lazily and turns ``EvalkitError`` into one clear line and exit 1."""

    lazy_commands = COMMANDS

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.lazy_commands) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy_commands:
            for module in self.lazy_commands[name][0]:
                importlib.import_module(f"evalkit.cli.{module}")
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from `COMMANDS`, without importing any command module."""
        rows = [(name, self.lazy_commands[name][1] if name in self.lazy_commands
                 else self.commands[name].get_short_help_str(formatter.width))
                for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
