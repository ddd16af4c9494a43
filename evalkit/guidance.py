"""Classifier guidance as a denoiser wrapper (Dhariwal & Nichol 2021, Algorithms 1 and 2).

Reference: openai/guided-diffusion at ``evalkit.REFERENCE_COMMIT`` (``scripts/classifier_sample.py``
``cond_fn``; ``gaussian_diffusion.py`` ``condition_mean`` and ``condition_score``). The wrapper returns a denoiser with the same
signature, so samplers never see the classifier:

* ``.mean`` is ``condition_mean``: mean + variance * g (variance, not standard deviation), used by
  ancestral sampling;
* ``.pred_xstart`` is ``condition_score``: eps' = eps(x_0) - sqrt(1 - abar_t) g, then x_0 re-derived
  from eps' and NOT clamped again, used by DDIM;

where g = scale * grad_x sum_i log_softmax(classifier(x_t, t))[i, y_i] at the current x_t and t is the
ORIGINAL timestep (``diffusion.model_timesteps``). Scale 0 returns the denoiser unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evalkit.diffusion import Denoiser, GaussianDiffusion, Prediction
from evalkit.errors import ConfigError, InputError

__all__ = ["classifier_guidance", "classifier_gradient"]


def _as_labels(y, batch: int, device: torch.device) -> torch.Tensor:
    # Labels become int64 [N] on the sample's device; a wrong count is a clear error.
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(device)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"guidance labels y: got dtype {labels.dtype}, expected integer class labels")
    labels = labels.long().view(-1)
    if labels.shape[0] != batch:
        raise InputError(f"guidance labels y: got {labels.shape[0]} labels for a batch of {batch} samples")
    return labels


def classifier_gradient(classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor,
                        t: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * d/dx sum_i log_softmax(classifier(x, t))[i, y_i]`` at ``x = x_t`` (float32 [N, C, H, W]).

    ``t``: the timesteps the classifier receives (original indices); ``y``: int64 [N].
    Gradients flow through the classifier only; ``x_t`` itself is not modified.
    """
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        logits = classifier(x_in, t)
        if logits.dim() != 2 or logits.shape[0] != x_t.shape[0]:
            raise InputError(f"classifier output: got shape {tuple(logits.shape)}, expected logits "
                             f"[{x_t.shape[0]}, num_classes]")
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise InputError(f"guidance labels y: values {int(y.min())}..{int(y.max())} are outside the "
                             f"classifier's {logits.shape[1]} classes (0..{logits.shape[1] - 1})")
        log_probs = F.log_softmax(logits, dim=-1)
        selected = log_probs[range(len(logits)), y.view(-1)]
        return torch.autograd.grad(selected.sum(), x_in)[0] * scale


def classifier_guidance(denoiser: Denoiser, diffusion: GaussianDiffusion,
                        classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float,
                        y: torch.Tensor | Sequence[int] | np.ndarray | None) -> Denoiser:
    """Wrap ``denoiser`` with classifier guidance of strength ``scale`` towards labels ``y``.

    ``classifier(x_t, t) -> logits [N, num_classes]`` (a noisy classifier, eval mode);
    ``y``: int class labels [N] aligned with the batch the sampler runs (required when ``scale``
    is not 0). The result ``guided(x_t, j) -> Prediction`` works with every sampler: ``.mean`` is
    the guided mean (ancestral), ``.pred_xstart`` the guided, unclamped x_0 (DDIM), ``.cond_grad``
    the scaled gradient g; variance and log-variance are unchanged. ``scale == 0`` returns
    ``denoiser`` itself (exact no-op; the classifier never runs).
    Raises ``ConfigError`` for a non-finite or negative scale or missing labels.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ConfigError(f"guidance_scale: got {scale!r}, expected a finite number >= 0")
    if scale == 0:
        return denoiser
    if y is None:
        raise ConfigError(f"guidance_scale {scale}: classifier guidance needs class labels y (one per "
                          f"sample), but none were given")
    scale = float(scale)

    def guided(x_t: torch.Tensor, j: torch.Tensor) -> Prediction:
        pred = denoiser(x_t, j)
        labels = _as_labels(y, x_t.shape[0], x_t.device)
        g = classifier_gradient(classifier, x_t, diffusion.model_timesteps(j), labels, scale)
        # condition_mean: shift the mean by variance * g (Algorithm 1).
        mean = pred.mean.float() + pred.variance * g.float()
        # condition_score: eps' = eps - sqrt(1 - abar) g; x_0 re-derived, not re-clamped (Algorithm 2).
        alpha_bar = diffusion.gather("alphas_cumprod", j, x_t.shape)
        eps = diffusion.predict_eps_from_xstart(x_t, j, pred.pred_xstart)
        eps = eps - (1 - alpha_bar).sqrt() * g
        pred_xstart = diffusion.predict_xstart_from_eps(x_t, j, eps)
        return Prediction(mean=mean, variance=pred.variance, log_variance=pred.log_variance,
                          pred_xstart=pred_xstart, cond_grad=g)

    return guided
