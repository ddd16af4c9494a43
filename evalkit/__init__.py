"""evalkit: evaluate image generative models the way ADM (Dhariwal & Nichol 2021) did.

The pipeline flows one way:
checkpoint -> sampler -> sample store -> feature extractor -> feature cache -> metrics
-> results table -> plots/report.

Python API: ``evalkit.score(samples, reference, ...)`` and ``evalkit.ReferenceStats`` (see `evalkit.api`).
"""

__version__ = "0.1.0"

#: The openai/guided-diffusion commit whose samplers and evaluator evalkit reproduces.
REFERENCE_COMMIT = "22e0df8183507e13a7813f8d38d51b072ca1e67c"

# The Python API (evalkit.api), loaded on first use so that `import evalkit` stays free of torch.
_API = ("score", "ReferenceStats", "ScoreResult")


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module("evalkit.api"), name)
    raise AttributeError(f"module 'evalkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
