"""The demo's trained digits models as preset data: a class-conditional ADM UNet and a noisy classifier
for the bundled 8×8 digits, both built by the same ``UNetModel`` / ``EncoderUNetModel`` code and flag
parser as the released guided-diffusion checkpoints (openai/guided-diffusion commit
22e0df8183507e13a7813f8d38d51b072ca1e67c), with weights committed under ``evalkit/data/``.

The two presets (``digits8_diffusion``, ``digits8_classifier``) are registered in ``evalkit.presets``. ``load_digits_model`` checks the bundled file's sha256 and loads it strictly.
Reproduce the weights with ``python scripts/train_digits.py all`` (about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from evalkit.errors import WeightsError
from evalkit.presets import DIGITS_CLASSIFIER_FLAGS, DIGITS_DIFFUSION_FLAGS, DIGITS_PRESETS, Preset, get_preset

# Architecture and provenance live in the one preset registry (evalkit/presets.py).
DIFFUSION_FLAGS = DIGITS_DIFFUSION_FLAGS
CLASSIFIER_FLAGS = DIGITS_CLASSIFIER_FLAGS
DIFFUSION_WEIGHTS = DIGITS_PRESETS[0].weights
CLASSIFIER_WEIGHTS = DIGITS_PRESETS[1].weights
DIFFUSION_SHA256 = DIGITS_PRESETS[0].sha256
CLASSIFIER_SHA256 = DIGITS_PRESETS[1].sha256

#: Sampling defaults for the demo: ancestral sampling over 50 respaced steps, guided by the noisy
#: classifier; DEFAULT_SCALES is the sweep that shows the fidelity/diversity tradeoff.
DEFAULT_RESPACING = DIGITS_PRESETS[0].timestep_respacing
DEFAULT_SCALE = DIGITS_PRESETS[0].classifier_scale
DEFAULT_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def bundled_weights_path(name: str | Preset) -> Path:
    """Path of the weights file bundled with evalkit for a digits preset (``Preset.weights``)."""
    preset = name if not isinstance(name, str) else _preset(name)
    if preset.weights is None:
        raise WeightsError(f"preset {preset.name} has no bundled weights file")
    return bundled_file(preset.weights, preset.name)


def bundled_file(filename: str, preset_name: str) -> Path:
    """Path of a file bundled with evalkit under evalkit/data/ for preset ``preset_name``; WeightsError if absent."""
    path = Path(str(resources.files("evalkit.data").joinpath(filename)))
    if not path.is_file():
        raise WeightsError(f"bundled weights {path} for preset {preset_name} are missing; reinstall evalkit or "
                           f"retrain them with `python scripts/train_digits.py all`")
    return path


def check_sha256(path: Path, expected: str, preset_name: str) -> None:
    """Raise WeightsError unless the file at ``path`` has sha256 ``expected`` (preset ``preset_name``'s)."""
    from evalkit.hashing import sha256_file

    found = sha256_file(path)
    if found != expected:
        raise WeightsError(f"{path}: sha256 {found} does not match the expected {expected} of preset "
                           f"{preset_name}; reinstall evalkit or retrain with scripts/train_digits.py")


def _preset(name: str) -> Preset:
    for p in DIGITS_PRESETS:
        if p.name == name:
            return p
    return get_preset(name)


def load_digits_model(name: str | Preset, device: str | torch.device = "cpu"):
    """Load a digits preset's bundled weights strictly, after checking their sha256.

    Returns ``evalkit.checkpoints.LoadedModel`` (``.module`` in eval mode on ``device``; ``.diffusion``
    the preset's ``create_diffusion`` settings with its default respacing).
    Raises WeightsError for a missing file or a sha256 mismatch, CheckpointError for wrong keys/shapes.
    """
    from evalkit.checkpoints import load_checkpoint

    preset = name if isinstance(name, Preset) else _preset(name)
    path = bundled_weights_path(preset)
    if preset.sha256 is not None:
        check_sha256(path, preset.sha256, preset.name)
    return load_checkpoint(path, preset=preset, device=device)


def sample_digits(unet: torch.nn.Module, diffusion, classifier: torch.nn.Module | None, guidance_scale: float,
                  num_samples: int, seed: int = 0, batch_size: int = 500, start: int = 0,
                  progress=None):
    """Class-conditional ancestral samples of the digits UNet, optionally classifier-guided.

    Sample i (``start <= i < start + num_samples``) draws its label (uniform over the 10 classes),
    x_T and per-step noise from ``runtime.sample_generator(seed, i)`` (``evalkit.generate.SampleNoise``
    order), so images do not depend on ``batch_size``. ``diffusion``: the respaced process
    (``create_diffusion(**loaded.diffusion)``); the same label guides the classifier.
    Returns (uint8 images [N, 8, 8, 3], int64 labels [N]) as numpy arrays.
    ``progress(n_done)`` is called after each batch.
    """
    import numpy as np

    from evalkit.diffusion import adm_denoiser, to_uint8
    from evalkit.generate import SampleNoise
    from evalkit.guidance import classifier_guidance
    from evalkit.samplers import sample

    device = next(unet.parameters()).device
    images, labels = [], []
    for s in range(start, start + num_samples, batch_size):
        idx = range(s, min(s + batch_size, start + num_samples))
        noise = SampleNoise(seed, idx, device)
        y = noise.labels(None, 10)
        x_T = noise.randn((3, 8, 8))
        denoiser = adm_denoiser(unet, diffusion, clip_denoised=True, model_kwargs={"y": y})
        if guidance_scale:
            denoiser = classifier_guidance(denoiser, diffusion, classifier, guidance_scale, y)
        x0 = sample(denoiser, diffusion, x_T, "ancestral", noise=noise.step_noise)
        images.append(to_uint8(x0))
        labels.append(y.cpu().numpy())
        if progress is not None:
            progress(idx.stop - start)
    return np.concatenate(images), np.concatenate(labels)
