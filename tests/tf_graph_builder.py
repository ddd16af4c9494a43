"""Build a random-weight GraphDef that mimics `classify_image_graph_def.pb` on the path evalkit uses.

Same node names and op types as the 2015 Inception graph for everything the converter and the TF backend
touch: the DecodeJpeg → Cast → ExpandDims → ResizeBilinear → Sub → Mul chain, one name scope per conv unit
(`conv2d_params`, `Conv2D`, `batchnorm` = BatchNormWithGlobalNormalization, and a Relu named as the scope),
the mixed blocks joined by the old `Concat` op, the pools, `pool_3`, `pool_3/_reshape`, `softmax/weights`,
`softmax/logits/MatMul`, `softmax/biases`, `softmax/logits`, `softmax`.

The protobuf is written by a small wire-format encoder here (no TensorFlow needed to build it); TensorFlow
parsing the result in the parity tests checks the encoding. The GraphDef declares producer version 8 because
TensorFlow accepts BatchNormWithGlobalNormalization only in GraphDefs older than version 9 (evaluator spec §12).

Weights follow spec §12: uniform conv weights with variance 2/fan_in (PyTorch's default ×√6), classifier
weights ×4 of PyTorch's Linear default, and mildly random batch-norm statistics, so features of different
images differ clearly and a wrong resize/normalisation/flatten makes the parity tests fail.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from evalkit.features import inception_layout as layout

DT_FLOAT, DT_INT32, DT_UINT8, DT_STRING = 1, 3, 4, 7


# ---------------------------------------------------------------------------------------------
# protobuf wire-format encoding

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wt: int) -> bytes:
    return _varint((num << 3) | wt)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


def _vi(num: int, v: int) -> bytes:
    return _key(num, 0) + _varint(v)


def _shape(dims) -> bytes:
    return b"".join(_ld(2, _vi(1, d)) for d in dims)


def _tensor(arr: np.ndarray) -> bytes:
    dtype = {np.dtype(np.float32): DT_FLOAT, np.dtype(np.int32): DT_INT32}[arr.dtype]
    content = np.ascontiguousarray(arr).astype("<" + arr.dtype.str[1:]).tobytes()  # little-endian bytes
    return _vi(1, dtype) + _ld(2, _shape(arr.shape)) + _ld(4, content)


def _attr(value) -> bytes:
    """Encode a python value as an AttrValue (type enums are passed as ("type", n))."""
    if isinstance(value, tuple) and value[0] == "type":
        return _vi(6, value[1])
    if isinstance(value, tuple) and value[0] == "shape":
        return _ld(7, _shape(value[1]))
    if isinstance(value, bool):
        return _vi(5, int(value))
    if isinstance(value, int):
        return _vi(3, value)
    if isinstance(value, float):
        return _key(4, 5) + struct.pack("<f", value)
    if isinstance(value, (bytes, str)):
        return _ld(2, value.encode() if isinstance(value, str) else value)
    if isinstance(value, np.ndarray):
        return _ld(8, _tensor(value))
    if isinstance(value, list):
        return _ld(1, _ld(3, b"".join(_varint(v) for v in value)))
    raise TypeError(value)


class GraphWriter:
    """Accumulates NodeDefs and serialises a GraphDef."""

    def __init__(self, producer: int = 8):
        self.nodes: list[bytes] = []
        self.names: set[str] = set()
        self.producer = producer
        self.skip: set[str] = set()

    def node(self, name: str, op: str, inputs=(), **attrs) -> str:
        assert name not in self.names, name
        self.names.add(name)
        if name in self.skip:
            return name
        body = _ld(1, name.encode()) + _ld(2, op.encode())
        body += b"".join(_ld(3, i.encode()) for i in inputs)
        for key in sorted(attrs):
            body += _ld(5, _ld(1, key.encode()) + _ld(2, _attr(attrs[key])))
        self.nodes.append(_ld(1, body))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        return self.node(name, "Const", dtype=("type", DT_FLOAT if value.dtype == np.float32 else DT_INT32),
                         value=value)

    def serialize(self) -> bytes:
        return b"".join(self.nodes) + _ld(4, _vi(1, self.producer))


F32 = ("type", DT_FLOAT)


# ---------------------------------------------------------------------------------------------
# the Inception graph

def build_inception_graphdef(seed: int = 0, drop: tuple[str, ...] = (), conv_gain: float = 6 ** 0.5,
                             fc_gain: float = 4.0, scale_after_normalization: bool = True) -> bytes:
    """Serialized GraphDef of the 2015 Inception graph with random weights (``drop``: node names to leave out)."""
    rng = np.random.default_rng(seed)
    g = GraphWriter()
    g.skip = set(drop)

    # preprocessing chain
    g.node("DecodeJpeg/contents", "Placeholder", dtype=("type", DT_STRING), shape=("shape", []))
    g.node("DecodeJpeg", "DecodeJpeg", ["DecodeJpeg/contents"], channels=3, ratio=1, fancy_upscaling=True,
           try_recover_truncated=False, acceptable_fraction=1.0, dct_method=b"")
    g.node("Cast", "Cast", ["DecodeJpeg"], SrcT=("type", DT_UINT8), DstT=F32)
    g.const("ExpandDims/dim", np.array(0, np.int32))
    g.node("ExpandDims", "ExpandDims", ["Cast", "ExpandDims/dim"], T=F32, Tdim=("type", DT_INT32))
    g.const("ResizeBilinear/size", np.array([299, 299], np.int32))
    g.node("ResizeBilinear", "ResizeBilinear", ["ExpandDims", "ResizeBilinear/size"], T=F32, align_corners=False)
    g.const("Sub/y", np.array(128.0, np.float32))
    g.node("Sub", "Sub", ["ResizeBilinear", "Sub/y"], T=F32)
    g.const("Mul/y", np.array(0.0078125, np.float32))
    g.node("Mul", "Mul", ["Sub", "Mul/y"], T=F32)

    def conv(x: str, unit: layout.ConvUnit) -> str:
        s = unit.scope
        fan_in = unit.kh * unit.kw * unit.cin
        bound = conv_gain / np.sqrt(fan_in)  # PyTorch default U(±1/sqrt(fan_in)) × gain → variance 2/fan_in
        g.const(f"{s}/conv2d_params", rng.uniform(-bound, bound, unit.tf_weight_shape).astype(np.float32))
        g.node(f"{s}/Conv2D", "Conv2D", [x, f"{s}/conv2d_params"], T=F32, strides=[1, unit.stride, unit.stride, 1],
               padding=unit.padding.encode(), data_format=b"NHWC", use_cudnn_on_gpu=True)
        n = unit.cout
        g.const(f"{s}/batchnorm/beta", rng.uniform(-0.1, 0.1, n).astype(np.float32))
        g.const(f"{s}/batchnorm/gamma", rng.uniform(0.8, 1.2, n).astype(np.float32))
        g.const(f"{s}/batchnorm/moving_mean", rng.uniform(-0.1, 0.1, n).astype(np.float32))
        g.const(f"{s}/batchnorm/moving_variance", rng.uniform(0.8, 1.2, n).astype(np.float32))
        g.node(f"{s}/batchnorm", "BatchNormWithGlobalNormalization",
               [f"{s}/Conv2D", f"{s}/batchnorm/moving_mean", f"{s}/batchnorm/moving_variance",
                f"{s}/batchnorm/beta", f"{s}/batchnorm/gamma"],
               T=F32, variance_epsilon=layout.BN_EPSILON,
               scale_after_normalization=scale_after_normalization)
        return g.node(s, "Relu", [f"{s}/batchnorm"], T=F32)

    def pool(x: str, p: layout.Pool) -> str:
        op = "MaxPool" if p.kind == "max" else "AvgPool"
        return g.node(p.name, op, [x], T=F32, ksize=[1, p.ksize, p.ksize, 1], strides=[1, p.stride, p.stride, 1],
                      padding=p.padding.encode(), data_format=b"NHWC")

    def concat(name: str, inputs: list[str]) -> str:
        g.const(f"{name}/concat_dim", np.array(3, np.int32))
        return g.node(name, "Concat", [f"{name}/concat_dim"] + inputs, N=len(inputs), T=F32)

    stem = {u.scope: u for u in layout.stem_units()}
    x = conv(conv(conv("Mul", stem["conv"]), stem["conv_1"]), stem["conv_2"])
    x = pool(x, layout.Pool("pool", "max", 3, 2, "VALID"))
    x = conv(conv(x, stem["conv_3"]), stem["conv_4"])
    x = pool(x, layout.Pool("pool_1", "max", 3, 2, "VALID"))
    for prefix, tv, kind, cin, width in layout.BLOCKS:
        u = {unit.scope[len(prefix) + 1:]: unit for unit in layout.block_units(prefix, tv, kind, cin, width)}
        p = layout.block_pool(prefix, kind)
        if kind == "A":
            b = [conv(x, u["conv"]), conv(conv(x, u["tower/conv"]), u["tower/conv_1"]),
                 conv(conv(conv(x, u["tower_1/conv"]), u["tower_1/conv_1"]), u["tower_1/conv_2"]),
                 conv(pool(x, p), u["tower_2/conv"])]
        elif kind == "B":
            b = [conv(x, u["conv"]), conv(conv(conv(x, u["tower/conv"]), u["tower/conv_1"]), u["tower/conv_2"]),
                 pool(x, p)]
        elif kind == "C":
            t1 = conv(x, u["tower_1/conv"])
            for i in range(1, 5):
                t1 = conv(t1, u[f"tower_1/conv_{i}"])
            b = [conv(x, u["conv"]), conv(conv(conv(x, u["tower/conv"]), u["tower/conv_1"]), u["tower/conv_2"]),
                 t1, conv(pool(x, p), u["tower_2/conv"])]
        elif kind == "D":
            t1 = conv(x, u["tower_1/conv"])
            for i in range(1, 4):
                t1 = conv(t1, u[f"tower_1/conv_{i}"])
            b = [conv(conv(x, u["tower/conv"]), u["tower/conv_1"]), t1, pool(x, p)]
        else:
            t0 = conv(x, u["tower/conv"])
            t0 = concat(f"{prefix}/tower/mixed", [conv(t0, u["tower/mixed/conv"]), conv(t0, u["tower/mixed/conv_1"])])
            t1 = conv(conv(x, u["tower_1/conv"]), u["tower_1/conv_1"])
            t1 = concat(f"{prefix}/tower_1/mixed",
                        [conv(t1, u["tower_1/mixed/conv"]), conv(t1, u["tower_1/mixed/conv_1"])])
            b = [conv(x, u["conv"]), t0, t1, conv(pool(x, p), u["tower_2/conv"])]
        x = concat(f"{prefix}/join", b)

    # head: pool_3 → reshape → classifier
    pool(x, layout.Pool("pool_3", "avg", 8, 1, "VALID"))
    g.const("pool_3/_reshape/shape", np.array([1, layout.POOL_DIM], np.int32))
    g.node("pool_3/_reshape", "Reshape", ["pool_3", "pool_3/_reshape/shape"], T=F32, Tshape=("type", DT_INT32))
    bound = fc_gain / np.sqrt(layout.POOL_DIM)
    g.const("softmax/weights", rng.uniform(-bound, bound, (layout.POOL_DIM, layout.NUM_CLASSES)).astype(np.float32))
    g.node("softmax/logits/MatMul", "MatMul", ["pool_3/_reshape", "softmax/weights"], T=F32,
           transpose_a=False, transpose_b=False)
    g.const("softmax/biases", rng.uniform(-1, 1, layout.NUM_CLASSES).astype(np.float32))
    g.node("softmax/logits", "BiasAdd", ["softmax/logits/MatMul", "softmax/biases"], T=F32, data_format=b"NHWC")
    g.node("softmax", "Softmax", ["softmax/logits"], T=F32)
    return g.serialize()


def write_inception_pb(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write ``build_inception_graphdef(seed, **kwargs)`` to ``path``."""
    path = Path(path)
    path.write_bytes(build_inception_graphdef(seed, **kwargs))
    return path


# ---------------------------------------------------------------------------------------------
# shared by the Inception tests

PB_NAME = "inception_random_seed0.pb"


def session_pb(tmp_path_factory) -> Path:
    """The random-weight Inception GraphDef, built once per test session under pytest's base temp dir."""
    path = tmp_path_factory.getbasetemp() / PB_NAME
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_inception_pb(tmp, seed=0)
        tmp.rename(path)
    return path


def make_images(n: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` test images with large-scale structure (blocky colour fields + noise).

    i.i.d. noise images all look alike to a random network; coarse colour layouts that differ per image make
    the features of different images differ clearly.
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    ys = np.arange(h) * 4 // h
    xs = np.arange(w) * 4 // w
    img = coarse[:, ys][:, :, xs] + rng.normal(0, 20, (n, h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
