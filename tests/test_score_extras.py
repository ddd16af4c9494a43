"""`evalkit score --metrics/--bootstrap/--kid-*/--dc-k`: selection, printed lines, JSON keys, bad input.

Tiny data (40 samples, 52 references, the tiny test extractor). The extra metrics are checked against
the metric engines applied to features extracted here directly (the engines themselves are checked
against independent oracles in tests/test_extra_metrics.py): what is tested is the plumbing — which
features, which argument order, which settings reach the engines — so equality is exact (the same
float32 features, the same deterministic computation).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_extractor import CALLS, make_images

from evalkit.cli import main
from evalkit.errors import InputError
from evalkit.evaluate import build_extractor, evaluate, format_lines
from evalkit.metrics import density_coverage, kid
from evalkit.metrics.keys import CI_KEYS
from evalkit.options import METRIC_GROUPS, ScoreOptions, parse_metrics
from evalkit.store import write_npz

TINY = ["--features", "tiny-test", "--device", "cpu", "--no-progress"]
ALL = ["--metrics", "is,fid,sfid,pr,kid,dc", "--kid-subset-size", "20", "--kid-subsets", "7"]


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EVALKIT_PLUGINS", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def pair(tmp_path):
    sample, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    write_npz(sample, make_images(40, 1))
    write_npz(ref, make_images(52, 2, shift=30))
    return sample, ref


@pytest.fixture
def feats(pair):
    ex = build_extractor("tiny-test", "cpu")
    return {what: ex(np.load(path)["arr_0"]) for what, path in zip(("sample", "ref"), pair)}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------------ options

def test_parse_metrics_and_options_validation():
    assert parse_metrics("is,fid,sfid,pr") == ("is", "fid", "sfid", "pr") == ScoreOptions().metrics
    assert parse_metrics(" KID , dc ") == ("kid", "dc")
    assert ScoreOptions(metrics="kid,dc").metrics == ("kid", "dc")
    for bad, match in (("", "empty"), ("is,lpips", "unknown metric 'lpips'.*is, fid, sfid, pr, kid, dc"),
                       ("fid,fid", "fid listed twice")):
        with pytest.raises(InputError, match=match):
            parse_metrics(bad)
    for kw, option in ((dict(bootstrap=0), "--bootstrap"), (dict(bootstrap=-2), "--bootstrap"),
                       (dict(bootstrap=2.5), "--bootstrap"), (dict(kid_subsets=0), "--kid-subsets"),
                       (dict(kid_subset_size=1), "--kid-subset-size"), (dict(dc_k=0), "--dc-k"),
                       (dict(bootstrap_seed=-1), "--bootstrap-seed"), (dict(confidence=1.0), "confidence")):
        with pytest.raises(InputError, match=option):
            ScoreOptions(**kw)
    assert set(METRIC_GROUPS) == {"is", "fid", "sfid", "pr", "kid", "dc"}


# ------------------------------------------------------------------------------------------ lines

def test_default_prints_the_five_lines_and_extras_follow_them(cache_root, pair, feats, tmp_path):
    """The five lines are byte-identical with and without extras/bootstrap (the extras never change
    them); KID prints ×10³ with its std; density/coverage as the five. Catches: extras printed before
    the five, a bootstrap that perturbs the point estimates, KID printed unscaled."""
    default = _run("score", *pair, *TINY)
    assert default.exit_code == 0, default.output
    five = default.stdout.splitlines()
    assert len(five) == 5
    out = tmp_path / "all.json"
    extra = _run("score", *pair, *TINY, *ALL, "--bootstrap", "20", "--json", out)
    assert extra.exit_code == 0, extra.output
    lines = extra.stdout.splitlines()
    assert lines[:5] == five
    data = json.loads(out.read_text())
    assert lines[5] == f"KD (tiny-test features): {data['kid'] * 1e3:.3f} ± {data['kid_std'] * 1e3:.3f} (×10³)"
    assert lines[6] == f"Density (tiny-test features): {data['density']!r}"
    assert lines[7] == f"Coverage (tiny-test features): {data['coverage']!r}"
    ci = lines[8:]
    assert len(ci) == len(CI_KEYS)
    assert ci[0].startswith("IS (tiny-test features) 95% CI: [")
    assert ci[1].startswith("FD (tiny-test features) 95% CI: [")
    assert re.fullmatch(r"Recall \(tiny-test features\) 95% CI: \[\S+, \S+\] \(biased low, see README\)", ci[4])
    assert ci[5].endswith("(×10³)")
    low, high = (float(v) for v in re.findall(r"\[(\S+), (\S+)\]", ci[5])[0])
    assert low == pytest.approx(data["kid_ci_low"] * 1e3, rel=1e-5)
    assert high == pytest.approx(data["kid_ci_high"] * 1e3, rel=1e-5)


def test_selection_computes_only_what_is_asked(cache_root, pair, tmp_path):
    out = tmp_path / "s.json"
    result = _run("score", *pair, *TINY, "--metrics", "fid,dc", "--json", out)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "FD (tiny-test features)", "Density (tiny-test features)", "Coverage (tiny-test features)"]
    data = json.loads(out.read_text())
    assert {k for k in data if k not in ("labels", "provenance")} == {"fid", "density", "coverage"}
    assert data["provenance"]["metrics"] == ["fid", "dc"]


# ------------------------------------------------------------------------------------------ JSON

def test_json_extra_values_are_the_engines_on_the_extracted_features(cache_root, pair, feats, tmp_path):
    """kid = kid(sample pool, ref pool, subsets, subset size, seed 0); density/coverage =
    density_coverage(ref pool, sample pool, k) — exact. Catches: reference and samples swapped
    (density is not symmetric), --dc-k or --kid-subsets not passed through, spatial features used."""
    out = tmp_path / "x.json"
    result = _run("score", *pair, *TINY, *ALL, "--dc-k", "3", "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    s, r = feats["sample"]["pool"], feats["ref"]["pool"]
    assert (data["kid"], data["kid_std"]) == kid(s, r, 7, 20, 0)
    assert (data["density"], data["coverage"]) == density_coverage(r, s, k=3)
    assert (data["density"], data["coverage"]) != density_coverage(r, s, k=5)
    assert (data["density"], data["coverage"]) != density_coverage(s, r, k=3)
    prov = data["provenance"]
    assert prov["metric_settings"]["kid"]["num_subsets"] == 7 and prov["metric_settings"]["kid"]["subset_size"] == 20
    assert prov["metric_settings"]["kid"]["seed"] == 0 and prov["metric_settings"]["dc"]["k"] == 3
    assert prov["bootstrap"] is None
    assert data["labels"]["kid"] == "KD (tiny-test features)" and data["labels"]["coverage"] == "Coverage (tiny-test features)"


def test_bootstrap_intervals_contain_the_point_and_are_seeded(cache_root, pair, tmp_path):
    """Every metric gets an interval; IS, FID, precision intervals contain their point estimate on this
    data; the same seed gives the same intervals, another seed others; B and the seed are recorded with
    the method and the recall/coverage bias note. Catches: intervals from one replicate set reused for
    every metric, an unseeded bootstrap, a missing provenance record."""
    def run(seed):
        out = tmp_path / f"b{seed}.json"
        result = _run("score", *pair, *TINY, *ALL, "--bootstrap", "40", "--bootstrap-seed", seed, "--json", out)
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())

    a, again, other = run(0), run(0), run(1)
    for key in CI_KEYS:
        assert a[f"{key}_ci_low"] <= a[f"{key}_ci_high"], key
    for key in ("inception_score", "fid", "precision"):
        assert a[f"{key}_ci_low"] < a[key] < a[f"{key}_ci_high"], key
    assert {k: a[k] for k in a if "_ci_" in k} == {k: again[k] for k in again if "_ci_" in k}
    assert {k: a[k] for k in a if "_ci_" in k} != {k: other[k] for k in other if "_ci_" in k}
    assert len({a[f"{k}_ci_low"] for k in CI_KEYS}) == len(CI_KEYS)
    boot = a["provenance"]["bootstrap"]
    assert boot["replicates"] == 40 and boot["seed"] == 0 and boot["confidence"] == 0.95
    assert "percentile" in boot["ci_method"] and "biased low" in boot["notes"]["recall"]
    assert "biased low" in boot["notes"]["coverage"]
    # The replicate mean of recall is below its point estimate (the bias the notes describe).
    assert boot["replicate_mean"]["recall"] < a["recall"]
    for key in ("inception_score", "fid", "sfid", "precision", "recall"):  # the five unchanged by bootstrap
        assert a[key] == other[key]


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args, match", [
    (["--bootstrap", "0"], "--bootstrap: found 0, expected a positive whole number"),
    (["--bootstrap", "-5"], "--bootstrap: found -5"),
    (["--metrics", "is,lpips"], "unknown metric 'lpips'; expected names from is, fid, sfid, pr, kid, dc"),
    (["--metrics", "kid"], "--kid-subset-size 1000: sample batch .* holds 40 images, fewer than the KID subset "
                           "size; pass --kid-subset-size 40 or less"),
    (["--metrics", "kid", "--kid-subset-size", "45"], "--kid-subset-size 45: sample batch .* holds 40 images, .*; pass --kid-subset-size 40 or less"),
    (["--metrics", "dc", "--dc-k", "52"], "--dc-k 52: reference batch .* holds 52 images; .* pass --dc-k 51 or less"),
    (["--kid-subsets", "0"], "--kid-subsets: found 0"),
    (["--metrics", ""], "--metrics is empty"),
])
def test_bad_input_one_line_nonzero_nothing_written(cache_root, pair, tmp_path, args, match):
    out = tmp_path / "never.json"
    calls = dict(CALLS)
    result = _run("score", *pair, *TINY, *args, "--json", out)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and re.search(match, result.output), result.output
    assert not out.exists()
    assert CALLS == calls, "features were extracted before the bad option was refused"
    assert not cache_root.exists() or not any(cache_root.rglob("*.h5")), "feature cache written"


def test_evaluate_api_default_is_the_five(cache_root, pair):
    result = evaluate(*pair, build_extractor("tiny-test", "cpu"), ScoreOptions(progress=False))
    assert [k for k in result if k not in ("labels", "provenance")] == [
        "inception_score", "fid", "sfid", "precision", "recall"]
    assert len(format_lines(result)) == 5
