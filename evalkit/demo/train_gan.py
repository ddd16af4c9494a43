"""Training for the demo's BigGAN-deep generator on the bundled 8×8 digits, on a couple of CPU cores.

The generator is ``evalkit.models.biggan.BigGANDeep`` itself (the same code that runs the TF-Hub
conversions), in a small config (:data:`DIGITS_BIGGAN_CONFIG`). Standard BigGAN practice (Brock,
Donahue & Simonyan 2019, §3 and appendix), written here from the paper:

* a projection discriminator (Miyato & Koyama 2018) with spectral norm on every layer
  (``torch.nn.utils.parametrizations.spectral_norm``), residual blocks with average-pool downsampling;
* hinge loss: ``D: relu(1 - D(x, y)) + relu(1 + D(G(z, y'), y'))``, ``G: -D(G(z, y'), y')``, with
  ``z ~ N(0, I)`` (no truncation while training) and ``y'`` uniform over the 10 classes;
* Adam with betas (0, 0.999), one or two D steps per G step, an exponential moving average of G's weights;
* after training, the EMA generator's spectral norms are re-estimated by power iteration on its own
  weights, and its per-truncation batch-norm rows are filled with **standing statistics**
  (:func:`fill_standing_statistics`): for each grid truncation ``t_k = k / (n_stats - 1)`` the
  generator runs on batches of ``z = t_k * truncated_normal`` with batch statistics, and the average
  batch mean and variance of every batch norm become row k. Eval mode then normalises a truncation-t
  batch as a batch of such latents was normalised, which is what the rows are for.

Seeded and single-threaded-deterministic on CPU (bit-identical weights need the same torch build).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from evalkit.models.biggan import (BigGANConfig, BigGANDeep, TruncationBatchNorm, _SpectralNormed,
                                   truncated_normal)

#: The demo generator: BigGAN-deep at 8×8 (one stage: a block at 4×4, a block upsampling to 8×8),
#: 64 then 32 channels, self-attention before the first block (4×4, the only block input resolution
#: of an 8×8 generator), z of 32 entries, 10 classes, 51 statistics rows as the TF-Hub modules
#: (so the truncations 0.02 k, among them 0.1 ... 1.0, each use exactly one row).
DIGITS_BIGGAN_CONFIG = BigGANConfig.deep(8, channel_width=32, channel_multipliers=(2, 1), attention_resolution=4,
                                         z_dim=32, num_classes=10, n_stats=51)


class DBlock(nn.Module):
    """Discriminator residual block: [ReLU] conv3x3 ReLU conv3x3 [avgpool 2], skip 1x1 conv [avgpool 2]."""

    def __init__(self, c_in: int, c_out: int, downsample: bool, preactivation: bool):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out or downsample else None
        self.downsample = downsample
        self.preactivation = preactivation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        skip = x if self.skip is None else self.skip(x)
        if self.downsample:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return h + skip


class ProjectionDiscriminator(nn.Module):
    """8×8 projection discriminator: ``D(x, y) = w . phi(x) + b + <E y, phi(x)>``, ``phi`` = blocks,
    ReLU, sum over positions. Spectral norm on every convolution, the linear output and the embedding."""

    def __init__(self, channels: int = 32, num_classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(DBlock(3, channels, downsample=True, preactivation=False),
                                    DBlock(channels, 2 * channels, downsample=False, preactivation=True),
                                    DBlock(2 * channels, 2 * channels, downsample=False, preactivation=True))
        self.linear = spectral_norm(nn.Linear(2 * channels, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, 2 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def digits_gan_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled digits as GAN inputs: x float32 [1797, 3, 8, 8] in [-1, 1], y int64 [1797]."""
    from evalkit.demo.train import digits_tensors

    return digits_tensors()


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@torch.no_grad()
def estimate_spectral_norms(model: nn.Module, iterations: int = 30) -> None:
    """Power iterations on each spectral-normalised layer's own weight (u, v in place), so that
    ``sigma = u . W v`` matches the weights an EMA produced rather than those of the trained copy."""
    for m in model.modules():
        if isinstance(m, _SpectralNormed):
            mat = m.weight_orig.reshape(m.weight_orig.shape[0], -1)
            for _ in range(iterations):
                F.normalize(torch.mv(mat.t(), m.weight_u), dim=0, eps=m.eps, out=m.weight_v)
                F.normalize(torch.mv(mat, m.weight_v), dim=0, eps=m.eps, out=m.weight_u)
            m.folded = None


@torch.no_grad()
def fill_standing_statistics(model: BigGANDeep, batches: int = 16, batch_size: int = 256, seed: int = 0,
                             log: Callable[[str], None] | None = None) -> BigGANDeep:
    """Fill every batch norm's ``running_means``/``running_vars`` row k with standing statistics at
    truncation ``t_k = k / (n_stats - 1)``.

    Per row: ``batches`` forwards of ``batch_size`` latents ``z = t_k * truncated_normal(z_dim)`` and
    uniform labels (one ``torch.Generator(seed)`` for the whole fill), the batch norms normalising by
    the batch's statistics (the spectral norms in eval mode: no power iteration); row k is the
    average over batches of each batch norm's per-channel batch mean and (biased) variance, the
    statistics that batch-mode forward used. Returns ``model`` in eval mode with its caches cleared.
    """
    cfg = model.config
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, TruncationBatchNorm)]
    sums: dict[int, list[torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].double()
        acc = sums[id(module)]
        acc[0] += x.mean(dim=(0, 2, 3))
        acc[1] += x.var(dim=(0, 2, 3), unbiased=False)

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    gen = torch.Generator().manual_seed(int(seed))
    try:
        for m in norms:
            m.training = True  # batch statistics; children (the gain/offset maps) stay in eval mode
        rows = {id(m): (torch.zeros_like(m.running_means), torch.zeros_like(m.running_vars)) for m in norms}
        for k in range(cfg.n_stats):
            t = k / (cfg.n_stats - 1)
            for m in norms:
                sums[id(m)] = [torch.zeros(m.running_means.shape[1], dtype=torch.float64),
                               torch.zeros(m.running_vars.shape[1], dtype=torch.float64)]
            for _ in range(batches):
                z = t * truncated_normal(batch_size * cfg.z_dim, gen).reshape(batch_size, cfg.z_dim)
                y = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen)
                model(z, y, 1.0)  # the truncation argument only selects stored rows; unused in batch mode
            for m in norms:
                rows[id(m)][0][k] = (sums[id(m)][0] / batches).float()
                rows[id(m)][1][k] = (sums[id(m)][1] / batches).float()
            if log and (k % 10 == 0 or k == cfg.n_stats - 1):
                log(f"standing statistics: row {k}/{cfg.n_stats - 1} (truncation {t:.2f})")
        for m in norms:
            m.running_means.copy_(rows[id(m)][0])
            m.running_vars.copy_(rows[id(m)][1])
    finally:
        for h in handles:
            h.remove()
        for m in norms:
            m.training = False
            m.clear_cache()
    return model


def train_biggan(config: BigGANConfig = DIGITS_BIGGAN_CONFIG, steps: int = 3000, batch_size: int = 64,
                 lr_g: float = 2e-4, lr_d: float = 2e-4, betas: tuple[float, float] = (0.0, 0.999),
                 d_steps: int = 1, d_channels: int = 32,
                 ema_decay: float = 0.995, ema_start: int = 500, seed: int = 0,
                 standing_batches: int = 16, standing_batch_size: int = 256,
                 log: Callable[[str], None] | None = print) -> tuple[BigGANDeep, dict]:
    """Train a class-conditional BigGAN-deep generator on all 1797 digits (hinge loss, projection D).

    Each of ``steps`` generator steps follows ``d_steps`` discriminator steps (each on a fresh real
    batch and fresh fakes). Adam(``betas``) for both nets. The EMA of G's weights (decay
    ``ema_decay``, a plain copy before ``ema_start``) is returned, in eval mode, after
    :func:`estimate_spectral_norms` and :func:`fill_standing_statistics`; ``info`` records the settings
    and running losses.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = digits_gan_tensors()
    g = BigGANDeep(config).train()
    d = ProjectionDiscriminator(d_channels, config.num_classes).train()
    ema = copy.deepcopy(g).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr_g, betas=betas, eps=1e-6)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr_d, betas=betas, eps=1e-6)

    def fakes() -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(batch_size, config.z_dim, generator=gen)
        y = torch.randint(0, config.num_classes, (batch_size,), generator=gen)
        return g(z, y, 1.0), y

    run_d = run_g = 0.0
    for k in range(steps):
        for _ in range(d_steps):
            idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
            with torch.no_grad():
                xf, yf = fakes()
            loss_d = F.relu(1 - d(x_all[idx], y_all[idx])).mean() + F.relu(1 + d(xf, yf)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        xf, yf = fakes()
        loss_g = -d(xf, yf).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        _ema_update(ema, g, ema_decay if k >= ema_start else 0.0)
        run_d = 0.98 * run_d + 0.02 * loss_d.item() if k else loss_d.item()
        run_g = 0.98 * run_g + 0.02 * loss_g.item() if k else loss_g.item()
        if log and (k + 1) % 100 == 0:
            log(f"biggan step {k + 1}/{steps}: D loss {run_d:.4f}, G loss {run_g:.4f}")
    if not all(math.isfinite(v) for v in (run_d, run_g)):
        raise RuntimeError(f"BigGAN training diverged (D loss {run_d}, G loss {run_g})")
    ema.eval()
    estimate_spectral_norms(ema)
    fill_standing_statistics(ema, batches=standing_batches, batch_size=standing_batch_size, seed=seed + 1,
                             log=log)
    ema.fold()
    info = {"steps": steps, "batch_size": batch_size, "lr_g": lr_g, "lr_d": lr_d, "betas": list(betas),
            "d_steps": d_steps, "d_channels": d_channels, "ema_decay": ema_decay, "ema_start": ema_start, "seed": seed,
            "standing_batches": standing_batches, "standing_batch_size": standing_batch_size,
            "final_d_loss": run_d, "final_g_loss": run_g, "config": config.to_dict()}
    return ema, info
