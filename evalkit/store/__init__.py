"""Sample store: read and write image batches in guided-diffusion's npz layout (and folders, HDF5).

``open_batch(path)`` streams images from an npz (``arr_0`` N×H×W×3 uint8, optional ``arr_1`` labels and
precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``), an image folder or an HDF5 file; ``NpzWriter`` and
``write_npz`` write npz files the reference evaluator (openai/guided-diffusion commit
22e0df8183507e13a7813f8d38d51b072ca1e67c, ``evaluations/evaluator.py``) reads unchanged.
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
from evalkit.store.writer import NpzWriter, write_npz

__all__ = [
    "STAT_KEYS",
    "BatchReader",
    "FolderReader",
    "Hdf5Reader",
    "NpzReader",
    "NpzWriter",
    "describe_batch",
    "open_batch",
    "write_npz",
]
