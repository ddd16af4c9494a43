"""Checkpoint loading: preset (or reference flags) + weights file → eval-mode module, sha256, and a
clear report when the weights belong to another architecture.

Follows the reference's loading rule (openai/guided-diffusion at ``evalkit.REFERENCE_COMMIT``, ``scripts/*_sample.py``:
plain state dict, strict keys, loaded on CPU, then ``convert_to_fp16`` when ``use_fp16``), but never
runs pickled code: ``torch.load(..., weights_only=True)`` and ``np.load(..., allow_pickle=False)`` only.
"""

from __future__ import annotations

import functools
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from evalkit.errors import CheckpointError, ConfigError
from evalkit.flags import KINDS, ParsedFlags, fp16_default, parse_flags
from evalkit.hashing import sha256_file
from evalkit.models import build_from_parsed
from evalkit.models.biggan import BigGANConfig, BigGANDeep, from_state_dict
from evalkit.presets import PRESETS, Preset, get_preset
from evalkit.runtime import resolve_device

_SHOW = 5  # keys listed per category in a mismatch report


@dataclass
class LoadedModel:
    """A loaded network and its provenance.

    ``module``: eval-mode network on the requested device; ``sha256``: hex digest of the file;
    ``preset``: preset name or None (flags given); ``flags``: resolved flag dict; ``diffusion``:
    ``create_diffusion`` keyword arguments (empty for classifiers); ``use_fp16``: torso in float16.
    """

    module: nn.Module
    sha256: str
    preset: str | None
    kind: str
    flags: dict[str, Any]
    diffusion: dict[str, Any]
    path: str
    use_fp16: bool = False
    sample: dict[str, Any] = field(default_factory=dict)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain state dict from a ``.pt``/``.pth`` (torch, weights only) or ``.npz`` file.

    Raises CheckpointError when the file is missing or unreadable, needs code to unpickle, or does
    not hold a flat mapping of names to tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                raw: Any = {k: torch.from_numpy(np.ascontiguousarray(f[k])) for k in f.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise CheckpointError(f"{path}: not a readable .npz state dict without pickled objects ({exc})") from None
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path}: refusing to load: the file needs code to unpickle ({first}). evalkit loads weights "
                f"only (torch.load weights_only=True); re-save it as a plain state dict "
                f"(torch.save(model.state_dict(), path)) in a trusted environment") from None
        except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in raw.items()):
        found = type(raw).__name__
        if isinstance(raw, Mapping):
            found += " with keys " + ", ".join(map(str, list(raw)[:_SHOW]))
        raise CheckpointError(f"{path}: expected a state dict (names → tensors), found a {found}")
    return dict(raw)


def _signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=64)
def _preset_signature(name: str, readme_flags: str, kind: str) -> dict[str, tuple[int, ...]]:
    # Keyed by flags too, so a re-registered preset of the same name is not served stale.
    return _signature(build_from_parsed(parse_flags(readme_flags, kind), device="meta", use_fp16=False))


def matching_presets(state: Mapping[str, torch.Tensor]) -> tuple[list[str], tuple[str, int, int] | None]:
    """Presets whose architecture has exactly these keys and shapes, and the closest one otherwise
    as ``(name, matching tensors, tensors in preset)`` (None when nothing overlaps)."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    exact, best = [], None
    for name, preset in sorted(PRESETS.items()):
        try:
            sig = _preset_signature(name, preset.readme_flags, preset.kind)
        except ConfigError:
            continue
        if sig == got:
            exact.append(name)
        else:
            same = sum(1 for k, s in got.items() if sig.get(k) == s)
            if same and (best is None or same > best[1]):
                best = (name, same, len(sig))
    return exact, best


def _mismatch_report(path: Path, tried: str, expected: Mapping[str, tuple[int, ...]],
                     state: Mapping[str, torch.Tensor]) -> str:
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shaped = [f"{k} (file {list(got[k])}, model {list(expected[k])})" for k in expected
              if k in got and got[k] != expected[k]]

    def part(label: str, items: list[str]) -> str:
        more = f", … ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
        return f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}"

    parts = [part(lbl, items) for lbl, items in (("missing", missing), ("unexpected", unexpected),
                                                  ("wrongly shaped", shaped)) if items]
    exact, best = matching_presets(state)
    if exact:
        hint = f"the file matches preset {' / '.join(exact)}; use --preset {exact[0]}"
    elif best:
        hint = f"no preset matches it; closest: {best[0]} ({best[1]} of {best[2]} tensors agree)"
    else:
        hint = "no preset matches it"
    return f"{path}: the weights do not fit {tried}: {'; '.join(parts)}. {hint}"


def load_checkpoint(path: str | os.PathLike, preset: str | Preset | None = None,
                    flags: str | Mapping[str, Any] | None = None, kind: str | None = None,
                    device: str | torch.device = "cpu", use_fp16: bool | None = None) -> LoadedModel:
    """Load a guided-diffusion checkpoint strictly into the architecture of ``preset`` or ``flags``.

    Args:
        path: ``.pt`` state dict (loaded with weights_only=True) or ``.npz`` of the same arrays.
        preset: preset name/object; ``flags``: reference flag string/dict instead (give at most one;
            with neither, the preset whose manifest matches the file is used).
        kind: "diffusion" | "classifier" | "upsampler" for ``flags`` (default: the preset's, else diffusion).
        device: where the module goes. use_fp16: torso in float16 as the reference's ``use_fp16``;
            None → the flags' value on CUDA and float32 elsewhere (fp16 convs are slow or missing on CPU).
    Returns:
        LoadedModel with the eval-mode module and the file's sha256.
    Raises:
        CheckpointError (unreadable, pickled code, architecture mismatch: missing/unexpected/misshaped
        keys and the preset that matches), ConfigError (bad preset/flags).
    """
    if preset is not None and flags is not None:
        raise ConfigError("give either a preset or flags for the checkpoint, not both")
    dev = resolve_device(device)
    path = Path(path)
    state = read_state_dict(path)
    preset_obj: Preset | None = None
    if preset is not None:
        preset_obj = get_preset(preset)
        if kind is not None and kind != preset_obj.kind:
            raise ConfigError(f"preset {preset_obj.name} is a {preset_obj.kind}, not a {kind}")
        parsed: ParsedFlags = parse_flags(preset_obj.readme_flags, preset_obj.kind)
        tried = f"preset {preset_obj.name}"
    elif flags is not None:
        kind = kind or "diffusion"
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        parsed = parse_flags(flags, kind)
        tried = f"the given {kind} flags"
    else:
        exact, _ = matching_presets(state)
        exact = [n for n in exact if kind is None or PRESETS[n].kind == kind]
        if not exact:
            raise CheckpointError(f"{path}: no preset has this architecture; pass a preset or the flags it was "
                                  f"trained with (known presets: {', '.join(sorted(PRESETS))})")
        preset_obj = PRESETS[exact[0]]
        parsed = parse_flags(preset_obj.readme_flags, preset_obj.kind)
        tried = f"preset {preset_obj.name}"

    # Build without allocating, compare names and shapes, then adopt the file's tensors as float32.
    model = build_from_parsed(parsed, device="meta", use_fp16=False)
    expected = _signature(model)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise CheckpointError(_mismatch_report(path, tried, expected, state))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(dev)
    half = fp16_default(parsed.net, parsed.kind, dev.type) if use_fp16 is None else bool(use_fp16)
    if half:
        model.convert_to_fp16()
    model.eval()
    diffusion = parsed.diffusion_settings()
    if preset_obj is not None:
        diffusion = preset_obj.diffusion_settings()
    return LoadedModel(module=model, sha256=sha256_file(path), preset=preset_obj.name if preset_obj else None,
                       kind=parsed.kind, flags=dict(parsed.net), diffusion=diffusion, path=str(path),
                       use_fp16=half, sample=dict(parsed.sample))


# ---------------------------------------------------------------------------------------------
# BigGAN-deep (pytorch-pretrained-biggan's converted TF-Hub weights)

@dataclass
class LoadedBigGAN:
    """A loaded BigGAN-deep generator (eval mode, spectral norms folded) and its provenance.

    ``config_path``/``config_sha256`` are None when the config was the canonical one of
    ``expected_resolution`` (no file found beside the weights).
    """

    module: BigGANDeep
    config: BigGANConfig
    sha256: str
    path: str
    config_path: str | None
    config_sha256: str | None


def biggan_config_beside(weights_path: str | os.PathLike) -> Path:
    """Where a BigGAN config lives beside its weights: ``X-pytorch_model.bin`` -> ``X-config.json``
    (the released names), ``pytorch_model.bin`` -> ``config.json`` (a model folder), else ``X.json``."""
    path = Path(weights_path)
    if path.name.endswith("-pytorch_model.bin"):
        return path.with_name(path.name[: -len("pytorch_model.bin")] + "config.json")
    if path.name == "pytorch_model.bin":
        return path.with_name("config.json")
    return path.with_suffix(".json")


def load_biggan(weights_path: str | os.PathLike, config_path: str | os.PathLike | None = None,
                expected_resolution: int | None = None, device: str | torch.device = "cpu") -> LoadedBigGAN:
    """Load a BigGAN-deep state dict (``biggan-deep-<res>-pytorch_model.bin``, weights_only=True).

    Args:
        weights_path: the state dict. config_path: its config JSON (default: the file beside it, see
            :func:`biggan_config_beside`; when absent and ``expected_resolution`` is given, the canonical
            BigGAN-deep config of that resolution).
        expected_resolution: the preset's resolution; a config or weights of another one is refused.
        device: where the module goes.
    Raises:
        CheckpointError (unreadable, needs code to unpickle), WeightsError (keys/shapes do not fit the
        config, another resolution), ConfigError (bad config file).
    """
    dev = resolve_device(device)
    path = Path(weights_path)
    state = read_state_dict(path)
    cfg_path = Path(config_path) if config_path is not None else biggan_config_beside(path)
    if config_path is not None or cfg_path.is_file():
        config = BigGANConfig.from_json(cfg_path)
        cfg_source, cfg_sha = str(cfg_path), sha256_file(cfg_path)
    elif expected_resolution is not None:
        config = BigGANConfig.deep(int(expected_resolution))
        cfg_path, cfg_source, cfg_sha = None, f"the canonical BigGAN-deep-{expected_resolution} config", None
    else:
        raise ConfigError(f"{path}: no BigGAN config given and none beside it ({cfg_path}); pass the "
                          f"config JSON that came with the weights")
    model = from_state_dict(state, config, dev, weights=str(path), config_source=cfg_source,
                            expected_resolution=expected_resolution)
    return LoadedBigGAN(module=model, config=config, sha256=sha256_file(path), path=str(path),
                        config_path=None if cfg_path is None else str(cfg_path), config_sha256=cfg_sha)
