"""Tiny random-weight guided-diffusion networks for the sampling-harness tests (CPU, milliseconds).

Each builder saves ``torch.save(model.state_dict())`` like a user's checkpoint. Every parameter is
perturbed with seeded noise, because the reference zero-initialises the output layers and a fresh
network would predict exactly zero (images would then depend on the noise alone, and tests could
not notice a model being ignored).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

UNET_FLAGS = ("--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 "
              "--num_head_channels 16 --learn_sigma True --class_cond True --num_classes 10")
UNCOND_FLAGS = ("--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 "
                "--num_head_channels 16 --learn_sigma True --class_cond False")
CLASSIFIER_FLAGS = ("--image_size 8 --classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 4 "
                    "--classifier_channel_mult 1,2 --classifier_num_head_channels 16 --classifier_num_classes 10")
UPSAMPLER_FLAGS = ("--large_size 16 --small_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
                   "--attention_resolutions 8 --num_head_channels 16 --learn_sigma True --class_cond True "
                   "--num_classes 10")


def save_random(kind: str, flags: str, path: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """Build the network of ``flags``, perturb every parameter, save its state dict to ``path``."""
    from evalkit.flags import parse_flags
    from evalkit.models import build_from_parsed

    model = build_from_parsed(parse_flags(flags, kind), device="cpu", use_fp16=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    torch.save(model.state_dict(), path)
    return path


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread: tiny networks gain nothing from more, and on a shared 2-core CI
    machine several spinning threads per process make each forward pass 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Environment for evalkit subprocesses started by tests (one thread each, as above).
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_biggan_config(resolution: int = 8, channel_width: int = 8):
    """A BigGAN-deep layout small enough for CPU tests: 10 classes, z_dim 16, 11 truncation rows of
    batch-norm statistics, self-attention at 4x4 (8x8) or 8x8 (16x16)."""
    from evalkit.models.biggan import BigGANConfig

    mults = {8: (2, 1), 16: (4, 2, 1)}[resolution]
    return BigGANConfig.deep(resolution, channel_width=channel_width, channel_multipliers=mults,
                             attention_resolution=resolution // 2, z_dim=16, num_classes=10, n_stats=11)


def save_biggan(folder: Path, name: str = "tiny", resolution: int = 8, seed: int = 0, channel_width: int = 8,
                with_config: bool = True) -> tuple[Path, Path | None]:
    """Random BigGAN-deep weights (random batch-norm statistics per truncation, so truncation matters)
    saved as ``<name>-pytorch_model.bin`` with ``<name>-config.json`` beside it, like the released files."""
    import json

    from evalkit.models.biggan import random_state_dict

    cfg = tiny_biggan_config(resolution, channel_width)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}-pytorch_model.bin"
    torch.save(random_state_dict(cfg, seed=seed), weights)
    config = None
    if with_config:
        config = folder / f"{name}-config.json"
        config.write_text(json.dumps(cfg.to_dict()))
    return weights, config
