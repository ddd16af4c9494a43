"""`evalkit demo`: the paper's tradeoff with the committed digits weights, the end-to-end run, helpers, errors.

The end-to-end run (`evalkit demo --quick` through click: the ADM guidance sweep and the BigGAN-deep
truncation sweep) happens once per module; both tradeoffs are asserted on its rows (the same samples
the demo's README describes) and, independently, from the samples themselves with the metric
functions. The full-size run is a slow test.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from evalkit.cli import main
from evalkit.demo import run as demo
from evalkit.demo.data import digits_images
from evalkit.demo.gan import DEFAULT_TRUNCATIONS
from evalkit.errors import CheckpointError, ConfigError, RunDirectoryError, WeightsError
from evalkit.presets import get_biggan_preset
from evalkit.evaluate import build_extractor
from evalkit.metrics import feature_statistics, inception_score, precision_recall, softmax
from evalkit.refbuild import reference_meta
from evalkit.results import read_results
from evalkit.store import open_batch


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`evalkit demo --quick` into a fresh folder (feature cache in a temporary folder)."""
    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("EVALKIT_CACHE", str(root / "cache"))
    mp.delenv("EVALKIT_PLUGINS", raising=False)
    try:
        out = root / "demo"
        result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--no-progress"])
        yield out, result
    finally:
        mp.undo()


def test_quick_demo_writes_csv_plots_report_and_samples(quick_demo):
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    rows = read_results(out / "results.csv")
    adm, gan = rows[rows["family"] == "adm"], rows[rows["family"] == "biggan-deep"]
    assert len(adm) + len(gan) == len(rows)
    assert list(adm["guidance_scale"]) == list(demo.QUICK_SCALES) and adm["truncation"].isna().all()
    # The BigGAN-deep rows: same CSV, truncation set, every guidance cell empty, the preset's weights.
    assert list(gan["truncation"]) == list(demo.QUICK_TRUNCATIONS)
    assert gan[["guidance_scale", "classifier", "sampler", "steps"]].isna().all().all()
    assert set(gan["preset"]) == {"digits8_biggan"} and set(gan["label"]) == {demo.GAN_LABEL}
    assert set(gan["checkpoint_sha256"]) == {get_biggan_preset("digits8_biggan").sha256}
    assert set(rows["features"]) == {"digits"} and set(rows["num_samples"]) == {demo.QUICK_NUM_SAMPLES}
    assert len(set(rows["reference_sha256"])) == 1
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["scale-0", "scale-8", "truncation-0.2",
                                                                   "truncation-1"]
    # Both curves are in the report, each labelled by its knob.
    report_readme = (out / "report" / "README.md").read_text()
    assert f"- {demo.LABEL}: guidance scale 0, 8" in report_readme
    assert f"- {demo.GAN_LABEL}: truncation 0.2, 1" in report_readme
    assert rows[["inception_score", "fid", "sfid", "precision", "recall"]].notna().all().all()
    for name in ("fid_vs_is.png", "fid_vs_is.pdf", "fid_vs_is.svg", "precision_vs_recall.png",
                 "results_table.md", "results_table.tex", "README.md", "report.json"):
        assert (out / "report" / name).stat().st_size > 0, name
    assert (out / "samples.png").stat().st_size > 0 and (out / "README.md").is_file()
    # Printed: where everything is.
    for name in ("README.md", "results.csv", "fid_vs_is.png", "samples.png", "digits8_ref.npz"):
        assert name in result.output
    record = json.loads((out / "demo.json").read_text())
    assert record["status"] == "done" and record["settings"]["num_samples"] == demo.QUICK_NUM_SAMPLES
    assert record["settings"]["truncations"] == list(demo.QUICK_TRUNCATIONS)
    assert [r["family"] for r in record["rows"]] == ["adm", "adm", "biggan-deep", "biggan-deep"]
    # The reference is the demo's: every bundled digit, digits features.
    meta = reference_meta(out / demo.REFERENCE)
    assert meta["features"] == "digits" and meta["subset"] == 1797 and meta["source_num_images"] == 1797
    # The summary names files relative to the folder; sample stores are named relative to the CSV.
    text = (out / "README.md").read_text()
    assert str(out) not in text.replace(result_command(out), "")
    assert not any(p.startswith("/") for p in rows["samples_path"])


def result_command(out) -> str:
    return f"evalkit demo --out {out} --quick"


def test_quick_demo_shows_the_papers_tradeoff(quick_demo):
    """IS and precision at the largest scale above scale 0, recall below (Dhariwal & Nichol 2021)."""
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    rows = read_results(out / "results.csv")
    rows = rows[rows["family"] == "adm"].sort_values("guidance_scale")
    lo, hi = rows.iloc[0], rows.iloc[-1]
    assert lo["guidance_scale"] == 0 and hi["guidance_scale"] == max(demo.QUICK_SCALES)
    assert hi["inception_score"] > lo["inception_score"]
    assert hi["precision"] > lo["precision"]
    assert hi["recall"] < lo["recall"]
    assert "finding (Dhariwal & Nichol 2021" in (out / "README.md").read_text()
    assert json.loads((out / "demo.json").read_text())["tradeoff"] == {
        "is_up": True, "precision_up": True, "recall_down": True}


def test_quick_demo_shows_the_truncation_tradeoff(quick_demo):
    """BigGAN-deep at truncation 0.2 against 1.0: precision and IS higher, recall lower (Brock et al. 2019;
    the paper's BigGAN-deep curve). At 200 samples the gaps are wide (precision ~0.90 → ~0.99, recall
    ~0.8 → ~0.02, IS ~8.5 → ~9.4), far beyond the few-hundredths seed noise of 200-sample precision/recall.
    Catches a truncation that does not reach the generator (identical rows) and a README/demo.json that
    reads the sweep the wrong way round (sorting truncations ascending flips every check)."""
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    rows = read_results(out / "results.csv")
    gan = rows[rows["family"] == "biggan-deep"].set_index("truncation")
    lo, hi = gan.loc[min(demo.QUICK_TRUNCATIONS)], gan.loc[1.0]
    assert lo["precision"] > hi["precision"]
    assert lo["recall"] < hi["recall"]
    assert lo["inception_score"] > hi["inception_score"]
    assert "truncation trick trades diversity for fidelity" in (out / "README.md").read_text()
    assert json.loads((out / "demo.json").read_text())["gan_tradeoff"] == {
        "is_up": True, "precision_up": True, "recall_down": True}
    assert "truncation down: IS rises, precision rises, recall falls" in result.output


def test_rows_recomputed_from_the_stored_samples(quick_demo):
    """The CSV numbers are the metrics of the stored samples against all 1797 digits (independent path)."""
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    extractor = build_extractor("digits", "cpu")
    real = extractor(digits_images()[0])
    rows = read_results(out / "results.csv")
    for _, row in rows.iterrows():
        with open_batch(out / row["samples_path"]) as reader:
            feats = extractor(reader.read_images())
        assert inception_score(softmax(feats["logits"]), split_size=5000) == pytest.approx(row["inception_score"],
                                                                                        rel=1e-5)
        precision, recall = precision_recall(real["pool"], feats["pool"], k=3)
        assert precision == pytest.approx(row["precision"], abs=1e-9)
        assert recall == pytest.approx(row["recall"], abs=1e-9)


def test_demo_samples_depend_on_the_scale(quick_demo):
    """Guidance changes the images (a no-op guidance would make the tradeoff test vacuous)."""
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    rows = read_results(out / "results.csv")
    for family, key in (("adm", "guidance_scale"), ("biggan-deep", "truncation")):
        paths = rows[rows["family"] == family].sort_values(key)["samples_path"]
        images = [open_batch(out / p).read_images() for p in paths]
        labels = [open_batch(out / p).labels for p in paths]
        assert all(np.array_equal(labels[0], lab) for lab in labels), family  # same seeds → same labels
        assert not np.array_equal(images[0], images[-1]), family


# ---------------------------------------------------------------------------------------------
# Helpers and errors (no sampling)


def test_class_sorted_and_tradeoff_checks():
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    labels = np.array([2, 0, 2, 1, 0, 2])
    grid = demo.class_sorted(images, labels, per_class=2, num_classes=3)
    assert np.array_equal(grid[[0, 1, 2, 4, 5]], images[[1, 4, 3, 0, 2]])
    assert (grid[3] == 255).all()  # class 1 has one sample: the second cell is blank
    assert np.array_equal(demo.class_sorted(images, None, 1, num_classes=4), images[:4])
    rows = pd.DataFrame({"guidance_scale": [4.0, 0.0, 1.0], "inception_score": [3.0, 2.0, 2.5],
                         "precision": [0.5, 0.6, 0.55], "recall": [0.2, 0.4, 0.3]})
    assert demo.tradeoff_checks(rows) == {"is_up": True, "precision_up": False, "recall_down": True}
    # Truncation: toward fidelity is toward the SMALLEST truncation (here 0.2 against 1.0).
    gan = pd.DataFrame({"truncation": [0.6, 1.0, 0.2], "inception_score": [2.5, 2.0, 3.0],
                        "precision": [0.7, 0.6, 0.5], "recall": [0.3, 0.4, 0.2]})
    assert demo.tradeoff_checks(gan, "truncation") == {"is_up": True, "precision_up": False, "recall_down": True}


def test_bad_options_fail_before_writing(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(ConfigError, match="at least two guidance scales"):
        demo.run_demo(out, scales="1")
    with pytest.raises(ConfigError, match="--num-samples 3"):
        demo.run_demo(out, num_samples=3)
    with pytest.raises(ConfigError, match="item 2"):
        demo.run_demo(out, scales="0,x")
    with pytest.raises(ConfigError, match="at least two truncations"):
        demo.run_demo(out, truncations="0.5")
    with pytest.raises(ConfigError, match=r"--truncations .*item 1"):
        demo.run_demo(out, truncations="0,1")
    assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(main, ["demo", "--out", str(other), "--quick"])
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: --out .*other: the folder holds other files and no demo\.json; .*\n", result.output)
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        demo.run_demo(tmp_path / "afile")


def test_reference_reused_only_when_current(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    extractor = build_extractor("digits", "cpu")
    path = tmp_path / "ref" / "digits8_ref.npz"
    logs = []
    demo.ensure_reference(path, extractor, progress=False, log=logs.append)
    assert demo.reference_is_current(path, extractor) and "building" in logs[-1]
    with np.load(path, allow_pickle=False) as f:
        feats = extractor(digits_images()[0])
        np.testing.assert_allclose(f["mu"], feature_statistics(feats["pool"])[0], atol=1e-6)
    stamp = path.stat().st_mtime_ns
    demo.ensure_reference(path, extractor, progress=False, log=logs.append)
    assert "reusing" in logs[-1] and path.stat().st_mtime_ns == stamp

    class Other:  # same network, other identity (e.g. retrained weights): must rebuild
        name = extractor.name
        feature_dims = extractor.feature_dims

        def identity(self):
            return {**extractor.identity(), "weights_sha256": "0" * 64}

        def __call__(self, images):
            return extractor(images)

    assert not demo.reference_is_current(path, Other())
    path.write_bytes(b"garbage")
    assert not demo.reference_is_current(path, extractor)


def test_biggan_weights_from_weights_dir(tmp_path):
    """`weights_dir` supplies digits8_biggan.pt when it holds one (sha256 recorded from that file), else the
    bundled weights are used; a damaged file there is refused before anything runs."""
    bundled = demo.digits_biggan_request(8)
    assert bundled.model.checkpoint_sha256 == get_biggan_preset("digits8_biggan").sha256
    assert demo.digits_biggan_request(8, weights_dir=tmp_path).model.checkpoint == bundled.model.checkpoint
    copy = tmp_path / "digits8_biggan.pt"
    shutil.copyfile(bundled.model.checkpoint, copy)
    request = demo.digits_biggan_request(8, seed=3, weights_dir=tmp_path)
    assert request.model.checkpoint == str(copy) and request.seed == 3
    assert request.model.checkpoint_sha256 == bundled.model.checkpoint_sha256
    copy.write_bytes(b"not a checkpoint")
    with pytest.raises((CheckpointError, WeightsError)):
        demo.digits_biggan_request(8, weights_dir=tmp_path)


@pytest.mark.slow
def test_full_demo_shows_both_tradeoffs(tmp_path, monkeypatch):
    """The full-size demo (500 samples, every default scale and truncation), as committed in reports/demo:
    both families trade recall for precision toward fidelity, as its README says (covered fast by --quick)."""
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    result = demo.run_demo(tmp_path / "demo", progress=False, log=lambda message: None)
    assert list(result.gan_rows["truncation"]) == list(DEFAULT_TRUNCATIONS)
    assert set(result.gan_rows["family"]) == {"biggan-deep"}
    assert result.tradeoff == result.gan_tradeoff == {"is_up": True, "precision_up": True, "recall_down": True}
