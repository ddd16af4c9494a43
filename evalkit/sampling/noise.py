"""Per-sample randomness: sample i draws everything from its own CPU generator (seed, i).

Draws are made on the CPU and then moved to the compute device, so a seed means the same labels,
x_T and step noise on every device (CUDA generators would give other numbers), and a batch stacks
per-sample draws, so nothing depends on batch size, process count or resume point.
"""

from __future__ import annotations

import torch

from evalkit.runtime import sample_generator
from evalkit.sampling.defaults import NUM_CLASSES

CPU = torch.device("cpu")


class SampleNoise:
    """Per-sample CPU generators of a batch, ``(seed, i)`` for each index i; tensors go to `device`.

    Draw order per sample (the reference's order): label, x_T, then one noise tensor per step.
    """

    def __init__(self, seed: int, indices: range, device: torch.device = CPU):
        self.device = device
        self.gens = [sample_generator(seed, i, CPU) for i in indices]

    def labels(self, classes: tuple[int, ...] | None, num_classes: int = NUM_CLASSES) -> torch.Tensor:
        """int64 [B] on the device: one label per sample, uniform over `classes` (None = all `num_classes`)."""
        k = num_classes if classes is None else len(classes)
        picks = [int(torch.randint(0, k, (1,), generator=g, device=CPU)) for g in self.gens]
        labels = picks if classes is None else [classes[j] for j in picks]
        return torch.tensor(labels, dtype=torch.int64).to(self.device)

    def randn(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """float32 [B, *shape] on the device: each sample draws its own `shape` tensor (one transfer)."""
        draws = torch.stack([torch.randn(tuple(shape), generator=g, device=CPU, dtype=torch.float32)
                             for g in self.gens])
        return draws.to(self.device)

    def step_noise(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """The sampler's noise callable: per-sample draws stacked like `like` [B, C, H, W]."""
        return self.randn(like.shape[1:]).to(like.dtype)
