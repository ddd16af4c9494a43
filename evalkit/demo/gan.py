"""The demo's BigGAN-deep generator on the bundled 8×8 digits: loading and sampling.

``digits8_biggan`` (registered in ``evalkit.presets``) is ``evalkit.models.biggan.BigGANDeep``, the
code that runs the TF-Hub BigGAN-deep conversions, in a small config, trained by
``python scripts/train_digits.py biggan`` (``evalkit.demo.train_gan``). Its weights and config JSON
ship in ``evalkit/data/`` and are checked against the preset's sha256 on load. Sweeping its
truncation (``DEFAULT_TRUNCATIONS``) next to the digits ADM's guidance scale reproduces the
guidance-vs-truncation comparison of Dhariwal & Nichol 2021 on the demo's scale.

The bundled weights (``train_biggan`` defaults, seed 0, ``--threads 1``, torch 2.13 CPU) give, by
``python scripts/train_digits.py verify-biggan`` (500 samples per truncation, seed 0, against the
1797 real digits, digits features; 500 real digits score IS 8.1, FD 0.3-1.0, P 1.00, R 0.95):

    truncation  IS     FD     sFD     precision  recall
    0.2         9.670  5.133  33.815  0.980      0.011
    0.4         9.578  3.414  20.817  0.988      0.156
    0.6         9.451  2.206  12.954  0.980      0.396
    0.8         9.216  1.337   8.420  0.960      0.609
    1.0         8.815  0.863   5.725  0.910      0.780
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from evalkit.checkpoints import LoadedBigGAN, load_biggan
from evalkit.demo.models import bundled_file, check_sha256
from evalkit.errors import WeightsError
from evalkit.models.biggan import BigGANDeep, biggan_latents, check_truncation
from evalkit.presets import BigGANPreset, get_biggan_preset

PRESET = "digits8_biggan"
#: The demo's truncation sweep (each value uses exactly one of the 51 statistics rows).
DEFAULT_TRUNCATIONS = (0.2, 0.4, 0.6, 0.8, 1.0)


def load_digits_biggan(device: str | torch.device = "cpu", preset: str | BigGANPreset = PRESET) -> LoadedBigGAN:
    """Load the bundled digits BigGAN-deep (eval mode, spectral norms folded) on ``device``.

    The weights and config files are checked against the preset's ``sha256``/``config_sha256`` first,
    the config against the preset's resolution, classes and z size, then the state dict strictly
    against the config (``evalkit.checkpoints.load_biggan``).
    Raises WeightsError (missing file, sha256 mismatch, config not the preset's, keys/shapes).
    """
    p = get_biggan_preset(preset)
    if not p.bundled:
        raise WeightsError(f"preset {p.name} has no bundled weights; use evalkit.checkpoints.load_biggan")
    weights, config = bundled_file(p.weights, p.name), bundled_file(p.config, p.name)
    for path, expected in ((weights, p.sha256), (config, p.config_sha256)):
        if expected is not None:
            check_sha256(path, expected, p.name)
    loaded = load_biggan(weights, config, expected_resolution=p.image_size, device=device)
    cfg = loaded.config
    if (cfg.num_classes, cfg.z_dim) != (p.num_classes, p.dim_z):
        raise WeightsError(f"{config}: config has {cfg.num_classes} classes and z_dim {cfg.z_dim}, preset {p.name} "
                           f"expects {p.num_classes} and {p.dim_z}")
    return loaded


@torch.no_grad()
def sample_biggan(model: BigGANDeep, truncation: float, num_samples: int, seed: int = 0, batch_size: int = 500,
                  start: int = 0, classes: Sequence[int] | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``start .. start + num_samples - 1`` of an eval-mode BigGAN-deep at ``truncation``.

    Sample i's label and z come from ``biggan_latents(seed, [i], truncation, classes, ...)`` alone, and
    eval-mode batch norm uses stored statistics, so images do not depend on ``batch_size``.
    Returns (uint8 images [N, R, R, 3] by ``evalkit.diffusion.to_uint8``, int64 labels [N]).
    ``progress(n_done)`` is called after each batch. Raises ConfigError for a truncation outside (0, 1].
    """
    from evalkit.diffusion import samples_to_uint8

    truncation = check_truncation(truncation)
    cfg = model.config
    device = next(model.parameters()).device
    images, labels = [], []
    for s in range(start, start + num_samples, batch_size):
        idx = range(s, min(s + batch_size, start + num_samples))
        z, y = biggan_latents(seed, idx, truncation, classes, cfg.num_classes, cfg.z_dim)
        images.append(samples_to_uint8(model(z.to(device), y.to(device), truncation)))
        labels.append(y.numpy())
        if progress is not None:
            progress(idx.stop - start)
    if not images:
        r = cfg.output_dim
        return np.empty((0, r, r, 3), np.uint8), np.empty(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)
