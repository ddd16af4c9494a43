"""Two CPU processes under torchrun (gloo) produce exactly the images of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evalkit.cli import main
from tiny_sampling import SUBPROCESS_ENV, UNET_FLAGS, one_thread, save_random

NUM = 5


def _args(ckpt: Path, out: Path) -> list[str]:
    return ["sample", "--model-flags", UNET_FLAGS, "--checkpoint", str(ckpt), "--num-samples", str(NUM),
            "--batch-size", "2", "--timestep-respacing", "3", "--seed", "5", "--device", "cpu", "--quiet",
            "--keep-shards", "--out", str(out)]


@pytest.mark.dist
def test_two_processes_equal_one_process(tmp_path):
    ckpt = save_random("diffusion", UNET_FLAGS, tmp_path / "unet.pt", seed=1)
    env = {**os.environ, **SUBPROCESS_ENV}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "evalkit", *_args(ckpt, tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Rank 0 alone prints the one summary line.
    assert proc.stdout.count("sampling: 5 samples") == 1, proc.stdout
    with one_thread():
        one = CliRunner().invoke(main, _args(ckpt, tmp_path / "one"))
    assert one.exit_code == 0, one.output
    name = f"samples_{NUM}x8x8x3.npz"
    with np.load(tmp_path / "two" / name, allow_pickle=False) as a, np.load(tmp_path / "one" / name) as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
    # Batches were dealt round-robin (each shard records its writer), and rank 0 assembled them in order.
    writers = {}
    for path in sorted((tmp_path / "two" / "shards").iterdir()):
        with np.load(path, allow_pickle=False) as f:
            writers[path.name] = int(f["rank"])
    assert writers == {"shard-00000000-00000002.npz": 0, "shard-00000002-00000004.npz": 1,
                       "shard-00000004-00000005.npz": 0}
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["done"] == [[0, NUM]]
