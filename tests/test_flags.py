"""Reference flag strings → resolved flags, modules and diffusion settings (spec/sampling.md §1)."""

from __future__ import annotations

import pytest
import torch

from conftest import load_fixture
from evalkit.errors import ConfigError
from evalkit.flags import (CLASSIFIER_DEFAULTS, MODEL_DEFAULTS, SAMPLE_DEFAULTS,
                           constructor_kwargs, parse_flags, str2bool, tokenize)
from evalkit.models import EncoderUNetModel, SuperResModel, UNetModel, from_flags
from evalkit.presets import PRESETS
from model_fixtures import (CLASSIFIER_FLAGS, SUPERRES_FLAGS, UNET_COND_FLAGS, UNET_NEWORDER_FLAGS,
                            UNET_UNCOND_FLAGS, torch_weights)

README_64 = PRESETS["64x64_diffusion"].readme_flags
README_SAMPLE = "--batch_size 4 --num_samples 100 --timestep_respacing 250"
README_CLASSIFIER_128 = ("--image_size 128 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 "
                         "--classifier_width 128 --classifier_pool attention --classifier_resblock_updown True "
                         "--classifier_use_scale_shift_norm True --classifier_scale 1.0 --classifier_use_fp16 True")


def test_reference_defaults():
    parsed = parse_flags("")
    assert parsed.net == MODEL_DEFAULTS and parsed.sample == SAMPLE_DEFAULTS
    assert MODEL_DEFAULTS["num_heads"] == 4 and MODEL_DEFAULTS["attention_resolutions"] == "16,8"
    assert MODEL_DEFAULTS["use_scale_shift_norm"] is True and MODEL_DEFAULTS["learn_sigma"] is False
    assert CLASSIFIER_DEFAULTS["classifier_depth"] == 2 and CLASSIFIER_DEFAULTS["classifier_pool"] == "attention"
    assert SAMPLE_DEFAULTS == {"clip_denoised": True, "num_samples": 10000, "batch_size": 16, "use_ddim": False,
                               "model_path": "", "classifier_path": "", "classifier_scale": 1.0,
                               "base_samples": ""}


@pytest.mark.parametrize("spelling,value", [("yes", True), ("TRUE", True), ("t", True), ("Y", True), ("1", True),
                                            ("no", False), ("False", False), ("F", False), ("n", False),
                                            ("0", False)])
def test_boolean_spellings(spelling, value):
    assert str2bool(spelling) is value
    assert parse_flags(f"--class_cond {spelling}").net["class_cond"] is value


def test_readme_strings_with_extra_spaces_and_sample_flags():
    parsed = parse_flags("  " + README_64 + "   " + README_SAMPLE + " --use_ddim True  --classifier_scale 2.5 ")
    f = parsed.net
    assert (f["num_channels"], f["num_res_blocks"], f["num_head_channels"], f["dropout"]) == (192, 3, 64, 0.1)
    assert f["use_new_attention_order"] is True and f["noise_schedule"] == "cosine" and f["timestep_respacing"] == "250"
    assert parsed.sample["use_ddim"] is True and parsed.sample["batch_size"] == 4
    assert parsed.sample["classifier_scale"] == 2.5 and isinstance(parsed.sample["classifier_scale"], float)
    assert parsed.diffusion_settings() == {"steps": 1000, "noise_schedule": "cosine", "timestep_respacing": "250",
                                           "learn_sigma": True, "predict_xstart": False, "rescale_timesteps": False}
    # The README's double space in the upsampler string is harmless.
    up = parse_flags(PRESETS["64_256_upsampler"].readme_flags, "upsampler").net
    assert (up["large_size"], up["small_size"]) == (256, 64)


def test_classifier_flags_string_and_model_flags_in_one_line():
    parsed = parse_flags(README_CLASSIFIER_128 + " " + README_SAMPLE + " --class_cond True", "classifier")
    assert parsed.net["image_size"] == 128 and parsed.net["classifier_use_fp16"] is True
    assert parsed.sample["classifier_scale"] == 1.0
    assert parsed.extra == {"class_cond": True, "timestep_respacing": "250"}  # diffusion-model flags
    assert parsed.diffusion_settings() == {}


def test_equals_syntax_dicts_and_dashed_keys():
    assert tokenize("--a=1 --b 2") == {"a": "1", "b": "2"}
    parsed = parse_flags({"--image_size": 32, "class_cond": "yes", "channel_mult": (1, 2), "dropout": 0})
    assert parsed.net["image_size"] == 32 and parsed.net["class_cond"] is True
    assert parsed.net["channel_mult"] == "1,2" and parsed.net["dropout"] == 0.0


@pytest.mark.parametrize("text,match", [
    ("--atention_resolutions 16", r"unknown flag --atention_resolutions.*did you mean --attention_resolutions"),
    ("--class_cond maybe", r"--class_cond: 'maybe' is not a boolean"),
    ("--num_channels 12.5", r"--num_channels: '12.5' is not an integer"),
    ("--class_cond --image_size 64", r"--class_cond has no value"),
    ("--image_size", r"--image_size has no value"),
    ("image_size 64", r"expected --name value"),
    ("--image_size 64 --image_size 128", r"given twice"),
    ("--dropout high", r"not a number"),
    ("--classifier_scale 2 --large_size 256", r"unknown flag --classifier_scale"),
])
def test_malformed_flags_raise_config_error(text, match):
    kind = "upsampler" if "large_size" in text else "diffusion"
    with pytest.raises(ConfigError, match=match):
        parse_flags(text, kind)


def test_dict_with_wrong_types_and_bad_kind():
    with pytest.raises(ConfigError, match="expected an integer"):
        parse_flags({"num_channels": True})
    with pytest.raises(ConfigError, match="expected a boolean"):
        parse_flags({"class_cond": 1.5})
    with pytest.raises(ConfigError, match="kind must be one of"):
        parse_flags("", "vae")


def test_channel_mult_and_image_size_rules():
    with pytest.raises(ConfigError, match="unsupported --image_size 32"):
        from_flags("--image_size 32", device="meta")
    with pytest.raises(ConfigError, match="comma-separated integers"):
        from_flags("--image_size 32 --channel_mult 0.5,1", device="meta")
    with pytest.raises(ConfigError, match="unsupported --large_size 128"):
        from_flags("--large_size 128", kind="upsampler", device="meta")
    # Any size works with an explicit channel_mult (tiny test/demo models).
    tiny = from_flags("--image_size 8 --num_channels 32 --channel_mult 1,2 --attention_resolutions 4 "
                      "--num_res_blocks 1 --num_head_channels 16", device="meta").model
    assert tiny.channel_mult == (1, 2) and tiny.attention_resolutions == (2,)
    assert constructor_kwargs(parse_flags("--image_size 512"))["channel_mult"] == (0.5, 1, 1, 2, 2, 4, 4)
    assert constructor_kwargs(parse_flags("--large_size 512", "upsampler"))["channel_mult"] == (1, 1, 2, 2, 4, 4)


@pytest.mark.parity
@pytest.mark.parametrize("fixture,flags,kind,cls", [
    ("unet_cond_forward", UNET_COND_FLAGS, "diffusion", UNetModel),
    ("unet_cond_neworder_forward", UNET_NEWORDER_FLAGS, "diffusion", UNetModel),
    ("unet_uncond_forward", UNET_UNCOND_FLAGS, "diffusion", UNetModel),
    ("superres_forward", SUPERRES_FLAGS, "upsampler", SuperResModel),
    ("classifier_forward", CLASSIFIER_FLAGS, "classifier", EncoderUNetModel),
])
def test_flags_reproduce_the_fixture_constructor_arguments(fixture, flags, kind, cls):
    meta, _ = load_fixture(fixture)
    kwargs = constructor_kwargs(parse_flags(flags, kind))
    expected = meta["constructor_kwargs"]
    for key, value in kwargs.items():
        want = expected.get(key, value)
        assert (tuple(want) if isinstance(want, list) else want) == value, key
    built = from_flags(flags, kind=kind, device="meta")
    assert isinstance(built.model, cls) and not built.model.training
    weights = torch_weights(meta["weights"].removesuffix(".npz"))
    assert {k: tuple(v.shape) for k, v in built.model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in weights.items()}


def test_from_flags_result_feeds_diffusion_and_forward():
    out = from_flags(dict(UNET_COND_FLAGS, timestep_respacing="ddim5", noise_schedule="cosine"))
    assert out.diffusion["timestep_respacing"] == "ddim5" and out.diffusion["noise_schedule"] == "cosine"
    assert out.sample["batch_size"] == 16 and out.flags["class_cond"] is True
    model = out.model
    model.load_state_dict(torch_weights("weights_unet_cond"), strict=True)
    meta, arrays = load_fixture("unet_cond_forward")
    with torch.no_grad():
        res = model(*(torch.from_numpy(arrays[k]) for k in ("x", "timesteps", "y")))
    assert float((res - torch.from_numpy(arrays["out"])).abs().max()) <= 1e-5
    diffusion = pytest.importorskip("evalkit.diffusion")
    process = diffusion.create_diffusion(**out.diffusion)
    assert process is not None
