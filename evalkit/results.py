"""The results table: one row per evaluated sample store, as a CSV read and written with pandas.

This module is THE schema: column names, their dtypes and order, how a row is identified
(`run_id`), and how rows are appended so that a killed process never leaves a broken CSV
(read + concat + write to a temporary file + atomic rename, see `evalkit.atomic`).

Metric columns reuse the constant names of `evalkit.metrics` (`inception_score`, `fid`, `sfid`,
`precision`, `recall`). Which network produced the features is recorded in `features`; plots and
tables name a metric with `metric_label(key, features)` ("FID" only for the Inception network,
"FD (digits features)" for another one).

Many writers: every writer holds the exclusive lock ``<csv>.lock`` (`results_lock`, see
`evalkit.locks`) while it re-reads the file, adds or replaces its row and atomically replaces the
file, so concurrent jobs appending to one CSV lose no row. Readers take no lock: the rename means
they see the old or the new file, never a partial one. Within a torchrun job only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from evalkit import __version__
from evalkit.atomic import atomic_path
from evalkit.errors import InputError
from evalkit.locks import FileLock, sidecar
from evalkit.metrics import KEY_FID, KEY_IS, KEY_PRECISION, KEY_RECALL, KEY_SFID, METRIC_KEYS
from evalkit.metrics.keys import metric_label  # noqa: F401  (re-exported: tables name metrics with it)

# Metric columns in table order (the order plots and tables use).
METRIC_COLUMNS: tuple[str, ...] = METRIC_KEYS
# Metrics beyond the reference evaluator's five (empty until a scorer fills them).
EXTRA_METRIC_COLUMNS: tuple[str, ...] = ("kid", "kid_std", "density", "coverage")
# Metrics that may carry a bootstrap confidence interval ``<metric>_ci_low`` / ``<metric>_ci_high``.
CI_METRICS: tuple[str, ...] = (*METRIC_KEYS, "kid", "density", "coverage")

#: Version of the column set written by this module. Version 1 (evalkit 0.1 before the column was
#: added) is detected by the absence of ``schema_version``; such tables still read and validate,
#: their rows get the version-2 columns empty and ``schema_version`` 1.
SCHEMA_VERSION = 2

# Every column of the results table, in file order, with its pandas dtype.
# "string": text (empty cell = missing); "float": float64 (NaN = missing); "int": nullable Int64.
SCHEMA: dict[str, str] = {
    "run_id": "string",             # stable hash of the settings that define the row (make_run_id)
    "label": "string",              # free text for legends, e.g. "ADM-G 256"
    "family": "string",             # generator family: "adm" (empty in version 1 = "adm"), later "biggan-deep"
    "preset": "string",             # evalkit preset name of the model
    "model_flags": "string",        # flags the model was built with (free text)
    "checkpoint_sha256": "string",
    "classifier": "string",         # classifier preset or flags; empty when unguided
    "classifier_sha256": "string",
    "guidance_scale": "float",      # classifier-guidance scale; 0 = unguided
    "truncation": "float",          # truncation of a GAN's latents; empty for diffusion
    "sampler": "string",            # one of SAMPLERS
    "steps": "string",              # respacing string as guided-diffusion spells it: "250", "ddim25", "10,15,20"
    "eta": "float",                 # DDIM eta (0 for deterministic DDIM; empty for ancestral)
    "classes": "string",            # allowed labels, e.g. "0,1,2"; empty = all classes
    "clip_denoised": "int",         # 0 when x_0 predictions were not clamped; empty = 1 (clamped)
    "upsampler": "string",          # upsampler preset or flags of a cascade; empty without one
    "upsampler_sha256": "string",
    "upsampler_steps": "string",    # the upsampler's respacing
    "upsampler_seed": "int",
    "num_samples": "int",
    "seed": "int",                  # seed of the per-sample generators (seed, i)
    "image_size": "int",            # pixels per side of the evaluated images
    "reference": "string",          # reference batch name or path
    "reference_sha256": "string",
    "features": "string",           # feature-extractor name ("inception" is the ADM evaluator's network)
    "features_sha256": "string",    # content hash of the feature network's weights
    KEY_IS: "float",
    KEY_FID: "float",
    KEY_SFID: "float",
    KEY_PRECISION: "float",
    KEY_RECALL: "float",
    **{key: "float" for key in EXTRA_METRIC_COLUMNS},
    **{f"{key}_ci_{end}": "float" for key in CI_METRICS for end in ("low", "high")},
    "bootstrap": "int",             # bootstrap replicates behind the *_ci_* columns; empty if none
    "wall_clock_s": "float",        # seconds spent sampling + scoring this row
    "evalkit_version": "string",
    "torch_version": "string",
    "created_at": "string",         # UTC ISO-8601 time the row was written
    "schema_version": "int",        # SCHEMA_VERSION of the code that wrote the row
}
COLUMNS: tuple[str, ...] = tuple(SCHEMA)
#: The columns of a version-1 table, in their file order.
V1_COLUMNS: tuple[str, ...] = (
    "run_id", "label", "preset", "model_flags", "checkpoint_sha256", "classifier", "classifier_sha256",
    "guidance_scale", "sampler", "steps", "eta", "num_samples", "seed", "image_size", "reference",
    "reference_sha256", "features", *METRIC_KEYS, "wall_clock_s", "evalkit_version", "torch_version", "created_at",
)

# Columns a results CSV may have in addition to COLUMNS.
OPTIONAL_SCHEMA: dict[str, str] = {
    "samples_path": "string",       # npz sample store of the row (for sample grids); relative to the CSV
}

# Settings whose values define a row: two rows with equal settings get the same run_id. The run_id
# hashes them in their version-1 form (see make_run_id), so rows of both versions match.
IDENTITY_COLUMNS: tuple[str, ...] = (
    "preset", "model_flags", "checkpoint_sha256", "classifier", "classifier_sha256", "guidance_scale",
    "sampler", "steps", "eta", "num_samples", "seed", "image_size", "reference", "reference_sha256",
    "features",
)
# Identity columns added in version 2 and hashed only when set to a non-default value.
V2_IDENTITY_COLUMNS: tuple[str, ...] = ("family", "truncation")
# Version-2 columns that version 1 wrote into model_flags as flag text.
FLAG_COLUMNS: tuple[str, ...] = ("classes", "clip_denoised", "upsampler", "upsampler_sha256", "upsampler_steps",
                                 "upsampler_seed")
DEFAULT_FAMILY = "adm"

SAMPLERS: tuple[str, ...] = ("ancestral", "ddim")
DEFAULT_FEATURES = "inception"

PANDAS_DTYPES = {"string": "string", "float": "float64", "int": "Int64"}

def metric_cells(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metric cells of a results row from a scoring result (`evalkit.evaluate.evaluate`'s dict):
    the five, the extra metrics, ``<metric>_ci_low``/``_ci_high`` and ``bootstrap`` (the number of
    replicates), each None when the result does not hold it."""
    cells: dict[str, Any] = {key: metrics.get(key) for key in (*METRIC_COLUMNS, *EXTRA_METRIC_COLUMNS)}
    cells.update({f"{key}_ci_{end}": metrics.get(f"{key}_ci_{end}") for key in CI_METRICS for end in ("low", "high")})
    boot = (metrics.get("provenance") or {}).get("bootstrap") or {}
    cells["bootstrap"] = boot.get("replicates")
    return cells


def empty_table() -> pd.DataFrame:
    """A results table with every column of COLUMNS, their dtypes, and no rows."""
    return pd.DataFrame({c: pd.Series([], dtype=PANDAS_DTYPES[k]) for c, k in SCHEMA.items()})


def _is_missing(value: Any) -> bool:
    """True for None, NaN, pandas NA and empty strings."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _canonical(value: Any, kind: str) -> Any:
    """Value of a setting in the form hashed by make_run_id (1 and 1.0 hash alike)."""
    if _is_missing(value):
        return None
    if kind == "float":
        return repr(float(value))
    if kind == "int":
        return int(value)
    return str(value)


def legacy_model_flags(settings: Mapping[str, Any]) -> str | None:
    """``model_flags`` as version 1 wrote it: the flags, then the FLAG_COLUMNS as flag text."""
    extra = []
    if not _is_missing(settings.get("classes")):
        extra.append(f"--classes {settings['classes']}")
    if not _is_missing(settings.get("clip_denoised")) and not int(settings["clip_denoised"]):
        extra.append("--no-clip-denoised")
    if not _is_missing(settings.get("upsampler")):
        name = str(settings["upsampler"])
        what = f'--upsampler-flags "{name}"' if name.startswith("-") else f"--upsampler {name}"
        extra.append(f"{what} --upsampler-sha256 {settings.get('upsampler_sha256')} "
                     f"--upsampler-respacing {settings.get('upsampler_steps')} "
                     f"--upsampler-seed {settings.get('upsampler_seed')}")
    flags = settings.get("model_flags")
    text = " ".join(([] if _is_missing(flags) else [str(flags)]) + extra).strip()
    return text or None


def make_run_id(settings: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit id of the settings that define a row (others are ignored).

    Missing and empty settings hash alike; numbers hash by value (``1 == 1.0``). The hash is of
    the version-1 identity (IDENTITY_COLUMNS, with FLAG_COLUMNS folded into ``model_flags`` as
    version 1 wrote them), plus ``family``/``truncation`` only when set to a non-default value, so
    a version-2 row gets the run_id of the version-1 row of the same settings.
    """
    canon = {c: _canonical(settings.get(c), SCHEMA[c]) for c in IDENTITY_COLUMNS}
    canon["model_flags"] = legacy_model_flags(settings)
    family = settings.get("family")
    if not _is_missing(family) and family != DEFAULT_FAMILY:
        canon["family"] = str(family)
    if not _is_missing(settings.get("truncation")):
        canon["truncation"] = _canonical(settings.get("truncation"), "float")
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def format_scale(scale: float) -> str:
    """Shortest exact text of a guidance scale (folder names, labels): 2.0 → "2", 0.5 → "0.5"."""
    text = repr(float(scale))
    return text[:-2] if text.endswith(".0") else text


def coerce_columns(df: pd.DataFrame, schema: Mapping[str, str], where: str) -> pd.DataFrame:
    """Cast the columns of `df` named in `schema` to their dtypes; a bad cell → InputError."""
    out = df.copy()
    for col, kind in schema.items():
        if col not in out.columns:
            continue
        series = out[col]
        if kind == "string":
            out[col] = series.astype("string").str.strip().replace("", pd.NA)
            continue
        numeric = pd.to_numeric(series.replace("", pd.NA), errors="coerce")
        bad = series.notna() & (series.astype("string").str.strip() != "") & numeric.isna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(f"{where}: column {col!r} row {i + 1}: found {series.iloc[i]!r}, expected a number")
        if kind == "int":
            frac = numeric.notna() & (numeric != numeric.round())
            if frac.any():
                i = int(frac.to_numpy().nonzero()[0][0])
                raise InputError(f"{where}: column {col!r} row {i + 1}: found {series.iloc[i]!r}, expected an integer")
            out[col] = numeric.astype("Int64")
        else:
            out[col] = numeric.astype("float64")
    return out


def column_problems(df: pd.DataFrame, required, allowed) -> str:
    """"missing columns: …; unexpected columns: …" for `df` against `required`/`allowed`, or ""."""
    missing = [c for c in required if c not in df.columns]
    extra = [c for c in df.columns if c not in allowed]
    parts = []
    if missing:
        parts.append(f"missing columns: {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected columns: {', '.join(map(str, extra))}")
    return "; ".join(parts)


def schema_version(df: pd.DataFrame) -> int:
    """1 for a table without a ``schema_version`` column (the first version), else SCHEMA_VERSION."""
    return SCHEMA_VERSION if "schema_version" in df.columns else 1


def upgrade_v1(df: pd.DataFrame) -> pd.DataFrame:
    """A version-1 table with the version-2 columns added (empty; ``schema_version`` 1)."""
    out = df.copy()
    for col in COLUMNS:
        if col not in out.columns:
            out[col] = pd.NA
    out["schema_version"] = 1
    return out


def validate_table(df: pd.DataFrame, where: str = "results table") -> pd.DataFrame:
    """Check `df` against the schema and return it with canonical column order and dtypes.

    A table without ``schema_version`` is checked against the version-1 columns and upgraded
    (`upgrade_v1`). Raises InputError naming `where` and the missing / extra columns, a cell that
    is not a number where one is expected, or an unknown sampler.
    """
    if schema_version(df) == 1:
        problems = column_problems(df, V1_COLUMNS, {**{c: SCHEMA[c] for c in V1_COLUMNS}, **OPTIONAL_SCHEMA})
        if not problems:
            df = upgrade_v1(df)
    else:
        problems = column_problems(df, COLUMNS, {**SCHEMA, **OPTIONAL_SCHEMA})
    if problems:
        raise InputError(f"{where}: not an evalkit results table ({problems}); "
                         f"expected the columns of evalkit.results.COLUMNS: {', '.join(COLUMNS)}")
    out = coerce_columns(df, {**SCHEMA, **OPTIONAL_SCHEMA}, where)
    bad_sampler = out["sampler"].notna() & ~out["sampler"].isin(SAMPLERS)
    if bad_sampler.any():
        i = int(bad_sampler.to_numpy().nonzero()[0][0])
        raise InputError(f"{where}: column 'sampler' row {i + 1}: found {out['sampler'].iloc[i]!r}, "
                         f"expected one of {', '.join(SAMPLERS)}")
    order = list(COLUMNS) + [c for c in OPTIONAL_SCHEMA if c in out.columns]
    return out[order].reset_index(drop=True)


def read_csv_text(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """Read a CSV file as text cells (no type guessing); unreadable/malformed → InputError."""
    path = Path(path)
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "nothing"
        raise InputError(f"{what} {path}: found {kind}, expected a CSV file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {path}: the file is empty, expected a CSV header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} {path}: malformed CSV ({first})") from None


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a results CSV; returns the rows in COLUMNS order with schema dtypes.

    Raises InputError when the file is missing, not a CSV, from another schema (names the
    missing and unexpected columns and the file), or holds a malformed cell.
    """
    return validate_table(read_csv_text(path, "results CSV"), where=f"results CSV {path}")


def has_row(path: str | os.PathLike, run_id: str) -> bool:
    """True when the results CSV at `path` exists and holds a row with this `run_id`."""
    if not Path(path).exists():
        return False
    return bool((read_results(path)["run_id"] == run_id).any())


def _torch_version() -> str | None:
    """Installed torch version without importing torch."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def complete_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with unknown keys rejected and run_id / versions / created_at filled in when absent."""
    unknown = [k for k in row if k not in SCHEMA and k not in OPTIONAL_SCHEMA]
    if unknown:
        raise InputError(f"results row: unknown columns {', '.join(map(str, unknown))}; "
                         f"expected names from evalkit.results.COLUMNS")
    full = {k: (None if _is_missing(v) else v) for k, v in row.items()}
    if full.get("run_id") is None:
        full["run_id"] = make_run_id(full)
    full.setdefault("evalkit_version", __version__)
    if full.get("schema_version") is None:
        full["schema_version"] = SCHEMA_VERSION
    if full.get("evalkit_version") is None:
        full["evalkit_version"] = __version__
    if full.get("torch_version") is None:
        full["torch_version"] = _torch_version()
    if full.get("created_at") is None:
        full["created_at"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return full


def umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Seconds a writer waits for the results-CSV lock before giving up (writers hold it for one
#: read + write of the CSV, milliseconds; a longer wait means a stuck or stopped holder).
LOCK_TIMEOUT_S = 300.0


def results_lock(path: str | os.PathLike) -> FileLock:
    """The exclusive lock every writer of the results CSV at `path` holds: the file ``<path>.lock``."""
    return FileLock(sidecar(path), timeout=LOCK_TIMEOUT_S, what=f"results CSV {path}")


def _remove_dead_temporaries(path: Path) -> None:
    """Delete temporary tables of writers killed mid-write (only a lock holder writes them)."""
    prefix = f".{path.name}."
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            if p.name.startswith(prefix) and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)


def write_results(path: str | os.PathLike, df: pd.DataFrame, *, lock: bool = True) -> None:
    """Validate `df` and write it to `path` atomically (temporary file, fsync, rename), holding its lock.

    ``lock=False`` only for a file no other process can see (a private staging folder).
    """
    table = validate_table(df, where=f"results for {path}")
    with results_lock(path) if lock else contextlib.nullcontext() as held:
        if held is not None and held.held:
            _remove_dead_temporaries(Path(path))
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
            # The temporary file is private (mkstemp); give the table the usual file permissions.
            os.chmod(tmp, 0o666 & ~umask())


def append_row(path: str | os.PathLike, row: Mapping[str, Any], replace: bool = False, *,
               exist_ok: bool = False) -> str:
    """Append one results row to the CSV at `path` (created when absent); returns its run_id.

    `row` maps column names of COLUMNS (or OPTIONAL_SCHEMA) to values; absent columns stay
    empty; `run_id`, `evalkit_version`, `torch_version` and `created_at` are filled in when
    absent. The file is rewritten atomically, so a crash or kill leaves either the old or the
    new file, never a partial one. A row whose run_id is already present raises InputError
    unless `replace=True` (then the old row is dropped and the new one appended) or
    `exist_ok=True` (then the row already there is kept: another job with the same settings wrote
    it first). Safe with concurrent writers: the file is re-read, checked and replaced under `results_lock`.
    """
    full = complete_row(row)
    new = validate_table(pd.DataFrame([{**{c: None for c in COLUMNS}, **full}]), where=f"new row for {path}")
    with results_lock(path):
        if Path(path).exists():
            table = read_results(path)
            present = table["run_id"] == full["run_id"]
            if present.any():
                if exist_ok and not replace:
                    return str(full["run_id"])
                if not replace:
                    raise InputError(f"results CSV {path}: run_id {full['run_id']} is already present; "
                                     f"skip it (has_row) or pass replace=True")
                table = table[~present]
            # Keep optional columns present in either table; empty-frame concat would drop dtypes.
            table = pd.concat([table, new], ignore_index=True) if len(table) else new
        else:
            table = new
        write_results(path, table)  # re-enters the lock this thread holds
    return str(full["run_id"])
