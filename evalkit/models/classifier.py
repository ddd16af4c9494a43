"""The noisy-image classifier used for classifier guidance (EncoderUNetModel).

Reference: openai/guided-diffusion commit 22e0df8183507e13a7813f8d38d51b072ca1e67c
(``guided_diffusion/unet.py``: EncoderUNetModel, AttentionPool2d). Implemented from
``spec/sampling.md`` §4 with reference state-dict names (``out.2.positional_embedding``, ...).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from evalkit.errors import ConfigError
from evalkit.models.nn import (QKVAttention, convert_convs_to_fp16, convert_convs_to_fp32, normalization,
                              timestep_embedding, zero_module)
from evalkit.models.unet import AttentionBlock, Downsample, ResBlock, TimestepEmbedSequential

#: Output heads of the classifier; released checkpoints all use "attention".
POOL_TYPES = ("adaptive", "attention", "spatial", "spatial_v2")


class AttentionPool2d(nn.Module):
    """Attention pooling (CLIP-style): the mean token attends over all positions, new QKV order.

    Input [N, C, s, s] → output [N, output_dim] (token 0 after ``c_proj``).
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        if embed_dim % num_heads_channels:
            raise ConfigError(f"head width {num_heads_channels} does not divide the pooling width {embed_dim}")
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads, new_order=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        if x.shape[-1] + 1 != self.positional_embedding.shape[1]:
            raise ConfigError(f"attention pool expects {self.positional_embedding.shape[1] - 1} positions, got "
                              f"{x.shape[-1]} (input resolution differs from the classifier's image_size)")
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


class EncoderUNetModel(nn.Module):
    """The UNet's down path plus a pooling head: ``model(x [N, C, H, W], timesteps [N]) → logits [N, out_channels]``.

    ``pool``: "attention" (released weights), "adaptive", "spatial", "spatial_v2".
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), conv_resample: bool = True, dims: int = 2,
                 use_checkpoint: bool = False, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, pool: str = "adaptive"):
        super().__init__()
        if dims != 2:
            raise ConfigError(f"only 2-D models are supported (dims=2), got dims={dims}")
        if pool not in POOL_TYPES:
            raise ConfigError(f"classifier_pool must be one of {', '.join(POOL_TYPES)}, got {pool!r}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.pool = pool
        self.num_classes = out_channels
        self.use_fp16 = False
        self.dtype = torch.float32
        attn = set(self.attention_resolutions)
        time_embed_dim = model_channels * 4

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, time_embed_dim, dropout, out_channels=ch_out,
                            use_scale_shift_norm=use_scale_shift_norm, **kw)

        def att(ch):
            return AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        feature_size = ch
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attn:
                    layers.append(att(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                feature_size += ch
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)))
                feature_size += ch
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), att(ch), res(ch, ch))
        feature_size += ch

        # Output head.
        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(nn.Conv2d(ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ConfigError("classifier_pool attention needs num_head_channels (the reference uses 64)")
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:  # spatial_v2
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), normalization(2048), nn.SiLU(),
                                     nn.Linear(2048, out_channels))
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Cast only the torso convs (input and middle blocks) to float16; the head stays float32."""
        for part in (self.input_blocks, self.middle_block):
            convert_convs_to_fp16(part)
        self.use_fp16, self.dtype = True, torch.float16

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        for part in (self.input_blocks, self.middle_block):
            convert_convs_to_fp32(part)
        self.use_fp16, self.dtype = False, torch.float32

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        results = []
        h = x.to(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                results.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            results.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(results, dim=-1))
        return self.out(h.to(x.dtype))
