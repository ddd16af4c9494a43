"""The layer table of the 2015 Inception-v3 graph (`classify_image_graph_def.pb`), one row per conv unit.

Single source of truth shared by the torch port (`inception.py`), the weight converters (`convert.py`) and
the random-weight GraphDef builder of the tests. Each conv unit of the graph is a name scope holding
``conv2d_params`` ([kh, kw, in, out]), ``Conv2D``, ``batchnorm`` (BatchNormWithGlobalNormalization with
``beta``, ``gamma``, ``moving_mean``, ``moving_variance``) and a ``Relu`` named as the scope itself.
Blocks map to torchvision/pytorch-fid names in order (``mixed``→Mixed_5b … ``mixed_10``→Mixed_7c).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvUnit:
    """One conv → batch-norm → ReLU unit. ``padding`` is TF's "SAME" or "VALID"."""

    scope: str          # TF name scope, e.g. "mixed_6/conv"
    torchvision: str    # pytorch-fid/torchvision module prefix, e.g. "Mixed_6d.branch1x1"
    cin: int
    cout: int
    kh: int
    kw: int
    stride: int = 1
    padding: str = "SAME"

    @property
    def tf_weight_shape(self) -> tuple[int, int, int, int]:
        return (self.kh, self.kw, self.cin, self.cout)


@dataclass(frozen=True)
class Pool:
    """A pooling node: kind "avg" (TF excludes padding from the divisor) or "max"."""

    name: str
    kind: str
    ksize: int
    stride: int
    padding: str


POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_SIZE = 17
SPATIAL_DIM = SPATIAL_SIZE * SPATIAL_SIZE * SPATIAL_CHANNELS  # 2023
NUM_CLASSES = 1008
INPUT_SIZE = 299
BN_EPSILON = 0.001
SPATIAL_TENSOR = "mixed_6/conv"

# Blocks in graph order: (TF prefix, torchvision prefix, kind, input channels, kind-specific width)
BLOCKS = (
    ("mixed", "Mixed_5b", "A", 192, 32),
    ("mixed_1", "Mixed_5c", "A", 256, 64),
    ("mixed_2", "Mixed_5d", "A", 288, 64),
    ("mixed_3", "Mixed_6a", "B", 288, 0),
    ("mixed_4", "Mixed_6b", "C", 768, 128),
    ("mixed_5", "Mixed_6c", "C", 768, 160),
    ("mixed_6", "Mixed_6d", "C", 768, 160),
    ("mixed_7", "Mixed_6e", "C", 768, 192),
    ("mixed_8", "Mixed_7a", "D", 768, 0),
    ("mixed_9", "Mixed_7b", "E", 1280, 0),
    ("mixed_10", "Mixed_7c", "E", 2048, 0),
)


def stem_units() -> list[ConvUnit]:
    """The five conv units before the mixed blocks (max pools `pool` after conv_2, `pool_1` after conv_4)."""
    return [
        ConvUnit("conv", "Conv2d_1a_3x3", 3, 32, 3, 3, 2, "VALID"),
        ConvUnit("conv_1", "Conv2d_2a_3x3", 32, 32, 3, 3, 1, "VALID"),
        ConvUnit("conv_2", "Conv2d_2b_3x3", 32, 64, 3, 3, 1, "SAME"),
        ConvUnit("conv_3", "Conv2d_3b_1x1", 64, 80, 1, 1, 1, "VALID"),
        ConvUnit("conv_4", "Conv2d_4a_3x3", 80, 192, 3, 3, 1, "VALID"),
    ]


def block_units(prefix: str, tv: str, kind: str, cin: int, width: int) -> list[ConvUnit]:
    """Conv units of one mixed block, in the graph's branch order (the order of the join's inputs)."""
    u = ConvUnit
    p, t = prefix, tv
    if kind == "A":
        return [
            u(f"{p}/conv", f"{t}.branch1x1", cin, 64, 1, 1),
            u(f"{p}/tower/conv", f"{t}.branch5x5_1", cin, 48, 1, 1),
            u(f"{p}/tower/conv_1", f"{t}.branch5x5_2", 48, 64, 5, 5),
            u(f"{p}/tower_1/conv", f"{t}.branch3x3dbl_1", cin, 64, 1, 1),
            u(f"{p}/tower_1/conv_1", f"{t}.branch3x3dbl_2", 64, 96, 3, 3),
            u(f"{p}/tower_1/conv_2", f"{t}.branch3x3dbl_3", 96, 96, 3, 3),
            u(f"{p}/tower_2/conv", f"{t}.branch_pool", cin, width, 1, 1),
        ]
    if kind == "B":
        return [
            u(f"{p}/conv", f"{t}.branch3x3", cin, 384, 3, 3, 2, "VALID"),
            u(f"{p}/tower/conv", f"{t}.branch3x3dbl_1", cin, 64, 1, 1),
            u(f"{p}/tower/conv_1", f"{t}.branch3x3dbl_2", 64, 96, 3, 3),
            u(f"{p}/tower/conv_2", f"{t}.branch3x3dbl_3", 96, 96, 3, 3, 2, "VALID"),
        ]
    if kind == "C":
        c7 = width
        return [
            u(f"{p}/conv", f"{t}.branch1x1", cin, 192, 1, 1),
            u(f"{p}/tower/conv", f"{t}.branch7x7_1", cin, c7, 1, 1),
            u(f"{p}/tower/conv_1", f"{t}.branch7x7_2", c7, c7, 1, 7),
            u(f"{p}/tower/conv_2", f"{t}.branch7x7_3", c7, 192, 7, 1),
            u(f"{p}/tower_1/conv", f"{t}.branch7x7dbl_1", cin, c7, 1, 1),
            u(f"{p}/tower_1/conv_1", f"{t}.branch7x7dbl_2", c7, c7, 7, 1),
            u(f"{p}/tower_1/conv_2", f"{t}.branch7x7dbl_3", c7, c7, 1, 7),
            u(f"{p}/tower_1/conv_3", f"{t}.branch7x7dbl_4", c7, c7, 7, 1),
            u(f"{p}/tower_1/conv_4", f"{t}.branch7x7dbl_5", c7, 192, 1, 7),
            u(f"{p}/tower_2/conv", f"{t}.branch_pool", cin, 192, 1, 1),
        ]
    if kind == "D":
        return [
            u(f"{p}/tower/conv", f"{t}.branch3x3_1", cin, 192, 1, 1),
            u(f"{p}/tower/conv_1", f"{t}.branch3x3_2", 192, 320, 3, 3, 2, "VALID"),
            u(f"{p}/tower_1/conv", f"{t}.branch7x7x3_1", cin, 192, 1, 1),
            u(f"{p}/tower_1/conv_1", f"{t}.branch7x7x3_2", 192, 192, 1, 7),
            u(f"{p}/tower_1/conv_2", f"{t}.branch7x7x3_3", 192, 192, 7, 1),
            u(f"{p}/tower_1/conv_3", f"{t}.branch7x7x3_4", 192, 192, 3, 3, 2, "VALID"),
        ]
    if kind == "E":
        return [
            u(f"{p}/conv", f"{t}.branch1x1", cin, 320, 1, 1),
            u(f"{p}/tower/conv", f"{t}.branch3x3_1", cin, 384, 1, 1),
            u(f"{p}/tower/mixed/conv", f"{t}.branch3x3_2a", 384, 384, 1, 3),
            u(f"{p}/tower/mixed/conv_1", f"{t}.branch3x3_2b", 384, 384, 3, 1),
            u(f"{p}/tower_1/conv", f"{t}.branch3x3dbl_1", cin, 448, 1, 1),
            u(f"{p}/tower_1/conv_1", f"{t}.branch3x3dbl_2", 448, 384, 3, 3),
            u(f"{p}/tower_1/mixed/conv", f"{t}.branch3x3dbl_3a", 384, 384, 1, 3),
            u(f"{p}/tower_1/mixed/conv_1", f"{t}.branch3x3dbl_3b", 384, 384, 3, 1),
            u(f"{p}/tower_2/conv", f"{t}.branch_pool", cin, 192, 1, 1),
        ]
    raise ValueError(f"unknown block kind {kind!r}")


def block_pool(prefix: str, kind: str) -> Pool:
    """The pooling node of a block: average (padding excluded) except `mixed_10` (max), stride 2 in B/D."""
    if kind in ("B", "D"):
        return Pool(f"{prefix}/pool", "max", 3, 2, "VALID")
    return Pool(f"{prefix}/tower_2/pool", "max" if prefix == "mixed_10" else "avg", 3, 1, "SAME")


def all_units() -> list[ConvUnit]:
    """Every conv unit of the network in graph order (94 units)."""
    units = stem_units()
    for prefix, tv, kind, cin, width in BLOCKS:
        units += block_units(prefix, tv, kind, cin, width)
    return units


BN_PARAMS = ("beta", "gamma", "moving_mean", "moving_variance")
TORCHVISION_BN = {"beta": "bn.bias", "gamma": "bn.weight", "moving_mean": "bn.running_mean",
                  "moving_variance": "bn.running_var"}


def param_names() -> list[str]:
    """TF constant names the converter reads: per unit the conv weight and 4 batch-norm vectors, then the classifier."""
    names = []
    for unit in all_units():
        names.append(f"{unit.scope}/conv2d_params")
        names += [f"{unit.scope}/batchnorm/{p}" for p in BN_PARAMS]
    return names + ["softmax/weights", "softmax/biases"]


def param_shapes() -> dict[str, tuple[int, ...]]:
    """Expected shape of every parameter in TF layout (conv weights [kh, kw, in, out], softmax [2048, 1008])."""
    shapes: dict[str, tuple[int, ...]] = {}
    for unit in all_units():
        shapes[f"{unit.scope}/conv2d_params"] = unit.tf_weight_shape
        for p in BN_PARAMS:
            shapes[f"{unit.scope}/batchnorm/{p}"] = (unit.cout,)
    shapes["softmax/weights"] = (POOL_DIM, NUM_CLASSES)
    shapes["softmax/biases"] = (NUM_CLASSES,)
    return shapes
