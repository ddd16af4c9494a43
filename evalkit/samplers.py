"""Samplers: ancestral (DDPM) and DDIM loops over a denoiser, one signature for all.

Reference: openai/guided-diffusion at ``evalkit.REFERENCE_COMMIT`` (``gaussian_diffusion.py``:
``p_sample``/``p_sample_loop``, ``ddim_sample``/``ddim_sample_loop``). A sampler receives a denoiser (``evalkit.diffusion.Denoiser``),
the diffusion process, the starting noise ``x_T`` and a per-step noise source; it never loads
weights, picks devices, writes files or sees a classifier (guidance wraps the denoiser).

Random numbers: step k (k = 1..K, respaced index j = K - k) draws exactly one standard-normal
tensor shaped like x_t through ``noise(k, like)``, including the last step (where it is multiplied
by 0) and DDIM steps with eta = 0, so replaying a recorded stream reproduces a reference run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from evalkit.diffusion import Denoiser, GaussianDiffusion, Prediction
from evalkit.errors import ConfigError, InputError

__all__ = ["SAMPLERS", "StepInfo", "ancestral", "ancestral_step", "ddim", "ddim_step", "sample"]

NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


@dataclass
class StepInfo:
    """What one sampler step saw and produced (passed to the optional ``callback``).

    ``k``: step number 1..K; ``j``: respaced index (K - k); ``x_t``: the step's input;
    ``prediction``: the denoiser output at ``x_t``; ``sample``: the step's output x_{t-1}.
    """

    k: int
    j: int
    x_t: torch.Tensor
    prediction: Prediction
    sample: torch.Tensor


CallbackFn = Callable[[StepInfo], None]


def _default_noise(k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(like)


def _draw(noise: NoiseFn, k: int, like: torch.Tensor) -> torch.Tensor:
    # One standard-normal tensor per step; a wrong shape from a custom source is a clear error.
    z = noise(k, like)
    if not isinstance(z, torch.Tensor) or z.shape != like.shape:
        raise InputError(f"noise source: step {k} returned shape {tuple(getattr(z, 'shape', ()))}, "
                         f"expected {tuple(like.shape)}")
    return z.to(device=like.device, dtype=like.dtype)


def _nonzero_mask(j: torch.Tensor, ndim: int) -> torch.Tensor:
    return (j != 0).float().view(-1, *([1] * (ndim - 1)))


def _check_start(x_T: torch.Tensor) -> None:
    if not isinstance(x_T, torch.Tensor) or x_T.dim() != 4 or not x_T.is_floating_point():
        raise InputError(f"x_T: got {type(x_T).__name__} of shape {tuple(getattr(x_T, 'shape', ()))}, "
                         f"expected a float tensor [N, C, H, W]")


def ancestral_step(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, j: torch.Tensor,
                   z_fn: Callable[[], torch.Tensor]) -> tuple[Prediction, torch.Tensor]:
    """One ancestral step: x_{t-1} = mean + [t != 0] exp(0.5 log_variance) z (reference ``p_sample``)."""
    pred = denoiser(x, j)
    z = z_fn()
    sample = pred.mean + _nonzero_mask(j, x.dim()) * torch.exp(0.5 * pred.log_variance) * z
    return pred, sample


def ddim_step(denoiser: Denoiser, diffusion: GaussianDiffusion, x: torch.Tensor, j: torch.Tensor,
              z_fn: Callable[[], torch.Tensor], eta: float) -> tuple[Prediction, torch.Tensor]:
    """One DDIM step with stochasticity ``eta`` (reference ``ddim_sample``)."""
    pred = denoiser(x, j)
    # eps re-derived from the (possibly guided, unclipped) x_0 prediction.
    eps = diffusion.predict_eps_from_xstart(x, j, pred.pred_xstart)
    alpha_bar = diffusion.gather("alphas_cumprod", j, x.shape)
    alpha_bar_prev = diffusion.gather("alphas_cumprod_prev", j, x.shape)
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    z = z_fn()
    mean_pred = pred.pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
    sample = mean_pred + _nonzero_mask(j, x.dim()) * sigma * z
    return pred, sample


def _loop(step, denoiser: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, noise: Optional[NoiseFn],
          progress: Optional[ProgressFn], callback: Optional[CallbackFn], **step_kwargs) -> torch.Tensor:
    _check_start(x_T)
    noise = noise or _default_noise
    K = diffusion.num_timesteps
    x = x_T
    with torch.no_grad():
        # Respaced indices K-1 .. 0; step k = K - j draws noise(k).
        for k in range(1, K + 1):
            j_int = K - k
            j = torch.full((x.shape[0],), j_int, dtype=torch.int64, device=x.device)
            pred, x_prev = step(denoiser, diffusion, x, j, lambda: _draw(noise, k, x), **step_kwargs)
            if callback is not None:
                callback(StepInfo(k=k, j=j_int, x_t=x, prediction=pred, sample=x_prev))
            x = x_prev
            if progress is not None:
                progress(k, K)
    return x


def ancestral(denoiser: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, *,
              noise: Optional[NoiseFn] = None, progress: Optional[ProgressFn] = None,
              callback: Optional[CallbackFn] = None) -> torch.Tensor:
    """Ancestral sampling (reference ``p_sample_loop``) from ``x_T`` [N, C, H, W] to x_0 (float32)."""
    return _loop(ancestral_step, denoiser, diffusion, x_T, noise, progress, callback)


def ddim(denoiser: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, *, eta: float = 0.0,
         noise: Optional[NoiseFn] = None, progress: Optional[ProgressFn] = None,
         callback: Optional[CallbackFn] = None) -> torch.Tensor:
    """DDIM sampling (reference ``ddim_sample_loop``) from ``x_T`` [N, C, H, W] to x_0 (float32).

    ``eta`` in [0, 1]: 0 is deterministic given ``x_T`` (noise is still drawn every step),
    1 matches the ancestral posterior variance.
    """
    eta = 0.0 if eta is None else eta
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or not 0 <= eta <= 1:
        raise ConfigError(f"eta: got {eta!r}, expected a number in [0, 1] for the ddim sampler")
    return _loop(ddim_step, denoiser, diffusion, x_T, noise, progress, callback, eta=float(eta))


# Registry of samplers; every entry has the signature of ``sample`` minus ``sampler`` (``eta``: ddim only).
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ancestral": ancestral, "ddim": ddim}


def sample(denoiser: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, sampler: str = "ancestral",
           eta: float = 0.0, noise: Optional[NoiseFn] = None, progress: Optional[ProgressFn] = None,
           callback: Optional[CallbackFn] = None) -> torch.Tensor:
    """Run ``sampler`` from the starting noise ``x_T`` (float32 [N, C, H, W]) to x_0 (same shape).

    ``denoiser(x_t, j) -> Prediction`` (``evalkit.diffusion.adm_denoiser``, optionally wrapped by
    ``evalkit.guidance.classifier_guidance``); ``diffusion`` the respaced process it was built with.
    ``noise(k, like)`` returns the standard-normal tensor drawn inside step k = 1..K (default
    ``torch.randn_like``); ``progress(k, K)`` is called after each step; ``callback(StepInfo)``
    sees every step's input, prediction and output. Runs under ``torch.no_grad``.
    Raises ``ConfigError`` for an unknown sampler name or an invalid ``eta``.
    """
    fn = SAMPLERS.get(sampler)
    if fn is None:
        raise ConfigError(f"sampler: got {sampler!r}, expected one of {', '.join(sorted(SAMPLERS))}")
    if fn is ddim:
        return ddim(denoiser, diffusion, x_T, eta=eta, noise=noise, progress=progress, callback=callback)
    if eta not in (None, 0, 0.0):
        raise ConfigError(f"eta: got {eta!r}, but eta only applies to the ddim sampler; {sampler} "
                          f"sampling takes no eta (leave it at 0 or choose sampler 'ddim')")
    return fn(denoiser, diffusion, x_T, noise=noise, progress=progress, callback=callback)
