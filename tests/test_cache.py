"""Feature cache: keys name everything that changes the numbers; hits skip extraction; writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_extractor
from tiny_extractor import CALLS, make_images

from evalkit import cache
from evalkit.evaluate import build_extractor, compute_features, evaluate
from evalkit.store import write_npz
from evalkit.options import ScoreOptions

IDENTITY = {"name": "inception", "backend": "torch", "weights_sha256": "ab" * 32, "resize": "tf1-bilinear"}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    CALLS.clear()
    return tmp_path / "cache"


@pytest.fixture
def batches(tmp_path):
    paths = {}
    for name, n, seed, shift in (("ref", 50, 1, 30), ("s1", 37, 2, 0), ("s2", 41, 3, 10)):
        paths[name] = tmp_path / f"{name}.npz"
        write_npz(paths[name], make_images(n, seed, shift=shift))
    return paths


def _features(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"pool": rng.random((n, 16), np.float32), "spatial": rng.random((n, 8), np.float32),
            "logits": rng.random((n, 10), np.float32)}


def test_key_changes_with_everything_that_changes_numbers(cache_root):
    base = cache.cache_path(cache.feature_key("c0ffee", 10, IDENTITY))
    assert base == cache.cache_path(cache.feature_key("c0ffee", 10, dict(IDENTITY)))
    assert base.parent == cache_root / "features" and base.suffix == ".h5"
    variants = [cache.feature_key("c0ffef", 10, IDENTITY), cache.feature_key("c0ffee", 11, IDENTITY)]
    for field, value in (("name", "inception-tf"), ("backend", "tf"), ("weights_sha256", "cd" * 32),
                         ("resize", "pytorch-bilinear")):
        variants.append(cache.feature_key("c0ffee", 10, {**IDENTITY, field: value}))
    paths = {cache.cache_path(k) for k in variants}
    assert base not in paths and len(paths) == len(variants)


def test_store_and_load_roundtrip_atomic(cache_root):
    key = cache.feature_key("c0ffee", 5, IDENTITY)
    assert cache.load_cached(key) is None
    feats = _features()
    path = cache.store_cached(key, feats)
    loaded = cache.load_cached(key)
    for name in ("pool", "spatial", "logits"):
        np.testing.assert_array_equal(loaded[name], feats[name])
        assert loaded[name].dtype == np.float32
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left
    _, attrs = cache.read_features(path)
    assert attrs["key"] == cache.key_json(key)


def test_file_under_another_key_is_not_trusted(cache_root):
    key_a = cache.feature_key("aaaa", 5, IDENTITY)
    key_b = cache.feature_key("bbbb", 5, IDENTITY)
    # Put B's features at A's path (a collision or a tampered file).
    cache.write_features(cache.cache_path(key_a), _features(), {"key": cache.key_json(key_b)})
    with pytest.warns(UserWarning, match="another key"):
        assert cache.load_cached(key_a) is None
    cache.cache_path(key_a).write_bytes(b"not hdf5")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.load_cached(key_a) is None


def test_failed_write_leaves_nothing(cache_root):
    key = cache.feature_key("c0ffee", 5, IDENTITY)
    with pytest.raises(KeyError):
        cache.store_cached(key, {"pool": np.zeros((5, 2), np.float32)})  # spatial/logits missing
    assert not cache.features_dir().exists() or list(cache.features_dir().iterdir()) == []


def test_compute_features_hits_cache(cache_root, batches):
    ex = build_extractor("tiny-test", "cpu")
    first = compute_features(batches["ref"], ex, ScoreOptions(batch_size=16, progress=False))
    assert CALLS["tiny-test"] == 50
    second = compute_features(batches["ref"], ex, ScoreOptions(batch_size=16, progress=False))
    assert CALLS["tiny-test"] == 50  # extractor not called again
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    compute_features(batches["ref"], ex, ScoreOptions(batch_size=16, progress=False, cache=False))
    assert CALLS["tiny-test"] == 100  # cache bypassed
    # Another extractor identity is another key.
    compute_features(batches["ref"], build_extractor("tiny-test-alt", "cpu"), ScoreOptions(progress=False))
    assert CALLS["tiny-test-alt"] == 50
    # Changed file content is another key.
    write_npz(batches["ref"], make_images(50, 99))
    compute_features(batches["ref"], ex, ScoreOptions(progress=False))
    assert CALLS["tiny-test"] == 150


def test_features_do_not_depend_on_batch_size(cache_root, batches):
    ex = build_extractor("tiny-test", "cpu")
    a = compute_features(batches["s1"], ex, ScoreOptions(batch_size=5, progress=False, cache=False))
    b = compute_features(batches["s1"], ex, ScoreOptions(batch_size=64, progress=False, cache=False))
    whole = ex(make_images(37, 2))
    for name in a:
        assert a[name].shape == (37, ex.feature_dims[name])
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(a[name], whole[name], rtol=0, atol=1e-6)


def test_scoring_two_samples_extracts_reference_once(cache_root, batches):
    ex = build_extractor("tiny-test", "cpu")
    r1 = evaluate(batches["s1"], batches["ref"], ex, ScoreOptions(progress=False))
    r2 = evaluate(batches["s2"], batches["ref"], ex, ScoreOptions(progress=False))
    assert CALLS["tiny-test"] == 50 + 37 + 41
    assert r1["fid"] != r2["fid"]
    # Re-scoring is served entirely from the cache and gives the same numbers.
    assert evaluate(batches["s1"], batches["ref"], ex, ScoreOptions(progress=False))["fid"] == r1["fid"]
    assert CALLS["tiny-test"] == 50 + 37 + 41


def test_tiny_extractor_outputs_vary():
    out = build_extractor("tiny-test", "cpu")(make_images(20, 5))
    for name, array in out.items():
        assert array.std(axis=0).min() > 1e-3, name
    assert tiny_extractor.TinyExtractor("a", 0).identity()["weights_sha256"] != \
        tiny_extractor.TinyExtractor("a", 1).identity()["weights_sha256"]
