"""Low-level pieces of the `.npy` format and of zip CRC-32 that the streaming reader and writer need.

The `.npy` layout (magic, version, little-endian header length, a Python-literal dict header, then the raw
C-order data) is numpy's documented format (``numpy.lib.format``); versions 1.0, 2.0 and 3.0 differ only in
the width of the header length (2 or 4 bytes) and the header encoding (latin-1 or UTF-8). The header is
parsed with ``ast.literal_eval``, never by unpickling.
"""

from __future__ import annotations

import ast
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
# numpy aligns the end of the header (magic + length + dict + padding) to 64 bytes.
_ALIGN = 64


class NpyHeaderError(ValueError):
    """The bytes are not a readable `.npy` header (callers re-raise with the file name)."""


@dataclass(frozen=True)
class NpyHeader:
    """What a `.npy` header says: format version, shape, dtype, memory order and where the data starts."""

    version: tuple[int, int]
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_size: int  # bytes from the start of the member to the first data byte


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    """Read exactly `n` bytes (looping over short reads) or raise NpyHeaderError at end of file."""
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = fp.read(remaining)
        if not chunk:
            raise NpyHeaderError(f"ended after {n - remaining} of {n} header bytes")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_npy_header(fp: BinaryIO) -> NpyHeader:
    """Parse the `.npy` header at the current position of `fp`, leaving `fp` at the first data byte.

    Raises NpyHeaderError for a bad magic string, an unsupported version (not 1.0/2.0/3.0) or a
    malformed header dict. Object dtypes and Fortran order are reported, not rejected, here.
    """
    magic = _read_exact(fp, 8)
    if magic[:6] != NPY_MAGIC:
        raise NpyHeaderError("does not start with the .npy magic string")
    version = (magic[6], magic[7])
    if version == (1, 0):
        (hlen,) = struct.unpack("<H", _read_exact(fp, 2))
        prefix = 10
    elif version in ((2, 0), (3, 0)):
        (hlen,) = struct.unpack("<I", _read_exact(fp, 4))
        prefix = 12
    else:
        raise NpyHeaderError(f"has .npy format version {version[0]}.{version[1]} (expected 1.0, 2.0 or 3.0)")
    if hlen > 1_000_000:
        raise NpyHeaderError(f"declares an implausible header length of {hlen} bytes")
    raw = _read_exact(fp, hlen)
    try:
        text = raw.decode("utf8" if version == (3, 0) else "latin1")
        d = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise NpyHeaderError(f"has an unparsable header {raw[:80]!r}") from exc
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise NpyHeaderError(f"has a header without exactly descr/fortran_order/shape: {text.strip()[:120]!r}")
    shape = d["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise NpyHeaderError(f"has an invalid shape {shape!r}")
    if not isinstance(d["fortran_order"], bool):
        raise NpyHeaderError(f"has an invalid fortran_order {d['fortran_order']!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(d["descr"])
    except (TypeError, ValueError) as exc:
        raise NpyHeaderError(f"has an invalid dtype description {d['descr']!r}") from exc
    return NpyHeader(version, shape, dtype, d["fortran_order"], prefix + hlen)


def npy_header_bytes(dtype: np.dtype, shape: tuple[int, ...], total_size: int | None = None) -> bytes:
    """Serialise a version-1.0 C-order `.npy` header for `dtype`/`shape`.

    Without `total_size` the header is padded to numpy's 64-byte alignment. With it, the header is padded
    with spaces to exactly `total_size` bytes, so a header reserved for a large placeholder shape can later
    be overwritten in place by the header of the real, smaller shape.
    """
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(int(s) for s in shape))
    body = text.encode("latin1")
    if total_size is None:
        unpadded = 10 + len(body) + 1
        total_size = unpadded + (-unpadded % _ALIGN)
    pad = total_size - 10 - len(body) - 1
    if pad < 0 or total_size - 10 > 0xFFFF:
        raise ValueError(f"a .npy header for shape {shape} does not fit in {total_size} bytes")
    body = body + b" " * pad + b"\n"
    return NPY_MAGIC + bytes([1, 0]) + struct.pack("<H", len(body)) + body


# --- CRC-32 of a concatenation from the CRCs of its parts (zlib's crc32_combine, in GF(2) polynomial
# arithmetic modulo the reflected CRC-32 polynomial). The writer needs it because the final .npy header is
# only known after all image bytes are written and their CRC computed.
_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial, in the bit-reflected representation."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    """x^(2^n) modulo the polynomial for n = 0..31."""
    table = []
    p = 1 << 30  # x^1
    table.append(p)
    for _ in range(1, 32):
        p = _multmodp(p, p)
        table.append(p)
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` given ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``len2 = len(B)`` bytes."""
    # Multiply crc1 by x^(8 * len2), i.e. shift A past B's bytes, then add B's CRC.
    p = 1 << 31  # x^0
    n, k = len2, 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """zlib's CRC-32 (re-exported so callers use one spelling)."""
    return zlib.crc32(data, value)
