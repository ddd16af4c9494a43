"""Gaussian diffusion schedules, timestep respacing, and the ADM denoiser adapter.

Reference: openai/guided-diffusion at ``evalkit.REFERENCE_COMMIT``
(``guided_diffusion/gaussian_diffusion.py``, ``respace.py``, ``script_util.py``). This module owns the *numbers*: float64 per-timestep
tables, the respaced process, and the adapter that turns an ADM network's raw output into a
``Prediction`` (posterior mean, variance, log-variance, x_0). Samplers (``evalkit.samplers``) and
guidance (``evalkit.guidance``) only ever see a *denoiser*:

    denoiser(x_t: FloatTensor [N, C, H, W], j: LongTensor [N] of RESPACED indices) -> Prediction

Numerics match the reference bit for bit on CPU: tables are computed in float64 with numpy, a
per-timestep coefficient is gathered from the float64 table and converted to float32, and all
tensor arithmetic is float32 in the reference's operation order.

Imports torch and numpy only (plus the shared ``errors``); models are passed in, never imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from evalkit.errors import ConfigError, InputError

__all__ = [
    "NOISE_SCHEDULES",
    "Denoiser",
    "GaussianDiffusion",
    "Prediction",
    "adm_denoiser",
    "create_diffusion",
    "get_named_beta_schedule",
    "space_timesteps",
    "samples_to_uint8",
]

NOISE_SCHEDULES = ("linear", "cosine")

# Names of the float64 per-timestep tables every GaussianDiffusion carries (all length K).
TABLES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "log_betas",
    "fixed_large_variance",
    "fixed_large_log_variance",
)


# ---------------------------------------------------------------------------------------------
# Respacing


def space_timesteps(num_timesteps: int, spec: str) -> list[int]:
    """Original timestep indices kept by a ``timestep_respacing`` string, sorted ascending.

    ``spec`` is ``""`` (keep all ``num_timesteps``), ``"ddimN"`` (the smallest integer stride ``s``
    with ``len(range(0, T, s)) == N``; keeps 0, s, 2s, ...) or a comma list of per-section counts
    (``"250"``, ``"10,20,30"``): ``[0, T)`` is cut into equal consecutive sections (the remainder
    goes to the first ones) and within a section of size S, ``count`` indices are taken at the
    float-accumulated stride ``(S - 1) / (count - 1)`` rounded with Python's ``round`` (ties to even).
    The result is also the ``timestep_map`` of the respaced process (respaced j -> original t_j).

    Raises ``ConfigError`` for a malformed string, a count below 1, a section smaller than its
    count, or a ``ddimN`` that no integer stride produces.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ConfigError(f"diffusion steps: got {num_timesteps!r}, expected a positive integer")
    T = int(num_timesteps)
    if not isinstance(spec, str):
        raise ConfigError(f"timestep_respacing: got {spec!r} ({type(spec).__name__}), expected a string "
                          f"such as '250', 'ddim25' or '10,20,30'")
    text = spec.strip()
    if text == "":
        return list(range(T))

    # "ddimN": one section, integer stride, never includes T - 1 unless N == T.
    if text.startswith("ddim"):
        count_text = text[len("ddim"):]
        try:
            desired = int(count_text)
        except ValueError:
            raise ConfigError(f"timestep_respacing {spec!r}: expected 'ddim' followed by an integer step "
                              f"count, e.g. 'ddim25'") from None
        for stride in range(1, T + 1):
            if len(range(0, T, stride)) == desired:
                return list(range(0, T, stride))
        raise ConfigError(f"timestep_respacing {spec!r}: no integer stride gives exactly {desired} steps out "
                          f"of {T} (a ddim count must be between 1 and {T} and equal len(range(0, {T}, s)) "
                          f"for some stride s; the count form '{desired}' keeps fractional strides)")

    # Comma list of per-section counts.
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"timestep_respacing {spec!r}: expected '', 'ddimN' or a comma list of integer "
                          f"step counts such as '250' or '10,20,30'") from None
    size_per, extra = divmod(T, len(counts))
    if size_per == 0:
        raise ConfigError(f"timestep_respacing {spec!r}: {len(counts)} sections cannot split {T} steps")
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1:
            raise ConfigError(f"timestep_respacing {spec!r}: section {i} asks for {count} steps; every "
                              f"section needs at least 1")
        if size < count:
            raise ConfigError(f"timestep_respacing {spec!r}: section {i} has {size} of the {T} diffusion "
                              f"steps but asks for {count}; counts must not exceed their section's size")
        # Fractional stride accumulated by repeated addition, rounded half-to-even (reference rule).
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        acc = 0.0
        for _ in range(count):
            kept.append(start + round(acc))
            acc += frac_stride
        start += size
    return sorted(set(kept))


# ---------------------------------------------------------------------------------------------
# Schedules


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Base beta schedule (float64 [T]) by name: ``"linear"`` or ``"cosine"`` (reference ``get_named_beta_schedule``)."""
    if name == "linear":
        # Linear schedule scaled so that any T matches the T=1000 endpoints 1e-4 .. 0.02.
        scale = 1000 / num_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        # Nichol & Dhariwal cosine alpha_bar; each beta capped at 0.999.
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                 for i in range(num_timesteps)]
        return np.array(betas, dtype=np.float64)
    raise ConfigError(f"noise_schedule: got {name!r}, expected one of {', '.join(NOISE_SCHEDULES)}")


# ---------------------------------------------------------------------------------------------
# The (respaced) diffusion process


class GaussianDiffusion:
    """A (possibly respaced) Gaussian diffusion process: float64 tables plus float32 gathers.

    Attributes (numpy float64 ``[K]`` unless noted): ``betas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev``, ``alphas_cumprod_next``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``log_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance``, ``posterior_log_variance_clipped``,
    ``posterior_mean_coef1``, ``posterior_mean_coef2``; ``num_timesteps`` (K), ``timestep_map``
    (int64 ``[K]``, respaced index -> original index), ``original_num_steps`` (T), ``base_betas``
    (float64 ``[T]``, the unrespaced schedule), ``learn_sigma``, ``predict_xstart``,
    ``rescale_timesteps``.

    Build one with ``create_diffusion``; the constructor takes already-respaced ``betas``.
    """

    def __init__(self, betas: np.ndarray, *, timestep_map: np.ndarray | None = None,
                 original_num_steps: int | None = None, base_betas: np.ndarray | None = None,
                 learn_sigma: bool = True, predict_xstart: bool = False, rescale_timesteps: bool = False,
                 noise_schedule: str | None = None, timestep_respacing: str = ""):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ConfigError(f"betas: got shape {betas.shape}, expected a non-empty 1-D schedule")
        if not (np.all(betas > 0) and np.all(betas <= 1)):
            raise ConfigError("betas: every beta must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        self.timestep_map = (np.arange(self.num_timesteps, dtype=np.int64) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ConfigError(f"timestep_map: got shape {self.timestep_map.shape}, expected ({self.num_timesteps},)")
        self.original_num_steps = int(original_num_steps if original_num_steps is not None else self.num_timesteps)
        self.base_betas = betas if base_betas is None else np.asarray(base_betas, dtype=np.float64)
        self.learn_sigma = bool(learn_sigma)
        self.predict_xstart = bool(predict_xstart)
        self.rescale_timesteps = bool(rescale_timesteps)
        self.noise_schedule = noise_schedule
        self.timestep_respacing = timestep_respacing

        # Derived float64 tables, in the reference's formulas.
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log(0) at t=0 is avoided by repeating the t=1 value (one-step processes keep log(beta_0)).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # Variance tables used by the adapter: log(beta) for learned range, FIXED_LARGE otherwise.
        self.log_betas = np.log(betas)
        self.fixed_large_variance = np.append(first, betas[1:])
        self.fixed_large_log_variance = np.log(self.fixed_large_variance)

        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(K={self.num_timesteps}, T={self.original_num_steps}, "
                f"schedule={self.noise_schedule!r}, respacing={self.timestep_respacing!r}, "
                f"learn_sigma={self.learn_sigma}, predict_xstart={self.predict_xstart}, "
                f"rescale_timesteps={self.rescale_timesteps})")

    # -- gathering -----------------------------------------------------------------------------

    def _table32(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        table = self._cache.get(key)
        if table is None:
            # float64 -> float32 elementwise: identical to gathering float64 and converting after.
            table = torch.from_numpy(np.asarray(getattr(self, name), dtype=np.float64)).to(torch.float32).to(device)
            self._cache[key] = table
        return table

    def gather(self, name: str, j: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Float32 coefficient ``table[j]`` of the float64 table ``name``, expanded to ``shape``.

        ``j``: LongTensor ``[N]`` of respaced indices; ``shape``: ``[N, ...]`` (e.g. ``x_t.shape``).
        """
        res = self._table32(name, j.device)[j]
        return res.view(-1, *([1] * (len(shape) - 1))).expand(shape)

    def model_timesteps(self, j: torch.Tensor) -> torch.Tensor:
        """Timesteps the networks receive for respaced indices ``j`` (LongTensor ``[N]``).

        Original indices ``timestep_map[j]`` (same dtype as ``j``, int64), or, with
        ``rescale_timesteps``, float32 ``timestep_map[j] * 1000 / T``.
        """
        key = ("timestep_map", f"{j.device}/{j.dtype}")
        map_tensor = self._cache.get(key)
        if map_tensor is None:
            # Lookup table in the dtype of the indices (int64), as the reference's respacing wrapper.
            map_tensor = torch.tensor(self.timestep_map, device=j.device, dtype=j.dtype)
            self._cache[key] = map_tensor
        new_ts = map_tensor[j]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return new_ts

    # -- formulas (float32 tensors, reference operation order) ---------------------------------

    def predict_xstart_from_eps(self, x_t: torch.Tensor, j: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps. Shapes ``[N, C, H, W]``."""
        return (self.gather("sqrt_recip_alphas_cumprod", j, x_t.shape) * x_t
                - self.gather("sqrt_recipm1_alphas_cumprod", j, x_t.shape) * eps)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, j: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1/abar) x_t - x_0) / sqrt(1/abar - 1). Shapes ``[N, C, H, W]``."""
        return ((self.gather("sqrt_recip_alphas_cumprod", j, x_t.shape) * x_t - pred_xstart)
                / self.gather("sqrt_recipm1_alphas_cumprod", j, x_t.shape))

    def q_posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) = c1_t x_0 + c2_t x_t."""
        return (self.gather("posterior_mean_coef1", j, x_t.shape) * x_start
                + self.gather("posterior_mean_coef2", j, x_t.shape) * x_t)

    def q_sample(self, x_start: torch.Tensor, j: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse data to respaced step ``j``: sqrt(abar) x_0 + sqrt(1 - abar) noise."""
        return (self.gather("sqrt_alphas_cumprod", j, x_start.shape) * x_start
                + self.gather("sqrt_one_minus_alphas_cumprod", j, x_start.shape) * noise)


def create_diffusion(steps: int = 1000, noise_schedule: str = "linear", timestep_respacing: str = "",
                     learn_sigma: bool = True, predict_xstart: bool = False,
                     rescale_timesteps: bool = False) -> GaussianDiffusion:
    """Build the (respaced) diffusion process exactly as the reference's ``create_gaussian_diffusion``.

    ``steps``: base process length T; ``noise_schedule``: ``"linear"`` | ``"cosine"``;
    ``timestep_respacing``: see ``space_timesteps`` (``""`` keeps all T). The respaced betas are
    ``1 - abar[t_i] / abar[t_{i-1}]`` (first divisor 1.0), recomputed tables in float64.
    ``learn_sigma`` selects learned-range variance (else fixed-large); ``predict_xstart`` selects
    x_0 prediction (else epsilon). Raises ``ConfigError`` on bad values.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"diffusion steps: got {steps!r}, expected a positive integer")
    base_betas = get_named_beta_schedule(noise_schedule, int(steps))
    kept = space_timesteps(int(steps), timestep_respacing or "")
    # Respaced process: keep abar at the retained steps, re-derive betas from consecutive ratios.
    base_alphas_cumprod = np.cumprod(1.0 - base_betas, axis=0)
    keep = set(kept)
    last_alpha_cumprod = 1.0
    new_betas = []
    for i, alpha_cumprod in enumerate(base_alphas_cumprod):
        if i in keep:
            new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
            last_alpha_cumprod = alpha_cumprod
    return GaussianDiffusion(np.array(new_betas, dtype=np.float64), timestep_map=np.array(kept, dtype=np.int64),
                             original_num_steps=int(steps), base_betas=base_betas, learn_sigma=learn_sigma,
                             predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
                             noise_schedule=noise_schedule, timestep_respacing=timestep_respacing or "")


# ---------------------------------------------------------------------------------------------
# Denoiser: the one signature samplers and guidance see


@dataclass
class Prediction:
    """One denoiser evaluation at ``x_t`` (all float32 ``[N, C, H, W]``).

    ``mean``: mean of p(x_{t-1} | x_t) (used by ancestral sampling); ``variance`` and
    ``log_variance``: its variance (learned-range or fixed-large); ``pred_xstart``: the x_0
    prediction (clamped to [-1, 1] when ``clip_denoised``; used by DDIM). ``cond_grad``: the scaled
    classifier gradient when the prediction came from ``classifier_guidance``, else ``None``.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    cond_grad: torch.Tensor | None = None


Denoiser = Callable[[torch.Tensor, torch.Tensor], Prediction]


def adm_denoiser(model: Callable[..., torch.Tensor], diffusion: GaussianDiffusion, clip_denoised: bool = True,
                 model_kwargs: Mapping[str, Any] | None = None) -> Denoiser:
    """Adapt an ADM network (``model(x, t, **model_kwargs) -> [N, C or 2C, H, W]``) to a denoiser.

    The returned ``denoiser(x_t, j)`` takes float32 ``x_t [N, C, H, W]`` and int64 RESPACED indices
    ``j [N]``; it calls ``model(x_t, diffusion.model_timesteps(j), **model_kwargs)`` (original
    indices), splits eps/x_0 and the variance values ``v`` when ``diffusion.learn_sigma``, and returns
    a ``Prediction`` (reference ``p_mean_variance``). ``model_kwargs`` (e.g. ``y``, ``low_res``)
    hold per-batch tensors aligned with ``x_t``.
    """
    kwargs = dict(model_kwargs or {})

    def denoiser(x_t: torch.Tensor, j: torch.Tensor) -> Prediction:
        C = x_t.shape[1]
        model_output = model(x_t, diffusion.model_timesteps(j), **kwargs)
        expected = 2 * C if diffusion.learn_sigma else C
        if model_output.dim() != 4 or model_output.shape[0] != x_t.shape[0] or model_output.shape[1] != expected \
                or model_output.shape[2:] != x_t.shape[2:]:
            raise InputError(f"model output: got shape {tuple(model_output.shape)}, expected "
                             f"({x_t.shape[0]}, {expected}, {x_t.shape[2]}, {x_t.shape[3]}) for input "
                             f"{tuple(x_t.shape)} with learn_sigma={diffusion.learn_sigma}")
        if diffusion.learn_sigma:
            # Learned range: interpolate log beta_t and the clipped posterior log variance.
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            min_log = diffusion.gather("posterior_log_variance_clipped", j, x_t.shape)
            max_log = diffusion.gather("log_betas", j, x_t.shape)
            frac = (model_var_values + 1) / 2
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        else:
            # Fixed large: beta_t, with posterior_variance[1] at t = 0.
            model_variance = diffusion.gather("fixed_large_variance", j, x_t.shape)
            model_log_variance = diffusion.gather("fixed_large_log_variance", j, x_t.shape)

        # x_0 from the network, clamped before it enters the posterior mean.
        if diffusion.predict_xstart:
            pred_xstart = model_output
        else:
            pred_xstart = diffusion.predict_xstart_from_eps(x_t, j, model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean = diffusion.q_posterior_mean(pred_xstart, x_t, j)
        return Prediction(mean=model_mean, variance=model_variance, log_variance=model_log_variance,
                          pred_xstart=pred_xstart)

    return denoiser


# ---------------------------------------------------------------------------------------------
# Output conversion


def samples_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Final samples float ``[N, C, H, W]`` in about [-1, 1] -> uint8 ``[N, H, W, C]`` (NHWC).

    ``clamp((x + 1) * 127.5, 0, 255)`` in float32, then a truncating cast (floor, no rounding).
    Raises ``InputError`` for a non-4-D or non-finite input.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InputError(f"samples_to_uint8: got {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}, "
                         f"expected a float tensor [N, C, H, W]")
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise InputError("samples_to_uint8: samples contain NaN or infinity; the sampler diverged")
    u8 = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
