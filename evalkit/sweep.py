"""Resumable guidance-scale (× respacing) and truncation sweeps: sample → score → one results row per setting.

The paper's guidance ablation (``scripts/classifier_sample.py`` run once per ``--classifier_scale``,
then ``evaluations/evaluator.py`` once per npz, at `evalkit.REFERENCE_COMMIT`) becomes one command:

* Every setting samples into its own subdirectory of the sweep folder (``scale-2/``, or
  ``scale-2_steps-ddim25/`` when respacings are swept too) through `evalkit.sampling`, so a
  killed sweep resumes a half-finished setting from its shards.
* Every setting is scored with `evalkit.evaluate` against one reference opened once for the whole
  sweep; its features are extracted by the first setting and read back from the feature cache.
* A BigGAN-deep generator (`evalkit.sampling.biggan`) sweeps its truncation instead: one setting
  per truncation in ``truncation-0.5/`` folders, rows with ``family`` "biggan-deep", ``truncation``
  set and the guidance columns (classifier, guidance_scale, sampler, steps, eta) empty.
* Every finished setting appends one row to the results CSV (`evalkit.results`, atomic), keyed by a
  run_id computed from the settings before any sampling, so rows already present are skipped
  without sampling or scoring anything. Each setting folder also gets a ``metrics.json``.

Decisions:

* ``guidance_scale`` 0 is the model alone: the classifier is not loaded and the row's
  ``classifier``/``classifier_sha256`` cells are empty, so the row equals an unguided
  `evalkit sample-and-score` row of the same model. For a class-conditional model the images equal
  guidance at scale 0 (an exact no-op); an unconditional model then draws no labels, so its noise
  differs from the guided settings' (label drawn first).
* A respacing ``ddimN`` samples with DDIM (with the base ``eta``); other respacings keep the base
  sampler (ancestral unless ``--use-ddim``), with ``eta`` 0 for ancestral sampling.
* ``--seeds 0,1,2`` samples every setting once per seed, into ``seed-<s>/<setting folder>/``; the
  rows differ only by ``seed`` (part of the run_id), and `evalkit report` aggregates them into
  mean ± std. An upsampler keeps its seed's offset from the base seed.
* The metrics beyond the five (``--metrics``, ``--bootstrap``) fill their columns; they are not part
  of the run_id, so a rerun with other metric options skips rows already present.
* ``wall_clock_s`` is the time the process that finished the row spent sampling (only the part it
  sampled, when it resumed) and scoring it.
* fp16 is not part of the row (it is in each setting's ``metrics.json``).
"""

from __future__ import annotations

import contextlib
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
from tqdm import tqdm

from evalkit.atomic import atomic_write_text
from evalkit.context import Context
from evalkit.diffusion import space_timesteps
from evalkit.errors import ConfigError, InputError, RunDirectoryError
from evalkit.evaluate import build_extractor, check_metric_settings, evaluate
from evalkit.metrics import METRIC_KEYS
from evalkit.options import RunOptions, ScoreOptions
from evalkit.refbatches import resolve_batch
from evalkit.results import append_row, format_scale, make_run_id, metric_cells, read_results
from evalkit.sampling.adm import FAMILY
from evalkit.sampling.biggan import BigGANRequest
from evalkit.sampling.request import SampleRequest
from evalkit.sampling.run import Request, check_store, run_sampling
from evalkit.store import open_batch

METRICS_JSON = "metrics.json"  # per-setting record: row, metrics, provenance, sampling request

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Parsing the lists

def _list_items(text: str | Sequence[Any], option: str, example: str, kind: str = "numbers") -> list[tuple[int, Any]]:
    """(1-based position, item) of a comma-separated list (or a sequence), refusing an empty list or item."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if not items or (isinstance(text, str) and not text.strip()):
        raise ConfigError(f"{option} is empty; expected comma-separated {example}")
    for i, item in enumerate(items, 1):
        if isinstance(item, str) and item == "":
            raise ConfigError(f"{option} {text!r}: item {i} is empty; expected {kind} separated by single commas")
    return list(enumerate(items, 1))


def _parse_floats(text: str | Sequence[float], option: str, *, example: str, noun: str, valid: Callable[[float], bool],
                  number: str, expected: str) -> tuple[float, ...]:
    """Distinct finite floats of a list, each passing `valid`; ConfigError names `option` and the item."""
    out: list[float] = []
    for i, item in _list_items(text, option, example):
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"{option} {text!r}: item {i} is {item!r}, expected a number {number}") from None
        if isinstance(item, bool) or not math.isfinite(value) or not valid(value):
            raise ConfigError(f"{option} {text!r}: item {i} is {item!r}, expected {expected}")
        if value in out:
            raise ConfigError(f"{option} {text!r}: {noun} {item} is listed twice; list each {noun} once")
        out.append(value)
    return tuple(out)


def parse_scales(text: str | Sequence[float], option: str = "--scales") -> tuple[float, ...]:
    """``"0,0.5,1,2"`` → (0.0, 0.5, 1.0, 2.0). Each scale is a finite number >= 0, listed once.

    Raises ConfigError naming `option` for an empty list, an empty item (``"1,,2"``), a word,
    a negative / non-finite value or a duplicate. A sequence of numbers is checked the same way.
    """
    return _parse_floats(text, option, example="guidance scales such as 0,1,2,4", noun="scale",
                         valid=lambda v: v >= 0, number=">= 0", expected="a finite number >= 0 (0 = unguided)")


def parse_truncations(text: str | Sequence[float], option: str = "--truncations") -> tuple[float, ...]:
    """``"0.1,0.5,1"`` → (0.1, 0.5, 1.0). Each truncation is a number in (0, 1], listed once.

    Raises ConfigError naming `option` for an empty list, an empty item (``"0.1,,0.2"``), a word,
    a value outside (0, 1] or a duplicate. A sequence of numbers is checked the same way.
    """
    return _parse_floats(text, option, example="truncations in (0, 1] such as 0.1,0.5,1", noun="truncation",
                         valid=lambda v: 0 < v <= 1, number="in (0, 1]",
                         expected="a truncation in (0, 1] (1 = the untruncated prior)")


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


def parse_seeds(text: str | Sequence[int] | None, option: str = "--seeds") -> tuple[int, ...]:
    """``"0,1,2"`` → (0, 1, 2); None → (). Each seed is a whole number >= 0, listed once.

    Raises ConfigError naming `option` for an empty list or item, a non-integer or negative value, or a
    seed listed twice (two rows with the same settings would be one row).
    """
    if text is None:
        return ()
    seeds: list[int] = []
    for i, item in _list_items(text, option, "sampling seeds such as 0,1,2", kind="whole numbers"):
        try:
            value = int(item)
        except (TypeError, ValueError):
            value = None
        if value is None or isinstance(item, bool) or value < 0 or (not isinstance(item, str) and value != item):
            raise ConfigError(f"{option} {text!r}: item {i} is {item!r}, expected a whole number >= 0")
        if value in seeds:
            raise ConfigError(f"{option} {text!r}: seed {value} is listed twice; list each seed once")
        seeds.append(value)
    return tuple(seeds)


# ---------------------------------------------------------------------------------------------
# Settings

def setting_request(base: SampleRequest, guidance_scale: float, respacing: str | None = None) -> SampleRequest:
    """`base` at one guidance scale (and respacing); scale 0 drops the classifier (see module doc).

    Raises ConfigError for a negative / non-finite scale, a non-zero scale without a classifier
    in `base`, or a respacing that the model's T steps cannot produce.
    """
    scale = float(guidance_scale)
    if not math.isfinite(scale) or scale < 0:
        raise ConfigError(f"guidance scale {guidance_scale!r}: expected a finite number >= 0")
    changes: dict[str, Any] = {}
    if respacing is not None:
        try:
            space_timesteps(base.model.diffusion_steps, respacing)
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


def with_seed(request: Request, seed: int) -> Request:
    """`request` sampled from seed `seed`; an upsampler keeps its seed's offset from the base seed
    (by default +1, so its noise stays independent of the base stage's)."""
    seed = int(seed)
    ups = request.upsampler
    if ups is None:  # also a GAN request, which has no cascade stage
        return dataclasses.replace(request, seed=seed)
    ups = dataclasses.replace(ups, seed=seed + (ups.seed - request.seed))
    return dataclasses.replace(request, seed=seed, upsampler=ups)


def seed_dirname(seed: int) -> str:
    """``seed-3``: the folder of one sampling seed in a seed sweep (settings folders inside)."""
    return f"seed-{int(seed)}"


def setting_dirname(scale: float, respacing: str | None = None) -> str:
    """``scale-2`` or, when respacings are swept, ``scale-2_steps-ddim25``."""
    name = f"scale-{format_scale(scale)}"
    return name if respacing is None else f"{name}_steps-{respacing}"


def truncation_dirname(truncation: float) -> str:
    """``truncation-0.5`` (``truncation-1`` for 1.0), the folder of one truncation of a GAN sweep."""
    return f"truncation-{format_scale(truncation)}"


def settings_row(request: Request, *, reference: str, reference_sha256: str, features: str,
                 label: str | None = None, features_sha256: str | None = None) -> dict[str, Any]:
    """The identity and description cells of a results row for `request` (no metrics), with run_id.

    A `BigGANRequest` gets `biggan_row`. ``guidance_scale`` is the classifier scale (0 without a classifier); ``steps`` the respacing
    (``str(T)`` when it is empty, i.e. every step); ``eta`` only for DDIM; ``image_size`` that of
    the evaluated images (the upsampler's for a cascade); ``classes``, ``clip_denoised`` (0 when
    off) and the ``upsampler*`` cells only when they differ from the default.
    """
    if isinstance(request, BigGANRequest):
        return biggan_row(request, reference=reference, reference_sha256=reference_sha256, features=features,
                          label=label, features_sha256=features_sha256)
    model, clf, ups = request.model, request.classifier, request.upsampler
    row = {
        "label": label or model.preset or Path(model.checkpoint).stem,
        "family": FAMILY,
        "preset": model.preset,
        "model_flags": " ".join((model.flags or "").split()) or None,
        "checkpoint_sha256": model.checkpoint_sha256,
        "classifier": clf.label_text() if clf else None,
        "classifier_sha256": clf.checkpoint_sha256 if clf else None,
        "guidance_scale": float(request.classifier_scale) if clf and request.classifier_scale else 0.0,
        "sampler": request.sampler,
        "steps": request.steps,
        "eta": float(request.eta) if request.sampler == "ddim" else None,
        "classes": ",".join(map(str, request.classes)) if request.classes is not None else None,
        "clip_denoised": None if request.clip_denoised else 0,
        # The upsampler's respacing as version 1 wrote it (the base model's T when empty).
        "upsampler": ups.model.label_text() if ups else None,
        "upsampler_sha256": ups.model.checkpoint_sha256 if ups else None,
        "upsampler_steps": (ups.timestep_respacing or str(model.diffusion_steps)) if ups else None,
        "upsampler_seed": ups.seed if ups else None,
        "num_samples": int(request.num_samples),
        "seed": int(request.seed),
        "image_size": int(ups.model.image_size if ups else model.image_size),
        "reference": str(reference),
        "reference_sha256": reference_sha256,
        "features": features,
        "features_sha256": features_sha256,
    }
    row["run_id"] = make_run_id(row)
    return row


def biggan_row(request: BigGANRequest, *, reference: str, reference_sha256: str, features: str,
               label: str | None = None, features_sha256: str | None = None) -> dict[str, Any]:
    """The results-row cells of a BigGAN-deep setting, with run_id: ``family`` "biggan-deep",
    ``truncation``, the preset and the weights' sha256; every guidance and sampler cell empty."""
    model = request.model
    row = {
        "label": label or model.label_text(),
        "family": request.family,
        "preset": model.preset,
        "checkpoint_sha256": model.checkpoint_sha256,
        "truncation": float(request.truncation),
        "classes": ",".join(map(str, request.classes)) if request.classes is not None else None,
        "num_samples": int(request.num_samples),
        "seed": int(request.seed),
        "image_size": int(model.image_size),
        "reference": str(reference),
        "reference_sha256": reference_sha256,
        "features": features,
        "features_sha256": features_sha256,
    }
    row["run_id"] = make_run_id(row)
    return row


def unguided_if_zero(request: Request) -> Request:
    """A classifier at scale 0 guides nothing: drop it (as the sweep does for scale 0)."""
    if isinstance(request, SampleRequest) and request.classifier is not None and not request.classifier_scale:
        return setting_request(request, 0.0)
    return request


@dataclass(frozen=True)
class SweepPlan:
    """A base request and the settings to sample it at (validated): guidance scales (× respacings)
    for a diffusion `SampleRequest`, truncations for a `BigGANRequest`; optionally × sampling seeds."""

    base: Request
    scales: tuple[float, ...] = ()
    respacings: tuple[str, ...] = ()
    truncations: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()

    @classmethod
    def of(cls, base: Request, scales: Sequence[float] | str | None = None,
           respacings: Sequence[str] | str | None = None,
           truncations: Sequence[float] | str | None = None,
           seeds: Sequence[int] | str | None = None) -> "SweepPlan":
        """Parse and check the lists against the kind of `base`: a GAN takes truncations only
        (default: its own truncation), a diffusion model scales (× respacings) only; either may
        add seeds. ConfigError names the option that does not apply."""
        seed_list = parse_seeds(seeds)
        if isinstance(base, BigGANRequest):
            for given, option in ((scales, "--scales"), (respacings, "--respacings")):
                if given is not None:
                    raise ConfigError(f"{option} applies to diffusion models; {base.model.label_text()} is a "
                                      f"BigGAN-deep generator: sweep its truncation with --truncations")
            lst = parse_truncations(truncations) if truncations is not None else (base.truncation,)
            plan = cls(base, truncations=lst, seeds=seed_list)
        else:
            if truncations is not None:
                raise ConfigError(f"--truncations applies to GAN presets (BigGAN-deep); "
                                  f"{base.model.label_text()} is a diffusion model: sweep --scales instead")
            if scales is None:
                raise ConfigError("--scales is required for a diffusion model (comma-separated guidance scales "
                                  "such as 0,1,2,4)")
            plan = cls(base, parse_scales(scales), parse_respacings(respacings), seeds=seed_list)
        plan.settings()  # every setting must be valid before anything runs
        return plan

    def settings(self) -> list[tuple[str, Request]]:
        """(folder name, request) of every setting: respacings outer, scales inner; or truncations.
        With seeds, every setting once per seed (seeds outermost) in ``seed-<s>/<setting folder>``."""
        if isinstance(self.base, BigGANRequest):
            settings = [(truncation_dirname(t), self.base.with_truncation(t)) for t in self.truncations]
        else:
            settings = [(setting_dirname(scale, respacing), setting_request(self.base, scale, respacing))
                        for respacing in self.respacings or (None,) for scale in self.scales]
        if not self.seeds:
            return settings
        return [(f"{seed_dirname(seed)}/{name}", with_seed(request, seed)) for seed in self.seeds
                for name, request in settings]


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


def check_sweep_dir(out_dir: str | os.PathLike, option: str = "--out") -> Path:
    """`out_dir` must be a folder or not exist yet (it is created when the first setting starts)."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{option} {path}: is a file, expected a directory for the sweep's sample stores")
    return path


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


def score_setting(request: Request, run_dir: str | os.PathLike, reference: Reference, extractor,
                  row: dict[str, Any], options: RunOptions = RunOptions(), score: ScoreOptions = ScoreOptions(),
                  ctx: Context | None = None, *, csv: str | os.PathLike | None = None,
                  json_out: str | os.PathLike | None = None) -> SettingResult | None:
    """Sample `request` into `run_dir` (resuming), score it against `reference`, record the row.

    `row` is `settings_row(request, ...)`. Writes ``json_out`` (default ``run_dir/metrics.json``:
    row, evaluate() dict with provenance, sampling request) and appends the completed row (metrics,
    ``wall_clock_s``, ``samples_path`` relative to the CSV) to `csv` when given. Rank 0 writes and
    gets the SettingResult; other ranks get None.
    """
    ctx = ctx or Context.local()
    run_dir = Path(run_dir)
    start = time.perf_counter()
    run = run_sampling(request, run_dir, options, ctx)
    metrics = evaluate(run.npz_path, reference.reader, extractor, score, ctx)
    seconds = time.perf_counter() - start
    if not ctx.is_main:
        ctx.barrier()
        return None
    full = {**row, **metric_cells(metrics), "wall_clock_s": round(seconds, 3)}
    if csv is not None:
        full["samples_path"] = _relative(run.npz_path, Path(csv).resolve().parent)
    record = {"row": full, "metrics": metrics, "sampling": {
        "npz": str(run.npz_path), "generated_now": run.generated, "seconds": round(run.seconds, 3),
        "config": request.for_device(ctx.device).to_dict()}}
    atomic_write_text(json_out or run_dir / METRICS_JSON, json.dumps(record, indent=1, default=str) + "\n")
    if csv is not None:
        append_row(csv, full, exist_ok=True)  # a concurrent job with the same settings may have written it
    ctx.barrier()
    return SettingResult(row=full, metrics=metrics, skipped=False, run_dir=run_dir)


def _rows_and_done(requests: Sequence[Request], reference: Reference, csv, extractor, ctx: Context,
                   label: str | None):
    """(extractor, the CSV row of each request, run_ids already in `csv`). Rank 0 hashes the reference
    and reads the CSV; every rank gets the same run_ids."""
    if extractor is None or isinstance(extractor, str):
        extractor = build_extractor(extractor, ctx.device)
    identity = extractor.identity() if hasattr(extractor, "identity") else {}
    features = getattr(extractor, "name", None) or identity.get("name")
    ref_sha, done = ctx.on_rank0(lambda: (reference.content_hash(), done_run_ids(csv)))
    rows = [settings_row(r, reference=reference.name, reference_sha256=ref_sha, features=features, label=label,
                         features_sha256=identity.get("weights_sha256")) for r in requests]
    return extractor, rows, done


def sample_and_score(request: Request, out_dir: str | os.PathLike, ref: str | os.PathLike, extractor=None,
                     options: RunOptions = RunOptions(), score: ScoreOptions = ScoreOptions(),
                     ctx: Context | None = None, *, csv: str | os.PathLike | None = None,
                     json_out: str | os.PathLike | None = None, label: str | None = None) -> SettingResult | None:
    """`evalkit sample-and-score`: sample `request` into `out_dir` (resumable), score it against `ref`,
    write the metrics JSON (`json_out`, default ``out_dir/metrics.json``) and append one row to `csv`.

    A classifier at scale 0 is dropped (module doc). When `csv` already holds the row's run_id,
    nothing is sampled or scored and the result has ``skipped=True`` (its row is the CSV's).
    Returns the SettingResult on rank 0, None on other ranks. Bad input raises before writing.
    """
    ctx = ctx or Context.local()
    request = unguided_if_zero(request)
    out = check_sweep_dir(out_dir)
    reference = Reference(ref)
    try:
        check_metric_settings(request.num_samples, reference.reader.num_images, score,
                              f"the sample batch (--num-samples {request.num_samples})", f"reference {reference.name}")
        extractor, (row,), done = _rows_and_done([request], reference, csv, extractor, ctx, label)
        if row["run_id"] in done:
            if not ctx.is_main:
                return None
            table = read_results(csv)
            found = table[table["run_id"] == row["run_id"]].iloc[0].to_dict()
            return SettingResult(row=found, metrics=None, skipped=True, run_dir=out)
        return score_setting(request, out, reference, extractor, row, options, score, ctx, csv=csv, json_out=json_out)
    finally:
        reference.close()


# ---------------------------------------------------------------------------------------------
# The sweep

def _describe(row: dict[str, Any]) -> str:
    """The swept values of a settings row, for the progress log."""
    if row.get("truncation") is not None:
        return f"truncation {row['truncation']:g}"
    return f"guidance_scale {row['guidance_scale']:g}, {row['sampler']} {row['steps']} steps"

def run_sweep(plan: SweepPlan, ref: str | os.PathLike, out_dir: str | os.PathLike, csv: str | os.PathLike,
              extractor=None, options: RunOptions = RunOptions(), score: ScoreOptions = ScoreOptions(),
              ctx: Context | None = None, *, label: str | None = None, log: Log | None = None) -> pd.DataFrame:
    """Sample and score every setting of `plan`; one CSV row per setting.

    Settings sample into ``out_dir/scale-<s>[_steps-<r>]/`` (``out_dir/truncation-<t>/`` for a GAN); rows already in `csv` (by run_id) are
    skipped without sampling; a half-finished setting resumes from its shards. `extractor`:
    object, registered name or None (Inception). Every process of `ctx` calls it (rank 0 writes
    the CSV).

    Returns the rows of this sweep (results schema, in setting order) on every rank. Raises
    InputError / RunDirectoryError before anything is written for a CSV of another schema, an
    `out_dir` that is a file or a setting folder holding another run; a sweep folder it created is
    removed again when the first setting fails before writing anything (e.g. unloadable weights).
    """
    ctx = ctx or Context.local()
    log = log or (lambda message: tqdm.write(message, file=sys.stderr) if ctx.is_main else None)
    settings = plan.settings()
    out = check_sweep_dir(out_dir)
    reference = Reference(ref)
    created = not out.exists()
    try:
        check_metric_settings(plan.base.num_samples, reference.reader.num_images, score,
                              f"each setting's sample batch (--num-samples {plan.base.num_samples})",
                              f"reference {reference.name}")
        extractor, rows, done = _rows_and_done([r for _, r in settings], reference, csv, extractor, ctx, label)
        todo = [i for i, row in enumerate(rows) if row["run_id"] not in done]
        ctx.on_rank0(lambda: [check_store(settings[i][1], out / settings[i][0], ctx) for i in todo])
        if len(todo) < len(settings):
            log(f"sweep: {len(settings) - len(todo)} of {len(settings)} settings already in {csv}; skipping them")
        for k, i in enumerate(todo, 1):
            name, request = settings[i]
            log(f"sweep [{k}/{len(todo)}] {name}: {_describe(rows[i])}, {request.num_samples} samples")
            result = score_setting(request, out / name, reference, extractor, rows[i], options, score, ctx, csv=csv)
            if result is not None:
                full = result.row
                log(f"sweep [{k}/{len(todo)}] {name}: " + ", ".join(f"{key} {full[key]:.4g}" for key in METRIC_KEYS
                                                                     if full.get(key) is not None)
                    + f" ({full['wall_clock_s']:.1f} s)")
    except BaseException:
        if created and ctx.is_main:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: the failed setting's store removed itself
        raise
    finally:
        reference.close()
    ctx.barrier()
    table = read_results(csv)
    ids = [row["run_id"] for row in rows]
    table = table[table["run_id"].isin(ids)]
    order = {rid: j for j, rid in enumerate(ids)}
    return table.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)
