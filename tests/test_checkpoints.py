"""Checkpoint loading: weights-only reads, strict architecture check with a useful report, sha256."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from conftest import FIXTURES, load_fixture
from evalkit.checkpoints import load_checkpoint, matching_presets, read_state_dict, sha256_file
from evalkit.errors import CheckpointError, ConfigError
from evalkit.presets import PRESETS, Preset
from model_fixtures import CLASSIFIER_FLAGS, UNET_COND_FLAGS, UNET_UNCOND_FLAGS, torch_weights

COND_FLAGS = dict(UNET_COND_FLAGS)


@pytest.fixture
def cond_pt(tmp_path):
    path = tmp_path / "cond.pt"
    torch.save(torch_weights("weights_unet_cond"), path)
    return path


def _forward(model, name="unet_cond_forward"):
    _, a = load_fixture(name)
    with torch.no_grad():
        return model(torch.from_numpy(a["x"]), torch.from_numpy(a["timesteps"]), torch.from_numpy(a["y"])), a["out"]


@pytest.mark.parity  # forward vs the reference's output: tolerance of test_models_parity
def test_npz_with_flags_loads_strictly_and_matches_reference():
    path = FIXTURES / "weights_unet_cond.npz"
    loaded = load_checkpoint(path, flags=COND_FLAGS)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.preset is None and loaded.kind == "diffusion" and not loaded.module.training
    assert loaded.flags["num_head_channels"] == 16 and loaded.diffusion["learn_sigma"] is True
    out, ref = _forward(loaded.module)
    assert float((out - torch.from_numpy(ref)).abs().max()) <= 1e-5


@pytest.mark.parity  # forward vs the reference's output: tolerance of test_models_parity
def test_pt_and_flag_string(cond_pt):
    flags = " ".join(f"--{k} {v}" for k, v in COND_FLAGS.items())
    loaded = load_checkpoint(cond_pt, flags=flags, use_fp16=False)
    assert loaded.sha256 == sha256_file(cond_pt) and loaded.use_fp16 is False
    out, ref = _forward(loaded.module)
    assert float((out - torch.from_numpy(ref)).abs().max()) <= 1e-5


def test_classifier_kind(tmp_path):
    loaded = load_checkpoint(FIXTURES / "weights_classifier.npz", flags=CLASSIFIER_FLAGS, kind="classifier")
    assert loaded.kind == "classifier" and loaded.diffusion == {}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch_weights("weights_unet_cond"), "opt": argparse_like()}, path)
    with pytest.raises(CheckpointError, match="needs code to unpickle"):
        load_checkpoint(path, flags=COND_FLAGS)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(argparse_like()))
    with pytest.raises(CheckpointError, match=str(raw.name)):
        read_state_dict(raw)


class argparse_like:  # noqa: N801 - stands in for any class a pickle would have to import
    pass


def test_missing_unreadable_and_non_state_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", flags=COND_FLAGS)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk, flags=COND_FLAGS)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "step": 3}, nested)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(nested)
    obj = tmp_path / "obj.npz"
    np.savez(obj, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled"):
        read_state_dict(obj)
    with pytest.raises(CheckpointError, match="not a file"):
        read_state_dict(tmp_path)


def test_architecture_mismatch_report(cond_pt):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(cond_pt, flags=UNET_UNCOND_FLAGS)
    msg = str(info.value)
    assert "the given diffusion flags" in msg and str(cond_pt) in msg
    assert "missing" in msg and "unexpected: label_emb.weight" in msg and "wrongly shaped" in msg
    assert "(file [" in msg and "model [" in msg


def test_mismatch_suggests_the_matching_preset(cond_pt, monkeypatch):
    import evalkit.checkpoints as ck
    registry = dict(PRESETS)
    tiny = Preset(name="tiny_cond", kind="diffusion", readme_flags=" ".join(f"--{k} {v}" for k, v in COND_FLAGS.items()),
                  image_size=32, class_cond=True, timestep_respacing="10")
    registry["tiny_cond"] = tiny
    monkeypatch.setattr(ck, "PRESETS", registry)
    with pytest.raises(CheckpointError, match=r"matches preset tiny_cond; use --preset tiny_cond"):
        load_checkpoint(cond_pt, preset="lsun_cat")
    assert matching_presets(torch_weights("weights_unet_cond"))[0] == ["tiny_cond"]
    # Without preset or flags, the matching preset is picked.
    loaded = load_checkpoint(cond_pt)
    assert loaded.preset == "tiny_cond" and loaded.diffusion["timestep_respacing"] == "10"


def test_a_released_preset_is_named_in_the_report(cond_pt):
    with pytest.raises(CheckpointError, match=r"do not fit preset 64x64_diffusion.*no preset matches"):
        load_checkpoint(cond_pt, preset="64x64_diffusion")


@pytest.mark.slow  # writes and reads a 260 MB file
def test_a_released_architecture_loads_from_zeros(tmp_path):
    """Meta-built preset module → state dict → file → load_checkpoint finds and loads the preset."""
    from evalkit.models import build
    sd = {k: torch.zeros(v.shape) for k, v in build("64x64_classifier").state_dict().items()}
    path = tmp_path / "64x64_classifier.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert loaded.preset == "64x64_classifier" and loaded.kind == "classifier"
    assert loaded.module.out[2].c_proj.weight.shape == (1000, 512, 1)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="not both"):
        load_checkpoint(FIXTURES / "weights_unet_cond.npz", preset="lsun_cat", flags=COND_FLAGS)
    with pytest.raises(ConfigError, match="is a diffusion"):
        load_checkpoint(FIXTURES / "weights_unet_cond.npz", preset="lsun_cat", kind="classifier")
