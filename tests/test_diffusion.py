"""Schedules, respacing, the ADM denoiser adapter and uint8 conversion (evalkit.diffusion).

Parity with openai/guided-diffusion (commit 22e0df81...) through tests/fixtures/space_timesteps.json
and diffusion_schedules.npz; formula checks recompute in float64 from spec/sampling.md §5-§6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_fixture
from evalkit.diffusion import (GaussianDiffusion, Prediction, adm_denoiser, create_diffusion,
                               get_named_beta_schedule, space_timesteps, samples_to_uint8)
from evalkit.errors import ConfigError, InputError

# ---------------------------------------------------------------------------------------------
# Respacing


@pytest.mark.parity
def test_space_timesteps_fixture_tables_identical():
    meta, _ = load_fixture("space_timesteps")
    assert len(meta["results"]) >= 10
    for spec, want in meta["results"].items():
        assert space_timesteps(meta["num_timesteps"], spec) == want, spec


@pytest.mark.parametrize("spec,count,first,last,total", [
    ("250", 250, [0, 4, 8, 12], [991, 995, 999], 124875),
    ("1000", 1000, [0, 1, 2], [999], 499500),
    ("100", 100, [0, 10, 20, 30, 40, 50, 61, 71], [969, 979, 989, 999], 49950),
    ("50", 50, [0, 20, 41, 61, 82], [958, 979, 999], 24975),
    ("25", 25, [0, 42, 83, 125, 166], [916, 957, 999], 12487),
    ("ddim25", 25, [0, 40, 80], [920, 960], 12000),
    ("ddim50", 50, [0, 20, 40], [960, 980], 24500),
    ("ddim250", 250, [0, 4, 8], [992, 996], 124500),
    ("10,20,30", 60, [0, 37], [999], 36655),
    ("4", 4, [0, 333], [666, 999], 1998),
])
def test_space_timesteps_spec_table(spec, count, first, last, total):
    kept = space_timesteps(1000, spec)
    assert len(kept) == count and sum(kept) == total
    assert kept[:len(first)] == first and kept[-len(last):] == last
    assert kept == sorted(set(kept))


def test_space_timesteps_rounds_half_to_even_and_sections():
    # "25": stride 999/24 = 41.625, 4 * 41.625 = 166.5 rounds to 166 (ties to even), not 167.
    assert space_timesteps(1000, "25")[4] == 166
    # "10,20,30": sections [0,334) [334,667) [667,1000); each section's last index is kept.
    kept = space_timesteps(1000, "10,20,30")
    assert {333, 334, 666, 667, 999} <= set(kept)
    assert space_timesteps(1000, "") == list(range(1000))
    assert space_timesteps(10, "ddim10") == list(range(10))
    assert space_timesteps(1000, "ddim1") == [0]


@pytest.mark.parametrize("spec,fragment", [
    ("ddim600", "no integer stride"),
    ("ddim1001", "no integer stride"),
    ("ddim0", "no integer stride"),
    ("ddimx", "'ddim' followed by an integer"),
    ("ddim", "'ddim' followed by an integer"),
    ("abc", "comma list of integer"),
    ("10,x", "comma list of integer"),
    ("2.5", "comma list of integer"),
    ("1001", "has 1000 of the 1000 diffusion steps but asks for 1001"),
    ("500,500,1", "section 0 has 334"),
    ("10,0", "at least 1"),
    ("-5", "at least 1"),
])
def test_space_timesteps_errors(spec, fragment):
    with pytest.raises(ConfigError) as info:
        space_timesteps(1000, spec)
    assert fragment in str(info.value) and repr(spec) in str(info.value)


def test_space_timesteps_bad_arguments():
    with pytest.raises(ConfigError):
        space_timesteps(0, "")
    with pytest.raises(ConfigError):
        space_timesteps(1000, 250)
    with pytest.raises(ConfigError, match="more|asks for 11"):
        create_diffusion(steps=10, timestep_respacing="11")


# ---------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parity
def test_diffusion_schedules_fixture():
    meta, arrays = load_fixture("diffusion_schedules")
    for case in meta["cases"]:
        diffusion = create_diffusion(steps=case["diffusion_steps"], noise_schedule=case["noise_schedule"],
                                     timestep_respacing=case["timestep_respacing"])
        assert diffusion.num_timesteps == case["num_timesteps"]
        for attr in meta["attributes"]:
            want = arrays[case["prefix"] + attr]
            got = getattr(diffusion, attr)
            assert got.dtype == want.dtype and got.shape == want.shape, (case, attr)
            if attr == "timestep_map":
                np.testing.assert_array_equal(got, want)
            else:
                # float64 tables: numpy's log/exp/cos/sqrt may differ by a few ulps between CPUs (SIMD
                # variants), and alphas_cumprod is a product over up to 1000 steps: <= ~1000 * 2 eps ~ 2e-13
                # relative. (Bit-identical on the fixtures' CPU and here.) Wrong respacing is off by > 1e-3.
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{case['prefix']}{attr}")


def test_schedule_spec_numbers():
    linear = create_diffusion(noise_schedule="linear")
    assert linear.betas[0] == pytest.approx(1e-4, rel=1e-12) and linear.betas[-1] == pytest.approx(0.02, rel=1e-12)
    assert linear.alphas_cumprod[499] == pytest.approx(0.07858724288, rel=1e-9)
    assert linear.alphas_cumprod[999] == pytest.approx(4.035829765e-05, rel=1e-9)
    cosine = create_diffusion(noise_schedule="cosine")
    assert cosine.betas[0] == pytest.approx(4.128422482e-05, rel=1e-9)
    assert cosine.betas[-1] == 0.999
    assert cosine.alphas_cumprod[499] == pytest.approx(0.4938435904, rel=1e-9)
    assert cosine.alphas_cumprod[999] == pytest.approx(2.428766907e-09, rel=1e-8)
    r250 = create_diffusion(timestep_respacing="250")
    assert r250.betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert r250.betas[1] == pytest.approx(5.990655645e-04, rel=1e-9)
    assert r250.betas[249] == pytest.approx(0.07751934499, rel=1e-9)
    ddim25 = create_diffusion(timestep_respacing="ddim25")
    assert ddim25.betas[1] == pytest.approx(0.02013508946, rel=1e-9)
    assert ddim25.betas[24] == pytest.approx(0.5326018231, rel=1e-9)
    assert create_diffusion(noise_schedule="cosine", timestep_respacing="250").betas[249] == \
        pytest.approx(0.9999374992, rel=1e-9)
    # Respacing keeps alpha_bar at the retained steps.
    np.testing.assert_allclose(r250.alphas_cumprod, linear.alphas_cumprod[r250.timestep_map], rtol=1e-12)
    # Linear schedule scales with T so the endpoints match T = 1000's.
    assert get_named_beta_schedule("linear", 4000)[-1] == pytest.approx(0.005, rel=1e-12)


def test_create_diffusion_errors():
    with pytest.raises(ConfigError, match="noise_schedule.*'quadratic'.*linear, cosine"):
        create_diffusion(noise_schedule="quadratic")
    with pytest.raises(ConfigError, match="positive integer"):
        create_diffusion(steps=0)


def test_model_timesteps_original_and_rescaled():
    diffusion = create_diffusion(timestep_respacing="10")
    assert diffusion.timestep_map.dtype == np.int64
    t = diffusion.model_timesteps(torch.tensor([9, 3, 0]))
    assert t.dtype == torch.int64 and t.tolist() == [999, 333, 0]
    rescaled = create_diffusion(steps=500, timestep_respacing="ddim5", rescale_timesteps=True)
    t = rescaled.model_timesteps(torch.tensor([4, 1]))
    assert t.dtype == torch.float32 and t.tolist() == [800.0, 200.0]


def test_gather_is_float64_table_converted_to_float32():
    diffusion = create_diffusion(noise_schedule="cosine", timestep_respacing="10")
    j = torch.tensor([9, 0, 5])
    got = diffusion.gather("sqrt_recipm1_alphas_cumprod", j, (3, 2, 4, 4))
    assert got.dtype == torch.float32 and got.shape == (3, 2, 4, 4)
    want = diffusion.sqrt_recipm1_alphas_cumprod[[9, 0, 5]].astype(np.float32)
    np.testing.assert_array_equal(got[:, 1, 2, 3].numpy(), want)


# ---------------------------------------------------------------------------------------------
# ADM adapter


def _fixed_model(out: torch.Tensor, seen: list):
    def model(x, t, **kwargs):
        seen.append((t.clone(), kwargs))
        return out.clone()
    return model


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("clip", [True, False])
def test_adm_denoiser_learned_range_matches_float64_formulas(clip):
    diffusion = create_diffusion(timestep_respacing="10")
    x = _rand((2, 3, 4, 4), 0) * 0.5
    out = torch.cat([_rand((2, 3, 4, 4), 1) * 2, _rand((2, 3, 4, 4), 2).clamp(-1.5, 1.5)], dim=1)
    seen = []
    denoiser = adm_denoiser(_fixed_model(out, seen), diffusion, clip_denoised=clip, model_kwargs={"y": "labels"})
    j = torch.tensor([7, 2])
    pred = denoiser(x, j)
    assert isinstance(pred, Prediction) and pred.cond_grad is None
    assert seen[0][0].tolist() == [777, 222] and seen[0][1] == {"y": "labels"}

    # Independent float64 computation (spec §6.2-§6.3).
    x64, eps, v = x.double().numpy(), out[:, :3].double().numpy(), out[:, 3:].double().numpy()
    ab = diffusion.alphas_cumprod[[7, 2]][:, None, None, None]
    abp = diffusion.alphas_cumprod_prev[[7, 2]][:, None, None, None]
    beta = diffusion.betas[[7, 2]][:, None, None, None]
    x0 = np.sqrt(1 / ab) * x64 - np.sqrt(1 / ab - 1) * eps
    if clip:
        x0 = np.clip(x0, -1, 1)
    mean = beta * np.sqrt(abp) / (1 - ab) * x0 + (1 - abp) * np.sqrt(1 - beta) / (1 - ab) * x64
    post_log = np.log(beta * (1 - abp) / (1 - ab))
    frac = (v + 1) / 2
    log_var = frac * np.log(beta) + (1 - frac) * post_log
    np.testing.assert_allclose(pred.pred_xstart.numpy(), x0, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(pred.mean.numpy(), mean, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(pred.log_variance.numpy(), log_var, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(pred.variance.numpy(), np.exp(log_var), rtol=1e-4)
    unclipped = float(pred.pred_xstart.abs().max())
    assert (unclipped <= 1.0) if clip else (unclipped > 1.0)


def test_adm_denoiser_posterior_log_variance_clipped_at_t0():
    diffusion = create_diffusion(timestep_respacing="10")
    out = torch.cat([torch.zeros(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)], dim=1)  # frac = 0
    pred = adm_denoiser(_fixed_model(out, []), diffusion)(torch.zeros(1, 3, 2, 2), torch.tensor([0]))
    # At t=0 the clipped posterior log variance repeats the t=1 entry.
    want = np.float32(np.log(diffusion.posterior_variance[1]))
    assert torch.all(pred.log_variance == torch.tensor(want))


def test_adm_denoiser_fixed_large_and_x0_prediction():
    diffusion = create_diffusion(timestep_respacing="10", learn_sigma=False, predict_xstart=True)
    x0 = _rand((2, 3, 4, 4), 3) * 0.5
    pred = adm_denoiser(_fixed_model(x0, []), diffusion)(_rand((2, 3, 4, 4), 4), torch.tensor([0, 5]))
    torch.testing.assert_close(pred.pred_xstart, x0.clamp(-1, 1), rtol=0, atol=0)
    assert pred.variance[0, 0, 0, 0].item() == pytest.approx(diffusion.posterior_variance[1], rel=1e-6)
    assert pred.variance[1, 0, 0, 0].item() == pytest.approx(diffusion.betas[5], rel=1e-6)
    torch.testing.assert_close(pred.log_variance, pred.variance.log(), rtol=1e-6, atol=1e-6)


def test_adm_denoiser_wrong_channel_count():
    diffusion = create_diffusion(timestep_respacing="10", learn_sigma=True)
    denoiser = adm_denoiser(_fixed_model(torch.zeros(2, 3, 4, 4), []), diffusion)
    with pytest.raises(InputError, match=r"got shape \(2, 3, 4, 4\), expected \(2, 6, 4, 4\).*learn_sigma=True"):
        denoiser(torch.zeros(2, 3, 4, 4), torch.tensor([1, 1]))


def test_q_sample_matches_formula():
    diffusion = create_diffusion(timestep_respacing="10")
    x0, z = _rand((1, 3, 2, 2), 5), _rand((1, 3, 2, 2), 6)
    got = diffusion.q_sample(x0, torch.tensor([4]), z)
    ab = diffusion.alphas_cumprod[4]
    np.testing.assert_allclose(got.numpy(), np.sqrt(ab) * x0.numpy() + np.sqrt(1 - ab) * z.numpy(), atol=1e-6)


def test_gaussian_diffusion_rejects_bad_betas():
    with pytest.raises(ConfigError):
        GaussianDiffusion(np.array([0.1, 1.5]))
    with pytest.raises(ConfigError):
        GaussianDiffusion(np.zeros((2, 2)))


# ---------------------------------------------------------------------------------------------
# uint8 conversion


def test_to_uint8_truncates_clamps_and_is_nhwc():
    x = torch.tensor([1.0, 0.999, -1.0, 1.5, -3.0, 0.0, 0.00392, -0.99]).view(1, 1, 1, 8).repeat(1, 3, 2, 1)
    x[0, 1] += 0  # channel 1 equal to channel 0; change channel 2 to test layout
    x[0, 2] = -1.0
    u8 = samples_to_uint8(x)
    assert u8.dtype == np.uint8 and u8.shape == (1, 2, 8, 3)
    # (x+1)*127.5 = 255, 254.87, 0, 318.75, -255, 127.5, 127.999, 1.275 -> floor after clamp.
    assert u8[0, 0, :, 0].tolist() == [255, 254, 0, 255, 0, 127, 127, 1]
    assert u8[0, 1, :, 2].tolist() == [0] * 8


def test_to_uint8_rejects_bad_input():
    with pytest.raises(InputError, match="NaN"):
        samples_to_uint8(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
        samples_to_uint8(torch.zeros(3, 2, 2))
