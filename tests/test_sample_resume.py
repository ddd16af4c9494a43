"""Resume after a real `kill -9`: start `evalkit sample` in a subprocess, SIGKILL it once a shard exists,
rerun the same command, and compare with an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from evalkit import runstore
from evalkit.cli import main
from tiny_sampling import SUBPROCESS_ENV, UNET_FLAGS, one_thread, save_random

NUM = 12


def _args(ckpt: Path, out: Path, batch_size: int) -> list[str]:
    return ["sample", "--model-flags", UNET_FLAGS, "--checkpoint", str(ckpt), "--num-samples", str(NUM),
            "--batch-size", str(batch_size), "--timestep-respacing", "6", "--seed", "11", "--classes", "0-9",
            "--device", "cpu", "--quiet", "--out", str(out)]


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
    ckpt = save_random("diffusion", UNET_FLAGS, tmp_path / "unet.pt", seed=1)
    run_dir = tmp_path / "killed"
    env = {**os.environ, **SUBPROCESS_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "evalkit", *_args(ckpt, run_dir, 1)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not runstore.list_shards(run_dir):
            assert proc.poll() is None, f"sampler exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "no shard appeared within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = runstore.list_shards(run_dir)
    assert 1 <= len(done_before) < NUM and not list(run_dir.glob("samples_*.npz"))

    # The same command, with another batch size for the remaining work, finishes the run.
    with one_thread():
        resumed = CliRunner().invoke(main, _args(ckpt, run_dir, 1))
        assert resumed.exit_code == 0, resumed.output
        assert "resumed" in resumed.output
        full = CliRunner().invoke(main, _args(ckpt, tmp_path / "full", 1))
        assert full.exit_code == 0, full.output
    assert not list((run_dir).rglob("*.tmp"))  # the write in flight at the kill left nothing behind
    name = f"samples_{NUM}x8x8x3.npz"
    with np.load(run_dir / name, allow_pickle=False) as a, np.load(tmp_path / "full" / name, allow_pickle=False) as b:
        assert a["arr_0"].std() > 10
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
