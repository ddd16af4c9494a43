"""Seed sweeps (`evalkit sweep --seeds`), results rows with the extra metrics and intervals, and the
report's aggregation over seeds (mean ± std in the table, error bars in the figures)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from sweep_helpers import NUM_SAMPLES, make_assets, model_args, score_args
from tiny_sampling import one_thread

matplotlib.use("Agg")

from evalkit.cli import main  # noqa: E402
from evalkit.plots import CI_GID_PREFIX, SEEDS_GID_PREFIX, fid_vs_is, precision_vs_recall  # noqa: E402
from evalkit.report import aggregate_seeds, results_table  # noqa: E402
from evalkit.results import COLUMNS, read_results, validate_table  # noqa: E402
from evalkit.sweep import parse_seeds  # noqa: E402


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("EVALKIT_CACHE", str(root / "cache"))
        mp.delenv("EVALKIT_PLUGINS", raising=False)
        yield {**make_assets(root / "assets"), "root": root}


def test_parse_seeds():
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds(None) == () and parse_seeds([3, 5]) == (3, 5)
    for bad, match in (("", "empty"), ("0,,1", "item 2 is empty"), ("a", "item 1 is 'a'"), ("-1", ">= 0"),
                       ("1.5", "whole number"), ("0,1,1", "seed 1 is listed twice")):
        with pytest.raises(Exception, match=match):
            parse_seeds(bad)


def test_seed_sweep_rows_folders_and_extra_columns(assets):
    """One row per seed and setting, seed folders, KID and interval columns filled (schema v2); the
    rows of seeds 0 and 1 differ. Then the report draws them as one point with ± std bars."""
    out, csv = assets["root"] / "sweep", assets["root"] / "results.csv"
    result = _invoke("sweep", *model_args(assets, classifier=False), *score_args(assets), "--scales", "0",
                     "--seeds", "0,1", "--metrics", "is,fid,sfid,pr,kid", "--kid-subset-size", "10",
                     "--kid-subsets", "5", "--bootstrap", "8", "--out", out, "--csv", csv)
    assert result.exit_code == 0, result.output
    df = read_results(csv)
    assert list(df.columns) == list(COLUMNS) + ["samples_path"]
    assert df["seed"].tolist() == [0, 1] and df["run_id"].is_unique
    assert sorted(str(p.relative_to(out)) for p in out.glob("seed-*/scale-*")) == ["seed-0/scale-0", "seed-1/scale-0"]
    assert df["fid"].nunique() == 2
    for col in ("kid", "kid_std", "fid_ci_low", "fid_ci_high", "kid_ci_low", "recall_ci_high"):
        assert df[col].notna().all(), col
    assert df["density"].isna().all() and df["bootstrap"].tolist() == [8, 8]
    assert (df["fid_ci_low"] <= df["fid_ci_high"]).all()

    report = assets["root"] / "report"
    rendered = _invoke("report", csv, "--out", report)
    assert rendered.exit_code == 0, rendered.output
    table = (report / "results_table.md").read_text()
    mean, std = df["fid"].mean(), df["fid"].std(ddof=1)
    assert f"{mean:.2f} ± {std:.2f}" in table and "| 0,1 |" in table
    assert "differ only by the sampling seed" in (report / "README.md").read_text()


@pytest.mark.parametrize("args, match", [
    (["--seeds", "0,1,0"], "--seeds '0,1,0': seed 0 is listed twice"),
    (["--seeds", "0,1", "--seed", "3"], "give --seed .* or --seeds .*, not both"),
    (["--seeds", "0", "--metrics", "kid"], f"--kid-subset-size 1000: each setting's sample batch "
                                           f"\\(--num-samples {NUM_SAMPLES}\\) holds {NUM_SAMPLES} images"),
    (["--seeds", "0", "--bootstrap", "0"], "--bootstrap: found 0"),
])
def test_bad_seed_and_metric_options_write_nothing(assets, tmp_path, args, match):
    out, csv = tmp_path / "sweep", tmp_path / "r.csv"
    result = _invoke("sweep", *model_args(assets, classifier=False), *score_args(assets), "--scales", "0", *args,
                     "--out", out, "--csv", csv)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1, result.output
    import re
    assert re.search(match, result.output), result.output
    assert not out.exists() and not csv.exists()


def _rows():
    base = {"label": "m", "preset": "tiny", "steps": "10", "sampler": "ancestral", "num_samples": 16,
            "image_size": 64, "features": "inception", "sfid": 5.0}
    rows = []
    for i, seed in enumerate((0, 1, 2)):  # scale 1: three seeds
        rows.append({**base, "run_id": f"s{seed}", "seed": seed, "guidance_scale": 1.0, "inception_score": 50.0 + i,
                     "fid": 10.0 + 2 * i, "precision": 0.6, "recall": 0.5 + 0.1 * i})
    rows.append({**base, "run_id": "b", "seed": 0, "guidance_scale": 4.0, "inception_score": 80.0, "fid": 20.0,
                 "precision": 0.8, "recall": 0.4, "inception_score_ci_low": 78.0, "inception_score_ci_high": 83.0,
                 "fid_ci_low": 19.0, "fid_ci_high": 22.0, "precision_ci_low": 0.75, "precision_ci_high": 0.85,
                 "recall_ci_low": 0.3, "recall_ci_high": 0.38, "bootstrap": 100})
    return validate_table(pd.DataFrame([{**{c: None for c in COLUMNS}, **r} for r in rows]))


def test_aggregate_seeds_mean_and_sample_std():
    """fid 10, 12, 14 over seeds → 12 ± 2 (sample std, ddof 1; ddof 0 would give 1.63). Catches:
    grouping that keeps the seed (no aggregation), the population std, a row of another scale merged."""
    agg = aggregate_seeds(_rows())
    assert len(agg) == 2
    first = agg.iloc[0]
    assert first["num_seeds"] == 3 and first["seeds"] == "0,1,2"
    assert first["fid"] == pytest.approx(12.0, abs=1e-12) and first["fid_seed_std"] == pytest.approx(2.0, abs=1e-12)
    assert first["recall"] == pytest.approx(0.6) and first["recall_seed_std"] == pytest.approx(0.1)
    assert agg.iloc[1]["num_seeds"] == 1 and np.isnan(agg.iloc[1]["fid_seed_std"]) and agg.iloc[1]["fid"] == 20.0
    table = results_table(agg).markdown()
    assert "12.00 ± 2.00" in table and "50.00 ± 0.00" not in table and "51.00 ± 1.00" in table
    assert "| 20.00 |" in table  # the single-seed row prints without ±


def test_figures_draw_seed_error_bars_and_bootstrap_intervals():
    """The aggregated point gets ± std error bars (ErrorbarContainer, half-length 2 in FID and 1 in IS);
    the bootstrap row gets its interval drawn from low to high, also when it lies below the point
    (recall 0.3..0.38 < 0.4). Catches: bars of the wrong length, intervals clipped to contain the point,
    no bars at all."""
    agg = aggregate_seeds(_rows())
    ax = fid_vs_is(agg).axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and bars[0].get_label() is not None
    segs = {tuple(np.round(np.asarray(s).ravel(), 9)) for coll in bars[0].lines[2] for s in coll.get_segments()}
    assert {(50.0, 12.0, 52.0, 12.0), (51.0, 10.0, 51.0, 14.0)} <= segs  # IS 51 ± 1, FID 12 ± 2
    assert all(s[0] == s[2] and s[1] == s[3] for s in segs if 80.0 in s)  # the single-seed point: no bar
    ci = [c for c in ax.collections if isinstance(c, LineCollection) and (c.get_gid() or "").startswith(CI_GID_PREFIX)]
    spans = sorted(tuple(np.round(np.asarray(s).ravel(), 9)) for c in ci for s in c.get_segments())
    assert spans == [(78.0, 20.0, 83.0, 20.0), (80.0, 19.0, 80.0, 22.0)]
    ax = precision_vs_recall(agg).axes[0]
    ci = [c for c in ax.collections if (c.get_gid() or "").startswith(CI_GID_PREFIX)]
    spans = sorted(tuple(np.round(np.asarray(s).ravel(), 9)) for c in ci for s in c.get_segments())
    assert (0.8, 0.3, 0.8, 0.38) in spans
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and all((coll.get_gid() or "").startswith(SEEDS_GID_PREFIX) for coll in bars[0].lines[2])
