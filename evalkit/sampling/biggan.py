"""BigGAN-deep in the sampling harness: options → `BigGANRequest` → `BigGANSampler` (a `Generator`).

Sample i draws its label (uniform over ``classes``) and ``z_i = truncation * truncated_normal``
from its own CPU generator (seed, i) (`evalkit.models.biggan.biggan_latents`), so its image does
not depend on batch size, process count, device or resume point; the network runs on fixed-shape
chunks (`FixedChunk`, ``compute_chunk`` samples per call) so its arithmetic does not depend on the
batch size either, and the output in [-1, 1] is quantised to uint8 by the ADM sampler's rule
(`evalkit.diffusion.samples_to_uint8`), so both families' images are treated alike.

Weights: a preset's (bundled in evalkit/data, else the cached file of ``evalkit weights fetch``) or
``checkpoint``; the config JSON: ``config``, else the bundled preset's, else the file beside the
weights (`evalkit.checkpoints.biggan_config_beside`), else the preset's cached config, else (for a
preset of a TF-Hub resolution) the canonical `BigGANConfig.deep` of its resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from evalkit import weights
from evalkit.checkpoints import LoadedBigGAN, biggan_config_beside, load_biggan, read_state_dict
from evalkit.context import Context
from evalkit.diffusion import samples_to_uint8
from evalkit.errors import CheckpointError, ConfigError, EvalkitError, WeightsError
from evalkit.hashing import sha256_file
from evalkit.models.biggan import BigGANConfig, biggan_latents, check_state_dict, check_truncation
from evalkit.presets import BIGGAN_PRESETS, BigGANPreset, get_biggan_preset
from evalkit.sampling.chunk import FixedChunk
from evalkit.sampling.defaults import COMPUTE_CHUNK
from evalkit.sampling.request import _check_chunk, _check_file, _from_kwargs, _hash, parse_classes

FAMILY = "biggan-deep"
#: Truncation of ``evalkit sample`` when none is given: the untruncated prior (the paper's main-table
#: BigGAN-deep rows are truncation 1.0).
DEFAULT_TRUNCATION = 1.0


def is_biggan_preset(name: str | None) -> bool:
    """True when `name` is a registered BigGAN preset (`evalkit.presets.BIGGAN_PRESETS`)."""
    return bool(name) and name in BIGGAN_PRESETS


# ---------------------------------------------------------------------------------------------
# Which generator

@dataclass(frozen=True)
class BigGANSpec:
    """Which BigGAN-deep generator: preset name (or None), weights file and config, with their sha256.

    ``config`` is None when the canonical `BigGANConfig.deep` of ``image_size`` is used (no file);
    ``architecture`` is the config's fields either way.
    """

    checkpoint: str
    checkpoint_sha256: str
    image_size: int
    num_classes: int
    z_dim: int
    architecture: dict[str, Any]
    preset: str | None = None
    config: str | None = None
    config_sha256: str | None = None

    def settings(self) -> dict[str, Any]:
        """Identity: the preset name, the weights' and config's sha256 and the resolution."""
        return {"preset": self.preset, "sha256": self.checkpoint_sha256, "config_sha256": self.config_sha256,
                "resolution": self.image_size}

    def label_text(self) -> str:
        """The preset name, else the weights file's stem (results rows)."""
        return self.preset or Path(self.checkpoint).stem


def _bundled(name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else Path(str(resources.files("evalkit.data").joinpath(name)))


def _preset_checkpoint(p: BigGANPreset) -> str:
    """The preset's bundled weights (sha256-checked), else its fetched file; ConfigError if neither."""
    if p.bundled:
        path = _bundled(p.weights)
        if p.sha256 and _hash(str(path)) != p.sha256:
            raise WeightsError(f"{path}: bundled weights of preset {p.name} do not match their sha256 "
                               f"{p.sha256[:12]}…; reinstall evalkit")
        return str(path)
    try:
        found = weights.find(p.weights)
    except EvalkitError:
        found = None
    if found is None:
        raise ConfigError(f"--checkpoint is required: preset {p.name} has no weights in the cache (run "
                          f"`evalkit weights fetch {p.weights}` or pass --checkpoint PATH and --config PATH)")
    return str(found)


def _preset_config(p: BigGANPreset) -> Path | None:
    """The preset's bundled config file (sha256-checked), else its cached one, else None."""
    if p.bundled:
        path = _bundled(p.config)
        if p.config_sha256 and sha256_file(path) != p.config_sha256:
            raise WeightsError(f"{path}: bundled config of preset {p.name} does not match its sha256 "
                               f"{p.config_sha256[:12]}…; reinstall evalkit")
        return path
    try:
        return weights.find(p.config)
    except EvalkitError:
        return None


def biggan_spec(preset: str | None, checkpoint: str | None, config: str | None) -> BigGANSpec:
    """Resolve the weights and config of a BigGAN-deep generator (module doc) and hash them.

    The weights are read once (weights only) and their keys and shapes checked against the
    config, so a bad file is refused before a run or sweep starts. Raises ConfigError for an
    unknown preset, a missing or unreadable config, a config of another resolution than the
    preset's; CheckpointError for a missing or unreadable weights file or one that needs code to
    unpickle; WeightsError for weights that do not fit the config or the preset's resolution.
    """
    p = get_biggan_preset(preset) if preset else None
    if not checkpoint:
        if p is None:
            raise ConfigError("give --preset NAME (a BigGAN preset, see `evalkit presets`) or --checkpoint PATH "
                              "with the weights of a BigGAN-deep generator")
        checkpoint = _preset_checkpoint(p)
    path = _check_file(checkpoint, "--checkpoint")
    option = "--config"
    if config:
        cfg_path: Path | None = Path(config)
        if not cfg_path.is_file():
            raise ConfigError(f"--config {cfg_path}: no such file (the BigGAN config JSON of the weights)")
    else:
        beside = biggan_config_beside(path)
        cfg_path = (_preset_config(p) if p is not None and p.bundled else None) or \
            (beside if beside.is_file() else None) or (_preset_config(p) if p is not None else None)
        option = "config"
    if cfg_path is not None:
        cfg = BigGANConfig.from_json(cfg_path)
        cfg_sha = sha256_file(cfg_path)
    elif p is not None:
        cfg = BigGANConfig.deep(p.image_size, z_dim=p.dim_z, num_classes=p.num_classes)
        cfg_sha = None
    else:
        raise ConfigError(f"--checkpoint {path}: no BigGAN config given and none beside it "
                          f"({biggan_config_beside(path)}); pass --config PATH (the JSON that came with the weights)")
    if p is not None and (cfg.output_dim, cfg.num_classes, cfg.z_dim) != (p.image_size, p.num_classes, p.dim_z):
        raise ConfigError(f"{option} {cfg_path}: describes a {cfg.output_dim}x{cfg.output_dim} generator with "
                          f"{cfg.num_classes} classes and z_dim {cfg.z_dim}, but preset {p.name} is "
                          f"{p.image_size}x{p.image_size} with {p.num_classes} classes and z_dim {p.dim_z}")
    check_state_dict(read_state_dict(path), cfg, weights=path,
                     config_source=str(cfg_path) if cfg_path else f"the canonical BigGAN-deep-{cfg.output_dim} config",
                     expected_resolution=cfg.output_dim)
    return BigGANSpec(checkpoint=path, checkpoint_sha256=_hash(path), image_size=cfg.output_dim,
                      num_classes=cfg.num_classes, z_dim=cfg.z_dim, architecture=cfg.to_dict(),
                      preset=p.name if p else None, config=None if cfg_path is None else str(cfg_path),
                      config_sha256=cfg_sha)


# ---------------------------------------------------------------------------------------------
# Requests

@dataclass(frozen=True)
class BigGANRequest:
    """Every setting that changes the images of a BigGAN-deep run (never batch size or device).

    ``classes``: allowed labels (None = all), one drawn uniformly per sample. Has the request
    interface the harness and the sweep use (``family``, ``base_settings``, ``for_device``,
    ``to_dict``, ``upsampler`` None).
    """

    model: BigGANSpec
    num_samples: int
    truncation: float = DEFAULT_TRUNCATION
    seed: int = 0
    classes: tuple[int, ...] | None = None
    compute_chunk: int = COMPUTE_CHUNK

    family = FAMILY
    upsampler = None  # no cascade stage: the store is the run directory itself

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def base_settings(self) -> dict[str, Any]:
        """Identity of the store (what `manifest.json` compares on resume)."""
        return {"family": FAMILY, "model": self.model.settings(), "truncation": self.truncation,
                "num_samples": self.num_samples, "seed": self.seed,
                "classes": list(self.classes) if self.classes is not None else None,
                "compute_chunk": self.compute_chunk}

    def for_device(self, device: torch.device) -> "BigGANRequest":
        """Nothing depends on the device (float32 everywhere)."""
        return self

    def with_truncation(self, truncation: float, option: str = "--truncations") -> "BigGANRequest":
        return dataclasses.replace(self, truncation=check_truncation(truncation, option))

    def to_dict(self) -> dict[str, Any]:
        """Everything, paths included (for --dry-run and the manifest record)."""
        return {"family": FAMILY, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class BigGANArgs:
    """The options of `evalkit sample` for a BigGAN-deep generator, as given."""

    num_samples: int | None = None
    preset: str | None = None
    checkpoint: str | None = None
    config: str | None = None
    truncation: float | None = None
    seed: int = 0
    classes: str | None = None
    compute_chunk: int = COMPUTE_CHUNK

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], **overrides: Any) -> "BigGANArgs":
        """The entries of `kwargs` (e.g. click's) that name fields of this class, then `overrides`."""
        return _from_kwargs(cls, kwargs, overrides)


def make_biggan_request(args: BigGANArgs) -> BigGANRequest:
    """Validate `args`, resolve and hash the weights and config (`biggan_spec`).

    Raises ConfigError / CheckpointError naming the option: truncation outside (0, 1], classes
    outside the generator's, a config that does not fit the preset, missing files.
    """
    a = args
    if a.num_samples is None or int(a.num_samples) <= 0:
        raise ConfigError(f"--num-samples must be a positive integer, got {a.num_samples}")
    truncation = check_truncation(DEFAULT_TRUNCATION if a.truncation is None else a.truncation)
    model = biggan_spec(a.preset, a.checkpoint, a.config)
    return BigGANRequest(model=model, num_samples=int(a.num_samples), truncation=truncation, seed=int(a.seed),
                         classes=parse_classes(a.classes, model.num_classes),
                         compute_chunk=_check_chunk(a.compute_chunk))


# ---------------------------------------------------------------------------------------------
# The generator

def load_generator(spec: BigGANSpec, device: torch.device) -> LoadedBigGAN:
    """Load `spec`'s weights onto `device` (checked against its config and resolution).

    WeightsError when they do not fit; CheckpointError when unreadable, pickled code, or changed
    since the request hashed them.
    """
    loaded = load_biggan(spec.checkpoint, spec.config, expected_resolution=spec.image_size, device=device)
    if loaded.sha256 != spec.checkpoint_sha256:
        raise CheckpointError(f"{spec.checkpoint} changed since the run was configured (sha256 "
                              f"{loaded.sha256[:12]}… != {spec.checkpoint_sha256[:12]}…)")
    return loaded


class BigGANSampler:
    """`Generator` of a `BigGANRequest`: the store of `evalkit sample --preset biggan-deep-*`."""

    kind = "sample"
    family = FAMILY
    desc = "sampling"
    has_labels = True

    def __init__(self, request: BigGANRequest):
        self.request = request
        self.num_samples = request.num_samples
        self.image_size = request.image_size
        self._net: FixedChunk | None = None

    def settings(self) -> dict[str, Any]:
        return self.request.base_settings()

    def provenance(self) -> dict[str, Any]:
        return self.request.to_dict()

    def prepare(self, ctx: Context) -> None:
        self._net = FixedChunk(load_generator(self.request.model, ctx.device).module, self.request.compute_chunk)

    @torch.no_grad()
    def make_batch(self, indices: range, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        if self._net is None:
            self.prepare(ctx)
        r, m = self.request, self.request.model
        z, labels = biggan_latents(r.seed, indices, r.truncation, r.classes, num_classes=m.num_classes, dim_z=m.z_dim)
        images = self._net(z.to(ctx.device), labels.to(ctx.device), r.truncation)
        return samples_to_uint8(images), labels.numpy()
