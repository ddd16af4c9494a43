"""The demo's trained digits models as preset data: a class-conditional ADM UNet and a noisy classifier
for the bundled 8×8 digits, both built by the same ``UNetModel`` / ``EncoderUNetModel`` code and flag
parser as the released guided-diffusion checkpoints (openai/guided-diffusion at
``evalkit.REFERENCE_COMMIT``), with weights committed under ``evalkit/data/``.

The two presets (``digits8_diffusion``, ``digits8_classifier``) are registered in ``evalkit.presets``.
``load_digits_model`` checks the bundled file's sha256 and loads it strictly; ``digits_request`` is
the guided sampling request the demo sweeps.
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


def digits_request(guidance_scale: float, num_samples: int, seed: int = 0, *, timestep_respacing: str | None = None,
                   compute_chunk: int | None = None, weights_dir: str | Path | None = None):
    """The `evalkit.sampling.request.SampleRequest` of the digits UNet guided by the digits classifier.

    Sample i draws its label (uniform over the 10 classes), x_T and step noise from the generator
    (seed, i); scale 0 samples the UNet alone (no classifier, the labels still drawn). Sample it with
    `evalkit.sampling.run.run_sampling`, or around loaded networks with `evalkit.sampling.adm.adm_batches`.
    ``weights_dir``: folder with the two ``.pt`` files instead of the bundled ones.
    """
    from evalkit.sampling.defaults import COMPUTE_CHUNK
    from evalkit.sampling.request import SampleArgs, make_request

    unet, clf = DIGITS_PRESETS
    paths = [bundled_weights_path(p) if weights_dir is None else Path(weights_dir) / p.weights for p in (unet, clf)]
    guided = dict(classifier=str(paths[1]), classifier_preset=clf.name, classifier_scale=float(guidance_scale))
    return make_request(SampleArgs(checkpoint=str(paths[0]), preset=unet.name, num_samples=num_samples, seed=seed,
                                   timestep_respacing=timestep_respacing,
                                   compute_chunk=compute_chunk or COMPUTE_CHUNK, **(guided if guidance_scale else {})))
