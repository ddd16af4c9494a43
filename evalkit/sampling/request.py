"""What defines the images of a sampling run, as frozen values built once from the options.

``SampleArgs`` / ``UpsampleArgs`` hold the options as given (the CLI builds them from click's
keywords); ``make_request`` / ``make_upsample_request`` validate them, fill in a preset's paper
sampling settings, hash the weights and return a ``SampleRequest`` / ``UpsampleRequest``: every
setting that changes the images (never batch size or device), which a run directory compares on
resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from evalkit import weights
from evalkit.diffusion import space_timesteps
from evalkit.errors import CheckpointError, ConfigError, EvalkitError, InputError
from evalkit.flags import fp16_default, parse_flags
from evalkit.presets import get_preset
from evalkit.sampling.defaults import COMPUTE_CHUNK, NUM_CLASSES
from evalkit.store import BatchReader, open_batch



def parse_classes(spec: str | None, num_classes: int = NUM_CLASSES) -> tuple[int, ...] | None:
    """``"3"`` → (3,); ``"1,5,7"`` → (1, 5, 7); ``"0-9"`` → (0, …, 9); ranges and lists combine
    (``"0-4,7"``). Duplicates are dropped, order kept. None/"" → None (all classes)."""
    if spec is None or not str(spec).strip():
        return None
    out: list[int] = []
    try:
        for part in str(spec).split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if a > b:
                    raise ValueError(part)
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError as exc:
        raise ConfigError(f"--classes {spec!r}: expected labels like '3', '1,5,7' or a range '0-9'") from exc
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes {spec!r}: labels {bad[:5]} are outside [0, {num_classes})")
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# Model description

@dataclass(frozen=True)
class ModelSpec:
    """Which network: a preset name or a guided-diffusion flag string, plus its weights file.

    ``flags`` is the string as given (what the loader parses), None for a preset;
    ``resolved_flags`` every network flag resolved over the reference defaults (presets too).
    ``image_size`` is the output size (``large_size`` for upsamplers), ``small_size`` an
    upsampler's low-res input size. ``default_respacing`` / ``default_use_ddim``: the preset's
    paper sampling settings, or those of the flag string.
    """

    kind: str
    checkpoint: str
    checkpoint_sha256: str
    image_size: int
    class_cond: bool
    resolved_flags: dict[str, Any]
    preset: str | None = None
    flags: str | None = None
    small_size: int | None = None
    num_classes: int | None = None
    default_respacing: str = ""
    default_use_ddim: bool = False

    def settings(self) -> dict[str, Any]:
        """Identity: the preset name, or the resolved flags of a flag string, and the weights' sha256."""
        return {"preset": self.preset, "flags": None if self.preset else self.resolved_flags,
                "sha256": self.checkpoint_sha256}

    @property
    def diffusion_steps(self) -> int:
        """T of the model (``diffusion_steps``; 1000 unless its flags say otherwise)."""
        return int(self.resolved_flags.get("diffusion_steps", 1000))

    def fp16_on(self, device: torch.device) -> bool:
        """The loader's fp16 default on `device` (`evalkit.flags.fp16_default`)."""
        return fp16_default(self.resolved_flags, self.kind, device.type)

    def label_text(self) -> str:
        """The preset name, else the flag string on one line (results rows)."""
        return self.preset or " ".join((self.flags or "").split())


_OPTIONS = {"diffusion": ("--preset", "--model-flags"), "classifier": ("--classifier-preset", "--classifier-flags"),
            "upsampler": ("--upsampler", "--upsampler-flags")}


def _default_checkpoint(preset: str, option: str) -> str:
    """A preset's bundled weights file, else its file in the weights cache; ConfigError if neither."""
    p = get_preset(preset)
    if p.weights:  # bundled with evalkit, under evalkit/data/
        path = Path(p.weights)
        return str(path if path.is_absolute() else Path(str(resources.files("evalkit.data").joinpath(p.weights))))
    try:
        found = weights.find(preset)
    except EvalkitError:  # not a registered weights file
        found = None
    if found is None:
        raise ConfigError(f"{option} is required: preset {preset} has no bundled weights and none in the "
                          f"cache (run `evalkit weights fetch {preset}` or pass {option} PATH)")
    return str(found)


def _check_file(path: str | os.PathLike | None, option: str) -> str:
    if not path:
        raise ConfigError(f"{option} is required (path of the weights file)")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{option} {p}: no such file")
    if not os.access(p, os.R_OK):
        raise CheckpointError(f"{option} {p}: not readable")
    return str(p)


def _hash(path: str) -> str:
    """sha256 of a weights file (from its fetch record when unchanged: checkpoints are gigabytes)."""
    try:
        return weights.file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def model_spec(kind: str, preset: str | None, flags: str | None, checkpoint: str | None,
               option: str, names: tuple[str, str] | None = None) -> ModelSpec:
    """Resolve preset/flags (exactly one of them, `names` the two options) and hash the checkpoint."""
    what = names or _OPTIONS[kind]
    if bool(preset) == bool(flags):
        raise ConfigError(f"give exactly one of {what[0]} NAME or {what[1]} \"...\" "
                          f"(got {'both' if preset else 'neither'})")
    if preset:
        p = get_preset(preset)
        if p.kind != kind:
            raise ConfigError(f"{what[0]} {preset}: a {p.kind} preset, expected a {kind} preset")
        net: Mapping[str, Any] = p.flags
        respacing, use_ddim = p.timestep_respacing, bool(p.use_ddim)
    else:
        parsed = parse_flags(flags, kind=kind)
        net = parsed.net
        respacing = str(net.get("timestep_respacing", ""))
        use_ddim = bool(dict(parsed.sample).get("use_ddim", False))
    class_cond = kind != "classifier" and bool(net.get("class_cond", False))
    if not checkpoint and preset:
        checkpoint = _default_checkpoint(preset, option)
    path = _check_file(checkpoint, option)
    return ModelSpec(
        kind=kind, checkpoint=path, checkpoint_sha256=_hash(path), preset=preset, flags=flags,
        resolved_flags=json.loads(json.dumps(dict(net), sort_keys=True, default=str)),
        image_size=int(net["large_size"] if kind == "upsampler" else net["image_size"]), class_cond=class_cond,
        small_size=int(net["small_size"]) if kind == "upsampler" else None,
        num_classes=(int(net["classifier_num_classes"]) if kind == "classifier"
                     else int(net["num_classes"]) if class_cond else None),
        default_respacing=respacing, default_use_ddim=use_ddim)


# ---------------------------------------------------------------------------------------------
# Requests

@dataclass(frozen=True)
class UpsamplerSettings:
    """Everything about the upsampling stage that changes its images (no input data)."""

    model: ModelSpec
    timestep_respacing: str
    seed: int
    clip_denoised: bool = True
    use_fp16: bool | None = None
    compute_chunk: int = COMPUTE_CHUNK

    def settings(self) -> dict[str, Any]:
        return {"upsampler": self.model.settings(), "timestep_respacing": self.timestep_respacing,
                "seed": self.seed, "clip_denoised": self.clip_denoised, "use_fp16": self.use_fp16,
                "sampler": "ancestral", "compute_chunk": self.compute_chunk}

    def for_device(self, device: torch.device) -> "UpsamplerSettings":
        """Fill an unset fp16 choice as the loader would on `device` (fp16 changes the images)."""
        if self.use_fp16 is not None:
            return self
        return dataclasses.replace(self, use_fp16=self.model.fp16_on(device))


@dataclass(frozen=True)
class SampleRequest:
    """Every setting that changes the images of `evalkit sample` (never batch size or device).

    ``sampler``: "ancestral" | "ddim"; ``classes``: allowed labels (None = all) drawn uniformly
    per sample from its generator; ``classifier_scale`` is the guidance scale s (None without a
    classifier); ``upsampler`` adds a cascade stage (base/ and upsampled/ stores).
    """

    model: ModelSpec
    num_samples: int
    seed: int = 0
    sampler: str = "ancestral"
    timestep_respacing: str = "250"
    eta: float = 0.0
    clip_denoised: bool = True
    classes: tuple[int, ...] | None = None
    classifier: ModelSpec | None = None
    classifier_scale: float | None = None
    use_fp16: bool | None = None
    classifier_use_fp16: bool | None = None
    upsampler: UpsamplerSettings | None = None
    compute_chunk: int = COMPUTE_CHUNK

    def for_device(self, device: torch.device) -> "SampleRequest":
        """Fill unset fp16 choices as the loader would on `device` (fp16 changes the images)."""
        return dataclasses.replace(
            self, upsampler=self.upsampler.for_device(device) if self.upsampler else None,
            use_fp16=self.model.fp16_on(device) if self.use_fp16 is None else self.use_fp16,
            classifier_use_fp16=(None if self.classifier is None else self.classifier.fp16_on(device)
                                 if self.classifier_use_fp16 is None else self.classifier_use_fp16))

    @property
    def has_labels(self) -> bool:
        """Labels are drawn when the model is class-conditional or a classifier guides."""
        return self.model.class_cond or self.classifier is not None

    @property
    def num_classes(self) -> int | None:
        """Number of classes labels are drawn from (None when the run has no labels)."""
        if self.model.class_cond:
            return self.model.num_classes
        return self.classifier.num_classes if self.classifier else None

    @property
    def steps(self) -> str:
        """The respacing as a results row writes it (``str(T)`` when every step is sampled)."""
        return self.timestep_respacing or str(self.model.diffusion_steps)

    def base_settings(self) -> dict[str, Any]:
        """Identity of the base store (what `manifest.json` compares on resume)."""
        return {
            "model": self.model.settings(), "num_samples": self.num_samples, "seed": self.seed,
            "sampler": self.sampler, "timestep_respacing": self.timestep_respacing, "eta": self.eta,
            "clip_denoised": self.clip_denoised,
            "classes": list(self.classes) if self.classes is not None else None,
            "classifier": self.classifier.settings() if self.classifier else None,
            "classifier_scale": self.classifier_scale, "use_fp16": self.use_fp16,
            "classifier_use_fp16": self.classifier_use_fp16, "compute_chunk": self.compute_chunk,
        }

    def cascade_settings(self) -> dict[str, Any]:
        """Identity of a cascade's upsampled store: the base settings plus the upsampler's."""
        assert self.upsampler is not None
        return {"base": self.base_settings(), "num_samples": self.num_samples, **self.upsampler.settings()}

    def to_dict(self) -> dict[str, Any]:
        """Everything, paths included (for --dry-run and the manifest record)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class UpsampleRequest:
    """`evalkit upsample`: existing base samples (npz, identified by content hash) → upsampled store."""

    base_samples: str
    base_samples_sha256: str
    num_samples: int
    upsampler: UpsamplerSettings

    def settings(self) -> dict[str, Any]:
        return {"base_samples_sha256": self.base_samples_sha256, "num_samples": self.num_samples,
                **self.upsampler.settings()}

    def for_device(self, device: torch.device) -> "UpsampleRequest":
        """Fill an unset fp16 choice as the loader would on `device`."""
        return dataclasses.replace(self, upsampler=self.upsampler.for_device(device))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Options as given → requests

@dataclass(frozen=True)
class SampleArgs:
    """The options of `evalkit sample` as given (None = the preset's or the loader's default)."""

    checkpoint: str | None = None
    num_samples: int | None = None
    preset: str | None = None
    model_flags: str | None = None
    seed: int = 0
    timestep_respacing: str | None = None
    use_ddim: bool | None = None
    eta: float = 0.0
    clip_denoised: bool = True
    classes: str | None = None
    classifier: str | None = None
    classifier_preset: str | None = None
    classifier_flags: str | None = None
    classifier_scale: float | None = None
    use_fp16: bool | None = None
    upsampler: str | None = None
    upsampler_flags: str | None = None
    upsampler_checkpoint: str | None = None
    upsampler_respacing: str | None = None
    upsampler_seed: int | None = None
    compute_chunk: int = COMPUTE_CHUNK

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], **overrides: Any) -> "SampleArgs":
        """The entries of `kwargs` (e.g. click's) that name fields of this class, then `overrides`."""
        return _from_kwargs(cls, kwargs, overrides)


def _from_kwargs(cls, kwargs: Mapping[str, Any], overrides: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in kwargs.items() if k in names}, **overrides})


@dataclass(frozen=True)
class UpsampleArgs:
    """The options of `evalkit upsample` as given."""

    base_samples: str
    checkpoint: str | None = None
    preset: str | None = None
    flags: str | None = None
    timestep_respacing: str | None = None
    seed: int = 0
    num_samples: int | None = None
    clip_denoised: bool = True
    use_fp16: bool | None = None
    compute_chunk: int = COMPUTE_CHUNK

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], **overrides: Any) -> "UpsampleArgs":
        """The entries of `kwargs` (e.g. click's) that name fields of this class, then `overrides`."""
        return _from_kwargs(cls, kwargs, overrides)


def _check_respacing(spec: str, option: str) -> str:
    spec = str(spec).strip()
    try:
        space_timesteps(1000, spec)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{option} {spec!r}: {exc}") from exc
    return spec


def _check_chunk(chunk: int) -> int:
    if int(chunk) != chunk or chunk < 1:
        raise ConfigError(f"--compute-chunk must be a positive integer, got {chunk!r}")
    return int(chunk)


def _upsampler_settings(model: ModelSpec, respacing: str | None, seed: int, clip_denoised: bool,
                        use_fp16: bool | None, prefix: str, compute_chunk: int) -> UpsamplerSettings:
    if respacing is None:
        respacing = model.default_respacing
    return UpsamplerSettings(model=model, timestep_respacing=_check_respacing(respacing, f"{prefix}respacing"),
                             seed=int(seed), clip_denoised=clip_denoised, use_fp16=use_fp16,
                             compute_chunk=_check_chunk(compute_chunk))


def make_request(args: SampleArgs) -> SampleRequest:
    """Validate `args`, fill in the preset's paper sampling settings and hash the weights.

    Defaults from a preset: ``timestep_respacing``, ``use_ddim``, the classifier preset and
    ``classifier_scale`` (used only when a classifier checkpoint is given). Raises ConfigError /
    CheckpointError with the offending option named. The upsampler stage uses generators
    (``upsampler_seed``, i), default ``seed + 1`` so its noise is independent of the base stage's.
    """
    a = args
    if a.num_samples is None or int(a.num_samples) <= 0:
        raise ConfigError(f"--num-samples must be a positive integer, got {a.num_samples}")
    if not 0.0 <= a.eta <= 1.0:
        raise ConfigError(f"--eta must lie in [0, 1] (DDIM's noise fraction), got {a.eta}")
    model = model_spec("diffusion", a.preset, a.model_flags, a.checkpoint, "--checkpoint")
    p = get_preset(a.preset) if a.preset else None
    respacing = _check_respacing(model.default_respacing if a.timestep_respacing is None else a.timestep_respacing,
                                 "--timestep-respacing")
    sampler = "ddim" if (model.default_use_ddim if a.use_ddim is None else a.use_ddim) else "ancestral"
    if a.eta and sampler != "ddim":
        raise ConfigError(f"--eta {a.eta} applies to DDIM only; add --use-ddim or drop --eta")

    # Classifier guidance: a classifier needs a scale, a scale needs a classifier. A classifier preset
    # alone uses that preset's bundled or fetched weights.
    clf, scale = None, a.classifier_scale
    if a.classifier or a.classifier_preset:
        cpreset = a.classifier_preset
        if not cpreset and not a.classifier_flags:
            cpreset = p.classifier if p else None
            if not cpreset:
                raise ConfigError("--classifier needs --classifier-preset or --classifier-flags "
                                  "(the model preset names no classifier)")
        if scale is None:
            scale = p.classifier_scale if (p and cpreset and cpreset == p.classifier) else None
            if scale is None:
                raise ConfigError("--classifier given without --classifier-scale (and the preset has "
                                  "no paper scale for it); add e.g. --classifier-scale 1.0")
        clf = model_spec("classifier", cpreset, a.classifier_flags, a.classifier, "--classifier")
        if clf.image_size != model.image_size:
            raise ConfigError(f"classifier image_size {clf.image_size} != model image_size {model.image_size}")
    else:
        if scale is not None:
            raise ConfigError(f"--classifier-scale {scale} given without --classifier PATH "
                              f"(or --classifier-preset with bundled weights)")
        if a.classifier_flags:
            raise ConfigError("--classifier-flags given without --classifier PATH")
    if scale is not None and scale < 0:
        raise ConfigError(f"--classifier-scale must be >= 0, got {scale}")

    if model.class_cond and clf and model.num_classes != clf.num_classes:
        raise ConfigError(f"the model has {model.num_classes} classes but the classifier "
                          f"{clf.num_classes}; they must agree")
    num_classes = model.num_classes if model.class_cond else (clf.num_classes if clf else None)
    if a.classes and num_classes is None:
        raise ConfigError(f"--classes {a.classes!r} needs a class-conditional model or a --classifier; "
                          f"this model takes no labels")
    labels = parse_classes(a.classes, num_classes or NUM_CLASSES)

    ups = None
    if a.upsampler or a.upsampler_flags or a.upsampler_checkpoint:
        umodel = model_spec("upsampler", a.upsampler, a.upsampler_flags, a.upsampler_checkpoint,
                            "--upsampler-checkpoint")
        ups = _upsampler_settings(umodel, a.upsampler_respacing,
                                  int(a.seed) + 1 if a.upsampler_seed is None else a.upsampler_seed,
                                  a.clip_denoised, a.use_fp16, "--upsampler-", a.compute_chunk)
        if umodel.small_size is not None and umodel.small_size != model.image_size:
            raise ConfigError(f"upsampler expects {umodel.small_size}x{umodel.small_size} inputs but "
                              f"the base model makes {model.image_size}x{model.image_size} samples")
        if umodel.class_cond and num_classes is None:
            raise ConfigError("the upsampler is class-conditional but the base samples have no labels "
                              "(class-unconditional model without --classifier)")
    return SampleRequest(model=model, num_samples=int(a.num_samples), seed=int(a.seed), sampler=sampler,
                         timestep_respacing=respacing, eta=float(a.eta), clip_denoised=a.clip_denoised,
                         classes=labels, classifier=clf, classifier_scale=None if scale is None else float(scale),
                         use_fp16=a.use_fp16, upsampler=ups, compute_chunk=_check_chunk(a.compute_chunk))


def make_upsample_request(args: UpsampleArgs) -> UpsampleRequest:
    """Request for upsampling an existing npz (arr_0 uint8 [N, h, w, 3], optional arr_1 labels).

    Raises BatchFormatError for an unreadable input, InputError when its resolution differs from
    the upsampler's small_size or when a class-conditional upsampler gets no labels.
    """
    a = args
    model = model_spec("upsampler", a.preset, a.flags, a.checkpoint, "--checkpoint", names=("--preset", "--flags"))
    ups = _upsampler_settings(model, a.timestep_respacing, a.seed, a.clip_denoised, a.use_fp16, "--",
                              a.compute_chunk)
    with open_batch(a.base_samples) as reader:
        check_base(reader, model, a.base_samples)
        n = reader.num_images
        digest = reader.content_hash()
    if a.num_samples is not None:
        if a.num_samples <= 0 or a.num_samples > n:
            raise ConfigError(f"--num-samples {a.num_samples}: expected 1..{n} (samples in {a.base_samples})")
        n = a.num_samples
    return UpsampleRequest(base_samples=str(a.base_samples), base_samples_sha256=digest, num_samples=int(n),
                           upsampler=ups)


def check_base(rows: BatchReader, model: ModelSpec, path: str) -> None:
    """Refuse base samples the upsampler cannot condition on (size, labels)."""
    n = rows.num_images
    h, w, _ = rows.image_shape
    if n == 0:
        raise InputError(f"{path}: holds no images")
    if model.small_size is not None and (h, w) != (model.small_size, model.small_size):
        raise InputError(f"{path}: images are {h}x{w}, but the upsampler expects "
                         f"{model.small_size}x{model.small_size} inputs (small_size)")
    if model.class_cond and rows.labels is None:
        raise InputError(f"{path}: no labels (arr_1), but the upsampler is class-conditional")
    if model.class_cond and len(rows.labels) and (rows.labels.min() < 0 or rows.labels.max() >= model.num_classes):
        raise InputError(f"{path}: labels (arr_1) outside [0, {model.num_classes}) of the upsampler")
