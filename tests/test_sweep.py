"""`evalkit sweep` / `evalkit.sweep.run_sweep` on tiny CPU models: rows, resume, cache, bad input.

One uninterrupted 3-scale sweep (module fixture) is the baseline that the report, re-run, extension
and kill-and-resume tests compare against.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sweep_helpers import FEATURES, NUM_SAMPLES, REF_IMAGES, make_assets, model_args, read_json, score_args
from tiny_extractor import CALLS
from tiny_sampling import CLASSIFIER_FLAGS, SUBPROCESS_ENV, UNET_FLAGS, one_thread

from evalkit.cli import main
from evalkit.errors import ConfigError
from evalkit.options import RunOptions
from evalkit.sampling.request import SampleArgs, make_request
from evalkit.metrics import METRIC_KEYS
from evalkit.results import COLUMNS, read_results
from evalkit.results import legacy_model_flags
from evalkit.sweep import (SweepPlan, parse_respacings, parse_scales, run_sweep, setting_dirname, setting_request,
                           settings_row, unguided_if_zero)

SCALES = "0,1,4"
# The baseline and the killed sweep use the same batch size: then every batch, and so every float
# rounding of the samples, is the same in both (other batch sizes may flip a rare uint8 pixel).
BATCH = 2
TESTS_DIR = Path(__file__).parent


def _request(**kw):
    return make_request(SampleArgs(**kw))


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALKIT_CACHE", str(root / "cache"))
        mp.delenv("EVALKIT_PLUGINS", raising=False)
        yield {**make_assets(root / "assets"), "root": root}


@pytest.fixture(scope="module")
def baseline(assets):
    """An uninterrupted sweep over 3 scales through the CLI; counts the extractor's images."""
    out, csv = assets["root"] / "base_sweep", assets["root"] / "base_results.csv"
    before = CALLS.get(FEATURES, 0)
    result = _invoke("sweep", *model_args(assets, batch_size=BATCH), *score_args(assets), "--scales", SCALES,
                     "--out", out, "--csv", csv)
    assert result.exit_code == 0, result.output
    return {"out": out, "csv": csv, "calls": CALLS.get(FEATURES, 0) - before, "output": result.output}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Lists and settings

def test_parse_scales_and_respacings():
    assert parse_scales("0,0.5,1,2,4,10") == (0.0, 0.5, 1.0, 2.0, 4.0, 10.0)
    assert parse_scales(" 1 , 2e0 ") == (1.0, 2.0)
    assert parse_scales([0, 3]) == (0.0, 3.0)
    for bad, match in (("", "empty"), ("  ", "empty"), ("1,,2", "item 2 is empty"), ("a", "'a'"),
                       ("-1", ">= 0"), ("nan", "finite"), ("inf", "finite"), ("1,1.0", "twice"), ("1,", "empty")):
        with pytest.raises(ConfigError, match=match):
            parse_scales(bad)
    assert parse_respacings(None) == ()
    assert parse_respacings("250,100,ddim25") == ("250", "100", "ddim25")
    for bad in ("", "2,,3", "abc", "ddim", "0", "25,25"):
        with pytest.raises(ConfigError, match="--respacings"):
            parse_respacings(bad)


def test_setting_config_and_folder_names(assets):
    base = _request(checkpoint=str(assets["unet"]), model_flags=UNET_FLAGS, num_samples=4,
                                timestep_respacing="2", classifier=str(assets["classifier"]),
                                classifier_flags=CLASSIFIER_FLAGS, classifier_scale=1.0)
    guided = setting_request(base, 4, "ddim2")
    assert (guided.classifier_scale, guided.sampler, guided.timestep_respacing) == (4.0, "ddim", "ddim2")
    assert setting_request(base, 2, "3").sampler == "ancestral"
    unguided = setting_request(base, 0)
    assert unguided.classifier is None and unguided.classifier_scale is None
    assert unguided.timestep_respacing == "2"
    with pytest.raises(ConfigError, match="needs a classifier"):
        setting_request(unguided, 1.0)
    for bad in ("ddim999", "1001"):  # no integer stride gives 999 of 1000 steps; 1001 > T
        with pytest.raises(ConfigError, match=f"--respacings '{bad}'"):
            setting_request(base, 1.0, bad)
    assert setting_dirname(2.0) == "scale-2" and setting_dirname(0.5, "ddim25") == "scale-0.5_steps-ddim25"


def test_settings_row_identity(assets):
    def row(**kw):
        kw.setdefault("timestep_respacing", "2")
        config = _request(checkpoint=str(assets["unet"]), model_flags=UNET_FLAGS, num_samples=4, **kw)
        return settings_row(config, reference="ref.npz", reference_sha256="ab" * 32, features=FEATURES)

    guided = dict(classifier=str(assets["classifier"]), classifier_flags=CLASSIFIER_FLAGS)
    plain = row()
    assert plain["guidance_scale"] == 0.0 and plain["classifier"] is None and plain["steps"] == "2"
    # Scale 0 drops the classifier: the row is the plain model's.
    assert settings_row(unguided_if_zero(_request(
        checkpoint=str(assets["unet"]), model_flags=UNET_FLAGS, num_samples=4, timestep_respacing="2",
        classifier_scale=0.0, **guided)), reference="ref.npz", reference_sha256="ab" * 32,
        features=FEATURES)["run_id"] == plain["run_id"]
    # Settings that change the images change the run_id, also those without a column of their own.
    others = [row(classifier_scale=1.0, **guided), row(classifier_scale=2.0, **guided), row(classes="0-4"),
              row(clip_denoised=False), row(seed=1), row(timestep_respacing="3")]
    assert len({plain["run_id"], *(r["run_id"] for r in others)}) == 1 + len(others)
    assert others[2]["classes"] == "0,1,2,3,4" and others[2]["model_flags"] == plain["model_flags"]
    assert others[3]["clip_denoised"] == 0 and plain["clip_denoised"] is None
    # The run_id is that of the version-1 row, which wrote these settings into model_flags.
    assert legacy_model_flags(others[2]).endswith("--classes 0,1,2,3,4")
    assert legacy_model_flags(others[3]).endswith("--no-clip-denoised")
    assert row(timestep_respacing="")["steps"] == "1000"


# ---------------------------------------------------------------------------------------------
# The sweep

def test_sweep_writes_one_row_per_setting(assets, baseline):
    df = read_results(baseline["csv"])
    assert list(df.columns) == list(COLUMNS) + ["samples_path"]
    assert len(df) == 3 and df["run_id"].is_unique
    assert df["guidance_scale"].tolist() == [0.0, 1.0, 4.0]
    # Scale 0 is the model alone: no classifier recorded; guided rows record it and its sha256.
    assert pd.isna(df.loc[0, "classifier"]) and pd.isna(df.loc[0, "classifier_sha256"])
    assert (df.loc[1:, "classifier_sha256"] == _sha256(assets["classifier"])).all()
    assert (df["checkpoint_sha256"] == _sha256(assets["unet"])).all()
    assert (df["reference_sha256"] == _sha256(assets["ref"])).all()
    assert (df["reference"] == str(assets["ref"])).all()
    assert df["sampler"].eq("ancestral").all() and df["steps"].eq("2").all() and df["eta"].isna().all()
    assert df["num_samples"].eq(NUM_SAMPLES).all() and df["seed"].eq(0).all() and df["image_size"].eq(8).all()
    assert df["features"].eq(FEATURES).all() and df["label"].eq("unet").all()
    assert df["model_flags"].eq(" ".join(UNET_FLAGS.split())).all()
    assert df["evalkit_version"].notna().all() and df["torch_version"].notna().all()
    assert (df["wall_clock_s"] > 0).all()
    for key in METRIC_KEYS:
        assert df[key].map(math.isfinite).all(), key
    # Guidance changes the samples, so every metric row differs.
    assert df["fid"].nunique() == 3 and df["inception_score"].nunique() == 3
    for scale, row in zip(("0", "1", "4"), df.to_dict("records")):
        npz = baseline["csv"].parent / row["samples_path"]
        assert npz == baseline["out"] / f"scale-{scale}" / f"samples_{NUM_SAMPLES}x8x8x3.npz" and npz.is_file()
        record = read_json(baseline["out"] / f"scale-{scale}" / "metrics.json")
        assert record["row"]["run_id"] == row["run_id"]
        assert record["metrics"]["fid"] == row["fid"]
        assert record["sampling"]["config"]["classifier_scale"] == (None if scale == "0" else float(scale))


def test_reference_features_are_extracted_once(baseline):
    # One extraction of the reference, one per setting of the samples; the other settings read the cache.
    assert baseline["calls"] == REF_IMAGES + 3 * NUM_SAMPLES


def test_report_renders_from_the_sweep_csv(baseline, tmp_path):
    out = tmp_path / "report"
    result = _invoke("report", baseline["csv"], "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("README.md", "fid_vs_is.pdf", "fid_vs_is.svg", "fid_vs_is.png", "precision_vs_recall.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "samples").glob("*.png")), "sample grids from samples_path"


def test_rerun_skips_every_row_without_sampling_or_scoring(assets, baseline):
    before_files, before_csv = _snapshot(baseline["out"]), baseline["csv"].read_bytes()
    calls = CALLS.get(FEATURES, 0)
    result = _invoke("sweep", *model_args(assets), *score_args(assets), "--scales", SCALES, "--out",
                     baseline["out"], "--csv", baseline["csv"])
    assert result.exit_code == 0, result.output
    assert "3 of 3 settings already in" in result.output
    assert CALLS.get(FEATURES, 0) == calls
    assert _snapshot(baseline["out"]) == before_files
    assert baseline["csv"].read_bytes() == before_csv


def test_extended_sweep_runs_only_the_new_setting(assets, baseline, tmp_path):
    out, csv = tmp_path / "sweep", tmp_path / "results.csv"
    shutil.copytree(baseline["out"], out)
    shutil.copy(baseline["csv"], csv)
    calls = CALLS.get(FEATURES, 0)
    base = _request(checkpoint=str(assets["unet"]), model_flags=UNET_FLAGS, num_samples=NUM_SAMPLES,
                    timestep_respacing="2", classifier=str(assets["classifier"]), classifier_flags=CLASSIFIER_FLAGS,
                    classifier_scale=1.0)
    table = run_sweep(SweepPlan.of(base, [0, 1, 4, 2]), assets["ref"], out, csv, FEATURES,
                      RunOptions(batch_size=10, progress=False))
    assert CALLS.get(FEATURES, 0) - calls == NUM_SAMPLES  # the new setting's samples only
    assert table["guidance_scale"].tolist() == [0.0, 1.0, 4.0, 2.0]
    old = read_results(baseline["csv"])
    pd.testing.assert_frame_equal(table.iloc[:3], old)
    assert (out / "scale-2" / f"samples_{NUM_SAMPLES}x8x8x3.npz").is_file()


def test_respacings_sweep_the_product(assets, tmp_path):
    base = _request(checkpoint=str(assets["unet"]), model_flags=UNET_FLAGS, num_samples=NUM_SAMPLES,
                                classifier=str(assets["classifier"]), classifier_flags=CLASSIFIER_FLAGS,
                                classifier_scale=1.0)
    table = run_sweep(SweepPlan.of(base, "0,2", "2,ddim2"), assets["ref"], tmp_path / "sweep", tmp_path / "r.csv",
                      FEATURES, RunOptions(batch_size=10, progress=False), label="tiny")
    assert table[["guidance_scale", "sampler", "steps"]].values.tolist() == [
        [0.0, "ancestral", "2"], [2.0, "ancestral", "2"], [0.0, "ddim", "ddim2"], [2.0, "ddim", "ddim2"]]
    assert table["eta"].isna().tolist() == [True, True, False, False]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [
        "scale-0_steps-2", "scale-0_steps-ddim2", "scale-2_steps-2", "scale-2_steps-ddim2"]
    assert table["fid"].nunique() == 4 and table["label"].eq("tiny").all()


def test_sweep_resumes_after_a_real_kill(assets, baseline, tmp_path):
    """SIGKILL the sweep in the middle of its second setting; the rerun finishes it from its shards
    and the CSV equals the uninterrupted sweep's."""
    out, csv = tmp_path / "sweep", tmp_path / "results.csv"
    args = ["sweep", *model_args(assets, batch_size=BATCH), *score_args(assets), "--scales", SCALES, "--out", out,
            "--csv", csv]
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
           "EVALKIT_PLUGINS": "tiny_extractor", "EVALKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "evalkit", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out / "scale-1" / "shards"
    deadline = time.monotonic() + 240
    try:
        # Wait until the first row is in and the second setting has some, not all, of its shards.
        while time.monotonic() < deadline and proc.poll() is None:
            if csv.is_file() and shards.is_dir() and len(list(shards.glob("shard-*.npz"))) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(read_results(csv)) == 1
    assert not (out / "scale-1" / f"samples_{NUM_SAMPLES}x8x8x3.npz").exists()
    kept = sum(int(end) - int(start) for start, end in (p.stem.split("-")[1:] for p in shards.glob("shard-*.npz")))
    assert 0 < kept < NUM_SAMPLES

    result = _invoke("sweep", *args[1:])
    assert result.exit_code == 0, result.output
    record = read_json(out / "scale-1" / "metrics.json")
    assert record["sampling"]["generated_now"] == NUM_SAMPLES - kept  # resumed, not restarted
    resumed, uninterrupted = read_results(csv), read_results(baseline["csv"])
    assert resumed["run_id"].tolist() == uninterrupted["run_id"].tolist()
    for key in METRIC_KEYS:
        np.testing.assert_allclose(resumed[key], uninterrupted[key], rtol=1e-6, atol=0, err_msg=key)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error, exit 1, nothing written

@pytest.mark.parametrize("scales, match", [
    ("", "--scales is empty"), ("1,,2", "item 2 is empty"), ("a", "item 1 is 'a'"), ("-1", ">= 0"),
    ("0,-0.5", "item 2"), ("1,1", "twice")])
def test_bad_scales(assets, tmp_path, scales, match):
    out, csv = tmp_path / "sweep", tmp_path / "r.csv"
    result = _invoke("sweep", *model_args(assets), *score_args(assets), "--scales", scales, "--out", out,
                     "--csv", csv)
    assert result.exit_code == 1
    assert match in result.output and result.output.count("\n") == 1, result.output
    assert not out.exists() and not csv.exists()


@pytest.mark.parametrize("case", ["foreign_csv", "missing_columns", "out_is_file", "no_classifier",
                                  "bad_respacings", "respacing_twice", "other_run_in_folder", "unknown_ref"])
def test_bad_input_is_refused_before_anything_is_written(assets, baseline, tmp_path, case):
    out, csv = tmp_path / "sweep", tmp_path / "r.csv"
    extra, model, match, scoring = [], model_args(assets), None, score_args(assets)
    if case == "foreign_csv":
        csv.write_text("name,score\na,1\n")
        match = "not an evalkit results table"
    elif case == "missing_columns":
        pd.read_csv(baseline["csv"]).drop(columns=["fid", "sfid"]).to_csv(csv, index=False)
        match = "missing columns: fid, sfid"
    elif case == "out_is_file":
        out.write_text("not a folder")
        match = "is a file"
    elif case == "no_classifier":
        model = model_args(assets, classifier=False)
        match = "need a classifier"
    elif case == "bad_respacings":
        model, extra, match = model_args(assets, steps=None), ["--respacings", "2,x"], "item 2 is 'x'"
    elif case == "respacing_twice":
        extra, match = ["--respacings", "2,3"], "not both"
    elif case == "other_run_in_folder":
        # scale-0 of this sweep holds a run with other settings (another seed).
        shutil.copytree(baseline["out"] / "scale-0", out / "scale-0")
        extra, match = ["--seed", "5"], "holds another run"
    elif case == "unknown_ref":
        scoring, match = ["--ref", tmp_path / "missing.npz", "--features", FEATURES], "neither an existing file"
    before = _snapshot(tmp_path)
    result = _invoke("sweep", *model, *scoring, "--scales", SCALES, "--out", out, "--csv", csv, *extra)
    assert result.exit_code == 1, result.output
    assert match in result.output and result.output.startswith("Error:"), result.output
    assert _snapshot(tmp_path) == before
