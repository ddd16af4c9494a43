"""Resumable guidance-scale (× respacing) sweeps: sample → score → one results row per setting.

The paper's guidance ablation (openai/guided-diffusion 22e0df8183507e13a7813f8d38d51b072ca1e67c:
``scripts/classifier_sample.py`` run once per ``--classifier_scale``, then
``evaluations/evaluator.py`` once per npz, numbers read off the logs) becomes one command here:

* Every setting samples into its own subdirectory of the sweep folder (``scale-2/``, or
  ``scale-2_steps-ddim25/`` when ``respacings`` are swept too) through `evalkit.generate`, so a
  killed sweep resumes a half-finished setting from its shards.
* Every setting is scored with `evalkit.evaluate` against one reference opened once for the whole
  sweep (its reader and content hash stay in memory); its features are extracted by the first
  setting and read back from the feature cache by the others.
* Every finished setting appends one row to the results CSV (`evalkit.results`, atomic), keyed by a
  run_id computed from the settings before any sampling, so rows already present are skipped
  without sampling or scoring anything. Each setting folder also gets a ``metrics.json``.

Decisions:

* ``guidance_scale`` 0 is the model alone (the paper's "no guidance" rows): the classifier is not
  loaded and the row's ``classifier``/``classifier_sha256`` cells are empty (the schema's "empty when
  unguided"), so the row equals an unguided `evalkit sample-and-score` row of the same model. For a
  class-conditional model the images equal guidance at scale 0 (an exact no-op); an unconditional
  model then draws no labels, so its noise differs from the guided settings' (label drawn first).
* A respacing ``ddimN`` samples with DDIM (with the base ``eta``); other respacings keep the base
  sampler (ancestral unless ``--use-ddim``), with ``eta`` 0 for ancestral sampling.
* ``wall_clock_s`` is the time the process that finished the row spent sampling (only the part it
  sampled, when it resumed) and scoring it.
* Settings that change the images but have no column of their own (``--classes``,
  ``--no-clip-denoised``, an upsampler) are written into ``model_flags`` so that they change the
  run_id. fp16 is not (it is in each setting's ``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from tqdm import tqdm

from evalkit import runstore
from evalkit.atomic import atomic_write_text
from evalkit.context import Context
from evalkit.errors import ConfigError, EvalkitError, InputError, RunDirectoryError
from evalkit.evaluate import build_extractor, evaluate
from evalkit.generate import SamplingConfig, run_sampling
from evalkit.metrics import METRIC_KEYS
from evalkit.options import ScoreOptions
from evalkit.presets import get_preset
from evalkit.refbatches import resolve_batch
from evalkit.results import append_row, make_run_id, read_results
from evalkit.runtime import barrier, init_distributed, is_main, rank, resolve_device, world_size
from evalkit.store import open_batch

METRICS_JSON = "metrics.json"  # per-setting record: row, metrics, provenance, sampling config

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Parsing the lists

def parse_scales(text: str | Sequence[float], option: str = "--scales") -> tuple[float, ...]:
    """``"0,0.5,1,2"`` → (0.0, 0.5, 1.0, 2.0). Each scale is a finite number >= 0, listed once.

    Raises ConfigError naming `option` for an empty list, an empty item (``"1,,2"``), a word,
    a negative / non-finite value or a duplicate. A sequence of numbers is checked the same way.
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if not items or (isinstance(text, str) and not text.strip()):
        raise ConfigError(f"{option} is empty; expected comma-separated guidance scales such as 0,1,2,4")
    scales: list[float] = []
    for i, item in enumerate(items, 1):
        if isinstance(item, str) and item == "":
            raise ConfigError(f"{option} {text!r}: item {i} is empty; expected numbers separated by single commas")
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"{option} {text!r}: item {i} is {item!r}, expected a number >= 0") from None
        if isinstance(item, bool) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{option} {text!r}: item {i} is {item!r}, expected a finite number >= 0 "
                              f"(0 = unguided)")
        if value in scales:
            raise ConfigError(f"{option} {text!r}: scale {item} is listed twice; list each scale once")
        scales.append(value)
    return tuple(scales)


def parse_respacings(text: str | Sequence[str] | None, option: str = "--respacings") -> tuple[str, ...]:
    """``"250,100,ddim25"`` → ("250", "100", "ddim25"); None → () (the base respacing only).

    Items are step counts ``N`` or ``ddimN`` (a section list such as ``10,20,30`` cannot be an
    item, since commas separate items; pass it as the base ``--timestep-respacing``). Raises
    ConfigError for an empty list or item, another form, or a duplicate.
    """
    if text is None:
        return ()
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    if not items or (isinstance(text, str) and not text.strip()):
        raise ConfigError(f"{option} is empty; expected comma-separated respacings such as 250,100,ddim25")
    out: list[str] = []
    for i, item in enumerate(items, 1):
        count = item[4:] if item.startswith("ddim") else item
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{option} {text!r}: item {i} is {item!r}, expected a step count N or ddimN "
                              f"(e.g. 250 or ddim25)")
        if item in out:
            raise ConfigError(f"{option} {text!r}: {item} is listed twice; list each respacing once")
        out.append(item)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Settings

def _diffusion_steps(config: SamplingConfig) -> int:
    """T of the model (``diffusion_steps``; 1000 unless its flags say otherwise)."""
    net = dict(get_preset(config.model.preset).flags) if config.model.preset else (config.model.resolved_flags or {})
    return int(net.get("diffusion_steps", 1000))


def setting_config(base: SamplingConfig, guidance_scale: float, respacing: str | None = None) -> SamplingConfig:
    """`base` at one guidance scale (and respacing); scale 0 drops the classifier (see module doc).

    Raises ConfigError for a negative / non-finite scale, a non-zero scale without a classifier
    in `base`, or a respacing that the model's T steps cannot produce.
    """
    from evalkit.diffusion import space_timesteps

    scale = float(guidance_scale)
    if not math.isfinite(scale) or scale < 0:
        raise ConfigError(f"guidance scale {guidance_scale!r}: expected a finite number >= 0")
    changes: dict[str, Any] = {}
    if respacing is not None:
        try:
            space_timesteps(_diffusion_steps(base), respacing)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"--respacings {respacing!r}: {exc}") from exc
        sampler = "ddim" if respacing.startswith("ddim") else base.sampler
        changes.update(timestep_respacing=respacing, sampler=sampler, eta=base.eta if sampler == "ddim" else 0.0)
    if scale == 0:
        changes.update(classifier=None, classifier_scale=None, classifier_use_fp16=None)
    elif base.classifier is None:
        raise ConfigError(f"guidance scale {scale:g} needs a classifier (--classifier PATH); without one only "
                          f"scale 0 (unguided) can be sampled")
    else:
        changes.update(classifier_scale=scale)
    return dataclasses.replace(base, **changes)


def format_scale(scale: float) -> str:
    """Shortest exact text of a scale for folder names: 2.0 → "2", 0.5 → "0.5"."""
    text = repr(float(scale))
    return text[:-2] if text.endswith(".0") else text


def setting_dirname(scale: float, respacing: str | None = None) -> str:
    """``scale-2`` or, when respacings are swept, ``scale-2_steps-ddim25``."""
    name = f"scale-{format_scale(scale)}"
    return name if respacing is None else f"{name}_steps-{respacing}"


def _extra_settings(config: SamplingConfig) -> list[str]:
    """Image-changing settings without a results column of their own, as flag-like text."""
    extra = []
    if config.classes is not None:
        extra.append("--classes " + ",".join(map(str, config.classes)))
    if not config.clip_denoised:
        extra.append("--no-clip-denoised")
    ups = config.upsampler
    if ups is not None:
        flags = " ".join((ups.model.flags or "").split())
        what = f"--upsampler {ups.model.preset}" if ups.model.preset else f'--upsampler-flags "{flags}"'
        extra.append(f"{what} --upsampler-sha256 {ups.model.checkpoint_sha256} "
                     f"--upsampler-respacing {ups.timestep_respacing or _diffusion_steps(config)} "
                     f"--upsampler-seed {ups.seed}")
    return extra


def settings_row(config: SamplingConfig, *, reference: str, reference_sha256: str, features: str,
                 label: str | None = None) -> dict[str, Any]:
    """The identity and description cells of a results row for `config` (no metrics), with run_id.

    ``guidance_scale`` is the classifier scale (0 without a classifier); ``steps`` the respacing
    (``str(T)`` when it is empty, i.e. every step); ``eta`` only for DDIM; ``image_size`` that of
    the evaluated images (the upsampler's for a cascade).
    """
    model, clf = config.model, config.classifier
    flags = " ".join((model.flags or "").split())
    model_flags = " ".join([flags] + _extra_settings(config)).strip()
    image_size = config.upsampler.model.image_size if config.upsampler else model.image_size
    row = {
        "label": label or model.preset or Path(model.checkpoint).stem,
        "preset": model.preset,
        "model_flags": model_flags or None,
        "checkpoint_sha256": model.checkpoint_sha256,
        "classifier": (clf.preset or " ".join((clf.flags or "").split())) if clf else None,
        "classifier_sha256": clf.checkpoint_sha256 if clf else None,
        "guidance_scale": float(config.classifier_scale) if clf and config.classifier_scale else 0.0,
        "sampler": config.sampler,
        "steps": config.timestep_respacing or str(_diffusion_steps(config)),
        "eta": float(config.eta) if config.sampler == "ddim" else None,
        "num_samples": int(config.num_samples),
        "seed": int(config.seed),
        "image_size": int(image_size),
        "reference": str(reference),
        "reference_sha256": reference_sha256,
        "features": features,
    }
    row["run_id"] = make_run_id(row)
    return row


def unguided_if_zero(config: SamplingConfig) -> SamplingConfig:
    """A classifier at scale 0 guides nothing: drop it (as the sweep does for scale 0)."""
    if config.classifier is not None and not config.classifier_scale:
        return setting_config(config, 0.0)
    return config


# ---------------------------------------------------------------------------------------------
# Distributed helpers (no-ops in one process)

def _broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _on_rank0(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 and give every rank its result; an EvalkitError is raised on every rank."""
    value, error = None, None
    if is_main():
        try:
            value = fn()
        except EvalkitError as exc:
            error = exc
    value, error = _broadcast((value, error))
    if error is not None:
        raise error
    return value


# ---------------------------------------------------------------------------------------------
# Reference, CSV, output folder

class Reference:
    """A reference batch opened once: its name as given, open reader, and content sha256.

    Passed to `evaluate` as the open reader, so the file is opened and hashed once per process.
    """

    def __init__(self, ref: str | os.PathLike):
        self.name = str(ref)
        self.path = resolve_batch(ref)
        self.reader = open_batch(self.path)
        self.sha256: str | None = None

    def content_hash(self) -> str:
        if self.sha256 is None:
            self.sha256 = self.reader.content_hash()
        return self.sha256

    def close(self) -> None:
        self.reader.close()


def done_run_ids(csv: str | os.PathLike | None) -> set[str]:
    """run_ids already in the results CSV (empty when it does not exist); another schema → InputError."""
    if csv is None:
        return set()
    path = Path(csv)
    if path.is_dir():
        raise InputError(f"--csv {path}: is a directory, expected a results CSV file (created when absent)")
    if not path.exists():
        return set()
    return set(read_results(path)["run_id"].dropna().astype(str))


def check_out_dir(out_dir: str | os.PathLike, option: str = "--out") -> Path:
    """`out_dir` must be a folder or not exist yet (it is created when the first setting starts)."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{option} {path}: is a file, expected a directory for the sweep's sample stores")
    return path


def _check_store(config: SamplingConfig, run_dir: Path, device: torch.device) -> None:
    """Refuse a setting folder that holds another run before anything of the sweep is written."""
    base_dir = run_dir / "base" if config.upsampler else run_dir
    runstore.check_run_dir(base_dir, "sample", config.for_device(device).base_settings())


# ---------------------------------------------------------------------------------------------
# One setting

@dataclass
class SettingResult:
    """One scored setting: its results row, the evaluate() dict, and whether it ran now."""

    row: dict[str, Any]
    metrics: dict[str, Any] | None
    skipped: bool
    run_dir: Path


def _relative(path: Path, start: Path) -> str:
    """`path` relative to `start` when possible (results CSVs name stores relative to themselves)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def score_setting(config: SamplingConfig, run_dir: str | os.PathLike, reference: Reference, extractor,
                  device: torch.device, row: dict[str, Any], *, csv: str | os.PathLike | None = None,
                  json_out: str | os.PathLike | None = None, batch_size: int = 16,
                  feature_batch_size: int = 64, progress: bool = True, keep_shards: bool = False,
                  exact_fid: bool = False) -> SettingResult | None:
    """Sample `config` into `run_dir` (resuming), score it against `reference`, record the row.

    `row` is `settings_row(config, ...)`. Writes ``json_out`` (default ``run_dir/metrics.json``:
    row, evaluate() dict with provenance, sampling config) and appends the completed row (metrics,
    ``wall_clock_s``, ``samples_path`` relative to the CSV) to `csv` when given. Rank 0 writes and
    gets the SettingResult; other ranks get None.
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    run = run_sampling(config, run_dir, device, batch_size=batch_size, progress=progress, keep_shards=keep_shards)
    metrics = evaluate(run.npz_path, reference.reader, extractor,
                       ScoreOptions(feature_batch_size, progress=progress, exact_fid=exact_fid),
                       Context(device=device, rank=rank(), world_size=world_size()))
    seconds = time.perf_counter() - start
    if not is_main():
        barrier()
        return None
    full = {**row, **{key: metrics[key] for key in METRIC_KEYS}, "wall_clock_s": round(seconds, 3)}
    if csv is not None:
        full["samples_path"] = _relative(run.npz_path, Path(csv).resolve().parent)
    record = {"row": full, "metrics": metrics, "sampling": {
        "npz": str(run.npz_path), "generated_now": run.generated, "seconds": round(run.seconds, 3),
        "config": config.for_device(device).to_dict()}}
    atomic_write_text(json_out or run_dir / METRICS_JSON, json.dumps(record, indent=1, default=str) + "\n")
    if csv is not None:
        append_row(csv, full)
    barrier()
    return SettingResult(row=full, metrics=metrics, skipped=False, run_dir=run_dir)


def _rows_and_done(configs: Sequence[SamplingConfig], reference: "Reference", csv, extractor, device,
                   label: str | None):
    """(extractor, the CSV row of each config, run_ids already in `csv`). Rank 0 hashes the reference
    and reads the CSV; every rank gets the same run_ids."""
    if extractor is None or isinstance(extractor, str):
        extractor = build_extractor(extractor, device)
    features = getattr(extractor, "name", None) or extractor.identity().get("name")
    ref_sha, done = _on_rank0(lambda: (reference.content_hash(), done_run_ids(csv)))
    rows = [settings_row(cfg, reference=reference.name, reference_sha256=ref_sha, features=features, label=label)
            for cfg in configs]
    return extractor, rows, done


def sample_and_score(config: SamplingConfig, out_dir: str | os.PathLike, ref: str | os.PathLike, extractor=None,
                     device: str | torch.device | None = None, *, csv: str | os.PathLike | None = None,
                     json_out: str | os.PathLike | None = None, label: str | None = None, batch_size: int = 16,
                     feature_batch_size: int = 64, progress: bool = True, keep_shards: bool = False,
                     exact_fid: bool = False) -> SettingResult | None:
    """`evalkit sample-and-score`: sample `config` into `out_dir` (resumable), score it against `ref`,
    write the metrics JSON (`json_out`, default ``out_dir/metrics.json``) and append one row to `csv`.

    A classifier at scale 0 is dropped (module doc). When `csv` already holds the row's run_id,
    nothing is sampled or scored and the result has ``skipped=True`` (its row is the CSV's).
    Returns the SettingResult on rank 0, None on other ranks. Bad input raises before writing.
    """
    device = resolve_device(device)
    config = unguided_if_zero(config)
    out = check_out_dir(out_dir)
    init_distributed(device)
    reference = Reference(ref)
    try:
        extractor, (row,), done = _rows_and_done([config], reference, csv, extractor, device, label)
        if row["run_id"] in done:
            if not is_main():
                return None
            table = read_results(csv)
            found = table[table["run_id"] == row["run_id"]].iloc[0].to_dict()
            return SettingResult(row=found, metrics=None, skipped=True, run_dir=out)
        return score_setting(config, out, reference, extractor, device, row, csv=csv, json_out=json_out,
                             batch_size=batch_size, feature_batch_size=feature_batch_size, progress=progress,
                             keep_shards=keep_shards, exact_fid=exact_fid)
    finally:
        reference.close()


# ---------------------------------------------------------------------------------------------
# The sweep

def _default_log(message: str) -> None:
    if is_main():
        tqdm.write(message, file=sys.stderr)


def plan_sweep(base_config: SamplingConfig, scales: Sequence[float] | str,
               respacings: Sequence[str] | str | None = None) -> list[tuple[str, SamplingConfig]]:
    """(folder name, config) of every setting, respacings outer, scales inner (validated)."""
    scales = parse_scales(scales)
    respacings = parse_respacings(respacings)
    plan = []
    for respacing in respacings or (None,):
        for scale in scales:
            plan.append((setting_dirname(scale, respacing), setting_config(base_config, scale, respacing)))
    return plan


def run_sweep(base_config: SamplingConfig, scales: Sequence[float] | str, respacings: Sequence[str] | str | None,
              ref: str | os.PathLike, out_dir: str | os.PathLike, csv: str | os.PathLike, extractor=None,
              device: str | torch.device | None = None, *, label: str | None = None, batch_size: int = 16,
              feature_batch_size: int = 64, progress: bool = True, keep_shards: bool = False,
              exact_fid: bool = False, log: Log | None = None) -> pd.DataFrame:
    """Sample and score `base_config` at every guidance scale (× respacing); one CSV row per setting.

    scales: guidance scales >= 0 (list or ``"0,1,2"``; 0 = unguided, see module doc); respacings:
    ``("250", "ddim25")`` / ``"250,ddim25"`` or None for the base respacing. Settings sample into
    ``out_dir/scale-<s>[_steps-<r>]/``; rows already in `csv` (by run_id) are skipped without
    sampling; a half-finished setting resumes from its shards. `extractor`: object, registered
    name or None (Inception). Works under torchrun (rank 0 writes the CSV).

    Returns the rows of this sweep (results schema, in setting order) on every rank. Raises
    ConfigError / InputError / RunDirectoryError before anything is written for bad scales or
    respacings, a non-zero scale without a classifier, a CSV of another schema, an `out_dir`
    that is a file or a setting folder holding another run.
    """
    log = log or _default_log
    device = resolve_device(device)
    plan = plan_sweep(base_config, scales, respacings)
    out = check_out_dir(out_dir)
    init_distributed(device)
    reference = Reference(ref)
    try:
        extractor, rows, done = _rows_and_done([cfg for _, cfg in plan], reference, csv, extractor, device, label)
        todo = [i for i, row in enumerate(rows) if row["run_id"] not in done]
        _on_rank0(lambda: [_check_store(plan[i][1], out / plan[i][0], device) for i in todo])
        if len(todo) < len(plan):
            log(f"sweep: {len(plan) - len(todo)} of {len(plan)} settings already in {csv}; skipping them")
        for k, i in enumerate(todo, 1):
            name, cfg = plan[i]
            log(f"sweep [{k}/{len(todo)}] {name}: guidance_scale {rows[i]['guidance_scale']:g}, "
                f"{cfg.sampler} {rows[i]['steps']} steps, {cfg.num_samples} samples")
            result = score_setting(cfg, out / name, reference, extractor, device, rows[i], csv=csv,
                                   batch_size=batch_size, feature_batch_size=feature_batch_size, progress=progress,
                                   keep_shards=keep_shards, exact_fid=exact_fid)
            if result is not None:
                full = result.row
                log(f"sweep [{k}/{len(todo)}] {name}: " + ", ".join(f"{key} {full[key]:.4g}" for key in METRIC_KEYS)
                    + f" ({full['wall_clock_s']:.1f} s)")
    finally:
        reference.close()
    barrier()
    table = read_results(csv)
    ids = [row["run_id"] for row in rows]
    table = table[table["run_id"].isin(ids)]
    order = {rid: j for j, rid in enumerate(ids)}
    return table.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)
