"""evalkit: evaluate image generative models the way ADM (Dhariwal & Nichol 2021) did.

The pipeline flows one way:
checkpoint -> sampler -> sample store -> feature extractor -> feature cache -> metrics
-> results table -> plots/report.
"""

__version__ = "0.1.0"
