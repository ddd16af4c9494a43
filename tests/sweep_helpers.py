"""Shared set-up of the sweep and sample-and-score tests: tiny class-conditional UNet + classifier
checkpoints (`tiny_sampling`), a tiny 8×8 reference npz, the tiny test extractor (`tiny_extractor`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tiny_extractor import make_images
from tiny_sampling import CLASSIFIER_FLAGS, UNET_FLAGS, save_random

from evalkit.store import write_npz

NUM_SAMPLES = 20  # > 16 pool dims of the tiny extractor: well-conditioned covariances
REF_IMAGES = 24
FEATURES = "tiny-test"


def make_assets(root: Path) -> dict[str, Path]:
    """Write the checkpoints and the reference under `root`; return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    ref = root / "ref.npz"
    write_npz(ref, make_images(REF_IMAGES, 7, res=8, shift=20), np.arange(REF_IMAGES) % 10)
    return {
        "unet": save_random("diffusion", UNET_FLAGS, root / "unet.pt", seed=1),
        "classifier": save_random("classifier", CLASSIFIER_FLAGS, root / "clf.pt", seed=3, scale=0.3),
        "ref": ref,
    }


def model_args(assets: dict[str, Path], classifier: bool = True, steps: str | None = "2",
               batch_size: int = 10, num_samples: int = NUM_SAMPLES) -> list[str]:
    """`evalkit sample` options of the tiny models (CPU, no progress bars)."""
    args = ["--model-flags", UNET_FLAGS, "--checkpoint", str(assets["unet"]), "--num-samples", str(num_samples),
            "--batch-size", str(batch_size), "--device", "cpu", "--quiet"]
    if steps is not None:
        args += ["--timestep-respacing", steps]
    if classifier:
        args += ["--classifier", str(assets["classifier"]), "--classifier-flags", CLASSIFIER_FLAGS]
    return args


def score_args(assets: dict[str, Path]) -> list[str]:
    return ["--ref", str(assets["ref"]), "--features", FEATURES]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
