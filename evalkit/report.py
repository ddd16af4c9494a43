"""`reports/<name>/`: tradeoff figures, Markdown and LaTeX tables and a README from a results table.

A report folder holds, for one results table (and optional baselines):

* ``fid_vs_is.{pdf,svg,png}`` and ``precision_vs_recall.{pdf,svg,png}`` (see `evalkit.plots`);
* ``results_table.md`` and ``results_table.tex`` (booktabs) with every row, baselines after a rule;
* ``samples/*.png`` when rows name their sample store in a ``samples_path`` column;
* rows that differ only by ``seed`` (``evalkit sweep --seeds``) as one row: the mean of each metric,
  ``<metric>_seed_std`` (sample std, ddof 1) shown as ``mean ± std`` in the tables and as error bars in
  the figures (`aggregate_seeds`); rows with bootstrap intervals (``<metric>_ci_low/_high``) show them
  as interval bars in the figures;
* ``README.md`` saying what was plotted, from which CSV (path + sha256), which baselines and their
  sources, and what the paper never published; ``report.json`` lists the files (it also marks the
  folder as an evalkit report, so a later run may replace it).

Everything is validated first, rendered into a temporary folder beside the target, then renamed
into place: a failure leaves no partial report and an existing report untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from evalkit import __version__
from evalkit.baselines import (
    as_results,
    guidance_ablation,
    main_comparison,
    packaged_path,
    select_baselines,
    unpublished_figures,
)
from evalkit.errors import InputError, RunDirectoryError
from evalkit.hashing import sha256_file
from evalkit.metrics import KEY_FID, KEY_IS, KEY_PRECISION, KEY_RECALL, KEY_SFID
from evalkit.metrics.keys import is_inception, metric_label
from evalkit.plots import (
    baseline_name,
    curve_names,
    features_of,
    fid_vs_is,
    format_scale,
    plottable,
    point_key,
    point_name,
    precision_vs_recall,
    sample_grid,
    save_figure,
)
from evalkit.results import (
    CI_METRICS,
    EXTRA_METRIC_COLUMNS,
    FLAG_COLUMNS,
    IDENTITY_COLUMNS,
    METRIC_COLUMNS,
    V2_IDENTITY_COLUMNS,
    read_results,
    umask,
    write_results,
)

MARKER_FILE = "report.json"
FIGURE_FORMATS: tuple[str, ...] = ("pdf", "svg", "png")   # vector for papers, PNG for READMEs
PLOTS: tuple[tuple[str, str, str, Callable], ...] = (
    ("fid_vs_is", KEY_IS, KEY_FID, fid_vs_is),
    ("precision_vs_recall", KEY_PRECISION, KEY_RECALL, precision_vs_recall),
)
MISSING_MD = "–"
MISSING_TEX = "--"
_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "×": r"$\times$", "–": "--", "—": "---"}


@dataclass
class Report:
    """What `build_report` wrote: the folder and the file names inside it, and caveats it noted."""

    out_dir: Path
    files: list[str]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- tables


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (\\ & % $ # _ { } ~ ^) in plain text; × and dashes become
    their LaTeX spellings."""
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in str(text))


def markdown_escape(text: str) -> str:
    """Escape the characters that break a Markdown table cell (| and newlines)."""
    return str(text).replace("|", r"\|").replace("\n", " ")


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value == ""


def format_metric(value, digits: int = 2, std=None) -> str | None:
    """Metric value with `digits` decimals (the paper prints two), ``mean ± std`` when `std` is given;
    None when missing."""
    if _missing(value):
        return None
    return f"{float(value):.{digits}f}" + ("" if _missing(std) else f" ± {float(std):.{digits}f}")


# Columns whose equality makes rows "the same setting" for seed aggregation (all identity but the seed).
SEED_GROUP_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(
    ("label", *(c for c in IDENTITY_COLUMNS if c != "seed"), *V2_IDENTITY_COLUMNS, *FLAG_COLUMNS)))
SEED_METRICS: tuple[str, ...] = (*METRIC_COLUMNS, *EXTRA_METRIC_COLUMNS)


def aggregate_seeds(results: pd.DataFrame) -> pd.DataFrame:
    """One row per setting for rows that differ only by ``seed``: metric means and ``<metric>_seed_std``.

    Rows are grouped by SEED_GROUP_COLUMNS (every identity column but ``seed``, and the label); a group
    of two or more rows becomes one row (at the first row's place, with its other cells) holding, per
    metric of SEED_METRICS, the mean over the rows that have it, ``<metric>_seed_std`` (sample standard
    deviation, ddof 1; empty with fewer than two values), ``num_seeds`` and ``seeds`` ("0,1,2"); its
    bootstrap interval cells are emptied (they belong to single seeds). Other rows are unchanged (their
    ``num_seeds`` is 1). Returns a new frame with a fresh index.
    """
    if results.empty:
        return results.copy()
    cols = [c for c in SEED_GROUP_COLUMNS if c in results.columns]
    keys = [tuple(None if _missing(v) else str(v) for v in row) for row in results[cols].itertuples(index=False)]
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    ci_cols = [f"{k}_ci_{end}" for k in CI_METRICS for end in ("low", "high") if f"{k}_ci_{end}" in results.columns]
    rows = []
    for members in groups.values():
        part = results.iloc[members]
        row = part.iloc[0].to_dict()
        row["num_seeds"] = len(members)
        row["seeds"] = ",".join(str(s) for s in part["seed"] if not _missing(s)) if "seed" in part else None
        for key in SEED_METRICS:
            if key not in part.columns:
                continue
            values = pd.to_numeric(part[key], errors="coerce").dropna()
            row[f"{key}_seed_std"] = float(values.std(ddof=1)) if len(members) > 1 and len(values) > 1 else float("nan")
            if len(members) > 1:
                row[key] = float(values.mean()) if len(values) else float("nan")
        if len(members) > 1:
            for c in ci_cols:
                row[c] = float("nan")
            if "bootstrap" in row:
                row["bootstrap"] = pd.NA
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*results.columns, "num_seeds", "seeds",
                                      *(f"{k}_seed_std" for k in SEED_METRICS if k in results.columns)])
    for c in results.columns:
        out[c] = out[c].astype(results[c].dtype)
    return out.reset_index(drop=True)


@dataclass
class Table:
    """A plain table: headers, rows of text cells (None = missing), groups separated by rules."""

    headers: list[str]
    groups: list[tuple[str | None, list[list[str | None]]]]
    align: str                    # LaTeX column spec, e.g. "lrrrr"
    caption: str = ""
    footnotes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """GitHub Markdown: one table; a group title becomes a bold row."""
        lines = []
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(markdown_escape(h) for h in self.headers) + " |")
        lines.append("|" + "|".join("---" if a == "l" else "---:" for a in self.align) + "|")
        for title, rows in self.groups:
            if title:
                lines.append("| " + " | ".join([f"**{markdown_escape(title)}**"] + [""] * (len(self.headers) - 1)) + " |")
            for row in rows:
                lines.append("| " + " | ".join(MISSING_MD if c is None else markdown_escape(c) for c in row) + " |")
        if self.footnotes:
            lines.append("")
            lines += [f"{markdown_escape(n)}  " for n in self.footnotes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        """A booktabs `tabular` (needs ``\\usepackage{booktabs}``); every cell escaped."""
        ncol = len(self.headers)
        lines = ["% Generated by evalkit " + __version__ + "; needs \\usepackage{booktabs}."]
        if self.caption:
            lines.append("% " + self.caption.replace("\n", " "))
        lines += [f"\\begin{{tabular}}{{{self.align}}}", "\\toprule",
                  " & ".join(latex_escape(h) for h in self.headers) + " \\\\", "\\midrule"]
        for i, (title, rows) in enumerate(self.groups):
            if i > 0:
                lines.append("\\midrule")
            if title:
                lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{latex_escape(title)}}}}} \\\\")
            for row in rows:
                lines.append(" & ".join(MISSING_TEX if c is None else latex_escape(c) for c in row) + " \\\\")
        lines.append("\\bottomrule")
        lines.append("\\end{tabular}")
        lines += [f"% {n}" for n in self.footnotes]
        return "\n".join(lines) + "\n"


def _truncation_text(value) -> str | None:
    """A truncation cell as text: the number (``0.5``), or a published range in words as is."""
    if _missing(value):
        return None
    try:
        return format_scale(float(value))
    except (TypeError, ValueError):
        return str(value)


def _has_truncation(df: pd.DataFrame | None) -> bool:
    return df is not None and "truncation" in df.columns and bool(df["truncation"].notna().any())


def results_table(results: pd.DataFrame, baselines: pd.DataFrame | None = None) -> Table:
    """Table of the results rows (label, size, sampler/steps, scale, samples, five metrics), then
    the baseline rows after a rule. Metric headers use metric_label of the results' features.
    When a results row has a truncation (a GAN's), a "Truncation" column follows "Scale" and
    holds the baselines' truncations too."""
    features = features_of(results)
    trunc = _has_truncation(results)
    seeded = "num_seeds" in results.columns and bool((results["num_seeds"] > 1).any())
    lead = ["Model", "Size", "Steps", "Scale"] + (["Truncation"] if trunc else []) + ["Samples"]
    headers = (lead + (["Seeds"] if seeded else [])
               + [metric_label(k, features) for k in METRIC_COLUMNS])
    names = curve_names(results)
    rows = []
    for name, r in zip(names, results.to_dict("records")):
        steps = None if _missing(r["steps"]) else str(r["steps"])
        if steps and not _missing(r["sampler"]) and r["sampler"] not in steps:
            steps = f"{steps} ({r['sampler']})"
        seeds = [None if _missing(r.get("seeds")) else str(r["seeds"])] if seeded else []
        rows.append([name, None if _missing(r["image_size"]) else str(r["image_size"]), steps,
                     None if _missing(r["guidance_scale"]) else format_scale(r["guidance_scale"])]
                    + ([None if _missing(r["truncation"]) else format_scale(r["truncation"])] if trunc else [])
                    + [None if _missing(r["num_samples"]) else str(r["num_samples"])] + seeds
                    + [format_metric(r[k], std=r.get(f"{k}_seed_std")) for k in METRIC_COLUMNS])
    groups: list[tuple[str | None, list]] = [(None, rows)]
    footnotes = []
    if baselines is not None and not baselines.empty:
        base_rows = []
        for i, r in enumerate(baselines.to_dict("records"), start=1):
            steps = None if _missing(r["steps"]) else str(r["steps"])
            scale = r["truncation"] if not _missing(r["truncation"]) else r["guidance_scale"]
            scale_text = None
            if trunc:
                scale_text = None if _missing(r["guidance_scale"]) else format_scale(r["guidance_scale"])
            elif not _missing(r["truncation"]):
                scale_text = f"trunc. {r['truncation']}"
            elif not _missing(scale):
                scale_text = format_scale(scale)
            base_rows.append([f"{r['label']} [{i}]", str(r["image_size"]), steps, scale_text]
                             + ([_truncation_text(r["truncation"])] if trunc else [])
                             + [None if _missing(r["num_samples"]) else str(r["num_samples"])]
                             + [format_metric(r[k]) for k in METRIC_COLUMNS])
            footnotes.append(f"[{i}] {r['source']}")
        n = len(lead)
        groups.append(("Published baselines", [row[:n] + [None] * seeded + row[n:] for row in base_rows]))
    if seeded:
        footnotes.insert(0, "mean ± std: rows that differ only by the sampling seed (Seeds), sample std (ddof 1).")
    return Table(headers=headers, groups=groups,
                 align="lrlr" + ("r" if trunc else "") + "r" + "l" * seeded + "r" * len(METRIC_COLUMNS),
                 caption="", footnotes=footnotes)


def main_comparison_table(rows: pd.DataFrame) -> Table:
    """The paper's main comparison (arXiv Table 5 / NeurIPS Table 4): FID, sFID, precision,
    recall per model, grouped by dataset and resolution (the table prints no IS)."""
    keys = [KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL]
    headers = ["Model"] + [metric_label(k) for k in keys]
    groups = []
    for (dataset, size), g in rows.groupby(["dataset", "image_size"], sort=False):
        groups.append((f"{dataset} {size}×{size}",
                       [[str(r["model"])] + [format_metric(r[k]) for k in keys] for r in g.to_dict("records")]))
    sources = sorted(set(rows["source"].astype(str)))
    footnotes = [f"Source: {s}" for s in sources]
    footnotes.append("Empty cells: not published in the table (e.g. VQ-VAE-2 (RS) FID is printed as ~10).")
    return Table(headers=headers, groups=groups, align="lrrrr", footnotes=footnotes,
                 caption="Main comparison of Dhariwal & Nichol 2021 (arXiv Table 5 / NeurIPS Table 4); "
                         "ImageNet sampled with 250 steps, LSUN with 1000, '25 steps' rows with DDIM.")


# ----------------------------------------------------------------------------- helpers


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Validate `--out`: a new path, an empty folder, or a previous evalkit report (replaced).

    Raises RunDirectoryError when it is a file or a non-empty folder that is not an evalkit report.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out}: found a file, expected a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_FILE).is_file():
        raise RunDirectoryError(f"--out {out}: the folder holds other files and no {MARKER_FILE}; "
                                f"expected a new or empty folder or an earlier evalkit report")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "row"


def _resolve_samples(results: pd.DataFrame, csv_dir: Path | None) -> dict[int, Path]:
    """Row index → sample store path for rows with a samples_path; missing files → InputError."""
    if "samples_path" not in results.columns:
        return {}
    paths, missing = {}, []
    for i, value in results["samples_path"].items():
        if _missing(value):
            continue
        path = Path(str(value))
        if not path.is_absolute() and csv_dir is not None:
            path = csv_dir / path
        (paths.__setitem__(i, path) if path.exists() else missing.append(str(path)))
    if missing:
        raise InputError(f"samples_path: {len(missing)} sample store(s) not found: {', '.join(missing[:5])}")
    return paths


@contextlib.contextmanager
def _staging(out: Path):
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is deleted."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes a private folder; reports are ordinary folders
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unpublished_lines() -> list[str]:
    """README lines for figures the paper plotted without publishing per-point values."""
    lines = []
    for r in unpublished_figures().to_dict("records"):
        note = str(r["notes"]).replace("[direct: NOT PUBLISHED]", "").strip()
        lines.append(f"- **{r['label']}** ({r['dataset']} {r['image_size']}×{r['image_size']}, "
                     f"{r['table_or_figure']}): not published as numbers. {note} Source: {r['source']}.")
    return lines


# ----------------------------------------------------------------------------- report


def build_report(results: pd.DataFrame, out_dir: str | os.PathLike, *, baselines: pd.DataFrame | None = None,
                 csv_path: str | os.PathLike | None = None, title: str = "evalkit report",
                 command: str | None = None, samples_per_grid: int = 16,
                 extra_tables: dict[str, Table] | None = None, extra_readme: Sequence[str] = (),
                 extra_files: dict[str, pd.DataFrame] | None = None, results_origin: str | None = None) -> Report:
    """Render figures, tables and README for `results` into `out_dir` (see module doc).

    results: a validated results table (evalkit.results schema), at least one row, one feature
    network. baselines: rows of the baselines schema (same features) or None. csv_path: the CSV
    the results came from (its path and sha256 go into the README; relative samples_path cells
    are resolved against its folder). command: the command line that regenerates the report.
    extra_tables: name → Table written as name.md and name.tex; extra_files: name → results
    table written as CSV; results_origin: README text saying where rows come from when there is no
    csv_path. Raises InputError / RunDirectoryError before anything is written.
    """
    out = check_out_dir(out_dir)
    if results.empty:
        where = f" in {csv_path}" if csv_path else ""
        raise InputError(f"the results table{where} has no rows; nothing to report (run a sweep first)")
    features = features_of(results, f"results {csv_path or ''}".strip())
    notes: list[str] = []
    merged = aggregate_seeds(results)
    if len(merged) < len(results):
        notes.append(f"{len(results)} results rows drawn as {len(merged)}: rows that differ only by the sampling "
                     f"seed are shown as mean ± std (table) and ± std error bars (figures).")
    results = merged
    ci = [k for k in CI_METRICS if f"{k}_ci_low" in results.columns and results[f"{k}_ci_low"].notna().any()]
    if ci:
        notes.append(f"bootstrap intervals ({', '.join(ci)}) are drawn as interval bars; recall and coverage "
                     f"intervals are biased low by construction (a resample holds ~63% distinct samples).")
    if baselines is not None and not baselines.empty:
        base_features = baselines["features"].fillna("inception")
        dropped = baselines[base_features != features]
        if not dropped.empty:
            notes.append(f"{len(dropped)} baseline row(s) measured with {sorted(set(base_features))} features were "
                         f"not drawn: the results use {features!r} features, so the numbers are not comparable.")
        baselines = baselines[base_features == features]
        sizes = set(results["image_size"].dropna().astype(int))
        off = baselines[~baselines["image_size"].isin(sizes)]
        if not off.empty and sizes:
            notes.append(f"{len(off)} baseline row(s) of other resolutions than the results "
                         f"({', '.join(map(str, sorted(sizes)))}) were left out.")
            baselines = baselines[baselines["image_size"].isin(sizes)]
        baselines = baselines.reset_index(drop=True)
    csv_dir = Path(csv_path).resolve().parent if csv_path else None
    samples = _resolve_samples(results, csv_dir)
    csv_sha = sha256_file(csv_path) if csv_path else None

    # Which plots have points: a plot without any point is skipped and said so in the README.
    plots = []
    for stem, x, y, fn in PLOTS:
        have = plottable(results, x, y)
        base_have = plottable(baselines, x, y) if baselines is not None else None
        if have.empty:
            notes.append(f"{stem}: no results row has both {metric_label(x, features)} and "
                         f"{metric_label(y, features)}; plot skipped.")
            continue
        skipped = len(results) - len(have)
        if skipped:
            notes.append(f"{stem}: {skipped} results row(s) without {x} or {y} are not drawn.")
        if baselines is not None and base_have is not None and len(base_have) < len(baselines):
            missing = [baseline_name(r) for r in baselines.to_dict("records")
                       if _missing(r[x]) or _missing(r[y])]
            notes.append(f"{stem}: baseline(s) without published {metric_label(x)} or {metric_label(y)} are not "
                         f"drawn: {'; '.join(missing)}.")
        plots.append((stem, x, y, fn))
    if not plots:
        raise InputError(f"results {csv_path or ''}: no row has the metric pairs of any plot "
                         f"(IS+FID or precision+recall); nothing to report".replace("  ", " "))

    with _staging(out) as tmp:
        files: list[str] = []
        # Tradeoff figures.
        for stem, x, y, fn in plots:
            fig = fn(results, baselines)
            files += [p.name for p in save_figure(fig, tmp / stem, formats=FIGURE_FORMATS)]
        # Tables.
        table = results_table(results, baselines)
        tables = {"results_table": table, **(extra_tables or {})}
        for name, t in tables.items():
            (tmp / f"{name}.md").write_text(t.markdown(), encoding="utf-8")
            (tmp / f"{name}.tex").write_text(t.latex(), encoding="utf-8")
            files += [f"{name}.md", f"{name}.tex"]
        for name, df in (extra_files or {}).items():
            write_results(tmp / f"{name}.csv", df, lock=False)  # private staging folder: no lock file
            files.append(f"{name}.csv")
        # Sample grids, one per row that names its store.
        grids = []
        if samples:
            (tmp / "samples").mkdir()
            names = curve_names(results)
            for i, path in samples.items():
                row = results.loc[i]
                key = point_key(results.loc[[i]])
                scale = "" if _missing(row[key]) else format_scale(row[key])
                tag, what = ("trunc", "truncation") if key == "truncation" else ("scale", "scale")
                name = f"samples/{i:03d}_{_slug(names[i])}_{tag}{scale or 'na'}.png"
                fig = sample_grid(path, n=samples_per_grid, title=f"{names[i]}, {what} {scale or '?'}")
                fig.savefig(tmp / name, dpi=200, metadata={})
                files.append(name)
                grids.append((name, names[i], f"{point_name(key)} {scale or 'unknown'}", path))
        # README and marker.
        readme = _readme(title, results, baselines, features, csv_path, csv_sha, plots, tables, grids, notes,
                         command, extra_readme, {n: sha256_file(tmp / f"{n}.csv") for n in sorted(extra_files or {})},
                         results_origin)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        files.append("README.md")
        marker = {"evalkit_report": 1, "evalkit_version": __version__, "title": title,
                  "results_csv": str(csv_path) if csv_path else None, "results_sha256": csv_sha,
                  "features": features, "rows": int(len(results)),
                  "baselines": 0 if baselines is None else int(len(baselines)), "files": sorted(files),
                  "command": command}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        files.append(MARKER_FILE)
    return Report(out_dir=out, files=sorted(files), notes=notes)


def _readme(title, results, baselines, features, csv_path, csv_sha, plots, tables, grids, notes, command,
            extra_readme, extra_files, results_origin) -> str:
    """Text of the report folder's README.md."""
    lines = [f"# {title}", ""]
    if command:
        lines += ["Regenerate this folder with:", "", "```", command, "```", ""]
    lines += ["## Data", ""]
    if csv_path:
        lines.append(f"- Results: `{csv_path}` (sha256 `{csv_sha}`), {len(results)} row(s).")
    else:
        lines.append(f"- Results: {len(results)} row(s), {results_origin or 'passed in directly (no CSV file)'}.")
    for name, sha in extra_files.items():
        lines.append(f"- `{name}.csv` (sha256 `{sha}`): the plotted rows in the evalkit results schema; "
                     f"`evalkit report {name}.csv --baseline biggan-deep --out DIR` redraws them.")
    lines.append(f"- Feature network: `{features}`"
                 + (" (the ADM evaluator's Inception-2015 network)." if is_inception(features)
                    else f"; metrics are named {metric_label(KEY_FID, features)}, not FID, because they do not "
                         "use the Inception network."))
    lines += [*extra_readme, "", "## Figures", ""]
    names = curve_names(results)
    keys = {name: point_key(results[names == name]) for name in dict.fromkeys(names)}
    gans = "truncation" in keys.values()
    for stem, x, y, _ in plots:
        lines.append(f"- `{stem}.pdf` / `.svg` / `.png`: {metric_label(y, features)} (y) against "
                     f"{metric_label(x, features)} (x); one curve per checkpoint/resolution, each point "
                     + ("annotated with its guidance scale (diffusion, solid) or truncation (GAN, dashed)."
                        if gans else "annotated with its guidance scale."))
    lines += ["", "Curves (guidance scales, or truncations of GANs, in plotting order):" if gans
              else "Curves (guidance scales in plotting order):", ""]
    for name, key in keys.items():
        scales = results[names == name][key].dropna().sort_values()
        prefix = f"{point_name(key)} " if gans else ""
        lines.append(f"- {markdown_escape(name)}: {prefix}{', '.join(format_scale(s) for s in scales) or 'no scale recorded'}")
    lines += ["", "Figures are 3.25 in wide (one paper column), fonts 7–9 pt; PNG at 200 dpi.", ""]
    lines += ["## Tables", ""]
    for name in tables:
        lines.append(f"- `{name}.md` and `{name}.tex` (LaTeX booktabs; `\\usepackage{{booktabs}}`).")
    if grids:
        lines += ["", "## Samples", ""]
        for name, label, scale, path in grids:
            lines.append(f"- `{name}`: {markdown_escape(label)}, {scale}, from `{path}`")
    lines += ["", "## Baselines", ""]
    if baselines is None or baselines.empty:
        lines.append("None drawn.")
    else:
        lines.append("Drawn as black/grey markers (not joined); values as published:")
        lines.append("")
        for r in baselines.to_dict("records"):
            lines.append(f"- {markdown_escape(baseline_name(r))}: {r['source']}; {r['table_or_figure']}. "
                         f"{'' if _missing(r['notes']) else markdown_escape(r['notes'])}".rstrip())
    lines += ["", "## Caveats", ""]
    lines += [f"- {n}" for n in notes]
    lines.append("- Published tradeoff curves without per-point numbers are NOT drawn (no points are read off "
                 "plots or invented):")
    lines += ["  " + line for line in _unpublished_lines()]
    lines += ["", f"Generated by evalkit {__version__}.", ""]
    return "\n".join(lines)


def resolve_baselines(specs: Sequence[str], results: pd.DataFrame) -> pd.DataFrame | None:
    """Baseline rows for repeated `--baseline NAME|FILE` options (None when there are none)."""
    if not specs:
        return None
    sizes = results["image_size"].dropna().astype(int).tolist()
    frames = [select_baselines(spec, sizes) for spec in specs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else None


def report_from_csv(csv_path: str | os.PathLike, out_dir: str | os.PathLike, baselines: Sequence[str] = (),
                    title: str | None = None, command: str | None = None, samples_per_grid: int = 16) -> Report:
    """`evalkit report RESULTS.csv --baseline ... --out DIR`: read, validate, render (see build_report)."""
    check_out_dir(out_dir)
    results = read_results(csv_path)
    if results.empty:
        raise InputError(f"the results table in {csv_path} has no rows; nothing to report (run a sweep first)")
    base = resolve_baselines(baselines, results)
    return build_report(results, out_dir, baselines=base, csv_path=csv_path,
                        title=title or f"Report of {Path(csv_path).name}", command=command,
                        samples_per_grid=samples_per_grid)


def paper_report(out_dir: str | os.PathLike, command: str | None = None) -> Report:
    """`evalkit report --paper`: the paper's published numbers alone.

    Tradeoff curves of the classifier-guidance ablation at ImageNet 256x256 (arXiv Table 4 /
    NeurIPS Table 3: conditional and unconditional ADM at scales 0, 1, 10) with BigGAN-deep 256
    (main table, truncation 1.0) as baseline; the ablation as `paper_ablation.csv` and tables;
    and the main comparison (arXiv Table 5 / NeurIPS Table 4) as `main_table.md` / `.tex`.
    """
    check_out_dir(out_dir)
    ablation = guidance_ablation()
    results = as_results(ablation)
    base = select_baselines("biggan-deep", [256])
    readme = [
        f"- Published numbers only, from the baselines packaged with evalkit (`evalkit/data/baselines.csv`, "
        f"sha256 `{sha256_file(packaged_path())}`); list them with `evalkit baselines`.",
        "- Curves: the classifier-guidance ablation of Dhariwal & Nichol 2021 (arXiv:2105.05233v4 Table 4 / "
        "NeurIPS Table 3), ImageNet 256×256, conditional and unconditional ADM at guidance scales 0, 1 and 10. "
        "Sources per row: " + "; ".join(sorted(set(ablation["source"]))) + ".",
        "- The table does not print the number of sampling steps (250, the paper's ImageNet default, is "
        "assumed) and its rows come from models trained 2M iterations with batch 256.",
        "- `main_table.md` / `main_table.tex`: the paper's main comparison (arXiv Table 5 / NeurIPS Table 4) at "
        "every dataset and resolution; it prints no Inception Score.",
        "- BigGAN-deep's Inception Score is not in the ADM paper; the 256×256 value (171.4) is from DiT "
        "(Peebles & Xie 2023, Table 2), and Esser et al. 2021 / LDM report 203.6 for truncation 1.0. Treat "
        "the BigGAN-deep marker's IS position with that caveat.",
    ]
    return build_report(results, out_dir, baselines=base, csv_path=None,
                        title="Dhariwal & Nichol 2021: classifier-guidance ablation (ImageNet 256×256) and "
                              "main comparison, from the published numbers",
                        command=command, extra_tables={"main_table": main_comparison_table(main_comparison())},
                        extra_readme=readme, extra_files={"paper_ablation": results},
                        results_origin="the paper's guidance-ablation rows of the packaged baselines")
