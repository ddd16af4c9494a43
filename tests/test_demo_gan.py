"""The demo's digits BigGAN-deep (evalkit.demo.gan, evalkit.demo.train_gan): the bundled weights load with
their sha256 and config, tampered files are refused, samples are seeded per index, and the standing
statistics fill stores exactly the statistics batch-mode forward uses.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import evalkit.demo.gan as gan
from evalkit.demo.gan import DEFAULT_TRUNCATIONS, PRESET, load_digits_biggan, sample_biggan
from evalkit.demo.models import bundled_file
from evalkit.demo.train_gan import (DIGITS_BIGGAN_CONFIG, ProjectionDiscriminator, fill_standing_statistics,
                                    train_biggan)
from evalkit.errors import ConfigError, WeightsError
from evalkit.hashing import sha256_file
from evalkit.models.biggan import BigGANConfig, TruncationBatchNorm, biggan_latents, from_state_dict, \
    random_state_dict, truncated_normal
from evalkit.presets import get_biggan_preset


@pytest.fixture(scope="module")
def loaded():
    return load_digits_biggan()


# ---------------------------------------------------------------------------------------------
# Preset and bundled files


def test_bundled_weights_load_with_their_sha256_and_config(loaded):
    p = get_biggan_preset(PRESET)
    weights, config = bundled_file(p.weights, p.name), bundled_file(p.config, p.name)
    assert p.bundled and p.sha256 is not None and p.config_sha256 is not None
    assert loaded.sha256 == p.sha256 == sha256_file(weights)
    assert loaded.config_sha256 == p.config_sha256 == sha256_file(config)
    assert weights.stat().st_size < 1_000_000
    assert loaded.config == DIGITS_BIGGAN_CONFIG == BigGANConfig.from_json(config)
    assert json.loads(config.read_text()) == DIGITS_BIGGAN_CONFIG.to_dict()
    assert (loaded.config.output_dim, loaded.config.num_classes, loaded.config.z_dim) == (8, p.num_classes, p.dim_z)
    assert p.truncations == DEFAULT_TRUNCATIONS
    # Loaded strictly from plain tensors: the module holds the file's tensors, in eval mode.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert list(state) == list(loaded.module.state_dict())
    assert all(torch.equal(state[k], v) for k, v in loaded.module.state_dict().items())
    assert not loaded.module.training
    # Standing statistics were filled: every row differs from the initial zeros / ones, and rows differ.
    means = state["generator.layers.1.bn_0.running_means"]
    assert means.shape == (51, 64) and float(means[1:].abs().min(dim=1).values.max()) > 0
    assert not torch.allclose(state["generator.layers.1.bn_0.running_vars"][10],
                              state["generator.layers.1.bn_0.running_vars"][50], rtol=0.05)


def test_wrong_sha256_in_preset_is_refused():
    p = get_biggan_preset(PRESET)
    with pytest.raises(WeightsError, match="sha256"):
        load_digits_biggan(preset=dataclasses.replace(p, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256"):
        load_digits_biggan(preset=dataclasses.replace(p, config_sha256="0" * 64))


@pytest.mark.parametrize("which", ["weights", "config"])
def test_tampered_bundled_file_is_refused(tmp_path, monkeypatch, which):
    p = get_biggan_preset(PRESET)
    for name in (p.weights, p.config):
        shutil.copy(bundled_file(name, p.name), tmp_path / name)
    monkeypatch.setattr(gan, "bundled_file", lambda name, preset_name: tmp_path / name)
    load_digits_biggan()  # the copies pass
    if which == "weights":
        state = torch.load(tmp_path / p.weights, weights_only=True)
        state["generator.gen_z.bias"][0] += 1e-3
        torch.save(state, tmp_path / p.weights)
    else:
        cfg = json.loads((tmp_path / p.config).read_text())
        (tmp_path / p.config).write_text(json.dumps(cfg, indent=4))  # same content, other bytes
    with pytest.raises(WeightsError, match=f"sha256 .* does not match the expected .* of preset {PRESET}"):
        load_digits_biggan()


def test_missing_bundled_file_is_a_clear_error():
    p = dataclasses.replace(get_biggan_preset(PRESET), weights="no_such_biggan.pt")
    with pytest.raises(WeightsError, match="no_such_biggan.pt"):
        load_digits_biggan(preset=p)


# ---------------------------------------------------------------------------------------------
# Sampling


def test_samples_are_seeded_per_index_and_independent_of_batch_size(loaded):
    model = loaded.module
    t = 0.6
    z, y = biggan_latents(11, range(8), t, None, 10, DIGITS_BIGGAN_CONFIG.z_dim)
    with torch.no_grad():
        whole = model(z, y, t)
        halves = torch.cat([model(z[:4], y[:4], t), model(z[4:], y[4:], t)])
        again = model(z, y, t)
    assert torch.equal(whole, again)
    # Eval-mode batch norm uses stored statistics, so samples do not interact; CPU convolution kernels
    # may still block a batch differently by its size, which can move float32 sums by a few ulp.
    assert torch.allclose(whole, halves, rtol=0, atol=1e-5)
    a_img, a_lab = sample_biggan(model, t, 8, seed=11, batch_size=8)
    b_img, b_lab = sample_biggan(model, t, 8, seed=11, batch_size=3)
    c_img, c_lab = sample_biggan(model, t, 5, seed=11, start=3, batch_size=2)
    assert a_img.dtype == np.uint8 and a_img.shape == (8, 8, 8, 3)
    assert np.array_equal(a_lab, y.numpy()) and np.array_equal(a_lab, b_lab) and np.array_equal(a_lab[3:], c_lab)
    # uint8 floors (x + 1) * 127.5: a 1e-5 difference can cross a level only at a boundary.
    assert np.abs(a_img.astype(int) - b_img).max() <= 1 and np.abs(a_img[3:].astype(int) - c_img).max() <= 1


def test_samples_vary_across_samples_truncations_and_seeds(loaded):
    model = loaded.module
    imgs = {t: sample_biggan(model, t, 32, seed=0)[0].astype(np.float64) for t in (0.2, 1.0)}
    for t, x in imgs.items():
        flat = x.reshape(len(x), -1)
        assert len(np.unique(flat, axis=0)) == len(flat), t  # no two samples alike
        assert 5 < flat.mean() < 250 and flat.std() > 20, t  # neither blank nor saturated
    assert np.abs(imgs[0.2] - imgs[1.0]).mean() > 1.0  # the truncation changes the images
    other = sample_biggan(model, 1.0, 32, seed=1)[0].astype(np.float64)
    assert np.abs(other - imgs[1.0]).mean() > 1.0  # so does the seed
    # Lower truncation: less diverse (per-class pixel spread shrinks, averaged over classes).
    _, labels = sample_biggan(model, 1.0, 32, seed=0)
    spread = {t: np.mean([x[labels == c].std(axis=0).mean() for c in np.unique(labels) if (labels == c).sum() > 1])
              for t, x in imgs.items()}
    assert spread[0.2] < spread[1.0]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01, float("nan"), True, "0.5"])
def test_truncation_outside_unit_interval_is_refused(loaded, bad):
    with pytest.raises(ConfigError, match="truncation must be a number in \\(0, 1\\]"):
        sample_biggan(loaded.module, bad, 4)
    with pytest.raises(ConfigError, match="truncation"):
        loaded.module(torch.zeros(1, DIGITS_BIGGAN_CONFIG.z_dim), torch.zeros(1, dtype=torch.int64), bad)


# ---------------------------------------------------------------------------------------------
# Training pieces


TINY = BigGANConfig.deep(8, channel_width=16, channel_multipliers=(2, 1), attention_resolution=4, z_dim=8,
                         num_classes=10, n_stats=11)


def _batch_mode_forward(model, z, y):
    """Forward with every batch norm on batch statistics and the spectral norms in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, TruncationBatchNorm)]
    for m in norms:
        m.training = True
    try:
        with torch.no_grad():
            return model(z, y, 1.0)
    finally:
        for m in norms:
            m.training = False
            m.clear_cache()


def test_standing_statistics_are_the_batch_statistics_of_truncated_latents():
    """With one batch per row, row k holds exactly that batch's statistics, so eval mode at t_k on that
    batch reproduces batch-mode forward, and the first batch norm's row is the mean/variance of its
    input (gen_z, then self-attention). Catches: statistics stored in the wrong row, z not scaled by
    t_k, unbiased variance (off by B*H*W/(B*H*W - 1)), statistics of another layer, rows left unfilled."""
    model = from_state_dict(random_state_dict(TINY, seed=3), TINY)
    batch = 64
    fill_standing_statistics(model, batches=1, batch_size=batch, seed=5)
    gen = torch.Generator().manual_seed(5)
    for k in range(TINY.n_stats):
        t = k / (TINY.n_stats - 1)
        z = t * truncated_normal(batch * TINY.z_dim, gen).reshape(batch, TINY.z_dim)
        y = torch.randint(0, TINY.num_classes, (batch,), generator=gen)
        if k not in (2, 5, 10):  # rows whose truncation t_k / step is exact (0.2, 0.5, 1.0)
            continue
        with torch.no_grad():
            cond = torch.cat((z, model.embeddings.weight.t()[y]), dim=1)
            h = model.generator.gen_z(cond).reshape(batch, 4, 4, -1).permute(0, 3, 1, 2)
            h = model.generator.layers[0](h).double()  # the self-attention before the first block
        bn0 = model.generator.layers[1].bn_0
        assert torch.allclose(bn0.running_means[k].double(), h.mean(dim=(0, 2, 3)), atol=1e-6)
        assert torch.allclose(bn0.running_vars[k].double(), h.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5)
        with torch.no_grad():
            stored = model(z, y, t)
        assert torch.allclose(stored, _batch_mode_forward(model, z, y), atol=2e-5), k


def test_discriminator_projects_the_class():
    d = ProjectionDiscriminator(16, 10).eval()
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        a, b = d(x, torch.zeros(6, dtype=torch.int64)), d(x, torch.ones(6, dtype=torch.int64))
    assert a.shape == (6,) and not torch.allclose(a, b)


def test_train_biggan_smoke_is_seeded():
    """A few steps on the tiny config: finite losses, an eval-mode EMA generator, the same result twice."""
    kw = dict(config=TINY, steps=3, batch_size=8, d_channels=8, ema_start=1, standing_batches=1,
              standing_batch_size=16, log=None)
    g1, info = train_biggan(seed=0, **kw)
    g2, _ = train_biggan(seed=0, **kw)
    assert not g1.training and np.isfinite(info["final_d_loss"]) and info["config"] == TINY.to_dict()
    s1, s2 = g1.state_dict(), g2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["generator.layers.1.bn_0.running_vars"][3], torch.ones(32))


def test_truncation_trades_recall_for_precision(loaded):
    """The tradeoff ``scripts/train_digits.py verify-biggan`` shows, at its settings (500 samples per
    truncation, seed 0, digits features, k = 3): at truncation 0.2 precision and IS are higher and
    recall far lower than at 1.0. The samples are fixed by the seed, so only float noise in the
    features moves the numbers; the margins asserted are several times that (recall differs by > 0.2)."""
    import evalkit.features.digits  # noqa: F401  (registers the "digits" extractor)
    from evalkit.demo.data import digits_images
    from evalkit.features.registry import get_extractor
    from evalkit.metrics import inception_score, precision_recall, softmax

    extractor = get_extractor("digits")
    ref = extractor(digits_images()[0])["pool"]
    out = {}
    for t in (0.2, 1.0):
        f = extractor(sample_biggan(loaded.module, t, 500, seed=0)[0])
        out[t] = (inception_score(softmax(f["logits"])), *precision_recall(ref, f["pool"], k=3))
    (is_lo, p_lo, r_lo), (is_hi, p_hi, r_hi) = out[0.2], out[1.0]
    assert p_lo > p_hi + 0.02 and r_lo < r_hi - 0.2 and is_lo > is_hi, out
