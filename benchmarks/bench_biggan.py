"""Images/s of evalkit's BigGAN-deep vs pytorch-pretrained-biggan 0.1.1's, on the same random weights
and latents, measured in one run, as a ratio (goal >= 1.0x), with the max abs output difference.

Both models run in eval mode under ``torch.inference_mode``: the package's ``BigGAN`` with the state
dict loaded (spectral norm recomputed from u/v at every forward, as its eval mode does), evalkit's
``BigGANDeep`` from ``from_state_dict`` (sigma folded once at load, statistics interpolated once per
truncation, batch norm + ReLU fused, only the 3 used RGB channels computed). Weights: the layout of
the released files, random (``evalkit.models.biggan.random_state_dict``). Timings alternate between
the two models so machine noise hits both alike; the median of ``--reps`` forwards is reported.

Examples:
  python benchmarks/bench_biggan.py                     # BigGAN-deep-128, CPU, batch 8, 3 reps
  python benchmarks/bench_biggan.py --resolution 256 --batch 4 --reps 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from evalkit.models.biggan import BigGANConfig, biggan_latents, from_state_dict, random_state_dict


def _seconds(fn) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128, choices=(128, 256, 512))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--truncation", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    opt = parser.parse_args()
    try:
        from pytorch_pretrained_biggan import BigGAN
        from pytorch_pretrained_biggan import BigGANConfig as PackageConfig
    except ImportError:
        raise SystemExit("bench_biggan compares with pytorch-pretrained-biggan: pip install "
                         "pytorch-pretrained-biggan==0.1.1 (or evalkit's test extra)") from None
    if opt.threads:
        torch.set_num_threads(opt.threads)

    config = BigGANConfig.deep(opt.resolution)
    state = random_state_dict(config, seed=0)
    theirs = BigGAN(PackageConfig.from_dict(config.to_dict()))
    theirs.load_state_dict(state, strict=True)
    theirs.eval()
    ours = from_state_dict(state, config)
    t = opt.truncation
    z, labels = biggan_latents(0, range(opt.batch), t, None)
    onehot = F.one_hot(labels, config.num_classes).float()

    def run_theirs():
        return theirs(z, onehot, t)

    def run_ours():
        return ours(z, labels, t)

    with torch.inference_mode():
        diff = (run_ours() - run_theirs()).abs().max().item()
    for _ in range(max(opt.warmup - 1, 0)):
        _seconds(run_theirs)
        _seconds(run_ours)
    times: dict[str, list[float]] = {"pytorch-pretrained-biggan": [], "evalkit": []}
    for _ in range(opt.reps):
        times["pytorch-pretrained-biggan"].append(_seconds(run_theirs))
        times["evalkit"].append(_seconds(run_ours))

    print(f"BigGAN-deep-{opt.resolution}, batch {opt.batch}, truncation {t}, CPU, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, {opt.reps} timed forwards each (median)")
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, sec in med.items():
        print(f"  {name:26s} {sec:8.3f} s/batch  {opt.batch / sec:8.2f} images/s   "
              f"(all: {', '.join(f'{s:.3f}' for s in times[name])})")
    print(f"  speed ratio evalkit / pytorch-pretrained-biggan: "
          f"{med['pytorch-pretrained-biggan'] / med['evalkit']:.2f}x")
    print(f"  max abs output difference: {diff:.3g} (images in [-1, 1])")


if __name__ == "__main__":
    main()
