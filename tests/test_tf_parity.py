"""Parity of the torch Inception port with TensorFlow running the same GraphDef, as the reference evaluator does.

The GraphDef is a random-weight mimic of `classify_image_graph_def.pb` (tests/tf_graph_builder.py), weights
scaled per evaluator spec §12 so that features differ across images and a wrong preprocessing step shows.
Chain under test: GraphDef --(evalkit's own protobuf reader)--> torch extractor, versus TensorFlow importing
the same bytes with input_map ExpandDims:0 (evalkit.features.tf_backend). Tolerance: 1e-4 max abs (float32
conv accumulation order of TF's and torch's kernels; TF's own oneDNN on/off noise is ~1e-6).
The graph is built from evalkit's own `inception_layout` table, so this checks the protobuf reader, the
resize and the TF backend, not the layout: test_inception_oracle.py holds the independent ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evalkit.features.inception as inception_mod
from evalkit.errors import WeightsError
from evalkit.features import get_extractor, load_inception, tf1_resize_bilinear
from evalkit.features.resize import tf1_resize_bilinear as _resize
from evalkit.metrics.keys import metric_labels
from tf_graph_builder import build_inception_graphdef, make_images, session_pb

pytestmark = [pytest.mark.tf, pytest.mark.parity]

TOL = 1e-4
SIZES = (64, 128, 256, 512)


@pytest.fixture(scope="module")
def pb_path(tmp_path_factory):
    return session_pb(tmp_path_factory)


@pytest.fixture(scope="module")
def torch_ex(pb_path):
    return load_inception(pb_path)


@pytest.fixture(scope="module")
def tf_ex(pb_path):
    ex = get_extractor("inception-tf", path=pb_path)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def tf_features(tf_ex):
    """TF features of 2 images per input size, computed once."""
    return {size: (imgs, tf_ex(imgs)) for size in SIZES for imgs in [make_images(2, size, seed=size)]}


def _max_diff(a: dict, b: dict) -> dict:
    return {k: float(np.abs(a[k] - b[k]).max()) for k in ("pool", "spatial", "logits")}


@pytest.mark.parametrize("size", SIZES)
def test_resize_matches_tf_legacy(size):
    import tensorflow as tf

    x = make_images(2, (size, size + 8), seed=size).astype(np.float32)
    ref = tf.compat.v1.image.resize_bilinear(x, [299, 299], align_corners=False, half_pixel_centers=False).numpy()
    ours = tf1_resize_bilinear(torch.from_numpy(x)).numpy()
    assert np.abs(ours - ref).max() <= TOL
    half_pixel = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1).numpy()
    assert np.abs(half_pixel - ref).max() > 100 * TOL  # the test can tell the conventions apart


@pytest.mark.parametrize("size", SIZES)
def test_torch_matches_tf_backend(size, torch_ex, tf_features):
    imgs, ref = tf_features[size]
    ours = torch_ex(imgs)
    diffs = _max_diff(ours, ref)
    assert all(d <= TOL for d in diffs.values()), diffs
    # the features really depend on the image: far above the tolerance across images
    std = ref["pool"].std(0)
    assert np.median(std) > 10 * TOL and (std > TOL).mean() > 0.7
    assert ref["spatial"].std(0).mean() > 10 * TOL and ref["logits"].std(0).mean() > 100 * TOL


def _half_pixel_preprocess(images):
    x = F.interpolate(images.to(torch.float32).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                      align_corners=False)
    return (x - 128.0) / 128.0


def _wrong_normalisation_preprocess(images):
    x = _resize(images.to(torch.float32), 299)
    return (x / 127.5 - 1.0).permute(0, 3, 1, 2)


def _nchw_flatten(mixed_6_conv):
    return mixed_6_conv[:, :7].reshape(mixed_6_conv.shape[0], -1)


@pytest.mark.parametrize("bug, attr, replacement, broken_outputs", [
    ("half-pixel resize", "preprocess", _half_pixel_preprocess, ("pool", "spatial", "logits")),
    ("x/127.5-1 normalisation", "preprocess", _wrong_normalisation_preprocess, ("pool", "spatial", "logits")),
    ("NCHW flatten of spatial", "flatten_spatial", _nchw_flatten, ("spatial",)),
])
def test_deliberate_bug_breaks_parity(bug, attr, replacement, broken_outputs, torch_ex, tf_features, monkeypatch):
    """The parity check is able to fail: each classic porting bug exceeds the tolerance by far."""
    imgs, ref = tf_features[256]
    monkeypatch.setattr(inception_mod, attr, replacement)
    diffs = _max_diff(torch_ex(imgs), ref)
    for k in broken_outputs:
        assert diffs[k] > 10 * TOL, (bug, diffs)


def test_tf_backend_identity_and_interface(tf_ex, torch_ex):
    ident = tf_ex.identity()
    assert ident["name"] == "inception-tf" and ident["backend"] == "tf"
    assert ident["weights_sha256"] == torch_ex.identity()["weights_sha256"]
    assert tf_ex.feature_dims == torch_ex.feature_dims
    assert metric_labels(tf_ex.name) == metric_labels(torch_ex.name)  # both are the Inception network: FID


def test_tf_backend_rejects_graph_without_inception_nodes(tmp_path):
    bad = tmp_path / "other_graph.pb"
    bad.write_bytes(build_inception_graphdef(seed=2, drop=("softmax/logits/MatMul",)))
    with pytest.raises(WeightsError, match=r"other_graph\.pb.*softmax/logits/MatMul"):
        get_extractor("inception-tf", path=bad)
