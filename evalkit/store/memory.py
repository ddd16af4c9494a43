"""An in-memory batch: a uint8 N×H×W×3 array behind the store-reader interface (for the Python API).

`ArrayReader` validates the whole array once (the layout and value rules of `evalkit.store.readers`:
uint8, or integers / whole-number floats in [0, 255]; anything else is refused with the conversion to
use) and then serves it like a file reader. Its content hash is the sha256 of the image bytes (C order)
with the shape, so two equal arrays hash alike.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from evalkit.errors import BatchFormatError
from evalkit.hashing import sha256_chunks
from evalkit.store.readers import BatchReader, check_image_layout, to_uint8


class ArrayReader(BatchReader):
    """A store reader over an in-memory image array (``path`` is None; ``name`` names it in messages)."""

    format = "array"

    def __init__(self, images, name: str = "<array>", labels=None):
        super().__init__(None)
        self.name = str(name)
        if not isinstance(images, np.ndarray):
            raise BatchFormatError(f"{self.name}: found {type(images).__name__}; expected a numpy array of "
                                   f"uint8 N×H×W×3 images")
        check_image_layout(images.shape, images.dtype, self.name)
        self._images = np.ascontiguousarray(to_uint8(images, self.name))
        self.num_images = int(self._images.shape[0])
        self.image_shape = tuple(int(v) for v in self._images.shape[1:])
        self.dtype = np.dtype(np.uint8)
        self.arrays = {"arr_0": (tuple(self._images.shape), self.dtype)}
        if labels is not None:
            self.labels = self._check_labels(np.asarray(labels), "labels")

    def _read_raw(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        for s0 in range(start, stop, batch_size):
            yield self._images[s0:min(stop, s0 + batch_size)]

    def _content_sha256(self) -> str:
        header = f"uint8 {'x'.join(map(str, self._images.shape))}\n".encode()
        return sha256_chunks([header, memoryview(self._images).cast("B")])

    @property
    def file_size(self) -> int:
        return int(self.num_images * int(np.prod(self.image_shape)))

    def close(self) -> None:
        """Drop the reference to the images (the metadata and a computed content hash stay)."""
        self._images = self._images[:0]

    def __repr__(self) -> str:
        h, w, c = self.image_shape
        return f"<ArrayReader {self.name} {self.num_images}×{h}×{w}×{c}>"
