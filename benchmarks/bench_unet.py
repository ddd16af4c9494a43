"""Forward latency of the ADM UNet with torch's fused SDPA attention vs the straightforward einsum
attention of the reference implementation (openai/guided-diffusion 22e0df8, QKVAttention), measured in
one run on the same random-weight model and inputs.

Default: the ``64x64_diffusion`` architecture (296M parameters, new attention order), batch 4, float32,
CPU. ``--device cuda`` runs the GPU variant in float16 (torso converted like the reference's use_fp16).
Backends (``evalkit.models.set_attention_backend``): ``einsum`` (baseline), ``sdpa`` (the default; on
CPU held to torch's math kernel, the reference's own arithmetic), ``sdpa_fused`` (every SDPA
kernel allowed). Prints per-backend median latency, the ratio to einsum and the max abs output difference.

Examples:
  python benchmarks/bench_unet.py                       # CPU, float32, 3 timed repetitions
  python benchmarks/bench_unet.py --device cuda --reps 20
  python benchmarks/bench_unet.py --preset 256x256_diffusion --batch 2 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from evalkit.models import build, num_params, set_attention_backend
from evalkit.presets import get_preset
from evalkit.runtime import resolve_device


def _forward_seconds(model, x, t, kwargs, device) -> float:
    """Wall-clock seconds of one no-grad forward (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(x, t, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="64x64_diffusion", help="diffusion/upsampler preset architecture")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per backend")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per backend")
    parser.add_argument("--fp16", choices=("auto", "yes", "no"), default="auto",
                        help="torso in float16 (auto: on CUDA only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    opt = parser.parse_args()

    device = resolve_device(opt.device)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    preset = get_preset(opt.preset)
    if preset.kind == "classifier":
        raise SystemExit("bench_unet times UNets; pick a diffusion or upsampler preset")
    half = opt.fp16 == "yes" or (opt.fp16 == "auto" and device.type == "cuda")
    torch.manual_seed(0)
    model = build(preset, device="cpu").to(device)
    for p in model.parameters():  # random weights everywhere (the reference zero-inits output layers)
        if p.ndim > 1:
            torch.nn.init.normal_(p, std=p[0].numel() ** -0.5)
    if half:
        model.convert_to_fp16()
    size, n = preset.image_size, opt.batch
    x = torch.randn(n, 3, size, size, device=device)
    t = torch.randint(0, 1000, (n,), device=device)
    kwargs = {}
    if preset.class_cond:
        kwargs["y"] = torch.randint(0, 1000, (n,), device=device)
    if preset.kind == "upsampler":
        kwargs["low_res"] = torch.randn(n, 3, preset.small_size, preset.small_size, device=device).clamp(-1, 1)

    print(f"{preset.name}: {num_params(model) / 1e6:.1f}M params, batch {n}, {size}x{size}, device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}),"
          f" torso {'float16' if half else 'float32'}, torch {torch.__version__}")
    backends = ("einsum", "sdpa", "sdpa_fused")
    times: dict[str, list[float]] = {b: [] for b in backends}
    outputs = {}
    for b in backends:  # warm-up, and the outputs to compare
        set_attention_backend(model, b)
        for _ in range(opt.warmup):
            _forward_seconds(model, x, t, kwargs, device)
        with torch.no_grad():
            outputs[b] = model(x, t, **kwargs).float()
    for _ in range(opt.reps):  # interleaved, so load drift on a shared machine hits both alike
        for b in backends:
            set_attention_backend(model, b)
            times[b].append(_forward_seconds(model, x, t, kwargs, device))
    results = {b: statistics.median(times[b]) for b in backends}
    for b in backends:
        diff = float((outputs[b] - outputs["einsum"]).abs().max())
        print(f"  {b:<10} median {results[b] * 1e3:9.1f} ms  (min {min(times[b]) * 1e3:.1f}, {opt.reps} reps)  "
              f"einsum/{b} = {results['einsum'] / results[b]:.2f}x  max|out - out_einsum| = {diff:.2e}")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
