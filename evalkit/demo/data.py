"""The bundled 8×8 handwritten digits (UCI optical digits, CC BY 4.0; see evalkit/data/DIGITS_README.md)."""

from __future__ import annotations

from importlib import resources

import numpy as np

NUM_CLASSES = 10
IMAGE_SIZE = 8
NUM_IMAGES = 1797


def _load() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("evalkit.data").joinpath("digits8.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as f:
            return f["counts"], f["labels"]


def digits_counts() -> tuple[np.ndarray, np.ndarray]:
    """Raw data: counts uint8 [1797, 8, 8] in 0..16 and labels int64 [1797] in 0..9."""
    return _load()


def counts_to_uint8(counts: np.ndarray) -> np.ndarray:
    """0..16 block counts → uint8 RGB images [N, 8, 8, 3]: round(count * 255 / 16), grey in 3 channels."""
    grey = np.rint(counts.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The whole data set as evalkit images: uint8 [1797, 8, 8, 3] NHWC and int64 labels [1797]."""
    counts, labels = _load()
    return counts_to_uint8(counts), labels.astype(np.int64)
