"""Throughput of the sampling harness vs the bare sampler loop on the same network.

The harness (`evalkit.generator.run_stage` + `evalkit.sampling.adm.adm_batches`) adds per-sample generators (one
[C,H,W] draw per sample and step instead of one batched draw), label draws, atomic shard writes
and the final streamed npz. The bare loop is what the reference script does per batch:
batched `randn` x_T, `samplers.sample` with the default `randn_like` noise, `samples_to_uint8`, keep
the arrays in memory. Both run in the same process on the same network, interleaved, and the
median of several repeats is reported, so the ratio is robust to a busy machine.

    python benchmarks/bench_sample.py                 # CPU, tiny random-weight UNet
    python benchmarks/bench_sample.py --gpu           # 64x64_diffusion architecture, random weights,
                                                      # float16 torso, 250 steps and ddim25 (needs CUDA)

Prints one line per measurement and the overhead ratios harness/bare (goal: <= 1.05) of wall time
and of process CPU time (the latter is what to read on a shared CPU machine with --threads 1; on a
GPU, wall time is what counts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evalkit.diffusion import create_diffusion, adm_denoiser, samples_to_uint8
from evalkit.flags import parse_flags
from evalkit.context import Context
from evalkit.generator import run_stage
from evalkit.options import RunOptions
from evalkit.sampling.adm import ADMSampler, adm_batches
from evalkit.sampling.request import ModelSpec, SampleRequest
from evalkit.models import build_from_parsed
from evalkit.presets import get_preset
from evalkit.samplers import sample

TINY_FLAGS = ("--image_size 16 --num_channels 64 --num_res_blocks 2 --channel_mult 1,2 --attention_resolutions 8 "
              "--num_head_channels 32 --learn_sigma True --class_cond True --num_classes 1000")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, diffusion, device, num_samples, batch_size, size, sampler,
              num_classes=1000) -> tuple[float, float]:
    """(wall, CPU) seconds for the reference-style loop: batched randn, sample, samples_to_uint8, keep in memory."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    images = []
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        y = torch.randint(0, num_classes, (b,), device=device)
        x_T = torch.randn(b, 3, size, size, device=device)
        den = adm_denoiser(model, diffusion, clip_denoised=True, model_kwargs={"y": y})
        images.append(samples_to_uint8(sample(den, diffusion, x_T, sampler=sampler)))
    np.concatenate(images)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


class PreloadedSampler(ADMSampler):
    """The ADM generator around a network already in memory (no checkpoint file)."""

    def __init__(self, request: SampleRequest, model, settings):
        super().__init__(request)
        self._model, self._settings = model, settings

    def prepare(self, ctx: Context) -> None:
        self._fn = adm_batches(self.request, ctx.device, self._model, self._settings)


def harness(config, model, settings, device, batch_size, out_dir: Path) -> tuple[float, float]:
    """(wall, CPU) seconds for run_stage (per-sample generators, shards, final npz) into a fresh directory."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    run_stage(PreloadedSampler(config, model, settings), out_dir, RunOptions(batch_size=batch_size, progress=False),
              Context.local(device))
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def random_model(flags: str, device: torch.device, use_fp16: bool):
    """The network of ``flags`` with random non-zero weights (the reference zero-inits output layers)."""
    parsed = parse_flags(flags, "diffusion")
    model = build_from_parsed(parsed, device=device, use_fp16=False)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.device))
    if use_fp16:
        model.convert_to_fp16()
    return model.eval(), parsed


def measure(model, parsed, flags: str, device: torch.device, use_fp16: bool, num_samples: int, batch_size: int,
            respacing: str, sampler: str, repeats: int, label: str, warmup: bool = True) -> None:
    settings = parsed.diffusion_settings()
    diffusion = create_diffusion(**{**settings, "timestep_respacing": respacing})
    size = parsed.net["image_size"]
    spec = ModelSpec(kind="diffusion", checkpoint="<random>", checkpoint_sha256="0" * 64, image_size=size,
                     class_cond=True, resolved_flags=dict(parsed.net), flags=flags, num_classes=1000)
    # Network calls of the same shape as the bare loop's (--compute-chunk = batch size): this measures
    # the harness's own cost, not the padding a smaller batch than the chunk would add.
    config = SampleRequest(model=spec, num_samples=num_samples, seed=0, sampler=sampler,
                            timestep_respacing=respacing, use_fp16=use_fp16, compute_chunk=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        if warmup:  # allocator, cuDNN autotuning, lazy imports: one batch of each
            bare_loop(model, diffusion, device, batch_size, batch_size, size, sampler)
            harness(dataclass_replace(config, num_samples=batch_size), model, settings, device, batch_size,
                    Path(tmp) / "warm")
        bare, ours = [], []
        for k in range(repeats):
            bare.append(bare_loop(model, diffusion, device, num_samples, batch_size, size, sampler))
            ours.append(harness(config, model, settings, device, batch_size, Path(tmp) / f"r{k}"))
    b, h = statistics.median(t for t, _ in bare), statistics.median(t for t, _ in ours)
    # Process CPU time is robust to other processes on a shared machine (CPU mode, one thread).
    bc, hc = statistics.median(c for _, c in bare), statistics.median(c for _, c in ours)
    print(f"{label}: {num_samples} samples, batch {batch_size}, {respacing} {sampler}, {device.type}"
          f"{' fp16' if use_fp16 else ''}: bare {num_samples / b:.2f} samples/s, harness {num_samples / h:.2f} "
          f"samples/s; harness/bare wall time = {h / b:.3f}, process CPU time = {hc / bc:.3f} "
          f"(medians of {repeats}; wall bare {[round(t, 2) for t, _ in bare]} s, harness "
          f"{[round(t, 2) for t, _ in ours]} s)", flush=True)


def dataclass_replace(config, **kw):
    import dataclasses

    return dataclasses.replace(config, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="run the 64x64_diffusion architecture on CUDA in fp16")
    ap.add_argument("--num-samples", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="GPU mode: device (cpu only for a smoke check)")
    ap.add_argument("--fp32", action="store_true", help="GPU mode: float32 instead of the fp16 torso")
    ap.add_argument("--model-flags", default=None,
                    help="GPU mode: other architecture flags (default: the 64x64_diffusion preset's)")
    ap.add_argument("--skip-250", action="store_true", help="GPU mode: only ddim25")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU mode)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.gpu:
        cpu = torch.device("cpu")
        model, parsed = random_model(TINY_FLAGS, cpu, False)
        measure(model, parsed, TINY_FLAGS, cpu, False, args.num_samples or 32, args.batch_size or 8, "20",
                "ancestral", args.repeats, "cpu tiny")
        return 0
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--gpu: no CUDA device here; nothing measured", file=sys.stderr)
        return 1
    half = not args.fp32
    flags = args.model_flags or get_preset("64x64_diffusion").readme_flags
    bs = args.batch_size or 256
    n = args.num_samples or bs
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    model, parsed = random_model(flags, dev, half)
    measure(model, parsed, flags, dev, half, n, bs, "ddim25", "ddim", args.repeats, "64x64 ddim25")
    if not args.skip_250:
        measure(model, parsed, flags, dev, half, n, bs, "250", "ancestral", 1, "64x64 250 steps", warmup=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
