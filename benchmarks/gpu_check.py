"""One short GPU check of evalkit (random weights, no downloads), each section in its own time-bounded
subprocess so that a failure or a hang in one prints and the next still runs.

Sections (printed side by side where there is a comparison):
* ``unet``: 64x64 and 256x256 ADM UNet (preset architectures) forward samples/s, float32 and float16 torso,
  evalkit's default attention ("auto") vs the same model with the reference's einsum attention, and the max
  abs difference of their outputs (informational: fused attention rounds differently on CUDA).
* ``inception``: evalkit's Inception port, images/s at 256^2 and 512^2, float32 with TF32 off.
* ``pr``: ``precision_recall(ref, sample, device="cuda")`` time at 50k samples x 10k references, and whether
  its values equal the CPU emulation's on the same features. The CPU side runs at ``--pr-cpu-samples`` x
  ``--pr-cpu-refs`` (default 10k x 10k; the GPU recomputes that size too), so the check fits the budget;
  ``--pr-cpu-samples 50000`` compares the full size when the CPU time allows.
* ``batch``: bit-identity of samples across batch sizes through evalkit's harness (``batch_fn_for`` with
  per-sample generators and ``FixedChunk``): the same indices sampled in one batch and in uneven batches,
  compared as uint8 images (the harness's output) and as float x_0 (the same pipeline, before to_uint8).

A check fails (exit status 1) if P/R differ from the CPU emulation, samples depend on the batch size, or a
section crashes or runs past its time bound. ``--cpu-smoke`` runs every section on the CPU at tiny sizes
(tiny UNet, small images and features) to prove the code paths work on a machine without a GPU.

    python benchmarks/gpu_check.py               # needs CUDA; about 5 minutes on one modern GPU
    python benchmarks/gpu_check.py --cpu-smoke   # any machine, about a minute
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("unet", "inception", "pr", "batch")
TINY_FLAGS = ("--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
              "--num_head_channels 16 --learn_sigma True --class_cond True --use_scale_shift_norm True "
              "--resblock_updown True --use_new_attention_order True")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, reps: int) -> float:
    """Median seconds of ``reps`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_unet(flags: str, device):
    """The diffusion network of ``flags`` with random non-zero weights (the reference zero-inits outputs)."""
    import torch

    from evalkit.flags import parse_flags
    from evalkit.models import build_from_parsed

    parsed = parse_flags(flags, "diffusion")
    model = build_from_parsed(parsed, device="cpu", use_fp16=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
    return model.to(device).eval(), parsed


def section_unet(opt, device) -> bool:
    import torch

    from evalkit.models import set_attention_backend
    from evalkit.presets import get_preset

    cases = ([("tiny 16x16", TINY_FLAGS, 2)] if opt.cpu_smoke else
             [("64x64_diffusion", get_preset("64x64_diffusion").readme_flags, 64),
              ("256x256_diffusion", get_preset("256x256_diffusion").readme_flags, 8)])
    print(f"  torch {torch.__version__}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
          f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} (torch defaults, as the reference samples)")
    for name, flags, batch in cases:
        model, parsed = _random_unet(flags, device)
        size = parsed.net["image_size"]
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        for half in ((False,) if device.type == "cpu" else (False, True)):
            if half:
                model.convert_to_fp16()
            rates, outs = {}, {}
            for backend in ("auto", "einsum"):
                set_attention_backend(model, backend)
                with torch.no_grad():
                    outs[backend] = model(x, t, y).float()
                    rates[backend] = batch / _timed(lambda: model(x, t, y), device, opt.reps)
            diff = float((outs["auto"] - outs["einsum"]).abs().max())
            print(f"  {name:<18} {'fp16' if half else 'fp32'} batch {batch:3d}: auto {rates['auto']:8.1f} "
                  f"samples/s (forwards), einsum {rates['einsum']:8.1f}, auto/einsum {rates['auto'] / rates['einsum']:.2f}x"
                  f"; 250-step sampling ~{rates['auto'] / 250:.2f} samples/s; max|auto - einsum| {diff:.1e}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return True


def section_inception(opt, device) -> bool:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_features import random_weights
    from evalkit.features.inception import InceptionExtractor
    from evalkit.runtime import no_tf32

    batch = 1 if opt.cpu_smoke else 64
    ex = InceptionExtractor(random_weights(), device=device, batch_size=batch)
    rng = np.random.default_rng(1)
    for size in ((80, 96) if opt.cpu_smoke else (256, 512)):
        images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)).to(device)
        with no_tf32():
            seconds = _timed(lambda: ex.forward_tensor(images), device, opt.reps)
        print(f"  inception {size}x{size} fp32 (TF32 off) batch {batch}: {batch / seconds:8.1f} images/s", flush=True)
    return True


def _features(n: int, dim: int, seed: int):
    """Nonnegative, correlated, Inception-like float32 features."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    return np.maximum(rng.normal(size=(n, dim)).astype(np.float32) @ mix, 0) + np.float32(0.1)


def section_pr(opt, device) -> bool:
    from evalkit.metrics import precision_recall

    dim = 64 if opt.cpu_smoke else 2048
    n_s, n_r = (500, 300) if opt.cpu_smoke else (50_000, 10_000)
    c_s, c_r = (300, 200) if opt.cpu_smoke else (opt.pr_cpu_samples, opt.pr_cpu_refs)
    sample, ref = _features(max(n_s, c_s), dim, 0), _features(max(n_r, c_r), dim, 1)
    start = time.perf_counter()
    full = precision_recall(ref[:n_r], sample[:n_s], device=device)
    _sync(device)
    print(f"  P/R {n_s} samples x {n_r} refs, {dim}-d, on {device}: {time.perf_counter() - start:.1f} s "
          f"-> precision {full[0]!r}, recall {full[1]!r}", flush=True)
    gpu = full if (c_s, c_r) == (n_s, n_r) else precision_recall(ref[:c_r], sample[:c_s], device=device)
    start = time.perf_counter()
    cpu = precision_recall(ref[:c_r], sample[:c_s], device=None)
    same = tuple(gpu) == tuple(cpu)
    print(f"  P/R {c_s} x {c_r} on {device}: {gpu}; CPU emulation ({time.perf_counter() - start:.1f} s): {cpu}; "
          f"{'EQUAL' if same else 'DIFFER (FAIL)'}", flush=True)
    return same


def section_batch(opt, device) -> bool:
    import numpy as np
    import torch

    from evalkit.diffusion import adm_denoiser, create_diffusion
    from evalkit.presets import get_preset
    from evalkit.samplers import sample
    from evalkit.sampling.adm import adm_batches
    from evalkit.sampling.chunk import FixedChunk
    from evalkit.sampling.noise import SampleNoise
    from evalkit.sampling.request import ModelSpec, SampleRequest

    flags = TINY_FLAGS if opt.cpu_smoke else get_preset("64x64_diffusion").readme_flags
    n, chunk, steps = (3, 2, "ddim3") if opt.cpu_smoke else (12, 8, "ddim10")
    model, parsed = _random_unet(flags, device)
    ok = True
    for half in ((False,) if device.type == "cpu" else (False, True)):
        if half:
            model.convert_to_fp16()
        size = parsed.net["image_size"]
        spec = ModelSpec(kind="diffusion", checkpoint="<random>", checkpoint_sha256="0" * 64, image_size=size,
                         class_cond=True, resolved_flags=dict(parsed.net), flags=flags, num_classes=1000)
        config = SampleRequest(model=spec, num_samples=n, seed=3, sampler="ddim", timestep_respacing=steps,
                               use_fp16=half, compute_chunk=chunk)
        settings = parsed.diffusion_settings()
        fn = adm_batches(config, device, model, settings)
        diffusion = create_diffusion(**{**settings, "timestep_respacing": config.timestep_respacing})
        net = FixedChunk(model, chunk)

        def floats(indices: range) -> torch.Tensor:  # adm_batches' pipeline, stopped before samples_to_uint8
            rng = SampleNoise(config.seed, indices, device)
            y = rng.labels(config.classes, config.num_classes)
            den = adm_denoiser(net, diffusion, clip_denoised=True, model_kwargs={"y": y})
            return sample(den, diffusion, rng.randn((3, size, size)), sampler="ddim", eta=0.0,
                          noise=rng.step_noise).float().cpu()

        splits = [range(0, 1), range(1, n)] if opt.cpu_smoke else [range(0, 3), range(3, n)]  # partial chunks
        one_u8, _ = fn(range(n))
        parts_u8 = np.concatenate([fn(r)[0] for r in splits])
        one_f = floats(range(n))
        parts_f = torch.cat([floats(r) for r in splits])
        same_u8 = np.array_equal(one_u8, parts_u8)
        same_f = torch.equal(one_f, parts_f)
        diff = float((one_f - parts_f).abs().max())
        print(f"  {n} samples, {'fp16' if half else 'fp32'}, {steps}, compute chunk {chunk}: batch {n} vs batches "
              f"{[len(r) for r in splits]}: uint8 {'identical' if same_u8 else 'DIFFER (FAIL)'}, float "
              f"{'identical' if same_f else f'DIFFER (FAIL, max abs {diff:.1e})'}; "
              f"images vary: {bool(one_u8.std() > 1)}", flush=True)
        ok &= same_u8 and same_f
    return ok


def run_section(opt) -> int:
    import torch

    device = torch.device("cpu" if opt.cpu_smoke else "cuda")
    torch.manual_seed(0)
    fn = {"unet": section_unet, "inception": section_inception, "pr": section_pr, "batch": section_batch}
    return 0 if fn[opt.section](opt, device) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the code paths)")
    ap.add_argument("--section", choices=SECTIONS, help="run one section in this process (internal)")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per measurement (median)")
    ap.add_argument("--pr-cpu-samples", type=int, default=10_000)
    ap.add_argument("--pr-cpu-refs", type=int, default=10_000)
    ap.add_argument("--timeout", type=int, nargs=4, default=(150, 60, 170, 90), metavar=("UNET", "INC", "PR", "BATCH"),
                    help="seconds per section")
    opt = ap.parse_args()
    if opt.section:
        return run_section(opt)
    if not opt.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: CUDA is unavailable here (torch {torch.__version__}); nothing measured. "
                  f"Run with --cpu-smoke to check the code paths on the CPU.")
            return 0
        print(f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    else:
        print("gpu_check --cpu-smoke: every section on the CPU at tiny sizes (code paths only, figures meaningless)")
    status = {}
    # A shared CPU is slow and noisy: the smoke run gets three times the bounds.
    limits = {k: v * (3 if opt.cpu_smoke else 1) for k, v in zip(SECTIONS, opt.timeout)}
    for name in opt.only:
        print(f"[{name}] (time bound {limits[name]} s)", flush=True)
        reps = 1 if opt.cpu_smoke else opt.reps
        cmd = [sys.executable, __file__, "--section", name, "--reps", str(reps),
               "--pr-cpu-samples", str(opt.pr_cpu_samples), "--pr-cpu-refs", str(opt.pr_cpu_refs)]
        start = time.perf_counter()
        try:
            rc = subprocess.run(cmd + (["--cpu-smoke"] if opt.cpu_smoke else []), timeout=limits[name]).returncode
            status[name] = "ok" if rc == 0 else ("check FAILED" if rc == 1 else f"crashed (exit {rc})")
        except subprocess.TimeoutExpired:
            status[name] = f"TIMED OUT after {limits[name]} s"
        print(f"[{name}] {status[name]} in {time.perf_counter() - start:.0f} s", flush=True)
    print("summary: " + json.dumps(status))
    return 0 if all(s == "ok" for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
