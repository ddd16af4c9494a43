"""`evalkit report` (tradeoff figures + tables from a results CSV) and `evalkit baselines`."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from evalkit.cli.group import main
from evalkit.errors import ConfigError


@main.command("report")
@click.argument("results_csv", required=False, metavar="[RESULTS.csv]",
                type=click.Path(dir_okay=True, path_type=Path))
@click.option("--baseline", "baselines", multiple=True, metavar="NAME|FILE",
              help="Published points to draw beside the curves: 'biggan-deep' (packaged rows of the same "
                   "resolution as the results) or a CSV in the baselines schema with a source per row. "
                   "Repeatable.")
@click.option("--out", "out_dir", required=True, metavar="DIR", type=click.Path(path_type=Path),
              help="Report folder to create; an earlier evalkit report there is replaced.")
@click.option("--paper", is_flag=True, default=False, show_default=True,
              help="Report the paper's published numbers alone (guidance ablation at 256x256 with BigGAN-deep, "
                   "and its main table) instead of a results CSV.")
@click.option("--title", default=None, metavar="TEXT", help="Title of the report README.  [default: from the CSV name]")
@click.option("--samples-per-grid", default=16, show_default=True, metavar="N", type=click.IntRange(1, 400),
              help="Images per sample grid, for rows whose samples_path names a sample store.")
def report_command(results_csv: Path | None, baselines: tuple[str, ...], out_dir: Path, paper: bool,
                   title: str | None, samples_per_grid: int) -> None:
    """Render FID-vs-IS and precision-vs-recall tradeoff figures (PDF, SVG, PNG), Markdown and LaTeX
    tables and a README from a results CSV (one curve per checkpoint/resolution, points labelled with
    their guidance scale).

    \b
    Examples:
      evalkit report results.csv --baseline biggan-deep --out reports/adm256
      evalkit report results.csv --baseline my_baselines.csv --out reports/mine
      evalkit report --paper --out reports/paper
    """
    from evalkit.report import paper_report, report_from_csv

    # The command line that regenerates this report, written into its README.
    parts = ["evalkit", "report"] + ([str(results_csv)] if results_csv is not None else [])
    parts += [a for b in baselines for a in ("--baseline", b)] + (["--paper"] if paper else [])
    parts += ["--out", str(out_dir)] + (["--title", title] if title else [])
    command = " ".join(shlex.quote(p) for p in parts)
    if paper:
        if results_csv is not None or baselines:
            raise ConfigError("--paper reports the packaged published numbers; drop RESULTS.csv and --baseline")
        report = paper_report(out_dir, command=command)
    else:
        if results_csv is None:
            raise ConfigError("missing RESULTS.csv (a results table written by `evalkit sweep`), or pass --paper")
        report = report_from_csv(results_csv, out_dir, baselines=baselines, title=title, command=command,
                                 samples_per_grid=samples_per_grid)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {len(report.files)} files to {report.out_dir}/ (see README.md)")


@main.command("baselines")
@click.option("--image-size", default=None, metavar="N", type=click.IntRange(1),
              help="Only rows of this resolution (pixels per side).")
@click.option("--model", "model", default=None, metavar="TEXT",
              help="Only rows whose model name contains TEXT (case-insensitive).")
@click.option("--csv", "as_csv", is_flag=True, default=False, show_default=True,
              help="Print the rows as CSV (all columns, with sources) instead of a table.")
def baselines_command(image_size: int | None, model: str | None, as_csv: bool) -> None:
    """List the published baselines packaged with evalkit, each with its source.

    \b
    Examples:
      evalkit baselines
      evalkit baselines --model biggan --image-size 256
      evalkit baselines --csv > baselines.csv
    """
    import pandas as pd

    from evalkit.baselines import packaged_baselines
    from evalkit.report import format_metric
    from evalkit.metrics.keys import metric_label
    from evalkit.results import METRIC_COLUMNS

    df = packaged_baselines()
    if image_size is not None:
        df = df[df["image_size"] == image_size]
    if model:
        df = df[df["model"].str.lower().str.contains(model.lower(), regex=False).fillna(False)]
    if as_csv:
        click.echo(df.to_csv(index=False), nl=False)
        return
    if df.empty:
        click.echo("no packaged baseline matches", err=True)
        return
    headers = ["model", "dataset", "size", "scale", "trunc."] + [metric_label(k) for k in METRIC_COLUMNS] + ["source"]
    rows = []
    for r in df.to_dict("records"):
        cells = [r["model"], r["dataset"], r["image_size"], r["guidance_scale"], r["truncation"]]
        text = ["" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else str(v)) for v in cells]
        rows.append(text + [format_metric(r[k]) or "" for k in METRIC_COLUMNS]
                    + [f"{r['table_or_figure']} ({r['source']})"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    click.echo(fmt.format(*headers))
    for row in rows:
        click.echo(fmt.format(*row))
