"""A tiny deterministic feature extractor for scoring tests (no Inception weights needed).

Importing this module registers ``tiny-test`` (and ``tiny-test-alt``, the same network with other
weights, so its identity and numbers differ). Subprocesses load it with
``EVALKIT_PLUGINS=tiny_extractor`` and ``PYTHONPATH=tests``.

The network: resize to 16×16 (bilinear) → conv(3→8, 3×3) → ReLU → conv(8→16, 3×3, stride 2) → ReLU;
``pool`` = global mean of the 16 channels (16-d); ``spatial`` = the first 2 channels of a 2×2 average
pool of the last map, flattened (h, w, c) (8-d); ``logits`` = 4 · linear(16→10) of the per-image standardised pool
vector (so the softmax differs between images and the IS is above 1). Weights come from a fixed
seed and are scaled so features differ clearly between images.
"""


from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from evalkit.features import extractor_names, register_extractor

CALLS: dict[str, int] = {}  # images seen per extractor name (counts real extraction work)


class TinyNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim > 1 else 0.1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))  # [N, 16, 8, 8]
        pool = h.mean(dim=(2, 3))
        spatial = nn.functional.avg_pool2d(h[:, :2], 4).permute(0, 2, 3, 1).reshape(h.shape[0], -1)
        z = (pool - pool.mean(dim=1, keepdim=True)) / pool.std(dim=1, keepdim=True)  # per image: batch-independent
        return {"pool": pool, "spatial": spatial, "logits": 4.0 * self.fc(z)}


class TinyExtractor:
    feature_dims = {"pool": 16, "spatial": 8, "logits": 10}

    def __init__(self, name: str, seed: int, device="cpu") -> None:
        self.name = name
        self.device = torch.device(device)
        self.net = TinyNet(seed).eval().to(self.device)
        digest = hashlib.sha256()
        for tensor in self.net.state_dict().values():
            digest.update(tensor.cpu().numpy().tobytes())
        self.weights_sha256 = digest.hexdigest()

    def identity(self) -> dict:
        return {"name": self.name, "backend": "torch", "weights_sha256": self.weights_sha256, "resize": "bilinear16"}

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        CALLS[self.name] = CALLS.get(self.name, 0) + len(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        out = self.net((x - 128.0) / 64.0)
        return {k: v.cpu().numpy().astype(np.float32) for k, v in out.items()}


def _factory(name: str, seed: int):
    return lambda device="cpu", path=None, **_: TinyExtractor(name, seed, device)


for _name, _seed in (("tiny-test", 0), ("tiny-test-alt", 1)):
    if _name not in extractor_names():
        register_extractor(_name, _factory(_name, _seed), "tiny random conv net for evalkit's own tests")


def make_images(n: int, seed: int, res: int = 32, shift: int = 0) -> np.ndarray:
    """uint8 [n, res, res, 3] images: random 4×4 colour blocks (+`shift` brightness) plus pixel noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 200, (n, 4, 4, 3)) + shift
    up = low.repeat(res // 4, axis=1).repeat(res // 4, axis=2)
    return np.clip(up + rng.integers(0, 40, (n, res, res, 3)), 0, 255).astype(np.uint8)
