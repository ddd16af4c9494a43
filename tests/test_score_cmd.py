"""`evalkit score` and `evalkit features` through click's CliRunner, with the tiny test extractor."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_extractor import CALLS, make_images

from evalkit.cache import read_features
from evalkit.cli import main
from evalkit.evaluate import build_extractor, compute_features, evaluate, format_lines
from evalkit.store import write_npz
from evalkit.options import ScoreOptions

TINY = ["--features", "tiny-test", "--device", "cpu", "--no-progress"]


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


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_score_prints_exactly_five_lines(cache_root, pair):
    result = _run("score", *pair, *TINY)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    pattern = [r"IS \(tiny-test features\): \d+\.\d+", r"FD \(tiny-test features\): \d+\.\d+",
               r"sFD \(tiny-test features\): \d+\.\d+", r"Precision \(tiny-test features\): [01]\.\d+",
               r"Recall \(tiny-test features\): [01]\.\d+"]
    for line, pat in zip(lines, pattern):
        assert re.fullmatch(pat, line), line
    want = evaluate(*pair, build_extractor("tiny-test", "cpu"), ScoreOptions(progress=False))
    assert lines == format_lines(want)


def test_json_output(cache_root, pair, tmp_path):
    out = tmp_path / "out" / "scores.json"
    result = _run("score", *pair, *TINY, "--json", out, "--batch-size", "7")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    printed = dict(line.rsplit(": ", 1) for line in result.stdout.splitlines())
    for key in ("inception_score", "fid", "sfid", "precision", "recall"):
        assert repr(data[key]) == printed[data["labels"][key]]
    prov = data["provenance"]
    assert prov["batch_size"] == 7 and prov["device"] == "cpu" and prov["world_size"] == 1
    assert prov["extractor"]["name"] == "tiny-test" and prov["backend"] == "torch"
    assert len(prov["weights_sha256"]) == 64
    assert prov["sample"]["num_images"] == 40 and prov["reference"]["num_images"] == 52
    assert prov["sample"]["path"] == str(pair[0]) and prov["elapsed_seconds"] >= 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.json"]  # atomic: no temp files


def test_second_run_uses_cache_and_no_cache_bypasses(cache_root, pair):
    CALLS.clear()
    assert _run("score", *pair, *TINY).exit_code == 0
    assert CALLS["tiny-test"] == 92
    assert _run("score", *pair, *TINY).exit_code == 0
    assert CALLS["tiny-test"] == 92
    assert _run("score", *pair, *TINY, "--no-cache").exit_code == 0
    assert CALLS["tiny-test"] == 184


def test_no_cache_writes_nothing(cache_root, pair):
    assert _run("score", *pair, *TINY, "--no-cache").exit_code == 0
    assert not (cache_root / "features").exists()


def test_resolution_warning_is_one_stderr_line(cache_root, pair, tmp_path):
    ref64 = tmp_path / "ref64.npz"
    write_npz(ref64, make_images(52, 2, res=64))
    result = _run("score", pair[0], ref64, *TINY)
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 5
    warned = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "32x32" in warned[0] and "64x64" in warned[0]


@pytest.mark.parametrize("args, message", [
    (["--backend", "tf", "--features", "tiny-test"], "cannot be combined with --features tiny-test"),
    (["--features", "no-such-net"], "known: "),
    (["--batch-size", "0"], "0"),
])
def test_bad_options(cache_root, pair, args, message):
    result = _run("score", *pair, "--no-progress", *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_errors_are_one_line(cache_root, pair, tmp_path):
    result = _run("score", pair[0], "imagenet1000", *TINY)
    assert result.exit_code == 1 and "imagenet256" in result.output and "lsun_horse" in result.output
    result = _run("score", pair[0], "imagenet64", *TINY)
    assert result.exit_code == 1 and "evalkit ref fetch imagenet64" in result.output
    few = tmp_path / "few.npz"
    np.savez(few, make_images(3, 0))
    result = _run("score", few, pair[1], *TINY)
    assert result.exit_code == 1 and "3 image(s)" in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_plugin_is_a_clear_error(cache_root, pair, monkeypatch):
    monkeypatch.setenv("EVALKIT_PLUGINS", "no_such_plugin_module")
    result = _run("score", *pair, *TINY)
    assert result.exit_code == 1
    assert "EVALKIT_PLUGINS" in result.output and "no_such_plugin_module" in result.output


def test_features_command_writes_h5(cache_root, pair, tmp_path):
    out = tmp_path / "f" / "feats.h5"
    result = _run("features", pair[0], "--out", out, *TINY, "--batch-size", "9")
    assert result.exit_code == 0, result.output
    assert "pool [40, 16]" in result.stdout
    arrays, attrs = read_features(out)
    want = compute_features(pair[0], build_extractor("tiny-test", "cpu"), ScoreOptions(cache=False, progress=False))
    for name in ("pool", "spatial", "logits"):
        np.testing.assert_allclose(arrays[name], want[name], rtol=0, atol=1e-6)
    assert json.loads(attrs["extractor"])["name"] == "tiny-test"
    assert attrs["num_images"] == 40 and len(attrs["batch_sha256"]) == 64
    assert sorted(p.name for p in out.parent.iterdir()) == ["feats.h5"]


def test_missing_inception_weights_is_one_line(cache_root, pair, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("score", *pair, "--device", "cpu", "--no-progress")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "evalkit weights fetch" in result.output and str(cache_root / "weights") in result.output


def test_unwritable_outputs_are_one_line_errors(cache_root, pair, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _run("score", *pair, *TINY, "--json", blocker / "scores.json")
    assert result.exit_code == 1 and "--json" in result.output and "Traceback" not in result.output
    result = _run("features", pair[0], "--out", blocker / "f.h5", *TINY)
    assert result.exit_code == 1 and "--out" in result.output and "Traceback" not in result.output
