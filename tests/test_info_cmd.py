"""`evalkit info`: text and JSON summaries of npz, HDF5 and folder batches; bad input → one line, exit 1."""

from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner
from PIL import Image

from evalkit.cli import main


def _images(n, h=6, w=5):
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _reference(path):
    d = 4
    np.savez(path, _images(12), np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]),
             mu=np.zeros(d), sigma=np.eye(d), mu_s=np.zeros(2), sigma_s=np.eye(2), mu_clip=np.zeros(7, np.float32))


def test_info_text(tmp_path):
    _reference(tmp_path / "ref.npz")
    result = CliRunner().invoke(main, ["info", str(tmp_path / "ref.npz")])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.strip().splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    assert lines["format"] == "npz (stored)"
    assert lines["images"] == "12"
    assert lines["shape"] == "6×5×3 (H×W×C)"
    assert lines["dtype"] == "uint8"
    assert lines["labels"] == "12, classes 1..9 (8 distinct)"
    assert lines["statistics"] == "mu (4,), sigma (4, 4), mu_s (2,), sigma_s (2, 2)"
    assert lines["other keys"] == "mu_clip (7,) float32"
    size = (tmp_path / "ref.npz").stat().st_size
    assert lines["file size"] == f"{size / 1024:.1f} KiB ({size} bytes)"


def test_info_json(tmp_path):
    _reference(tmp_path / "ref.npz")
    result = CliRunner().invoke(main, ["info", "--json", str(tmp_path / "ref.npz")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "npz" and info["compressed"] is False
    assert info["num_images"] == 12 and info["image_shape"] == [6, 5, 3] and info["dtype"] == "uint8"
    assert info["labels"] == {"count": 12, "min": 1, "max": 9, "distinct": 8}
    assert info["statistics"] == {"mu": [4], "sigma": [4, 4], "mu_s": [2], "sigma_s": [2, 2]}
    assert info["extra_keys"] == {"mu_clip": {"shape": [7], "dtype": "float32"}}
    assert info["file_size"] == (tmp_path / "ref.npz").stat().st_size


def test_info_samples_without_labels_folder_and_hdf5(tmp_path):
    np.savez_compressed(tmp_path / "s.npz", _images(3))
    out = CliRunner().invoke(main, ["info", str(tmp_path / "s.npz")]).output
    assert "npz (compressed)" in out and "labels:      none" in out and "statistics:  none" in out
    assert "other keys:  none" in out

    (tmp_path / "f").mkdir()
    for i, img in enumerate(_images(4, 8, 7)):
        Image.fromarray(img).save(tmp_path / "f" / f"{i}.png")
    info = json.loads(CliRunner().invoke(main, ["info", "--json", str(tmp_path / "f")]).output)
    assert info["format"] == "folder" and info["num_images"] == 4 and info["image_shape"] == [8, 7, 3]
    assert info["labels"] is None and info["statistics"] is None

    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["images"] = _images(5)
        f["labels"] = np.arange(5)
    info = json.loads(CliRunner().invoke(main, ["info", "--json", str(tmp_path / "b.h5")]).output)
    assert info["format"] == "hdf5" and info["num_images"] == 5 and info["labels"]["max"] == 4


def test_info_bad_input_is_one_line(tmp_path):
    np.savez(tmp_path / "bad.npz", np.linspace(-1, 1, 90).reshape(1, 5, 6, 3))
    result = CliRunner().invoke(main, ["info", str(tmp_path / "bad.npz")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "bad.npz" in result.output and "127.5" in result.output
    result = CliRunner().invoke(main, ["info", str(tmp_path / "missing.npz")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_info_help_has_examples():
    result = CliRunner().invoke(main, ["info", "--help"])
    assert result.exit_code == 0 and "evalkit info" in result.output and "--json" in result.output
