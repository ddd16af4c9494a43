"""Presets: the released guided-diffusion checkpoints by name, with their architecture flags and the
sampling settings of the paper, in one registry.

Facts from openai/guided-diffusion at ``evalkit.REFERENCE_COMMIT`` (README.md, model-card.md) and
Dhariwal & Nichol 2021 (guidance scales, step counts). Architecture lives next to the name: ``readme_flags`` is the README's
``MODEL_FLAGS`` string and ``flags`` the dict it resolves to over the reference defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from evalkit.errors import ConfigError
from evalkit.flags import KINDS, diffusion_settings, parse_flags

URL_BASE = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Preset:
    """One named model: architecture (flags), provenance and the paper's sampling settings.

    ``image_size`` is the output resolution (``large_size`` for upsamplers, whose input size is
    ``small_size``). ``classifier``/``classifier_scale``: the paired guidance classifier preset and the
    paper's guidance scale (None: sampled unguided). ``base``: for an upsampler, the diffusion preset
    whose samples it upsamples. ``sha256`` None means no checksum was published. ``paper_results``
    maps metric names (``fid``, ``precision``, ``recall``) to the published values. ``weights``: a
    local weights file bundled with evalkit (demo models), else None.
    """

    name: str
    kind: str
    readme_flags: str
    image_size: int
    class_cond: bool
    url: str | None = None
    sha256: str | None = None
    small_size: int | None = None
    timestep_respacing: str = "250"
    use_ddim: bool = False
    classifier: str | None = None
    classifier_scale: float | None = None
    base: str | None = None
    paper_results: Mapping[str, float] = field(default_factory=dict, hash=False)
    dataset: str = ""
    description: str = ""
    weights: str | None = None
    num_params: int | None = None
    flags: Mapping[str, Any] = field(init=False, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"preset name {self.name!r} is malformed (letters, digits, '_', '.', '-'; "
                              f"starting with a letter or digit; at most 64 characters)")
        if self.kind not in KINDS:
            raise ConfigError(f"preset {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.sha256 is not None and not _SHA.match(self.sha256):
            raise ConfigError(f"preset {self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        parsed = parse_flags(self.readme_flags, self.kind)
        flags = parsed.net
        size = flags["large_size"] if self.kind == "upsampler" else flags["image_size"]
        if size != self.image_size:
            raise ConfigError(f"preset {self.name}: image_size {self.image_size} contradicts its flags ({size})")
        if self.kind == "upsampler" and self.small_size != flags["small_size"]:
            raise ConfigError(f"preset {self.name}: small_size {self.small_size} contradicts its flags "
                              f"({flags['small_size']})")
        if self.kind != "classifier" and bool(flags["class_cond"]) != self.class_cond:
            raise ConfigError(f"preset {self.name}: class_cond {self.class_cond} contradicts its flags")
        object.__setattr__(self, "flags", MappingProxyType(dict(flags)))
        object.__setattr__(self, "paper_results", MappingProxyType(dict(self.paper_results)))

    def diffusion_settings(self, timestep_respacing: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``evalkit.diffusion.create_diffusion``, respaced as the paper sampled
        (``timestep_respacing`` overrides). Empty for classifiers."""
        if self.kind == "classifier":
            return {}
        settings = diffusion_settings(self.flags)
        settings["timestep_respacing"] = self.timestep_respacing if timestep_respacing is None else timestep_respacing
        return settings

    def __reduce__(self):
        # Rebuild from the constructor arguments (mapping proxies do not pickle; flags are re-derived).
        args = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        args["paper_results"] = dict(args["paper_results"])
        return (_rebuild_preset, (args,))

    @property
    def resolution(self) -> str:
        """Human-readable resolution, e.g. ``"64"`` or ``"64->256"``."""
        return f"{self.small_size}->{self.image_size}" if self.kind == "upsampler" else str(self.image_size)


def _rebuild_preset(args: dict[str, Any]) -> Preset:
    return Preset(**args)


#: The one preset registry, keyed by name (the checkpoint file stem for released models).
PRESETS: dict[str, Preset] = {}
#: BigGAN-deep presets by name (a kind of their own, see :class:`BigGANPreset`); names unique across both.
BIGGAN_PRESETS: dict[str, BigGANPreset] = {}


def register_preset(preset: Preset, replace: bool = False) -> Preset:
    """Add ``preset`` to :data:`PRESETS`; a duplicate name raises ConfigError unless ``replace``."""
    if not isinstance(preset, Preset):
        raise ConfigError(f"register_preset expects a Preset, got {type(preset).__name__}")
    if preset.name in PRESETS and not replace or preset.name in BIGGAN_PRESETS:
        raise ConfigError(f"a preset named {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up by name (a Preset passes through); unknown names list the known ones."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def _released(name: str, kind: str, flags: str, size: int, cond: bool, params: int, **kw: Any) -> None:
    register_preset(Preset(name=name, kind=kind, readme_flags=flags, image_size=size, class_cond=cond,
                           url=URL_BASE + name + ".pt", sha256=None, num_params=params, **kw))


_IMAGENET = "ImageNet (ILSVRC2012)"
_F256 = ("--attention_resolutions 32,16,8 --class_cond {cond} --diffusion_steps 1000 {dropout}--image_size 256 "
         "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
         "--resblock_updown True --use_fp16 True --use_scale_shift_norm True")

# ImageNet diffusion models (README "classifier guidance" section; guidance scales = paper Table 14 at 250 steps).
_released("64x64_diffusion", "diffusion",
          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
          "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
          "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
          64, True, 295_904_454, classifier="64x64_classifier", classifier_scale=1.0, dataset=_IMAGENET,
          paper_results={"fid": 2.07, "precision": 0.74, "recall": 0.63},
          description="ADM 64x64 (dropout 0.1, cosine schedule, new attention order). README numbers; in the paper "
                      "they are the unguided 'ADM (dropout)' row.")
_released("128x128_diffusion", "diffusion",
          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
          "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
          "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
          128, True, 421_529_606, classifier="128x128_classifier", classifier_scale=0.5, dataset=_IMAGENET,
          paper_results={"fid": 2.97, "precision": 0.78, "recall": 0.59}, description="ADM-G 128x128.")
_released("256x256_diffusion", "diffusion", _F256.format(cond="True", dropout=""),
          256, True, 553_838_086, classifier="256x256_classifier", classifier_scale=1.0, dataset=_IMAGENET,
          paper_results={"fid": 4.59, "precision": 0.82, "recall": 0.52}, description="ADM-G 256x256.")
_released("256x256_diffusion_uncond", "diffusion", _F256.format(cond="False", dropout=""),
          256, False, 552_814_086, classifier="256x256_classifier", classifier_scale=10.0, dataset=_IMAGENET,
          description="Class-unconditional ADM 256x256; guided by the 256x256 classifier (README scale 10.0).")
_released("512x512_diffusion", "diffusion",
          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 "
          "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
          "--resblock_updown True --use_fp16 False --use_scale_shift_norm True",
          512, True, 558_997_638, classifier="512x512_classifier", classifier_scale=4.0, dataset=_IMAGENET,
          paper_results={"fid": 7.72, "precision": 0.87, "recall": 0.42},
          description="ADM-G 512x512 (runs in float32).")

# Noisy classifiers (classifier flags of the README commands; image_size is shared with the model).
_released("64x64_classifier", "classifier", "--image_size 64 --classifier_depth 4", 64, True, 65_438_568,
          dataset=_IMAGENET, timestep_respacing="", description="Noisy ImageNet classifier, depth 4.")
for _size, _params in ((128, 42_568_040), (256, 54_096_360), (512, 54_448_360)):
    _released(f"{_size}x{_size}_classifier", "classifier", f"--image_size {_size}", _size, True, _params,
              dataset=_IMAGENET, timestep_respacing="", description="Noisy ImageNet classifier.")

# Upsamplers (ADM-U): only the base model is guided; results are for the two-stage stack.
_released("64_256_upsampler", "upsampler",
          "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256  --small_size 64 "
          "--learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 "
          "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
          256, True, 311_795_910, small_size=64, base="64x64_diffusion", dataset=_IMAGENET,
          paper_results={"fid": 3.94, "precision": 0.83, "recall": 0.53},
          description="ADM-U 64->256; results for ADM-G 64x64 + this upsampler.")
_released("128_512_upsampler", "upsampler",
          "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 "
          "--learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 "
          "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
          512, True, 308_835_270, small_size=128, base="128x128_diffusion", dataset=_IMAGENET,
          paper_results={"fid": 3.85, "precision": 0.84, "recall": 0.53},
          description="ADM-U 128->512; results for ADM-G 128x128 + this upsampler.")

# LSUN (unconditional, unguided, 1000 sampling steps as the README recommends).
for _name, _ds, _res in (("lsun_bedroom", "LSUN bedroom", {"fid": 1.90, "precision": 0.66, "recall": 0.51}),
                         ("lsun_cat", "LSUN cat", {"fid": 5.57, "precision": 0.63, "recall": 0.52}),
                         ("lsun_horse", "LSUN horse", {"fid": 2.57, "precision": 0.71, "recall": 0.55})):
    _released(_name, "diffusion", _F256.format(cond="False", dropout="--dropout 0.1 "), 256, False, 552_814_086,
              timestep_respacing="1000", dataset=_ds, paper_results=_res, description=f"ADM (dropout) {_ds}.")
_released("lsun_horse_nodropout", "diffusion", _F256.format(cond="False", dropout="--dropout 0.0 "), 256, False,
          552_814_086, timestep_respacing="1000", dataset="LSUN horse",
          description="ADM LSUN horse without dropout (no README number).")

#: Names of the 15 checkpoints released with the paper.
RELEASED = tuple(PRESETS)

# The demo's models (``evalkit demo``): trained on the bundled 8×8 UCI digits by
# ``scripts/train_digits.py`` with the same UNetModel / EncoderUNetModel code and flag parser as the
# released checkpoints; weights ship in evalkit/data/ and are checked against these sha256.
DIGITS_DIFFUSION_FLAGS = ("--image_size 8 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 "
                          "--attention_resolutions 4 --num_head_channels 32 --class_cond True --num_classes 10 "
                          "--learn_sigma True --resblock_updown True --use_scale_shift_norm True "
                          "--noise_schedule cosine --diffusion_steps 1000")
DIGITS_CLASSIFIER_FLAGS = ("--image_size 8 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
                           "--classifier_attention_resolutions 4 --classifier_num_head_channels 32 "
                           "--classifier_num_classes 10")
_DIGITS = "UCI optical digits 8x8 (1797 images, CC BY 4.0; bundled)"
DIGITS_PRESETS: tuple[Preset, ...] = (
    register_preset(Preset(
        name="digits8_diffusion", kind="diffusion", readme_flags=DIGITS_DIFFUSION_FLAGS, image_size=8,
        class_cond=True, sha256="7809ae928b4bd25182180dae114ac91b452fb4deff4724b0b837b9f6813cc623",
        weights="digits8_diffusion.pt", timestep_respacing="50", classifier="digits8_classifier",
        classifier_scale=1.0, dataset=_DIGITS,
        description="Demo: class-conditional ADM UNet trained on the bundled 8x8 digits "
                    "(scripts/train_digits.py diffusion).")),
    register_preset(Preset(
        name="digits8_classifier", kind="classifier", readme_flags=DIGITS_CLASSIFIER_FLAGS, image_size=8,
        class_cond=True, sha256="369cf8cef57b3823cf327fc5ebd897be99b03fdff9319dc5536f09fc2ec419e4",
        weights="digits8_classifier.pt", timestep_respacing="", dataset=_DIGITS,
        description="Demo: noisy digits classifier for guidance (scripts/train_digits.py classifier).")),
)


def describe_preset(name_or_preset: str | Preset) -> dict[str, Any]:
    """A JSON-ready description of a preset: identity, flags, sampling settings, provenance, results."""
    p = get_preset(name_or_preset)
    return {
        "name": p.name, "kind": p.kind, "resolution": p.resolution, "image_size": p.image_size,
        "small_size": p.small_size, "class_cond": p.class_cond, "dataset": p.dataset,
        "description": p.description, "num_params": p.num_params,
        "sampling": {"timestep_respacing": p.timestep_respacing, "use_ddim": p.use_ddim,
                     "classifier": p.classifier, "classifier_scale": p.classifier_scale, "base": p.base},
        "readme_flags": p.readme_flags, "flags": dict(p.flags),
        "diffusion": p.diffusion_settings(), "url": p.url, "sha256": p.sha256, "weights": p.weights,
        "paper_results": dict(p.paper_results),
    }


# ---------------------------------------------------------------------------------------------
# GAN presets: BigGAN-deep generators. A kind of their own (no guided-diffusion flags), in a registry
# beside PRESETS; a name is unique across both.

#: The truncation sweep of the paper's guidance-vs-truncation figure (TF-Hub biggan-deep-128/1).
PAPER_TRUNCATIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class BigGANPreset:
    """A BigGAN-deep generator by name.

    ``weights``/``config``: names in ``evalkit.weights.WEIGHTS`` of its state dict and config JSON
    (``evalkit weights fetch <weights>`` downloads both), or, with ``bundled``, file names in
    evalkit/data checked against ``sha256``/``config_sha256``. ``image_size`` is the output
    resolution the weights must have; ``truncations`` the default sweep.
    """

    name: str
    image_size: int
    weights: str
    config: str
    num_classes: int = 1000
    dim_z: int = 128
    truncations: tuple[float, ...] = PAPER_TRUNCATIONS
    bundled: bool = False
    sha256: str | None = None
    config_sha256: str | None = None
    dataset: str = ""
    description: str = ""
    kind: str = field(default="biggan-deep", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"preset name {self.name!r} is malformed (letters, digits, '_', '.', '-'; "
                              f"starting with a letter or digit; at most 64 characters)")
        for label in ("sha256", "config_sha256"):
            value = getattr(self, label)
            if value is not None and not _SHA.match(value):
                raise ConfigError(f"preset {self.name}: {label} must be 64 lowercase hex digits, got {value!r}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ConfigError(f"preset {self.name}: image_size must be a power of two >= 8, got {self.image_size}")
        bad = [t for t in self.truncations if not 0 < t <= 1]
        if bad:
            raise ConfigError(f"preset {self.name}: truncations must be in (0, 1], got {bad[0]}")
        object.__setattr__(self, "truncations", tuple(float(t) for t in self.truncations))

    @property
    def resolution(self) -> str:
        return str(self.image_size)


def register_biggan_preset(preset: BigGANPreset, replace: bool = False) -> BigGANPreset:
    """Add ``preset`` to :data:`BIGGAN_PRESETS`; a name taken in either registry raises ConfigError."""
    if not isinstance(preset, BigGANPreset):
        raise ConfigError(f"register_biggan_preset expects a BigGANPreset, got {type(preset).__name__}")
    if preset.name in PRESETS or preset.name in BIGGAN_PRESETS and not replace:
        raise ConfigError(f"a preset named {preset.name!r} is already registered")
    BIGGAN_PRESETS[preset.name] = preset
    return preset


def get_biggan_preset(name: str | BigGANPreset) -> BigGANPreset:
    """Look a BigGAN preset up by name (a BigGANPreset passes through); unknown names list the known ones."""
    if isinstance(name, BigGANPreset):
        return name
    try:
        return BIGGAN_PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown BigGAN preset {name!r}; known: {', '.join(sorted(BIGGAN_PRESETS))}") from None


for _size in (128, 256, 512):
    register_biggan_preset(BigGANPreset(
        name=f"biggan-deep-{_size}", image_size=_size, weights=f"biggan-deep-{_size}",
        config=f"biggan-deep-{_size}-config", dataset=_IMAGENET,
        description=f"BigGAN-deep {_size}x{_size} (Brock et al. 2019), TF-Hub deepmind/biggan-deep-{_size}/1 as "
                    f"converted by pytorch-pretrained-biggan 0.1.1."))

# The demo's BigGAN-deep (``evalkit.demo.gan``): the same BigGANDeep code in a small 8x8 config, trained on
# the bundled digits by ``scripts/train_digits.py biggan``; weights and config ship in evalkit/data/.
DIGITS_BIGGAN_PRESET = register_biggan_preset(BigGANPreset(
    name="digits8_biggan", image_size=8, weights="digits8_biggan.pt", config="digits8_biggan-config.json",
    num_classes=10, dim_z=32, truncations=(0.2, 0.4, 0.6, 0.8, 1.0), bundled=True,
    sha256="b94f953a1fe84046d7106fe5b3ced3774bf00aaaa115133def6c4ae7c888d575",
    config_sha256="0e8bdbd3cf53fe974e57e15c78bcffebe40cdde7ea5d3db6fc17682e71340c78", dataset=_DIGITS,
    description="Demo: class-conditional BigGAN-deep 8x8 trained on the bundled digits (hinge loss, projection "
                "discriminator, EMA, standing statistics per truncation; scripts/train_digits.py biggan)."))
