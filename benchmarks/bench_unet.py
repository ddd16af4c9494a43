"""Forward latency of evalkit's ADM UNet against the reference implementation, on the same random weights
and inputs, in one run, with an exactness check.

Baseline, in order of preference:
* ``--reference PATH``: openai/guided-diffusion's own ``UNetModel`` / ``SuperResModel``, imported by path
  from the checkout at PATH (its ``guided_diffusion`` package; nothing is copied). evalkit's weights are
  loaded into it strictly (the state-dict keys are the reference's).
* otherwise: the same evalkit model with every attention layer replaced by the reference's einsum
  formulation, written out in this file (q and k each scaled by ch^-1/4, softmax in float32).

evalkit runs with its default attention backend (``"auto"``: per device, the fastest kernel that keeps the
reference's outputs); ``--backends`` adds others (``evalkit.models.ATTENTION_BACKENDS``). Forwards are
interleaved (baseline, evalkit, baseline, ...) so load drift on a shared machine hits all alike. Prints the
median and min wall time and process CPU time of each, the speed ratio baseline/evalkit (> 1: evalkit is
faster) from the medians, and whether the outputs are identical (max abs difference).

Default: ``64x64_diffusion`` (296M parameters), batch 2, float32, CPU, 5 timed forwards each.
Exit status 1 if an output of the default backend differs from the baseline's on CPU in float32 (there
the two must be bit-identical).

Examples:
  python benchmarks/bench_unet.py --reference /work/ref/guided-diffusion
  python benchmarks/bench_unet.py --reference ../guided-diffusion --device cuda --reps 20
  python benchmarks/bench_unet.py --preset 256x256_diffusion --device cuda --backends sdpa einsum
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from evalkit.flags import constructor_kwargs, parse_flags
from evalkit.models import ATTENTION_BACKENDS, AttentionBlock, build, num_params, set_attention_backend
from evalkit.presets import get_preset
from evalkit.runtime import resolve_device


class EinsumAttention(nn.Module):
    """The reference implementation's QKV attention (both channel orders), the baseline without ``--reference``."""

    def __init__(self, n_heads: int, new_order: bool):
        super().__init__()
        self.n_heads, self.new_order = n_heads, new_order

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
        else:
            q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        q, k = (t * scale for t in (q, k))
        q, k, v = (t.reshape(bs * self.n_heads, ch, length) for t in (q, k, v))
        weight = torch.einsum("bct,bcs->bts", q, k)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def import_reference_unet(path: str):
    """``guided_diffusion.unet`` of the checkout at ``path`` (checked to come from there, not elsewhere)."""
    root = Path(path).resolve()
    if not (root / "guided_diffusion" / "unet.py").is_file():
        raise SystemExit(f"--reference {path}: no guided_diffusion/unet.py there (expected a checkout of "
                         f"openai/guided-diffusion)")
    sys.path.insert(0, str(root))
    module = importlib.import_module("guided_diffusion.unet")
    if Path(module.__file__).resolve() != root / "guided_diffusion" / "unet.py":
        raise SystemExit(f"--reference {path}: imported guided_diffusion from {module.__file__} instead; "
                         f"uninstall that copy or run from elsewhere")
    return module


def baseline_model(model: nn.Module, preset, reference: str | None, half: bool, device) -> tuple[nn.Module, str]:
    """The baseline network with ``model``'s weights, and its description."""
    if reference:
        ref_unet = import_reference_unet(reference)
        kwargs = constructor_kwargs(parse_flags(preset.readme_flags, preset.kind))
        kwargs["use_fp16"] = half  # sets the reference's torso dtype; its scripts convert after loading
        cls = ref_unet.SuperResModel if preset.kind == "upsampler" else ref_unet.UNetModel
        base = cls(**kwargs)
        base.load_state_dict(model.state_dict(), strict=True)
        base = base.to(device).eval()
        if half:
            base.convert_to_fp16()
        return base, f"reference {cls.__name__} from {Path(ref_unet.__file__).resolve()}"
    base = copy.deepcopy(model)
    for m in base.modules():
        if isinstance(m, AttentionBlock):
            m.attention = EinsumAttention(m.attention.n_heads, m.attention.new_order)
    return base, "evalkit UNet with the reference's einsum attention written in this benchmark"


def _forward(model, x, t, kwargs, device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one no-grad forward (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model(x, t, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", default="64x64_diffusion", help="diffusion/upsampler preset architecture")
    parser.add_argument("--reference", metavar="PATH", help="openai/guided-diffusion checkout to compare with")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per model")
    parser.add_argument("--fp16", choices=("auto", "yes", "no"), default="no",
                        help="torso in float16 like the reference's use_fp16 (auto: on CUDA only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--backends", nargs="*", default=[], choices=ATTENTION_BACKENDS,
                        help="evalkit attention backends timed besides the default 'auto'")
    opt = parser.parse_args()

    device = resolve_device(opt.device)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    preset = get_preset(opt.preset)
    if preset.kind == "classifier":
        raise SystemExit("bench_unet times UNets; pick a diffusion or upsampler preset")
    half = opt.fp16 == "yes" or (opt.fp16 == "auto" and device.type == "cuda")
    torch.manual_seed(0)
    model = build(preset, device="cpu")
    with torch.no_grad():  # random weights everywhere (the reference zero-inits output layers)
        for p in model.parameters():
            if p.ndim > 1:
                nn.init.normal_(p, std=p[0].numel() ** -0.5)
    base, base_name = baseline_model(model, preset, opt.reference, half, device)
    model = model.to(device)
    if half:
        model.convert_to_fp16()
    size, n = preset.image_size, opt.batch
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=gen).to(device)
    t = torch.randint(0, 1000, (n,), generator=gen).to(device)
    kwargs = {}
    if preset.class_cond:
        kwargs["y"] = torch.randint(0, 1000, (n,), generator=gen).to(device)
    if preset.kind == "upsampler":
        low = torch.randn(n, 3, preset.small_size, preset.small_size, generator=gen).clamp(-1, 1)
        kwargs["low_res"] = low.to(device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{preset.name}: {num_params(model) / 1e6:.1f}M params, batch {n}, {size}x{size}, device {device} "
          f"({where}), torso {'float16' if half else 'float32'}, torch {torch.__version__}")
    print(f"baseline: {base_name}")
    backends = ["auto"] + [b for b in opt.backends if b != "auto"]
    runs: dict[str, tuple[nn.Module, str | None]] = {"baseline": (base, None)}
    runs.update({f"evalkit {b}": (model, b) for b in backends})
    outputs, wall, cpu = {}, {k: [] for k in runs}, {k: [] for k in runs}
    for key, (m, b) in runs.items():  # warm-up, and the outputs to compare
        if b:
            set_attention_backend(m, b)
        for _ in range(opt.warmup):
            _forward(m, x, t, kwargs, device)
        with torch.no_grad():
            outputs[key] = m(x, t, **kwargs).float().cpu()
    for _ in range(opt.reps):
        for key, (m, b) in runs.items():
            if b:
                set_attention_backend(m, b)
            w, c = _forward(m, x, t, kwargs, device)
            wall[key].append(w)
            cpu[key].append(c)
    if float(outputs["baseline"].std()) == 0:
        print("WARNING: the baseline output is constant; the exactness check below is vacuous")
    med = {k: statistics.median(v) for k, v in wall.items()}
    failed = False
    for key in runs:
        diff = float((outputs[key] - outputs["baseline"]).abs().max())
        same = torch.equal(outputs[key], outputs["baseline"])
        line = (f"  {key:<18} wall median {med[key] * 1e3:9.1f} ms (min {min(wall[key]) * 1e3:.1f}), CPU median "
                f"{statistics.median(cpu[key]):7.2f} s, {opt.reps} reps")
        if key != "baseline":
            line += (f"  baseline/evalkit = {med['baseline'] / med[key]:.3f}x  outputs "
                     f"{'identical' if same else 'DIFFER'} (max abs diff {diff:.2e})")
            if key == "evalkit auto" and device.type == "cpu" and not half and not same:
                failed = True
        print(line)
    if failed:
        print("FAIL: evalkit's default attention on CPU float32 must reproduce the baseline bit for bit")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
