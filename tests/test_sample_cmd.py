"""`evalkit sample` / `evalkit upsample` through click: options, dry run, summary line, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evalkit.cli import main
from evalkit.store import write_npz
from tiny_sampling import CLASSIFIER_FLAGS, UNET_FLAGS, UPSAMPLER_FLAGS, one_thread, save_random


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "unet": save_random("diffusion", UNET_FLAGS, d / "unet.pt", seed=1),
        "classifier": save_random("classifier", CLASSIFIER_FLAGS, d / "clf.pt", seed=3, scale=0.3),
        "upsampler": save_random("upsampler", UPSAMPLER_FLAGS, d / "up.pt", seed=4),
    }


def _sample(ckpts, out, *extra):
    args = ["sample", "--model-flags", UNET_FLAGS, "--checkpoint", str(ckpts["unet"]), "--timestep-respacing", "2",
            "--device", "cpu", "--out", str(out), *extra]
    return CliRunner().invoke(main, args)


def _one_line_error(result, *needles):
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_help_lists_options_and_examples():
    result = CliRunner().invoke(main, ["sample", "--help"])
    assert result.exit_code == 0
    for opt in ("--preset", "--model-flags", "--checkpoint", "--num-samples", "--batch-size", "--seed", "--out",
                "--timestep-respacing", "--use-ddim", "--eta", "--classifier", "--classifier-preset",
                "--classifier-flags", "--classifier-scale", "--classes", "--device", "--fp16", "--dry-run",
                "--upsampler", "--upsampler-checkpoint", "--upsampler-respacing", "Examples:"):
        assert opt in result.output, opt
    assert "64x64_diffusion" in result.output
    up = CliRunner().invoke(main, ["upsample", "--help"])
    assert up.exit_code == 0 and "LOWRES.npz" in up.output and "Examples:" in up.output


def test_dry_run_prints_resolved_config_and_writes_nothing(ckpts, tmp_path):
    result = _sample(ckpts, tmp_path / "out", "--num-samples", "5", "--classes", "0-3", "--dry-run",
                     "--classifier", str(ckpts["classifier"]), "--classifier-flags", CLASSIFIER_FLAGS,
                     "--classifier-scale", "2.5", "--use-ddim")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    cfg = payload["config"]
    assert cfg["num_samples"] == 5 and cfg["classes"] == [0, 1, 2, 3] and cfg["sampler"] == "ddim"
    assert cfg["classifier_scale"] == 2.5 and cfg["timestep_respacing"] == "2"
    assert len(cfg["model"]["checkpoint_sha256"]) == 64 and cfg["model"]["resolved_flags"]["image_size"] == 8
    assert cfg["use_fp16"] is False  # resolved for the CPU
    assert cfg["upsampler"] is None
    assert not (tmp_path / "out").exists()
    cascade = _sample(ckpts, tmp_path / "out", "--num-samples", "5", "--seed", "4", "--dry-run",
                      "--upsampler-flags", UPSAMPLER_FLAGS, "--upsampler-checkpoint", str(ckpts["upsampler"]),
                      "--upsampler-respacing", "3")
    assert cascade.exit_code == 0, cascade.output
    ups = json.loads(cascade.output)["config"]["upsampler"]
    assert ups["seed"] == 5 and ups["timestep_respacing"] == "3" and ups["model"]["small_size"] == 8
    assert ups["model"]["image_size"] == 16


def test_sample_writes_npz_and_prints_summary_then_resumes_as_no_op(ckpts, tmp_path):
    out = tmp_path / "out"
    result = _sample(ckpts, out, "--num-samples", "3", "--batch-size", "2", "--seed", "7", "--quiet")
    assert result.exit_code == 0, result.output
    npz = out / "samples_3x8x8x3.npz"
    assert f"sampling: 3 samples in " in result.output and "samples/s" in result.output and str(npz) in result.output
    with np.load(npz, allow_pickle=False) as f:
        assert f["arr_0"].shape == (3, 8, 8, 3) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].dtype == np.int64 and f["arr_1"].shape == (3,)
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["record"]
    assert rec["versions"]["evalkit"] and rec["versions"]["torch"]
    assert manifest["settings"]["seed"] == 7 and manifest["settings"]["sampler"] == "ancestral"
    again = _sample(ckpts, out, "--num-samples", "3", "--batch-size", "3", "--seed", "7", "--quiet")
    assert again.exit_code == 0 and "already complete" in again.output
    other = _sample(ckpts, out, "--num-samples", "4", "--seed", "7", "--quiet")
    _one_line_error(other, "holds another run", "num_samples: 3 (in the directory) != 4 (requested)")


def test_bad_input_gives_one_line_errors(ckpts, tmp_path):
    out = tmp_path / "o"
    _one_line_error(_sample(ckpts, out, "--num-samples", "0"), "--num-samples", "got 0")
    _one_line_error(_sample(ckpts, out, "--num-samples", "2", "--classifier-scale", "1"), "without --classifier")
    _one_line_error(_sample(ckpts, out, "--num-samples", "2", "--classifier", str(ckpts["classifier"]),
                            "--classifier-flags", CLASSIFIER_FLAGS), "without --classifier-scale")
    _one_line_error(_sample(ckpts, out, "--num-samples", "2", "--device", "cuda"), "CUDA", "no CUDA device")
    missing = CliRunner().invoke(main, ["sample", "--model-flags", UNET_FLAGS, "--checkpoint", str(tmp_path / "x.pt"),
                                        "--num-samples", "2", "--out", str(out)])
    _one_line_error(missing, "--checkpoint", "no such file")
    # A checkpoint of another architecture: the loader's report, nothing left in --out.
    wrong = CliRunner().invoke(main, ["sample", "--model-flags", UNET_FLAGS.replace("32", "64", 1), "--checkpoint",
                                      str(ckpts["unet"]), "--num-samples", "2", "--device", "cpu", "--out", str(out)])
    assert wrong.exit_code == 1 and wrong.output.startswith("Error: ")
    assert not (out / "manifest.json").exists()
    unknown = _sample(ckpts, out, "--num-samples", "2", "--no-such-option")
    assert unknown.exit_code == 2


def test_upsample_command_and_resolution_error(ckpts, tmp_path):
    base = tmp_path / "base.npz"
    write_npz(base, np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
              np.array([1, 2, 3], dtype=np.int64))
    args = ["upsample", str(base), "--flags", UPSAMPLER_FLAGS, "--checkpoint", str(ckpts["upsampler"]),
            "--timestep-respacing", "2", "--device", "cpu", "--quiet", "--out"]
    result = CliRunner().invoke(main, args + [str(tmp_path / "up")])
    assert result.exit_code == 0, result.output
    assert "upsampling: 3 samples" in result.output
    with np.load(tmp_path / "up" / "samples_3x16x16x3.npz", allow_pickle=False) as f:
        assert f["arr_0"].shape == (3, 16, 16, 3) and f["arr_1"].tolist() == [1, 2, 3]
    wrong = tmp_path / "wrong.npz"
    write_npz(wrong, np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64))
    bad = CliRunner().invoke(main, ["upsample", str(wrong)] + args[2:] + [str(tmp_path / "up2")])
    _one_line_error(bad, "4x4", "small_size")
