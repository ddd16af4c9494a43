"""`evalkit demo`: the whole mission offline on the bundled 8×8 digits, in minutes on a laptop CPU.

The same code paths users run on ImageNet with the released checkpoints (Dhariwal & Nichol 2021):

1. reference batch: `evalkit.refbuild.build_reference` over the bundled digits (every image kept,
   statistics of the "digits" feature network), reused from the output folder when still current;
2. classifier-guided sampling + scoring at every guidance scale: `evalkit.sweep.run_sweep` with the
   trained presets ``digits8_diffusion`` + ``digits8_classifier`` → ``results.csv``;
3. the BigGAN-deep baseline: the same harness sweeps the truncation of the trained ``digits8_biggan``
   (`evalkit.demo.gan`) and appends one row per truncation to the same ``results.csv``
   (``family`` "biggan-deep", ``truncation`` set, guidance cells empty), as the paper's
   guidance-vs-truncation comparison (Fig. 5) does with TF-Hub's BigGAN-deep;
4. the tradeoff report (`evalkit.report.build_report`: FD vs IS, precision vs recall with one curve
   per family, ADM labelled by guidance scale and BigGAN-deep by truncation, tables) in ``report/``,
   a grid of class-sorted samples per scale and per truncation ``samples.png``, and a ``README.md``
   that states whether the tradeoff holds for both families (toward fidelity, i.e. a larger guidance
   scale or a smaller truncation: IS and precision rise, recall falls).

Output folder layout (``reports/demo/`` in the repository is produced by ``evalkit demo``)::

    README.md  demo.json  results.csv  samples.png
    report/      fid_vs_is.{pdf,svg,png}, precision_vs_recall.{pdf,svg,png}, results_table.{md,tex}, README.md
    reference/   digits8_ref.npz (the demo's reference batch)
    runs/        scale-<s>/ and truncation-<t>/ sample stores of the two sweeps (npz + manifest)

Weights: the bundled ones, or with ``weights_dir`` the folder's ``digits8_diffusion.pt`` and
``digits8_classifier.pt`` (both required) and, when present, its ``digits8_biggan.pt`` (with
``digits8_biggan-config.json`` beside it, else the bundled config); without that file the bundled
BigGAN-deep is used.

Every run starts a fresh sweep (the previous ``results.csv`` and ``runs/`` of the folder are removed),
so the folder always matches the command that made it; seeds are fixed, so the numbers repeat.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from evalkit import __version__
from evalkit.atomic import atomic_path, atomic_write_text
from evalkit.demo.data import NUM_CLASSES, NUM_IMAGES, digits_images
from evalkit.demo.gan import DEFAULT_TRUNCATIONS, PRESET as GAN_PRESET
from evalkit.demo.models import DEFAULT_SCALES, DIGITS_PRESETS, digits_request
from evalkit.errors import ConfigError, RunDirectoryError
from evalkit.metrics import KEY_FID, KEY_IS, KEY_PRECISION, KEY_RECALL, KEY_SFID, METRIC_KEYS
from evalkit.refbuild import META_KEY, build_reference, decode_meta, subset_indices
from evalkit.context import Context
from evalkit.options import RunOptions, ScoreOptions
from evalkit.results import format_scale, metric_label, read_results
from evalkit.store import NpzWriter, open_batch

MARKER = "demo.json"          # marks a folder written by `evalkit demo` (it may be replaced by the next run)
RESULTS_CSV = "results.csv"
REPORT_DIR = "report"
RUNS_DIR = "runs"
REFERENCE = "reference/digits8_ref.npz"
SAMPLES_PNG = "samples.png"
README = "README.md"

FEATURES = "digits"           # the demo's feature network (evalkit.features.digits)
REFERENCE_SUBSET = NUM_IMAGES  # every bundled digit is kept for precision/recall
REFERENCE_SEED = 0
DEFAULT_NUM_SAMPLES = 500     # samples per guidance scale (fewer make the precision rise unreliable)
COMPUTE_CHUNK = 100           # samples per network call (images are identical for any --batch-size)
QUICK_NUM_SAMPLES = 200       # --quick (CI): IS and recall move robustly; precision at the fixed seed 0
QUICK_SCALES = (0.0, 8.0)     # --quick: the two ends of the sweep only
QUICK_TRUNCATIONS = (0.2, 1.0)  # --quick: the two ends of the BigGAN-deep truncation sweep
DEFAULT_SEED = 0
SAMPLES_PER_CLASS = 1         # samples.png: one sample per class (10 columns) per scale
LABEL = "ADM (digits)"
GAN_LABEL = "BigGAN-deep (digits)"
MIN_SAMPLES = 4               # precision/recall need each point's 3rd nearest neighbour

Log = Callable[[str], None]


@dataclass
class DemoResult:
    """What `run_demo` wrote: paths (under ``out_dir``), the results rows and the checked finding."""

    out_dir: Path
    results_csv: Path
    report_dir: Path
    samples_png: Path
    reference: Path
    readme: Path
    rows: pd.DataFrame
    tradeoff: dict[str, bool]
    gan_rows: pd.DataFrame
    gan_tradeoff: dict[str, bool]
    seconds: float
    files: list[Path] = field(default_factory=list)


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Output folder and reference


def check_demo_dir(out: str | Path) -> Path:
    """`out` must be new, empty (dotfiles such as ``.gitignore`` aside), or an earlier demo folder (has
    ``demo.json``); else RunDirectoryError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out}: is a file; expected a folder for the demo's report")
    visible = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if visible and not (out / MARKER).is_file():
        raise RunDirectoryError(f"--out {out}: the folder holds other files and no {MARKER}; expected a new or "
                                f"empty folder or an earlier `evalkit demo` folder")
    return out


def reference_is_current(path: Path, extractor) -> bool:
    """Whether the reference npz at `path` is exactly what `ensure_reference` would build now:
    same images and labels (the seeded subset of the bundled digits) and the same feature network."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            if META_KEY not in f.files or "arr_0" not in f.files or "arr_1" not in f.files:
                return False
            meta = decode_meta(f[META_KEY])
            images, labels = f["arr_0"], f["arr_1"]
    except Exception:  # a damaged or foreign file is simply rebuilt
        return False
    want_images, want_labels = digits_images()
    keep = subset_indices(len(want_images), REFERENCE_SUBSET, REFERENCE_SEED)
    identity = json.loads(json.dumps(extractor.identity(), sort_keys=True, default=str))
    return (meta.get("extractor") == identity and meta.get("seed") == REFERENCE_SEED
            and meta.get("subset") == REFERENCE_SUBSET and images.shape == want_images[keep].shape
            and np.array_equal(images, want_images[keep]) and np.array_equal(labels, want_labels[keep]))


def ensure_reference(path: Path, extractor, progress: bool = True, log: Log = _log) -> Path:
    """Build the demo's reference batch at `path` from the bundled digits with `build_reference`,
    unless the file there is already current (see `reference_is_current`)."""
    if reference_is_current(path, extractor):
        log(f"demo: reusing the reference batch {path}")
        return path
    log(f"demo: building the reference batch {path} from the bundled digits ({NUM_IMAGES} images)")
    images, labels = digits_images()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The bundled data as an ordinary npz source (arr_0 images, arr_1 labels), then the same command
    # users run: `evalkit ref build digits8.npz --features digits --subset 1797`.
    with tempfile.TemporaryDirectory(prefix=".digits8-", dir=path.parent) as tmp:
        source = Path(tmp) / "digits8.npz"
        with NpzWriter(source) as writer:
            writer.append(images, labels)
        build_reference(source, path, extractor=extractor, subset=REFERENCE_SUBSET, seed=REFERENCE_SEED,
                        options=ScoreOptions(batch_size=512, cache=False, progress=progress))
    return path


# ---------------------------------------------------------------------------------------------
# Samples figure


def class_sorted(images: np.ndarray, labels: np.ndarray | None, per_class: int,
                 num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The first `per_class` images of every class in class order ([num_classes * per_class, H, W, 3],
    white where a class has fewer samples); without labels, the first ``num_classes * per_class`` images."""
    count = num_classes * per_class
    if labels is None:
        out = np.full((count, *images.shape[1:]), 255, dtype=np.uint8)
        out[:min(count, len(images))] = images[:count]
        return out
    out = np.full((count, *images.shape[1:]), 255, dtype=np.uint8)
    for c in range(num_classes):
        picked = images[labels == c][:per_class]
        out[c * per_class:c * per_class + len(picked)] = picked
    return out


def samples_figure(stores: Sequence[tuple[float | str, Path]], per_class: int = SAMPLES_PER_CLASS,
                   title: str = "Samples per guidance scale s"):
    """One row per store, columns = classes 0..9 (`per_class` samples each) of each store.

    stores: (row label, npz path) in row order; a number is a guidance scale (labelled
    ``s = <scale>``), text is used as is (e.g. ``"t = 0.2"``). Returns a matplotlib Figure (no pyplot).
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from evalkit.plots import FIGURE_WIDTH_IN, STYLE, image_mosaic

    rows = []
    for _, path in stores:
        with open_batch(path) as reader:
            images = reader.read_images()
            rows.append(class_sorted(images, reader.labels, per_class))
    ncols = NUM_CLASSES * per_class
    mosaic = image_mosaic(np.concatenate(rows), ncols)
    h = rows[0].shape[1] + 1
    with rc_context(STYLE):
        aspect = mosaic.shape[0] / mosaic.shape[1]
        fig = Figure(figsize=(FIGURE_WIDTH_IN, FIGURE_WIDTH_IN * aspect + 0.45), layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_yticks([i * h + (h - 1) / 2 - 0.5 for i in range(len(stores))],
                      [s if isinstance(s, str) else f"s = {format_scale(s)}" for s, _ in stores])
        w = rows[0].shape[2] + 1
        ax.set_xticks([c * per_class * w + (per_class * w - 1) / 2 - 0.5 for c in range(NUM_CLASSES)],
                      [str(c) for c in range(NUM_CLASSES)])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel("class label given to the generator")
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# The finding and the README


def _toward_fidelity(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """`rows` from the most diverse setting to the most faithful one: guidance scale ascending,
    truncation descending (a smaller truncation samples closer to the mode)."""
    return rows.sort_values(key, ascending=key != "truncation")


def tradeoff_checks(rows: pd.DataFrame, key: str = "guidance_scale") -> dict[str, bool]:
    """The paper's finding between the two ends of `rows` along `key`, moving toward fidelity: the
    smallest to the largest guidance scale (``key`` "guidance_scale"), or the largest to the smallest
    truncation (``key`` "truncation"): ``is_up`` (IS rises), ``precision_up`` (precision rises),
    ``recall_down`` (recall falls)."""
    ordered = _toward_fidelity(rows, key)
    lo, hi = ordered.iloc[0], ordered.iloc[-1]
    return {"is_up": bool(hi[KEY_IS] > lo[KEY_IS]), "precision_up": bool(hi[KEY_PRECISION] > lo[KEY_PRECISION]),
            "recall_down": bool(hi[KEY_RECALL] < lo[KEY_RECALL])}


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _finding(rows: pd.DataFrame, checks: dict[str, bool], key: str, what: str) -> str:
    """One sentence: the metrics at both ends of `rows` along `key`, toward fidelity."""
    ordered = _toward_fidelity(rows, key)
    lo, hi = ordered.iloc[0], ordered.iloc[-1]
    return (f"From {what} {lo[key]:g} to {hi[key]:g}: "
            f"IS {_fmt(lo[KEY_IS])} → {_fmt(hi[KEY_IS])} ({'rises' if checks['is_up'] else 'does NOT rise'}), "
            f"precision {_fmt(lo[KEY_PRECISION])} → {_fmt(hi[KEY_PRECISION])} "
            f"({'rises' if checks['precision_up'] else 'does NOT rise'}), "
            f"recall {_fmt(lo[KEY_RECALL])} → {_fmt(hi[KEY_RECALL])} "
            f"({'falls' if checks['recall_down'] else 'does NOT fall'}).")


def _table(rows: pd.DataFrame, key: str, what: str) -> list[str]:
    keys = (KEY_IS, KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL)
    lines = [f"| {what} | " + " | ".join(metric_label(k, FEATURES) for k in keys) + " |",
             "|---:|" + "---:|" * len(keys)]
    for _, r in _toward_fidelity(rows, key).iterrows():
        lines.append(f"| {r[key]:g} | " + " | ".join(_fmt(r[k]) for k in keys) + " |")
    return lines


def _readme(rows: pd.DataFrame, checks: dict[str, bool], gan_rows: pd.DataFrame, gan_checks: dict[str, bool],
            settings: dict, seconds: float, command: str) -> str:
    keys = (KEY_IS, KEY_FID, KEY_SFID, KEY_PRECISION, KEY_RECALL)
    holds, gan_holds = all(checks.values()), all(gan_checks.values())
    lines = [
        "# evalkit demo: classifier guidance vs BigGAN-deep truncation, fidelity against diversity (8×8 digits)",
        "",
        "Regenerate this folder (offline, CPU) with:",
        "",
        "```",
        command,
        "```",
        "",
        f"A class-conditional ADM UNet (`{settings['preset']}`) sampled with classifier guidance "
        f"(`{settings['classifier']}`), {settings['sampler']} sampling over {settings['steps']} respaced steps, "
        f"and a class-conditional BigGAN-deep (`{settings['gan_preset']}`, the code that runs TF-Hub's "
        f"BigGAN-deep in a small config) sampled at several truncations; {settings['num_samples']} samples per "
        f"guidance scale and per truncation (sample i draws its label, uniform over the 10 classes, and its "
        f"noise or latent from the generator (seed {settings['seed']}, i); the same labels at every setting), "
        f"scored against the {NUM_IMAGES} bundled digits with the `digits` feature network. The metrics are NOT "
        "Inception numbers: " + ", ".join(metric_label(k, FEATURES) for k in keys) + ".",
        "",
        "## Result",
        "",
        "Both knobs trade diversity for fidelity, as in the paper's guidance-vs-truncation comparison "
        "(Dhariwal & Nichol 2021, Fig. 5): toward fidelity (a larger guidance scale, a smaller truncation) "
        "IS and precision should rise and recall fall.",
        "",
        "### ADM, classifier guidance",
        "",
        _finding(rows, checks, "guidance_scale", "guidance scale") + " "
        + ("This is the paper's central finding (Dhariwal & Nichol 2021, Fig. 5 / Table 4): guidance raises "
           "fidelity and lowers diversity." if holds else "The paper's finding does NOT hold in this run."),
        "",
        *_table(rows, "guidance_scale", "guidance scale"),
        "",
        "### BigGAN-deep, truncation",
        "",
        _finding(gan_rows, gan_checks, "truncation", "truncation") + " "
        + ("The truncation trick trades diversity for fidelity as in the paper's BigGAN-deep curve."
           if gan_holds else "The truncation tradeoff does NOT hold in this run."),
        "",
        *_table(gan_rows, "truncation", "truncation"),
        "",
        "## Files",
        "",
        "- `results.csv`: one row per guidance scale (family `adm`) and per truncation (family `biggan-deep`, "
        "column `truncation`, guidance cells empty) in the evalkit results schema (`evalkit report results.csv "
        "--out DIR` redraws it).",
        "- `report/`: FD vs IS and precision vs recall plots (one curve per family: ADM points labelled with "
        "their guidance scale, BigGAN-deep points with their truncation), results tables (Markdown, LaTeX) and "
        "the report's README.",
        "- `samples.png`: one row per guidance scale (`s = …`), then one per truncation (`t = …`), one sample "
        "per class label (columns 0–9).",
        f"- `{REFERENCE}`: the reference batch, built with `evalkit ref build` from the bundled digits "
        f"(all {NUM_IMAGES} images, statistics of the `digits` network); see `reference_batches/digits8/`.",
        "- `runs/scale-*/`, `runs/truncation-*/`: the sample stores the rows were scored from (`samples_*.npz`; "
        "their `manifest.json` / `metrics.json` name absolute paths and times and are not committed, see "
        "`.gitignore`).",
        "- `demo.json`: settings, seeds, weights and reference sha256, versions, wall-clock time.",
        "",
        "![FD vs IS](report/fid_vs_is.png) ![precision vs recall](report/precision_vs_recall.png)",
        "",
        "![samples](samples.png)",
        "",
        "## Provenance",
        "",
        f"- Diffusion weights sha256 `{settings['checkpoint_sha256']}`, classifier weights sha256 "
        f"`{settings['classifier_sha256']}`, BigGAN-deep weights sha256 `{settings['gan_checkpoint_sha256']}`, "
        f"reference sha256 `{settings['reference_sha256']}`.",
        f"- evalkit {__version__}, torch {torch.__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, device `{settings['device']}`.",
        f"- Wall-clock time of the whole demo: {seconds:.0f} s on this machine "
        f"({torch.get_num_threads()} torch threads).",
        "- Data: UCI optical recognition of handwritten digits (8×8 version, CC BY 4.0), see "
        "`evalkit/data/DIGITS_README.md`.",
        "",
    ]
    return "\n".join(lines)


def digits_biggan_request(num_samples: int, seed: int = 0, weights_dir: str | Path | None = None):
    """The `BigGANRequest` of the demo's BigGAN-deep (``digits8_biggan``, truncation set per setting).

    ``weights_dir``: a folder whose ``digits8_biggan.pt`` (config ``digits8_biggan-config.json``
    beside it, else the bundled one) replaces the bundled weights; without that file the bundled
    weights are used. Raises ConfigError / WeightsError / CheckpointError for files that do not fit.
    """
    from evalkit.presets import get_biggan_preset
    from evalkit.sampling.biggan import BigGANArgs, make_biggan_request

    checkpoint = config = None
    if weights_dir is not None:
        p = get_biggan_preset(GAN_PRESET)
        if (Path(weights_dir) / p.weights).is_file():
            checkpoint = str(Path(weights_dir) / p.weights)
            beside = Path(weights_dir) / p.config
            config = str(beside) if beside.is_file() else None
    return make_biggan_request(BigGANArgs(preset=GAN_PRESET, checkpoint=checkpoint, config=config,
                                          num_samples=num_samples, seed=seed, compute_chunk=COMPUTE_CHUNK))


# ---------------------------------------------------------------------------------------------
# The demo


def run_demo(out: str | Path = "reports/demo", num_samples: int | None = None,
             scales: Sequence[float] | str | None = None, quick: bool = False, *, seed: int = DEFAULT_SEED,
             truncations: Sequence[float] | str | None = None,
             batch_size: int = 100, progress: bool = True, weights_dir: str | Path | None = None,
             command: str | None = None, log: Log | None = None, ctx: Context | None = None) -> DemoResult:
    """Run the whole digits demo into `out` (see the module doc) and return what was written.

    num_samples: samples per guidance scale and per truncation (default 500; 200 with `quick`);
    scales: guidance scales of the ADM sweep (default 0, 0.5, 1, 2, 4, 8; 0 and 8 with `quick`);
    truncations: truncations of the BigGAN-deep sweep (default the preset's 0.2, 0.4, 0.6, 0.8,
    1.0; 0.2 and 1.0 with `quick`); seed: seed of the per-sample generators (sample i uses the
    generator (seed, i)); batch_size: samples per sampling batch (does not change the images);
    weights_dir: folder with ``digits8_diffusion.pt`` / ``digits8_classifier.pt`` (and optionally
    ``digits8_biggan.pt``) instead of the bundled ones; command: the command line recorded in the
    READMEs; ctx: where to compute (default: one process on the CPU). Raises ConfigError for bad
    scales / truncations / sample counts and RunDirectoryError when `out` holds files that are not
    an earlier demo, before writing anything.
    """
    from evalkit.evaluate import build_extractor
    from evalkit.report import build_report
    from evalkit.sweep import SweepPlan, parse_scales, parse_truncations, run_sweep, setting_dirname, truncation_dirname

    ctx = ctx or Context.local()
    log = log or _log
    start = time.perf_counter()
    scales = parse_scales(scales if scales is not None else (QUICK_SCALES if quick else DEFAULT_SCALES))
    if len(scales) < 2:
        raise ConfigError(f"--scales {','.join(map(str, scales))}: give at least two guidance scales to show a tradeoff")
    truncations = parse_truncations(truncations if truncations is not None
                                    else (QUICK_TRUNCATIONS if quick else DEFAULT_TRUNCATIONS))
    if len(truncations) < 2:
        raise ConfigError(f"--truncations {','.join(map(str, truncations))}: give at least two truncations to "
                          f"show a tradeoff")
    if num_samples is None:
        num_samples = QUICK_NUM_SAMPLES if quick else DEFAULT_NUM_SAMPLES
    if int(num_samples) < MIN_SAMPLES:
        raise ConfigError(f"--num-samples {num_samples}: expected at least {MIN_SAMPLES} samples per scale "
                          f"(precision/recall use 3 nearest neighbours)")
    num_samples = int(num_samples)
    device = ctx.device
    out = check_demo_dir(out)
    diffusion_preset, classifier_preset = DIGITS_PRESETS
    base = digits_request(max(scales), num_samples, seed, compute_chunk=COMPUTE_CHUNK, weights_dir=weights_dir)
    gan_plan = SweepPlan.of(digits_biggan_request(num_samples, seed, weights_dir), truncations=truncations)
    command = command or "evalkit demo" + (" --quick" if quick else "")

    # A fresh sweep every time: the folder matches the command that made it.
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"evalkit_demo": 1, "status": "running"}) + "\n")
    csv, runs = out / RESULTS_CSV, out / RUNS_DIR
    csv.unlink(missing_ok=True)
    shutil.rmtree(runs, ignore_errors=True)

    # 1. Reference batch.
    extractor = build_extractor(FEATURES, device)
    reference = ensure_reference(out / REFERENCE, extractor, progress=progress, log=log)

    # 2. Sweeps: sample + score every guidance scale, then every truncation; one CSV row each.
    log(f"demo: {len(scales)} guidance scales x {num_samples} samples, {base.sampler} sampling over "
        f"{base.timestep_respacing} steps on {device}")
    run_options = RunOptions(batch_size=min(batch_size, num_samples), progress=progress)
    score_options = ScoreOptions(batch_size=500, progress=progress)
    rows = run_sweep(SweepPlan.of(base, scales), reference, runs, csv, extractor, run_options, score_options, ctx,
                     label=LABEL, log=log)
    log(f"demo: BigGAN-deep ({GAN_PRESET}), {len(truncations)} truncations x {num_samples} samples on {device}")
    gan_rows = run_sweep(gan_plan, reference, runs, csv, extractor, run_options, score_options, ctx,
                         label=GAN_LABEL, log=log)

    # 3. Report, samples figure, README.
    log("demo: rendering the report")
    table = read_results(csv)
    build_report(table.drop(columns=["samples_path"], errors="ignore"), out / REPORT_DIR, csv_path=csv,
                 title="evalkit demo: guidance vs truncation tradeoff on the 8×8 digits", command=command,
                 extra_readme=[f"- Made by `{command}`; the sample grid per guidance scale and per truncation is "
                               f"`../{SAMPLES_PNG}`."])
    stores = [(float(s), next((runs / setting_dirname(s)).glob("samples_*.npz"))) for s in sorted(scales)]
    stores += [(f"t = {format_scale(t)}", next((runs / truncation_dirname(t)).glob("samples_*.npz")))
               for t in sorted(truncations, reverse=True)]
    fig = samples_figure(stores, title="Samples per guidance scale s (ADM)\nand per truncation t (BigGAN-deep)")
    with atomic_path(out / SAMPLES_PNG, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=200, metadata={"Software": None})
    checks = tradeoff_checks(rows)
    gan_checks = tradeoff_checks(gan_rows, "truncation")
    seconds = time.perf_counter() - start
    first = rows.iloc[0]
    guided = rows[rows["guidance_scale"] > 0]
    settings = {
        "preset": diffusion_preset.name, "classifier": classifier_preset.name, "sampler": base.sampler,
        "steps": base.timestep_respacing, "num_samples": num_samples, "seed": seed,
        "scales": list(scales), "device": str(device), "features": FEATURES,
        "checkpoint_sha256": first["checkpoint_sha256"],
        "classifier_sha256": guided.iloc[0]["classifier_sha256"] if len(guided) else None,
        "gan_preset": GAN_PRESET, "truncations": list(truncations),
        "gan_checkpoint_sha256": gan_rows.iloc[0]["checkpoint_sha256"],
        "reference": REFERENCE, "reference_sha256": first["reference_sha256"],
        "reference_subset": REFERENCE_SUBSET, "reference_seed": REFERENCE_SEED,
    }
    readme = out / README
    atomic_write_text(readme, _readme(rows, checks, gan_rows, gan_checks, settings, seconds, command))

    def record_rows(df: pd.DataFrame) -> list[dict]:
        return [{k: (None if pd.isna(r[k]) else float(r[k])) for k in ("guidance_scale", "truncation", *METRIC_KEYS)}
                | {"family": r["family"]} for _, r in df.iterrows()]

    record = {"evalkit_demo": 1, "status": "done", "command": command, "settings": settings, "tradeoff": checks,
              "gan_tradeoff": gan_checks, "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
              "versions": {"evalkit": __version__, "torch": torch.__version__, "numpy": np.__version__,
                           "python": platform.python_version()},
              "rows": record_rows(rows) + record_rows(gan_rows)}
    atomic_write_text(out / MARKER, json.dumps(record, indent=1) + "\n")
    report_dir = out / REPORT_DIR
    files = [readme, out / MARKER, csv, out / SAMPLES_PNG, reference, *sorted(report_dir.iterdir())]
    return DemoResult(out_dir=out, results_csv=csv, report_dir=report_dir, samples_png=out / SAMPLES_PNG,
                      reference=reference, readme=readme, rows=rows, tradeoff=checks, gan_rows=gan_rows,
                      gan_tradeoff=gan_checks, seconds=seconds, files=files)
