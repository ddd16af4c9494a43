"""Content hashes: the one sha256 helper every module uses for files, bytes and streams."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Iterable

CHUNK = 1 << 22  # bytes read per step; 4 MiB keeps memory flat for files of any size


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    """Hex sha256 of the concatenation of `chunks`."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_stream(stream: BinaryIO, chunk_size: int = CHUNK) -> str:
    """Hex sha256 of everything left in the binary `stream`."""
    return sha256_chunks(iter(lambda: stream.read(chunk_size), b""))


def sha256_file(path: str | os.PathLike, chunk_size: int = CHUNK) -> str:
    """Hex sha256 of the file at `path`, read in chunks."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, chunk_size)
