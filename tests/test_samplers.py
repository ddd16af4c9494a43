"""Sampler contract and step formulas (evalkit.samplers); fixture parity is in test_trajectories.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.diffusion import Prediction, adm_denoiser, create_diffusion
from evalkit.errors import ConfigError, InputError
from evalkit.samplers import SAMPLERS, ancestral_step, ddim_step, sample

SHAPE = (2, 3, 4, 4)


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def linear_model(x, t, **kwargs):
    """A deterministic stand-in network: eps and v depend on x and t, per sample only."""
    scale = (t.float() / 1000.0).view(-1, 1, 1, 1)
    eps = torch.tanh(x * 0.7 + scale)
    v = torch.tanh(x.flip(1) * 0.3 - scale)
    return torch.cat([eps, v], dim=1)


def seeded_noise(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda k, like: torch.randn(like.shape, generator=gen)


@pytest.fixture
def diffusion():
    return create_diffusion(timestep_respacing="10")


# ---------------------------------------------------------------------------------------------
# Contract shared by every sampler


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_contract_noise_order_progress_and_no_grad(name, diffusion):
    draws, ticks, grads = [], [], []

    def noise(k, like):
        draws.append(k)
        assert like.shape == SHAPE
        return torch.zeros_like(like)

    def model(x, t, **kw):
        grads.append(torch.is_grad_enabled())
        return linear_model(x, t)

    x0 = sample(adm_denoiser(model, diffusion), diffusion, _rand(SHAPE, 0), sampler=name, noise=noise,
                progress=lambda k, K: ticks.append((k, K)))
    K = diffusion.num_timesteps
    assert draws == list(range(1, K + 1))  # one draw per step, including the last
    assert ticks == [(k, K) for k in range(1, K + 1)]
    assert grads == [False] * K
    assert x0.shape == SHAPE and x0.dtype == torch.float32 and torch.isfinite(x0).all()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_contract_deterministic_and_batch_independent(name, diffusion):
    denoiser = adm_denoiser(linear_model, diffusion)
    x_T = _rand(SHAPE, 1)
    per_step = _rand((diffusion.num_timesteps + 1, *SHAPE), 2)
    kwargs = {"eta": 0.5} if name == "ddim" else {}

    def noise(rows):
        return lambda k, like: per_step[k, rows].clone()

    both = sample(denoiser, diffusion, x_T, sampler=name, noise=noise(slice(0, 2)), **kwargs)
    again = sample(denoiser, diffusion, x_T, sampler=name, noise=noise(slice(0, 2)), **kwargs)
    second = sample(denoiser, diffusion, x_T[1:], sampler=name, noise=noise(slice(1, 2)), **kwargs)
    torch.testing.assert_close(both, again, rtol=0, atol=0)
    torch.testing.assert_close(both[1:], second, rtol=1e-6, atol=1e-6)
    # The noise matters (except in eta-0 DDIM): a different stream changes the result.
    other = sample(denoiser, diffusion, x_T, sampler=name, noise=seeded_noise(9), **kwargs)
    assert float((other - both).abs().max()) > 1e-3


def test_default_noise_is_torch_global_rng(diffusion):
    denoiser = adm_denoiser(linear_model, diffusion)
    torch.manual_seed(3)
    a = sample(denoiser, diffusion, _rand(SHAPE, 1))
    torch.manual_seed(3)
    b = sample(denoiser, diffusion, _rand(SHAPE, 1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_callback_sees_each_step(diffusion):
    steps = []
    x0 = sample(adm_denoiser(linear_model, diffusion), diffusion, _rand(SHAPE, 0), noise=seeded_noise(0),
                callback=steps.append)
    assert [s.k for s in steps] == list(range(1, 11)) and [s.j for s in steps] == list(range(9, -1, -1))
    for prev, cur in zip(steps, steps[1:]):
        assert cur.x_t is prev.sample
    assert steps[-1].sample is x0 and isinstance(steps[0].prediction, Prediction)


# ---------------------------------------------------------------------------------------------
# Step formulas


def _one_step(sampler, diffusion, j, eta=0.0):
    """One sampler step at respaced index j from a fixed x_t and z: (x_t, z, prediction, output)."""
    x_t, z = _rand(SHAPE, 10), _rand(SHAPE, 11)
    denoiser = adm_denoiser(linear_model, diffusion)
    jt = torch.full((SHAPE[0],), j, dtype=torch.int64)
    if sampler == "ancestral":
        pred, out = ancestral_step(denoiser, diffusion, x_t, jt, lambda: z)
    else:
        pred, out = ddim_step(denoiser, diffusion, x_t, jt, lambda: z, eta)
    return x_t, z, pred, out


@pytest.mark.parametrize("j", [9, 4, 0])
def test_ancestral_step_formula(diffusion, j):
    x_t, z, pred, out = _one_step("ancestral", diffusion, j)
    mask = 0.0 if j == 0 else 1.0
    want = pred.mean.double() + mask * torch.exp(0.5 * pred.log_variance.double()) * z.double()
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("j,eta", [(9, 0.0), (4, 0.5), (1, 1.0), (0, 0.7)])
def test_ddim_step_formula_float64(diffusion, j, eta):
    x_t, z, pred, out = _one_step("ddim", diffusion, j, eta)
    ab, abp = diffusion.alphas_cumprod[j], diffusion.alphas_cumprod_prev[j]
    x0 = pred.pred_xstart.double().numpy()
    x = x_t.double().numpy()
    eps = (np.sqrt(1 / ab) * x - x0) / np.sqrt(1 / ab - 1)
    sigma = eta * np.sqrt((1 - abp) / (1 - ab)) * np.sqrt(1 - ab / abp)
    want = x0 * np.sqrt(abp) + np.sqrt(1 - abp - sigma ** 2) * eps + (j != 0) * sigma * z.double().numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)


def test_ddim_eta1_equals_ancestral_with_posterior_variance(diffusion):
    """DDIM with eta = 1 is the DDPM posterior: it equals ancestral sampling with v = -1 (sigma~^2)."""
    def model(x, t, **kw):
        out = linear_model(x, t)
        return torch.cat([out[:, :3], -torch.ones_like(out[:, 3:])], dim=1)

    denoiser = adm_denoiser(model, diffusion)
    x_T = _rand(SHAPE, 4)
    a = sample(denoiser, diffusion, x_T, sampler="ancestral", noise=seeded_noise(5))
    d = sample(denoiser, diffusion, x_T, sampler="ddim", eta=1.0, noise=seeded_noise(5))
    torch.testing.assert_close(a, d, rtol=1e-4, atol=1e-4)
    d0 = sample(denoiser, diffusion, x_T, sampler="ddim", eta=0.0, noise=seeded_noise(5))
    assert float((d0 - d).abs().max()) > 1e-2


def test_point_mass_data_is_recovered_exactly_enough():
    """A denoiser that always predicts the same x_0 ends there (c1_0 = 1, c2_0 = 0; DDIM abar_prev = 1)."""
    diffusion = create_diffusion(timestep_respacing="ddim5")
    target = _rand(SHAPE, 7).clamp(-0.9, 0.9)

    def oracle(x_t, j):
        var = diffusion.gather("posterior_variance", j, x_t.shape)
        return Prediction(mean=diffusion.q_posterior_mean(target, x_t, j), variance=var,
                          log_variance=diffusion.gather("posterior_log_variance_clipped", j, x_t.shape),
                          pred_xstart=target)

    for name in SAMPLERS:
        x0 = sample(oracle, diffusion, _rand(SHAPE, 8), sampler=name, noise=seeded_noise(1))
        torch.testing.assert_close(x0, target, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Errors


def test_sampler_errors(diffusion):
    denoiser = adm_denoiser(linear_model, diffusion)
    x_T = _rand(SHAPE, 0)
    with pytest.raises(ConfigError, match="'euler'.*ancestral, ddim"):
        sample(denoiser, diffusion, x_T, sampler="euler")
    with pytest.raises(ConfigError, match="eta only applies to the ddim sampler"):
        sample(denoiser, diffusion, x_T, sampler="ancestral", eta=0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"eta: got .* \[0, 1\]"):
            sample(denoiser, diffusion, x_T, sampler="ddim", eta=bad)
    with pytest.raises(InputError, match=r"x_T.*\[N, C, H, W\]"):
        sample(denoiser, diffusion, x_T[0])
    with pytest.raises(InputError, match=r"step 1 returned shape \(3,\)"):
        sample(denoiser, diffusion, x_T, noise=lambda k, like: torch.zeros(3))
