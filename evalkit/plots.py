"""Figures from a results table: fidelity/diversity tradeoff curves and sample grids.

Every function takes a DataFrame (the schema of `evalkit.results`) and returns a
`matplotlib.figure.Figure` built without pyplot (no global state, any backend). Figures are sized
for one column of a two-column paper (3.25 in wide) with 7-9 pt fonts; save them with
`save_figure` as PDF + SVG (vector) + PNG (200 dpi).

The tradeoff plots follow Dhariwal & Nichol 2021 (arXiv:2105.05233v4 Fig. 5 / NeurIPS Fig. 6):
precision on x and recall on y; Inception Score on x and FID on y. One curve per
(family, checkpoint/resolution) (rows grouped by label, preset, image_size, steps, family), points
in guidance-scale order, each annotated with its guidance scale; a GAN's curve (rows with a
truncation, e.g. BigGAN-deep) is ordered and annotated by truncation instead, drawn dashed with
square markers, and when a figure holds one, every legend entry says what its points vary
("(truncation)" / "(guidance scale)"). Baselines are separate markers.

Uncertainty, when the frame has it: a ``<metric>_seed_std`` column (rows aggregated over sampling seeds,
see `evalkit.report.aggregate_seeds`) draws symmetric ± std error bars (``ax.errorbar``, gid
``seeds:<curve>``); otherwise ``<metric>_ci_low``/``_ci_high`` (bootstrap intervals) draw the
interval itself as bars from low to high (``hlines``/``vlines``, gid ``ci:<curve>``), which need not
contain the point (recall and coverage intervals are biased low).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from evalkit.errors import InputError
from evalkit.metrics import KEY_FID, KEY_IS, KEY_PRECISION, KEY_RECALL
from evalkit.metrics.keys import metric_label
from evalkit.results import DEFAULT_FAMILY, DEFAULT_FEATURES
from evalkit.store import open_batch

FIGURE_WIDTH_IN = 3.25          # one column of a two-column paper
FIGURE_HEIGHT_IN = 2.5
PNG_DPI = 200
CURVE_KEYS: tuple[str, ...] = ("label", "preset", "image_size", "steps", "family")
BASELINE_GID = "baseline"       # gid of every baseline marker artist
CURVE_GID_PREFIX = "curve:"     # gid of every curve artist, followed by its legend name
SEEDS_GID_PREFIX = "seeds:"     # gid of ± std error bars over seeds, followed by the curve's legend name
CI_GID_PREFIX = "ci:"           # gid of bootstrap interval bars, followed by the curve's legend name

# Paper-figure style: 7-9 pt text, vector fonts embedded as TrueType, reproducible files.
STYLE = {
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 9,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "lines.linewidth": 1.0,
    "lines.markersize": 4,
    "axes.linewidth": 0.6,
    "pdf.fonttype": 42,
    "svg.hashsalt": "evalkit",
}
ANNOTATION_FONTSIZE = 7
_BASELINE_MARKERS = ("*", "D", "s", "^", "v", "P", "X", "h")


def format_scale(value: float) -> str:
    """Guidance scale as written on plots and in tables: ``0``, ``0.5``, ``10``."""
    return f"{float(value):g}"


def features_of(df: pd.DataFrame, what: str = "results") -> str:
    """The one feature-network name of `df` (empty cells count as the Inception network).

    Raises InputError when rows come from different networks: their metrics are not comparable.
    """
    if df.empty or "features" not in df.columns:
        return DEFAULT_FEATURES
    names = sorted(set(df["features"].fillna(DEFAULT_FEATURES).astype(str)))
    if len(names) > 1:
        raise InputError(f"{what}: rows come from different feature networks ({', '.join(names)}); their "
                         f"metrics are not comparable, so report one network at a time")
    return names[0] if names else DEFAULT_FEATURES


def _cell(value) -> str | None:
    """Text of a grouping cell, None when missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def curve_names(df: pd.DataFrame) -> pd.Series:
    """Legend name of each row's curve: its label (or preset), with image size and steps added
    only where two curves would otherwise share a name."""
    keys = [tuple(_cell(r.get(k)) for k in CURVE_KEYS[:4]) + (_cell(r.get("family")) or DEFAULT_FAMILY,)
            for r in df.to_dict("records")]
    base = {k: (k[0] or k[1] or "results") for k in set(keys)}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    names = {}
    for k, name in base.items():
        if counts[name] > 1:
            detail = [f"{k[2]}px" if k[2] else None, f"{k[3]} steps" if k[3] else None, k[1] if k[0] else None,
                      k[4] if k[4] != DEFAULT_FAMILY else None]
            name = f"{name} ({', '.join(d for d in detail if d)})"
        names[k] = name
    return pd.Series([names[k] for k in keys], index=df.index, dtype=object)


def point_key(curve: pd.DataFrame) -> str:
    """The column that orders and labels the points of one curve: ``truncation`` for a GAN's
    rows (they have one), else ``guidance_scale``."""
    if "truncation" in curve.columns and curve["truncation"].notna().any():
        return "truncation"
    return "guidance_scale"


def point_name(key: str) -> str:
    """What a curve's point labels are, in words (legends, READMEs)."""
    return "truncation" if key == "truncation" else "guidance scale"


def plottable(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows of `df` with both metric `x` and metric `y` present."""
    return df[df[x].notna() & df[y].notna()]


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    return df[name].to_numpy(float) if name in df.columns else np.full(len(df), np.nan)


def seed_errors(df: pd.DataFrame, key: str) -> np.ndarray | None:
    """float [N] ± std over seeds of metric `key` per row (NaN where none), or None when no row has one."""
    std = _column(df, f"{key}_seed_std")
    return std if np.isfinite(std).any() else None


def intervals(df: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(low [N], high [N]) bootstrap interval of metric `key` per row (NaN where none), or None."""
    low, high = _column(df, f"{key}_ci_low"), _column(df, f"{key}_ci_high")
    return (low, high) if (np.isfinite(low) & np.isfinite(high)).any() else None


def _draw_uncertainty(ax, curve: pd.DataFrame, x: str, y: str, xs: np.ndarray, ys: np.ndarray, color,
                      name: str) -> None:
    """Error bars of one curve: ± std over seeds where a row has one, else its bootstrap interval."""
    xerr, yerr = seed_errors(curve, x), seed_errors(curve, y)
    if xerr is not None or yerr is not None:
        clean = (lambda e: None if e is None else np.nan_to_num(e, nan=0.0))
        ax.errorbar(xs, ys, xerr=clean(xerr), yerr=clean(yerr), fmt="none", ecolor=color, elinewidth=0.6,
                    capsize=1.5, gid=SEEDS_GID_PREFIX + name)
    for key, along in ((x, "x"), (y, "y")):
        span = intervals(curve, key)
        if span is None:
            continue
        ok = np.isfinite(span[0]) & np.isfinite(span[1]) & ~np.isfinite(_column(curve, f"{key}_seed_std"))
        if not ok.any():
            continue
        if along == "x":
            ax.hlines(ys[ok], span[0][ok], span[1][ok], colors=color, linewidth=0.6, gid=CI_GID_PREFIX + name)
        else:
            ax.vlines(xs[ok], span[0][ok], span[1][ok], colors=color, linewidth=0.6, gid=CI_GID_PREFIX + name)


def baseline_name(row: dict) -> str:
    """Legend text of a baseline row: label, resolution, truncation or guidance scale."""
    name = str(row.get("label") or row.get("model") or "baseline")
    if _cell(row.get("image_size")) and str(row["image_size"]) not in name:
        name += f" {row['image_size']}"
    extras = []
    trunc = _cell(row.get("truncation"))
    if trunc:
        extras.append(f"trunc. {trunc}")
    scale = row.get("guidance_scale")
    if _cell(scale) and "scale" not in name:
        extras.append(f"scale {format_scale(scale)}")
    return name + (f" ({', '.join(extras)})" if extras else "")


def tradeoff_figure(results: pd.DataFrame, x: str, y: str, baselines: pd.DataFrame | None = None,
                    title: str | None = None) -> Figure:
    """Scatter-line plot of metric `y` against metric `x`, one curve per checkpoint/resolution.

    results: rows of the results schema (one feature network); rows missing `x` or `y` are
    skipped. Each curve joins its rows in increasing guidance_scale (truncation for a GAN's
    curve, see `point_key`) and annotates every point with it; ± std over seeds or bootstrap
    intervals are drawn where present (module doc). baselines: optional rows (baselines schema) drawn as separate black/grey
    markers with gid "baseline"; they must use the same feature network as the results.
    Raises InputError when neither results nor baselines have a point with both metrics.
    """
    features = features_of(results, "results")
    if baselines is not None and not baselines.empty:
        base_features = features_of(baselines, "baselines")
        if base_features != features:
            raise InputError(f"baselines were measured with {base_features!r} features but the results with "
                             f"{features!r}; their {metric_label(x, features)} values are not comparable")
    points = plottable(results, x, y)
    base_points = plottable(baselines, x, y) if baselines is not None else None
    if points.empty and (base_points is None or base_points.empty):
        raise InputError(f"no row has both {x} and {y}; nothing to plot for "
                         f"{metric_label(y, features)} vs {metric_label(x, features)}")
    with rc_context(STYLE):
        fig = Figure(figsize=(FIGURE_WIDTH_IN, FIGURE_HEIGHT_IN), layout="constrained")
        ax = fig.add_subplot()
        # One line per curve, points in guidance-scale (GANs: truncation) order, each labelled with it.
        names = curve_names(points)
        keyed = {name: point_key(points[names == name]) for name in dict.fromkeys(names)}
        mixed = "truncation" in keyed.values()  # then every legend entry says what its points vary
        for name, key in keyed.items():
            curve = points[names == name].sort_values(key, kind="stable")
            xs, ys = curve[x].to_numpy(float), curve[y].to_numpy(float)
            gan = key == "truncation"
            (line,) = ax.plot(xs, ys, marker="s" if gan else "o", linestyle="--" if gan else "-",
                              label=f"{name} ({point_name(key)})" if mixed else name, gid=CURVE_GID_PREFIX + name)
            _draw_uncertainty(ax, curve, x, y, xs, ys, line.get_color(), name)
            for xv, yv, scale in zip(xs, ys, curve[key]):
                if _cell(scale) is not None:
                    ax.annotate(format_scale(scale), (xv, yv), xytext=(3, 3), textcoords="offset points",
                                fontsize=ANNOTATION_FONTSIZE)
        # Baselines: one distinct marker each, named in the legend.
        if base_points is not None:
            for i, row in enumerate(base_points.to_dict("records")):
                ax.plot([float(row[x])], [float(row[y])], linestyle="none",
                        marker=_BASELINE_MARKERS[i % len(_BASELINE_MARKERS)], markersize=7,
                        color=("black", "0.45")[(i // len(_BASELINE_MARKERS)) % 2],
                        label=baseline_name(row), gid=BASELINE_GID)
        ax.set_xlabel(metric_label(x, features))
        ax.set_ylabel(metric_label(y, features))
        if title:
            ax.set_title(title)
        ax.margins(0.12)
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.legend(frameon=False, loc="best")
    return fig


def fid_vs_is(results: pd.DataFrame, baselines: pd.DataFrame | None = None, title: str | None = None) -> Figure:
    """FID (y) against Inception Score (x), as the paper's Fig. 5 right panel. See tradeoff_figure."""
    return tradeoff_figure(results, KEY_IS, KEY_FID, baselines, title)


def precision_vs_recall(results: pd.DataFrame, baselines: pd.DataFrame | None = None,
                        title: str | None = None) -> Figure:
    """Recall (y) against precision (x), as the paper's Fig. 5 left panel. See tradeoff_figure."""
    return tradeoff_figure(results, KEY_PRECISION, KEY_RECALL, baselines, title)


def save_figure(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = ("pdf", "svg", "png")) -> list[Path]:
    """Write `fig` as `stem.<format>` for each format (PNG at PNG_DPI); returns the paths.

    File metadata carries no dates, so re-rendering the same figure gives the same vector files.
    """
    paths = []
    metadata = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}, "png": {}}
    with rc_context(STYLE):
        for fmt in formats:
            path = Path(f"{stem}.{fmt}")
            fig.savefig(path, format=fmt, dpi=PNG_DPI, metadata=metadata.get(fmt, {}))
            paths.append(path)
    return paths


def image_mosaic(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*(H+pad)-pad, ncols*(W+pad)-pad, C] array
    (white padding), row-major in input order."""
    n, h, w, c = images.shape
    rows = math.ceil(n / ncols)
    out = np.full((rows * (h + pad) - pad, ncols * (w + pad) - pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = images[i]
    return out


def sample_grid(npz_path: str | os.PathLike, n: int = 16, ncols: int | None = None,
                title: str | None = None) -> Figure:
    """Grid of the first `n` images of a sample store (any format `evalkit.store.open_batch` reads).

    Images are shown at native resolution without interpolation, tiled row-major in file order
    with `ncols` columns (default: ceil(sqrt(n))). Raises InputError for n < 1; store errors
    (missing or malformed file) propagate as `evalkit.errors.BatchFormatError`/`InputError`.
    """
    if n < 1:
        raise InputError(f"sample grid: n={n}, expected at least 1 image")
    reader = open_batch(npz_path)
    count = min(n, reader.num_images)
    if count < 1:
        raise InputError(f"sample grid: {npz_path} holds no images")
    images = reader.read_images(0, count)
    cols = ncols or math.ceil(math.sqrt(count))
    mosaic = image_mosaic(np.asarray(images, dtype=np.uint8), cols)
    with rc_context(STYLE):
        aspect = mosaic.shape[0] / mosaic.shape[1]
        fig = Figure(figsize=(FIGURE_WIDTH_IN, FIGURE_WIDTH_IN * aspect + (0.25 if title else 0.05)),
                     layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(mosaic if mosaic.shape[2] != 1 else mosaic[..., 0], interpolation="nearest",
                  cmap="gray" if mosaic.shape[2] == 1 else None)
        ax.set_axis_off()
        if title:
            ax.set_title(title)
    return fig
