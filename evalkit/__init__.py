"""evalkit: evaluate image generative models the way ADM (Dhariwal & Nichol 2021) did.

The pipeline flows one way:
checkpoint -> sampler -> sample store -> feature extractor -> feature cache -> metrics
-> results table -> plots/report.
"""

__version__ = "0.1.0"

#: The openai/guided-diffusion commit whose samplers and evaluator evalkit reproduces.
REFERENCE_COMMIT = "22e0df8183507e13a7813f8d38d51b072ca1e67c"
