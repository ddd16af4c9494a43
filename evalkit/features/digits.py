"""A small clean-image classifier for the bundled 8×8 digits, used as the demo's feature network.

Registered as the extractor ``"digits"``. It plays the role Inception-v3 plays for ImageNet:

* ``pool``    [N, 64]  global-average-pooled features before the classifier (the penultimate layer),
                       used for the Fréchet distance and precision/recall;
* ``spatial`` [N, 64]  first 4 channels of the last 4×4 feature map, flattened in (h, w, c) order
                       (the same trick the ADM evaluator uses with ``mixed_6/conv``), for the spatial FD;
* ``logits``  [N, 10]  class logits; their softmax gives the digits Inception Score.

Its numbers are NOT Inception numbers, so they are labelled "FD (digits features)" etc., never "FID"
(``evalkit.metrics.keys.metric_label``).
The committed weights (``evalkit/data/digits8_features.pt``) are produced by
``python scripts/train_digits.py features`` and checked against ``WEIGHTS_SHA256`` on load.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evalkit.errors import BatchFormatError, WeightsError
from evalkit.features.registry import register_extractor
from evalkit.hashing import sha256_file
from evalkit.runtime import no_tf32, resolve_device

WEIGHTS_FILE = "digits8_features.pt"
WEIGHTS_SHA256 = "4f67fe03b284cf9d9b7e45c0faf75c34d8134344e8c96f3bdb9d0c92cf6afd4d"

SPATIAL_CHANNELS = 4


class DigitsNet(nn.Module):
    """conv(3→32) → conv(32→64) → avgpool 2 → conv(64→64) → [spatial] → global avg → [pool] → linear(64→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: float [N, 1, 8, 8] in [0, 1] → dict of pool/spatial/logits tensors."""
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = nn.functional.avg_pool2d(h, 2)
        h = torch.relu(self.conv3(h))
        spatial = h[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(h.shape[0], -1)
        pool = h.mean(dim=(2, 3))
        return {"pool": pool, "spatial": spatial, "logits": self.fc(pool)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]


def images_to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, 8, 8, 3] → float [N, 1, 8, 8] in [0, 1] (mean of the three channels)."""
    x = torch.as_tensor(np.asarray(images)).to(device)
    if x.ndim != 4 or x.shape[1:] != (8, 8, 3):
        raise BatchFormatError(f"the digits feature network takes 8×8×3 images; got an array of shape {tuple(x.shape)}")
    return x.float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2) / 255.0


class DigitsExtractor:
    name = "digits"
    feature_dims = {"pool": 64, "spatial": 4 * 4 * SPATIAL_CHANNELS, "logits": 10}

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        if path is None:
            with resources.as_file(resources.files("evalkit.data").joinpath(WEIGHTS_FILE)) as p:
                path = Path(p)
                self.weights_sha256 = sha256_file(path)
                state = torch.load(path, map_location="cpu", weights_only=True)
            if WEIGHTS_SHA256 is not None and self.weights_sha256 != WEIGHTS_SHA256:
                raise WeightsError(f"{WEIGHTS_FILE}: sha256 {self.weights_sha256} does not match the expected "
                                   f"{WEIGHTS_SHA256}; reinstall evalkit or retrain with scripts/train_digits.py")
        else:
            path = Path(path)
            if not path.is_file():
                raise WeightsError(f"digits feature weights {path} do not exist")
            self.weights_sha256 = sha256_file(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        self.net = DigitsNet()
        self.net.load_state_dict(state)
        self.net.eval().to(self.device)

    def identity(self) -> dict:
        return {"name": self.name, "backend": "torch", "weights_sha256": self.weights_sha256, "resize": "none"}

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with no_tf32():
            out = self.net.forward_features(images_to_input(images, self.device))
        return {k: v.float().cpu().numpy() for k, v in out.items()}


register_extractor("digits", lambda device="cpu", path=None, **_: DigitsExtractor(path=path, device=device),
                   "small CNN trained on the bundled 8×8 digits (evalkit demo); metrics are NOT Inception metrics")
