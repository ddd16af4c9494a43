"""`evalkit sample-and-score` and `evalkit sweep`: sample, score and record results rows.

Both take every option of `evalkit sample` (the very click options of `sample_cmd`, shared rather
than redefined; the sweep replaces --classifier-scale by --scales and --out by its own folder) plus
the scoring options. Everything else is `evalkit.sweep`.
"""

from __future__ import annotations

import json

import click

from evalkit.cli.group import main
from evalkit.cli.sample_cmd import (dry_run_device, refuse_gan_options, run_options, sample_command, sample_request,
                                    wants_gan)
from evalkit.cli.score_cmd import metric_options, pop_metric_options, warnings_to_stderr
from evalkit.errors import ConfigError


def sampling_options(exclude: tuple[str, ...] = ()):
    """Prepend the options of `evalkit sample` (except the parameter names in `exclude`) to a command."""

    def decorate(command: click.Command) -> click.Command:
        shared = [p for p in sample_command.params if p.name not in exclude]
        command.params[:0] = shared
        return command

    return decorate


def scoring_options(func):
    """--ref, --features, --inception, --feature-batch-size, --label, --exact-fid, and the metric options
    of `evalkit score` (--metrics, --bootstrap, ...)."""
    options = [
        click.option("--ref", required=True, metavar="REF",
                     help="Reference batch: an .npz path or a name such as imagenet256 (`evalkit ref list`)."),
        click.option("--features", "features_name", default=None, metavar="NAME",
                     help="Feature network from the registry (inception, inception-tf, digits, or one a module in "
                          "$EVALKIT_PLUGINS registers).  [default: inception]"),
        click.option("--inception", "weights_path", type=click.Path(exists=True, dir_okay=False), default=None,
                     metavar="PATH", help="Weights file of the feature network instead of the cached one."),
        click.option("--feature-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     metavar="N", help="Images per feature-network batch."),
        click.option("--label", default=None, metavar="TEXT",
                     help="Legend name of the rows in reports.  "
                          "[default: the preset, else the checkpoint's file name]"),
        click.option("--exact-fid", is_flag=True, default=False, show_default=True,
                     help="FID/sFID through scipy's sqrtm, as the reference (slow), instead of the eigenvalue form."),
    ]
    for option in reversed(options):
        func = option(func)
    return metric_options(func)


def _request(kw: dict, classifier_scale: float | None):
    """The request of the `evalkit sample` options in `kw` (a diffusion model's at `classifier_scale`)."""
    if wants_gan(kw):
        return sample_request(kw)
    return sample_request(kw, classifier_scale=classifier_scale)


def _preset_truncations(name: str | None) -> tuple[float, ...]:
    """The default truncation sweep of BigGAN preset `name` (the paper's for custom weights)."""
    from evalkit.presets import PAPER_TRUNCATIONS, get_biggan_preset

    return get_biggan_preset(name).truncations if name else PAPER_TRUNCATIONS


def _score_options(feature_batch_size: int, exact_fid: bool, kw: dict):
    """`ScoreOptions` of the scoring options; removes the metric options from `kw`."""
    from evalkit.options import ScoreOptions

    return ScoreOptions(batch_size=feature_batch_size, progress=not kw["quiet"], exact_fid=exact_fid,
                        **pop_metric_options(kw))


@sampling_options()
@main.command("sample-and-score", context_settings={"show_default": True})
@scoring_options
@click.option("--csv", "csv_path", type=click.Path(), default=None, metavar="FILE",
              help="Results CSV to append the row to (created when absent); a row with the same settings "
                   "(run_id) already there means nothing is sampled or scored.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, metavar="OUT",
              help="Metrics JSON (five numbers, labels, provenance, the row, the sampling config).  "
                   "[default: OUT_DIR/metrics.json]")
def sample_and_score_command(ref, features_name, weights_path, feature_batch_size, label, exact_fid, csv_path,
                             json_out, **kw):
    """Sample (sharded, resumable, like `evalkit sample`), score the samples against REF (like
    `evalkit score`), write the metrics JSON and append one row to --csv.

    Takes every option of `evalkit sample`. A classifier at --classifier-scale 0 is not used (the
    row is the unguided model's). A BigGAN-deep preset scores one --truncation. Rerunning the same command resumes the sampling, or does nothing
    when --csv already holds the row.

    \b
    Examples:
      evalkit sample-and-score --preset 64x64_diffusion --checkpoint 64x64_diffusion.pt \\
          --classifier 64x64_classifier.pt --classifier-scale 1.0 --num-samples 50000 \\
          --ref imagenet64 --out runs/adm64_s1 --csv results.csv
      evalkit sample-and-score --preset 64x64_diffusion --checkpoint 64x64_diffusion.pt \\
          --num-samples 10000 --timestep-respacing ddim25 --use-ddim --ref imagenet64 \\
          --out runs/ddim25 --json ddim25.json
      evalkit sample-and-score --preset biggan-deep-128 --truncation 1.0 --num-samples 50000 \\
          --ref imagenet128 --out runs/biggan128_t1 --csv results.csv
    """
    from evalkit.context import Context
    from evalkit.evaluate import build_extractor, format_lines
    from evalkit.refbatches import resolve_batch
    from evalkit.sweep import check_sweep_dir, done_run_ids, sample_and_score, unguided_if_zero

    # Everything that can be refused is checked before any sampling.
    score = _score_options(feature_batch_size, exact_fid, kw)
    check_sweep_dir(kw["out_dir"])
    resolve_batch(ref)
    done_run_ids(csv_path)
    request = unguided_if_zero(_request(kw, kw["classifier_scale"]))
    options = run_options(kw)
    if kw["dry_run"]:
        dev = dry_run_device(kw["device"])
        click.echo(json.dumps({"config": request.for_device(dev).to_dict(), "out": kw["out_dir"], "ref": ref,
                               "csv": csv_path, "features": features_name or "inception",
                               "batch_size": options.batch_size, "device": str(dev)}, indent=2, default=str))
        return
    with warnings_to_stderr(), Context.create(kw["device"]) as ctx:
        extractor = build_extractor(features_name, ctx.device, weights_path)
        result = sample_and_score(request, kw["out_dir"], ref, extractor, options, score, ctx, csv=csv_path,
                                  json_out=json_out, label=label)
        if not ctx.is_main:
            return
        if result.skipped:
            click.echo(f"run_id {result.row['run_id']} is already in {csv_path}; nothing to do")
            return
        for line in format_lines(result.metrics):
            click.echo(line)
        if csv_path:
            click.echo(f"appended run_id {result.row['run_id']} to {csv_path}", err=True)


@sampling_options(exclude=("classifier_scale", "out_dir", "truncation"))
@main.command("sweep", context_settings={"show_default": True})
@click.option("--scales", default=None, metavar="S1,S2,...",
              help="Diffusion models: classifier-guidance scales, comma-separated numbers >= 0 (0 = unguided, the "
                   "model alone; non-zero scales need --classifier). Required for them.")
@click.option("--truncations", default=None, metavar="T1,T2,...",
              help="BigGAN-deep presets: truncations in (0, 1], comma-separated, e.g. 0.1,0.2,...,1.0 (the "
                   "paper's figure).  [default: the preset's sweep; 0.1 to 1.0 for the biggan-deep presets]")
@click.option("--respacings", default=None, metavar="R1,R2,...",
              help="Also sweep the respaced steps: step counts or ddimN (ddimN samples with DDIM), e.g. "
                   "250,100,ddim25; the sweep runs every scale at every respacing.  "
                   "[default: --timestep-respacing only]")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="Also sweep the sampling seed: every setting once per seed (whole numbers >= 0, each once), "
                   "in seed-<S>/ folders; `evalkit report` shows the rows that differ only by seed as mean ± std.  "
                   "[default: --seed only]")
@click.option("--out", "sweep_dir", type=click.Path(), required=True, metavar="DIR",
              help="Sweep folder: one resumable sample store per setting (scale-2/, scale-2_steps-ddim25/, "
                   "truncation-0.5/, seed-1/scale-2/), each with its metrics.json.")
@click.option("--csv", "csv_path", type=click.Path(), required=True, metavar="FILE",
              help="Results CSV: one row per setting is appended (created when absent); rows already there are "
                   "skipped.")
@scoring_options
def sweep_command(scales, truncations, respacings, seeds, sweep_dir, csv_path, ref, features_name, weights_path,
                  feature_batch_size, label, exact_fid, **kw):
    """Sweep the classifier-guidance scale (and optionally the respaced steps) of a diffusion checkpoint,
    or the truncation of a BigGAN-deep generator (optionally × sampling seeds): sample, score and
    append one results row per setting, for `evalkit report`.

    Takes every option of `evalkit sample` except --classifier-scale, --truncation and --out. The reference's
    features are computed once for the whole sweep (feature cache). Rerunning the same command
    skips the rows already in --csv and resumes a half-finished setting from its shards; rows are
    appended atomically, so a kill never leaves a broken CSV.

    \b
    Examples:
      evalkit sweep --preset 256x256_diffusion --checkpoint 256x256_diffusion.pt \\
          --classifier 256x256_classifier.pt --scales 0,0.5,1,2,4,10 --num-samples 10000 \\
          --ref imagenet256 --out runs/sweep256 --csv results.csv
      evalkit sweep --preset 64x64_diffusion --checkpoint 64x64_diffusion.pt \\
          --classifier 64x64_classifier.pt --scales 0,1 --respacings 250,100,ddim25 \\
          --num-samples 10000 --ref imagenet64 --out runs/steps64 --csv results.csv
      evalkit sweep --preset biggan-deep-128 --truncations 0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0 \\
          --num-samples 10000 --ref imagenet128 --out runs/biggan128 --csv results.csv
      evalkit sweep --preset 64x64_diffusion --checkpoint 64x64_diffusion.pt \\
          --classifier 64x64_classifier.pt --scales 0,1 --seeds 0,1,2 --metrics is,fid,sfid,pr,kid \\
          --num-samples 10000 --ref imagenet64 --out runs/seeds64 --csv results.csv
      evalkit report results.csv --baseline biggan-deep --out reports/sweep256
    """
    from evalkit.context import Context
    from evalkit.evaluate import build_extractor
    from evalkit.refbatches import resolve_batch
    from evalkit.sweep import (SweepPlan, check_sweep_dir, done_run_ids, parse_respacings, parse_scales,
                               parse_seeds, parse_truncations, run_sweep)

    # Everything that can be refused is checked before any sampling.
    score = _score_options(feature_batch_size, exact_fid, kw)
    seed_list = parse_seeds(seeds)
    if seed_list and click.get_current_context().get_parameter_source("seed") != click.core.ParameterSource.DEFAULT:
        raise ConfigError("give --seed (one seed) or --seeds (a list), not both")
    if wants_gan(kw):
        truncation_list = parse_truncations(truncations) if truncations is not None else None
        check_sweep_dir(sweep_dir)
        resolve_batch(ref)
        done_run_ids(csv_path)
        base = _request(kw, None)  # refuses --scales, --respacings and every other diffusion option
        plan = SweepPlan.of(base, truncations=truncation_list if truncation_list is not None
                            else _preset_truncations(base.model.preset), seeds=seed_list or None)
    else:
        refuse_gan_options(kw)
        if scales is None:
            raise ConfigError("--scales is required for a diffusion model (comma-separated guidance scales such "
                              "as 0,1,2,4); --truncations is for BigGAN-deep presets")
        scale_list = parse_scales(scales)
        respacing_list = parse_respacings(respacings)
        if respacing_list and kw["timestep_respacing"] is not None:
            raise ConfigError("give --timestep-respacing (one respacing) or --respacings (a list), not both")
        check_sweep_dir(sweep_dir)
        resolve_batch(ref)
        done_run_ids(csv_path)
        if kw["classifier"] is None and any(scale_list):
            raise ConfigError(f"--scales {scales}: non-zero guidance scales need a classifier (--classifier PATH); "
                              f"without one only --scales 0 (unguided) can be swept")
        plan = SweepPlan.of(_request(kw, max(scale_list) if kw["classifier"] else None), scale_list,
                            respacing_list or None, seeds=seed_list or None)
    options = run_options(kw)
    if kw["dry_run"]:
        dev = dry_run_device(kw["device"])
        click.echo(json.dumps({"settings": {name: r.for_device(dev).to_dict() for name, r in plan.settings()},
                               "out": sweep_dir, "csv": csv_path, "ref": ref,
                               "features": features_name or "inception", "batch_size": options.batch_size,
                               "device": str(dev)}, indent=2, default=str))
        return
    with warnings_to_stderr(), Context.create(kw["device"]) as ctx:
        extractor = build_extractor(features_name, ctx.device, weights_path)
        table = run_sweep(plan, ref, sweep_dir, csv_path, extractor, options, score, ctx, label=label)
        if ctx.is_main:
            click.echo(f"{len(table)} rows of this sweep in {csv_path} (render them: evalkit report {csv_path} "
                       f"--out reports/NAME)")
