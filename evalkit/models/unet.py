"""ADM UNet (the guided-diffusion denoiser) and the super-resolution UNet (ADM-U).

Reference: openai/guided-diffusion commit 22e0df8183507e13a7813f8d38d51b072ca1e67c
(``guided_diffusion/unet.py``: UNetModel, SuperResModel, ResBlock, AttentionBlock, Upsample,
Downsample). Implemented from ``spec/sampling.md`` §2–§3; module names and order reproduce the
reference state-dict keys exactly so released checkpoints load strictly.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.errors import ConfigError
from evalkit.models.nn import (QKVAttention, TempSiLU, convert_convs_to_fp16, convert_convs_to_fp32, normalization,
                              timestep_embedding, zero_module)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """nn.Sequential that passes ``emb`` to children that are TimestepBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then an optional 3×3 conv (state-dict name ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """3×3 stride-2 conv (``op``) or, without conv, 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            assert self.channels == self.out_channels
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning (additive or scale-shift / AdaGN), optional up/down."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), TempSiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), TempSiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        # The skip path needs a 1×1 conv only when the channel count changes (no parameters otherwise).
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else nn.Conv2d(channels, self.out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Outside autograd the elementwise steps overwrite the block's own temporaries (same values, fewer
        # allocations); with autograd they allocate, as the backward pass needs their inputs.
        inplace = not torch.is_grad_enabled()
        if self.updown:
            # Resample between SiLU and the conv, and resample the skip input the same way.
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h)
            h = h.mul_(1 + scale).add_(shift) if inplace else h * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h.add_(emb_out) if inplace else h + emb_out)
        skip = self.skip_connection(x)
        return h.add_(skip) if inplace else skip + h  # float addition commutes: same values either way


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: GN → qkv 1×1 conv → attention → proj_out, residual."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ConfigError(f"num_head_channels {num_head_channels} does not divide the {channels} channels "
                                  f"of an attention block")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ConfigError(f"num_heads {self.num_heads} does not divide the {channels} channels of an attention block")
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads, new_order=use_new_attention_order)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        h = h.add_(x) if not torch.is_grad_enabled() else x + h  # the same sum; in place outside autograd
        return h.reshape(b, c, *spatial)


def _check_labels(y: torch.Tensor | None, num_classes: int | None, batch: int) -> None:
    """Raise ConfigError unless y is given iff the model is class-conditional, shape [N], in range."""
    if num_classes is None:
        if y is not None:
            raise ConfigError("class labels y were given to a class-unconditional model "
                              "(class_cond False); call it without y")
        return
    if y is None:
        raise ConfigError(f"this model is class-conditional ({num_classes} classes) but no labels y were given")
    if y.shape != (batch,):
        raise ConfigError(f"labels y must have shape [{batch}] (one per image), got {list(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ConfigError(f"labels y must be an integer tensor, got {y.dtype}")
    if batch and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(f"labels y must lie in [0, {num_classes}), got min {int(y.min())} max {int(y.max())}")


class UNetModel(nn.Module):
    """The ADM UNet with timestep (and optional class) conditioning.

    Constructor arguments mirror the reference class (``attention_resolutions`` are downsample
    factors, e.g. (2, 4, 8)). Forward: ``model(x [N, C_in, H, W] float, timesteps [N] int64 or float,
    y [N] int64 | None) → [N, out_channels, H, W]`` in x's dtype.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 num_classes: int | None = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if dims != 2:
            raise ConfigError(f"only 2-D models are supported (dims=2), got dims={dims}")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.use_fp16 = False
        self.dtype = torch.float32
        attn = set(self.attention_resolutions)

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out,
                            use_scale_shift_norm=use_scale_shift_norm, **kw)

        def att(ch, heads):
            return AttentionBlock(ch, num_heads=heads, num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), TempSiLU(), nn.Linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        # Down path: every block output is pushed to the skip stack.
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attn:
                    layers.append(att(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res(ch, ch), att(ch, num_heads), res(ch, ch))

        # Up path: one more res block per level, each eating one skip (LIFO).
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = skip_chans.pop()
                layers = [res(ch + ich, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attn:
                    layers.append(att(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), TempSiLU(),
                                 zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)))
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Cast only the torso convs (input/middle/output blocks) to float16, as the reference does."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            convert_convs_to_fp16(part)
        self.use_fp16, self.dtype = True, torch.float16

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            convert_convs_to_fp32(part)
        self.use_fp16, self.dtype = False, torch.float32

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(y, self.num_classes, x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x.to(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


class SuperResModel(UNetModel):
    """UNet conditioned on a low-resolution image: ``in_channels`` is doubled internally.

    Forward: ``model(x [N, C, H, W], timesteps, low_res=[N, C, h, w] in [-1, 1], y=...)``; low_res is
    resized to H×W (bilinear, align_corners False, no antialias) and concatenated after x.
    """

    def __init__(self, image_size: int, in_channels: int, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, low_res: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if low_res is None:
            raise ConfigError("the super-resolution model needs low_res (the [N, 3, h, w] image to upsample)")
        if low_res.ndim != 4 or low_res.shape[0] != x.shape[0] or low_res.shape[1] * 2 != self.in_channels:
            raise ConfigError(f"low_res must have shape [{x.shape[0]}, {self.in_channels // 2}, h, w], "
                              f"got {list(low_res.shape)}")
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear", align_corners=False)
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)
