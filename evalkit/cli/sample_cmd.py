"""`evalkit sample` and `evalkit upsample`: the sampling harness (deterministic, sharded, resumable).

Options are parsed here into values (`SampleArgs` → `SampleRequest` for diffusion models,
`BigGANArgs` → `BigGANRequest` for BigGAN-deep presets, `RunOptions`, one `Context`); everything
else is `evalkit.sampling`. `sample_request` picks the family and refuses options of the other one. Under ``torchrun`` every rank runs the same command; rank 0
prints and assembles the final npz.
"""

from __future__ import annotations

import json

import click

from evalkit.cli.group import main
from evalkit.errors import ConfigError
from evalkit.presets import BIGGAN_PRESETS, PRESETS
from evalkit.sampling.defaults import COMPUTE_CHUNK


def _names(kind: str) -> list[str]:
    return sorted(n for n, p in PRESETS.items() if p.kind == kind)


class PresetChoice(click.Choice):
    """click.Choice over the presets registered when the command line is parsed (not when the CLI
    module was imported), so presets registered later (plugins, tests, the demo) are accepted."""

    def __init__(self, kind: str, gans: bool = False):
        self.kind, self.gans = kind, gans
        super().__init__([], case_sensitive=True)

    @property
    def choices(self):  # type: ignore[override]
        return tuple(_names(self.kind) + (sorted(BIGGAN_PRESETS) if self.gans else []))

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass


#: Options of `evalkit sample` / `sweep` that apply to diffusion models only (parameter names).
DIFFUSION_ONLY: tuple[str, ...] = (
    "model_flags", "timestep_respacing", "use_ddim", "eta", "clip_denoised", "classifier", "classifier_preset",
    "classifier_flags", "classifier_scale", "use_fp16", "upsampler", "upsampler_flags", "upsampler_checkpoint",
    "upsampler_respacing", "upsampler_seed", "scales", "respacings")
#: Options that apply to GANs only.
GAN_ONLY: tuple[str, ...] = ("truncation", "truncations", "config")


def given_options(names) -> list[str]:
    """The options among parameter `names` that the current command line sets explicitly, spelled as
    in --help (``--use-ddim/--no-use-ddim``); defaults do not count."""
    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params}
    found = []
    for name in names:
        source = ctx.get_parameter_source(name) if name in params else None
        if source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP):
            p = params[name]
            found.append("/".join([*p.opts, *p.secondary_opts]))
    return found


def wants_gan(kw: dict) -> bool:
    """A BigGAN preset, or neither a diffusion preset nor --model-flags but --config or --truncation."""
    if kw.get("preset") in BIGGAN_PRESETS:
        return True
    if kw.get("preset") or kw.get("model_flags"):
        return False
    return bool(given_options(("config", "truncation", "truncations")))


def sample_request(kw: dict, **overrides):
    """The request of the `evalkit sample` options in click's keywords `kw` (then `overrides`).

    A BigGAN-deep generator (`wants_gan`) gets a `BigGANRequest`; any diffusion-only option given
    with it, or a GAN-only option given to a diffusion model, raises ConfigError naming it.
    """
    if wants_gan(kw):
        from evalkit.sampling.biggan import BigGANArgs, make_biggan_request

        bad = given_options(DIFFUSION_ONLY)
        if bad:
            what = kw.get("preset") or kw.get("checkpoint") or "the generator"
            raise ConfigError(f"{', '.join(bad)}: diffusion-model option(s) given to {what}, a BigGAN-deep "
                              f"generator (it takes --truncation, --classes, --seed, --checkpoint, --config)")
        return make_biggan_request(BigGANArgs.from_kwargs(kw, **overrides))
    from evalkit.sampling.request import SampleArgs, make_request

    refuse_gan_options(kw)
    return make_request(SampleArgs.from_kwargs(kw, **overrides))


def refuse_gan_options(kw: dict) -> None:
    """ConfigError naming the GAN-only options given to a diffusion model (none given: nothing)."""
    bad = given_options(GAN_ONLY)
    if bad:
        what = (kw.get("preset") or "--model-flags") if (kw.get("preset") or kw.get("model_flags")) else "this model"
        raise ConfigError(f"{', '.join(bad)}: GAN option(s) given to {what}, a diffusion model; truncation "
                          f"applies to BigGAN-deep presets (guide a diffusion model with --classifier-scale)")


def _common_run_options(func):
    """--batch-size, --seed, --out, --device, --fp16, --keep-shards, --dry-run, --quiet."""
    options = [
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, metavar="B",
                     help="Samples per forward batch on each process (does not change the images' noise; "
                          "may differ when resuming)."),
        click.option("--compute-chunk", type=click.IntRange(min=1), default=COMPUTE_CHUNK, show_default=True,
                     metavar="C", help="Samples per network call (the last call of a batch is padded). Images "
                                       "are bit-identical for any --batch-size with the same C; larger C is "
                                       "faster on GPUs. Part of the run's settings."),
        click.option("--seed", type=int, default=0, show_default=True, metavar="S",
                     help="Sample i draws its label, x_T and step noise from the generator (S, i)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, metavar="DIR",
                     help="Run directory: manifest.json, shards/ and the final samples_<N>x<H>x<W>x3.npz. "
                          "Rerunning the same command into it resumes."),
        click.option("--device", default="auto", show_default=True, metavar="DEVICE",
                     help="auto, cpu, cuda or cuda:N (under torchrun, auto picks each rank's GPU)."),
        click.option("--fp16/--no-fp16", "use_fp16", default=None, show_default=False,
                     help="UNet torso in float16.  [default: the checkpoint's use_fp16 flag on CUDA, "
                          "float32 on CPU]"),
        click.option("--keep-shards", is_flag=True, default=False, show_default=True,
                     help="Keep shards/ after the final npz is written (else they are deleted)."),
        click.option("--dry-run", is_flag=True, default=False, show_default=True,
                     help="Print the resolved configuration as JSON and stop."),
        click.option("--quiet", "-q", is_flag=True, default=False, show_default=True,
                     help="No progress bar (the summary line is still printed)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_options(kw: dict):
    """`RunOptions` from the options of `_common_run_options` in click's keywords `kw`."""
    from evalkit.options import RunOptions

    return RunOptions(batch_size=kw["batch_size"], progress=not kw["quiet"], keep_shards=kw["keep_shards"])


def dry_run_device(device: str):
    """The device a run would use (resolved without joining a torchrun job)."""
    from evalkit.context import Context

    return Context.local(device).device


def _dry_run(request, out_dir: str, batch_size: int, device: str) -> None:
    dev = dry_run_device(device)
    payload = {"config": request.for_device(dev).to_dict(), "out": out_dir, "batch_size": batch_size,
               "device": str(dev)}
    click.echo(json.dumps(payload, indent=2, default=str))


def _echo_summary(run, ctx) -> None:
    if not ctx.is_main:
        return
    if run.base is not None:
        click.echo(run.base.summary())
    click.echo(run.summary())


@main.command("sample", context_settings={"show_default": True})
@click.option("--preset", type=PresetChoice("diffusion", gans=True), default=None, metavar="NAME",
              help="Diffusion preset (its paper sampling settings are the defaults) or BigGAN-deep preset such "
                   "as biggan-deep-128 (`evalkit presets`).")
@click.option("--model-flags", default=None, metavar='"FLAGS"',
              help='guided-diffusion MODEL_FLAGS of a custom checkpoint instead of --preset, e.g. '
                   '"--image_size 64 --num_channels 128 --learn_sigma True".')
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Diffusion weights (.pt state dict or .npz), or BigGAN-deep weights "
                   "(biggan-deep-<res>-pytorch_model.bin).  [default: the preset's bundled or fetched file]")
@click.option("--config", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="BigGAN-deep config JSON of --checkpoint.  [default: the preset's, else the file beside the "
                   "weights (X-config.json)]")
@click.option("--truncation", type=float, default=None, metavar="T",
              help="BigGAN-deep only: truncation in (0, 1] of the latents z (truncated normal on [-2, 2] times T) "
                   "and of the batch-norm statistics.  [default: 1.0]")
@click.option("--num-samples", type=int, required=True, metavar="N", help="Number of samples to generate.")
@click.option("--timestep-respacing", default=None, metavar="SPEC",
              help='Respaced steps: "250", "ddim25", "10,20,30".  [default: the preset\'s paper setting]')
@click.option("--use-ddim/--no-use-ddim", default=None,
              help="DDIM instead of ancestral sampling.  [default: the preset's paper setting]")
@click.option("--eta", type=click.FloatRange(0.0, 1.0), default=0.0, metavar="ETA",
              help="DDIM eta (0 = deterministic given x_T); needs --use-ddim.")
@click.option("--clip-denoised/--no-clip-denoised", default=True, help="Clamp predicted x_0 to [-1, 1].")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Noisy classifier weights for classifier guidance (needs a scale).")
@click.option("--classifier-preset", type=PresetChoice("classifier"), default=None, metavar="NAME",
              help="Classifier architecture.  [default: the diffusion preset's classifier]")
@click.option("--classifier-flags", default=None, metavar='"FLAGS"',
              help="guided-diffusion classifier flags instead of --classifier-preset.")
@click.option("--classifier-scale", type=float, default=None, metavar="S",
              help="Guidance scale s (0 = unguided).  [default: the preset's paper scale when --classifier is given]")
@click.option("--classes", default=None, metavar="LABELS",
              help='Allowed class labels: "3", "1,5,7" or a range "0-9"; each sample draws one uniformly.  '
                   '[default: all classes]')
@click.option("--upsampler", type=PresetChoice("upsampler"), default=None, metavar="PRESET",
              help="Also upsample every sample with this upsampler preset (cascade: base/ and upsampled/).")
@click.option("--upsampler-flags", default=None, metavar='"FLAGS"',
              help="guided-diffusion super-res flags instead of --upsampler.")
@click.option("--upsampler-checkpoint", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Upsampler weights.  [default: the upsampler preset's bundled or fetched file]")
@click.option("--upsampler-respacing", default=None, metavar="SPEC",
              help="Respaced steps of the upsampler (always ancestral).  [default: the upsampler preset's]")
@click.option("--upsampler-seed", type=int, default=None, metavar="S",
              help="Upsampled sample i uses generator (S, i).  [default: --seed + 1]")
@_common_run_options
def sample_command(out_dir, device, dry_run, **kw):
    """Generate samples into a resumable run directory; the result is an evaluator-compatible npz.

    Sample i uses its own random generator (seed, i), drawn on the CPU, so the images' noise does
    not depend on the batch size, the number of processes, the device or where a run was resumed.
    Finished batches are written as shards; rerunning the same command skips them (on the same
    device type). Several GPUs or machines: launch with `torchrun --nproc_per_node=K -m evalkit sample ...`.

    A BigGAN-deep preset (or --checkpoint with its --config) samples the same way: sample i draws its
    label and z from (seed, i); --truncation sets the truncation. Guidance, respacing and other
    diffusion options are refused for it, and --truncation for diffusion models.

    \b
    Examples:
      evalkit sample --preset 64x64_diffusion --checkpoint 64x64_diffusion.pt \\
          --classifier 64x64_classifier.pt --num-samples 50000 --batch-size 256 --out runs/adm64
      evalkit sample --preset 128x128_diffusion --checkpoint 128x128_diffusion.pt \\
          --timestep-respacing ddim25 --use-ddim --num-samples 1000 --out runs/ddim25
      evalkit sample --preset 64x64_diffusion --checkpoint 64x64_diffusion.pt --classes 0-9 \\
          --upsampler 64_256_upsampler --upsampler-checkpoint 64_256_upsampler.pt --num-samples 100 --out runs/cascade
      torchrun --nproc_per_node=8 -m evalkit sample --preset 256x256_diffusion \\
          --checkpoint 256x256_diffusion.pt --num-samples 50000 --out runs/adm256
      evalkit weights fetch biggan-deep-128
      evalkit sample --preset biggan-deep-128 --truncation 0.5 --num-samples 50000 --out runs/biggan128_t0.5
    """
    from evalkit.context import Context
    from evalkit.sampling.run import run_sampling

    request = sample_request(kw)
    options = run_options(kw)
    if dry_run:
        _dry_run(request, out_dir, options.batch_size, device)
        return
    with Context.create(device) as ctx:
        _echo_summary(run_sampling(request, out_dir, options, ctx), ctx)


@main.command("upsample", context_settings={"show_default": True})
@click.argument("lowres", type=click.Path(), metavar="LOWRES.npz")
@click.option("--preset", type=click.Choice(_names("upsampler")), default=None, metavar="NAME",
              help="Upsampler preset, e.g. 64_256_upsampler.")
@click.option("--flags", default=None, metavar='"FLAGS"',
              help="guided-diffusion super-res flags of a custom upsampler instead of --preset.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Upsampler weights.  [default: the preset's bundled or fetched file]")
@click.option("--timestep-respacing", default=None, metavar="SPEC",
              help="Respaced steps (always ancestral sampling).  [default: the preset's paper setting]")
@click.option("--num-samples", type=int, default=None, metavar="N",
              help="Upsample only the first N base samples.  [default: all]")
@_common_run_options
def upsample_command(lowres, out_dir, device, dry_run, **kw):
    """Upsample existing base samples (npz with arr_0 uint8 [N, h, w, 3], labels in arr_1).

    The low-res conditioning is exactly the reference's: uint8 / 127.5 - 1 at the stored size
    (h must equal the upsampler's small_size), labels from arr_1 for class-conditional models,
    ancestral sampling. Upsampled sample i uses generator (seed, i).

    \b
    Examples:
      evalkit upsample runs/adm64/samples_50000x64x64x3.npz --preset 64_256_upsampler \\
          --checkpoint 64_256_upsampler.pt --out runs/adm64_256
      torchrun --nproc_per_node=8 -m evalkit upsample base.npz --preset 128_512_upsampler \\
          --checkpoint 128_512_upsampler.pt --batch-size 8 --out runs/up512
    """
    from evalkit.context import Context
    from evalkit.sampling.request import UpsampleArgs, make_upsample_request
    from evalkit.sampling.run import run_upsampling

    request = make_upsample_request(UpsampleArgs.from_kwargs(kw, base_samples=lowres))
    options = run_options(kw)
    if dry_run:
        _dry_run(request, out_dir, options.batch_size, device)
        return
    with Context.create(device) as ctx:
        _echo_summary(run_upsampling(request, out_dir, options, ctx), ctx)
