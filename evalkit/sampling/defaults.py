"""Defaults of the sampling options, importable without torch (the CLI shows them in --help)."""

#: Labels of a class-conditional ImageNet model (the default range of ``--classes``).
NUM_CLASSES = 1000
#: Default number of samples per network call (``--compute-chunk``). Every network call of the harness
#: runs on chunks of exactly this many samples (the last chunk padded with copies of its first row,
#: whose outputs are dropped). CPU and GPU kernels round differently for different batch shapes, but
#: identically for every position of a fixed shape, so each sample gets the same bits whatever
#: --batch-size is. Part of a run's identity; larger chunks are faster on GPUs.
COMPUTE_CHUNK = 16
