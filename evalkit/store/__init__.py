"""Sample store: read and write image batches in guided-diffusion's npz layout (and folders, HDF5).

``open_batch(path)`` streams images from an npz (``arr_0`` N×H×W×3 uint8, optional ``arr_1`` labels and
precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``), an image folder or an HDF5 file (``ArrayReader``: an in-memory array); ``NpzWriter`` and
``write_npz`` write npz files the reference evaluator reads unchanged; ``evalkit.store.meta`` records
how evalkit built a reference.
"""

from evalkit.store.readers import (
    STAT_KEYS,
    BatchReader,
    FolderReader,
    Hdf5Reader,
    NpzReader,
    describe_batch,
    open_batch,
)
from evalkit.store.memory import ArrayReader
from evalkit.store.meta import META_KEY, decode_meta, encode_meta, reference_meta, statistics_network
from evalkit.store.writer import NpzWriter, write_npz

__all__ = [
    "ArrayReader",
    "META_KEY",
    "STAT_KEYS",
    "BatchReader",
    "FolderReader",
    "Hdf5Reader",
    "NpzReader",
    "NpzWriter",
    "decode_meta",
    "describe_batch",
    "encode_meta",
    "open_batch",
    "reference_meta",
    "statistics_network",
    "write_npz",
]
