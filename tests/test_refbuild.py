"""`evalkit ref build` / `evalkit.refbuild.build_reference`: layout, determinism, statistics, read-back, errors.

Uses the demo's "digits" feature network on slices of the bundled 8×8 digits (fast on CPU).
"""

from __future__ import annotations

import json
import re
import zipfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from evalkit.cli import main
from evalkit.demo.data import digits_images
from evalkit.errors import BatchFormatError, ConfigError, InputError
from evalkit.evaluate import build_extractor, evaluate
from evalkit.metrics import feature_statistics, frechet_distance
from evalkit.refbuild import META_KEY, build_reference, decode_meta, reference_meta, subset_indices
from evalkit.store import write_npz
from evalkit.options import ScoreOptions

DIGITS = ["--features", "digits", "--device", "cpu", "--no-progress"]


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EVALKIT_PLUGINS", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def digits():
    return digits_images()


@pytest.fixture(scope="module")
def extractor():
    return build_extractor("digits", "cpu")


@pytest.fixture
def source(tmp_path, digits):
    """The first 400 digits as an npz with labels."""
    images, labels = digits
    path = tmp_path / "train.npz"
    write_npz(path, images[:400], labels[:400])
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_subset_indices_sorted_seeded_and_exact():
    a = subset_indices(1000, 100, seed=3)
    assert a.dtype == np.int64 and len(a) == 100 and len(np.unique(a)) == 100
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    assert np.array_equal(a, subset_indices(1000, 100, seed=3))
    assert not np.array_equal(a, subset_indices(1000, 100, seed=4))
    # The documented rule, spelled out independently.
    assert np.array_equal(a, np.sort(np.random.default_rng(3).permutation(1000)[:100]))
    assert np.array_equal(subset_indices(50, 50), np.arange(50))


def test_layout_statistics_and_meta(cache_root, source, digits, extractor, tmp_path):
    images, labels = digits
    out = build_reference(source, tmp_path / "ref.npz", extractor="digits", subset=150, seed=7, options=ScoreOptions(batch_size=37, progress=False))
    keep = np.sort(np.random.default_rng(7).permutation(400)[:150])
    # The seed's npz conventions: plain np.load, arr_0 uint8 NHWC, arr_1 labels, stats shapes.
    with np.load(out, allow_pickle=False) as f:
        assert set(f.files) == {"arr_0", "arr_1", "mu", "sigma", "mu_s", "sigma_s", META_KEY}
        arr_0, arr_1 = f["arr_0"], f["arr_1"]
        stats = {k: f[k] for k in ("mu", "sigma", "mu_s", "sigma_s")}
        meta = decode_meta(f[META_KEY])
    assert arr_0.dtype == np.uint8 and arr_0.shape == (150, 8, 8, 3)
    assert np.array_equal(arr_0, images[:400][keep]) and np.array_equal(arr_1, labels[:400][keep])
    assert stats["mu"].shape == (64,) and stats["sigma"].shape == (64, 64)
    assert stats["mu_s"].shape == (64,) and stats["sigma_s"].shape == (64, 64)
    # Statistics over ALL 400 images, exactly as the evaluator computes them (not over the subset).
    feats = extractor(images[:400])
    mu, sigma = feature_statistics(feats["pool"])
    mu_s, sigma_s = feature_statistics(feats["spatial"])
    np.testing.assert_allclose(stats["mu"], mu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats["sigma"], sigma, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["mu_s"], mu_s, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats["sigma_s"], sigma_s, rtol=1e-6, atol=1e-9)
    sub_mu, _ = feature_statistics(extractor(arr_0)["pool"])
    assert np.abs(sub_mu - stats["mu"]).max() > 1e-4  # the subset's statistics differ: the test can tell
    assert meta["extractor"] == json.loads(json.dumps(extractor.identity()))
    assert meta["features"] == "digits" and meta["subset"] == 150 and meta["seed"] == 7
    assert meta["source_num_images"] == 400 and meta["source"] == "train.npz"
    assert reference_meta(out) == meta
    # Every member is a plain array (no pickles anywhere in the zip).
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted(f"{k}.npy" for k in
                                              ("arr_0", "arr_1", "mu", "sigma", "mu_s", "sigma_s", META_KEY))


def test_subset_determinism_and_batch_size_independence(cache_root, source, tmp_path):
    a = build_reference(source, tmp_path / "a.npz", "digits", subset=100, seed=1, options=ScoreOptions(batch_size=64, progress=False))
    b = build_reference(source, tmp_path / "b.npz", "digits", subset=100, seed=1, options=ScoreOptions(batch_size=9, progress=False))
    c = build_reference(source, tmp_path / "c.npz", "digits", subset=100, seed=2, options=ScoreOptions(progress=False))
    with np.load(a) as fa, np.load(b) as fb, np.load(c) as fc:
        assert np.array_equal(fa["arr_0"], fb["arr_0"]) and np.array_equal(fa["arr_1"], fb["arr_1"])
        np.testing.assert_allclose(fa["sigma"], fb["sigma"], rtol=1e-6, atol=1e-9)
        assert not np.array_equal(fa["arr_0"], fc["arr_0"])
        np.testing.assert_array_equal(fa["mu"], fc["mu"])  # statistics do not depend on the subset


def test_cli_build_then_score_reads_it_back(cache_root, source, digits, extractor, tmp_path):
    images, _ = digits
    ref = tmp_path / "refs" / "digits_ref.npz"
    result = _run("ref", "build", source, "--out", ref, "--subset", "200", "--seed", "5", *DIGITS)
    assert result.exit_code == 0, result.output
    assert "200 of 400 images" in result.output and ref.is_file()
    samples = tmp_path / "samples.npz"
    write_npz(samples, images[1000:1100])
    scored = _run("score", samples, ref, *DIGITS, "--no-cache")
    assert scored.exit_code == 0, scored.output
    printed = dict(line.rsplit(": ", 1) for line in scored.stdout.splitlines())
    assert set(printed) == {"IS (digits features)", "FD (digits features)", "sFD (digits features)",
                            "Precision (digits features)", "Recall (digits features)"}
    # FD uses the file's statistics over all 400 images; precision/recall use its 200-image arr_0.
    result = evaluate(samples, ref, extractor, ScoreOptions(cache=False, progress=False))
    assert result["provenance"]["reference_statistics"] == "file"
    mu, sigma = feature_statistics(extractor(images[1000:1100])["pool"])
    want = frechet_distance(mu, sigma, *feature_statistics(extractor(images[:400])["pool"]))
    assert float(printed["FD (digits features)"]) == pytest.approx(want, rel=1e-6)
    assert float(printed["FD (digits features)"]) == pytest.approx(result["fid"], rel=1e-9)


def test_folder_and_hdf5_sources(cache_root, digits, tmp_path):
    images, labels = digits
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(70):
        Image.fromarray(images[i]).save(folder / f"img_{i:03d}.png")
    ref = build_reference(folder, tmp_path / "f.npz", "digits", subset=12, seed=0, options=ScoreOptions(progress=False))
    with np.load(ref) as f:
        assert "arr_1" not in f.files  # a folder has no labels
        keep = subset_indices(70, 12, 0)
        assert np.array_equal(f["arr_0"], images[:70][keep])
    h5 = tmp_path / "train.h5"
    with h5py.File(h5, "w") as f:
        f["images"] = images[:70]
        f["labels"] = labels[:70]
    ref = build_reference(h5, tmp_path / "h.npz", "digits", subset=70, options=ScoreOptions(progress=False))
    with np.load(ref) as f:
        assert np.array_equal(f["arr_0"], images[:70]) and np.array_equal(f["arr_1"], labels[:70])


def test_bad_inputs_one_line_error_and_nothing_written(cache_root, source, digits, tmp_path):
    images, _ = digits
    out = tmp_path / "out"
    out.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(images[0]).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"not a png at all")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(5):
        Image.fromarray(images[i]).save(mixed / f"ok_{i}.png")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(mixed / "tall.png")
    cases = [
        ((empty,), r"holds no images"),
        ((broken,), r"b\.png: unreadable image"),
        ((mixed,), r"mixed resolutions.*tall\.png \(8×9\)"),
        ((source, "--subset", "500"), r"holds 400 images, fewer than the requested subset of 500; pass --subset 400"),
        ((source, "--features", "nonexistent"), r"unknown feature network 'nonexistent'; known: .*digits.*inception"),
        ((tmp_path / "missing.npz",), r"no such file or folder"),
    ]
    for args, pattern in cases:
        src, *rest = args
        opts = ["--features", "digits"] if "--features" not in rest else []
        result = _run("ref", "build", src, "--out", out / "ref.npz", *opts, *rest, "--device", "cpu",
                      "--no-progress")
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert re.search(pattern, lines[0]), lines[0]
        assert _leftovers(out) == [], (args, _leftovers(out))
    result = _run("ref", "build", source, "--out", out / "ref.txt", *DIGITS)
    assert result.exit_code != 0 and ".npz" in result.output and _leftovers(out) == []


def test_library_errors_are_evalkit_errors(cache_root, source, tmp_path):
    with pytest.raises(InputError, match="fewer than the requested subset"):
        build_reference(source, tmp_path / "r.npz", "digits", subset=401, options=ScoreOptions(progress=False))
    with pytest.raises(ConfigError, match="known:"):
        build_reference(source, tmp_path / "r.npz", "no-such-net", options=ScoreOptions(progress=False))
    with pytest.raises(InputError, match="is the source batch itself"):
        build_reference(source, source.with_suffix(".npz"), "digits", subset=10, options=ScoreOptions(progress=False))
    short = tmp_path / "short.npz"
    write_npz(short, np.zeros((4, 9, 8, 3), np.uint8))
    with pytest.raises(BatchFormatError, match="8×8×3"):
        build_reference(short, tmp_path / "r.npz", "digits", subset=4, options=ScoreOptions(progress=False))
    assert not (tmp_path / "r.npz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.npz")]


def test_statistics_of_another_feature_network_are_not_used(cache_root, source, digits, tmp_path):
    import sys
    import warnings
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_extractor  # noqa: F401  (registers tiny-test and tiny-test-alt: same sizes, other weights)

    ref = build_reference(source, tmp_path / "ref.npz", extractor="tiny-test", subset=200, options=ScoreOptions(progress=False))
    samples = tmp_path / "samples.npz"
    write_npz(samples, digits[0][400:600])
    same = evaluate(samples, ref, build_extractor("tiny-test"), ScoreOptions(progress=False, cache=False))
    assert same["provenance"]["reference_statistics"] == "file"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = evaluate(samples, ref, build_extractor("tiny-test-alt"), ScoreOptions(progress=False, cache=False))
    assert other["provenance"]["reference_statistics"] == "computed"
    assert any("were computed with feature network 'tiny-test'" in str(w.message) for w in caught)
