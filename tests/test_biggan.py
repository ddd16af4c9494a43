"""BigGAN-deep: parity with pytorch-pretrained-biggan 0.1.1 (eval mode, same state dict), the weight
files' layout, loading and its refusals, per-sample latents, presets and the weights registry.

Tolerance of the output parity: 1e-5 max abs on images in [-1, 1]. Both sides compute the same
float32 operations in a different order or fused form (batch norm as one multiply-add with
rsqrt(var + eps) instead of subtract/divide/multiply/add; spectral-norm sigma folded into the weights
once; the RGB convolution computed for its 3 used output channels only), each a few float32 ulps
(~1e-7 relative) per layer; through ~50 layers of Lipschitz-1 (spectral-normalised) maps with batch-norm
gains of order 1, and tanh' <= 1 at the output, that stays ~1e-6. Observed max: 6.0e-7 (channel width
32 and 128, resolutions 128 and 256). Output differences between samples and between truncations are
checked to exceed 1e-2, three orders of magnitude above the tolerance.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evalkit import weights
from evalkit.checkpoints import load_biggan
from evalkit.diffusion import samples_to_uint8
from evalkit.errors import CheckpointError, ConfigError, InputError, WeightsError
from evalkit.sampling.noise import SampleNoise
from evalkit.models.biggan import (BigGANConfig, BigGANDeep, biggan_latents, from_state_dict, random_state_dict,
                                   state_signature, truncated_normal)
from evalkit.presets import BIGGAN_PRESETS, PRESETS, BigGANPreset, Preset, register_biggan_preset, register_preset
from evalkit.runtime import sample_generator

ppb = pytest.importorskip("pytorch_pretrained_biggan", reason="pytorch-pretrained-biggan (test extra) missing")
from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN128, BigGAN256, BigGAN512  # noqa: E402

TOL = 1e-5
TRUNCATIONS = (0.1, 0.5, 1.0, 0.375)  # 0.375: 3/4 of the way from grid point 0.36 to 0.38


def _package_model(config: BigGANConfig, state=None, device="cpu"):
    with torch.device(device):
        model = ppb.BigGAN(ppb.BigGANConfig.from_dict(config.to_dict()))
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval()


def _pair(config: BigGANConfig, seed: int = 0):
    state = random_state_dict(config, seed)
    return _package_model(config, state), from_state_dict(state, config), state


def _package_forward(ref, z, labels, truncation):
    return ref(z, F.one_hot(labels, ref.config.num_classes).float(), truncation)


# --- parity -----------------------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("resolution", [128, 256])
def test_outputs_match_pytorch_pretrained_biggan(resolution):
    """Same random state dict in both, channel width 32 (keeps the default run fast; the full width is
    the slow test below), several truncations including one between grid points.

    Verified to fail (max abs diff at 128, truncations 0.1 / 0.5 / 1.0 / 0.375) on: textbook linear
    interpolation of the statistics (row k gets 1 - f): 0.30 at 0.375 (grid points unaffected);
    truncation ignored by the batch norms (row 50 always): 0.74 / 0.69 / 5e-7 / 0.45; spectral norm
    not applied (weight_orig as is): NaN; self-attention after block 8 instead of before: 0.06-0.08;
    RGB taken from output channels 1:4 instead of 0:3: 1.0-1.2; skip connection keeping the last
    instead of the first channels: 0.7-1.1.
    """
    config = BigGANConfig.deep(resolution, channel_width=32)
    ref, ours, _ = _pair(config, seed=resolution)
    z, labels = biggan_latents(7, range(3), 1.0, None)
    outs = {}
    with torch.no_grad():
        for t in TRUNCATIONS:
            zt = z * t
            expected = _package_forward(ref, zt, labels, t)
            got = ours(zt, labels, t)
            assert got.shape == (3, 3, resolution, resolution)
            diff = (got - expected).abs().max().item()
            assert diff <= TOL, f"resolution {resolution}, truncation {t}: max abs diff {diff:.3g}"
            # The outputs are informative: they differ between samples and are not saturated.
            assert (expected[0] - expected[1]).abs().max() > 1e-2
            assert (expected.abs() > 0.99).float().mean() < 0.5
            outs[t] = expected
        # The truncation matters through the batch-norm statistics alone (same z).
        assert (ours(z * 0.5, labels, 0.5) - ours(z * 0.5, labels, 0.52)).abs().max() > 1e-2
    # One-hot class vectors and integer labels give the same images.
    with torch.no_grad():
        onehot = F.one_hot(labels, 1000).float()
        assert torch.equal(ours(z, onehot, 1.0), ours(z, labels, 1.0))


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("resolution", [128, 256])
def test_outputs_match_pytorch_pretrained_biggan_full_width(resolution):
    """The presets' full architecture (channel width 128); catches the same bugs as the fast test."""
    config = BigGANConfig.deep(resolution)
    ref, ours, _ = _pair(config, seed=1)
    z, labels = biggan_latents(3, range(2), 1.0, None)
    with torch.no_grad():
        for t in TRUNCATIONS:
            diff = (ours(z * t, labels, t) - _package_forward(ref, z * t, labels, t)).abs().max().item()
            assert diff <= TOL, f"resolution {resolution}, truncation {t}: max abs diff {diff:.3g}"


@pytest.mark.parity
@pytest.mark.parametrize("resolution,package_config", [(128, BigGAN128), (256, BigGAN256), (512, BigGAN512)])
def test_preset_state_dict_layout_matches_package(resolution, package_config):
    """Keys and shapes of each preset equal pytorch-pretrained-biggan's model for the config its
    converter wrote (both built on the meta device: no memory). Fails if self-attention sits at another
    block index, the embedding is [num_classes, z_dim], or a stage's channel multiplier is off."""
    with torch.device("meta"):
        ref = ppb.BigGAN(package_config)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    ours = BigGANConfig.deep(resolution)
    assert state_signature(ours) == expected
    # The converter's config JSON reads back as the same config.
    assert BigGANConfig.from_dict(json.loads(package_config.to_json_string())) == ours
    assert ours.attention_resolution == 64 and ours.attention_layer_position == 8


# --- loading ----------------------------------------------------------------------------------

def _write_files(tmp_path, config, state, stem="biggan-deep-test", legacy=True):
    wpath = tmp_path / f"{stem}-pytorch_model.bin"
    torch.save(state, wpath, _use_new_zipfile_serialization=not legacy)
    cpath = tmp_path / f"{stem}-config.json"
    cpath.write_text(ppb.BigGANConfig.from_dict(config.to_dict()).to_json_string())
    return wpath, cpath


SMALL = BigGANConfig.deep(128, channel_width=8, channel_multipliers=(16, 16, 8, 4, 2, 1))


@pytest.mark.parametrize("legacy", [True, False])
def test_load_biggan_reads_the_released_format(tmp_path, legacy):
    """The converter's files: torch.save of the package's state_dict (an OrderedDict with spectral-norm
    metadata), legacy or zip format, read with weights_only=True; config found beside the weights."""
    ref = _package_model(SMALL, random_state_dict(SMALL, 3))
    wpath, cpath = _write_files(tmp_path, SMALL, ref.state_dict(), legacy=legacy)
    loaded = load_biggan(wpath, expected_resolution=128)
    assert loaded.config == SMALL and loaded.config_path == str(cpath)
    assert len(loaded.sha256) == 64 and len(loaded.config_sha256) == 64
    z, labels = biggan_latents(0, range(2), 0.4, None)
    with torch.no_grad():
        diff = (loaded.module(z, labels, 0.4) - _package_forward(ref, z, labels, 0.4)).abs().max().item()
    assert diff <= TOL


def test_wrong_resolution_weights_refused(tmp_path):
    other = BigGANConfig.deep(256, channel_width=8)
    wpath, cpath = _write_files(tmp_path, other, random_state_dict(other))
    with pytest.raises(WeightsError, match=r"config is for 256x256 output, expected 128x128"):
        load_biggan(wpath, expected_resolution=128)
    # With the 128 config, the weights themselves are identified as 256x256.
    cpath.write_text(json.dumps(SMALL.to_dict()))
    with pytest.raises(WeightsError, match=r"holds a 256x256 BigGAN-deep generator \(12 blocks\), expected "
                                           r"128x128 \(10 blocks\)"):
        load_biggan(wpath, expected_resolution=128)


def test_config_that_does_not_match_the_weights_refused(tmp_path):
    wpath, cpath = _write_files(tmp_path, SMALL, random_state_dict(SMALL))
    wider = dataclasses.replace(SMALL, channel_width=16)
    cpath.write_text(json.dumps(wider.to_dict()))
    with pytest.raises(WeightsError) as info:
        load_biggan(wpath)
    msg = str(info.value)
    assert "\n" not in msg and str(wpath) in msg and str(cpath) in msg and "wrongly shaped" in msg


class _NeedsCode:
    """Unpickling an instance would import and build this class: code runs."""


def test_pickle_that_needs_code_refused(tmp_path):
    path = tmp_path / "evil-pytorch_model.bin"
    torch.save({"embeddings.weight": torch.zeros(1), "x": _NeedsCode()}, path)
    with pytest.raises(CheckpointError, match="needs code to unpickle") as info:
        load_biggan(path, expected_resolution=128)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit,match", [
    ({"output_dim": 256}, "output_dim 256 does not match its layers"),
    ({"attention_layer_position": 10}, "attention_layer_position must be None or a block index"),
    ({"class_embed_dim": 64}, "class_embed_dim"),
    ({"extra": 1}, "unknown extra"),
    ({"output_dim": 8, "layers": [[False, 4, 4], [True, 4, 1]], "attention_layer_position": None},
     "maps multiplier 4 to 1"),
])
def test_bad_config_file(tmp_path, edit, match):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**BigGANConfig.deep(128).to_dict(), **edit}))
    with pytest.raises(ConfigError, match=match) as info:
        BigGANConfig.from_json(path)
    assert str(path) in str(info.value)


def test_missing_config_without_resolution(tmp_path):
    path = tmp_path / "weights.bin"
    torch.save(random_state_dict(SMALL), path)
    with pytest.raises(ConfigError, match="no BigGAN config given"):
        load_biggan(path)
    # With the preset's resolution the canonical config is used (here it does not fit: reported).
    with pytest.raises(WeightsError, match="canonical BigGAN-deep-128 config"):
        load_biggan(path, expected_resolution=128)


# --- latents ----------------------------------------------------------------------------------

def test_latents_independent_of_batch_and_order():
    z, y = biggan_latents(5, range(8), 0.6, None)
    z2, y2 = biggan_latents(5, [6, 2, 3], 0.6, None)
    assert torch.equal(z2, z[[6, 2, 3]]) and torch.equal(y2, y[[6, 2, 3]])
    z3, y3 = biggan_latents(5, range(8), 0.6, None)
    assert torch.equal(z3, z) and torch.equal(y3, y)  # deterministic
    z4, _ = biggan_latents(6, range(8), 0.6, None)
    assert not torch.equal(z4, z)
    assert z.dtype == torch.float32 and z.shape == (8, 128) and y.dtype == torch.int64


def test_latents_label_rule_is_the_adm_samplers():
    """Label first, from the same generator and by the same rule as ADM samples; then z."""
    classes = (3, 17, 250, 999)
    _, y = biggan_latents(11, range(40), 1.0, classes)
    expected = SampleNoise(11, range(40), torch.device("cpu")).labels(classes)
    assert torch.equal(y, expected) and set(y.tolist()) <= set(classes)
    # z is what the generator gives after the label draw, times the truncation.
    gen = sample_generator(11, 4)
    torch.randint(0, len(classes), (1,), generator=gen)
    z, _ = biggan_latents(11, [4], 0.3, classes)
    assert torch.equal(z[0], truncated_normal(128, gen) * 0.3)


def test_latents_truncated_normal_distribution():
    """|z| <= 2 t, and the draws follow the standard normal conditioned on [-2, 2] (KS test against
    scipy's truncnorm; fails for a clamp instead of resampling, which piles mass at +-2)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    z, _ = biggan_latents(0, range(200), 0.5, None, dim_z=64)
    assert z.abs().max() <= 1.0
    x = (z / 0.5).flatten().double().numpy()
    assert scipy_stats.kstest(x, scipy_stats.truncnorm(-2, 2).cdf).pvalue > 1e-3
    assert np.isclose(x.std(), scipy_stats.truncnorm(-2, 2).std(), atol=0.01)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), True, "0.5"])
def test_truncation_outside_range_refused(bad):
    with pytest.raises(ConfigError, match=r"truncation must be a number in \(0, 1\]"):
        biggan_latents(0, range(2), bad, None)
    model = BigGANDeep(SMALL).eval()
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        model(torch.zeros(1, 128), torch.zeros(1, dtype=torch.int64), bad)


def test_classes_outside_range_refused():
    with pytest.raises(ConfigError, match=r"class 10 is outside \[0, 10\)"):
        biggan_latents(0, range(2), 0.5, (1, 10), num_classes=10)
    with pytest.raises(ConfigError, match="empty"):
        biggan_latents(0, range(2), 0.5, ())


# --- small configs, training mode, quantisation -----------------------------------------------

DIGITS = BigGANConfig.deep(8, channel_width=16, channel_multipliers=(2, 1), attention_resolution=4, z_dim=8,
                           num_classes=10)


def test_small_config_for_8x8_digits():
    """An 8x8, 10-class generator of the same code: forward, a training step, eval after folding."""
    assert [tuple(layer) for layer in DIGITS.layers] == [(False, 2, 2), (True, 2, 1)]
    assert DIGITS.attention_layer_position == 0
    model = BigGANDeep(DIGITS)
    z, y = biggan_latents(0, range(6), 1.0, None, num_classes=10, dim_z=8)
    out = model.train()(z, y, 1.0)
    assert out.shape == (6, 3, 8, 8)
    out.square().mean().backward()
    assert model.generator.gen_z.weight_orig.grad is not None
    u_before = model.generator.conv_to_rgb.weight_u.clone()
    model(z, y, 1.0)  # training mode runs a power iteration
    assert not torch.equal(u_before, model.generator.conv_to_rgb.weight_u)
    model.eval()
    with torch.no_grad():
        unfolded = model(z, y, 0.5)
        folded = model.fold()(z, y, 0.5)
    assert torch.equal(unfolded, folded)
    images = samples_to_uint8(folded)
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 3)


def test_folded_weights_follow_a_new_state_dict():
    """Folded weights and cached statistics never outlive the state dict they came from."""
    model = from_state_dict(random_state_dict(DIGITS, 0), DIGITS)
    z, y = biggan_latents(0, range(2), 1.0, None, num_classes=10, dim_z=8)
    with torch.no_grad():
        before = model(z, y, 1.0)
        model.load_state_dict(random_state_dict(DIGITS, 1))
        after = model(z, y, 1.0)
        expected = from_state_dict(random_state_dict(DIGITS, 1), DIGITS)(z, y, 1.0)
    assert not torch.equal(before, after) and torch.equal(after, expected)


# --- presets and weights registry -------------------------------------------------------------

def test_presets_and_weights_entries():
    for res in (128, 256, 512):
        preset = BIGGAN_PRESETS[f"biggan-deep-{res}"]
        assert preset.image_size == res and preset.kind == "biggan-deep"
        entry = weights.WEIGHTS[preset.weights]
        assert entry.url == f"https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-{res}-pytorch_model.bin"
        assert entry.filename == f"biggan-deep-{res}-pytorch_model.bin" and entry.companions == (preset.config,)
        assert weights.WEIGHTS[preset.config].filename == f"biggan-deep-{res}-config.json"
        assert preset.truncations == tuple(round(0.1 * k, 1) for k in range(1, 11))
        assert preset.name not in PRESETS


def test_preset_names_unique_across_registries():
    with pytest.raises(ConfigError, match="already registered"):
        register_biggan_preset(BigGANPreset(name="64x64_diffusion", image_size=64, weights="x", config="y"))
    with pytest.raises(ConfigError, match="already registered"):
        register_preset(Preset(name="biggan-deep-128", kind="classifier", readme_flags="--image_size 64",
                               image_size=64, class_cond=True))
    with pytest.raises(ConfigError, match=r"truncations must be in \(0, 1\]"):
        BigGANPreset(name="g", image_size=64, weights="x", config="y", truncations=(0.5, 1.2))


class _Files(http.server.BaseHTTPRequestHandler):
    bodies: dict[str, bytes] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.bodies.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_weights_fetch_downloads_weights_and_config(tmp_path, monkeypatch):
    """`evalkit weights fetch biggan-deep-128` fetches the state dict and its config (local server)."""
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    _Files.bodies = {"/w.bin": b"weights" * 100, "/c.json": b'{"config": 1}'}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        for name, url in (("biggan-deep-128", "/w.bin"), ("biggan-deep-128-config", "/c.json")):
            monkeypatch.setitem(weights.WEIGHTS, name, dataclasses.replace(weights.WEIGHTS[name], url=base + url))
        path = weights.fetch("biggan-deep-128", progress=False)
        assert path.read_bytes() == _Files.bodies["/w.bin"]
        assert weights.WEIGHTS["biggan-deep-128-config"].path.read_bytes() == _Files.bodies["/c.json"]
        # Present files are verified, not downloaded again; a missing companion is still fetched.
        weights.WEIGHTS["biggan-deep-128-config"].path.unlink()
        weights.fetch("biggan-deep-128", progress=False)
        assert weights.WEIGHTS["biggan-deep-128-config"].path.is_file()
    finally:
        httpd.shutdown()
        httpd.server_close()
