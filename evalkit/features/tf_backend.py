"""TensorFlow reference backend: runs `classify_image_graph_def.pb` exactly as OpenAI's evaluator does.

As ``evaluations/evaluator.py`` (at ``evalkit.REFERENCE_COMMIT``) does, the graph is imported through `tf.compat.v1` with
``input_map={"ExpandDims:0": float32 placeholder [None, None, None, 3]}`` (raw 0..255 values), the features
are ``pool_3:0`` and ``mixed_6/conv:0[..., :7]``, and a second import of the same graph provides the
softmax weight (input #1 of op ``softmax/logits/MatMul``) for ``logits = pool @ W`` without bias.
Needs the `tf` extra (``pip install 'evalkit[tf]'``). Registered as the "inception-tf" extractor.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evalkit.errors import ConfigError, WeightsError
from evalkit.features.convert import REQUIRED_NODES
from evalkit.features.inception import FEATURE_DIMS, RESIZE_MODE, check_images
from evalkit.hashing import sha256_file
from evalkit.features import inception_layout as layout


def _import_tf():
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError:
        raise ConfigError("--backend tf needs TensorFlow: pip install 'evalkit[tf]'") from None
    return tf


class TFInceptionExtractor:
    """The reference evaluator's Inception graph run by TensorFlow (CPU or whatever TF picks).

    Same interface as ``InceptionExtractor``: ``extractor(uint8 [N, H, W, 3])`` →
    ``{"pool": [N, 2048], "spatial": [N, 2023], "logits": [N, 1008]}`` float32 (logits without bias).
    """

    name = "inception-tf"
    backend = "tf"
    feature_dims = dict(FEATURE_DIMS)

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 64):
        tf = _import_tf()
        if path is None:
            from evalkit import weights as weights_mod

            path = weights_mod.require("inception-pb")
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: Inception graph file not found")
        self.batch_size = int(batch_size)
        self.weights_sha256 = sha256_file(path)
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise WeightsError(f"{path}: not a TensorFlow GraphDef protobuf ({exc})") from None
        names = {n.name for n in graph_def.node}
        missing = [n for n in REQUIRED_NODES if n not in names]
        if missing:
            raise WeightsError(f"{path}: not the Inception-2015 graph: node(s) missing: {', '.join(missing)}")

        self._graph = tf.Graph()
        with self._graph.as_default():
            # feature graph: raw float32 images enter at ExpandDims:0
            self._images = tf.compat.v1.placeholder(tf.float32, shape=[None, None, None, 3])
            pool, spatial = tf.compat.v1.import_graph_def(
                graph_def, input_map={"ExpandDims:0": self._images},
                return_elements=["pool_3:0", f"{layout.SPATIAL_TENSOR}:0"], name="features")
            self._pool = pool
            self._spatial = spatial[..., : layout.SPATIAL_CHANNELS]
            # softmax graph: a second import, W = input #1 of softmax/logits/MatMul, no bias
            (matmul,) = tf.compat.v1.import_graph_def(graph_def, return_elements=["softmax/logits/MatMul"],
                                                      name="softmax")
            self._pool_in = tf.compat.v1.placeholder(tf.float32, shape=[None, layout.POOL_DIM])
            self._logits = tf.matmul(self._pool_in, matmul.inputs[1])
        self._sess = tf.compat.v1.Session(graph=self._graph)

    def identity(self) -> dict:
        """Everything that changes the numbers (used in cache keys)."""
        return {"name": self.name, "backend": self.backend, "weights_sha256": self.weights_sha256,
                "resize": RESIZE_MODE}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(images)
        out: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_DIMS}
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size].astype(np.float32)
            pool, spatial = self._sess.run([self._pool, self._spatial], {self._images: batch})
            pool = pool.reshape(pool.shape[0], -1)
            logits = self._sess.run(self._logits, {self._pool_in: pool})
            out["pool"].append(pool)
            out["spatial"].append(spatial.reshape(spatial.shape[0], -1))
            out["logits"].append(logits)
        return {k: (np.concatenate(v) if v else np.zeros((0, FEATURE_DIMS[k]), np.float32)) for k, v in out.items()}

    def close(self) -> None:
        self._sess.close()


def load_inception_tf(path: str | os.PathLike | None = None, batch_size: int = 64) -> TFInceptionExtractor:
    """The TF reference extractor over the ``.pb`` at ``path`` (default: ``weights.require("inception-pb")``)."""
    return TFInceptionExtractor(path, batch_size=batch_size)
