"""`torchrun --nproc_per_node=2 -m evalkit score|features` on CPU (gloo) gives the numbers of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_extractor import make_images

from evalkit.cache import feature_key, read_features, store_cached
from evalkit.evaluate import build_extractor, compute_features, evaluate, format_lines
from evalkit.store import open_batch, write_npz
from evalkit.options import ScoreOptions

TESTS = Path(__file__).parent


def _torchrun(args, cache, timeout=120):
    env = dict(os.environ, EVALKIT_PLUGINS="tiny_extractor", EVALKIT_CACHE=str(cache), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "evalkit", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _pair(tmp_path):
    sample, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    write_npz(sample, make_images(41, 1))  # odd counts: the two shards differ in size
    write_npz(ref, make_images(53, 2, shift=30))
    return sample, ref


def _single_thread(fn):
    """Run `fn` with one torch thread, as each torchrun rank (OMP_NUM_THREADS=1): same conv summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.dist
def test_two_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "local_cache"))
    sample, ref = _pair(tmp_path)
    shared_cache = tmp_path / "dist_cache"
    out = tmp_path / "dist.json"
    # Each rank extracts a slice of each batch; rows are gathered to rank 0, which scores and caches them.
    proc = _torchrun(["score", sample, ref, "--features", "tiny-test", "--device", "cpu", "--no-progress",
                      "--batch-size", "8", "--json", out], shared_cache)
    ex = build_extractor("tiny-test", "cpu")
    single = _single_thread(lambda: evaluate(sample, ref, ex, ScoreOptions(batch_size=8, cache=False, progress=False)))
    lines = proc.stdout.splitlines()  # rank 0 alone prints
    assert len(lines) == 5
    assert [ln.split(": ")[0] for ln in lines] == [ln.split(": ")[0] for ln in format_lines(single)]
    data = json.loads(out.read_text())
    assert data["provenance"]["world_size"] == 2
    assert lines == format_lines(data)
    # IS and P/R are identical. FID/sFID agree to BLAS rounding: numpy's eigen-solver threads
    # differently under OMP_NUM_THREADS=1 (measured ~2e-7 relative).
    for key in ("inception_score", "precision", "recall"):
        assert data[key] == single[key], key
    for key in ("fid", "sfid"):
        assert data[key] == pytest.approx(single[key], rel=1e-6), key
    # The gathered features (cached once, by rank 0) are bit-identical to one process's, in file order.
    cached = sorted((shared_cache / "features").glob("*.h5"))
    assert len(cached) == 2
    for batch in (sample, ref):
        want = _single_thread(lambda b=batch: compute_features(b, ex, ScoreOptions(cache=False, progress=False)))
        matches = [path for path in cached
                   if np.array_equal(read_features(path)[0]["pool"], want["pool"])]
        assert len(matches) == 1, batch
        arrays, _ = read_features(matches[0])
        for name in ("pool", "spatial", "logits"):
            np.testing.assert_array_equal(arrays[name], want[name])


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_follow_a_cache_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    _, ref = _pair(tmp_path)
    ex = build_extractor("tiny-test", "cpu")
    reader = open_batch(ref)
    key = feature_key(reader.content_hash(), reader.num_images, ex.identity())
    # Cache marked features: only a cache hit can give them back.
    want = {name: array + 1000.0 for name, array in compute_features(ref, ex, ScoreOptions(cache=False, progress=False)).items()}
    store_cached(key, want)
    h5 = tmp_path / "ref.h5"
    _torchrun(["features", ref, "--out", h5, "--features", "tiny-test", "--device", "cpu", "--no-progress"],
              tmp_path / "cache")
    arrays, _ = read_features(h5)
    for name in ("pool", "spatial", "logits"):
        np.testing.assert_array_equal(arrays[name], want[name])
