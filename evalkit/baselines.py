"""Published numbers as data: baselines to draw beside a results table.

The packaged file `evalkit/data/baselines.csv` holds the rows of Dhariwal & Nichol 2021
("Diffusion Models Beat GANs on Image Synthesis", arXiv:2105.05233v4 / NeurIPS 2021) that the
reports use — the main comparison (arXiv Table 5 / NeurIPS Table 4, every model), the
classifier-guidance ablation at 256x256 (arXiv Table 4 / NeurIPS Table 3), guidance vs upsampling
(arXiv Table 6 / NeurIPS Table 5) — plus the full-precision evaluator output printed in
openai/guided-diffusion `evaluations/README.md` (at `evalkit.REFERENCE_COMMIT`),
and two rows that record figures whose per-point values were never published (their metric cells
are empty). The ADM paper prints no Inception Score for BigGAN-deep; the 256 and 512 BigGAN-deep
rows take theirs from DiT (Peebles & Xie 2023, Tables 2-3) and say so in `source`.

Every row has a `source` (paper + table, or repository file), `table_or_figure` and `notes` that
start with `[direct]` or `[inferred]` as in the project's spec of published results. Baselines use
the results schema (`evalkit.results`) for the columns they share; resolution is `image_size`
(one spelling per concept), and they add `model`, `dataset`, `truncation`, `source`,
`table_or_figure` and `notes`. Users add their own with a CSV in the same schema.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Iterable

import pandas as pd

from evalkit.errors import InputError
from evalkit.hashing import sha256_bytes
from evalkit.results import (
    COLUMNS,
    METRIC_COLUMNS,
    PANDAS_DTYPES,
    SCHEMA,
    coerce_columns,
    column_problems,
    empty_table,
    read_csv_text,
    validate_table,
)

# Columns a baselines CSV may have beyond the results columns, all text.
EXTRA_COLUMNS: tuple[str, ...] = ("model", "dataset", "truncation", "source", "table_or_figure", "notes")
# Columns every baselines CSV must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("label", "image_size", "source")
BASELINE_SCHEMA: dict[str, str] = {**SCHEMA, **{c: "string" for c in EXTRA_COLUMNS}}

# Named baseline sets for `--baseline NAME`: predicate on the `model` column of the packaged rows.
BASELINE_SETS: dict[str, str] = {
    "biggan-deep": "BigGAN-deep rows of the paper's main comparison (truncation 1.0 at 128/256/512)",
}

_NOT_PUBLISHED_TAG = "NOT PUBLISHED"
_MAIN_TABLE_TAG = "arXiv Table 5"    # arXiv Table 5 / NeurIPS Table 4: the main comparison
_NEURIPS_ONLY_MAIN = "NeurIPS Table 4"
_ABLATION_TAG = "arXiv Table 4"      # arXiv Table 4 / NeurIPS Table 3: guidance ablation at 256


def validate_baselines(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check a baselines table and return it with schema dtypes.

    Raises InputError naming `where` when a required column (label, image_size, source) is
    missing, a column is unknown, a source cell is empty, or a number cell is not a number.
    """
    problems = column_problems(df, REQUIRED_COLUMNS, BASELINE_SCHEMA)
    if problems:
        raise InputError(f"{where}: not a baselines table ({problems}); expected the results columns "
                         f"plus {', '.join(EXTRA_COLUMNS)}, with a source for every row")
    out = coerce_columns(df, BASELINE_SCHEMA, where)
    no_source = out["source"].isna()
    if no_source.any():
        rows = [str(i + 1) for i in no_source.to_numpy().nonzero()[0][:10]]
        raise InputError(f"{where}: empty source in row(s) {', '.join(rows)}; every baseline value needs a "
                         f"source (paper + table, or repository file)")
    no_size = out["image_size"].isna()
    if no_size.any():
        i = int(no_size.to_numpy().nonzero()[0][0])
        raise InputError(f"{where}: empty image_size in row {i + 1}; expected the resolution in pixels")
    for col in [c for c in BASELINE_SCHEMA if c not in out.columns]:
        out[col] = pd.Series(None, index=out.index, dtype=PANDAS_DTYPES[BASELINE_SCHEMA[col]])
    out["features"] = out["features"].fillna("inception")
    return out[list(BASELINE_SCHEMA)].reset_index(drop=True)


def read_baselines(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a user baselines CSV (results schema subset + source; see module doc)."""
    return validate_baselines(read_csv_text(path, "baselines CSV"), where=f"baselines CSV {path}")


def packaged_path() -> Path:
    """Path of the packaged baselines CSV."""
    return Path(str(resources.files("evalkit") / "data" / "baselines.csv"))


def packaged_baselines() -> pd.DataFrame:
    """All packaged baseline rows (see module doc), validated, in file order."""
    return read_baselines(packaged_path())


def has_metrics(df: pd.DataFrame) -> pd.Series:
    """Boolean mask of rows with at least one metric value."""
    return df[list(METRIC_COLUMNS)].notna().any(axis=1)


def select_baselines(spec: str, image_sizes: Iterable[int]) -> pd.DataFrame:
    """Baseline rows for `--baseline spec`: a name of BASELINE_SETS or a CSV path.

    Named sets pick packaged rows of the given image sizes; a file is read whole (its rows of
    other resolutions are kept: the plots match them to curves by image_size). Rows without any
    metric value are dropped. Unknown name that is not a file → InputError listing the names.
    """
    sizes = {int(s) for s in image_sizes}
    if spec in BASELINE_SETS:
        df = packaged_baselines()
        if spec == "biggan-deep":
            pick = df["model"].str.lower().str.startswith("biggan-deep") & df["image_size"].isin(sizes)
            pick &= df["table_or_figure"].str.startswith(_MAIN_TABLE_TAG)
            df = df[pick.fillna(False)]
        return df[has_metrics(df)].reset_index(drop=True)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"--baseline: {spec!r} is neither a baseline set ({', '.join(sorted(BASELINE_SETS))}) "
                         f"nor an existing CSV file")
    df = read_baselines(path)
    return df[has_metrics(df)].reset_index(drop=True)


def unpublished_figures() -> pd.DataFrame:
    """Packaged rows that record figures plotted in the paper without published per-point values."""
    df = packaged_baselines()
    return df[df["notes"].str.contains(_NOT_PUBLISHED_TAG, regex=False).fillna(False)].reset_index(drop=True)


def main_comparison() -> pd.DataFrame:
    """The paper's main comparison (arXiv Table 5 / NeurIPS Table 4): every packaged row of it."""
    df = packaged_baselines()
    tab = df["table_or_figure"]
    pick = tab.str.startswith(_MAIN_TABLE_TAG) | (tab == _NEURIPS_ONLY_MAIN)
    return df[pick.fillna(False)].reset_index(drop=True)


def guidance_ablation() -> pd.DataFrame:
    """The classifier-guidance ablation (arXiv Table 4 / NeurIPS Table 3): six baseline rows."""
    df = packaged_baselines()
    return df[df["table_or_figure"].str.startswith(_ABLATION_TAG).fillna(False)].reset_index(drop=True)


def as_results(baselines: pd.DataFrame) -> pd.DataFrame:
    """Baseline rows as a results table (results columns only), each with a run_id derived from
    its source, table, model and guidance scale — so published numbers can be reported as results.
    """
    if baselines.empty:
        return empty_table()
    out = baselines[list(COLUMNS)].copy()
    # A published truncation may be a range in words; the results column holds numbers only.
    out["truncation"] = pd.to_numeric(baselines["truncation"], errors="coerce")
    keys = (baselines["source"].astype(str) + "|" + baselines["table_or_figure"].astype(str) + "|"
            + baselines["model"].astype(str) + "|" + baselines["guidance_scale"].astype(str))
    out["run_id"] = ["paper-" + sha256_bytes(k.encode())[:12] for k in keys]
    return validate_table(out, where="published rows")
