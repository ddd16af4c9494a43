"""BigGAN-deep in the sampling harness: `evalkit sample` / `sweep --truncations` / `report` on a tiny
random-weight BigGAN-deep (8x8, 10 classes; `tiny_sampling.save_biggan`), plus every bad input.

The tiny generator's batch-norm statistics are random per truncation row, so truncation changes
the images (a test that ignored truncation could otherwise not fail).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sweep_helpers import FEATURES, make_assets, model_args, score_args
from tiny_sampling import UNET_FLAGS, one_thread, save_biggan

from evalkit import runstore
from evalkit.cli import main
from evalkit.diffusion import samples_to_uint8
from evalkit.errors import ConfigError
from evalkit.models.biggan import BigGANConfig, biggan_latents, from_state_dict
from evalkit.presets import BIGGAN_PRESETS, BigGANPreset, register_biggan_preset
from evalkit.results import COLUMNS, read_results
from evalkit.sampling.biggan import BigGANArgs, make_biggan_request
from evalkit.sweep import SweepPlan, parse_truncations, settings_row, truncation_dirname

PRESET = "tiny-biggan-8"
N = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def gan(tmp_path_factory):
    """Tiny weights + config, an 8x8 preset bundling them, a 16x16 generator, a UNet and an 8x8 reference."""
    root = tmp_path_factory.mktemp("biggan")
    weights, config = save_biggan(root / "w", "tiny", 8, seed=1)
    w16, c16 = save_biggan(root / "w16", "tiny16", 16, seed=2)
    wide, wide_cfg = save_biggan(root / "wide", "wide", 8, seed=3, channel_width=16)
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    register_biggan_preset(BigGANPreset(name=PRESET, image_size=8, weights=str(weights), config=str(config),
                                        num_classes=10, dim_z=16, truncations=(0.25, 0.5, 1.0), bundled=True,
                                        sha256=sha(weights), config_sha256=sha(config)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALKIT_CACHE", str(root / "cache"))
        mp.delenv("EVALKIT_PLUGINS", raising=False)
        yield {"root": root, "weights": weights, "config": config, "w16": w16, "c16": c16, "wide_cfg": wide_cfg,
               **make_assets(root / "assets")}
    BIGGAN_PRESETS.pop(PRESET, None)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _sample(gan, out, *extra, n=N, batch=4):
    return _invoke("sample", "--checkpoint", gan["weights"], "--config", gan["config"], "--num-samples", n,
                   "--batch-size", batch, "--device", "cpu", "--quiet", "--out", out, *extra)


def _npz(out: Path, n=N, size=8):
    path = out / f"samples_{n}x{size}x{size}x3.npz"
    with np.load(path, allow_pickle=False) as f:
        return f["arr_0"], f["arr_1"], hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# evalkit sample

def test_sample_writes_the_run_directory_with_labels_in_classes(gan, tmp_path):
    """Catches: labels drawn as the class index j instead of classes[j] (labels outside --classes);
    truncation not passed to the network or the latents (t = 0.5 and 1.0 give equal images)."""
    out = tmp_path / "run"
    result = _sample(gan, out, "--truncation", "0.5", "--classes", "2,5,7", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "sampling: 10 samples" in result.output
    images, labels, _ = _npz(out)
    assert images.shape == (N, 8, 8, 3) and images.dtype == np.uint8
    assert set(labels.tolist()) <= {2, 5, 7} and len(set(labels.tolist())) > 1
    assert len({im.tobytes() for im in images}) == N and images.std() > 5  # samples differ from each other
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["settings"]
    assert s["family"] == "biggan-deep" and s["truncation"] == 0.5 and s["seed"] == 3 and s["classes"] == [2, 5, 7]
    assert s["model"]["sha256"] == hashlib.sha256(gan["weights"].read_bytes()).hexdigest()
    assert s["model"]["resolution"] == 8 and len(s["model"]["config_sha256"]) == 64
    assert manifest["complete"] and manifest["labels"] and manifest["record"]["family"] == "biggan-deep"
    # Another truncation, another seed: other images.
    t1 = tmp_path / "t1"
    assert _sample(gan, t1, "--truncation", "1.0", "--classes", "2,5,7", "--seed", "3").exit_code == 0
    assert not np.array_equal(_npz(t1)[0], images)
    s4 = tmp_path / "s4"
    assert _sample(gan, s4, "--truncation", "0.5", "--classes", "2,5,7", "--seed", "4").exit_code == 0
    assert not np.array_equal(_npz(s4)[0], images)


def test_sample_i_is_the_network_on_the_latents_of_sample_i(gan, tmp_path):
    """Independent of the harness's batching: each image equals the generator run alone on
    ``biggan_latents(seed, [i])`` (one sample per call; float rounding of another batch shape may
    move a pixel by one uint8 step at most, on few pixels). Catches latents drawn per batch or with
    batch-local indices, and a wrong quantisation (rounding instead of the ADM floor rule)."""
    out = tmp_path / "run"
    assert _sample(gan, out, "--truncation", "0.7", "--seed", "5").exit_code == 0
    images, labels, _ = _npz(out)
    model = from_state_dict(torch.load(gan["weights"], weights_only=True), BigGANConfig.from_json(gan["config"]))
    for i in range(N):
        z, y = biggan_latents(5, [i], 0.7, None, num_classes=10, dim_z=16)
        with torch.no_grad():
            expected = samples_to_uint8(model(z, y, 0.7))[0]
        assert int(y[0]) == labels[i]
        diff = np.abs(expected.astype(int) - images[i].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05, (i, diff.max(), (diff > 0).mean())


def test_batch_size_independence_and_resume_give_identical_bytes(gan, tmp_path):
    """--batch-size 3 and 8 write the same npz bytes; deleting a shard and the npz, then rerunning
    (with yet another batch size) regenerates identical bytes. Catches per-batch latents or
    batch-local indices (the images would then depend on the batch layout)."""
    a, b = tmp_path / "b3", tmp_path / "b8"
    assert _sample(gan, a, "--truncation", "0.5", "--keep-shards", batch=3).exit_code == 0
    assert _sample(gan, b, "--truncation", "0.5", batch=8).exit_code == 0
    ia, la, sha_a = _npz(a)
    ib, lb, sha_b = _npz(b)
    assert np.array_equal(ia, ib) and np.array_equal(la, lb) and sha_a == sha_b
    shards = runstore.list_shards(a)
    assert [(s.start, s.end) for s in shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    shards[1].path.unlink()
    (a / f"samples_{N}x8x8x3.npz").unlink()
    again = _sample(gan, a, "--truncation", "0.5", batch=2)
    assert again.exit_code == 0 and "3 new, resumed" in again.output, again.output
    assert _npz(a)[2] == sha_a


def test_preset_by_name_dry_run_and_rerun_is_a_no_op(gan, tmp_path):
    """A registered BigGAN preset (registered after the CLI was imported) is accepted by --preset;
    --dry-run prints the resolved settings and writes nothing."""
    out = tmp_path / "run"
    dry = _invoke("sample", "--preset", PRESET, "--num-samples", 4, "--truncation", "0.25", "--device", "cpu",
                  "--dry-run", "--out", out)
    assert dry.exit_code == 0, dry.output
    cfg = json.loads(dry.output)["config"]
    assert cfg["family"] == "biggan-deep" and cfg["truncation"] == 0.25 and cfg["model"]["preset"] == PRESET
    assert cfg["model"]["checkpoint"] == str(gan["weights"]) and cfg["model"]["config"] == str(gan["config"])
    assert not out.exists()
    args = ("sample", "--preset", PRESET, "--num-samples", 4, "--device", "cpu", "--quiet", "--out", out)
    assert _invoke(*args).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["truncation"] == 1.0  # the default
    again = _invoke(*args)
    assert again.exit_code == 0 and "already complete" in again.output


def test_presets_lists_biggan_presets_with_their_kind():
    result = _invoke("presets")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("biggan-deep-128 "))
    assert "biggan-deep" in row.split()[1] and "128" in row and "50.4M" in row and "truncation" in row
    one = _invoke("presets", "biggan-deep-512", "--json")
    assert one.exit_code == 0 and json.loads(one.output)["image_size"] == 512


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, nothing written

def _one_line_error(result, needle):
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert needle in lines[0], (needle, lines[0])


def _pickled(path: Path) -> Path:
    torch.save({"generator.gen_z.bias": torch.zeros(2), "meta": ConfigError("code")}, path)
    return path


SAMPLE_CASES = {
    "truncation_zero": (["--truncation", "0"], "truncation must be a number in (0, 1]"),
    "truncation_above_one": (["--truncation", "1.5"], "got 1.5"),
    "truncation_negative": (["--truncation", "-0.2"], "(0, 1]"),
    "truncation_nan": (["--truncation", "nan"], "(0, 1]"),
    "classifier_scale": (["--classifier-scale", "1"], "--classifier-scale: diffusion-model option"),
    "classifier_preset": (["--classifier-preset", "digits8_classifier"], "--classifier-preset"),
    "classifier_checkpoint": (["--classifier", "x.pt"], "--classifier: diffusion-model option"),
    "respacing": (["--timestep-respacing", "10"], "--timestep-respacing"),
    "ddim_eta": (["--use-ddim", "--eta", "0.5"], "--use-ddim/--no-use-ddim, --eta"),
    "fp16": (["--fp16"], "--fp16/--no-fp16"),
    "upsampler": (["--upsampler", "64_256_upsampler"], "--upsampler"),
    "classes_outside": (["--classes", "3,12"], "outside [0, 10)"),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_bad_sample_options_for_a_gan(gan, tmp_path, case):
    extra, needle = SAMPLE_CASES[case]
    before = _snapshot(gan["root"])
    _one_line_error(_sample(gan, tmp_path / "out", *extra), needle)
    assert not (tmp_path / "out").exists() and _snapshot(gan["root"]) == before


@pytest.mark.parametrize("case", ["other_resolution_weights", "config_other_resolution", "config_not_matching",
                                  "needs_code", "no_config", "truncation_to_diffusion_preset",
                                  "truncation_to_diffusion_flags", "config_to_diffusion"])
def test_bad_weights_and_family_mixups(gan, tmp_path, case):
    out, w16_copy = tmp_path / "out", tmp_path / "w16.bin"
    common = ["--num-samples", 4, "--device", "cpu", "--quiet", "--out", out]
    if case == "other_resolution_weights":  # 16x16 weights given to the 8x8 preset (its config)
        shutil.copy(gan["w16"], w16_copy)
        args, needle = ["--preset", PRESET, "--checkpoint", w16_copy], "holds a 16x16 BigGAN-deep generator"
    elif case == "config_other_resolution":
        args, needle = ["--preset", PRESET, "--config", gan["c16"]], "describes a 16x16 generator"
    elif case == "config_not_matching":  # same resolution, twice the channels
        args, needle = ["--checkpoint", gan["weights"], "--config", gan["wide_cfg"]], "does not match"
    elif case == "needs_code":
        args = ["--checkpoint", _pickled(tmp_path / "evil-pytorch_model.bin"), "--config", gan["config"]]
        needle = "needs code to unpickle"
    elif case == "no_config":
        shutil.copy(gan["weights"], tmp_path / "alone.pt")
        args, needle = ["--checkpoint", tmp_path / "alone.pt", "--truncation", "0.5"], "no BigGAN config given"
    elif case == "truncation_to_diffusion_preset":
        args, needle = ["--preset", "digits8_diffusion", "--truncation", "0.5"], "GAN option(s) given to digits8"
    elif case == "truncation_to_diffusion_flags":
        args = ["--model-flags", UNET_FLAGS, "--checkpoint", gan["unet"], "--truncation", "0.5"]
        needle = "--truncation: GAN option(s)"
    else:
        args = ["--model-flags", UNET_FLAGS, "--checkpoint", gan["unet"], "--config", gan["config"]]
        needle = "--config: GAN option(s)"
    before = _snapshot(tmp_path)
    _one_line_error(_invoke("sample", *args, *common), needle)
    assert _snapshot(tmp_path) == before and not out.exists()


# ---------------------------------------------------------------------------------------------
# Sweeps

def test_parse_truncations_and_plan():
    assert parse_truncations("0.1, 0.5,1") == (0.1, 0.5, 1.0)
    for bad, match in (("", "empty"), ("0.1,,0.2", "item 2 is empty"), ("0.1,", "item 2 is empty"),
                       ("x", "'x'"), ("0", "(0, 1]"), ("1.01", "(0, 1]"), ("-0.5", "(0, 1]"), ("nan", "(0, 1]"),
                       ("0.5,0.50", "twice")):
        with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
            parse_truncations(bad)
    assert truncation_dirname(1.0) == "truncation-1" and truncation_dirname(0.25) == "truncation-0.25"


def test_gan_rows_identity(gan):
    """A GAN row's run_id depends on truncation, preset, weights sha256, seed, classes, sample count.
    Catches a run_id that leaves truncation (or the family's cells) out: every truncation would share
    one id and the sweep would skip all but the first."""
    base = make_biggan_request(BigGANArgs(checkpoint=str(gan["weights"]), config=str(gan["config"]), num_samples=8))

    def row(request, **kw):
        return settings_row(request, reference="ref.npz", reference_sha256="ab" * 32, features=FEATURES, **kw)

    plan = SweepPlan.of(base, truncations="0.25,0.5,1")
    rows = [row(r) for _, r in plan.settings()]
    assert [name for name, _ in plan.settings()] == ["truncation-0.25", "truncation-0.5", "truncation-1"]
    assert [r["truncation"] for r in rows] == [0.25, 0.5, 1.0]
    assert all(r["family"] == "biggan-deep" and r.get("guidance_scale") is None and r.get("sampler") is None
               and r["checkpoint_sha256"] == base.model.checkpoint_sha256 for r in rows)
    preset = make_biggan_request(BigGANArgs(preset=PRESET, num_samples=8))
    others = [row(preset), row(make_biggan_request(BigGANArgs(preset=PRESET, num_samples=8, seed=1))),
              row(make_biggan_request(BigGANArgs(preset=PRESET, num_samples=8, classes="0-4"))),
              row(make_biggan_request(BigGANArgs(preset=PRESET, num_samples=9))),
              row(make_biggan_request(BigGANArgs(checkpoint=str(gan["w16"]), config=str(gan["c16"]), num_samples=8)))]
    ids = [r["run_id"] for r in rows + others]
    assert len(set(ids)) == len(ids)
    assert row(base)["run_id"] == rows[2]["run_id"]  # truncation 1.0 is the request's default
    with pytest.raises(ConfigError, match="--scales applies to diffusion models"):
        SweepPlan.of(base, scales="0,1")
    with pytest.raises(ConfigError, match="--respacings applies to diffusion models"):
        SweepPlan.of(base, respacings="10", truncations="0.5")


def _sweep(gan, out, csv, *extra):
    return _invoke("sweep", "--checkpoint", gan["weights"], "--config", gan["config"], "--num-samples", 20,
                   "--batch-size", 8, "--device", "cpu", "--quiet", *score_args(gan), "--out", out, "--csv", csv,
                   *extra)


def test_truncation_sweep_and_adm_sweep_share_one_csv_and_one_report(gan, tmp_path):
    """One row per truncation (family, truncation set, guidance cells empty), a rerun skips them all,
    an ADM sweep appends its rows (truncation empty) to the same CSV, and the report draws both curves."""
    out, csv = tmp_path / "sweep", tmp_path / "results.csv"
    result = _sweep(gan, out, csv, "--truncations", "0.25,0.5,1")
    assert result.exit_code == 0, result.output
    df = read_results(csv)
    assert list(df.columns) == list(COLUMNS) + ["samples_path"] and len(df) == 3 and df["run_id"].is_unique
    assert df["family"].eq("biggan-deep").all() and df["truncation"].tolist() == [0.25, 0.5, 1.0]
    for col in ("guidance_scale", "classifier", "classifier_sha256", "sampler", "steps", "eta", "preset"):
        assert df[col].isna().all(), col
    assert df["checkpoint_sha256"].eq(hashlib.sha256(gan["weights"].read_bytes()).hexdigest()).all()
    assert df["label"].eq("tiny-pytorch_model").all() and df["image_size"].eq(8).all()
    assert df["fid"].map(math.isfinite).all() and df["fid"].nunique() == 3  # truncation changes the samples
    assert sorted(p.name for p in out.iterdir()) == ["truncation-0.25", "truncation-0.5", "truncation-1"]
    assert (out / "truncation-0.5" / "samples_20x8x8x3.npz").is_file()
    # Rerun: nothing sampled, scored or written.
    before, csv_bytes = _snapshot(out), csv.read_bytes()
    again = _sweep(gan, out, csv, "--truncations", "0.25,0.5,1")
    assert again.exit_code == 0 and "3 of 3 settings already" in again.output
    assert _snapshot(out) == before and csv.read_bytes() == csv_bytes
    # An ADM guidance sweep appends to the same CSV: truncation empty, family adm.
    adm = _invoke("sweep", *model_args(gan, batch_size=10), *score_args(gan), "--scales", "0,4",
                  "--out", tmp_path / "adm", "--csv", csv)
    assert adm.exit_code == 0, adm.output
    both = read_results(csv)
    assert len(both) == 5 and both["truncation"].isna().sum() == 2
    assert both.loc[both["truncation"].isna(), "family"].eq("adm").all()
    assert both.loc[both["truncation"].isna(), "guidance_scale"].tolist() == [0.0, 4.0]
    # The report draws both curves, says which is which and tabulates the truncation.
    report = _invoke("report", csv, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "- tiny-pytorch_model: truncation 0.25, 0.5, 1" in readme and "- unet: guidance scale 0, 4" in readme
    table = (tmp_path / "report" / "results_table.md").read_text().splitlines()
    assert "| Truncation |" in table[0]
    svg = (tmp_path / "report" / "fid_vs_is.svg").read_text()
    assert "tiny-pytorch_model (truncation)" in svg and "unet (guidance scale)" in svg


def test_sample_and_score_scores_one_truncation(gan, tmp_path):
    csv = tmp_path / "r.csv"
    result = _invoke("sample-and-score", "--checkpoint", gan["weights"], "--config", gan["config"], "--truncation",
                     "0.5", "--num-samples", 20, "--device", "cpu", "--quiet", *score_args(gan), "--out",
                     tmp_path / "run", "--csv", csv)
    assert result.exit_code == 0, result.output
    df = read_results(csv)
    assert len(df) == 1 and df.loc[0, "truncation"] == 0.5 and df.loc[0, "family"] == "biggan-deep"
    bad = _invoke("sample-and-score", "--checkpoint", gan["weights"], "--config", gan["config"],
                  "--classifier-scale", "2", "--num-samples", 20, "--device", "cpu", *score_args(gan), "--out",
                  tmp_path / "run2", "--csv", tmp_path / "r2.csv")
    _one_line_error(bad, "--classifier-scale: diffusion-model option")
    assert not (tmp_path / "run2").exists() and not (tmp_path / "r2.csv").exists()


SWEEP_CASES = {
    "empty_item": (["--truncations", "0.1,,0.5"], "item 2 is empty"),
    "zero": (["--truncations", "0,0.5"], "item 1 is '0'"),
    "above_one": (["--truncations", "0.5,2"], "(0, 1]"),
    "twice": (["--truncations", "0.5,0.5"], "twice"),
    "scales_to_gan": (["--scales", "0,1"], "--scales: diffusion-model option"),
    "respacings_to_gan": (["--truncations", "0.5", "--respacings", "10"], "--respacings: diffusion-model option"),
    "classifier_to_gan": (["--truncations", "0.5", "--classifier", "c.pt"], "--classifier: diffusion-model"),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_truncation_sweeps(gan, tmp_path, case):
    extra, needle = SWEEP_CASES[case]
    out, csv = tmp_path / "sweep", tmp_path / "r.csv"
    _one_line_error(_sweep(gan, out, csv, *extra), needle)
    assert not out.exists() and not csv.exists()


def test_sweep_with_unloadable_weights_leaves_nothing(gan, tmp_path):
    """Weights that do not fit the config fail when the first setting loads them: no sweep folder,
    no setting folder and no CSV remain."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(gan["w16"], work / "w16.bin")
    out, csv = work / "sweep", work / "r.csv"
    result = _invoke("sweep", "--preset", PRESET, "--checkpoint", work / "w16.bin", "--truncations", "0.5,1",
                     "--num-samples", 20, "--device", "cpu", "--quiet", *score_args(gan), "--out", out, "--csv", csv)
    _one_line_error(result, "holds a 16x16 BigGAN-deep generator")
    assert sorted(p.name for p in work.iterdir()) == ["w16.bin"]
    truncation_to_adm = _invoke("sweep", *model_args(gan), *score_args(gan), "--truncations", "0.5", "--out", out,
                                "--csv", csv)
    _one_line_error(truncation_to_adm, "--truncations: GAN option(s)")
    no_scales = _invoke("sweep", *model_args(gan), *score_args(gan), "--out", out, "--csv", csv)
    _one_line_error(no_scales, "--scales is required")
    assert sorted(p.name for p in work.iterdir()) == ["w16.bin"]


# ---------------------------------------------------------------------------------------------
# The figure

def _table(rows):
    from evalkit.results import validate_table

    return validate_table(pd.DataFrame([{**{c: None for c in COLUMNS}, **r} for r in rows]))


def _mixed_rows():
    adm = [{"run_id": f"a{s}", "label": "ADM-G 128", "family": "adm", "image_size": 128, "steps": "250",
            "guidance_scale": s, "inception_score": 100 + 50 * s, "fid": 6 - s, "sfid": 5.0,
            "precision": 0.7 + 0.05 * s, "recall": 0.6 - 0.05 * s} for s in (1.0, 0.0, 2.0)]
    gan = [{"run_id": f"g{t}", "label": "BigGAN-deep 128", "family": "biggan-deep", "preset": "biggan-deep-128",
            "image_size": 128, "truncation": t, "inception_score": 250 - 100 * t, "fid": 10 - 4 * t, "sfid": 6.0,
            "precision": 0.9 - 0.1 * t, "recall": 0.2 + 0.2 * t} for t in (1.0, 0.2, 0.6)]
    return _table(adm + gan)


def test_figure_draws_each_family_labelled_by_its_own_knob():
    """GAN points are joined in truncation order and annotated with their truncations; ADM points
    by guidance scale; the legend names what each curve varies. Catches GAN rows ordered or
    annotated by guidance_scale (empty for them) and both families merged into one curve."""
    import matplotlib

    matplotlib.use("Agg")
    from evalkit.baselines import select_baselines
    from evalkit.plots import BASELINE_GID, CURVE_GID_PREFIX, fid_vs_is, precision_vs_recall

    for fn, x in ((fid_vs_is, "inception_score"), (precision_vs_recall, "precision")):
        ax = fn(_mixed_rows(), select_baselines("biggan-deep", [128])).axes[0]
        lines = {ln.get_gid()[len(CURVE_GID_PREFIX):]: ln for ln in ax.get_lines()
                 if (ln.get_gid() or "").startswith(CURVE_GID_PREFIX)}
        assert set(lines) == {"ADM-G 128", "BigGAN-deep 128"}
        gan_x = {"inception_score": [230, 190, 150], "precision": [0.88, 0.84, 0.8]}[x]
        adm_x = {"inception_score": [100, 150, 200], "precision": [0.7, 0.75, 0.8]}[x]
        np.testing.assert_allclose(lines["BigGAN-deep 128"].get_xdata(), gan_x)
        np.testing.assert_allclose(lines["ADM-G 128"].get_xdata(), adm_x)
        assert lines["BigGAN-deep 128"].get_linestyle() == "--" and lines["ADM-G 128"].get_linestyle() == "-"
        texts = sorted(t.get_text() for t in ax.texts)
        assert texts == sorted(["0", "1", "2", "0.2", "0.6", "1"])
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[:2] == ["ADM-G 128 (guidance scale)", "BigGAN-deep 128 (truncation)"]
        # The published BigGAN-deep 128 point (truncation 1.0) has precision/recall but no IS.
        assert len([ln for ln in ax.get_lines() if ln.get_gid() == BASELINE_GID]) == (x == "precision")


def test_report_tables_gain_the_truncation_column(tmp_path):
    from evalkit.report import build_report, results_table

    table = results_table(_mixed_rows())
    assert table.headers[:6] == ["Model", "Size", "Steps", "Scale", "Truncation", "Samples"]
    rows = {(r[0], r[3], r[4]) for r in table.groups[0][1]}
    assert ("BigGAN-deep 128", None, "0.2") in rows and ("ADM-G 128", "2", None) in rows
    assert "Truncation" in table.latex() and table.latex().count("&") // len(table.groups[0][1]) >= 10
    rep = build_report(_mixed_rows(), tmp_path / "rep")
    readme = (tmp_path / "rep" / "README.md").read_text()
    assert "- BigGAN-deep 128: truncation 0.2, 0.6, 1" in readme and "- ADM-G 128: guidance scale 0, 1, 2" in readme
    assert "results_table.md" in rep.files
