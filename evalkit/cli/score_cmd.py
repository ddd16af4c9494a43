"""`evalkit score SAMPLES REF`: the five numbers of OpenAI's ADM evaluator, in its format.

Also defines the options and helpers shared with `evalkit features` (feature network choice, device,
warnings shown as one line on stderr). Runs under ``torchrun`` too: every rank extracts a slice of the
features, rank 0 prints and writes. Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import os
import json
import warnings
from typing import Iterator

import click

from evalkit.atomic import atomic_write_text
from evalkit.cli.group import main
from evalkit.errors import ConfigError, InputError

TF_EXTRACTOR = "inception-tf"


def feature_network_options(func):
    """--device, --batch-size, --backend, --features, --inception, --no-cache (shared by score/features)."""
    options = [
        click.option("--device", default="auto", show_default=True, metavar="DEVICE",
                     help="Where to run the feature network: auto, cpu, cuda, cuda:N (under torchrun, auto "
                          "picks each rank's GPU)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
                     help="Images per feature-network batch (the reference evaluator uses 64)."),
        click.option("--backend", type=click.Choice(["torch", "tf"]), default="torch", show_default=True,
                     help="Inception implementation: evalkit's PyTorch port, or the reference TensorFlow graph "
                          "(needs the tf extra; same as --features inception-tf)."),
        click.option("--features", "features_name", default=None, metavar="NAME",
                     help="Feature network from the registry, e.g. inception, inception-tf, digits; modules "
                          "named in $EVALKIT_PLUGINS (comma-separated) may register more.  [default: inception]"),
        click.option("--inception", "weights_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     metavar="PATH", help="Weights file for the feature network instead of the cached one "
                                          "(.pth or classify_image_graph_def.pb for Inception)."),
        click.option("--no-cache", is_flag=True, default=False, show_default=True,
                     help="Neither read nor write the feature cache ($EVALKIT_CACHE/features)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def metric_options(func):
    """--metrics, --bootstrap, --bootstrap-seed, --kid-subsets, --kid-subset-size, --dc-k (shared by
    score, sample-and-score and sweep). Values are checked by `ScoreOptions` (one line per bad value)."""
    options = [
        click.option("--metrics", "metrics", default="is,fid,sfid,pr", show_default=True, metavar="M1,M2,...",
                     help="Metrics to compute: is, fid, sfid, pr (precision and recall), kid (KID mean and std "
                          "over subsets), dc (density and coverage). The default prints exactly the reference "
                          "evaluator's five lines; extra metrics print after them."),
        click.option("--bootstrap", "bootstrap", type=int, default=None, metavar="B",
                     help="Add 95% percentile confidence intervals from B bootstrap replicates of the sample rows "
                          "(features are reused, not re-extracted), e.g. 100; printed after the metrics.  "
                          "[default: no intervals]"),
        click.option("--bootstrap-seed", "bootstrap_seed", type=int, default=0, show_default=True, metavar="S",
                     help="Seed of the bootstrap's resampling."),
        click.option("--kid-subsets", "kid_subsets", type=int, default=100, show_default=True, metavar="N",
                     help="KID: number of random subsets averaged."),
        click.option("--kid-subset-size", "kid_subset_size", type=int, default=1000, show_default=True, metavar="M",
                     help="KID: rows per subset, on each side (at most the number of sample and reference images)."),
        click.option("--dc-k", "dc_k", type=int, default=5, show_default=True, metavar="K",
                     help="Density/coverage: nearest-neighbour k of the reference balls."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


METRIC_OPTION_NAMES = ("metrics", "bootstrap", "bootstrap_seed", "kid_subsets", "kid_subset_size", "dc_k")


def pop_metric_options(kwargs: dict) -> dict:
    """Remove the `metric_options` values from click's `kwargs`; return them as `ScoreOptions` fields."""
    return {name: kwargs.pop(name) for name in METRIC_OPTION_NAMES}


def extractor_name(backend: str, features_name: str | None) -> str | None:
    """The registry name that --backend/--features select (None = the default Inception)."""
    if backend == "tf":
        if features_name not in (None, TF_EXTRACTOR):
            raise ConfigError(f"--backend tf selects the TensorFlow Inception graph ({TF_EXTRACTOR}); it cannot be "
                              f"combined with --features {features_name}")
        return TF_EXTRACTOR
    return features_name


@contextlib.contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Show each Python warning once as `warning: ...` on stderr (rank 0 only), not as a source trace."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        # Not the user's concern (and, for files other code left open, shown whenever the garbage
        # collector happens to run): never turned into a `warning:` line.
        warnings.simplefilter("ignore", ResourceWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            if os.environ.get("RANK", "0") == "0":  # rank 0 of a torchrun job (or a single process)
                click.echo(f"warning: {message}", err=True)

        warnings.showwarning = show
        yield


@main.command("score")
@click.argument("samples", metavar="SAMPLES")
@click.argument("ref", metavar="REF")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, metavar="OUT",
              help="Also write the metrics (raw values; KID not scaled), intervals, labels and provenance "
                   "(versions, weights sha256, image counts, content hashes, device, metric and bootstrap "
                   "settings, time) to this JSON file (atomically).")
@feature_network_options
@metric_options
@click.option("--exact-fid", is_flag=True, default=False, show_default=True,
              help="Use the reference's scipy sqrtm path for FID/sFID (slow) instead of the eigenvalue form.")
@click.option("--recompute-sample-stats", is_flag=True, default=False, show_default=True,
              help="Ignore mu/sigma/mu_s/sigma_s stored in SAMPLES and compute them from its images (by "
                   "default stored statistics are used, as the reference evaluator does).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars (images/s) on stderr.")
def score_cmd(samples: str, ref: str, json_out: str | None, device: str, batch_size: int, backend: str,
              features_name: str | None, weights_path: str | None, no_cache: bool, exact_fid: bool,
              recompute_sample_stats: bool, progress: bool, **metric_kw) -> None:
    """Score the sample batch SAMPLES against the reference batch REF and print, exactly as OpenAI's
    evaluator does, `Inception Score`, `FID`, `sFID`, `Precision` and `Recall` (in that order).

    SAMPLES and REF are .npz files (images in arr_0), HDF5 files or image folders; REF may also be a
    reference batch name (imagenet64/128/256/512, lsun_bedroom/cat/horse) fetched with `evalkit ref
    fetch`. Statistics stored in either file are used, as the reference evaluator does, when the
    network that made them is known (OpenAI's files: only with the canonical Inception-2015 weights);
    otherwise they are recomputed from the images, with a warning. Note the order: samples first (the
    reference script takes the reference first). With --features other than Inception the labels name
    the network (e.g. "FD (digits features)"), never FID.

    --metrics adds KID (printed ×10³ with its std over subsets; raw in the JSON) and density/coverage
    after the five lines; --bootstrap B adds a line per interval after them (the recall and coverage
    intervals are biased low: a resample holds ~63% distinct samples).

    \b
    Examples:
      evalkit score samples.npz imagenet256
      evalkit score samples.npz VIRTUAL_imagenet256_labeled.npz --json scores.json
      evalkit score samples.npz imagenet256 --metrics is,fid,sfid,pr,kid,dc --bootstrap 100
      evalkit score samples.npz imagenet256 --backend tf --device cpu
      torchrun --nproc_per_node=4 -m evalkit score samples.npz imagenet256
    """
    from evalkit.options import ScoreOptions

    # Bad option values fail here, before torch is imported or anything is read.
    name = extractor_name(backend, features_name)
    options = ScoreOptions(batch_size=batch_size, cache=not no_cache, progress=progress, exact_fid=exact_fid,
                           use_sample_stats=not recompute_sample_stats, **pop_metric_options(metric_kw))

    from evalkit.context import Context  # heavy imports after option parsing
    from evalkit.evaluate import build_extractor, evaluate, format_lines

    with warnings_to_stderr(), Context.create(device) as ctx:
        extractor = build_extractor(name, ctx, weights_path)
        result = evaluate(samples, ref, extractor, options, ctx)
        if not ctx.is_main:
            return
        for line in format_lines(result):
            click.echo(line)
        if json_out:
            try:
                atomic_write_text(json_out, json.dumps(result, indent=1) + "\n")
            except OSError as exc:
                raise InputError(f"--json {json_out}: cannot write the results file ({exc})") from exc
