"""Training for the demo's three small models on the bundled 8×8 digits, on a couple of CPU cores.

* ``train_feature_net`` — the clean-image digits classifier used as the demo's feature network.
* ``train_diffusion`` — the class-conditional ADM UNet (``digits8_diffusion``): hybrid loss
  (eps-MSE + VLB on the learned variances), EMA of the weights.
* ``train_classifier`` — the noisy classifier (``digits8_classifier``) on x_t = q_sample(x_0, t).

Every function is seeded and single-threaded-deterministic on CPU, so ``scripts/train_digits.py``
reproduces the committed weights' behaviour (bit-identical files need the same torch build).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from evalkit.demo.data import digits_images


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * holdout))
    return perm[k:], perm[:k]


def _shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (zero fill): small distortions the classifier should ignore."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=gen)
    dy = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


def train_feature_net(epochs: int = 60, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                      holdout: float = 0.2, log=print) -> tuple[nn.Module, dict]:
    """Train the digits feature network; returns (model, {"train_acc", "holdout_acc", ...}).

    A fifth of the images is held out to report accuracy honestly; the returned model is then
    fine-tuned on nothing else (the held-out accuracy is what generalisation to samples looks like).
    """
    from evalkit.features.digits import DigitsNet, images_to_input

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = digits_images()
    x_all = images_to_input(images)
    y_all = torch.from_numpy(labels)
    train_idx, hold_idx = _split(len(labels), holdout, seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = x_all[train_idx], y_all[train_idx]
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_idx), generator=gen)
        total = 0.0
        for s in range(0, len(order), batch_size):
            b = order[s:s + batch_size]
            xb = _shift_augment(xt[b], gen)
            loss = nn.functional.cross_entropy(net(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
        sched.step()
        if log and (epoch + 1) % 10 == 0:
            log(f"features epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}")
    net.eval()
    with torch.no_grad():
        train_acc = float((net(xt).argmax(1) == yt).float().mean())
        hold_acc = float((net(x_all[hold_idx]).argmax(1) == y_all[hold_idx]).float().mean())
    return net, {"train_acc": train_acc, "holdout_acc": hold_acc, "epochs": epochs, "seed": seed}


# ---------------------------------------------------------------------------------------------
# The demo's class-conditional ADM UNet and noisy classifier (issue 7 item 2).
#
# Training objective of Nichol & Dhariwal 2021 ("Improved DDPM", §3.1, the "hybrid" loss) as used by
# openai/guided-diffusion (at evalkit.REFERENCE_COMMIT) for learn_sigma models:
# L = ||eps - eps_theta||^2 (mean over pixels) + L_vlb(t), where L_vlb(t) is, in bits per dimension,
# KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) for t > 0 and the discretised-Gaussian decoder NLL
# -log p_theta(x_0|x_1) for t = 0, with the model's mean stop-gradded so that L_vlb only trains the
# variance. Written here from the papers' formulas; evalkit.diffusion provides the float64 tables.


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled digits as model inputs: x float32 [1797, 3, 8, 8] in [-1, 1] (uint8/127.5 - 1), y int64 [1797]."""
    images, labels = digits_images()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous(), torch.from_numpy(labels)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data ``x`` in [-1, 1] under N(mean, exp(log_scale)^2)
    discretised into 256 bins of width 2/255; the two edge bins extend to -inf / +inf."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def hybrid_loss(model: nn.Module, diffusion, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-sample hybrid loss terms for a learn_sigma ADM model (``[N]`` each: ``loss``, ``mse``, ``vb``).

    ``x0`` float32 [N, C, H, W] in [-1, 1]; ``t`` int64 [N] ORIGINAL timesteps of the unrespaced
    ``diffusion`` (a ``GaussianDiffusion`` with learn_sigma True); ``noise`` the N(0, I) draw.
    """
    x_t = diffusion.q_sample(x0, t, noise)
    out = model(x_t, t, y) if y is not None else model(x_t, t)
    C = x0.shape[1]
    eps, var_values = torch.split(out, C, dim=1)
    mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
    # The VLB term sees a frozen mean: it only trains the interpolation between beta_t and beta~_t.
    pred_xstart = diffusion.predict_xstart_from_eps(x_t, t, eps.detach())
    model_mean = diffusion.q_posterior_mean(pred_xstart, x_t, t)
    min_log = diffusion.gather("posterior_log_variance_clipped", t, x_t.shape)
    max_log = diffusion.gather("log_betas", t, x_t.shape)
    frac = (var_values + 1) / 2
    model_log_variance = frac * max_log + (1 - frac) * min_log
    true_mean = diffusion.q_posterior_mean(x0, x_t, t)
    kl = normal_kl(true_mean, min_log, model_mean, model_log_variance).mean(dim=(1, 2, 3)) / np.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance).mean(dim=(1, 2, 3)) / np.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def train_diffusion(flags: str | None = None, steps: int = 1600, batch_size: int = 64, lr: float = 1e-3,
                    ema_decay: float = 0.998, seed: int = 0, log=print) -> tuple[nn.Module, dict]:
    """Train the demo's class-conditional ADM UNet on all 1797 digits; returns (EMA model in eval mode, info).

    ``flags``: reference flag string (default: the ``digits8_diffusion`` preset's); learn_sigma True
    models use the hybrid loss, others plain eps-MSE. Timesteps are uniform over the T original steps.
    EMA decay ramps as min(ema_decay, (1 + k) / (10 + k)) so the average is useful after few steps.
    """
    import copy

    from evalkit.diffusion import create_diffusion
    from evalkit.models import from_flags

    if flags is None:
        from evalkit.demo.models import DIFFUSION_FLAGS
        flags = DIFFUSION_FLAGS
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    fm = from_flags(flags, kind="diffusion")
    settings = dict(fm.diffusion, timestep_respacing="")
    diffusion = create_diffusion(**settings)
    model = fm.model.train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    x_all, y_all = digits_tensors()
    class_cond = bool(fm.flags["class_cond"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # Short linear warm-up, then cosine decay to 10% (stabilises a small-batch CPU run).
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * (0.55 + 0.45 * np.cos(np.pi * min(k, steps) / steps)))
    T = diffusion.num_timesteps
    running = 0.0
    for k in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
        t = torch.randint(0, T, (batch_size,), generator=gen)
        noise = torch.randn(batch_size, *x_all.shape[1:], generator=gen)
        x0, y = x_all[idx], (y_all[idx] if class_cond else None)
        if diffusion.learn_sigma:
            loss = hybrid_loss(model, diffusion, x0, t, noise, y)["loss"].mean()
        else:
            out = model(diffusion.q_sample(x0, t, noise), t, y) if class_cond else model(diffusion.q_sample(x0, t, noise), t)
            loss = ((out - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, model, min(ema_decay, (1 + k) / (10 + k)))
        running = 0.98 * running + 0.02 * loss.item() if k else loss.item()
        if log and (k + 1) % 100 == 0:
            log(f"diffusion step {k + 1}/{steps}: loss {running:.4f}")
    # Sanity numbers: the EMA model's loss terms on a fixed draw of 512 training images.
    ema.eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        idx = torch.randperm(len(x_all), generator=g)[:512]
        t = torch.randint(0, T, (len(idx),), generator=g)
        noise = torch.randn((len(idx), *x_all.shape[1:]), generator=g)
        terms = (hybrid_loss(ema, diffusion, x_all[idx], t, noise, y_all[idx] if class_cond else None)
                 if diffusion.learn_sigma else None)
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "seed": seed,
            "final_loss": running}
    if terms is not None:
        info.update(ema_mse=float(terms["mse"].mean()), ema_vb=float(terms["vb"].mean()))
    return ema, info


def train_classifier(flags: str | None = None, steps: int = 1200, batch_size: int = 128, lr: float = 1e-3,
                     diffusion_flags: str | None = None, seed: int = 0, holdout: float = 0.2,
                     log=print) -> tuple[nn.Module, dict]:
    """Train the demo's noisy classifier on x_t = q_sample(x_0, t), t uniform over the original steps.

    ``flags``: classifier flag string (default: the ``digits8_classifier`` preset's); the noise
    process comes from ``diffusion_flags`` (default: the diffusion preset's). A fifth of the digits is
    held out to measure accuracy honestly; the model is then trained only on the rest. Images get
    random ±1 px shifts. Returns (model in eval mode, info with held-out accuracy at t < 100 and overall).
    """
    from evalkit.diffusion import create_diffusion
    from evalkit.flags import parse_flags
    from evalkit.models import from_flags

    if flags is None or diffusion_flags is None:
        from evalkit.demo.models import CLASSIFIER_FLAGS, DIFFUSION_FLAGS
        flags = CLASSIFIER_FLAGS if flags is None else flags
        diffusion_flags = DIFFUSION_FLAGS if diffusion_flags is None else diffusion_flags
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    diffusion = create_diffusion(**dict(parse_flags(diffusion_flags, "diffusion").diffusion_settings(),
                                        timestep_respacing=""))
    model = from_flags(flags, kind="classifier").model.train()
    x_all, y_all = digits_tensors()
    train_idx, hold_idx = _split(len(y_all), holdout, seed)
    xt, yt = x_all[train_idx], y_all[train_idx]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(k, steps) / steps)))
    T = diffusion.num_timesteps
    running = 0.0
    for k in range(steps):
        idx = torch.randint(0, len(xt), (batch_size,), generator=gen)
        x0 = _shift_augment(xt[idx] + 1.0, gen) - 1.0  # zero-fill in [0, 2] = background -1 in [-1, 1]
        t = torch.randint(0, T, (batch_size,), generator=gen)
        x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        loss = nn.functional.cross_entropy(model(x_t, t), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if k else loss.item()
        if log and (k + 1) % 100 == 0:
            log(f"classifier step {k + 1}/{steps}: loss {running:.4f}")
    model.eval()
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "final_loss": running}
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        xh, yh = x_all[hold_idx], y_all[hold_idx]
        for name, hi in (("holdout_acc_t_lt_100", 100), ("holdout_acc_t_lt_500", 500), ("holdout_acc_all_t", T)):
            t = torch.randint(0, hi, (len(xh),), generator=g)
            x_t = diffusion.q_sample(xh, t, torch.randn(xh.shape, generator=g))
            info[name] = float((model(x_t, t).argmax(1) == yh).float().mean())
    return model, info
