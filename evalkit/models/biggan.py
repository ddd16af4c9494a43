"""BigGAN-deep generator (Brock, Donahue & Simonyan 2019) that runs the weight files researchers use:
pytorch-pretrained-biggan 0.1.1's conversions of the TF-Hub modules ``deepmind/biggan-deep-{128,256,512}/1``
(``biggan-deep-<res>-pytorch_model.bin`` + ``biggan-deep-<res>-config.json``).

Our own implementation. What carries over from those files is their state-dict layout (module names,
shapes) and the arithmetic they were converted for, measured against pytorch-pretrained-biggan 0.1.1
in eval mode (``tests/test_biggan.py``):

* Conditioning vector ``c = [z, E y]``: ``E`` is a bias-free linear map of a one-hot (or any) class
  vector ``y`` (``embeddings.weight`` [z_dim, num_classes]); ``c`` has ``2 * z_dim`` entries and feeds
  the first linear layer and every conditional batch norm (BigGAN-deep does not split z).
* Spectral normalisation evaluated from the stored vectors: ``W / sigma`` with
  ``sigma = u . (W_mat v)`` (``weight_orig``, ``weight_u``, ``weight_v``; ``W_mat`` is W flattened to
  [out, -1]), no power iteration. Sigma is folded into the weights once (``fold``), not per forward.
* Batch-norm statistics depend on the truncation: ``running_means``/``running_vars`` hold ``n_stats``
  rows for truncations ``k / (n_stats - 1)``; for truncation t, ``f, k = modf(t * 1.0 / step)`` with
  ``step = 1 / (n_stats - 1)`` and the statistics are ``row[k] * f + row[k + 1] * (1 - f)`` (``row[k]``
  when f == 0). Note the weights: the fraction goes to the lower row, not the upper one (t = 0.375:
  0.75 * row 18 + 0.25 * row 19), and ``t / step`` is a float64 division (0.1, 0.2, ..., 1.0 give
  exact integers, so those truncations use one row; 0.37 gives 18.499999999999996). This is the
  converted modules' rule and it is reproduced as is.
* Conditional batch norm ``(x - mean) / sqrt(var + eps) * (1 + scale(c)) + offset(c)`` with
  ``scale``/``offset`` spectral-normalised linear maps of c, eps = ``config.eps`` (1e-4); the last
  batch norm is unconditional (``weight``, ``bias``).
* Blocks: bottleneck residual blocks (BN-ReLU-1x1, BN-ReLU-[up]-3x3, BN-ReLU-3x3, BN-ReLU-1x1 with
  channels in/4), nearest-neighbour 2x upsampling, a skip that keeps the first ``out`` channels when
  the block halves them. Self-attention (theta/phi to C/8, g to C/2, phi and g max-pooled 2x2,
  ``x + gamma * o(g softmax(theta^T phi))``) sits before block ``attention_layer_position``
  (8: the first block at 64x64 in all three presets).
* ``gen_z`` output reshaped as NHWC [B, 4, 4, C] (the TF layout), a final 3x3 convolution with
  ``channel_width`` outputs of which the first 3 are the image, ``tanh``: output in [-1, 1].

How resolution maps to blocks: the generator starts at 4x4; each of ``log2(resolution / 4)`` stages
is a block at constant resolution followed by a block that upsamples 2x, so there are
``2 * log2(resolution / 4)`` blocks. Channel widths are ``channel_width * m`` for the per-stage
multipliers ``m`` (``DEEP_CHANNEL_MULTIPLIERS`` for the presets; any list of ``stages + 1`` values
that halves or keeps the width at each step and ends at 1). See :meth:`BigGANConfig.deep`.

Latents: :func:`biggan_latents` draws sample i's label and z from ``sample_generator(seed, i)``.
Quantise outputs with ``evalkit.diffusion.samples_to_uint8``, as the ADM sampler does.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.errors import ConfigError, WeightsError
from evalkit.runtime import sample_generator

#: Channel multipliers per stage (4x4 first) of the TF-Hub BigGAN-deep modules.
DEEP_CHANNEL_MULTIPLIERS: Mapping[int, tuple[int, ...]] = {
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
    512: (16, 16, 8, 8, 4, 2, 1, 1),
}
TRUNCATED_NORMAL_BOUND = 2.0  # z entries are standard normal conditioned on |z| <= 2
_CONFIG_KEYS = ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "layers",
                "attention_layer_position", "eps", "n_stats")


# ---------------------------------------------------------------------------------------------
# Configuration

@dataclass(frozen=True)
class BigGANConfig:
    """Architecture of a BigGAN-deep generator, in the fields of pytorch-pretrained-biggan's config JSON.

    ``layers``: one ``(upsample, in_multiplier, out_multiplier)`` per block (channels are
    ``channel_width`` times the multipliers); ``attention_layer_position``: index of the block the
    self-attention layer precedes (None: no attention); ``n_stats``: rows of truncation-dependent
    batch-norm statistics; ``eps``: batch-norm epsilon (also the spectral-norm epsilon of training).
    """

    output_dim: int
    layers: tuple[tuple[bool, int, int], ...]
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    attention_layer_position: int | None = 8
    eps: float = 1e-4
    n_stats: int = 51

    def __post_init__(self) -> None:
        try:
            layers = tuple((bool(_exact(u, bool, "upsample flag")), _exact(a, int, "multiplier"),
                            _exact(b, int, "multiplier")) for u, a, b in self.layers)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"BigGAN config: layers must be [upsample, in, out] triples, got "
                              f"{self.layers!r} ({exc})") from None
        object.__setattr__(self, "layers", layers)
        for name in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "n_stats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BigGAN config: {name} must be a positive integer, got {value!r}")
        if not layers:
            raise ConfigError("BigGAN config: layers is empty; a generator needs at least one block")
        if self.class_embed_dim != self.z_dim:
            raise ConfigError(f"BigGAN config: class_embed_dim ({self.class_embed_dim}) must equal z_dim "
                              f"({self.z_dim}); BigGAN-deep embeds classes into z_dim entries")
        if self.n_stats < 2:
            raise ConfigError(f"BigGAN config: n_stats must be >= 2 (a grid of truncations), got {self.n_stats}")
        if not (isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool)
                and math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"BigGAN config: eps must be a positive number, got {self.eps!r}")
        ups = sum(u for u, _, _ in layers)
        if self.output_dim != 4 * 2 ** ups:
            raise ConfigError(f"BigGAN config: output_dim {self.output_dim} does not match its layers: "
                              f"{ups} upsampling blocks from 4x4 give {4 * 2 ** ups}")
        if self.channel_width < 3 or layers[-1][2] != 1:
            raise ConfigError(f"BigGAN config: the last block must end at channel_width channels (multiplier "
                              f"1, got {layers[-1][2]}) with channel_width >= 3 (got {self.channel_width})")
        for i, (_, a, b) in enumerate(layers):
            if i and a != layers[i - 1][2]:
                raise ConfigError(f"BigGAN config: block {i} takes multiplier {a} but block {i - 1} "
                                  f"gives {layers[i - 1][2]}")
            if b != a and 2 * b != a:
                raise ConfigError(f"BigGAN config: block {i} maps multiplier {a} to {b}; a block keeps or "
                                  f"halves its channels")
            if a * self.channel_width < 4:
                raise ConfigError(f"BigGAN config: block {i} has {a * self.channel_width} input channels; "
                                  f"the bottleneck needs at least 4")
        pos = self.attention_layer_position
        if pos is not None:
            if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < len(layers):
                raise ConfigError(f"BigGAN config: attention_layer_position must be None or a block index in "
                                  f"[0, {len(layers)}), got {pos!r}")
            if self.attention_channels % 8 or self.attention_resolution < 2:
                raise ConfigError(f"BigGAN config: self-attention at block {pos} needs channels divisible by 8 "
                                  f"and resolution >= 2, got {self.attention_channels} channels at "
                                  f"{self.attention_resolution}x{self.attention_resolution}")

    @property
    def resolution(self) -> int:
        """Output height and width in pixels."""
        return self.output_dim

    @property
    def attention_resolution(self) -> int | None:
        """Input resolution of the block self-attention precedes (None without attention)."""
        pos = self.attention_layer_position
        return None if pos is None else 4 * 2 ** sum(u for u, _, _ in self.layers[:pos])

    @property
    def attention_channels(self) -> int | None:
        pos = self.attention_layer_position
        return None if pos is None else self.channel_width * self.layers[pos][1]

    @classmethod
    def deep(cls, resolution: int, channel_width: int = 128, channel_multipliers: Sequence[int] | None = None,
             attention_resolution: int | None = 64, z_dim: int = 128, num_classes: int = 1000,
             n_stats: int = 51, eps: float = 1e-4) -> BigGANConfig:
        """The BigGAN-deep layout for ``resolution``: per stage one block at constant resolution and
        one that upsamples 2x, channels ``channel_width * channel_multipliers`` (default: the TF-Hub
        modules' for 128/256/512; needed for other resolutions), self-attention before the first block
        at ``attention_resolution`` (None: none). ``BigGANConfig.deep(128)`` is biggan-deep-128's config.
        """
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8 \
                or resolution & (resolution - 1):
            raise ConfigError(f"BigGAN-deep resolution must be a power of two >= 8, got {resolution!r}")
        stages = int(math.log2(resolution // 4))
        mults = tuple(channel_multipliers) if channel_multipliers is not None else DEEP_CHANNEL_MULTIPLIERS.get(resolution)
        if mults is None:
            raise ConfigError(f"BigGAN-deep {resolution}: give channel_multipliers ({stages + 1} values, 4x4 "
                              f"first); defaults exist for {', '.join(map(str, DEEP_CHANNEL_MULTIPLIERS))}")
        if len(mults) != stages + 1:
            raise ConfigError(f"BigGAN-deep {resolution}: expected {stages + 1} channel multipliers (4x4 to "
                              f"{resolution}x{resolution}), got {len(mults)}: {mults}")
        layers = []
        for k in range(stages):
            layers += [(False, mults[k], mults[k]), (True, mults[k], mults[k + 1])]
        if attention_resolution is None:
            pos = None
        else:
            if attention_resolution not in [4 * 2 ** k for k in range(stages)]:
                raise ConfigError(f"BigGAN-deep {resolution}: attention_resolution must be one of the block "
                                  f"input resolutions {[4 * 2 ** k for k in range(stages)]} or None, got "
                                  f"{attention_resolution!r}")
            pos = 2 * int(math.log2(attention_resolution // 4))
        return cls(output_dim=resolution, layers=tuple(layers), z_dim=z_dim, class_embed_dim=z_dim,
                   channel_width=channel_width, num_classes=num_classes, attention_layer_position=pos,
                   eps=eps, n_stats=n_stats)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "BigGAN config") -> BigGANConfig:
        """From the fields of a pytorch-pretrained-biggan config JSON (all nine keys required)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object with keys {', '.join(_CONFIG_KEYS)}, "
                              f"got {type(data).__name__}")
        missing = [k for k in _CONFIG_KEYS if k not in data]
        unknown = [k for k in data if k not in _CONFIG_KEYS]
        if missing or unknown:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                    ([f"unknown {', '.join(map(str, unknown))}"] if unknown else [])
            raise ConfigError(f"{source}: not a BigGAN-deep config ({'; '.join(parts)}); expected the keys "
                              f"{', '.join(_CONFIG_KEYS)}")
        try:
            layers = tuple(tuple(layer) for layer in data["layers"])
            return cls(**{**{k: data[k] for k in _CONFIG_KEYS}, "layers": layers})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {str(exc).removeprefix('BigGAN config: ')}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: layers must be a list of [upsample, in, out] ({exc})") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BigGANConfig:
        """Read ``biggan-deep-<res>-config.json`` (or any config of that format)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"BigGAN config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable BigGAN config JSON ({exc})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config JSON's fields (layers as lists, as pytorch-pretrained-biggan writes them)."""
        out = asdict(self)
        out["layers"] = [list(layer) for layer in self.layers]
        return out


def _exact(value: Any, kind: type, what: str) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} {value!r} is not a positive integer")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not true/false")
    return value


# ---------------------------------------------------------------------------------------------
# Layers

class _SpectralNormed(nn.Module):
    """Parameters of a spectral-normalised layer in the converted files' layout: ``weight_orig``,
    ``weight_u`` [out], ``weight_v`` [in * k * k] (and ``bias``). In eval mode the layer uses
    ``weight_orig / (u . W_mat v)``, folded once by :meth:`fold` (or computed per call when not
    folded); in training mode one power iteration updates u and v first, as in SN-GAN training."""

    def __init__(self, shape: tuple[int, ...], bias: bool, eps: float):
        super().__init__()
        self.eps = eps
        self.weight_orig = nn.Parameter(torch.empty(shape))
        self.register_buffer("weight_u", torch.randn(shape[0]))
        self.register_buffer("weight_v", torch.randn(math.prod(shape[1:])))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        self.register_buffer("folded", None, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.weight_orig.device.type != "meta":  # nothing to fill on the meta device (shapes only)
            nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
            self.weight_u.div_(self.weight_u.norm().clamp_min(self.eps))
            self.weight_v.div_(self.weight_v.norm().clamp_min(self.eps))

    def sn_weight(self) -> torch.Tensor:
        """The normalised weight for this call."""
        if self.folded is not None and not self.training:
            return self.folded
        mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        u, v = self.weight_u, self.weight_v
        if self.training:
            with torch.no_grad():
                v = F.normalize(torch.mv(mat.t(), u), dim=0, eps=self.eps, out=self.weight_v).clone()
                u = F.normalize(torch.mv(mat, v), dim=0, eps=self.eps, out=self.weight_u).clone()
        return self.weight_orig / torch.dot(u, torch.mv(mat, v))

    @torch.no_grad()
    def fold(self) -> None:
        """Store ``weight_orig / sigma`` from the current u, v (eval-mode forward uses it)."""
        was = self.training
        self.training = False
        self.folded = None
        self.folded = self.sn_weight().detach().clone()
        self.training = was

    def train(self, mode: bool = True) -> _SpectralNormed:
        if mode:
            self.folded = None  # weights will change: the folded copy would go stale
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.folded = None
        super()._load_from_state_dict(*args, **kwargs)


class SNConv2d(_SpectralNormed):
    """Spectral-normalised 2-D convolution (stride 1, 'same' padding for odd kernels)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True, eps: float = 1e-4):
        self.padding = kernel // 2
        super().__init__((c_out, c_in, kernel, kernel), bias, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.sn_weight(), self.bias, padding=self.padding)


class SNLinear(_SpectralNormed):
    """Spectral-normalised linear map."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True, eps: float = 1e-4):
        super().__init__((c_out, c_in), bias, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sn_weight(), self.bias)


def _interpolation(truncation: float, n_stats: int) -> tuple[int, float]:
    """(row k, weight f of row k) of the statistics for ``truncation``; row k + 1 gets 1 - f."""
    frac, whole = math.modf(truncation / (1.0 / (n_stats - 1)))
    return int(whole), frac


class TruncationBatchNorm(nn.Module):
    """Batch norm with statistics stored per truncation (``running_means``/``running_vars``
    [n_stats, C]). Conditional: gain ``1 + scale(c)`` and bias ``offset(c)`` from spectral-normalised
    linear maps of the conditioning vector; else learned ``weight``/``bias``. Eval mode uses the
    interpolated statistics (the module docstring gives the rule); training mode normalises by the
    batch's statistics and leaves the stored ones unchanged (fill them per truncation afterwards)."""

    def __init__(self, channels: int, cond_dim: int | None, n_stats: int, eps: float):
        super().__init__()
        self.eps = eps
        self.n_stats = n_stats
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        self.conditional = cond_dim is not None
        if self.conditional:
            self.scale = SNLinear(cond_dim, channels, bias=False, eps=eps)
            self.offset = SNLinear(cond_dim, channels, bias=False, eps=eps)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        self._stats: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def statistics(self, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / sqrt(var + eps)) [C] for ``truncation``; cached per value in eval mode."""
        cached = self._stats.get(truncation)
        if cached is not None and not self.training:
            return cached
        k, f = _interpolation(truncation, self.n_stats)
        if f != 0.0:
            mean = self.running_means[k] * f + self.running_means[k + 1] * (1 - f)
            var = self.running_vars[k] * f + self.running_vars[k + 1] * (1 - f)
        else:
            mean, var = self.running_means[k], self.running_vars[k]
        stats = (mean, torch.rsqrt(var + self.eps))
        if not self.training:
            self._stats[truncation] = stats
        return stats

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None,
                relu: bool = False) -> torch.Tensor:
        """[B, C, H, W] -> normalised [B, C, H, W] (followed by ReLU when ``relu``)."""
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            inv = torch.rsqrt(x.var(dim=(0, 2, 3), unbiased=False) + self.eps)
        else:
            mean, inv = self.statistics(truncation)
        if self.conditional:
            gain = (1 + self.scale(cond)) * inv  # [B, C]
            shift = self.offset(cond) - mean * gain
        else:
            gain = (self.weight * inv).unsqueeze(0)
            shift = (self.bias - mean * self.weight * inv).unsqueeze(0)
        out = torch.addcmul(shift[:, :, None, None], x, gain[:, :, None, None])
        return out.relu_() if relu else out

    def clear_cache(self) -> None:
        self._stats.clear()

    def train(self, mode: bool = True) -> TruncationBatchNorm:
        self._stats.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._stats.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._stats.clear()  # cached statistics live on the old device/dtype
        return super()._apply(fn, *args, **kwargs)


class GBlock(nn.Module):
    """BigGAN-deep bottleneck residual block (optionally upsampling 2x, keeping or halving channels)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, upsample: bool, n_stats: int, eps: float):
        super().__init__()
        mid = c_in // 4
        self.upsample = upsample
        self.c_out = c_out
        self.bn_0 = TruncationBatchNorm(c_in, cond_dim, n_stats, eps)
        self.conv_0 = SNConv2d(c_in, mid, 1, eps=eps)
        self.bn_1 = TruncationBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = SNConv2d(mid, mid, 3, eps=eps)
        self.bn_2 = TruncationBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = SNConv2d(mid, mid, 3, eps=eps)
        self.bn_3 = TruncationBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = SNConv2d(mid, c_out, 1, eps=eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        h = self.conv_0(self.bn_0(x, truncation, cond, relu=True))
        h = self.bn_1(h, truncation, cond, relu=True)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(self.bn_2(h, truncation, cond, relu=True))
        h = self.conv_3(self.bn_3(h, truncation, cond, relu=True))
        skip = x[:, :self.c_out] if x.shape[1] != self.c_out else x
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h.add_(skip)


class SelfAttention(nn.Module):
    """SAGAN self-attention with 2x2 max-pooled keys/values and a learned residual gain ``gamma``."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False, eps=eps)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False, eps=eps)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False, eps=eps)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False, eps=eps)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.snconv1x1_theta(x).reshape(b, c // 8, h * w)
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).reshape(b, c // 8, -1)
        g = F.max_pool2d(self.snconv1x1_g(x), 2).reshape(b, c // 2, -1)
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # [B, HW, HW/4]
        out = torch.bmm(g, attn.transpose(1, 2)).reshape(b, c // 2, h, w)
        return x + self.gamma * self.snconv1x1_o_conv(out)


class _Generator(nn.Module):
    def __init__(self, config: BigGANConfig):
        super().__init__()
        ch, cond_dim = config.channel_width, 2 * config.z_dim
        self.c0 = ch * config.layers[0][1]
        self.gen_z = SNLinear(cond_dim, 4 * 4 * self.c0, eps=config.eps)
        layers: list[nn.Module] = []
        for i, (up, a, b) in enumerate(config.layers):
            if i == config.attention_layer_position:
                layers.append(SelfAttention(ch * a, config.eps))
            layers.append(GBlock(ch * a, ch * b, cond_dim, up, config.n_stats, config.eps))
        self.layers = nn.ModuleList(layers)
        self.bn = TruncationBatchNorm(ch, None, config.n_stats, config.eps)
        self.conv_to_rgb = SNConv2d(ch, ch, 3, eps=config.eps)

    def forward(self, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        h = self.gen_z(cond).reshape(-1, 4, 4, self.c0).permute(0, 3, 1, 2).contiguous()
        for layer in self.layers:
            h = layer(h, cond, truncation) if isinstance(layer, GBlock) else layer(h)
        h = self.bn(h, truncation, relu=True)
        # Only the first 3 of the convolution's channel_width outputs are the image.
        rgb = self.conv_to_rgb
        return torch.tanh(F.conv2d(h, rgb.sn_weight()[:3], rgb.bias[:3], padding=rgb.padding))


class BigGANDeep(nn.Module):
    """BigGAN-deep generator: ``model(z, y, truncation)`` -> images [B, 3, R, R] in [-1, 1].

    ``z`` float [B, z_dim] (already multiplied by the truncation, see :func:`biggan_latents`),
    ``y`` int64 labels [B] or float class vectors [B, num_classes] (one-hot for labels), ``truncation``
    in (0, 1] (selects the batch-norm statistics). State-dict keys and shapes are those of
    pytorch-pretrained-biggan 0.1.1's ``BigGAN`` for the same config. Call :meth:`fold` after loading
    weights (``load_biggan`` does) so eval-mode forwards reuse the normalised weights.
    """

    def __init__(self, config: BigGANConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Linear(config.num_classes, config.z_dim, bias=False)
        self.generator = _Generator(config)

    def forward(self, z: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        truncation = check_truncation(truncation)
        cfg = self.config
        if z.dim() != 2 or z.shape[1] != cfg.z_dim:
            raise ConfigError(f"BigGAN-deep: z must be [B, {cfg.z_dim}], got {list(z.shape)}")
        if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8) and y.dim() == 1:
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= cfg.num_classes):
                raise ConfigError(f"BigGAN-deep: labels must be in [0, {cfg.num_classes}), got "
                                  f"[{int(y.min())}, {int(y.max())}]")
            embed = self.embeddings.weight.t()[y.long()]  # = one_hot(y) @ E^T, exactly
        elif y.is_floating_point() and y.dim() == 2 and y.shape[1] == cfg.num_classes:
            embed = self.embeddings(y)
        else:
            raise ConfigError(f"BigGAN-deep: y must be int labels [B] or class vectors [B, {cfg.num_classes}], "
                              f"got {y.dtype} {list(y.shape)}")
        if embed.shape[0] != z.shape[0]:
            raise ConfigError(f"BigGAN-deep: {z.shape[0]} latents but {embed.shape[0]} labels")
        return self.generator(torch.cat((z, embed.to(z.dtype)), dim=1), truncation)

    @torch.no_grad()
    def fold(self) -> BigGANDeep:
        """Fold every spectral norm's sigma into its weight (eval-mode forwards reuse it)."""
        for m in self.modules():
            if isinstance(m, _SpectralNormed):
                m.fold()
        return self


# ---------------------------------------------------------------------------------------------
# State dicts

def state_signature(config: BigGANConfig) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of the generator ``config`` describes (built on the meta device)."""
    with torch.device("meta"):
        model = BigGANDeep(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def blocks_in(state: Mapping[str, Any]) -> int:
    """Number of residual blocks a BigGAN-deep state dict holds (0 if it is not one)."""
    return len({k.split(".")[2] for k in state if k.startswith("generator.layers.") and ".bn_0.running_means" in k})


def check_state_dict(state: Mapping[str, torch.Tensor], config: BigGANConfig, weights: str = "weights",
                     config_source: str = "config", expected_resolution: int | None = None) -> None:
    """Raise WeightsError (one line: file, found, expected) unless ``state`` fits ``config``.

    ``expected_resolution`` (a preset's) is checked against both the config and the weights (the
    resolution the number of blocks implies: 2 per doubling from 4x4).
    """
    found_blocks = blocks_in(state)
    if expected_resolution is not None:
        if config.output_dim != expected_resolution:
            raise WeightsError(f"{config_source}: config is for {config.output_dim}x{config.output_dim} "
                               f"output, expected {expected_resolution}x{expected_resolution}")
        want_blocks = 2 * int(math.log2(expected_resolution // 4))
        if found_blocks and found_blocks != want_blocks:
            res = 4 * 2 ** (found_blocks // 2)
            raise WeightsError(f"{weights}: holds a {res}x{res} BigGAN-deep generator ({found_blocks} blocks), "
                               f"expected {expected_resolution}x{expected_resolution} ({want_blocks} blocks)")
    expected = state_signature(config)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got == expected:
        return
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shaped = [f"{k} {list(got[k])} (config: {list(expected[k])})" for k in expected
              if k in got and got[k] != expected[k]]
    parts = [f"{len(v)} {label} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for label, v in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", shaped)) if v]
    what = f"a {found_blocks}-block BigGAN-deep state dict" if found_blocks else "not a BigGAN-deep state dict"
    raise WeightsError(f"{weights} does not match {config_source} ({config.output_dim}x{config.output_dim}, "
                       f"{len(config.layers)} blocks, channel_width {config.channel_width}): {'; '.join(parts)}; "
                       f"the file is {what}")


def from_state_dict(state: Mapping[str, torch.Tensor], config: BigGANConfig, device: str | torch.device = "cpu",
                    weights: str = "weights", config_source: str = "config",
                    expected_resolution: int | None = None) -> BigGANDeep:
    """Check ``state`` against ``config``, load it (float32) and return the folded eval-mode model."""
    check_state_dict(state, config, weights, config_source, expected_resolution)
    with torch.device("meta"):
        model = BigGANDeep(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).eval().fold()


# ---------------------------------------------------------------------------------------------
# Latents

def check_truncation(truncation: Any, option: str = "--truncation") -> float:
    """``truncation`` as a float in (0, 1]; else ConfigError naming ``option``."""
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) \
            or not math.isfinite(truncation) or not 0 < truncation <= 1:
        raise ConfigError(f"{option}: truncation must be a number in (0, 1], got {truncation!r}")
    return float(truncation)


def truncated_normal(n: int, generator: torch.Generator) -> torch.Tensor:
    """float32 [n]: standard normal draws conditioned on |x| <= 2, by resampling.

    ``torch.randn(n)`` from ``generator``, then the entries outside [-2, 2] (4.55 % on average) are
    redrawn, in index order, with ``torch.randn(count)`` until none is left (the rule of TF's
    ``truncated_normal``). The result depends only on the generator's state.
    """
    x = torch.randn(n, generator=generator, dtype=torch.float32)
    bad = x.abs() > TRUNCATED_NORMAL_BOUND
    while bool(bad.any()):
        x[bad] = torch.randn(int(bad.sum()), generator=generator, dtype=torch.float32)
        bad = x.abs() > TRUNCATED_NORMAL_BOUND
    return x


def biggan_latents(seed: int, indices: Iterable[int], truncation: float, classes: Sequence[int] | None,
                   num_classes: int = 1000, dim_z: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of samples ``indices``: (z float32 [B, dim_z], labels int64 [B]), on the CPU.

    Sample i uses ``sample_generator(seed, i)`` (CPU) alone: first its label, uniform over
    ``classes`` (None: all ``num_classes``) by the ADM sampler's rule (``torch.randint(0, k, (1,))``,
    then ``classes[j]``), then ``z_i = truncation * truncated_normal(dim_z)``. So sample i does not
    depend on batch size, order, process count, device or resume point.
    """
    truncation = check_truncation(truncation)
    if classes is not None:
        classes = tuple(int(c) for c in classes)
        if not classes:
            raise ConfigError("--classes: the list of allowed classes is empty")
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"--classes: class {bad[0]} is outside [0, {num_classes}) for this generator")
    k = num_classes if classes is None else len(classes)
    zs, labels = [], []
    for i in indices:
        gen = sample_generator(seed, int(i))
        j = int(torch.randint(0, k, (1,), generator=gen))
        labels.append(j if classes is None else classes[j])
        zs.append(truncated_normal(dim_z, gen))
    z = torch.stack(zs) if zs else torch.empty(0, dim_z)
    return z * truncation, torch.tensor(labels, dtype=torch.int64)


def random_state_dict(config: BigGANConfig, seed: int = 0, power_iterations: int = 5) -> dict[str, torch.Tensor]:
    """Random weights in the converted files' layout, for tests and benchmarks.

    Normal weights; ``weight_u``/``weight_v`` from ``power_iterations`` power iterations (so sigma is
    close to the spectral norm, as in trained files); batch-norm statistics random per truncation row
    (means N(0, 0.3^2), variances U[0.5, 2]) so the truncation changes the output; attention gain 0.7.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for key, shape in state_signature(config).items():
        if key.endswith("running_means"):
            out[key] = 0.3 * torch.randn(shape, generator=gen)
        elif key.endswith("running_vars"):
            out[key] = 0.5 + 1.5 * torch.rand(shape, generator=gen)
        elif key.endswith("gamma"):
            out[key] = torch.full(shape, 0.7)
        elif key == "embeddings.weight":
            out[key] = 0.5 * torch.randn(shape, generator=gen)
        elif key == "generator.bn.weight":
            out[key] = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("weight_orig"):
            out[key] = torch.randn(shape, generator=gen)
    for key in [k for k in out if k.endswith("weight_orig")]:
        mat = out[key].reshape(out[key].shape[0], -1)
        u = F.normalize(torch.randn(mat.shape[0], generator=gen), dim=0)
        v = F.normalize(mat.t() @ u, dim=0)
        for _ in range(power_iterations):
            v = F.normalize(mat.t() @ u, dim=0)
            u = F.normalize(mat @ v, dim=0)
        prefix = key[: -len("weight_orig")]
        out[prefix + "weight_u"], out[prefix + "weight_v"] = u, v
    return out
