"""Batch-size independence of the networks' arithmetic: every call on chunks of one fixed shape."""

from __future__ import annotations

from typing import Any

import torch

from evalkit.sampling.defaults import COMPUTE_CHUNK


class FixedChunk(torch.nn.Module):
    """Run ``net(*args, **kwargs)`` on fixed-size chunks of the batch; outputs equal the unchunked
    call's up to the last bit, and do not depend on the batch size. Differentiable (guidance).

    Every tensor argument is split along its first (batch) dimension; other arguments (a BigGAN
    truncation, flags) are passed to each call unchanged. The first argument must be a tensor: its
    length is the batch size. The last chunk is padded with copies of its first row, whose outputs
    are dropped: kernels round identically for every position of a fixed shape, so each sample
    gets the same bits.
    """

    def __init__(self, net: torch.nn.Module, chunk: int = COMPUTE_CHUNK):
        super().__init__()
        self.net = net
        self.chunk = chunk

    @staticmethod
    def _pad(a: Any, s: int, e: int, pad: int) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        a = a[s:e]
        if pad == 0:
            return a
        return torch.cat([a, a[:1].detach().expand(pad, *a.shape[1:])])

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        n, outs = x.shape[0], []
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            pad = self.chunk - (e - s)
            chunk_args = [self._pad(a, s, e, pad) for a in (x, *args)]
            chunk_kwargs = {k: self._pad(v, s, e, pad) for k, v in kwargs.items()}
            outs.append(self.net(*chunk_args, **chunk_kwargs)[: e - s])
        return torch.cat(outs)
