"""`evalkit report` / `evalkit baselines`: files produced, tables well formed, every bad input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

matplotlib.use("Agg")

from evalkit import report as report_mod  # noqa: E402
from evalkit.baselines import (  # noqa: E402
    guidance_ablation,
    main_comparison,
    packaged_baselines,
    read_baselines,
    select_baselines,
    unpublished_figures,
)
from evalkit.cli import main  # noqa: E402
from evalkit.errors import InputError, RunDirectoryError  # noqa: E402
from evalkit.report import (  # noqa: E402
    MARKER_FILE,
    latex_escape,
    main_comparison_table,
    paper_report,
    report_from_csv,
    results_table,
)
from evalkit.results import append_row, read_results  # noqa: E402
from evalkit.store import write_npz  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_sweep(path: Path, label="tiny_32 50% & co", features="inception", size=256, samples=False) -> Path:
    """A three-scale results CSV like the sweep writes (optionally with sample stores beside it)."""
    for i, s in enumerate((0.0, 1.0, 4.0)):
        row = {"label": label, "preset": "tiny", "guidance_scale": s, "sampler": "ancestral", "steps": "10",
               "num_samples": 16, "seed": 0, "image_size": size, "features": features,
               "inception_score": 50 + 20 * s, "fid": 30 - 2 * s, "sfid": 6.0, "precision": 0.6 + 0.05 * s,
               "recall": 0.6 - 0.05 * s}
        if samples:
            store = path.parent / "samples" / f"scale{s:g}.npz"
            store.parent.mkdir(exist_ok=True)
            write_npz(store, np.full((4, 8, 8, 3), 60 * i, dtype=np.uint8))
            row["samples_path"] = f"samples/scale{s:g}.npz"
        append_row(path, row)
    return path


def assert_nothing_written(parent: Path, before: set[str]):
    """No report folder, no temporary folder left next to it."""
    assert {p.name for p in parent.iterdir()} == before


@pytest.fixture
def svg_only(monkeypatch):
    """Render figures as SVG only (PDF embedding is slow); test_report_files_... checks every format."""
    monkeypatch.setattr(report_mod, "FIGURE_FORMATS", ("svg",))


def balanced_braces(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return False
    return depth == 0


def test_report_files_readme_and_tables(tmp_path):
    csv = write_sweep(tmp_path / "results.csv")
    out = tmp_path / "reports" / "tiny"
    rep = report_from_csv(csv, out, baselines=["biggan-deep"], command="evalkit report results.csv --out x")
    expected = {f"{stem}.{ext}" for stem in ("fid_vs_is", "precision_vs_recall") for ext in ("pdf", "svg", "png")}
    expected |= {"results_table.md", "results_table.tex", "README.md", MARKER_FILE}
    assert set(rep.files) == expected == {p.name for p in out.iterdir()}
    assert all((out / f).stat().st_size > 0 for f in expected)
    assert (out / "fid_vs_is.pdf").read_bytes().startswith(b"%PDF")
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]   # no temp folder left

    readme = (out / "README.md").read_text()
    sha = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert str(csv) in readme and sha in readme
    assert "evalkit report results.csv --out x" in readme
    assert "BigGAN-deep 256 (trunc. 1.0)" in readme and "arXiv Table 5" in readme and "DiT" in readme
    assert "not published as numbers" in readme and "BigGAN-deep truncation sweep" in readme
    assert "0, 1, 4" in readme
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["results_sha256"] == sha and marker["rows"] == 3 and marker["baselines"] == 1

    tex = (out / "results_table.tex").read_text()
    assert tex.count("\\toprule") == 1 and tex.count("\\bottomrule") == 1 and tex.count("\\midrule") == 2
    assert "\\begin{tabular}{lrlrrrrrrr}" in tex and tex.rstrip().splitlines()[-2] == "\\end{tabular}"
    assert balanced_braces(tex)
    assert "tiny\\_32 50\\% \\& co" in tex and "tiny_32" not in tex
    body = [ln for ln in tex.splitlines() if ln.endswith("\\\\") and "multicolumn" not in ln]
    assert len(body) == 1 + 3 + 1                                   # header, 3 rows, 1 baseline
    assert all(len(re.findall(r"(?<!\\)&", ln)) == 9 for ln in body)  # 10 columns everywhere
    assert "130.00 & 22.00 & 6.00 & 0.80 & 0.40" in tex

    md = (out / "results_table.md").read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("|")]
    assert len(rows) == 2 + 3 + 2                                   # header, rule, 3 rows, group, baseline
    assert {len(re.findall(r"(?<!\\)\|", ln)) for ln in rows} == {11}
    assert "| FID |" in md[0]


def test_report_with_digits_features_names_metrics_and_drops_baselines(tmp_path, svg_only):
    csv = write_sweep(tmp_path / "results.csv", features="digits", size=256)
    rep = report_from_csv(csv, tmp_path / "out", baselines=["biggan-deep"])
    assert len(rep.notes) == 1 and "1 baseline row(s) measured with ['inception'] features were not drawn" in rep.notes[0]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert rep.notes[0] in readme and "## Baselines\n\nNone drawn." in readme
    assert "FD (digits features)" in readme and "| FID |" not in (tmp_path / "out" / "results_table.md").read_text()
    assert "FD (digits features)" in (tmp_path / "out" / "results_table.tex").read_text()


def test_report_sample_grids(tmp_path, svg_only):
    csv = write_sweep(tmp_path / "results.csv", samples=True)
    rep = report_from_csv(csv, tmp_path / "out")
    grids = [f for f in rep.files if f.startswith("samples/")]
    assert len(grids) == 3 and all((tmp_path / "out" / g).stat().st_size > 0 for g in grids)
    assert "guidance scale 4" in (tmp_path / "out" / "README.md").read_text()


def test_report_replaces_previous_report_and_failure_keeps_it(tmp_path, svg_only, monkeypatch):
    csv = write_sweep(tmp_path / "results.csv")
    out = tmp_path / "out"
    report_from_csv(csv, out)
    report_from_csv(csv, out, title="second")                     # an earlier report may be replaced
    assert (out / "README.md").read_text().startswith("# second")

    def boom(*a, **k):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report_mod, "save_figure", boom)
    with pytest.raises(RuntimeError):
        report_from_csv(csv, out, title="third")
    assert (out / "README.md").read_text().startswith("# second")  # old report intact
    # No staging folder left (results.csv.lock is the results writers' lock file).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "results.csv", "results.csv.lock"]


def test_bad_inputs_write_nothing(tmp_path):
    good = write_sweep(tmp_path / "results.csv")
    header_only = tmp_path / "empty.csv"
    header_only.write_text(good.read_text().splitlines()[0] + "\n")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("model,fid\nADM,4.59\n")
    no_source = tmp_path / "nosource.csv"
    no_source.write_text("label,image_size,fid\nmine,256,5.0\n")
    empty_source = tmp_path / "emptysource.csv"
    empty_source.write_text("label,image_size,fid,inception_score,source\nmine,256,5.0,100,\n")
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    before = {p.name for p in tmp_path.iterdir()}

    cases = [
        (dict(csv_path=header_only, out_dir=tmp_path / "o1"), InputError, "has no rows"),
        (dict(csv_path=foreign, out_dir=tmp_path / "o2"), InputError, "missing columns: run_id"),
        (dict(csv_path=tmp_path / "nope.csv", out_dir=tmp_path / "o3"), InputError, "found nothing"),
        (dict(csv_path=good, out_dir=tmp_path / "o4", baselines=[str(no_source)]), InputError,
         "missing columns: source"),
        (dict(csv_path=good, out_dir=tmp_path / "o5", baselines=[str(empty_source)]), InputError,
         r"empty source in row\(s\) 1"),
        (dict(csv_path=good, out_dir=tmp_path / "o6", baselines=["stylegan"]), InputError,
         "neither a baseline set \\(biggan-deep\\)"),
        (dict(csv_path=good, out_dir=a_file), RunDirectoryError, "found a file"),
        (dict(csv_path=good, out_dir=busy), RunDirectoryError, "holds other files"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            report_from_csv(**kwargs)
    assert_nothing_written(tmp_path, before)
    assert (busy / "thesis.tex").read_text() == "precious" and len(list(busy.iterdir())) == 1


def test_missing_sample_store_is_an_error(tmp_path):
    csv = write_sweep(tmp_path / "results.csv", samples=True)
    (tmp_path / "samples" / "scale4.npz").unlink()
    with pytest.raises(InputError, match="1 sample store.*scale4.npz"):
        report_from_csv(csv, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_plottable_pair_is_an_error(tmp_path):
    csv = tmp_path / "r.csv"
    append_row(csv, {"label": "x", "guidance_scale": 1.0, "image_size": 32, "fid": 3.0})
    with pytest.raises(InputError, match="no row has the metric pairs"):
        report_from_csv(csv, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_latex_escape_specials():
    assert latex_escape("a_b 50% & $x# {y} ~^\\") == (
        "a\\_b 50\\% \\& \\$x\\# \\{y\\} \\textasciitilde{}\\textasciicircum{}\\textbackslash{}")
    assert latex_escape("256×256 – 1") == "256$\\times$256 -- 1"


def test_packaged_baselines_have_sources_and_published_values():
    df = packaged_baselines()
    assert df["source"].notna().all() and df["notes"].str.match(r"\[(direct|inferred)").all()
    big = select_baselines("biggan-deep", [128, 256, 512])
    assert big[["image_size", "fid", "sfid", "precision", "recall"]].values.tolist() == [
        [128, 6.02, 7.18, 0.86, 0.35], [256, 6.95, 7.36, 0.87, 0.28], [512, 8.43, 8.13, 0.88, 0.29]]
    assert big["truncation"].tolist() == ["1.0", "1.0", "1.0"]
    assert "DiT" in big.loc[1, "source"]                           # the IS is not from the ADM paper
    abl = guidance_ablation()
    assert len(abl) == 6 and sorted(abl["guidance_scale"]) == [0, 0, 1, 1, 10, 10]
    assert abl.set_index(["label", "guidance_scale"]).loc[("ADM conditional", 10.0), "inception_score"] == 283.92
    main_rows = main_comparison()
    assert len(main_rows) == 35 and main_rows["inception_score"].isna().sum() >= 33
    unpub = unpublished_figures()
    assert len(unpub) == 2 and unpub[["fid", "inception_score", "precision"]].isna().all().all()


def test_main_comparison_table_groups_by_resolution():
    t = main_comparison_table(main_comparison())
    titles = [g for g, _ in t.groups]
    assert "ImageNet 256×256" in titles and "LSUN Cat 256×256" in titles and len(titles) == 7
    tex = t.latex()
    assert balanced_braces(tex) and tex.count("\\midrule") == 7 and "$\\times$" in tex
    assert "ADM-G & 4.59 & 5.25 & 0.82 & 0.52 \\\\" in tex


def test_results_table_lists_baseline_sources(tmp_path):
    df = read_results(write_sweep(tmp_path / "r.csv"))
    t = results_table(df, select_baselines("biggan-deep", [256]))
    assert t.footnotes == [f"[1] {select_baselines('biggan-deep', [256]).loc[0, 'source']}"]


def test_paper_report_matches_committed_tables(tmp_path, svg_only):
    rep = paper_report(tmp_path / "paper", command="evalkit report --paper --out reports/paper")
    assert {"main_table.md", "main_table.tex", "paper_ablation.csv", "fid_vs_is.svg"} <= set(rep.files)
    ablation = read_results(tmp_path / "paper" / "paper_ablation.csv")
    assert len(ablation) == 6 and ablation["run_id"].is_unique
    committed = REPO / "reports" / "paper"
    for name in ("main_table.md", "main_table.tex", "results_table.md", "results_table.tex",
                 "paper_ablation.csv", "README.md"):
        assert (tmp_path / "paper" / name).read_text() == (committed / name).read_text(), (
            f"reports/paper/{name} is stale: regenerate with `evalkit report --paper --out reports/paper`")


def test_cli_report_and_errors(tmp_path, svg_only):
    csv = write_sweep(tmp_path / "results.csv")
    runner = CliRunner()
    res = runner.invoke(main, ["report", str(csv), "--baseline", "biggan-deep", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "wrote 6 files" in res.output
    readme = (tmp_path / "r" / "README.md").read_text()
    assert f"evalkit report {csv} --baseline biggan-deep --out {tmp_path / 'r'}" in readme

    res = runner.invoke(main, ["report", str(csv), "--out", str(csv)])
    assert res.exit_code == 1 and "found a file" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["report", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "missing RESULTS.csv" in res.output
    res = runner.invoke(main, ["report", str(csv), "--paper", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "--paper" in res.output
    res = runner.invoke(main, ["report", str(csv), "--out", str(tmp_path / "x"), "--bogus"])
    assert res.exit_code == 2
    assert not (tmp_path / "x").exists()
    help_text = runner.invoke(main, ["report", "--help"]).output
    assert "--baseline NAME|FILE" in help_text and "evalkit report --paper --out reports/paper" in help_text


def test_cli_paper_and_baselines(tmp_path, svg_only):
    runner = CliRunner()
    res = runner.invoke(main, ["report", "--paper", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "main_table.tex").stat().st_size > 0
    res = runner.invoke(main, ["baselines", "--model", "biggan", "--image-size", "256"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert len(lines) == 2 and "6.95" in lines[1] and "171.40" in lines[1] and "DiT" in lines[1]
    res = runner.invoke(main, ["baselines", "--csv"])
    out = tmp_path / "all.csv"
    out.write_text(res.output)
    assert len(read_baselines(out)) == len(packaged_baselines())
    assert pd.read_csv(out)["source"].notna().all()
