"""Throughput of evalkit's Inception extractor vs a baseline on the same random weights, measured in one run.

Baseline: pytorch-fid 0.3.0's ``InceptionV3`` (FID weights handed to its own model class, no download) when
it imports; pytorch-fid imports torchvision at module level, and torchvision cannot be installed beside
torch 2.13 here, so otherwise the baseline is a straightforward eager port written below: torchvision-named
``Conv2d`` + ``BatchNorm2d(eps=1e-3)`` modules per layer, ``F.interpolate`` bilinear resize, NCHW, no fusion —
what pytorch-fid does. Each model runs in its own subprocess so peak RSS is per model.

Inputs: random uint8 images 256×256, batch 64 (as the reference evaluator batches).

    python benchmarks/bench_features.py                 # CPU, 2 timed batches each
    python benchmarks/bench_features.py --device cuda --batches 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evalkit.features import inception_layout as layout
from evalkit.features.convert import InceptionWeights, to_torchvision_state_dict


def random_weights(seed: int = 0) -> InceptionWeights:
    """He-scaled random Inception-2015 parameters in evalkit's canonical (TF) layout."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in layout.param_shapes().items():
        if name.endswith("conv2d_params"):
            fan_in = shape[0] * shape[1] * shape[2]
            params[name] = rng.uniform(-1, 1, shape).astype(np.float32) * np.float32(np.sqrt(6 / fan_in))
        elif name.endswith("moving_variance") or name.endswith("gamma"):
            params[name] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        else:
            params[name] = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    return InceptionWeights(params, "random", "0" * 64, "bench")


class _BasicConv(nn.Module):
    def __init__(self, unit: layout.ConvUnit):
        super().__init__()
        pad = (unit.kh // 2, unit.kw // 2) if unit.padding == "SAME" else 0
        self.conv = nn.Conv2d(unit.cin, unit.cout, (unit.kh, unit.kw), unit.stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(unit.cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class EagerInception(nn.Module):
    """Straightforward eager port (pytorch-fid style): per-layer conv + BN modules, torch bilinear resize."""

    def __init__(self):
        super().__init__()
        for unit in layout.all_units():
            mod, _, sub = unit.torchvision.partition(".")
            if sub:
                if not hasattr(self, mod):
                    self.add_module(mod, nn.Module())
                getattr(self, mod).add_module(sub, _BasicConv(unit))
            else:
                self.add_module(mod, _BasicConv(unit))
        self.fc = nn.Linear(2048, 1008)

    def _block(self, name: str, kind: str, x):
        b = getattr(self, name)
        if kind == "A":
            return torch.cat([b.branch1x1(x), b.branch5x5_2(b.branch5x5_1(x)),
                              b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(x))),
                              b.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))], 1)
        if kind == "B":
            return torch.cat([b.branch3x3(x), b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(x))),
                              F.max_pool2d(x, 3, 2)], 1)
        if kind == "C":
            t1 = b.branch7x7dbl_1(x)
            for i in range(2, 6):
                t1 = getattr(b, f"branch7x7dbl_{i}")(t1)
            return torch.cat([b.branch1x1(x), b.branch7x7_3(b.branch7x7_2(b.branch7x7_1(x))), t1,
                              b.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))], 1)
        if kind == "D":
            t1 = b.branch7x7x3_4(b.branch7x7x3_3(b.branch7x7x3_2(b.branch7x7x3_1(x))))
            return torch.cat([b.branch3x3_2(b.branch3x3_1(x)), t1, F.max_pool2d(x, 3, 2)], 1)
        t0 = b.branch3x3_1(x)
        t1 = b.branch3x3dbl_2(b.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if name == "Mixed_7c" else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return torch.cat([b.branch1x1(x), b.branch3x3_2a(t0), b.branch3x3_2b(t0), b.branch3x3dbl_3a(t1),
                          b.branch3x3dbl_3b(t1), b.branch_pool(pooled)], 1)

    def forward(self, x):
        """``x``: float ``[N, 3, H, W]`` in [0, 1], as pytorch-fid receives it."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        spatial = None
        for _, tv, kind, _, _ in layout.BLOCKS:
            x = self._block(tv, kind, x)
            if tv == "Mixed_6d":
                spatial = x[:, :7]
        pool = x.mean((2, 3))
        return pool, spatial, pool @ self.fc.weight.T


def _baseline(weights: InceptionWeights, device: torch.device):
    """pytorch-fid's own model class when importable, else the eager port; returns (name, callable)."""
    state = {k: torch.from_numpy(v) for k, v in to_torchvision_state_dict(weights).items()}
    try:
        import pytorch_fid.inception as pfi
    except Exception as exc:  # noqa: BLE001 - ImportError of pytorch_fid or of torchvision
        print(f"pytorch-fid unavailable ({type(exc).__name__}: {exc}); baseline = eager port "
              f"(per-layer conv+BN modules, torch bilinear resize)", file=sys.stderr)
        model = EagerInception().eval().to(device)
        model.load_state_dict(state)
        return "eager port", lambda x: model(_as_pytorch_fid_input(x))
    pfi.load_state_dict_from_url = lambda *a, **k: state  # hand over the weights, no download
    model = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval().to(device)
    return "pytorch-fid 0.3.0", lambda x: model(_as_pytorch_fid_input(x))


def _as_pytorch_fid_input(images_uint8_nhwc):
    """pytorch-fid's data path: ToTensor + default collate give a contiguous float NCHW batch in [0, 1]."""
    return (images_uint8_nhwc.permute(0, 3, 1, 2).float() / 255.0).contiguous()


def worker(which: str, device: str, batch_size: int, batches: int) -> None:
    torch.manual_seed(0)
    dev = torch.device(device)
    weights = random_weights()
    if which == "evalkit":
        from evalkit.features.inception import InceptionExtractor

        ex = InceptionExtractor(weights, device=dev, batch_size=batch_size)
        name, fn = "evalkit", ex.forward_tensor
    else:
        name, model_fn = _baseline(weights, dev)
        fn = torch.inference_mode()(model_fn)
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (batch_size, 256, 256, 3), dtype=np.uint8))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fn(images.to(dev))  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(batches):
        fn(images.to(dev))
    sync()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    gpu_peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    print(json.dumps({"name": name, "images_per_s": batches * batch_size / elapsed, "peak_rss_mib": peak,
                      "gpu_peak_mib": gpu_peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=2, help="timed batches per model (after one warm-up batch)")
    ap.add_argument("--worker", choices=["evalkit", "baseline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.batch_size, args.batches)
        return
    results = {}
    for which in ("baseline", "evalkit"):
        cmd = [sys.executable, __file__, "--worker", which, "--device", args.device,
               "--batch-size", str(args.batch_size), "--batches", str(args.batches)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    for r in results.values():
        gpu = f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if r["gpu_peak_mib"] is not None else ""
        print(f"{r['name']:>18}: {r['images_per_s']:8.2f} images/s, peak RSS {r['peak_rss_mib']:.0f} MiB{gpu}")
    ratio = results["evalkit"]["images_per_s"] / results["baseline"]["images_per_s"]
    print(f"speed ratio evalkit / {results['baseline']['name']}: {ratio:.2f}x "
          f"(256x256 uint8, batch {args.batch_size}, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
