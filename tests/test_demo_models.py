"""The demo's trained digits models (evalkit.demo.models, evalkit.demo.train): the committed weights load
strictly with their sha256, behave like trained networks, and classifier guidance moves samples towards
the requested class; plus known-answer checks of the hybrid-loss pieces written in evalkit.demo.train.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from evalkit.hashing import sha256_file
from evalkit.demo.data import digits_images
from evalkit.demo.models import (CLASSIFIER_FLAGS, DEFAULT_RESPACING, DIFFUSION_FLAGS, DIGITS_PRESETS,
                                 bundled_weights_path, digits_request, load_digits_model)
from evalkit.demo.train import (digits_tensors, discretized_gaussian_log_likelihood, hybrid_loss, normal_kl,
                                train_classifier, train_diffusion)
from evalkit.diffusion import create_diffusion
from evalkit.errors import WeightsError
from evalkit.models import from_flags
from evalkit.presets import get_preset, register_preset
from evalkit.sampling.adm import adm_batches


@pytest.fixture(scope="module", autouse=True)
def _registered():
    for preset in DIGITS_PRESETS:
        register_preset(preset, replace=True)


@pytest.fixture(scope="module")
def unet():
    return load_digits_model("digits8_diffusion")


@pytest.fixture(scope="module")
def classifier():
    return load_digits_model("digits8_classifier")


# ---------------------------------------------------------------------------------------------
# Presets and committed weights


def test_presets_describe_the_bundled_files():
    unet_p, cls_p = (get_preset("digits8_diffusion"), get_preset("digits8_classifier"))
    assert unet_p.readme_flags == DIFFUSION_FLAGS and cls_p.readme_flags == CLASSIFIER_FLAGS
    assert unet_p.classifier == cls_p.name and unet_p.timestep_respacing == DEFAULT_RESPACING
    assert unet_p.flags["num_classes"] == 10 and unet_p.flags["learn_sigma"] and unet_p.class_cond
    for preset in (unet_p, cls_p):
        path = bundled_weights_path(preset)
        assert path.stat().st_size < 5_000_000
        assert preset.sha256 == sha256_file(path)


def test_weights_load_strictly_into_preset_architectures(unet, classifier):
    assert unet.preset == "digits8_diffusion" and classifier.preset == "digits8_classifier"
    # Loaded strictly from plain tensors: the state dict matches the file key for key.
    state = torch.load(bundled_weights_path("digits8_diffusion"), weights_only=True)
    assert list(state) == list(unet.module.state_dict())
    assert all(torch.equal(state[k], v) for k, v in unet.module.state_dict().items())
    assert not unet.module.training and not classifier.module.training
    assert unet.flags["num_channels"] == 32 and classifier.flags["classifier_num_classes"] == 10


def test_sha256_mismatch_is_refused():
    bad = dataclasses.replace(DIGITS_PRESETS[1], sha256="0" * 64)
    with pytest.raises(WeightsError, match="sha256"):
        load_digits_model(bad)


def test_missing_bundled_file_is_a_clear_error():
    missing = dataclasses.replace(DIGITS_PRESETS[1], weights="no_such_digits_weights.pt")
    with pytest.raises(WeightsError, match="no_such_digits_weights.pt"):
        load_digits_model(missing)


# ---------------------------------------------------------------------------------------------
# Trained behaviour


def test_unet_predicts_the_noise(unet):
    # A trained eps-predictor beats predicting zero by far at mid noise; outputs depend on x, t and y.
    diffusion = create_diffusion(**dict(unet.diffusion, timestep_respacing=""))
    x0, y = digits_tensors()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=g)[:128]
    t = torch.full((128,), 300, dtype=torch.int64)
    noise = torch.randn(128, 3, 8, 8, generator=g)
    with torch.no_grad():
        out = unet.module(diffusion.q_sample(x0[idx], t, noise), t, y[idx])
        eps = out[:, :3]
        mse = float(((eps - noise) ** 2).mean())
        assert mse < 0.2, mse  # zero prediction gives 1.0; the committed weights give about 0.08
        other_y = unet.module(diffusion.q_sample(x0[idx], t, noise), t, (y[idx] + 1) % 10)[:, :3]
        assert float((other_y - eps).abs().mean()) > 0.02  # labels matter (about 0.18)
    # Variance outputs lie in the learned range's meaningful band and vary across inputs.
    v = out[:, 3:]
    assert v.std() > 1e-3 and v.abs().max() < 3


def test_classifier_is_accurate_on_lightly_noised_digits(classifier):
    diffusion = create_diffusion(**dict(get_preset("digits8_diffusion").diffusion_settings(), timestep_respacing=""))
    x0, y = digits_tensors()
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 50, (len(y),), generator=g)
    with torch.no_grad():
        logits = classifier.module(diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g)), t)
    acc = float((logits.argmax(1) == y).float().mean())
    assert acc > 0.9, acc
    assert logits.std(dim=0).min() > 0.1  # not one constant answer
    # At the end of the chain the image is pure noise: the classifier should be unsure.
    t_end = torch.full((200,), 999, dtype=torch.int64)
    with torch.no_grad():
        p_end = torch.softmax(classifier.module(torch.randn(200, 3, 8, 8, generator=g), t_end), -1)
    assert float(p_end.max(dim=1).values.mean()) < 0.6


def _digits_batches(unet, classifier, scale: float, num_samples: int, seed: int, respacing: str):
    """The harness's batch function of the demo request at `scale`, around the loaded networks."""
    request = digits_request(scale, num_samples, seed, timestep_respacing=respacing)
    return adm_batches(request, torch.device("cpu"), unet.module, unet.diffusion,
                       classifier.module if request.classifier else None)


def test_guidance_raises_target_class_probability(unet, classifier):
    # Same seeds, labels and noise; only the guidance scale changes. Cheap proxy of the tradeoff.
    probs = {}
    for scale in (0.0, 8.0):
        images, labels = _digits_batches(unet, classifier, scale, 48, 3, "20")(range(48))
        assert images.shape == (48, 8, 8, 3) and images.dtype == np.uint8
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            p = torch.softmax(classifier.module(x, torch.zeros(48, dtype=torch.int64)), -1)
        probs[scale] = float(p[torch.arange(48), torch.from_numpy(labels)].mean())
        assert images.std() > 20  # not blank
    assert probs[8.0] > probs[0.0] + 0.02, probs


def test_samples_do_not_depend_on_batch_size(unet, classifier):
    """Batches [0, 6) and [0, 4) + [4, 6) give the same bits (per-sample noise, fixed-shape network
    calls); catches noise drawn per batch instead of per sample."""
    fn = _digits_batches(unet, classifier, 1.0, 6, 7, "5")
    a, la = fn(range(6))
    parts = [fn(range(0, 4)), fn(range(4, 6))]
    b, lb = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    assert np.array_equal(la, lb)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Hybrid-loss pieces (known answers)


def test_normal_kl_known_values():
    z = torch.zeros(3)
    assert torch.allclose(normal_kl(z, z, z, z), torch.zeros(3))
    # KL(N(1, 1) || N(0, e^2)) = 0.5 * (-1 + 2 - 0 + e^-2 + e^-2) ... closed form.
    got = normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(2.0))
    want = 0.5 * (-1 + 2 + math.exp(-2) + math.exp(-2))
    assert abs(float(got) - want) < 1e-6


def test_discretized_likelihood_sums_to_one_over_all_bins():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in ((0.1, -2.0), (-0.98, -4.0), (0.5, 0.3)):
        lp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                 torch.full_like(levels, log_scale))
        assert abs(float(lp.exp().sum()) - 1.0) < 1e-6
    # A sharp Gaussian centred on a level puts almost all mass in that bin.
    lp = discretized_gaussian_log_likelihood(levels[100:101], levels[100:101], torch.tensor([-8.0], dtype=torch.float64))
    assert float(lp.exp()) > 0.999


class _Echo(torch.nn.Module):
    """Fake 6-channel model whose output is a free parameter (to inspect gradients)."""

    def __init__(self):
        super().__init__()
        self.out = torch.nn.Parameter(torch.zeros(4, 6, 8, 8))

    def forward(self, x, t, y=None):
        return self.out + 0 * x.sum()


def test_hybrid_loss_vb_trains_only_the_variance():
    diffusion = create_diffusion(steps=1000, noise_schedule="cosine", learn_sigma=True)
    x0, _ = digits_tensors()
    model = _Echo()
    t = torch.tensor([0, 10, 500, 999])
    terms = hybrid_loss(model, diffusion, x0[:4], t, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert terms["loss"].shape == (4,) and bool((terms["vb"] >= 0).all())
    terms["vb"].sum().backward()
    grad = model.out.grad
    assert float(grad[:, :3].abs().max()) == 0.0  # mean stop-gradded
    assert float(grad[:, 3:].abs().max()) > 0.0


def test_training_functions_run_and_change_weights():
    m1, info = train_diffusion(steps=3, batch_size=8, log=None)
    m2, _ = train_diffusion(steps=3, batch_size=8, log=None)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # seeded
    torch.manual_seed(0)
    init = from_flags(DIFFUSION_FLAGS).model.state_dict()
    assert any(not torch.equal(init[k], s1[k]) for k in s1)  # the optimiser (via EMA) moved the weights
    assert info["steps"] == 3 and math.isfinite(info["ema_mse"])
    c, cinfo = train_classifier(steps=2, batch_size=8, log=None)
    assert 0.0 <= cinfo["holdout_acc_t_lt_100"] <= 1.0 and not c.training
