"""PyTorch port of the 2015 Inception-v3 graph used by OpenAI's ADM evaluator.

The reference evaluator (``evaluations/evaluator.py`` at ``evalkit.REFERENCE_COMMIT``) runs
`classify_image_graph_def.pb` from `ExpandDims:0` and fetches `pool_3:0`, `mixed_6/conv:0[..., :7]` and
`pool_3 @ W` (W = input #1 of `softmax/logits/MatMul`, no bias). What this port reproduces:

* uint8 → float32 → TF1 legacy bilinear resize to 299×299 of the raw 0..255 values → ``(x - 128) / 128``;
* every conv is conv (no bias) → batch-norm (ε from the graph, 0.001) → ReLU. Batch-norm is folded into
  the conv weights at load time, and the 1×1 convs that read the same block input are fused into one conv;
* average pools exclude padding from the divisor; the pool branch of `mixed_10` is a max pool;
* ``spatial`` = first 7 channels of `mixed_6/conv` (post-ReLU) flattened in (h, w, c) order → 2023;
* ``logits`` = pool features @ ``softmax/weights`` over 1008 classes, without ``softmax/biases``.

Float32 throughout, TF32 off.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evalkit.errors import InputError, WeightsError
from evalkit.features import inception_layout as layout
from evalkit.features.convert import InceptionWeights, load_weights_file, params_from_graphdef, save_evalkit
from evalkit.features.resize import tf1_resize_bilinear
from evalkit.runtime import no_tf32, resolve_device

RESIZE_MODE = "tf1-legacy-bilinear"
CONVERTED_CACHE_NAME = "inception-2015-12-05.evalkit.npz"
FEATURE_DIMS = {"pool": layout.POOL_DIM, "spatial": layout.SPATIAL_DIM, "logits": layout.NUM_CLASSES}


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Graph preprocessing: ``[N, H, W, 3]`` 0..255 (any dtype) → float32 ``[N, 3, 299, 299]`` in [-1, 0.9921875].

    Resize first (TF1 legacy bilinear, from raw 0..255 values), then ``(x - 128) * (1/128)`` as the graph's
    `Sub` and `Mul` nodes do.
    """
    x = tf1_resize_bilinear(images.to(torch.float32), layout.INPUT_SIZE, channels_last=True)
    x = (x - 128.0) * 0.0078125
    return x.permute(0, 3, 1, 2)


def flatten_spatial(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """``mixed_6/conv`` NCHW ``[N, 192, 17, 17]`` → first 7 channels flattened in (h, w, c) order → ``[N, 2023]``."""
    x = mixed_6_conv[:, : layout.SPATIAL_CHANNELS]
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def _torch_padding(unit: layout.ConvUnit) -> tuple[int, int]:
    """TF "SAME" at stride 1 with odd kernels is symmetric padding k // 2; "VALID" is none."""
    if unit.padding == "VALID":
        return (0, 0)
    assert unit.stride == 1 and unit.kh % 2 == 1 and unit.kw % 2 == 1, unit
    return (unit.kh // 2, unit.kw // 2)


def _folded(weights: InceptionWeights, unit: layout.ConvUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight ``[out, in, kh, kw]`` and bias with the batch-norm folded in (float64 math, float32 result).

    BatchNormWithGlobalNormalization: ``y = (x - mean) / sqrt(var + eps) * gamma + beta``.
    """
    p = weights.params
    w = p[f"{unit.scope}/conv2d_params"].astype(np.float64).transpose(3, 2, 0, 1)
    gamma = p[f"{unit.scope}/batchnorm/gamma"].astype(np.float64)
    beta = p[f"{unit.scope}/batchnorm/beta"].astype(np.float64)
    mean = p[f"{unit.scope}/batchnorm/moving_mean"].astype(np.float64)
    var = p[f"{unit.scope}/batchnorm/moving_variance"].astype(np.float64)
    scale = gamma / np.sqrt(var + weights.bn_epsilon)
    w = w * scale[:, None, None, None]
    b = beta - mean * scale
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)), torch.from_numpy(b.astype(np.float32))


class _Conv(nn.Module):
    """Conv → folded batch-norm → ReLU of units sharing input, stride and padding (fused on out channels)."""

    def __init__(self, weights: InceptionWeights, units: list[layout.ConvUnit]):
        super().__init__()
        first = units[0]
        folded = [_folded(weights, u) for u in units]
        self.weight = nn.Parameter(torch.cat([w for w, _ in folded]), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([b for _, b in folded]), requires_grad=False)
        self.stride = first.stride
        self.padding = _torch_padding(first)
        self.splits = [u.cout for u in units]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


def _pool(x: torch.Tensor, pool: layout.Pool) -> torch.Tensor:
    """TF pooling: SAME average pools exclude the padding; max pools ignore it."""
    pad = 1 if pool.padding == "SAME" else 0
    if pool.kind == "max":
        return F.max_pool2d(x, pool.ksize, pool.stride, pad)
    return F.avg_pool2d(x, pool.ksize, pool.stride, pad, count_include_pad=False)


class _Block(nn.Module):
    """One mixed block; the 1×1 convs reading the block input run as one fused conv."""

    def __init__(self, weights: InceptionWeights, prefix: str, tv: str, kind: str, cin: int, width: int):
        super().__init__()
        self.kind = kind
        self.pool = layout.block_pool(prefix, kind)
        units = {u.scope[len(prefix) + 1:]: u for u in layout.block_units(prefix, tv, kind, cin, width)}

        def conv(*names: str) -> _Conv:
            return _Conv(weights, [units[n] for n in names])

        if kind == "A":
            self.head = conv("conv", "tower/conv", "tower_1/conv")
            self.t0 = conv("tower/conv_1")
            self.t1 = nn.Sequential(conv("tower_1/conv_1"), conv("tower_1/conv_2"))
            self.pool_conv = conv("tower_2/conv")
        elif kind == "B":
            self.conv = conv("conv")
            self.t0 = nn.Sequential(conv("tower/conv"), conv("tower/conv_1"), conv("tower/conv_2"))
        elif kind == "C":
            self.head = conv("conv", "tower/conv", "tower_1/conv")
            self.t0 = nn.Sequential(conv("tower/conv_1"), conv("tower/conv_2"))
            self.t1 = nn.Sequential(*[conv(f"tower_1/conv_{i}") for i in range(1, 5)])
            self.pool_conv = conv("tower_2/conv")
        elif kind == "D":
            self.head = conv("tower/conv", "tower_1/conv")
            self.t0 = conv("tower/conv_1")
            self.t1 = nn.Sequential(*[conv(f"tower_1/conv_{i}") for i in range(1, 4)])
        else:
            self.head = conv("conv", "tower/conv", "tower_1/conv")
            self.t0a, self.t0b = conv("tower/mixed/conv"), conv("tower/mixed/conv_1")
            self.t1 = conv("tower_1/conv_1")
            self.t1a, self.t1b = conv("tower_1/mixed/conv"), conv("tower_1/mixed/conv_1")
            self.pool_conv = conv("tower_2/conv")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (block output, output of the block's `conv` unit, i.e. branch 1×1, where it has one)."""
        if self.kind == "B":
            return torch.cat([self.conv(x), self.t0(x), _pool(x, self.pool)], 1), None
        heads = torch.split(self.head(x), self.head.splits, 1)
        if self.kind == "D":
            return torch.cat([self.t0(heads[0]), self.t1(heads[1]), _pool(x, self.pool)], 1), None
        branch1x1 = heads[0]
        pooled = self.pool_conv(_pool(x, self.pool))
        if self.kind in ("A", "C"):
            return torch.cat([branch1x1, self.t0(heads[1]), self.t1(heads[2]), pooled], 1), branch1x1
        t1 = self.t1(heads[2])
        out = [branch1x1, self.t0a(heads[1]), self.t0b(heads[1]), self.t1a(t1), self.t1b(t1), pooled]
        return torch.cat(out, 1), branch1x1


class InceptionNet(nn.Module):
    """The 2015 Inception-v3 trunk.

    Preprocessed ``[N, 3, 299, 299]`` → (pool ``[N, 2048]``, mixed_6/conv ``[N, 192, 17, 17]``).
    """

    def __init__(self, weights: InceptionWeights):
        super().__init__()
        stem = {u.scope: u for u in layout.stem_units()}
        self.stem = nn.ModuleList([_Conv(weights, [stem[n]]) for n in ("conv", "conv_1", "conv_2", "conv_3", "conv_4")])
        self.blocks = nn.ModuleList([_Block(weights, *spec) for spec in layout.BLOCKS])
        self.spatial_block = [spec[0] for spec in layout.BLOCKS].index(layout.SPATIAL_TENSOR.split("/")[0])
        fc = torch.from_numpy(np.ascontiguousarray(weights.params["softmax/weights"]))
        self.fc_weight = nn.Parameter(fc, requires_grad=False)  # [2048, 1008], used without the bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c0, c1, c2, c3, c4 = self.stem
        x = c2(c1(c0(x)))
        x = F.max_pool2d(x, 3, 2)  # `pool`
        x = c4(c3(x))
        x = F.max_pool2d(x, 3, 2)  # `pool_1`
        spatial = None
        for i, block in enumerate(self.blocks):
            x, branch1x1 = block(x)
            if i == self.spatial_block:
                spatial = branch1x1
        pool = x.mean(dim=(2, 3))  # `pool_3`: 8×8 VALID average pool
        return pool, spatial


class InceptionExtractor:
    """Evaluator-identical Inception features in PyTorch (registered as "inception", the default).

    ``extractor(images)`` takes uint8 (or any real dtype with 0..255 values) NHWC images ``[N, H, W, 3]`` of
    any resolution and returns float32 numpy arrays ``{"pool": [N, 2048], "spatial": [N, 2023],
    "logits": [N, 1008]}`` (logits without bias). Images are processed in chunks of ``batch_size``.
    """

    name = "inception"
    backend = "torch"
    feature_dims = dict(FEATURE_DIMS)

    def __init__(self, weights: InceptionWeights, device: str | torch.device = "cpu", batch_size: int = 64):
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.weights_sha256 = weights.source_sha256
        self.weights_source = weights.source
        # channels_last: oneDNN (CPU) and cuDNN (GPU) run these convs fastest in NHWC, the graph's own layout
        self.net = InceptionNet(weights).eval().to(self.device, memory_format=torch.channels_last)

    def identity(self) -> dict:
        """Everything that changes the numbers (used in cache keys)."""
        return {"name": self.name, "backend": self.backend, "weights_sha256": self.weights_sha256,
                "resize": RESIZE_MODE}

    @torch.inference_mode()
    def forward_tensor(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a ``[N, H, W, 3]`` tensor (on any device) as float32 tensors on ``self.device``."""
        with no_tf32():
            x = preprocess(images.to(self.device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
            pool, mixed_6 = self.net(x)
            logits = pool @ self.net.fc_weight
            return {"pool": pool, "spatial": flatten_spatial(mixed_6), "logits": logits}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(images)
        out: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_DIMS}
        for start in range(0, images.shape[0], self.batch_size):
            feats = self.forward_tensor(torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size])))
            for k, v in feats.items():
                out[k].append(v.float().cpu().numpy())
        return {k: (np.concatenate(v) if v else np.zeros((0, FEATURE_DIMS[k]), np.float32)) for k, v in out.items()}


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate an image batch: ndarray ``[N, H, W, 3]``, real dtype, finite values (0..255 expected)."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"images: got a {type(images).__name__}, expected a numpy array [N, H, W, 3]")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"images: got shape {images.shape}, expected [N, H, W, 3] (NHWC, RGB)")
    if images.dtype != np.uint8:
        if images.dtype.kind not in "iuf":
            raise InputError(f"images: got dtype {images.dtype}, expected uint8 (0..255)")
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            raise InputError("images: found NaN or inf values, expected 0..255")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise InputError(f"images: got an empty image size {images.shape[1:3]}")
    return images


def _cache_dir() -> Path | None:
    try:
        from evalkit import weights as weights_mod
    except ImportError:
        return None
    return Path(weights_mod.cache_dir())


def resolve_weights(path: str | os.PathLike | None = None) -> InceptionWeights:
    """Find and load the Inception-2015 weights.

    With ``path``: that file (evalkit ``.npz``, pytorch-fid ``.pth`` or the ``.pb`` graph, detected from its bytes).
    Without: evalkit's converted cache (``<cache_dir>/inception-2015-12-05.evalkit.npz``) → pytorch-fid's ``.pth``
    (``evalkit.weights.find("inception-pth")``) → the ``.pb`` (``find("inception-pb")``, converted once and
    cached) → ``evalkit.weights.require("inception-pb")``, which raises WeightsError naming the file, its URL and
    the cache path.
    """
    if path is not None:
        return load_weights_file(path)
    try:
        from evalkit import weights as weights_mod
    except ImportError:
        raise WeightsError("no Inception weights given (--inception PATH) and evalkit.weights is unavailable "
                           "to locate classify_image_graph_def.pb") from None
    cached = Path(weights_mod.cache_dir()) / CONVERTED_CACHE_NAME
    if cached.is_file():
        return load_weights_file(cached)
    pth = weights_mod.find("inception-pth")
    if pth is not None:
        return load_weights_file(pth)
    pb = weights_mod.find("inception-pb") or weights_mod.require("inception-pb")
    weights = params_from_graphdef(pb)
    save_evalkit(weights, cached)
    return weights


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 64) -> InceptionExtractor:
    """The torch Inception extractor with weights from ``path`` or the default locations (see ``resolve_weights``)."""
    return InceptionExtractor(resolve_weights(path), device=device, batch_size=batch_size)
