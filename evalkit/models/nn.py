"""Building blocks of the ADM networks: float32 GroupNorm, timestep embedding, QKV attention.

Reference: openai/guided-diffusion commit 22e0df8183507e13a7813f8d38d51b072ca1e67c
(``guided_diffusion/nn.py``, ``guided_diffusion/unet.py``, ``guided_diffusion/fp16_util.py``);
behaviour as described in ``spec/sampling.md`` §2. Written from the spec, not copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch: CPU "sdpa" falls back to the einsum formulation
    SDPBackend = sdpa_kernel = None

#: Attention backends, all through the same head split:
#: ``"auto"`` (default): per device, the fastest kernel that keeps the reference's outputs: ``"einsum"`` on
#: CPU (the reference's own arithmetic, so its outputs are reproduced bit for bit; also faster there than
#: SDPA's unfused math kernel), ``"sdpa"`` on every other device (torch's fused kernels).
#: ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``; on CUDA torch picks its fused kernels; on
#: CPU it is held to the unfused math kernel (same formula; its different product order moves outputs by
#: ~1e-7 relative).
#: ``"sdpa_fused"``: SDPA with every kernel allowed on every device (~1e-7 relative rounding differences).
#: ``"einsum"``: the reference's two-einsum formulation, q and k each scaled by ch^-1/4 before the product.
ATTENTION_BACKENDS = ("auto", "sdpa", "sdpa_fused", "einsum")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5, affine) computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class TempSiLU(nn.SiLU):
    """SiLU for inputs that are temporaries of the enclosing block: outside autograd (``torch.no_grad``,
    inference mode) it overwrites its input, which saves an allocation per call and gives the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


def normalization(channels: int) -> GroupNorm32:
    """The one normalisation layer ADM uses everywhere: GroupNorm with 32 groups."""
    return GroupNorm32(32, channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding, cosine half first.

    Args:
        timesteps: [N] int64 or float timesteps (fractional values allowed).
        dim: embedding width; an odd width gets a trailing zero column.
    Returns:
        [N, dim] float32 tensor ``[cos(t * f_j), sin(t * f_j)]`` with ``f_j = exp(-ln(max_period) j / (dim//2))``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def resolve_attention_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend that ``backend`` runs on ``device``: ``"auto"`` is ``"einsum"`` on CPU and
    ``"sdpa"`` elsewhere; the others are returned unchanged. Unknown names raise ValueError."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "einsum" if torch.device(device).type == "cpu" else "sdpa"
    return backend


def _einsum_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k) v over [B*heads, ch, T] tensors whose q and k are already scaled by ch^-1/4;
    softmax in float32, weights cast back to the input dtype (the reference's arithmetic)."""
    weight = torch.einsum("bct,bcs->bts", q, k)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


def _einsum_attention(qkv: torch.Tensor, n_heads: int, new_order: bool) -> torch.Tensor:
    """The einsum backend on a fused [B, 3*H*C, T] tensor → [B, H*C, T].

    q and k are scaled by ch^-1/4 each before their product (more stable in float16 than dividing the
    logits). In the new order the scale is applied before the head split, so the split of the (then
    contiguous) products is a view and only v is copied, as in the reference.
    """
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    if new_order:
        q, k, v = qkv.chunk(3, dim=1)
        q, k = ((t * scale).view(bs * n_heads, ch, length) for t in (q, k))
        v = v.reshape(bs * n_heads, ch, length)
    else:
        q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
        q, k = q * scale, k * scale
    return _einsum_core(q, k, v).reshape(bs, -1, length)


def _sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, math_only: bool) -> torch.Tensor:
    """SDPA over [B*heads, ch, T] tensors; returns [B*heads, ch, T] in q's dtype.

    logits = q·k / sqrt(ch), softmax over keys. SDPA gets contiguous [B, heads, T, ch] tensors (a
    non-contiguous or 3-D input makes torch fall back to its unfused math path) and float32 ones when the
    torso runs in float16: the reference's fp16 path rounds q, k, the logits and the weights to fp16, fp32
    SDPA is at least as accurate and softmax is fp32 in both. ``math_only`` holds torch to its unfused math
    kernel. The result is cast back to the input dtype.
    """
    bh, ch, length = q.shape
    dtype = q.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def heads_last(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(bh // n_heads, n_heads, ch, length).transpose(-1, -2).to(work)
        return t if math_only else t.contiguous()  # fused kernels need contiguous inputs; math does not

    args = (heads_last(q), heads_last(k), heads_last(v))
    if math_only:
        if sdpa_kernel is None:
            scale = 1.0 / math.sqrt(math.sqrt(ch))
            return _einsum_core(q * scale, k * scale, v)
        with sdpa_kernel([SDPBackend.MATH]):
            out = F.scaled_dot_product_attention(*args, scale=1.0 / math.sqrt(ch))
    else:
        out = F.scaled_dot_product_attention(*args, scale=1.0 / math.sqrt(ch))
    return out.transpose(-1, -2).reshape(bh, ch, length).to(dtype)


class QKVAttention(nn.Module):
    """Multi-head attention on a fused qkv tensor [B, 3*H*C, T] → [B, H*C, T].

    ``new_order=False`` (legacy): the 3C channels are grouped per head (head 0's q, k, v, then head 1's…).
    ``new_order=True``: q-block, k-block, v-block, heads inside each. ``backend``: one of
    ``ATTENTION_BACKENDS`` (default ``"auto"``: the fastest kernel that keeps the reference's outputs on the
    input's device).
    """

    def __init__(self, n_heads: int, new_order: bool = False, backend: str = "auto"):
        super().__init__()
        self.n_heads = n_heads
        self.new_order = new_order
        self.backend = backend

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        assert width % (3 * self.n_heads) == 0, (width, self.n_heads)
        backend = resolve_attention_backend(self.backend, qkv.device)
        if backend == "einsum":
            return _einsum_attention(qkv, self.n_heads, self.new_order)
        ch = width // (3 * self.n_heads)
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
            q, k, v = (t.reshape(bs * self.n_heads, ch, length) for t in (q, k, v))
        else:
            q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        math_only = backend == "sdpa" and qkv.device.type == "cpu"
        return _sdpa_attention(q, k, v, self.n_heads, math_only).reshape(bs, -1, length)


def set_attention_backend(module: nn.Module, backend: str) -> nn.Module:
    """Switch every QKVAttention inside ``module`` to ``backend`` (one of ``ATTENTION_BACKENDS``); returns ``module``."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    for m in module.modules():
        if isinstance(m, QKVAttention):
            m.backend = backend
    return module


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (the reference's initialisation of output layers); returns it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def convert_convs_to_fp16(module: nn.Module) -> None:
    """Cast the weights and biases of every Conv1d/Conv2d/Conv3d inside ``module`` to float16."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.weight.data = m.weight.data.half()
            if m.bias is not None:
                m.bias.data = m.bias.data.half()


def convert_convs_to_fp32(module: nn.Module) -> None:
    """Undo :func:`convert_convs_to_fp16`."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.weight.data = m.weight.data.float()
            if m.bias is not None:
                m.bias.data = m.bias.data.float()
