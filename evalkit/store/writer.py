"""Write evaluator-compatible npz batches incrementally, never holding all images in memory.

The file is a zip with an uncompressed (stored) ``arr_0.npy`` member, like ``np.savez`` writes and
guided-diffusion's sampling scripts produce (``scripts/image_sample.py`` at ``evalkit.REFERENCE_COMMIT``), so ``np.load`` and the reference evaluator read it. Images stream straight
into the zip member behind a ``.npy`` header reserved for a large placeholder count; at close the header is
overwritten in place with the real count (same byte length, space padded) and the member CRC-32 is
recomputed from the header's CRC and the running CRC of the image bytes (``crc32_combine``). The member is
always written with ZIP64 extensions, so members over 4 GB work. Labels (``arr_1``, int64) and small extra
arrays (statistics) are added after ``arr_0``. Everything goes to a temporary name in the target's folder,
renamed over the target only when complete; on error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from evalkit.atomic import atomic_path
from evalkit.errors import BatchFormatError
from evalkit.store._npy import crc32, crc32_combine, npy_header_bytes
from evalkit.store.readers import STAT_KEYS

# Placeholder image count the reserved header is sized for; any real count has at most as many digits.
_MAX_IMAGES = 10**15
_RESERVED = ("arr_0", "arr_1")


class NpzWriter:
    """Append uint8 N×H×W×3 batches (and optional labels) to an npz, finished atomically on close.

    Use as a context manager::

        with NpzWriter("samples.npz") as w:
            for images, labels in batches:
                w.append(images, labels)      # uint8 [b, H, W, 3], int [b]
            w.add_array("mu", mu)             # optional extra arrays (e.g. statistics)

    Leaving the block normally writes the final header and renames the file into place; leaving it with an
    exception removes the temporary file and leaves any existing target untouched. `close()` and `abort()`
    do the same without a ``with`` block.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.num_images = 0
        self.image_shape: tuple[int, int, int] | None = None
        self._labels: list[np.ndarray] | None = None  # None until the first append decides all-or-none
        self._extra: dict[str, np.ndarray] = {}
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, suffix=".npz"))
        self._fh = None
        self._zip: zipfile.ZipFile | None = None
        self._member = None
        self._crc = 0  # CRC-32 of the image bytes written so far
        self._nbytes = 0
        self._reserved_size = 0
        self._closed = False

    # --- writing
    def _start(self, image_shape: tuple[int, int, int]) -> None:
        """Open the zip and the arr_0 member, writing a header reserved for `_MAX_IMAGES` images."""
        self.image_shape = image_shape
        self._reserved_size = len(npy_header_bytes(np.uint8, (_MAX_IMAGES, *image_shape)))
        self._fh = open(self._tmp, "w+b")
        self._zip = zipfile.ZipFile(self._fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
        self._member.write(npy_header_bytes(np.uint8, (_MAX_IMAGES, *image_shape), self._reserved_size))

    def append(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append a batch: `images` uint8 [b, H, W, 3] (C-order is not required); `labels` integer [b].

        Labels are all-or-none: give them with every batch or with none. Raises BatchFormatError on a
        wrong dtype, rank, channel count, resolution change or label count.
        """
        self._check_open()
        images = np.asarray(images)
        where = f"{self.path}: append"
        if images.dtype != np.uint8:
            raise BatchFormatError(f"{where}: images have dtype {images.dtype}; expected uint8 in [0, 255]. "
                                   "Convert [-1, 1] samples as the reference sampler does: "
                                   "((x + 1) * 127.5).clip(0, 255).astype(np.uint8)")
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] == 0 or images.shape[2] == 0:
            raise BatchFormatError(f"{where}: images have shape {images.shape}; expected [b, H, W, 3] (NHWC, RGB)")
        shape = tuple(int(s) for s in images.shape[1:])
        if self.image_shape is None:
            self._start(shape)
        elif shape != self.image_shape:
            raise BatchFormatError(f"{where}: images are {shape[0]}×{shape[1]}×{shape[2]} but earlier batches were "
                                   f"{'×'.join(map(str, self.image_shape))}; expected one resolution per file")
        first = self._labels is None and self.num_images == 0
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or labels.dtype.kind not in "ui" or len(labels) != len(images):
                raise BatchFormatError(f"{where}: labels have shape {labels.shape} and dtype {labels.dtype} for "
                                       f"{len(images)} images; expected one integer label per image")
            if self._labels is None and not first:
                raise BatchFormatError(f"{where}: labels given now but not with the first {self.num_images} images; "
                                       "labels are all-or-none")
            if self._labels is None:
                self._labels = []
            self._labels.append(labels.astype(np.int64))
        elif self._labels is not None:
            raise BatchFormatError(f"{where}: no labels given but earlier batches had labels; labels are all-or-none")
        data = memoryview(np.ascontiguousarray(images).reshape(-1))  # 1-D uint8: format "B"
        self._member.write(data)
        self._crc = crc32(data, self._crc)
        self._nbytes += len(data)
        self.num_images += len(images)

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Store a small extra array under `name` (e.g. ``mu``, ``sigma``, ``mu_clip``), written at close.

        ``arr_0``/``arr_1`` are reserved for images and labels; object arrays are refused.
        """
        self._check_open()
        array = np.asarray(array)
        if not isinstance(name, str) or not name or "/" in name or name in _RESERVED:
            raise BatchFormatError(f"{self.path}: add_array name {name!r} is reserved or invalid; "
                                   "use a plain name other than arr_0 and arr_1")
        if array.dtype.hasobject:
            raise BatchFormatError(f"{self.path}: add_array {name!r} holds Python objects; expected a numeric array")
        self._extra[name] = array

    # --- finishing
    def close(self) -> None:
        """Finish the file: final header and CRC, labels and extra arrays, then rename into place."""
        if self._closed:
            return
        try:
            self._finish()
        except BaseException as exc:
            self._abort(type(exc), exc, exc.__traceback__)
            raise
        self._closed = True
        self._stack.close()

    def abort(self) -> None:
        """Discard everything written; the target path is left as it was."""
        if self._closed:
            return
        err = BatchFormatError(f"{self.path}: writing aborted")
        with contextlib.suppress(BatchFormatError):
            self._abort(type(err), err, None)

    def _abort(self, exc_type, exc, tb) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            if self._member is not None and not self._member.closed:
                self._member.close()
        with contextlib.suppress(Exception):
            if self._zip is not None:
                self._zip.close()
        with contextlib.suppress(Exception):
            if self._fh is not None:
                self._fh.close()
        # atomic_path deletes the temporary file and re-raises `exc`.
        with contextlib.suppress(BaseException):
            self._stack.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self.num_images == 0:
            raise BatchFormatError(f"{self.path}: no images were appended; expected at least one batch")
        present = [k for k in STAT_KEYS if k in self._extra]
        if present and len(present) != len(STAT_KEYS):
            missing = [k for k in STAT_KEYS if k not in self._extra]
            raise BatchFormatError(f"{self.path}: statistics {', '.join(present)} added without "
                                   f"{', '.join(missing)}; expected all of {', '.join(STAT_KEYS)} or none")
        self._member.close()
        # Overwrite the reserved header with the real one and fix the member CRC in both zip records.
        info = self._zip.getinfo("arr_0.npy")
        header = npy_header_bytes(np.uint8, (self.num_images, *self.image_shape), self._reserved_size)
        end = self._fh.tell()
        self._fh.seek(info.header_offset)
        local = self._fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise RuntimeError("zip local header not found where zipfile recorded it")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        info.CRC = crc32_combine(crc32(header), self._crc, self._nbytes)
        self._fh.seek(info.header_offset + 14)
        self._fh.write(struct.pack("<I", info.CRC))
        self._fh.seek(info.header_offset + 30 + name_len + extra_len)
        self._fh.write(header)
        self._fh.seek(end)
        # Labels and extra arrays, small, after arr_0.
        arrays = {} if self._labels is None else {"arr_1": np.concatenate(self._labels)}
        arrays.update(self._extra)
        for name, array in arrays.items():
            with self._zip.open(name + ".npy", "w", force_zip64=array.nbytes > (1 << 30)) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
        self._zip.close()
        self._fh.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BatchFormatError(f"{self.path}: the writer is already closed")

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._abort(exc_type, exc, tb)


def write_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None,
              batch_size: int = 1024, **extra_arrays: np.ndarray) -> None:
    """Write `images` (uint8 [N, H, W, 3], may be a memmap), optional `labels` (int [N]) and extra arrays
    (e.g. ``mu=..., sigma=...``) to an evaluator-compatible npz, atomically, `batch_size` images at a time."""
    with NpzWriter(path) as w:
        for i in range(0, max(len(images), 1), batch_size):
            w.append(images[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
        for name, array in extra_arrays.items():
            w.add_array(name, array)
