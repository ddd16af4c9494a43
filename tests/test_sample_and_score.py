"""`evalkit sample-and-score` on tiny CPU models: JSON, CSV row, skip on rerun, scale 0, bad input."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from sweep_helpers import FEATURES, NUM_SAMPLES, make_assets, model_args, read_json, score_args
from tiny_extractor import CALLS
from tiny_sampling import one_thread

from evalkit.cli import main
from evalkit.evaluate import build_extractor, evaluate, format_lines
from evalkit.results import COLUMNS, read_results
from evalkit.options import ScoreOptions

NPZ = f"samples_{NUM_SAMPLES}x8x8x3.npz"


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_and_score")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALKIT_CACHE", str(root / "cache"))
        mp.delenv("EVALKIT_PLUGINS", raising=False)
        yield {**make_assets(root / "assets"), "root": root}


@pytest.fixture(scope="module")
def guided(assets):
    """One guided sample-and-score run with --csv and --json."""
    root = assets["root"]
    out, csv, js = root / "run", root / "results.csv", root / "scores" / "s2.json"
    result = _invoke("sample-and-score", *model_args(assets), "--classifier-scale", "2", *score_args(assets),
                     "--out", out, "--csv", csv, "--json", js, "--label", "tiny")
    assert result.exit_code == 0, result.output
    return {"out": out, "csv": csv, "json": js, "stdout": result.stdout}


def test_writes_metrics_json_and_one_row(assets, guided):
    record = read_json(guided["json"])
    metrics, row = record["metrics"], record["row"]
    # The printed lines are the evaluator's five, and they score the stored samples.
    assert guided["stdout"].splitlines() == format_lines(metrics)
    again = evaluate(guided["out"] / NPZ, assets["ref"], build_extractor(FEATURES, "cpu"), ScoreOptions(progress=False))
    for key in ("inception_score", "fid", "sfid", "precision", "recall"):
        assert metrics[key] == pytest.approx(again[key], rel=1e-9, abs=1e-12)
    df = read_results(guided["csv"])
    assert list(df.columns) == list(COLUMNS) + ["samples_path"] and len(df) == 1
    got = df.iloc[0]
    assert got["run_id"] == row["run_id"] and got["guidance_scale"] == 2.0 and got["label"] == "tiny"
    assert got["classifier_sha256"] == row["classifier_sha256"] and not pd.isna(got["classifier"])
    assert got["fid"] == metrics["fid"] and got["num_samples"] == NUM_SAMPLES
    assert guided["csv"].parent / got["samples_path"] == guided["out"] / NPZ
    assert record["sampling"]["generated_now"] == NUM_SAMPLES
    assert not (guided["out"] / "metrics.json").exists()  # --json given: written there instead


def test_rerun_with_the_row_present_does_nothing(assets, guided):
    npz = guided["out"] / NPZ
    stamp, table, calls = npz.stat().st_mtime_ns, guided["csv"].read_bytes(), CALLS.get(FEATURES, 0)
    result = _invoke("sample-and-score", *model_args(assets, batch_size=7), "--classifier-scale", "2",
                     *score_args(assets), "--out", guided["out"], "--csv", guided["csv"], "--json", guided["json"])
    assert result.exit_code == 0, result.output
    assert "already in" in result.stdout
    assert CALLS.get(FEATURES, 0) == calls and npz.stat().st_mtime_ns == stamp
    assert guided["csv"].read_bytes() == table


def test_scale_zero_is_the_unguided_model(assets, guided, tmp_path):
    out = tmp_path / "run"
    result = _invoke("sample-and-score", *model_args(assets), "--classifier-scale", "0", *score_args(assets),
                     "--out", out, "--csv", guided["csv"].parent / "unguided.csv")
    assert result.exit_code == 0, result.output
    record = read_json(out / "metrics.json")
    assert record["sampling"]["config"]["classifier"] is None
    assert record["row"]["classifier"] is None and record["row"]["guidance_scale"] == 0.0
    # Guidance at scale 2 changed the images, so the numbers differ from the unguided run's.
    assert record["metrics"]["fid"] != read_json(guided["json"])["metrics"]["fid"]
    # Without --classifier the same model gives the same row identity.
    again = _invoke("sample-and-score", *model_args(assets, classifier=False), *score_args(assets),
                    "--out", out, "--csv", guided["csv"].parent / "unguided.csv")
    assert again.exit_code == 0 and "already in" in again.stdout, again.output


@pytest.mark.parametrize("case", ["foreign_csv", "out_is_file", "csv_is_dir", "scale_without_classifier"])
def test_bad_input_is_refused_before_anything_is_written(assets, tmp_path, case):
    out, csv, extra, match = tmp_path / "run", tmp_path / "r.csv", ["--classifier-scale", "1"], None
    model = model_args(assets)
    if case == "foreign_csv":
        csv.write_text("a,b\n1,2\n")
        match = "not an evalkit results table"
    elif case == "out_is_file":
        out.write_text("x")
        match = "is a file"
    elif case == "csv_is_dir":
        csv.mkdir()
        match = "is a directory"
    else:
        model, match = model_args(assets, classifier=False), "--classifier-scale 1.0 given without --classifier"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    result = _invoke("sample-and-score", *model, *extra, *score_args(assets), "--out", out, "--csv", csv)
    assert result.exit_code != 0 and match in result.output, result.output
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
