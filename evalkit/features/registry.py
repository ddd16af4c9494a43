"""Registry of feature networks ("extractors"). The Inception-2015 network is the default.

A feature extractor turns a batch of uint8 NHWC images into named float32 feature arrays:

* ``pool``    [N, D_pool]  features for the Fréchet distance (FID) and precision/recall;
* ``spatial`` [N, D_spat]  features for the spatial Fréchet distance (sFID);
* ``logits``  [N, K]       class logits whose softmax gives the Inception Score.

To plug in your own network, write a factory that returns an object with the attributes below and
register it::

    from evalkit.features import register_extractor

    class MyExtractor:
        name = "my-net"
        feature_dims = {"pool": 512, "spatial": 256, "logits": 10}
        def identity(self):      # everything that changes the numbers; becomes part of cache keys
            return {"name": self.name, "weights_sha256": "...", "backend": "torch"}
        def __call__(self, images):   # uint8 [N, H, W, 3] numpy -> dict of float32 numpy arrays
            ...

    register_extractor("my-net", lambda device="cpu", **kw: MyExtractor())

Then ``evalkit score --features my-net ...``; its numbers are labelled "FD (my-net features)" etc.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from evalkit.errors import ConfigError

FEATURE_NAMES = ("pool", "spatial", "logits")


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    feature_dims: dict[str, int]

    def identity(self) -> dict: ...

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


ExtractorFactory = Callable[..., FeatureExtractor]

_EXTRACTORS: dict[str, ExtractorFactory] = {}


def register_extractor(name: str, factory: ExtractorFactory, description: str = "") -> None:
    """Register `factory(device=..., **options)` under `name`. Names are lowercase, unique."""
    if not name or name != name.strip().lower() or " " in name:
        raise ValueError(f"extractor name {name!r} must be a non-empty lowercase word")
    if name in _EXTRACTORS:
        raise ValueError(f"extractor {name!r} is already registered")
    _EXTRACTORS[name] = factory


def extractor_names() -> list[str]:
    return sorted(_EXTRACTORS)


def get_extractor(name: str, **options) -> FeatureExtractor:
    """Build the extractor registered as `name`; an unknown name lists the known ones."""
    try:
        factory = _EXTRACTORS[name]
    except KeyError:
        raise ConfigError(f"--features: unknown feature network {name!r}; known: {', '.join(extractor_names())}") from None
    return factory(**options)
