"""Feature networks: the canonical Inception-2015 extractor (default) and a registry for others."""

from evalkit.features.registry import (  # noqa: F401
    FEATURE_NAMES,
    FeatureExtractor,
    extractor_names,
    get_extractor,
    register_extractor,
)
from evalkit.features.resize import tf1_resize_bilinear  # noqa: F401
from evalkit.features.inception import InceptionExtractor, load_inception  # noqa: F401

DEFAULT_EXTRACTOR = "inception"


def _inception_factory(device="cpu", path=None, batch_size=64, **_):
    return load_inception(path=path, device=device, batch_size=batch_size)


def _inception_tf_factory(device=None, path=None, batch_size=64, **_):
    from evalkit.features.tf_backend import load_inception_tf

    return load_inception_tf(path=path, batch_size=batch_size)


register_extractor("inception", _inception_factory,
                   "Inception-v3 2015 graph in PyTorch, identical to OpenAI's ADM evaluator (default)")
register_extractor("inception-tf", _inception_tf_factory,
                   "the same graph run by TensorFlow, as the reference evaluator does (needs evalkit[tf])")

from evalkit.features import digits as _digits  # noqa: E402,F401  (registers "digits", the demo's network)
