"""`evalkit sample` / `evalkit upsample` as library calls: request → generator(s) → sample store(s).

A request is a `SampleRequest` (ADM, optionally a cascade) or a `BigGANRequest` (BigGAN-deep);
`base_generator` picks the generator of its base store.
"""

from __future__ import annotations

import os
from pathlib import Path

from evalkit import runstore
from evalkit.context import Context
from evalkit.errors import RunDirectoryError
from evalkit.generator import Generator, SampleRun, check_device, run_stage
from evalkit.options import RunOptions
from evalkit.sampling.adm import ADMSampler, Upsampler
from evalkit.sampling.biggan import BigGANRequest, BigGANSampler
from evalkit.sampling.request import SampleRequest, UpsampleRequest

#: What `run_sampling` accepts.
Request = SampleRequest | BigGANRequest


def base_generator(request: Request) -> Generator:
    """The generator of `request`'s base store (device-resolved requests)."""
    return BigGANSampler(request) if isinstance(request, BigGANRequest) else ADMSampler(request)


def base_dir(request: Request, out_dir: str | os.PathLike) -> Path:
    """Where the base store of `request` lives: `out_dir`, or ``out_dir/base`` in a cascade."""
    return Path(out_dir) / "base" if request.upsampler else Path(out_dir)


def check_store(request: Request, out_dir: str | os.PathLike, ctx: Context) -> None:
    """Refuse an `out_dir` holding another run (or one started on another device type), before sampling."""
    d = base_dir(request, out_dir)
    gen = base_generator(request.for_device(ctx.device))
    manifest = runstore.check_run_dir(d, gen.kind, gen.settings())
    check_device(d, manifest, ctx.device)


def run_sampling(request: Request, out_dir: str | os.PathLike, options: RunOptions = RunOptions(),
                 ctx: Context | None = None) -> SampleRun:
    """Generate ``request.num_samples`` samples into `out_dir` (resumable; every process of `ctx`).

    Without an upsampler the store is `out_dir` itself; with one, ``out_dir/base`` and
    ``out_dir/upsampled`` (the returned run is the upsampled one, with ``.base`` set).
    Returns a SampleRun whose ``npz_path`` is the evaluator-compatible npz.
    """
    ctx = ctx or Context.local()
    request = request.for_device(ctx.device)
    out_dir = Path(out_dir)
    if request.upsampler:
        if (out_dir / runstore.MANIFEST).exists():
            raise RunDirectoryError(f"--out {out_dir} holds a run without an upsampler; a cascade writes "
                                    f"base/ and upsampled/ stores, use another --out directory")
        # Refuse a mismatching upsampled store before spending time on the base stage.
        up_manifest = runstore.check_run_dir(out_dir / "upsampled", "upsample", request.cascade_settings())
        check_device(out_dir / "upsampled", up_manifest, ctx.device)
    base_run = run_stage(base_generator(request), base_dir(request, out_dir), options, ctx)
    if not request.upsampler:
        return base_run
    record = {"base_samples": str(base_run.npz_path), "num_samples": request.num_samples,
              "upsampler": request.to_dict()["upsampler"]}
    stage = Upsampler(request.upsampler, str(base_run.npz_path), request.num_samples,
                      request.cascade_settings(), record)
    up_run = run_stage(stage, out_dir / "upsampled", options, ctx)
    up_run.base = base_run
    return up_run


def run_upsampling(request: UpsampleRequest, out_dir: str | os.PathLike, options: RunOptions = RunOptions(),
                   ctx: Context | None = None) -> SampleRun:
    """Upsample the first ``request.num_samples`` base samples into `out_dir` (resumable)."""
    ctx = ctx or Context.local()
    request = request.for_device(ctx.device)
    stage = Upsampler(request.upsampler, request.base_samples, request.num_samples, request.settings(),
                      request.to_dict())
    return run_stage(stage, out_dir, options, ctx)
