"""Torch Inception port, TF1 legacy resize and the weight converters, without TensorFlow.

Random-weight graph from `tf_graph_builder` (scaled per evaluator spec §12 so features vary across images).
Parity against TensorFlow itself is in `test_tf_parity.py`.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evalkit.errors import InputError, WeightsError
from evalkit.features import get_extractor, load_inception, tf1_resize_bilinear
from evalkit.features import inception_layout as layout
from evalkit.features.convert import (
    load_evalkit,
    load_weights_file,
    params_from_graphdef,
    save_evalkit,
    sniff_format,
    to_torchvision_state_dict,
)
from evalkit.features.inception import CONVERTED_CACHE_NAME, flatten_spatial, resolve_weights
from evalkit.metrics.keys import metric_label
from tf_graph_builder import build_inception_graphdef, make_images, session_pb


@pytest.fixture(scope="module")
def pb_path(tmp_path_factory):
    return session_pb(tmp_path_factory)


@pytest.fixture(scope="module")
def extractor(pb_path):
    return load_inception(pb_path, batch_size=64)


@pytest.fixture(scope="module")
def images():
    return make_images(3, (80, 96), seed=3)


@pytest.fixture(scope="module")
def features(extractor, images):
    return extractor(images)


# ---------------------------------------------------------------------------------------------
# resize

def test_resize_known_values_upsampling():
    # width 2 → 4: src = 0, .5, 1, 1.5 → lo 0,0,1,1; hi 0,1,1,1 (clamped) → 0, 5, 10, 10
    x = torch.tensor([0.0, 10.0]).view(1, 1, 2, 1).expand(1, 2, 2, 1).contiguous()
    out = tf1_resize_bilinear(x, (2, 4))
    assert out[0, 0, :, 0].tolist() == [0.0, 5.0, 10.0, 10.0]


def test_resize_known_values_downsampling_no_antialias():
    # 512 → 299 keeps pixel (0, 0) and samples src = i * 512/299 without averaging neighbours
    x = torch.arange(512, dtype=torch.float32).view(1, 1, 512, 1).expand(1, 3, 512, 1).contiguous()
    out = tf1_resize_bilinear(x, (3, 299))[0, 0, :, 0]
    scale = np.float32(512) / np.float32(299)
    expected = np.minimum(np.arange(299, dtype=np.float32) * scale, 511)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)
    assert out[0] == 0.0


def test_resize_is_not_half_pixel_bilinear():
    x = torch.from_numpy(make_images(1, 64).astype(np.float32))
    ours = tf1_resize_bilinear(x)
    torch_half_pixel = F.interpolate(x.permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                                     align_corners=False).permute(0, 2, 3, 1)
    assert (ours - torch_half_pixel).abs().max() > 1.0


def test_resize_layouts_agree_and_identity():
    x = torch.from_numpy(make_images(2, (40, 57)).astype(np.float32))
    nhwc = tf1_resize_bilinear(x, 299)
    nchw = tf1_resize_bilinear(x.permute(0, 3, 1, 2), 299, channels_last=False)
    assert torch.equal(nhwc, nchw.permute(0, 2, 3, 1))
    assert torch.equal(tf1_resize_bilinear(x, (40, 57)), x)


# ---------------------------------------------------------------------------------------------
# converter

def test_layout_has_94_conv_units_and_472_params():
    assert len(layout.all_units()) == 94
    assert len(layout.param_names()) == 94 * 5 + 2
    assert layout.SPATIAL_DIM == 2023


def test_graphdef_conversion_reads_every_constant(pb_path):
    w = params_from_graphdef(pb_path)
    assert w.source_format == "pb" and len(w.source_sha256) == 64
    assert w.bn_epsilon == pytest.approx(0.001)
    assert w.params["mixed_6/conv/conv2d_params"].shape == (1, 1, 768, 192)
    assert w.params["mixed_9/tower/mixed/conv/conv2d_params"].shape == (1, 3, 384, 384)
    assert w.params["softmax/weights"].shape == (2048, 1008)
    # values differ between layers (the reader does not mix up tensors)
    assert not np.array_equal(w.params["conv/batchnorm/beta"], w.params["conv_1/batchnorm/beta"])


def test_graphdef_without_scale_after_normalization_ignores_gamma(tmp_path):
    pb = tmp_path / "no_scale.pb"
    pb.write_bytes(build_inception_graphdef(seed=1, scale_after_normalization=False))
    w = params_from_graphdef(pb)
    assert all(np.array_equal(w.params[f"{u.scope}/batchnorm/gamma"], np.ones(u.cout, np.float32))
               for u in layout.all_units())


def test_graphdef_missing_nodes_is_weights_error(tmp_path):
    bad = tmp_path / "not_inception.pb"
    bad.write_bytes(build_inception_graphdef(seed=1, drop=("pool_3", "mixed_6/conv")))
    with pytest.raises(WeightsError, match=r"not_inception\.pb.*missing.*(pool_3|mixed_6/conv)"):
        params_from_graphdef(bad)


def test_garbage_file_is_weights_error(tmp_path):
    bad = tmp_path / "garbage.pb"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0fjunk")
    with pytest.raises(WeightsError, match="garbage.pb"):
        load_inception(bad)


def test_evalkit_file_round_trip(pb_path, tmp_path):
    w = params_from_graphdef(pb_path)
    out = save_evalkit(w, tmp_path / "conv.npz")
    assert sniff_format(out) == "evalkit"
    back = load_evalkit(out)
    assert back.source_sha256 == w.source_sha256 and back.source == pb_path.name
    assert all(np.array_equal(back.params[k], v) for k, v in w.params.items())
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers


def test_pth_mapping_round_trip(pb_path, tmp_path, extractor, images, features):
    """A pytorch-fid-named state dict built from the converted weights loads back to the same network."""
    w = params_from_graphdef(pb_path)
    sd = to_torchvision_state_dict(w)
    assert sd["Mixed_6d.branch1x1.conv.weight"].shape == (192, 768, 1, 1)
    assert sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert sd["fc.weight"].shape == (1008, 2048)
    state = {k: torch.from_numpy(v) for k, v in sd.items()}
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
    pth = tmp_path / "pt_inception-test.pth"
    torch.save(state, pth)
    assert sniff_format(pth) == "pth"
    back = load_weights_file(pth)
    assert back.source_format == "pth" and set(back.params) == set(w.params)
    assert all(np.array_equal(back.params[k], v) for k, v in w.params.items())
    got = load_inception(pth)(images[:1])
    for k in features:
        np.testing.assert_allclose(got[k], features[k][:1], atol=1e-5, rtol=0)
    # a wrong architecture is refused with the offending key
    state.pop("Mixed_6d.branch1x1.conv.weight")
    torch.save(state, pth)
    with pytest.raises(WeightsError, match="Mixed_6d.branch1x1.conv.weight"):
        load_inception(pth)


# ---------------------------------------------------------------------------------------------
# extractor

def test_outputs_shapes_dtypes_and_variation(features):
    assert {k: v.shape for k, v in features.items()} == {"pool": (3, 2048), "spatial": (3, 2023),
                                                         "logits": (3, 1008)}
    assert all(v.dtype == np.float32 for v in features.values())
    assert (features["pool"] >= 0).all() and (features["spatial"] >= 0).all()  # post-ReLU / average of ReLU
    std = features["pool"].std(0)
    assert np.median(std) > 1e-3 and (std > 1e-4).mean() > 0.7  # features differ across images


def test_logits_are_pool_times_weights_without_bias(pb_path, features):
    w = params_from_graphdef(pb_path).params
    expected = features["pool"].astype(np.float64) @ w["softmax/weights"].astype(np.float64)
    np.testing.assert_allclose(features["logits"], expected, atol=1e-4)
    with_bias = expected + w["softmax/biases"]
    assert np.abs(features["logits"] - with_bias).max() > 0.1


def test_spatial_is_hwc_flatten_of_first_seven_channels():
    x = torch.arange(2 * 192 * 17 * 17, dtype=torch.float32).view(2, 192, 17, 17)
    flat = flatten_spatial(x)
    assert flat.shape == (2, 2023)
    h, w, c = 5, 11, 6
    assert flat[1, (h * 17 + w) * 7 + c] == x[1, c, h, w]


def test_batch_size_independence(pb_path, images, features):
    ex1 = load_inception(pb_path, batch_size=1)
    one_by_one = ex1(images)
    for k in features:
        np.testing.assert_allclose(one_by_one[k], features[k], atol=1e-5, rtol=0)


def test_any_resolution_and_dtype(extractor):
    imgs = make_images(1, (33, 50), seed=5)
    a = extractor(imgs)
    b = extractor(imgs.astype(np.float32))  # same 0..255 values as float
    np.testing.assert_array_equal(a["pool"], b["pool"])
    assert extractor(imgs[:0])["spatial"].shape == (0, 2023)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8), np.uint8), "expected \\[N, H, W, 3\\]"),
    (np.zeros((1, 8, 8, 4), np.uint8), "expected \\[N, H, W, 3\\]"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), "NaN"),
    (np.zeros((1, 8, 8, 3), np.complex64), "dtype"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images_are_input_errors(extractor, bad, message):
    with pytest.raises(InputError, match=message):
        extractor(bad)


def test_identity_labels_and_registry(pb_path, extractor):
    ident = extractor.identity()
    assert ident["name"] == "inception" and ident["backend"] == "torch"
    assert ident["resize"] == "tf1-legacy-bilinear"
    assert ident["weights_sha256"] == params_from_graphdef(pb_path).source_sha256
    assert extractor.feature_dims == {"pool": 2048, "spatial": 2023, "logits": 1008}
    assert metric_label("sfid", extractor.name) == "sFID"
    from evalkit.features import DEFAULT_EXTRACTOR

    assert DEFAULT_EXTRACTOR == "inception"
    assert get_extractor("inception", path=pb_path, device="cpu").identity() == ident


def test_default_resolution_order(pb_path, tmp_path, monkeypatch):
    """No path: converted cache → .pth → .pb (converted and cached) → require() raises."""
    found: dict[str, object] = {}

    def require(name):
        raise WeightsError(f"{name} missing: put classify_image_graph_def.pb in {tmp_path}")

    fake = types.SimpleNamespace(cache_dir=lambda: tmp_path, find=lambda name: found.get(name), require=require,
                                 sha256_file=lambda p: "0" * 64)
    monkeypatch.setitem(sys.modules, "evalkit.weights", fake)
    monkeypatch.setattr("evalkit.weights", fake, raising=False)
    with pytest.raises(WeightsError, match="classify_image_graph_def.pb"):
        resolve_weights()
    found["inception-pb"] = pb_path
    w = resolve_weights()
    assert w.source_format == "pb" and (tmp_path / CONVERTED_CACHE_NAME).is_file()
    cached = resolve_weights()  # second run reads evalkit's converted cache, keeps the .pb's sha256
    assert cached.source_format == "evalkit" and cached.source_sha256 == w.source_sha256
