"""Inception-2015 weights: read the frozen `.pb` graph without TensorFlow, map pytorch-fid's `.pth`, and
save/load evalkit's own converted file.

The reference evaluator (``evaluations/evaluator.py`` at ``evalkit.REFERENCE_COMMIT``) runs
`classify_image_graph_def.pb`. Its weights are `Const` nodes of a
`GraphDef` protobuf. A GraphDef only needs a few message types, so this module decodes the protobuf wire
format directly (GraphDef → NodeDef → AttrValue → TensorProto) and TensorFlow is never needed.

All three sources become one canonical dict: TF constant name → float32 array in TF layout
(conv weights ``[kh, kw, in, out]``, ``softmax/weights`` ``[2048, 1008]``), plus the batch-norm epsilon.
evalkit's converted file is an ``.npz`` of that dict with a JSON metadata entry (source file name and
sha256), loadable with ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evalkit.atomic import atomic_path
from evalkit.errors import WeightsError
from evalkit.hashing import sha256_bytes, sha256_file
from evalkit.features import inception_layout as layout

EVALKIT_FORMAT = "evalkit-inception-2015-12-05"
EVALKIT_FORMAT_VERSION = 1
META_KEY = "__evalkit_meta__"

# Nodes the converter and the TF backend need, beyond the parameter constants.
REQUIRED_NODES = ("ExpandDims", "ResizeBilinear", "Sub", "Mul", "pool_3", "softmax/logits/MatMul",
                  layout.SPATIAL_TENSOR)


# ---------------------------------------------------------------------------------------------
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/): only what GraphDef uses.

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int = 0, end: int | None = None):
    """Yield (field number, wire type, value) of one message; length-delimited values are (start, end) spans."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("length-delimited field runs past its message")
            val, pos = (pos, pos + n), pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if pos > end:
            raise ValueError("field runs past its message")
        yield num, wt, val


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: bytes, span: tuple[int, int]) -> list[int]:
    pos, end = span
    out = []
    while pos < end:
        v, pos = _varint(buf, pos)
        out.append(_signed64(v))
    return out


# TensorFlow DataType enum values → numpy dtypes (types.proto)
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_}


def _decode_shape(buf: bytes, span: tuple[int, int]) -> list[int]:
    dims = []
    for num, _, val in _fields(buf, *span):
        if num == 2:  # Dim
            size = 0
            for dnum, _, dval in _fields(buf, *val):
                if dnum == 1:
                    size = _signed64(dval)
            dims.append(size)
    return dims


def _decode_tensor(buf: bytes, span: tuple[int, int]) -> np.ndarray | None:
    """TensorProto → numpy array (numeric dtypes only; strings and others give None)."""
    dtype_enum, shape, content = 0, [], None
    floats: list[float] = []
    ints: list[int] = []
    doubles: list[float] = []
    for num, wt, val in _fields(buf, *span):
        if num == 1:
            dtype_enum = val
        elif num == 2:
            shape = _decode_shape(buf, val)
        elif num == 4:
            content = buf[val[0]:val[1]]
        elif num == 5:  # float_val, packed or not
            if wt == 2:
                floats += struct.unpack(f"<{(val[1] - val[0]) // 4}f", buf[val[0]:val[1]])
            else:
                floats.append(struct.unpack("<f", val)[0])
        elif num == 6:  # double_val
            if wt == 2:
                doubles += struct.unpack(f"<{(val[1] - val[0]) // 8}d", buf[val[0]:val[1]])
            else:
                doubles.append(struct.unpack("<d", val)[0])
        elif num in (7, 10, 11):  # int_val, int64_val, bool_val
            if wt == 2:
                ints += _packed_varints(buf, val)
            else:
                ints.append(_signed64(val))
    dtype = _TF_DTYPES.get(dtype_enum)
    if dtype is None:
        return None
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    else:
        vals = floats or doubles or ints
        arr = np.array(vals, dtype=dtype)
        if arr.size not in (0, count):
            # TF repeats the last value to fill the shape
            arr = np.concatenate([arr, np.full(count - arr.size, arr[-1], dtype=dtype)])
        elif arr.size == 0:
            arr = np.zeros(count, dtype=dtype)
    if arr.size != count:
        raise ValueError(f"tensor holds {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _decode_attr(buf: bytes, span: tuple[int, int]):
    """AttrValue → python value: bytes, int, float, bool, ndarray, or a list of ints/floats/bytes."""
    for num, wt, val in _fields(buf, *span):
        if num == 2:
            return bytes(buf[val[0]:val[1]])
        if num == 3:
            return _signed64(val)
        if num == 4:
            return struct.unpack("<f", val)[0]
        if num == 5:
            return bool(val)
        if num == 6:
            return int(val)
        if num == 8:
            return _decode_tensor(buf, val)
        if num == 1:  # ListValue
            items: list = []
            for lnum, lwt, lval in _fields(buf, *val):
                if lnum == 2:
                    items.append(bytes(buf[lval[0]:lval[1]]))
                elif lnum == 3:
                    items += _packed_varints(buf, lval) if lwt == 2 else [_signed64(lval)]
                elif lnum == 4:
                    if lwt == 2:
                        items += struct.unpack(f"<{(lval[1] - lval[0]) // 4}f", buf[lval[0]:lval[1]])
                    else:
                        items.append(struct.unpack("<f", lval)[0])
            return items
    return None


@dataclass
class Node:
    """The parts of a TF NodeDef evalkit reads."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attr: dict = field(default_factory=dict)


def parse_graphdef(data: bytes) -> tuple[dict[str, Node], int]:
    """Decode a serialized GraphDef. Returns ({node name: Node}, producer version).

    Raises ValueError on bytes that are not a well-formed GraphDef.
    """
    nodes: dict[str, Node] = {}
    producer = 0
    for num, wt, val in _fields(data):
        if num == 1 and wt == 2:  # NodeDef
            node = Node("", "")
            for nnum, nwt, nval in _fields(data, *val):
                if nwt != 2:
                    continue
                if nnum == 1:
                    node.name = data[nval[0]:nval[1]].decode()
                elif nnum == 2:
                    node.op = data[nval[0]:nval[1]].decode()
                elif nnum == 3:
                    node.inputs.append(data[nval[0]:nval[1]].decode())
                elif nnum == 5:  # map<string, AttrValue> entry
                    key, value_span = "", None
                    for anum, _, aval in _fields(data, *nval):
                        if anum == 1:
                            key = data[aval[0]:aval[1]].decode()
                        elif anum == 2:
                            value_span = aval
                    if value_span is not None:
                        node.attr[key] = _decode_attr(data, value_span)
            if not node.name or not node.op:
                raise ValueError("a NodeDef without name or op")
            nodes[node.name] = node
        elif num == 4 and wt == 2:  # VersionDef
            for vnum, vwt, vval in _fields(data, *val):
                if vnum == 1 and vwt == 0:
                    producer = vval
        elif num not in (2, 3):
            raise ValueError(f"unexpected GraphDef field {num}")
    return nodes, producer


# ---------------------------------------------------------------------------------------------
# Sources → canonical parameter dict

@dataclass
class InceptionWeights:
    """Canonical Inception-2015 parameters: TF constant name → float32 array in TF layout."""

    params: dict[str, np.ndarray]
    source: str              # file name the weights came from
    source_sha256: str       # sha256 of that original file (.pb or .pth)
    source_format: str       # "pb", "pth" or "evalkit"
    bn_epsilon: float = layout.BN_EPSILON


def _check_params(params: dict[str, np.ndarray], path: Path, what: str) -> dict[str, np.ndarray]:
    """All parameters present with the right shapes, as float32; else WeightsError naming the file."""
    shapes = layout.param_shapes()
    missing = [k for k in shapes if k not in params]
    if missing:
        raise WeightsError(f"{path}: not the Inception-2015 {what}: {len(missing)} of {len(shapes)} "
                           f"parameters missing (e.g. {', '.join(missing[:5])})")
    out = {}
    for name, shape in shapes.items():
        arr = np.asarray(params[name])
        if tuple(arr.shape) != shape:
            raise WeightsError(f"{path}: parameter {name} has shape {tuple(arr.shape)}, expected {shape} "
                               f"(not the Inception-2015 network)")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise WeightsError(f"{path}: parameter {name} holds NaN or inf (corrupted weights)")
        out[name] = arr
    return out


def params_from_graphdef(path: str | os.PathLike, data: bytes | None = None) -> InceptionWeights:
    """Read the Inception-2015 parameters from a frozen GraphDef (``classify_image_graph_def.pb``).

    Checks that the graph has the node names the evaluator uses (``ExpandDims``, ``pool_3``,
    ``mixed_6/conv`` (a Relu), ``softmax/logits/MatMul``, …), the preprocessing constants
    (``Sub`` 128, ``Mul`` 1/128, resize to 299×299, align_corners false) and every conv/batch-norm constant
    with its expected shape; gamma is replaced by ones where ``scale_after_normalization`` is false.
    Raises WeightsError naming the file and what is missing or wrong.
    """
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    try:
        nodes, _ = parse_graphdef(data)
    except (ValueError, UnicodeDecodeError, struct.error, IndexError) as exc:
        raise WeightsError(f"{path}: not a TensorFlow GraphDef protobuf ({exc})") from None
    wanted = list(REQUIRED_NODES) + [n for n in layout.param_names()] + [
        f"{u.scope}/batchnorm" for u in layout.all_units()]
    missing = [n for n in wanted if n not in nodes]
    if missing:
        raise WeightsError(f"{path}: not the Inception-2015 graph: {len(missing)} node(s) missing: "
                           f"{', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if nodes[layout.SPATIAL_TENSOR].op != "Relu":
        raise WeightsError(f"{path}: node {layout.SPATIAL_TENSOR} is a {nodes[layout.SPATIAL_TENSOR].op}, "
                           f"expected Relu (not the Inception-2015 graph)")

    def const(name: str) -> np.ndarray:
        node = nodes[name]
        value = node.attr.get("value") if node.op == "Const" else None
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: node {name} is a {node.op} without a numeric value, expected a Const")
        return value

    # preprocessing constants must be the ones the torch port hard-codes
    checks = {"Sub": 128.0, "Mul": 1.0 / 128.0}
    for op_name, expected in checks.items():
        const_inputs = [i for i in nodes[op_name].inputs if i in nodes and nodes[i].op == "Const"]
        values = [float(np.asarray(const(i)).reshape(-1)[0]) for i in const_inputs]
        if values != [expected]:
            raise WeightsError(f"{path}: node {op_name} uses constant(s) {values}, expected [{expected}]")
    resize = nodes["ResizeBilinear"]
    size_inputs = [i for i in resize.inputs if i in nodes and nodes[i].op == "Const"]
    if len(size_inputs) != 1 or const(size_inputs[0]).tolist() != [layout.INPUT_SIZE] * 2:
        raise WeightsError(f"{path}: ResizeBilinear does not resize to {layout.INPUT_SIZE}x{layout.INPUT_SIZE}")
    if resize.attr.get("align_corners", False) or resize.attr.get("half_pixel_centers", False):
        raise WeightsError(f"{path}: ResizeBilinear uses align_corners/half_pixel_centers; evalkit implements "
                           f"only the legacy TF1 mode of the 2015 graph")

    params = {name: const(name) for name in layout.param_names()}
    epsilons = set()
    for unit in layout.all_units():
        bn = nodes[f"{unit.scope}/batchnorm"]
        epsilons.add(float(bn.attr.get("variance_epsilon", layout.BN_EPSILON)))
        if not bn.attr.get("scale_after_normalization", True):
            params[f"{unit.scope}/batchnorm/gamma"] = np.ones(unit.cout, np.float32)
    if len(epsilons) != 1:
        raise WeightsError(f"{path}: batch-norm epsilons differ between layers ({sorted(epsilons)})")
    params = _check_params(params, path, "graph")
    sha = sha256_bytes(data)
    return InceptionWeights(params, path.name, sha, "pb", epsilons.pop())


def tf_to_torchvision_names() -> dict[str, str]:
    """TF constant name → pytorch-fid/torchvision state-dict key (``fid_inception_v3()`` layout)."""
    names = {}
    for unit in layout.all_units():
        names[f"{unit.scope}/conv2d_params"] = f"{unit.torchvision}.conv.weight"
        for p in layout.BN_PARAMS:
            names[f"{unit.scope}/batchnorm/{p}"] = f"{unit.torchvision}.{layout.TORCHVISION_BN[p]}"
    names["softmax/weights"] = "fc.weight"
    names["softmax/biases"] = "fc.bias"
    return names


def _to_torchvision_layout(name: str, arr: np.ndarray) -> np.ndarray:
    if name.endswith("conv2d_params"):
        return np.ascontiguousarray(arr.transpose(3, 2, 0, 1))  # [kh,kw,in,out] → [out,in,kh,kw]
    if name == "softmax/weights":
        return np.ascontiguousarray(arr.T)
    return arr


def _from_torchvision_layout(name: str, arr: np.ndarray) -> np.ndarray:
    if name.endswith("conv2d_params"):
        return np.ascontiguousarray(arr.transpose(2, 3, 1, 0)) if arr.ndim == 4 else arr
    if name == "softmax/weights":
        return np.ascontiguousarray(arr.T) if arr.ndim == 2 else arr
    return arr


def to_torchvision_state_dict(weights: InceptionWeights) -> dict[str, np.ndarray]:
    """The parameters under pytorch-fid's key names and layouts (conv ``[out, in, kh, kw]``, fc ``[1008, 2048]``)."""
    names = tf_to_torchvision_names()
    return {names[k]: _to_torchvision_layout(k, v) for k, v in weights.params.items()}


def params_from_torchvision(state: dict, path: str | os.PathLike, sha256: str) -> InceptionWeights:
    """Map a pytorch-fid/torchvision-named state dict (e.g. ``pt_inception-2015-12-05-6726825d.pth``).

    ``num_batches_tracked`` buffers are ignored; other unexpected keys or missing keys raise WeightsError.
    """
    path = Path(path)
    names = tf_to_torchvision_names()
    inverse = {v: k for k, v in names.items()}
    unexpected = [k for k in state if k not in inverse and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise WeightsError(f"{path}: unexpected keys for pytorch-fid's Inception ({len(unexpected)}: "
                           f"{', '.join(unexpected[:5])})")
    missing = [v for v in names.values() if v not in state]
    if missing:
        raise WeightsError(f"{path}: not pytorch-fid's Inception-2015 weights: {len(missing)} key(s) missing "
                           f"(e.g. {', '.join(missing[:5])})")
    params = {}
    for tv_key, tf_key in inverse.items():
        value = state[tv_key]
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        params[tf_key] = _from_torchvision_layout(tf_key, arr)
    params = _check_params(params, path, "state dict")
    return InceptionWeights(params, path.name, sha256, "pth", layout.BN_EPSILON)


def params_from_pth(path: str | os.PathLike) -> InceptionWeights:
    """Load pytorch-fid's ``.pth`` with ``torch.load(weights_only=True)`` (no code is unpickled)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise WeightsError(f"{path}: cannot be read as a weights-only torch state dict ({exc})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return params_from_torchvision(state, path, sha256_file(path))


# ---------------------------------------------------------------------------------------------
# evalkit's converted file

def save_evalkit(weights: InceptionWeights, path: str | os.PathLike) -> Path:
    """Write the canonical parameters as evalkit's ``.npz`` (atomically; no pickles)."""
    path = Path(path)
    meta = {"format": EVALKIT_FORMAT, "version": EVALKIT_FORMAT_VERSION, "source": weights.source,
            "source_sha256": weights.source_sha256, "source_format": weights.source_format,
            "bn_epsilon": weights.bn_epsilon}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **weights.params, **{META_KEY: np.array(json.dumps(meta))})
    return path


def load_evalkit(path: str | os.PathLike) -> InceptionWeights:
    """Read evalkit's converted ``.npz`` (``allow_pickle=False``); WeightsError if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if META_KEY not in f.files:
                raise WeightsError(f"{path}: an .npz without evalkit's Inception metadata ({META_KEY})")
            meta = json.loads(str(f[META_KEY]))
            params = {k: f[k] for k in f.files if k != META_KEY}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: unreadable evalkit weights file ({exc})") from None
    if meta.get("format") != EVALKIT_FORMAT or meta.get("version") != EVALKIT_FORMAT_VERSION:
        raise WeightsError(f"{path}: format {meta.get('format')} v{meta.get('version')}, expected "
                           f"{EVALKIT_FORMAT} v{EVALKIT_FORMAT_VERSION}")
    params = _check_params(params, path, "converted weights")
    return InceptionWeights(params, meta["source"], meta["source_sha256"], "evalkit", float(meta["bn_epsilon"]))


def sniff_format(path: str | os.PathLike) -> str:
    """Guess a weights file's format from its bytes: "evalkit", "pth" or "pb"."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
        if f"{META_KEY}.npy" in members:
            return "evalkit"
        return "pth"
    if head[:1] == b"\x80":  # legacy torch.save pickle (protocol 2)
        return "pth"
    return "pb"


def load_weights_file(path: str | os.PathLike, expect: str | None = None) -> InceptionWeights:
    """Load Inception-2015 weights from any supported file (evalkit ``.npz``, pytorch-fid ``.pth``, ``.pb``),
    checking every tensor and shape. `expect` ("pb", "pth", "evalkit") refuses a file of another format."""
    kind = sniff_format(path)
    if expect is not None and kind != expect:
        raise WeightsError(f"{path}: a {kind} file, expected a {expect} file")
    if kind == "evalkit":
        return load_evalkit(path)
    if kind == "pth":
        return params_from_pth(path)
    return params_from_graphdef(path)
