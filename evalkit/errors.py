"""Errors evalkit raises for bad input. The CLI turns each into one line and a non-zero exit.

Messages say what was found, what was expected, and which file or option.
"""


class EvalkitError(Exception):
    """Base class of every user-facing evalkit error."""


class InputError(EvalkitError):
    """A file, array or option does not hold what evalkit expected."""


class BatchFormatError(InputError):
    """A sample or reference batch is unreadable or malformed."""


class FeatureError(InputError):
    """Feature arrays are malformed (NaN/inf, wrong rank, mismatched dimensions, too few rows)."""


class WeightsError(EvalkitError):
    """Network weights are missing, corrupted (sha256 mismatch) or of the wrong architecture."""


class CheckpointError(WeightsError):
    """A diffusion/classifier checkpoint does not match the preset or flags it was loaded with."""


class ConfigError(InputError):
    """Unknown preset, malformed flags, or options that contradict each other."""


class RunDirectoryError(EvalkitError):
    """An output directory holds another run, or cannot be written."""


class LockError(EvalkitError):
    """A file shared by several jobs is locked by another process past the wait, or cannot be locked."""
