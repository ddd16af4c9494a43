"""evaluate(): the five numbers equal the metric functions on the extracted features, the reference's
precomputed statistics are used, the printout has the reference evaluator's format, bad input fails clearly."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from tiny_extractor import make_images

from evalkit.errors import BatchFormatError, InputError, WeightsError
from evalkit.evaluate import (
    ResolutionWarning,
    build_extractor,
    evaluate,
    format_lines,
)
from evalkit.metrics.keys import metric_labels
from evalkit.options import ScoreOptions
from evalkit.metrics import (
    ConditioningWarning,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
    softmax,
)
from evalkit.store import write_npz

N_SAMPLE, N_REF = 45, 60


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def ex():
    return build_extractor("tiny-test", "cpu")


@pytest.fixture
def canonical(monkeypatch):
    """The tiny network standing in for the canonical Inception-2015 weights: named "inception", with its
    weights' sha256 pinned as inception-pb's (the public way to name the canonical weights)."""
    from tiny_extractor import TinyExtractor

    stand_in = TinyExtractor("inception", 0)
    monkeypatch.setenv("EVALKIT_PINS", f"inception-pb={stand_in.weights_sha256}")
    return stand_in


def _stats(ex, images):
    feats = ex(images)
    stats = dict(zip(("mu", "sigma"), feature_statistics(feats["pool"])))
    stats.update(zip(("mu_s", "sigma_s"), feature_statistics(feats["spatial"])))
    return stats


@pytest.fixture
def pair(tmp_path):
    sample, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    write_npz(sample, make_images(N_SAMPLE, 1))
    write_npz(ref, make_images(N_REF, 2, shift=30))
    return sample, ref


def _direct(ex, sample_images, ref_images, ref_stats=None):
    """The five numbers from the metric functions called directly on the features of all images."""
    s, r = ex(sample_images), ex(ref_images)
    mu, sigma = feature_statistics(s["pool"])
    mu_s, sigma_s = feature_statistics(s["spatial"])
    if ref_stats is None:
        ref_stats = dict(zip(("mu", "sigma"), feature_statistics(r["pool"])))
        ref_stats.update(zip(("mu_s", "sigma_s"), feature_statistics(r["spatial"])))
    p, rc = precision_recall(r["pool"], s["pool"], k=3)
    return {"inception_score": inception_score(softmax(s["logits"]), split_size=5000),
            "fid": frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"]),
            "sfid": frechet_distance(mu_s, sigma_s, ref_stats["mu_s"], ref_stats["sigma_s"]),
            "precision": p, "recall": rc}


def test_values_equal_metric_functions(ex, pair):
    sample, ref = pair
    result = evaluate(sample, ref, ex, ScoreOptions(batch_size=16, progress=False))
    want = _direct(ex, make_images(N_SAMPLE, 1), make_images(N_REF, 2, shift=30))
    for key, value in want.items():
        assert result[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert result["fid"] > 1 and result["sfid"] > 0.1 and result["inception_score"] > 1.05
    assert 0 < result["precision"] < 1 and 0 < result["recall"] <= 1
    prov = result["provenance"]
    assert prov["reference_statistics"] == "computed"
    assert prov["sample"]["num_images"] == N_SAMPLE and prov["reference"]["num_images"] == N_REF
    assert prov["sample"]["image_shape"] == [32, 32, 3]
    assert prov["extractor"] == ex.identity() and prov["weights_sha256"] == ex.weights_sha256
    assert len(prov["sample"]["sha256"]) == 64 and prov["sample"]["sha256"] != prov["reference"]["sha256"]


def test_reference_precomputed_statistics_are_used(canonical, pair, tmp_path):
    ex = canonical
    sample, ref = pair
    ref_images = make_images(N_REF, 2, shift=30)
    stats = _stats(ex, ref_images)
    with_stats = tmp_path / "ref_stats.npz"
    write_npz(with_stats, ref_images, **stats)
    computed = evaluate(sample, ref, ex, ScoreOptions(progress=False))
    same = evaluate(sample, with_stats, ex, ScoreOptions(progress=False))
    assert same["provenance"]["reference_statistics"] == "file"
    assert same["fid"] == pytest.approx(computed["fid"], rel=1e-9)
    # Change only the pool mean in the file: FID moves, sFID and P/R (images) do not.
    moved = tmp_path / "ref_moved.npz"
    write_npz(moved, ref_images, **{**stats, "mu": stats["mu"] + np.float32(0.5)})
    shifted = evaluate(sample, moved, ex, ScoreOptions(progress=False))
    assert shifted["fid"] != pytest.approx(computed["fid"], rel=1e-3)
    want = _direct(ex, make_images(N_SAMPLE, 1), ref_images, {**stats, "mu": stats["mu"] + np.float32(0.5)})
    assert shifted["fid"] == pytest.approx(want["fid"], rel=1e-9)
    assert shifted["sfid"] == pytest.approx(computed["sfid"], rel=1e-9)
    assert (shifted["precision"], shifted["recall"]) == (computed["precision"], computed["recall"])


def test_statistics_of_another_network_are_not_used(canonical, pair, tmp_path):
    sample, ref = pair
    other = tmp_path / "ref_inception_stats.npz"
    write_npz(other, make_images(N_REF, 2, shift=30), mu=np.zeros(20), sigma=np.eye(20), mu_s=np.zeros(9),
              sigma_s=np.eye(9))
    with pytest.warns(UserWarning, match="computing the reference statistics from its images"):
        result = evaluate(sample, other, canonical, ScoreOptions(progress=False))
    assert result["provenance"]["reference_statistics"] == "computed"
    assert result["fid"] == pytest.approx(evaluate(sample, ref, canonical, ScoreOptions(progress=False))["fid"],
                                          rel=1e-9)


@pytest.mark.parametrize("network", ["plugin", "inception with other weights"])
def test_openai_statistics_are_not_used_with_another_network(network, ex, canonical, pair, tmp_path, monkeypatch):
    """OpenAI-style statistics (no network recorded) with matching dimensions are used only with the
    canonical weights: a plugin network, or "inception" with unpinned weights, recomputes them.
    Catches a trust rule that only compares dimensions (the bug this replaced)."""
    sample, ref = pair
    ref_images = make_images(N_REF, 2, shift=30)
    with_stats = tmp_path / "ref_stats.npz"
    write_npz(with_stats, ref_images, **{k: v * 0 for k, v in _stats(ex, ref_images).items()})  # wrong values
    if network != "plugin":
        monkeypatch.setenv("EVALKIT_PINS", "inception-pb=" + "0" * 64)
        ex = canonical
    with pytest.warns(UserWarning, match="used only with the canonical Inception-2015 weights"):
        result = evaluate(sample, with_stats, ex, ScoreOptions(progress=False))
    prov = result["provenance"]
    assert prov["reference_statistics"] == "computed"
    assert "canonical Inception-2015" in prov["reference"]["statistics"]["reason"]
    want = evaluate(sample, ref, ex, ScoreOptions(progress=False))
    assert result["fid"] == want["fid"] and result["sfid"] == want["sfid"]


def test_untrusted_statistics_without_images_are_refused(ex, pair, tmp_path):
    stats_only = tmp_path / "stats_only.npz"
    np.savez(stats_only, np.zeros((0, 32, 32, 3), np.uint8), **_stats(ex, make_images(N_REF, 2, shift=30)))
    with pytest.raises(BatchFormatError, match="holds no images to compute them from"):
        evaluate(pair[0], stats_only, ex, ScoreOptions(progress=False))


def test_sample_statistics_are_used_as_the_reference_does(canonical, pair, tmp_path):
    """Stored sample statistics replace those of the sample's images (parity with read_statistics);
    --recompute-sample-stats ignores them. Catches evaluate ignoring the sample's stored statistics."""
    sample, ref = pair
    images = make_images(N_SAMPLE, 1)
    stats = _stats(canonical, images)
    moved = tmp_path / "sample_stats.npz"
    write_npz(moved, images, **{**stats, "mu": stats["mu"] + np.float32(0.5)})
    plain = evaluate(sample, ref, canonical, ScoreOptions(progress=False))
    used = evaluate(moved, ref, canonical, ScoreOptions(progress=False))
    ignored = evaluate(moved, ref, canonical, ScoreOptions(progress=False, use_sample_stats=False))
    assert used["provenance"]["sample_statistics"] == "file"
    assert ignored["provenance"]["sample_statistics"] == "computed" and plain["provenance"]["sample_statistics"] == "computed"
    r = canonical(make_images(N_REF, 2, shift=30))
    ref_mu, ref_sigma = feature_statistics(r["pool"])
    want = frechet_distance(stats["mu"] + np.float32(0.5), stats["sigma"], ref_mu, ref_sigma)
    assert used["fid"] == pytest.approx(want, rel=1e-9) and used["fid"] != pytest.approx(plain["fid"], rel=1e-3)
    assert used["sfid"] == pytest.approx(plain["sfid"], rel=1e-9)
    assert (ignored["fid"], ignored["sfid"]) == (plain["fid"], plain["sfid"])
    assert used["inception_score"] == plain["inception_score"] and used["recall"] == plain["recall"]


def test_sample_statistics_of_the_wrong_dimension_are_an_error(canonical, pair, tmp_path):
    bad = tmp_path / "sample_bad_stats.npz"
    write_npz(bad, make_images(N_SAMPLE, 1), mu=np.zeros(20), sigma=np.eye(20), mu_s=np.zeros(8), sigma_s=np.eye(8))
    with pytest.raises(BatchFormatError, match="stored statistics have shapes.*--recompute-sample-stats"):
        evaluate(bad, pair[1], canonical, ScoreOptions(progress=False))
    ok = evaluate(bad, pair[1], canonical, ScoreOptions(progress=False, use_sample_stats=False))
    assert ok["provenance"]["sample_statistics"] == "computed"


def test_sample_statistics_of_an_unknown_network_are_recomputed(ex, pair, tmp_path):
    images = make_images(N_SAMPLE, 1)
    with_stats = tmp_path / "sample_stats.npz"
    write_npz(with_stats, images, **{k: v * 0 for k, v in _stats(ex, images).items()})
    with pytest.warns(UserWarning, match="computing the sample statistics from its images"):
        result = evaluate(with_stats, pair[1], ex, ScoreOptions(progress=False))
    assert result["provenance"]["sample_statistics"] == "computed"
    assert result["fid"] == evaluate(pair[0], pair[1], ex, ScoreOptions(progress=False))["fid"]


def test_five_lines_in_reference_format():
    # Inception labels with values of the reference evaluator's README example.
    result = {"inception_score": float(np.float32(215.8370361328125)), "fid": float(np.float64(3.9425574129223264)),
              "sfid": 6.140433703346162, "precision": 0.8265, "recall": 0.5309, "labels": metric_labels("inception", printed=True)}
    assert format_lines(result) == ["Inception Score: 215.8370361328125", "FID: 3.9425574129223264",
                                    "sFID: 6.140433703346162", "Precision: 0.8265", "Recall: 0.5309"]


def test_printed_values_match_numpy_scalars(ex, pair):
    result = evaluate(*pair, ex, ScoreOptions(progress=False))
    lines = format_lines(result)
    assert len(lines) == 5
    number = r"(-?\d+\.\d+(e-?\d+)?)"
    labels = [re.escape(result["labels"][k]) for k in ("inception_score", "fid", "sfid", "precision", "recall")]
    for line, label in zip(lines, labels):
        assert re.fullmatch(f"{label}: {number}", line), line
    # IS prints as a float32 number; FID/sFID as str(np.float64).
    assert lines[0].endswith(" " + str(float(np.float32(result["inception_score"]))))
    assert np.float32(result["inception_score"]) == result["inception_score"]
    assert lines[1].endswith(" " + str(np.float64(result["fid"])))
    assert lines[2].endswith(" " + str(np.float64(result["sfid"])))


def test_labels_come_from_the_one_label_function(ex, pair):
    """Every network's labels come from metric_label: Inception (torch or TF) says FID, others name the
    network. Catches a label table that drifts from metric_label (e.g. "IS (digits classifier)")."""
    result = evaluate(*pair, ex, ScoreOptions(progress=False))
    assert result["labels"] == metric_labels("tiny-test", printed=True)
    assert result["labels"]["fid"] == "FD (tiny-test features)" and "FID" not in " ".join(result["labels"].values())
    assert metric_labels("digits") == {"inception_score": "IS (digits features)", "fid": "FD (digits features)",
                                       "sfid": "sFD (digits features)", "precision": "Precision (digits features)",
                                       "recall": "Recall (digits features)"}
    for inception in ("inception", "inception-tf"):
        assert metric_labels(inception) == {"inception_score": "IS", "fid": "FID", "sfid": "sFID",
                                            "precision": "Precision", "recall": "Recall"}
        assert metric_labels(inception, printed=True)["inception_score"] == "Inception Score"


def test_different_resolutions_warn(ex, pair, tmp_path):
    sample, _ = pair
    ref64 = tmp_path / "ref64.npz"
    write_npz(ref64, make_images(N_REF, 2, res=64))
    with pytest.warns(ResolutionWarning, match="32x32 but reference images are 64x64"):
        result = evaluate(sample, ref64, ex, ScoreOptions(progress=False))
    assert np.isfinite(result["fid"])


def test_fewer_images_than_dimensions_warn(ex, pair, tmp_path):
    _, ref = pair
    few = tmp_path / "few.npz"
    write_npz(few, make_images(12, 4))  # 12 <= 16 pool dims
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(few, ref, ex, ScoreOptions(progress=False))
    messages = [str(w.message) for w in caught if issubclass(w.category, ConditioningWarning)]
    assert len(messages) == 1 and "12 images" in messages[0]
    assert "(pool 16)" in messages[0] and "spatial" not in messages[0]  # 12 > 8 spatial dims


@pytest.mark.parametrize("n", [0, 1, 3])
def test_too_few_images(ex, pair, tmp_path, n):
    _, ref = pair
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, make_images(max(n, 1), 4)[:n])
    with pytest.raises(BatchFormatError, match=f"{tiny}.*{n} image"):
        evaluate(tiny, ref, ex, ScoreOptions(progress=False))


def test_nan_images_rejected(ex, pair, tmp_path):
    _, ref = pair
    images = make_images(10, 4).astype(np.float32)
    images[7, 3, 3, 1] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, images)
    with pytest.raises(BatchFormatError, match="NaN"):
        evaluate(bad, ref, ex, ScoreOptions(progress=False))


def test_unknown_reference_name_lists_known(ex, pair):
    with pytest.raises(InputError, match="imagenet256") as info:
        evaluate(pair[0], "imagenet1000", ex, ScoreOptions(progress=False))
    assert "lsun_bedroom" in str(info.value)


def test_missing_inception_weights(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="evalkit weights fetch"):
        build_extractor("inception", "cpu")


def test_exact_fid_path_agrees(ex, pair):
    fast = evaluate(*pair, ex, ScoreOptions(progress=False))
    exact = evaluate(*pair, ex, ScoreOptions(progress=False, exact_fid=True))
    assert exact["provenance"]["exact_fid"] is True and fast["provenance"]["exact_fid"] is False
    for key in ("fid", "sfid"):
        assert exact[key] == pytest.approx(fast[key], rel=1e-6)
