"""Read sample and reference batches (npz, image folders, HDF5) batch by batch as uint8 NHWC arrays.

The npz layout is guided-diffusion's (``evaluations/evaluator.py`` and ``scripts/image_sample.py`` at
``evalkit.REFERENCE_COMMIT``): ``arr_0`` N×H×W×3 uint8 images in file order,
optional ``arr_1`` int64 labels, optional precomputed statistics ``mu``/``sigma``/``mu_s``/``sigma_s``.
``arr_0`` is streamed from the zip member exactly as the reference's ``NpzArrayReader`` does (parse the
``.npy`` header, then read ``batch * prod(shape[1:]) * itemsize`` bytes per batch), so a 39 GB batch never
sits in memory. Nothing is ever unpickled.

Non-uint8 images (a documented choice): integer arrays are accepted when every value lies in [0, 255];
float arrays are accepted, with a warning, when every value is an integer in [0, 255] (the reference casts
arr_0 to float32, so such arrays give the reference's numbers exactly). Any other float array is rejected
with the conversion the reference sampler uses, because rounding it to uint8 here would silently change
the numbers. Values are checked on a first chunk when the batch is opened (fail fast) and on every batch
as it is read (so a bad value deep in a 50,000-image file is still caught, naming the image range).
"""

from __future__ import annotations

import os
import struct
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from evalkit.errors import BatchFormatError
from evalkit.hashing import sha256_chunks, sha256_file
from evalkit.store._npy import NpyHeader, NpyHeaderError, read_npy_header

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HDF5_SUFFIXES = (".h5", ".hdf5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_PROBE_BYTES = 16 << 20  # how much of a non-uint8 arr_0 to check when opening
_FLOAT_HINT = (
    "convert samples in [-1, 1] as the reference sampler does: "
    "((x + 1) * 127.5).clip(0, 255).astype(np.uint8); samples in [0, 1]: (x * 255).round().astype(np.uint8)"
)


def _fmt_range(lo, hi) -> str:
    return f"[{lo:g}, {hi:g}]"


def check_image_layout(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Raise BatchFormatError unless `shape`/`dtype` can hold N×H×W×3 images (values checked later)."""
    if dtype.hasobject:
        raise BatchFormatError(f"{where}: holds Python objects (dtype {dtype}); expected uint8 images. "
                               "Object/pickled arrays are never loaded")
    if len(shape) != 4 or shape[3] != 3:
        hint = ""
        if len(shape) == 4 and shape[1] == 3:
            hint = " (this looks like NCHW; transpose to NHWC with x.transpose(0, 2, 3, 1))"
        raise BatchFormatError(f"{where}: images have shape {tuple(shape)}; expected N×H×W×3 (NHWC, RGB){hint}")
    if shape[1] == 0 or shape[2] == 0:
        raise BatchFormatError(f"{where}: images have shape {tuple(shape)}; height and width must be positive")
    if not (dtype.kind in "ui" or dtype.kind == "f"):
        raise BatchFormatError(f"{where}: images have dtype {dtype}; expected uint8 (or integer-valued data "
                               "in [0, 255])")


def to_uint8(batch: np.ndarray, where: str) -> np.ndarray:
    """Return `batch` as uint8, or raise BatchFormatError if its values do not fit the rules above.

    `batch`: N×H×W×3 of any integer or float dtype; uint8 input is returned as is.
    """
    if batch.dtype == np.uint8:
        return batch
    if batch.size == 0:
        return batch.astype(np.uint8)
    if batch.dtype.kind == "f":
        finite = np.isfinite(batch)
        if not finite.all():
            raise BatchFormatError(f"{where}: float images contain NaN or inf; expected uint8 in [0, 255]. "
                                   + _FLOAT_HINT)
        lo, hi = float(batch.min()), float(batch.max())
        integral = bool(np.all(batch == np.floor(batch)))
        if lo < 0 or hi > 255 or not integral:
            raise BatchFormatError(
                f"{where}: float images ({batch.dtype}) with values in {_fmt_range(lo, hi)}"
                f"{'' if integral else ', not whole numbers'}; expected uint8 in [0, 255]. " + _FLOAT_HINT)
        return batch.astype(np.uint8)
    lo, hi = int(batch.min()), int(batch.max())
    if lo < 0 or hi > 255:
        raise BatchFormatError(f"{where}: {batch.dtype} images with values in [{lo}, {hi}]; "
                               "expected uint8 values in [0, 255]")
    return batch.astype(np.uint8)


def _human_keys(keys) -> str:
    keys = list(keys)
    return ", ".join(keys) if keys else "none"


class BatchReader:
    """Common interface of every batch reader; use `open_batch` to get one.

    Attributes: ``path`` (Path), ``format`` ("npz" | "folder" | "hdf5"), ``num_images`` (int),
    ``image_shape`` ((H, W, C)), ``dtype`` (dtype of the stored images), ``labels`` (int64 [N] or None),
    ``statistics`` (dict of ``STAT_KEYS`` arrays or None), ``extra_keys`` (other array names),
    ``arrays`` (name → (shape, dtype) of every array in the file, read from headers only).
    """

    format: str = ""

    def __init__(self, path: Path):
        self.path = path
        self.num_images = 0
        self.image_shape: tuple[int, int, int] = (0, 0, 0)
        self.dtype = np.dtype(np.uint8)
        self.labels: np.ndarray | None = None
        self.extra_keys: list[str] = []
        self.arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._stat_keys_present = False
        self._statistics: dict[str, np.ndarray] | None = None
        self._hash: str | None = None

    # --- to implement per format
    def _read_raw(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _load_array(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _content_sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def file_size(self) -> int:
        """Size of the file in bytes (for a folder: the sum of its image files)."""
        return self.path.stat().st_size

    # --- shared behaviour
    @property
    def has_statistics(self) -> bool:
        """Whether the file holds all of ``STAT_KEYS`` (known from headers, without loading them)."""
        return self._stat_keys_present

    @property
    def statistics(self) -> dict[str, np.ndarray] | None:
        """Precomputed ``{"mu", "sigma", "mu_s", "sigma_s"}`` from the file (loaded on first use), or None.

        mu, mu_s: [D] float; sigma, sigma_s: [D, D] float, as stored (the reference uses them as loaded).
        """
        if not self._stat_keys_present:
            return None
        if self._statistics is None:
            self._statistics = {k: self._load_array(k) for k in STAT_KEYS}
        return self._statistics

    def _check_labels(self, labels: np.ndarray, name: str) -> np.ndarray:
        """Validate a label array against the images and return it as int64 [N]."""
        where = f"{self.path}: {name}"
        if labels.ndim != 1 or labels.dtype.kind not in "ui":
            raise BatchFormatError(f"{where}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                                   "expected a 1-D integer array")
        if len(labels) != self.num_images:
            raise BatchFormatError(f"{where}: {len(labels)} labels for {self.num_images} images; "
                                   "expected one label per image")
        return labels.astype(np.int64)

    def _check_stat_keys(self, present: set[str], shapes: dict[str, tuple[int, ...]]) -> None:
        """All or none of STAT_KEYS; mu [D] with sigma [D, D] (and the same for the spatial pair)."""
        found = [k for k in STAT_KEYS if k in present]
        if not found:
            return
        missing = [k for k in STAT_KEYS if k not in present]
        if missing:
            raise BatchFormatError(f"{self.path}: has statistics {', '.join(found)} but not {', '.join(missing)}; "
                                   f"expected all of {', '.join(STAT_KEYS)} or none")
        for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
            mu_shape, sigma_shape = shapes[mu_key], shapes[sigma_key]
            if len(mu_shape) != 1 or sigma_shape != (mu_shape[0], mu_shape[0]):
                raise BatchFormatError(f"{self.path}: {mu_key} has shape {mu_shape} and {sigma_key} {sigma_shape}; "
                                       f"expected [D] and [D, D]")
        self._stat_keys_present = True

    def _probe_values(self) -> None:
        """For non-uint8 images, check the values of a first chunk now so bad files fail at open."""
        if self.dtype == np.uint8 or self.num_images == 0:
            return
        per_image = int(np.prod(self.image_shape)) * self.dtype.itemsize
        n = int(min(self.num_images, max(1, _PROBE_BYTES // per_image)))
        for batch in self._read_raw(0, n, n):
            to_uint8(batch, f"{self.path}: images 0..{n - 1}")
        if self.dtype.kind == "f":
            warnings.warn(f"{self.path}: images are stored as {self.dtype}; whole-number values in [0, 255] are "
                          "accepted and converted to uint8 (the reference evaluator reads them as float32, so the "
                          "numbers are unchanged)", stacklevel=3)

    def iter_images(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield uint8 [b, H, W, 3] arrays for images ``start..stop-1`` in file order, ``b <= batch_size``.

        Only one batch is held at a time; the last batch is smaller when the range does not divide evenly.
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        stop = self.num_images if stop is None else stop
        if not 0 <= start <= stop <= self.num_images:
            raise ValueError(f"image range {start}..{stop} is outside 0..{self.num_images} of {self.path}")
        pos = start
        for batch in self._read_raw(start, stop, int(batch_size)):
            yield to_uint8(batch, f"{self.path}: images {pos}..{pos + len(batch) - 1}")
            pos += len(batch)

    def read_images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images ``start..stop-1`` as one uint8 [n, H, W, 3] array (for slices that fit in memory)."""
        stop = self.num_images if stop is None else stop
        n = max(stop - start, 1)
        batches = list(self.iter_images(n, start, stop))
        if not batches:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        return batches[0]

    def content_hash(self) -> str:
        """sha256 hex digest of the file bytes (folder: of sorted names and bytes); streamed, then cached."""
        if self._hash is None:
            self._hash = self._content_sha256()
        return self._hash

    def close(self) -> None:
        """Release open file handles (also done by leaving a ``with`` block)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w, c = self.image_shape
        return f"<{type(self).__name__} {self.path} {self.num_images}×{h}×{w}×{c}>"


class NpzReader(BatchReader):
    """An npz written by ``np.savez``/``np.savez_compressed``/``NpzWriter``; ``arr_0`` is streamed."""

    format = "npz"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise BatchFormatError(f"{path}: not a readable npz (zip) file ({exc}); expected an npz as written by "
                                   "np.savez with images in arr_0") from exc
        try:
            self._open()
        except BaseException:
            self._zip.close()
            raise

    def _member_header(self, member: str) -> NpyHeader:
        try:
            with self._zip.open(member) as f:
                return read_npy_header(f)
        except NpyHeaderError as exc:
            raise BatchFormatError(f"{self.path}: member {member} {exc}; expected a .npy array") from exc
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise BatchFormatError(f"{self.path}: member {member} cannot be read ({exc})") from exc

    def _open(self) -> None:
        names = self._zip.namelist()
        npy = [n for n in names if n.endswith(".npy")]
        keys = [n[:-4] for n in npy]
        if "arr_0.npy" not in names:
            found = _human_keys(keys + [n for n in names if n not in npy])
            raise BatchFormatError(f"{self.path}: no arr_0 array (keys found: {found}); "
                                   "expected images in arr_0 as written by np.savez(path, images)")
        info = self._zip.getinfo("arr_0.npy")
        self.compressed = info.compress_type != zipfile.ZIP_STORED
        headers = {k: self._member_header(k + ".npy") for k in keys}
        self.arrays = {k: (hd.shape, hd.dtype) for k, hd in headers.items()}

        # arr_0: layout from the header only
        hd = headers["arr_0"]
        where = f"{self.path}: arr_0"
        if hd.fortran_order:
            raise BatchFormatError(f"{where}: stored in Fortran order; expected a C-contiguous N×H×W×3 array "
                                   "(save np.ascontiguousarray(images))")
        check_image_layout(hd.shape, hd.dtype, where)
        self._header = hd
        self.num_images = hd.shape[0]
        self.image_shape = tuple(hd.shape[1:])
        self.dtype = hd.dtype

        self._check_stat_keys(set(keys), {k: headers[k].shape for k in STAT_KEYS if k in headers})
        for k in STAT_KEYS:
            if k in headers and headers[k].dtype.hasobject:
                raise BatchFormatError(f"{self.path}: {k} holds Python objects; expected a float array")
        if self.num_images == 0 and not self._stat_keys_present:
            raise BatchFormatError(f"{where}: holds 0 images; expected at least one (or precomputed statistics)")
        if "arr_1" in headers:
            self.labels = self._check_labels(self._load_array("arr_1"), "arr_1")
        self.extra_keys = [k for k in keys if k not in ("arr_0", "arr_1", *STAT_KEYS)]
        self._probe_values()

    def _load_array(self, name: str) -> np.ndarray:
        try:
            with self._zip.open(name + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as exc:
            raise BatchFormatError(f"{self.path}: {name} cannot be loaded without unpickling or is damaged ({exc}); "
                                   "expected a plain numeric array") from exc
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BatchFormatError(f"{self.path}: {name} cannot be read ({exc})") from exc

    def _open_member_at(self, offset: int) -> tuple[BinaryIO, int]:
        """A file object positioned `offset` bytes into arr_0.npy, and how many member bytes remain.

        A stored member is read straight from the file (seeking is O(1)); a deflated one through zipfile,
        whose seek decompresses up to the offset.
        """
        info = self._zip.getinfo("arr_0.npy")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            raw = open(self.path, "rb")
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) == 30 and local[:4] == b"PK\x03\x04":
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                raw.seek(info.header_offset + 30 + name_len + extra_len + offset)
                return raw, max(info.file_size - offset, 0)
            raw.close()
        member = self._zip.open("arr_0.npy")
        member.seek(offset)
        return member, max(info.file_size - offset, 0)

    def _read_raw(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        item_shape = self.image_shape
        per_image = int(np.prod(item_shape)) * self.dtype.itemsize
        try:
            f, remaining = self._open_member_at(self._header.header_size + start * per_image)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise BatchFormatError(f"{self.path}: arr_0 cannot be read ({exc})") from exc
        with f:
            pos = start
            while pos < stop:
                n = min(batch_size, stop - pos)
                out = np.empty((n, *item_shape), dtype=self.dtype)
                view = memoryview(out.reshape(-1).view(np.uint8))
                got = 0
                want = n * per_image
                try:
                    # Loop over short reads; never read past the member (the zip directory follows it).
                    while got < want:
                        k = f.readinto(view[got:got + min(want - got, remaining)]) if remaining else 0
                        if not k:
                            raise BatchFormatError(
                                f"{self.path}: arr_0 is truncated: the header promises {self.num_images} images "
                                f"of {per_image} bytes but the array data ends inside image {pos + got // per_image}")
                        got += k
                        remaining -= k
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    raise BatchFormatError(
                        f"{self.path}: arr_0 is damaged or truncated near image {pos} ({exc})") from exc
                yield out
                pos += n

    def close(self) -> None:
        self._zip.close()


class Hdf5Reader(BatchReader):
    """An HDF5 file with images in dataset ``images`` (or ``arr_0``), optional ``labels`` (or ``arr_1``) and
    optional ``mu``/``sigma``/``mu_s``/``sigma_s`` datasets at the top level."""

    format = "hdf5"

    def __init__(self, path: Path):
        super().__init__(path)
        import h5py

        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise BatchFormatError(f"{path}: not a readable HDF5 file ({exc})") from exc
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        import h5py

        datasets = {k: v for k, v in self._file.items() if isinstance(v, h5py.Dataset)}
        self.arrays = {k: (tuple(v.shape), v.dtype) for k, v in datasets.items()}
        image_key = next((k for k in ("images", "arr_0") if k in datasets), None)
        if image_key is None:
            raise BatchFormatError(f"{self.path}: no 'images' or 'arr_0' dataset (datasets found: "
                                   f"{_human_keys(datasets)}); expected N×H×W×3 uint8 images in 'images'")
        ds = datasets[image_key]
        where = f"{self.path}: {image_key}"
        check_image_layout(tuple(ds.shape), ds.dtype, where)
        self._images = ds
        self.num_images = ds.shape[0]
        self.image_shape = tuple(ds.shape[1:])
        self.dtype = ds.dtype
        self._check_stat_keys(set(datasets), {k: tuple(datasets[k].shape) for k in STAT_KEYS if k in datasets})
        if self.num_images == 0 and not self._stat_keys_present:
            raise BatchFormatError(f"{where}: holds 0 images; expected at least one (or precomputed statistics)")
        label_key = next((k for k in ("labels", "arr_1") if k in datasets), None)
        if label_key is not None:
            self.labels = self._check_labels(self._load_array(label_key), label_key)
        used = {image_key, label_key, *STAT_KEYS}
        self.extra_keys = [k for k in datasets if k not in used]
        self._probe_values()

    def _load_array(self, name: str) -> np.ndarray:
        ds = self._file[name]
        if ds.dtype.hasobject or ds.dtype.kind not in "uif":
            raise BatchFormatError(f"{self.path}: {name} has dtype {ds.dtype}; expected a numeric array")
        return ds[()]

    def _read_raw(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        for pos in range(start, stop, batch_size):
            try:
                yield self._images[pos:min(pos + batch_size, stop)]
            except OSError as exc:
                raise BatchFormatError(f"{self.path}: images {pos}.. cannot be read ({exc})") from exc

    def close(self) -> None:
        self._file.close()


class FolderReader(BatchReader):
    """A folder of PNG/JPEG images (not recursive), read in sorted file-name order and converted to RGB.

    Every image must have the same resolution; 8-bit modes (RGB, RGBA, L, P, CMYK, …) are converted to RGB
    (alpha is dropped); 16-bit/32-bit/float modes are rejected.
    """

    format = "folder"
    _MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}

    def __init__(self, path: Path):
        super().__init__(path)
        from PIL import Image, UnidentifiedImageError

        self._files = sorted((p for p in path.iterdir()
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                             key=lambda p: p.name)
        if not self._files:
            raise BatchFormatError(f"{path}: folder holds no images; expected PNG or JPEG files "
                                   f"({', '.join(IMAGE_SUFFIXES)})")
        sizes: dict[tuple[int, int], list[str]] = {}
        for p in self._files:
            try:
                with Image.open(p) as im:
                    size, mode = im.size, im.mode
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise BatchFormatError(f"{p}: unreadable image ({exc}); expected a PNG or JPEG file") from exc
            if mode not in self._MODES:
                raise BatchFormatError(f"{p}: image mode {mode}; expected 8-bit RGB (or L/P/RGBA, converted to RGB)")
            sizes.setdefault(size, []).append(p.name)
        if len(sizes) > 1:
            common = max(sizes, key=lambda s: len(sizes[s]))
            odd = [f"{n} ({w}×{h})" for (w, h), names in sizes.items() if (w, h) != common for n in names]
            shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
            raise BatchFormatError(f"{path}: mixed resolutions: most images are {common[0]}×{common[1]} (W×H) but "
                                   f"{shown} differ; expected one resolution")
        (w, h), = sizes
        self.num_images = len(self._files)
        self.image_shape = (h, w, 3)

    @property
    def files(self) -> list[Path]:
        """The image files in reading order."""
        return list(self._files)

    @property
    def file_size(self) -> int:
        return sum(p.stat().st_size for p in self._files)

    def _decode(self, p: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BatchFormatError(f"{p}: unreadable image ({exc}); expected a PNG or JPEG file") from exc
        if arr.shape != self.image_shape:
            raise BatchFormatError(f"{p}: decoded to {arr.shape}; expected {self.image_shape} like the other images")
        return arr

    def _read_raw(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        for pos in range(start, stop, batch_size):
            files = self._files[pos:min(pos + batch_size, stop)]
            out = np.empty((len(files), *self.image_shape), dtype=np.uint8)
            for i, p in enumerate(files):
                out[i] = self._decode(p)
            yield out

    def _content_sha256(self) -> str:
        return sha256_chunks(self._hashed_bytes())

    def _hashed_bytes(self) -> Iterator[bytes]:
        """Per image file: name length, name, size (8-byte little-endian ints), then its bytes."""
        for p in self._files:
            name = p.name.encode("utf8")
            yield len(name).to_bytes(8, "little") + name + p.stat().st_size.to_bytes(8, "little")
            with open(p, "rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")


def open_batch(path: str | os.PathLike) -> BatchReader:
    """Open a sample or reference batch for streaming reads.

    `path`: an ``.npz`` (np.savez / np.savez_compressed / NpzWriter), an HDF5 file (``.h5``/``.hdf5``, or
    any file with the HDF5 signature), or a folder of PNG/JPEG images. The format is detected from the
    content, not trusted from the suffix. Raises BatchFormatError naming the file for anything malformed.
    """
    p = Path(path)
    if p.is_dir():
        return FolderReader(p)
    if not p.exists():
        raise BatchFormatError(f"{p}: no such file or folder; expected an npz, HDF5 file or image folder")
    if not p.is_file():
        raise BatchFormatError(f"{p}: not a regular file or folder")
    try:
        with open(p, "rb") as f:
            magic = f.read(8)
    except OSError as exc:
        raise BatchFormatError(f"{p}: cannot be read ({exc})") from exc
    if magic[:4] in _ZIP_MAGICS:
        return NpzReader(p)
    if magic == _HDF5_MAGIC or p.suffix.lower() in HDF5_SUFFIXES:
        return Hdf5Reader(p)
    if magic.startswith(b"\x93NUMPY"):
        raise BatchFormatError(f"{p}: a single .npy array, not an npz; expected an npz with images in arr_0 "
                               "(np.savez(path, images))")
    raise BatchFormatError(f"{p}: not an npz (zip) or HDF5 file (starts with {magic[:8]!r}); expected an npz "
                           "with images in arr_0, an HDF5 file or an image folder")


def describe_batch(path: str) -> dict:
    """Summary of the batch at `path` as JSON-able values (what `evalkit info` prints).

    Reads headers, labels and the file size only, never the images. Keys: path, format, num_images,
    image_shape [H, W, C], dtype, labels ({count, min, max, distinct} or None), statistics (name → shape or
    None), extra_keys (name → {shape, dtype}), file_size (bytes), and for npz: compressed.
    """
    with open_batch(path) as reader:
        labels = None
        if reader.labels is not None:
            lab = reader.labels
            labels = {"count": int(len(lab)),
                      "min": int(lab.min()) if len(lab) else None,
                      "max": int(lab.max()) if len(lab) else None,
                      "distinct": int(len(np.unique(lab)))}
        statistics = None
        if reader.has_statistics:
            statistics = {k: list(reader.arrays[k][0]) for k in STAT_KEYS}
        other = {k: {"shape": list(reader.arrays[k][0]), "dtype": str(reader.arrays[k][1])}
                 for k in reader.extra_keys if k in reader.arrays}
        info = {"path": str(reader.path), "format": reader.format, "num_images": reader.num_images,
                "image_shape": list(reader.image_shape), "dtype": str(reader.dtype), "labels": labels,
                "statistics": statistics, "extra_keys": other, "file_size": reader.file_size}
        if reader.format == "npz":
            info["compressed"] = bool(reader.compressed)
        return info
