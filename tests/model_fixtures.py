"""Reference flags of the fixture networks (tests/fixtures/*_forward.json), in evalkit's flag namespace."""

from __future__ import annotations

import numpy as np
import torch

from conftest import load_fixture, load_weights

UNET_COND_FLAGS = dict(load_fixture("unet_cond_forward")[0]["builder_kwargs"])
UNET_NEWORDER_FLAGS = dict(load_fixture("unet_cond_neworder_forward")[0]["builder_kwargs"])
UNET_UNCOND_FLAGS = dict(load_fixture("unet_uncond_forward")[0]["builder_kwargs"])
# The super-res and classifier fixtures were built from their classes directly; these flags resolve to
# the same constructor arguments (checked in test_flags.py).
SUPERRES_FLAGS = dict(large_size=32, small_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1",
                      attention_resolutions="16", num_heads=4, class_cond=True, learn_sigma=True,
                      use_scale_shift_norm=True, resblock_updown=True)
CLASSIFIER_FLAGS = dict(image_size=32, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2,2",
                        classifier_attention_resolutions="16,8", classifier_num_head_channels=16)


def torch_weights(name: str) -> dict[str, torch.Tensor]:
    """A fixture weights file as a state dict of float32 tensors."""
    return {k: torch.from_numpy(np.asarray(v)) for k, v in load_weights(name).items()}


def tensors(arrays: dict[str, np.ndarray], *names: str) -> list[torch.Tensor]:
    return [torch.from_numpy(arrays[n]) for n in names]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with random values (the reference zero-initialises output layers, which
    would make a random-weight model's output constant and its tests unable to fail)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            else:
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
    return model
