"""Classifier guidance (evalkit.guidance) against closed forms, with a linear "classifier".

For logits = W x + b, d/dx log_softmax(logits)[y] = W[y] - sum_c p_c W[c], so the guidance gradient is
known analytically; condition_mean and condition_score (spec/sampling.md §7) are recomputed in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.diffusion import adm_denoiser, create_diffusion
from evalkit.errors import ConfigError, InputError
from evalkit.guidance import classifier_gradient, classifier_guidance
from evalkit.samplers import sample

SHAPE = (2, 3, 4, 4)
D = 3 * 4 * 4
NUM_CLASSES = 5


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class LinearClassifier:
    """logits = x.flatten() @ W.T + b + 1e-3 t; records the timesteps it receives."""

    def __init__(self, seed=0):
        self.W = _rand((NUM_CLASSES, D), seed) * 0.3
        self.b = _rand((NUM_CLASSES,), seed + 1)
        self.timesteps = []

    def __call__(self, x, t):
        self.timesteps.append(t.clone())
        return x.flatten(1) @ self.W.T + self.b + 1e-3 * t.float()[:, None]

    def analytic_grad(self, x, t, y):
        W, x64 = self.W.double().numpy(), x.double().flatten(1).numpy()
        logits = x64 @ W.T + self.b.double().numpy() + 1e-3 * t.double().numpy()[:, None]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (W[y] - p @ W).reshape(x.shape)


def model(x, t, **kwargs):
    scale = (t.float() / 1000.0).view(-1, 1, 1, 1)
    return torch.cat([torch.tanh(x * 0.7 + scale) * 1.5, torch.tanh(x.flip(1) * 0.3 - scale)], dim=1)


@pytest.fixture
def diffusion():
    return create_diffusion(timestep_respacing="10")


Y = torch.tensor([3, 1])


def test_classifier_gradient_matches_closed_form():
    clf = LinearClassifier()
    x, t = _rand(SHAPE, 2), torch.tensor([999, 111])
    g = classifier_gradient(clf, x, t, Y, 2.5)
    assert g.shape == SHAPE and g.dtype == torch.float32
    np.testing.assert_allclose(g.numpy(), 2.5 * clf.analytic_grad(x, t, Y.numpy()), rtol=1e-5, atol=1e-6)
    assert not x.requires_grad


@pytest.mark.parametrize("j", [9, 5, 0])
def test_guided_prediction_condition_mean_and_score(diffusion, j):
    clf = LinearClassifier()
    base = adm_denoiser(model, diffusion)
    scale = 3.0
    guided = classifier_guidance(base, diffusion, clf, scale, Y)
    x = _rand(SHAPE, 3)
    jt = torch.full((2,), j, dtype=torch.int64)
    plain, out = base(x, jt), guided(x, jt)

    # The classifier sees the ORIGINAL int64 timestep.
    assert len(clf.timesteps) == 1 and clf.timesteps[0].dtype == torch.int64
    assert clf.timesteps[0].tolist() == [int(diffusion.timestep_map[j])] * 2
    g = scale * clf.analytic_grad(x, clf.timesteps[0], Y.numpy())
    np.testing.assert_allclose(out.cond_grad.numpy(), g, rtol=1e-5, atol=1e-6)

    # condition_mean: mean + variance * g (variance, not standard deviation).
    want_mean = plain.mean.double().numpy() + plain.variance.double().numpy() * g
    np.testing.assert_allclose(out.mean.numpy(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.variance, plain.variance, rtol=0, atol=0)
    torch.testing.assert_close(out.log_variance, plain.log_variance, rtol=0, atol=0)

    # condition_score: eps from the clipped x0, shifted by sqrt(1 - abar) g, x0 re-derived, not clipped.
    ab = diffusion.alphas_cumprod[j]
    x64, x0 = x.double().numpy(), plain.pred_xstart.double().numpy()
    eps = (np.sqrt(1 / ab) * x64 - x0) / np.sqrt(1 / ab - 1)
    eps = eps - np.sqrt(1 - ab) * g
    want_x0 = np.sqrt(1 / ab) * x64 - np.sqrt(1 / ab - 1) * eps
    np.testing.assert_allclose(out.pred_xstart.numpy(), want_x0, rtol=1e-4, atol=1e-4)
    # Equivalently x0' = x0 + (1 - abar) / sqrt(abar) * g: a real shift.
    np.testing.assert_allclose(want_x0, x0 + (1 - ab) / np.sqrt(ab) * g, rtol=1e-9, atol=1e-9)


def test_guided_ddim_x0_is_not_reclipped(diffusion):
    base = adm_denoiser(model, diffusion)
    guided = classifier_guidance(base, diffusion, LinearClassifier(), 200.0, Y)
    out = guided(_rand(SHAPE, 4) * 3, torch.full((2,), 9, dtype=torch.int64))
    assert float(out.pred_xstart.abs().max()) > 1.0


def test_scale_zero_is_an_exact_noop(diffusion):
    calls = []

    def classifier(x, t):
        calls.append(t)
        raise AssertionError("the classifier must not run at scale 0")

    base = adm_denoiser(model, diffusion)
    assert classifier_guidance(base, diffusion, classifier, 0, Y) is base
    assert classifier_guidance(base, diffusion, classifier, 0.0, None) is base

    def noise(seed):
        gen = torch.Generator().manual_seed(seed)
        return lambda k, like: torch.randn(like.shape, generator=gen)

    x_T = _rand(SHAPE, 5)
    for name in ("ancestral", "ddim"):
        a = sample(base, diffusion, x_T, sampler=name, noise=noise(0))
        b = sample(classifier_guidance(base, diffusion, classifier, 0.0, Y), diffusion, x_T, sampler=name,
                   noise=noise(0))
        assert torch.equal(a, b)
    assert calls == []


def test_guidance_raises_log_probability_of_target(diffusion):
    """Guided samples are more likely under the classifier than unguided ones from the same noise."""
    clf = LinearClassifier(seed=3)
    base = adm_denoiser(model, diffusion)
    x_T = _rand(SHAPE, 6)

    def log_p(x):
        return torch.log_softmax(clf(x, torch.zeros(2, dtype=torch.int64)), -1)[range(2), Y]

    for name in ("ancestral", "ddim"):
        runs = {}
        for scale in (0.0, 5.0):
            gen = torch.Generator().manual_seed(1)
            den = classifier_guidance(base, diffusion, clf, scale, Y)
            runs[scale] = sample(den, diffusion, x_T, sampler=name,
                                 noise=lambda k, like: torch.randn(like.shape, generator=gen))
        assert torch.all(log_p(runs[5.0]) > log_p(runs[0.0]) + 0.1), name


def test_labels_may_be_list_or_array(diffusion):
    base = adm_denoiser(model, diffusion)
    x, j = _rand(SHAPE, 7), torch.full((2,), 4, dtype=torch.int64)
    ref = classifier_guidance(base, diffusion, LinearClassifier(), 1.0, Y)(x, j)
    for y in ([3, 1], np.array([3, 1], dtype=np.int32)):
        out = classifier_guidance(base, diffusion, LinearClassifier(), 1.0, y)(x, j)
        torch.testing.assert_close(out.mean, ref.mean, rtol=0, atol=0)


def test_guidance_errors(diffusion):
    base = adm_denoiser(model, diffusion)
    clf = LinearClassifier()
    with pytest.raises(ConfigError, match="needs class labels y"):
        classifier_guidance(base, diffusion, clf, 1.0, None)
    for bad in (-1.0, float("inf"), "2"):
        with pytest.raises(ConfigError, match="guidance_scale"):
            classifier_guidance(base, diffusion, clf, bad, Y)
    x, j = _rand(SHAPE, 8), torch.full((2,), 4, dtype=torch.int64)
    with pytest.raises(InputError, match="got 3 labels for a batch of 2"):
        classifier_guidance(base, diffusion, clf, 1.0, [1, 2, 3])(x, j)
    with pytest.raises(InputError, match="outside the classifier's 5 classes"):
        classifier_guidance(base, diffusion, clf, 1.0, [1, 7])(x, j)
    with pytest.raises(InputError, match="integer class labels"):
        classifier_guidance(base, diffusion, clf, 1.0, torch.tensor([1.0, 2.0]))(x, j)
