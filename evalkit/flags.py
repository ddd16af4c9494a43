"""Parse guided-diffusion's own flag strings (README ``MODEL_FLAGS`` / ``CLASSIFIER_FLAGS`` /
``SAMPLE_FLAGS``) into resolved flag dicts, with the reference scripts' defaults.

Reference: openai/guided-diffusion at ``evalkit.REFERENCE_COMMIT``
(``guided_diffusion/script_util.py``: ``model_and_diffusion_defaults``, ``classifier_defaults``,
``sr_model_and_diffusion_defaults``, ``add_dict_to_argparser``, ``str2bool``; the scripts'
``create_argparser``). Pure Python (no torch), so
presets and the CLI can use it anywhere; ``evalkit.models.from_flags`` builds the modules.

evalkit extensions (absent in the reference, defaults reproduce it): ``num_classes`` (1000) for
the UNet and upsampler, ``channel_mult`` for the upsampler, and ``classifier_channel_mult`` (""),
``classifier_num_head_channels`` (64), ``classifier_num_classes`` (1000) for the classifier — so
tiny test/demo models (any image size with an explicit channel_mult) can be described by flags.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from evalkit.errors import ConfigError

#: ``kind`` values: which network a flag set describes.
KINDS = ("diffusion", "classifier", "upsampler")

#: UNet + diffusion defaults (``model_and_diffusion_defaults``), plus evalkit's ``num_classes``.
MODEL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "num_classes": 1000,
}

#: Classifier defaults (``classifier_defaults``; ``image_size`` is shared with the model flags),
#: plus evalkit's ``classifier_channel_mult`` / ``classifier_num_head_channels`` / ``classifier_num_classes``.
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
    "classifier_channel_mult": "",
    "classifier_num_head_channels": 64,
    "classifier_num_classes": 1000,
}

#: Super-resolution defaults (``sr_model_and_diffusion_defaults``): the model defaults without
#: image_size / use_new_attention_order, plus large_size / small_size (channel_mult is an evalkit extension).
UPSAMPLER_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in MODEL_DEFAULTS.items() if k not in ("image_size", "use_new_attention_order")},
    "large_size": 256,
    "small_size": 64,
}

#: Script-level flags of image_sample / classifier_sample / super_res_sample.
SAMPLE_DEFAULTS: dict[str, Any] = {
    "clip_denoised": True,
    "num_samples": 10000,
    "batch_size": 16,
    "use_ddim": False,
    "model_path": "",
    "classifier_path": "",
    "classifier_scale": 1.0,
    "base_samples": "",
}

#: Keys of the diffusion settings dict (``evalkit.diffusion.create_diffusion(**settings)``).
DIFFUSION_KEYS = ("steps", "noise_schedule", "timestep_respacing", "learn_sigma", "predict_xstart",
                  "rescale_timesteps")

_TRUE = ("yes", "true", "t", "y", "1")
_FALSE = ("no", "false", "f", "n", "0")

_NET_DEFAULTS = {"diffusion": MODEL_DEFAULTS, "classifier": CLASSIFIER_DEFAULTS, "upsampler": UPSAMPLER_DEFAULTS}
# Flags each kind's reference script accepts (classifier_sample takes model + classifier flags).
_SCRIPT_FLAGS = {
    "diffusion": {**MODEL_DEFAULTS, **CLASSIFIER_DEFAULTS, **SAMPLE_DEFAULTS},
    "classifier": {**MODEL_DEFAULTS, **CLASSIFIER_DEFAULTS, **SAMPLE_DEFAULTS},
    "upsampler": {**UPSAMPLER_DEFAULTS, **{k: v for k, v in SAMPLE_DEFAULTS.items()
                                          if k not in ("classifier_path", "classifier_scale")}},
}


def str2bool(value: str, flag: str = "") -> bool:
    """Parse a boolean spelling as the reference does: yes/true/t/y/1 or no/false/f/n/0, case-insensitive."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    where = f"--{flag}: " if flag else ""
    raise ConfigError(f"{where}{value!r} is not a boolean (expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)})")


def _convert(flag: str, value: Any, default: Any) -> Any:
    """Convert a flag value to the type of its default (bool, int, float or str)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return str2bool(value, flag)
        raise ConfigError(f"--{flag}: expected a boolean, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or (not isinstance(value, (int, str))):
            raise ConfigError(f"--{flag}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"--{flag}: {value!r} is not an integer") from None
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"--{flag}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"--{flag}: {value!r} is not a number") from None
    if isinstance(value, (list, tuple)):
        # Lists such as channel_mult (1, 2, 2) are written the reference's way: "1,2,2".
        return ",".join(str(v) for v in value)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"--{flag}: expected a string, got {value!r}")
    return str(value)


def tokenize(text: str) -> dict[str, str]:
    """Split ``--name value`` / ``--name=value`` pairs (extra spaces and shell quoting allowed).

    Raises ConfigError for a value without a flag, a flag without a value, or a flag repeated
    with different values.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"flag string cannot be split ({exc}): {text!r}") from None
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ConfigError(f"flag string: expected --name value, found {tok!r} (in {text!r})")
        if "=" in tok:
            name, value = tok[2:].split("=", 1)
            i += 1
        else:
            name = tok[2:]
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError(f"flag --{name} has no value (write e.g. --{name} True)")
            value = tokens[i + 1]
            i += 2
        if name in out and out[name] != value:
            raise ConfigError(f"flag --{name} is given twice with different values ({out[name]!r}, {value!r})")
        out[name] = value
    return out


def _unknown(name: str, known: Mapping[str, Any], kind: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
    return ConfigError(f"unknown flag --{name} for a {kind} model{hint} "
                       f"(known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class ParsedFlags:
    """Flags resolved over the reference defaults.

    ``net``: every flag of the network kind (model+diffusion, classifier, or super-res), ``sample``:
    the script-level flags, ``extra``: given flags that belong to another network in the same
    script (e.g. classifier flags in a diffusion flag string), ``given``: names the user set.
    """

    kind: str
    net: dict[str, Any]
    sample: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    given: tuple[str, ...] = ()

    def diffusion_settings(self) -> dict[str, Any]:
        """Keyword arguments of ``evalkit.diffusion.create_diffusion`` (empty for a classifier)."""
        return diffusion_settings(self.net) if self.kind != "classifier" else {}


def diffusion_settings(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusion part of a resolved model flag dict, keyed as ``create_diffusion`` expects."""
    return {
        "steps": flags["diffusion_steps"],
        "noise_schedule": flags["noise_schedule"],
        "timestep_respacing": flags["timestep_respacing"],
        "learn_sigma": flags["learn_sigma"],
        "predict_xstart": flags["predict_xstart"],
        "rescale_timesteps": flags["rescale_timesteps"],
    }


def parse_flags(flags: str | Mapping[str, Any] | None, kind: str = "diffusion") -> ParsedFlags:
    """Resolve a reference flag string or dict for ``kind`` ("diffusion" | "classifier" | "upsampler").

    Strings look like the README's (``--attention_resolutions 32,16,8 --class_cond True ...``);
    dict keys are flag names (with or without leading ``--``) and values are strings or Python values.
    Raises ConfigError on unknown flags (with close matches), bad booleans/integers, missing values.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if flags is None:
        raw: Mapping[str, Any] = {}
    elif isinstance(flags, str):
        raw = tokenize(flags)
    elif isinstance(flags, Mapping):
        raw = {str(k).lstrip("-"): v for k, v in flags.items()}
    else:
        raise ConfigError(f"flags must be a string or a dict, got {type(flags).__name__}")
    known = _SCRIPT_FLAGS[kind]
    net = dict(_NET_DEFAULTS[kind])
    sample = dict(SAMPLE_DEFAULTS)
    extra: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise _unknown(name, known, kind)
        converted = _convert(name, value, known[name])
        if name in net:
            net[name] = converted
        if name in sample:
            sample[name] = converted
        if name not in net and name not in sample:
            extra[name] = converted
    return ParsedFlags(kind=kind, net=net, sample=sample, extra=extra, given=tuple(raw))


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"--{flag}: expected positive integers, got {text!r}")
    return values


def default_channel_mult(image_size: int, kind: str) -> tuple[float, ...]:
    """The reference's resolution-dependent channel multipliers (``create_model``); ConfigError otherwise."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if kind == "upsampler":
        table = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        size_flag = "large_size" if kind == "upsampler" else "image_size"
        mult_flag = "classifier_channel_mult" if kind == "classifier" else "channel_mult"
        raise ConfigError(f"unsupported --{size_flag} {image_size}: the reference knows "
                          f"{', '.join(map(str, sorted(table)))}; give --{mult_flag} for other sizes")
    return table[image_size]


def attention_downsample(image_size: int, resolutions: str, flag: str) -> tuple[int, ...]:
    """Turn feature-map resolutions ("32,16,8") into downsample factors (image_size // r)."""
    if resolutions.strip() == "":
        return ()
    return tuple(image_size // r for r in _int_list(resolutions, flag))


def constructor_kwargs(parsed: ParsedFlags) -> dict[str, Any]:
    """Keyword arguments of the model class (UNetModel / EncoderUNetModel / SuperResModel) for ``parsed``.

    Mirrors the reference builders ``create_model``, ``create_classifier``, ``sr_create_model``.
    """
    f = parsed.net
    if parsed.kind == "classifier":
        size = f["image_size"]
        mult = (_int_list(f["classifier_channel_mult"], "classifier_channel_mult")
                if f["classifier_channel_mult"] else default_channel_mult(size, "classifier"))
        return dict(image_size=size, in_channels=3, model_channels=f["classifier_width"],
                    out_channels=f["classifier_num_classes"], num_res_blocks=f["classifier_depth"],
                    attention_resolutions=attention_downsample(size, f["classifier_attention_resolutions"],
                                                               "classifier_attention_resolutions"),
                    channel_mult=mult, use_fp16=f["classifier_use_fp16"],
                    num_head_channels=f["classifier_num_head_channels"],
                    use_scale_shift_norm=f["classifier_use_scale_shift_norm"],
                    resblock_updown=f["classifier_resblock_updown"], pool=f["classifier_pool"])
    size = f["large_size"] if parsed.kind == "upsampler" else f["image_size"]
    mult = (_int_list(f["channel_mult"], "channel_mult") if f["channel_mult"]
            else default_channel_mult(size, parsed.kind))
    kwargs = dict(image_size=size, in_channels=3, model_channels=f["num_channels"],
                  out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=f["num_res_blocks"],
                  attention_resolutions=attention_downsample(size, f["attention_resolutions"], "attention_resolutions"),
                  dropout=f["dropout"], channel_mult=mult,
                  num_classes=f["num_classes"] if f["class_cond"] else None,
                  use_checkpoint=f["use_checkpoint"], use_fp16=f["use_fp16"], num_heads=f["num_heads"],
                  num_head_channels=f["num_head_channels"], num_heads_upsample=f["num_heads_upsample"],
                  use_scale_shift_norm=f["use_scale_shift_norm"], resblock_updown=f["resblock_updown"])
    if parsed.kind == "diffusion":
        kwargs["use_new_attention_order"] = f["use_new_attention_order"]
    return kwargs


def fp16_default(net: Mapping[str, Any], kind: str, device_type: str) -> bool:
    """Whether a network runs its torso in float16 unless told otherwise: its fp16 flag
    (``use_fp16``, ``classifier_use_fp16`` for classifiers), on CUDA only (fp16 convolutions are
    slow or missing on CPUs). The one place this default is decided."""
    key = "classifier_use_fp16" if kind == "classifier" else "use_fp16"
    return bool(net.get(key, False)) and device_type == "cuda"
