"""The preset registry: the 15 released checkpoints, their sampling settings, registration rules, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from evalkit.cli import main
from evalkit.errors import ConfigError
from evalkit.presets import (BIGGAN_PRESETS, PRESETS, RELEASED, URL_BASE, Preset, describe_preset, get_preset,
                             register_preset)

TINY = "--image_size 8 --num_channels 32 --channel_mult 1,2 --attention_resolutions 4 --num_res_blocks 1 " \
       "--num_head_channels 16 --learn_sigma True --class_cond True --num_classes 10"


@pytest.fixture
def registry(monkeypatch):
    """Give each test its own copy of the registry."""
    monkeypatch.setattr("evalkit.presets.PRESETS", dict(PRESETS))
    import evalkit.presets as presets
    return presets.PRESETS


def test_released_presets_and_paper_settings():
    assert set(RELEASED) == {
        "64x64_diffusion", "128x128_diffusion", "256x256_diffusion", "256x256_diffusion_uncond", "512x512_diffusion",
        "64x64_classifier", "128x128_classifier", "256x256_classifier", "512x512_classifier",
        "64_256_upsampler", "128_512_upsampler", "lsun_bedroom", "lsun_cat", "lsun_horse", "lsun_horse_nodropout"}
    scales = {n: (PRESETS[n].classifier, PRESETS[n].classifier_scale) for n in RELEASED if PRESETS[n].classifier}
    assert scales == {"64x64_diffusion": ("64x64_classifier", 1.0), "128x128_diffusion": ("128x128_classifier", 0.5),
                      "256x256_diffusion": ("256x256_classifier", 1.0),
                      "256x256_diffusion_uncond": ("256x256_classifier", 10.0),
                      "512x512_diffusion": ("512x512_classifier", 4.0)}
    for name in RELEASED:
        p = PRESETS[name]
        assert p.url == f"{URL_BASE}{name}.pt" and p.sha256 is None and not p.use_ddim
        if p.kind != "classifier":
            assert p.timestep_respacing == ("1000" if name.startswith("lsun") else "250")
        if p.classifier:
            assert PRESETS[p.classifier].kind == "classifier"
            assert PRESETS[p.classifier].image_size == p.image_size
    assert PRESETS["256x256_diffusion"].paper_results == {"fid": 4.59, "precision": 0.82, "recall": 0.52}
    assert PRESETS["64_256_upsampler"].base == "64x64_diffusion" and PRESETS["64_256_upsampler"].small_size == 64
    assert PRESETS["64x64_diffusion"].diffusion_settings()["noise_schedule"] == "cosine"
    assert PRESETS["lsun_cat"].diffusion_settings("ddim25")["timestep_respacing"] == "ddim25"
    assert PRESETS["512x512_diffusion"].flags["use_fp16"] is False
    assert PRESETS["64x64_classifier"].flags["classifier_depth"] == 4
    assert PRESETS["256x256_diffusion_uncond"].class_cond is False


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["lsun_cat"].image_size = 128
    with pytest.raises(TypeError):
        PRESETS["lsun_cat"].flags["image_size"] = 128


def test_presets_pickle_and_compare():
    import pickle
    p = PRESETS["64_256_upsampler"]
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.flags == p.flags and q.paper_results == p.paper_results


def test_demo_presets_are_registered_with_their_bundled_weights():
    from importlib import resources

    from evalkit.checkpoints import sha256_file

    for name in ("digits8_diffusion", "digits8_classifier"):
        preset = get_preset(name)
        path = resources.files("evalkit.data").joinpath(preset.weights)
        assert sha256_file(str(path)) == preset.sha256
    assert get_preset("digits8_diffusion").classifier == "digits8_classifier"


def test_unknown_preset_lists_known_names():
    with pytest.raises(ConfigError, match=r"unknown preset '64x64_difusion'.*64x64_diffusion"):
        get_preset("64x64_difusion")
    assert get_preset(PRESETS["lsun_cat"]) is PRESETS["lsun_cat"]


def test_register_rejects_duplicates_and_malformed_presets(registry):
    tiny = Preset(name="tiny8_diffusion", kind="diffusion", readme_flags=TINY, image_size=8, class_cond=True,
                  sha256="0" * 64, timestep_respacing="ddim5")
    register_preset(tiny)
    assert get_preset("tiny8_diffusion") is tiny and describe_preset(tiny)["flags"]["num_classes"] == 10
    with pytest.raises(ConfigError, match="already registered"):
        register_preset(dataclasses.replace(tiny))
    register_preset(dataclasses.replace(tiny, description="v2"), replace=True)
    with pytest.raises(ConfigError, match="malformed"):
        Preset(name="bad name/x", kind="diffusion", readme_flags=TINY, image_size=8, class_cond=True)
    with pytest.raises(ConfigError, match="kind"):
        Preset(name="x", kind="gan", readme_flags=TINY, image_size=8, class_cond=True)
    with pytest.raises(ConfigError, match="sha256"):
        Preset(name="x", kind="diffusion", readme_flags=TINY, image_size=8, class_cond=True, sha256="abc")
    with pytest.raises(ConfigError, match="contradicts"):
        Preset(name="x", kind="diffusion", readme_flags=TINY, image_size=16, class_cond=True)
    with pytest.raises(ConfigError, match="contradicts"):
        Preset(name="x", kind="diffusion", readme_flags=TINY, image_size=8, class_cond=False)
    with pytest.raises(ConfigError, match="unknown flag"):
        Preset(name="x", kind="diffusion", readme_flags=TINY + " --bogus 1", image_size=8, class_cond=True)


def test_cli_lists_presets():
    result = CliRunner().invoke(main, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 + len(PRESETS) + len(BIGGAN_PRESETS)  # BigGAN-deep presets last, kind biggan-deep
    assert next(line for line in lines if line.startswith("biggan-deep-256 ")).split()[1] == "biggan-deep"
    row = next(line for line in lines if line.startswith("128x128_diffusion "))
    assert "421.5M" in row and "250 steps" in row and "128x128_classifier at scale 0.5" in row
    assert "64->256" in result.output and "1000 steps" in result.output


def test_cli_shows_one_preset_and_json():
    result = CliRunner().invoke(main, ["presets", "512x512_diffusion"])
    assert result.exit_code == 0, result.output
    assert "--use_fp16 False" in result.output and "fid 7.72" in result.output
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/512x512_diffusion.pt" in result.output
    data = json.loads(CliRunner().invoke(main, ["presets", "64x64_classifier", "--json"]).output)
    assert data["num_params"] == 65_438_568 and data["flags"]["classifier_depth"] == 4


def test_cli_unknown_preset_is_one_line_error():
    result = CliRunner().invoke(main, ["presets", "nope"])
    assert result.exit_code == 1
    assert "unknown preset 'nope'" in result.output and "lsun_cat" in result.output
