"""Seeds → sampler (→ upsampler) → sample-store shards: the library behind `evalkit sample`/`upsample`.

What the reference scripts do (openai/guided-diffusion 22e0df8183507e13a7813f8d38d51b072ca1e67c,
`scripts/image_sample.py`, `classifier_sample.py`, `super_res_sample.py`) and what changes here:

* Randomness: the reference draws class labels, x_T and the per-step noise per batch from one
  unseeded device generator, so results depend on batch size and process count. Here sample i owns
  ``runtime.sample_generator(seed, i)`` and draws, in the reference's order, its label (from the
  allowed classes), its x_T [3, H, W] and one [3, H, W] noise tensor per step. A batch stacks the
  per-sample draws, so images do not depend on batch size, process count or resume point.
* Output: the reference gathers every image into one process and writes one npz at the end. Here
  every process writes finished batches as atomic shards (`evalkit.runstore`); rank 0 streams the
  shards into the same evaluator-compatible ``samples_<N>x<H>x<W>x3.npz`` at the end.
* Distribution: torchrun (``init_distributed``), not MPI; batches are dealt round-robin to ranks.
* Upsampling: low_res = uint8 / 127.5 − 1, NCHW, at the stored size (the model upsamples it
  bilinearly inside), labels from ``arr_1`` when class-conditional, always ancestral sampling.

Entry points: ``make_sampling_config`` → ``run_sampling``; ``make_upsampling_config`` →
``run_upsampling``. Configs are frozen and hold every setting that changes the images (not batch
size or device); the run directory refuses to resume with different settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from evalkit import __version__, runstore, weights
from evalkit.checkpoints import load_checkpoint
from evalkit.diffusion import adm_denoiser, create_diffusion, space_timesteps, to_uint8
from evalkit.errors import CheckpointError, ConfigError, EvalkitError, InputError, RunDirectoryError
from evalkit.flags import parse_flags
from evalkit.guidance import classifier_guidance
from evalkit.presets import get_preset
from evalkit.runtime import barrier, init_distributed, rank, resolve_device, sample_generator, world_size
from evalkit.samplers import sample
from evalkit.store import BatchReader, open_batch

NUM_CLASSES = 1000
#: Default number of samples per network call (``--compute-chunk``). Every network call of the harness
#: runs on chunks of exactly this many samples (the last chunk padded with copies of its first row,
#: whose outputs are dropped). CPU and GPU kernels round differently for different batch shapes, but
#: identically for every position of a fixed shape, so each sample gets the same bits whatever
#: --batch-size is. Part of a run's identity; larger chunks are faster on GPUs.
COMPUTE_CHUNK = 16
BatchFn = Callable[[range], tuple[np.ndarray, "np.ndarray | None"]]


# ---------------------------------------------------------------------------------------------
# Configuration

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


def _sha256(path: str) -> str:
    try:
        return weights.file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc


@dataclass(frozen=True)
class ModelSpec:
    """Which network: a preset name or a guided-diffusion flag string, plus its weights file.

    ``flags`` is the string as given (what the loader parses); ``resolved_flags`` every flag resolved
    over the reference defaults (what identifies the run). ``image_size`` is the output size
    (``large_size`` for upsamplers), ``small_size`` an upsampler's low-res input size (else None).
    """

    kind: str
    checkpoint: str
    checkpoint_sha256: str
    image_size: int
    class_cond: bool
    preset: str | None = None
    flags: str | None = None
    resolved_flags: dict[str, Any] | None = None
    small_size: int | None = None
    sample_flags: dict[str, Any] | None = None
    num_classes: int | None = None

    def settings(self) -> dict[str, Any]:
        return {"preset": self.preset, "flags": self.resolved_flags, "sha256": self.checkpoint_sha256}


def _model_spec(kind: str, preset: str | None, flags: str | None, checkpoint: str | None,
                option: str) -> ModelSpec:
    """Resolve preset/flags (exactly one of them) and hash the checkpoint."""
    what = {"diffusion": ("--preset", "--model-flags"), "classifier": ("--classifier-preset", "--classifier-flags"),
            "upsampler": ("--upsampler", "--upsampler-flags")}[kind]
    if option == "--checkpoint" and kind == "upsampler":
        what = ("--preset", "--flags")
    if bool(preset) == bool(flags):
        raise ConfigError(f"give exactly one of {what[0]} NAME or {what[1]} \"...\" "
                          f"(got {'both' if preset else 'neither'})")
    if preset:
        p = get_preset(preset)
        if p.kind != kind:
            raise ConfigError(f"{what[0]} {preset}: a {p.kind} preset, expected a {kind} preset")
        net = dict(p.flags)
        spec: dict[str, Any] = {}
    else:
        parsed = parse_flags(flags, kind=kind)
        net = parsed.net
        spec = dict(resolved_flags=json.loads(json.dumps(net, sort_keys=True, default=str)),
                    sample_flags=dict(parsed.sample))
    class_cond = kind != "classifier" and bool(net.get("class_cond", False))
    spec.update(image_size=int(net["large_size"] if kind == "upsampler" else net["image_size"]),
                class_cond=class_cond,
                small_size=int(net["small_size"]) if kind == "upsampler" else None,
                num_classes=(int(net["classifier_num_classes"]) if kind == "classifier"
                             else int(net["num_classes"]) if class_cond else None))
    if not checkpoint and preset:
        checkpoint = _default_checkpoint(preset, option)
    path = _check_file(checkpoint, option)
    return ModelSpec(kind=kind, checkpoint=path, checkpoint_sha256=_sha256(path), preset=preset, flags=flags,
                     **spec)


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


@dataclass(frozen=True)
class SamplingConfig:
    """Every setting that changes the images of `evalkit sample` (never batch size or device).

    ``sampler``: "ancestral" | "ddim"; ``classes``: allowed labels (None = all 1000) drawn uniformly
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

    def for_device(self, device: torch.device) -> "SamplingConfig":
        """Fill unset fp16 choices as the loader would on ``device`` (fp16 changes the images)."""
        ups = self.upsampler
        if ups is not None and ups.use_fp16 is None:
            ups = dataclasses.replace(ups, use_fp16=_auto_fp16(ups.model, device))
        return dataclasses.replace(
            self, upsampler=ups,
            use_fp16=_auto_fp16(self.model, device) if self.use_fp16 is None else self.use_fp16,
            classifier_use_fp16=(None if self.classifier is None else _auto_fp16(self.classifier, device)
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

    def to_dict(self) -> dict[str, Any]:
        """Everything, paths included (for --dry-run and the manifest record)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class UpsamplingConfig:
    """`evalkit upsample`: existing base samples (npz) → upsampled store."""

    base_samples: str
    base_samples_sha256: str
    num_samples: int
    upsampler: UpsamplerSettings

    def settings(self) -> dict[str, Any]:
        return {"base_samples_sha256": self.base_samples_sha256, "num_samples": self.num_samples,
                **self.upsampler.settings()}

    def for_device(self, device: torch.device) -> "UpsamplingConfig":
        """Fill an unset fp16 choice as the loader would on ``device``."""
        if self.upsampler.use_fp16 is not None:
            return self
        return dataclasses.replace(self, upsampler=dataclasses.replace(
            self.upsampler, use_fp16=_auto_fp16(self.upsampler.model, device)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _auto_fp16(spec: ModelSpec, device: torch.device) -> bool:
    """The loader's default: the network's fp16 flag, on CUDA only."""
    net = dict(get_preset(spec.preset).flags) if spec.preset else (spec.resolved_flags or {})
    key = "classifier_use_fp16" if spec.kind == "classifier" else "use_fp16"
    return bool(net.get(key, False)) and device.type == "cuda"


def _default_respacing(model: ModelSpec) -> str:
    """A preset's paper respacing; for flags, their ``timestep_respacing`` ("" = all T steps)."""
    if model.preset:
        return get_preset(model.preset).timestep_respacing
    return str((model.resolved_flags or {}).get("timestep_respacing", ""))


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


def _upsampler_settings(preset: str | None, flags: str | None, checkpoint: str | None,
                        respacing: str | None, seed: int, clip_denoised: bool,
                        use_fp16: bool | None, prefix: str, compute_chunk: int = COMPUTE_CHUNK) -> UpsamplerSettings:
    model = _model_spec("upsampler", preset, flags, checkpoint, f"{prefix}checkpoint")
    if respacing is None:
        respacing = _default_respacing(model)
    return UpsamplerSettings(model=model, timestep_respacing=_check_respacing(respacing, f"{prefix}respacing"),
                             seed=int(seed), clip_denoised=clip_denoised, use_fp16=use_fp16,
                             compute_chunk=_check_chunk(compute_chunk))


def make_sampling_config(*, checkpoint: str | None, num_samples: int, preset: str | None = None,
                         model_flags: str | None = None, seed: int = 0,
                         timestep_respacing: str | None = None, use_ddim: bool | None = None,
                         eta: float = 0.0, clip_denoised: bool = True, classes: str | None = None,
                         classifier: str | None = None, classifier_preset: str | None = None,
                         classifier_flags: str | None = None, classifier_scale: float | None = None,
                         use_fp16: bool | None = None, upsampler: str | None = None,
                         upsampler_flags: str | None = None, upsampler_checkpoint: str | None = None,
                         upsampler_respacing: str | None = None,
                         upsampler_seed: int | None = None,
                         compute_chunk: int = COMPUTE_CHUNK) -> SamplingConfig:
    """Validate options, fill in the preset's paper sampling settings and hash the weights.

    Defaults from a preset: ``timestep_respacing``, ``use_ddim``, the classifier preset and
    ``classifier_scale`` (used only when a classifier checkpoint is given). Raises ConfigError /
    CheckpointError with the offending option named. The upsampler stage uses generators
    (``upsampler_seed``, i), default ``seed + 1`` so its noise is independent of the base stage's.
    """
    if num_samples is None or int(num_samples) <= 0:
        raise ConfigError(f"--num-samples must be a positive integer, got {num_samples}")
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"--eta must lie in [0, 1] (DDIM's noise fraction), got {eta}")
    model = _model_spec("diffusion", preset, model_flags, checkpoint, "--checkpoint")
    p = get_preset(preset) if preset else None
    if timestep_respacing is None:
        timestep_respacing = _default_respacing(model)
    timestep_respacing = _check_respacing(timestep_respacing, "--timestep-respacing")
    if use_ddim is None:
        use_ddim = bool(p.use_ddim) if p else bool((model.sample_flags or {}).get("use_ddim", False))
    sampler = "ddim" if use_ddim else "ancestral"
    if eta and sampler != "ddim":
        raise ConfigError(f"--eta {eta} applies to DDIM only; add --use-ddim or drop --eta")

    # Classifier guidance: a classifier needs a scale, a scale needs a classifier. A classifier preset
    # alone uses that preset's bundled or fetched weights.
    clf = None
    if classifier or classifier_preset:
        cpreset = classifier_preset
        if not cpreset and not classifier_flags:
            cpreset = p.classifier if p else None
            if not cpreset:
                raise ConfigError("--classifier needs --classifier-preset or --classifier-flags "
                                  "(the model preset names no classifier)")
        if classifier_scale is None:
            classifier_scale = p.classifier_scale if (p and cpreset and cpreset == p.classifier) else None
            if classifier_scale is None:
                raise ConfigError("--classifier given without --classifier-scale (and the preset has "
                                  "no paper scale for it); add e.g. --classifier-scale 1.0")
        clf = _model_spec("classifier", cpreset, classifier_flags, classifier, "--classifier")
        if clf.image_size != model.image_size:
            raise ConfigError(f"classifier image_size {clf.image_size} != model image_size {model.image_size}")
    else:
        if classifier_scale is not None:
            raise ConfigError(f"--classifier-scale {classifier_scale} given without --classifier PATH "
                              f"(or --classifier-preset with bundled weights)")
        if classifier_flags:
            raise ConfigError("--classifier-flags given without --classifier PATH")
    if classifier_scale is not None and classifier_scale < 0:
        raise ConfigError(f"--classifier-scale must be >= 0, got {classifier_scale}")

    if model.class_cond and clf and model.num_classes != clf.num_classes:
        raise ConfigError(f"the model has {model.num_classes} classes but the classifier "
                          f"{clf.num_classes}; they must agree")
    num_classes = model.num_classes if model.class_cond else (clf.num_classes if clf else None)
    if classes and num_classes is None:
        raise ConfigError(f"--classes {classes!r} needs a class-conditional model or a --classifier; "
                          f"this model takes no labels")
    labels = parse_classes(classes, num_classes or NUM_CLASSES)

    ups = None
    if upsampler or upsampler_flags or upsampler_checkpoint:
        ups = _upsampler_settings(upsampler, upsampler_flags, upsampler_checkpoint, upsampler_respacing,
                                  int(seed) + 1 if upsampler_seed is None else upsampler_seed,
                                  clip_denoised, use_fp16, "--upsampler-", compute_chunk)
        if ups.model.small_size is not None and ups.model.small_size != model.image_size:
            raise ConfigError(f"upsampler expects {ups.model.small_size}x{ups.model.small_size} inputs but "
                              f"the base model makes {model.image_size}x{model.image_size} samples")
        if ups.model.class_cond and num_classes is None:
            raise ConfigError("the upsampler is class-conditional but the base samples have no labels "
                              "(class-unconditional model without --classifier)")
    return SamplingConfig(model=model, num_samples=int(num_samples), seed=int(seed), sampler=sampler,
                          timestep_respacing=timestep_respacing, eta=float(eta), clip_denoised=clip_denoised,
                          classes=labels, classifier=clf,
                          classifier_scale=None if classifier_scale is None else float(classifier_scale),
                          use_fp16=use_fp16, upsampler=ups, compute_chunk=_check_chunk(compute_chunk))


def make_upsampling_config(base_samples: str, *, checkpoint: str | None, preset: str | None = None,
                           flags: str | None = None, timestep_respacing: str | None = None, seed: int = 0,
                           num_samples: int | None = None, clip_denoised: bool = True,
                           use_fp16: bool | None = None, compute_chunk: int = COMPUTE_CHUNK) -> UpsamplingConfig:
    """Config for upsampling an existing npz (arr_0 uint8 [N, h, w, 3], optional arr_1 labels).

    Raises BatchFormatError for an unreadable input, InputError when its resolution differs from
    the upsampler's small_size or when a class-conditional upsampler gets no labels.
    """
    ups = _upsampler_settings(preset, flags, checkpoint, timestep_respacing, seed, clip_denoised,
                              use_fp16, "--", compute_chunk)
    with open_batch(base_samples) as reader:
        _check_base(reader, ups.model, base_samples)
        n = reader.num_images
        digest = reader.content_hash()
    if num_samples is not None:
        if num_samples <= 0 or num_samples > n:
            raise ConfigError(f"--num-samples {num_samples}: expected 1..{n} (samples in {base_samples})")
        n = num_samples
    return UpsamplingConfig(base_samples=str(base_samples), base_samples_sha256=digest,
                            num_samples=int(n), upsampler=ups)


def _check_base(rows: BatchReader, model: ModelSpec, path: str) -> None:
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


# ---------------------------------------------------------------------------------------------
# Per-sample randomness

class SampleNoise:
    """Per-sample generators of a batch: ``(seed, i)`` for each sample index i.

    Draw order per sample (reference order): label, x_T, then one noise tensor per step.
    """

    def __init__(self, seed: int, indices: range, device: torch.device):
        self.device = device
        self.gens = [sample_generator(seed, i, device) for i in indices]

    def labels(self, classes: tuple[int, ...] | None, num_classes: int = NUM_CLASSES) -> torch.Tensor:
        """int64 [B]: one label per sample, uniform over ``classes`` (None = all ``num_classes``)."""
        k = num_classes if classes is None else len(classes)
        picks = [int(torch.randint(0, k, (1,), generator=g, device=self.device)) for g in self.gens]
        labels = picks if classes is None else [classes[j] for j in picks]
        return torch.tensor(labels, dtype=torch.int64, device=self.device)

    def randn(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """float32 [B, *shape]: each sample draws its own ``shape`` tensor from its generator."""
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device, dtype=torch.float32)
                            for g in self.gens])

    def step_noise(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """The sampler's noise callable: per-sample draws stacked like ``like`` [B, C, H, W]."""
        return self.randn(like.shape[1:]).to(like.dtype)


# ---------------------------------------------------------------------------------------------
# Batch-size independence of the networks' arithmetic



class FixedChunk(torch.nn.Module):
    """Run ``net(x, t, **kwargs)`` on fixed-size chunks of the batch; outputs equal the unchunked
    call's up to the last bit, and do not depend on the batch size. Differentiable (guidance)."""

    def __init__(self, net: torch.nn.Module, chunk: int = COMPUTE_CHUNK):
        super().__init__()
        self.net = net
        self.chunk = chunk

    @staticmethod
    def _pad(a: torch.Tensor, pad: int) -> torch.Tensor:
        if pad == 0:
            return a
        return torch.cat([a, a[:1].detach().expand(pad, *a.shape[1:])])

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        n, outs = x.shape[0], []
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            pad = self.chunk - (e - s)
            chunk_kwargs = {k: self._pad(v[s:e], pad) for k, v in kwargs.items()}
            outs.append(self.net(self._pad(x[s:e], pad), self._pad(t[s:e], pad), **chunk_kwargs)[: e - s])
        return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# Models → batch functions

def _load(spec: ModelSpec, device: torch.device, use_fp16: bool | None):
    loaded = load_checkpoint(spec.checkpoint, preset=spec.preset, flags=spec.flags, kind=spec.kind,
                             device=device, use_fp16=use_fp16)
    assert use_fp16 is None or loaded.use_fp16 == use_fp16
    if loaded.sha256 != spec.checkpoint_sha256:
        raise CheckpointError(f"{spec.checkpoint} changed since the run was configured (sha256 "
                              f"{loaded.sha256[:12]}… != {spec.checkpoint_sha256[:12]}…)")
    return loaded


def base_batch_fn(config: SamplingConfig, device: torch.device) -> BatchFn:
    """Load the model (and classifier) once; return ``fn(indices) -> (uint8 [B,H,W,3], int64 [B] | None)``."""
    loaded = _load(config.model, device, config.use_fp16)
    classifier = _load(config.classifier, device, config.classifier_use_fp16).module if config.classifier else None
    return batch_fn_for(config, device, loaded.module, loaded.diffusion, classifier)


def batch_fn_for(config: SamplingConfig, device: torch.device, model: torch.nn.Module,
                 diffusion_settings: dict[str, Any], classifier: torch.nn.Module | None = None) -> BatchFn:
    """The batch function of ``config`` around networks already on ``device`` (eval mode).

    ``diffusion_settings``: ``create_diffusion`` keywords of the model (respacing is taken from
    ``config``). ``fn(indices)`` samples indices ``indices`` with generators (seed, i).
    """
    diffusion = create_diffusion(**{**diffusion_settings, "timestep_respacing": config.timestep_respacing})
    size = config.model.image_size
    model = FixedChunk(model, config.compute_chunk)
    classifier = FixedChunk(classifier, config.compute_chunk) if classifier is not None else None

    def fn(indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        rng = SampleNoise(config.seed, indices, device)
        y = rng.labels(config.classes, config.num_classes) if config.has_labels else None
        x_T = rng.randn((3, size, size))
        denoiser = adm_denoiser(model, diffusion, clip_denoised=config.clip_denoised,
                                model_kwargs={"y": y} if config.model.class_cond else {})
        if classifier is not None:
            denoiser = classifier_guidance(denoiser, diffusion, classifier, config.classifier_scale, y)
        x0 = sample(denoiser, diffusion, x_T, sampler=config.sampler, eta=config.eta, noise=rng.step_noise)
        return to_uint8(x0), (y.cpu().numpy() if y is not None else None)

    return fn


def upsample_batch_fn(settings: UpsamplerSettings, rows: BatchReader, device: torch.device) -> BatchFn:
    """``fn(indices)``: upsample base samples ``indices`` of ``rows`` (labels kept from arr_1)."""
    loaded = _load(settings.model, device, settings.use_fp16)
    diffusion = create_diffusion(**{**loaded.diffusion, "timestep_respacing": settings.timestep_respacing})
    net = FixedChunk(loaded.module, settings.compute_chunk)
    size = settings.model.image_size

    def fn(indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        rng = SampleNoise(settings.seed, indices, device)
        # Reference conditioning: uint8 -> [-1, 1] float32, NCHW, at the stored (small) size.
        low = torch.from_numpy(rows.read_images(indices.start, indices.stop)).to(device)
        low_res = (low.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()
        labels = rows.labels[indices.start:indices.stop] if rows.labels is not None else None
        kwargs: dict[str, torch.Tensor] = {"low_res": low_res}
        if settings.model.class_cond:
            kwargs["y"] = torch.from_numpy(labels).to(device)
        x_T = rng.randn((3, size, size))
        denoiser = adm_denoiser(net, diffusion, clip_denoised=settings.clip_denoised, model_kwargs=kwargs)
        x0 = sample(denoiser, diffusion, x_T, sampler="ancestral", noise=rng.step_noise)
        return to_uint8(x0), labels

    return fn


# ---------------------------------------------------------------------------------------------
# The sharded, resumable stage engine

@dataclass
class SampleRun:
    """A finished store: ``npz_path`` (samples_<N>x<H>x<W>x3.npz), its manifest, timing.

    ``generated`` counts samples made by this call (0 when everything was already done);
    ``base`` is the base store of a cascade (None otherwise).
    """

    out_dir: Path
    npz_path: Path
    manifest: dict[str, Any]
    num_samples: int
    generated: int
    seconds: float
    base: "SampleRun | None" = None
    stage: str = "sample"

    def summary(self) -> str:
        """One line: N samples, time, samples/s, output path."""
        if self.generated == 0:
            return f"{self.stage}: {self.num_samples} samples already complete -> {self.npz_path}"
        rate = self.generated / self.seconds if self.seconds > 0 else 0.0
        new = "" if self.generated == self.num_samples else f" ({self.generated} new, resumed)"
        return (f"{self.stage}: {self.num_samples} samples{new} in {self.seconds:.1f} s, "
                f"{rate:.2f} samples/s -> {self.npz_path}")


@dataclass
class Stage:
    """What the engine needs to know about one store it fills."""

    kind: str
    settings: dict[str, Any]
    record: dict[str, Any]
    num_samples: int
    image_size: int
    has_labels: bool
    make_batch_fn: Callable[[], BatchFn]
    desc: str = "sampling"
    extra: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    return {"evalkit": __version__, "torch": torch.__version__, "numpy": np.__version__}


@runstore.owns_run_dir("out_dir")  # one job at a time in out_dir; another fails at once naming the holder
def run_stage(stage: Stage, out_dir: str | os.PathLike, batch_size: int, progress: bool = True,
              keep_shards: bool = False) -> SampleRun:
    """Fill ``out_dir`` with shards for every missing index, then (rank 0) write the final npz.

    Works in one process or under torchrun (every rank calls it; batches are dealt round-robin).
    Finished shards are skipped, so rerunning after a kill resumes. Raises RunDirectoryError when
    ``out_dir`` holds a run with other settings or cannot be written.
    """
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    out_dir = Path(out_dir)
    r, w = rank(), world_size()
    t0 = time.perf_counter()
    manifest = runstore.check_run_dir(out_dir, stage.kind, stage.settings)
    done_npz = runstore.completed_npz(out_dir, manifest)
    if done_npz is not None:
        return SampleRun(out_dir, done_npz, manifest, stage.num_samples, 0, time.perf_counter() - t0,
                         stage=stage.desc)
    # Plan from the finished shards, and load the models, before anything is written: a bad
    # checkpoint must not leave a manifest behind.
    done = runstore.done_intervals(runstore.list_shards(out_dir), stage.num_samples) if manifest else []
    plan = runstore.plan_batches(done, stage.num_samples, batch_size)
    mine = runstore.batches_of_rank(plan, r, w)
    todo = sum(len(b) for b in plan)
    batch_fn = stage.make_batch_fn() if mine else None
    barrier()  # every rank has listed the shards and loaded before any rank writes
    if r == 0:
        if manifest is None:
            manifest = runstore.new_manifest(stage.kind, stage.settings,
                                             {**stage.record, "versions": _versions()}, stage.num_samples,
                                             (stage.image_size, stage.image_size, 3), stage.has_labels)
            runstore.write_manifest(out_dir, manifest)
        runstore.remove_stale_temporaries(out_dir)
    barrier()
    manifest = runstore.read_manifest(out_dir)

    if batch_fn is not None:
        bar = tqdm(total=todo, unit="sample", desc=stage.desc if w == 1 else f"{stage.desc} (rank 0 of {w})",
                   disable=not progress or r != 0, dynamic_ncols=True, smoothing=0.1)
        last_refresh = time.monotonic()
        with bar:
            for k, batch in enumerate(mine):
                images, labels = batch_fn(batch)
                runstore.write_shard(out_dir, batch.start, images, labels if stage.has_labels else None, rank=r)
                # Rank 0 advances by the batches dealt to all ranks in this round (exact at the end).
                j = k * w + r
                bar.update(sum(len(b) for b in plan[j:j + w]) if r == 0 else 0)
                if r == 0 and time.monotonic() - last_refresh > 10.0:
                    manifest = runstore.refresh_done(out_dir, manifest)
                    last_refresh = time.monotonic()
    barrier()
    if r == 0:
        npz = runstore.assemble(out_dir, manifest, keep_shards=keep_shards)
    barrier()
    manifest = runstore.read_manifest(out_dir)
    npz = out_dir / manifest["npz"]
    return SampleRun(out_dir, npz, manifest, stage.num_samples, todo, time.perf_counter() - t0, stage=stage.desc)


def _upsample_stage(config: UpsamplingConfig, settings: dict[str, Any], device: torch.device,
                    rows_path: str) -> Stage:
    ups = config.upsampler

    def make() -> BatchFn:
        rows = open_batch(rows_path)
        _check_base(rows, ups.model, rows_path)
        return upsample_batch_fn(ups, rows, device)

    with open_batch(rows_path) as rows:
        has_labels = rows.labels is not None
    return Stage(kind="upsample", settings=settings, record=config.to_dict(), num_samples=config.num_samples,
                 image_size=ups.model.image_size, has_labels=has_labels, make_batch_fn=make, desc="upsampling")


def run_sampling(config: SamplingConfig, out_dir: str | os.PathLike, device: torch.device | str,
                 batch_size: int = 16, progress: bool = True, keep_shards: bool = False) -> SampleRun:
    """Generate ``config.num_samples`` samples into ``out_dir`` (resumable; torchrun-aware).

    Without an upsampler the store is ``out_dir`` itself; with one, ``out_dir/base`` and
    ``out_dir/upsampled`` (the returned run is the upsampled one, with ``.base`` set).
    Returns a SampleRun whose ``npz_path`` is the evaluator-compatible npz.
    """
    device = resolve_device(device)
    init_distributed(device)
    config = config.for_device(device)
    out_dir = Path(out_dir)
    base_dir = out_dir / "base" if config.upsampler else out_dir
    if config.upsampler:
        if (out_dir / runstore.MANIFEST).exists():
            raise RunDirectoryError(f"--out {out_dir} holds a run without an upsampler; a cascade writes "
                                    f"base/ and upsampled/ stores, use another --out directory")
        # Refuse a mismatching upsampled store before spending time on the base stage.
        runstore.check_run_dir(out_dir / "upsampled", "upsample", _cascade_upsample_settings(config))
    base = Stage(kind="sample", settings=config.base_settings(), record=config.to_dict(),
                 num_samples=config.num_samples, image_size=config.model.image_size,
                 has_labels=config.has_labels, make_batch_fn=lambda: base_batch_fn(config, device))
    base_run = run_stage(base, base_dir, batch_size, progress, keep_shards)
    if not config.upsampler:
        return base_run
    ucfg = UpsamplingConfig(base_samples=str(base_run.npz_path), base_samples_sha256="",
                            num_samples=config.num_samples, upsampler=config.upsampler)
    stage = _upsample_stage(ucfg, _cascade_upsample_settings(config), device, str(base_run.npz_path))
    up_run = run_stage(stage, out_dir / "upsampled", batch_size, progress, keep_shards)
    up_run.base = base_run
    return up_run


def _cascade_upsample_settings(config: SamplingConfig) -> dict[str, Any]:
    """The upsampled store of a cascade is identified by the base settings plus the upsampler's."""
    return {"base": config.base_settings(), "num_samples": config.num_samples, **config.upsampler.settings()}


def run_upsampling(config: UpsamplingConfig, out_dir: str | os.PathLike, device: torch.device | str,
                   batch_size: int = 16, progress: bool = True, keep_shards: bool = False) -> SampleRun:
    """Upsample the first ``config.num_samples`` base samples into ``out_dir`` (resumable)."""
    device = resolve_device(device)
    init_distributed(device)
    config = config.for_device(device)
    stage = _upsample_stage(config, config.settings(), device, config.base_samples)
    return run_stage(stage, out_dir, batch_size, progress, keep_shards)
