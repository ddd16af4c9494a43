"""The guided-diffusion networks: ADM UNet, super-resolution UNet and noisy classifier, built from a
preset name or from the reference's own flag strings.

Reference: openai/guided-diffusion commit 22e0df8183507e13a7813f8d38d51b072ca1e67c
(``guided_diffusion/unet.py``, ``guided_diffusion/script_util.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from evalkit.errors import ConfigError
from evalkit.flags import ParsedFlags, constructor_kwargs, parse_flags
from evalkit.models.classifier import AttentionPool2d, EncoderUNetModel
from evalkit.models.nn import ATTENTION_BACKENDS, QKVAttention, set_attention_backend, timestep_embedding
from evalkit.models.unet import AttentionBlock, ResBlock, SuperResModel, UNetModel
from evalkit.presets import Preset, get_preset

__all__ = [
    "ATTENTION_BACKENDS", "AttentionBlock", "AttentionPool2d", "EncoderUNetModel", "FlagModel", "QKVAttention",
    "ResBlock", "SuperResModel", "UNetModel", "build", "build_from_parsed", "from_flags", "num_params",
    "preset_num_params",
    "set_attention_backend", "timestep_embedding",
]

_CLASSES = {"diffusion": UNetModel, "classifier": EncoderUNetModel, "upsampler": SuperResModel}


def build_from_parsed(parsed: ParsedFlags, device: str | torch.device = "cpu",
                      use_fp16: bool | None = None) -> nn.Module:
    """Instantiate the network ``parsed`` describes on ``device`` ("meta" allocates nothing).

    ``use_fp16`` None keeps the flag's value; False builds a float32 model (convert later with
    ``model.convert_to_fp16()``, as the reference does after loading weights).
    """
    kwargs = constructor_kwargs(parsed)
    if use_fp16 is not None:
        kwargs["use_fp16"] = bool(use_fp16)
    with torch.device(device):
        model = _CLASSES[parsed.kind](**kwargs)
    return model.eval()


def build(name_or_preset: str | Preset, device: str | torch.device = "meta", use_fp16: bool | None = False) -> nn.Module:
    """The network of a preset (e.g. ``"64x64_diffusion"``), in eval mode, with its reference
    state-dict keys and shapes. Default: on the meta device (no memory) and float32."""
    preset = get_preset(name_or_preset)
    return build_from_parsed(parse_flags(preset.readme_flags, preset.kind), device, use_fp16)


@dataclass
class FlagModel:
    """What :func:`from_flags` returns: the module, its resolved flags, the diffusion settings
    (``create_diffusion(**diffusion)``; empty for a classifier), the sample flags, and the given
    flags that belong to another network of the same script (``extra``)."""

    kind: str
    model: nn.Module
    flags: dict[str, Any]
    diffusion: dict[str, Any]
    sample: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def from_flags(flags: str | Mapping[str, Any] | None, kind: str = "diffusion", device: str | torch.device = "cpu",
               use_fp16: bool | None = None) -> FlagModel:
    """Build a network from a guided-diffusion flag string or dict (README ``MODEL_FLAGS`` etc.).

    Example: ``from_flags("--image_size 64 --classifier_depth 4", kind="classifier", device="meta")``.
    Unknown flags, bad booleans/integers and flags without values raise ConfigError.
    """
    parsed = parse_flags(flags, kind)
    model = build_from_parsed(parsed, device, use_fp16)
    return FlagModel(kind=kind, model=model, flags=dict(parsed.net), diffusion=parsed.diffusion_settings(),
                     sample=dict(parsed.sample), extra=dict(parsed.extra))


def num_params(module: nn.Module) -> int:
    """Number of parameter elements (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters())



def preset_num_params(name_or_preset: str | Preset) -> int:
    """Parameter count of a preset's network (the recorded count, else counted on the meta device)."""
    preset = get_preset(name_or_preset)
    return preset.num_params if preset.num_params is not None else num_params(build(preset))
