"""Feature networks: the canonical Inception-2015 extractor (default) and a registry for others."""

from evalkit.features.registry import (  # noqa: F401
    FEATURE_NAMES,
    FeatureExtractor,
    describe_extractors,
    extractor_names,
    get_extractor,
    register_extractor,
)

DEFAULT_EXTRACTOR = "inception"
