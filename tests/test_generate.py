"""The sampling harness library (`evalkit.sampling`, `evalkit.generator`, `evalkit.runstore`): per-sample randomness, shards,
resume, refusal of foreign run directories, guidance, DDIM and the upsampler cascade, on tiny CPU models."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit import runstore
from evalkit.errors import CheckpointError, ConfigError, InputError, RunDirectoryError
from evalkit.generator import run_stage
from evalkit.options import RunOptions
from evalkit.sampling.noise import SampleNoise
from evalkit.sampling.request import (SampleArgs, SampleRequest, UpsampleArgs, UpsampleRequest, make_request,
                                      make_upsample_request, parse_classes)
from evalkit.sampling.run import run_sampling, run_upsampling
from evalkit.runtime import sample_generator
from evalkit.store import write_npz
from tiny_sampling import CLASSIFIER_FLAGS, UNCOND_FLAGS, UNET_FLAGS, UPSAMPLER_FLAGS, one_thread, save_random

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "unet": save_random("diffusion", UNET_FLAGS, d / "unet.pt", seed=1),
        "uncond": save_random("diffusion", UNCOND_FLAGS, d / "uncond.pt", seed=2),
        "classifier": save_random("classifier", CLASSIFIER_FLAGS, d / "clf.pt", seed=3, scale=0.3),
        "upsampler": save_random("upsampler", UPSAMPLER_FLAGS, d / "up.pt", seed=4),
    }


def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as f:
        return f["arr_0"], (f["arr_1"] if "arr_1" in f.files else None)


def _request(**kw) -> SampleRequest:
    return make_request(SampleArgs(**kw))


def _upsample_request(base_samples: str, **kw) -> UpsampleRequest:
    return make_upsample_request(UpsampleArgs(base_samples=base_samples, **kw))


def _opts(batch_size: int, **kw) -> RunOptions:
    return RunOptions(batch_size=batch_size, progress=False, **kw)


def _config(ckpts, **kw):
    kw.setdefault("timestep_respacing", "3")
    return _request(checkpoint=str(ckpts["unet"]), model_flags=UNET_FLAGS, **kw)


# ---------------------------------------------------------------------------------------------
# Options and plans

def test_parse_classes():
    assert parse_classes("3") == (3,)
    assert parse_classes("1,5,7") == (1, 5, 7)
    assert parse_classes("0-9") == tuple(range(10))
    assert parse_classes("0-2, 7,1") == (0, 1, 2, 7)
    assert parse_classes(None) is None and parse_classes("") is None
    for bad in ("x", "5-2", "1,,2"):
        with pytest.raises(ConfigError, match="--classes"):
            parse_classes(bad)
    with pytest.raises(ConfigError, match=r"outside \[0, 10\)"):
        parse_classes("3,12", num_classes=10)


def test_plan_batches_fill_only_the_gaps_in_batch_size_steps():
    assert runstore.plan_batches([], 7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    done = runstore.done_intervals([runstore.Shard(3, 6, Path("a")), runstore.Shard(0, 2, Path("b"))], 10)
    assert done == [(0, 2), (3, 6)]
    assert runstore.plan_batches(done, 10, 3) == [range(2, 3), range(6, 9), range(9, 10)]
    plan = runstore.plan_batches([], 10, 2)
    assert runstore.batches_of_rank(plan, 0, 2) == [range(0, 2), range(4, 6), range(8, 10)]
    assert runstore.batches_of_rank(plan, 1, 2) == [range(2, 4), range(6, 8)]


def test_sample_noise_is_per_sample_and_independent_of_batching():
    shape = (3, 4, 4)
    whole = SampleNoise(5, range(0, 8), CPU)
    parts = [SampleNoise(5, range(a, b), CPU) for a, b in ((0, 3), (3, 4), (4, 8))]
    classes = (2, 4, 9)
    assert torch.equal(whole.labels(classes), torch.cat([p.labels(classes) for p in parts]))
    assert torch.equal(whole.randn(shape), torch.cat([p.randn(shape) for p in parts]))
    like = torch.empty(8, *shape)
    for k in (1, 2):  # every step's noise, in order
        assert torch.equal(whole.step_noise(k, like), torch.cat([p.step_noise(k, like[:len(p.gens)]) for p in parts]))
    # Labels come only from the allowed classes; other seeds and indices give other noise.
    labels = SampleNoise(0, range(200), CPU).labels(classes)
    assert set(labels.tolist()) == set(classes)
    assert not torch.equal(SampleNoise(6, range(0, 8), CPU).randn(shape), SampleNoise(5, range(0, 8), CPU).randn(shape))
    assert not torch.equal(SampleNoise(5, range(1, 9), CPU).randn(shape), SampleNoise(5, range(0, 8), CPU).randn(shape))


# ---------------------------------------------------------------------------------------------
# The stage engine with a fake sampler (no network): shards, resume, refusal, read-only output

class _FakeGenerator:
    """A `Generator` without a network: images from generators (9, i), labels i % 7."""

    kind, family, desc = "sample", "fake", "sampling"
    image_size, has_labels = 4, True

    def __init__(self, calls: list, num_samples=10, settings=None, fail_at=None):
        self.calls, self.num_samples, self.fail_at = calls, num_samples, fail_at
        self._settings = settings or {"seed": 9}

    def settings(self):
        return self._settings

    def provenance(self):
        return {}

    def prepare(self, ctx):
        pass

    def make_batch(self, indices: range, ctx):
        self.calls.append(indices)
        if self.fail_at is not None and self.fail_at in indices:
            raise KeyboardInterrupt("simulated crash")
        imgs = np.stack([torch.randint(0, 256, (4, 4, 3), generator=sample_generator(9, i),
                                       dtype=torch.uint8).numpy() for i in indices])
        return imgs, np.array(list(indices), dtype=np.int64) % 7


def _fake_stage(calls: list, num_samples=10, settings=None, fail_at=None) -> _FakeGenerator:
    return _FakeGenerator(calls, num_samples, settings, fail_at)


def test_stage_writes_shards_then_one_evaluator_npz(tmp_path):
    calls = []
    run = run_stage(_fake_stage(calls), tmp_path / "run", _opts(4, keep_shards=True))
    assert calls == [range(0, 4), range(4, 8), range(8, 10)]
    assert run.npz_path.name == "samples_10x4x4x3.npz"
    images, labels = _load(run.npz_path)
    assert images.dtype == np.uint8 and images.shape == (10, 4, 4, 3) and labels.dtype == np.int64
    assert labels.tolist() == [i % 7 for i in range(10)]
    # Shards hold their index range; the manifest records completion.
    shards = runstore.list_shards(tmp_path / "run")
    assert [(s.start, s.end) for s in shards] == [(0, 4), (4, 8), (8, 10)]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["done"] == [[0, 10]] and manifest["settings"] == {"seed": 9}
    # Running again does nothing.
    calls.clear()
    again = run_stage(_fake_stage(calls), tmp_path / "run", _opts(3))
    assert calls == [] and again.generated == 0 and "already complete" in again.summary()


def test_stage_resumes_after_a_crash_and_equals_an_uninterrupted_run(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_stage(_fake_stage(calls, fail_at=5), tmp_path / "run", _opts(2))
    assert [(s.start, s.end) for s in runstore.list_shards(tmp_path / "run")] == [(0, 2), (2, 4)]
    assert not list((tmp_path / "run").glob("samples_*.npz"))
    calls.clear()
    resumed = run_stage(_fake_stage(calls), tmp_path / "run", _opts(3))
    assert calls == [range(4, 7), range(7, 10)] and resumed.generated == 6
    full = run_stage(_fake_stage([]), tmp_path / "full", _opts(10))
    for a, b in zip(_load(resumed.npz_path), _load(full.npz_path)):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "run" / "shards").exists()  # deleted once the npz is in place


def test_stage_refuses_a_directory_of_another_run(tmp_path):
    run_stage(_fake_stage([]), tmp_path / "run", _opts(5))
    with pytest.raises(RunDirectoryError, match=r"seed: 9 \(in the directory\) != 10 \(requested\)"):
        run_stage(_fake_stage([], settings={"seed": 10}), tmp_path / "run", _opts(5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(RunDirectoryError, match="not empty"):
        run_stage(_fake_stage([]), tmp_path / "other", _opts(5))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_fails_cleanly_and_keeps_finished_shards(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_stage(_fake_stage(calls, fail_at=4), tmp_path / "run", _opts(2))
    shard_dir = tmp_path / "run" / "shards"
    before = {p.name: p.read_bytes() for p in shard_dir.iterdir()}
    shard_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(RunDirectoryError, match="cannot write shard .*read-only"):
            run_stage(_fake_stage([]), tmp_path / "run", _opts(2))
        assert {p.name: p.read_bytes() for p in shard_dir.iterdir()} == before
    finally:
        shard_dir.chmod(stat.S_IRWXU)
    done = run_stage(_fake_stage([]), tmp_path / "run", _opts(2))
    assert done.generated == 6


def test_disk_full_fails_cleanly_and_keeps_finished_shards(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_stage(_fake_stage([], fail_at=4), run_dir, _opts(2))
    before = {p.name: p.read_bytes() for p in (run_dir / "shards").iterdir()}
    real_savez = np.savez

    def savez_then_fail(file, **arrays):
        real_savez(file, **arrays)  # part of the bytes reach the temporary file...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runstore.np, "savez", savez_then_fail)
    with pytest.raises(RunDirectoryError, match="cannot write shard .*No space left on device"):
        run_stage(_fake_stage([]), run_dir, _opts(2))
    # ...but no temporary file or partial shard remains, and the earlier shards are untouched.
    assert {p.name: p.read_bytes() for p in (run_dir / "shards").iterdir()} == before
    monkeypatch.undo()
    assert run_stage(_fake_stage([]), run_dir, _opts(2)).generated == 6


# ---------------------------------------------------------------------------------------------
# Real tiny networks

def test_images_do_not_depend_on_batch_size(ckpts, tmp_path):
    cfg = _config(ckpts, num_samples=8, seed=3, classes="0-9")
    runs = {b: run_sampling(cfg, tmp_path / f"b{b}", _opts(b)) for b in (1, 3, 8)}
    ref_images, ref_labels = _load(runs[8].npz_path)
    assert ref_images.shape == (8, 8, 8, 3) and ref_images.std() > 10  # non-trivial images
    assert len(set(ref_labels.tolist())) > 1 and set(ref_labels.tolist()) <= set(range(10))
    assert len({ref_images[i].tobytes() for i in range(8)}) == 8
    for b in (1, 3):
        images, labels = _load(runs[b].npz_path)
        np.testing.assert_array_equal(labels, ref_labels)
        # Same noise per sample and fixed-shape network calls (FixedChunk): identical bits.
        np.testing.assert_array_equal(images, ref_images)
    # Another seed gives other images.
    other = run_sampling(_config(ckpts, num_samples=8, seed=4, classes="0-9"), tmp_path / "s4", _opts(8))
    assert np.abs(_load(other.npz_path)[0].astype(int) - ref_images).mean() > 5


def test_classes_and_fixed_label(ckpts, tmp_path):
    run = run_sampling(_config(ckpts, num_samples=4, classes="7"), tmp_path / "r", _opts(4))
    assert _load(run.npz_path)[1].tolist() == [7, 7, 7, 7]
    with pytest.raises(ConfigError, match="takes no labels"):
        _request(checkpoint=str(ckpts["uncond"]), model_flags=UNCOND_FLAGS, num_samples=2, classes="3")


def test_guidance_changes_images_and_scale_zero_is_unguided(ckpts, tmp_path):
    base = dict(num_samples=4, seed=1, classes="0-9")
    clf = dict(classifier=str(ckpts["classifier"]), classifier_flags=CLASSIFIER_FLAGS)
    plain = _load(run_sampling(_config(ckpts, **base), tmp_path / "plain", _opts(4)).npz_path)
    zero = _load(run_sampling(_config(ckpts, **base, **clf, classifier_scale=0.0), tmp_path / "zero", _opts(4)).npz_path)
    guided = _load(run_sampling(_config(ckpts, **base, **clf, classifier_scale=50.0), tmp_path / "g", _opts(4)).npz_path)
    np.testing.assert_array_equal(zero[0], plain[0])
    np.testing.assert_array_equal(guided[1], plain[1])  # same labels: guidance draws no random numbers
    assert np.abs(guided[0].astype(int) - plain[0]).mean() > 1.0
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())["settings"]
    assert manifest["classifier_scale"] == 50.0 and len(manifest["classifier"]["sha256"]) == 64


def test_unconditional_model_guided_by_a_classifier_gets_labels(ckpts, tmp_path):
    cfg = _request(checkpoint=str(ckpts["uncond"]), model_flags=UNCOND_FLAGS, num_samples=2,
                               timestep_respacing="2", classifier=str(ckpts["classifier"]),
                               classifier_flags=CLASSIFIER_FLAGS, classifier_scale=1.0)
    images, labels = _load(run_sampling(cfg, tmp_path / "r", _opts(2)).npz_path)
    assert images.shape == (2, 8, 8, 3) and labels is not None and labels.max() < 10


def test_ddim_is_deterministic_and_differs_from_ancestral(ckpts, tmp_path):
    ddim = _config(ckpts, num_samples=3, timestep_respacing="ddim3", use_ddim=True)
    assert ddim.sampler == "ddim"
    anc = _config(ckpts, num_samples=3, timestep_respacing="ddim3", use_ddim=False)
    a = _load(run_sampling(ddim, tmp_path / "a", _opts(3)).npz_path)[0]
    b = _load(run_sampling(anc, tmp_path / "b", _opts(3)).npz_path)[0]
    assert np.abs(a.astype(int) - b).mean() > 1.0
    eta = _config(ckpts, num_samples=3, timestep_respacing="ddim3", use_ddim=True, eta=1.0)
    c = _load(run_sampling(eta, tmp_path / "c", _opts(3)).npz_path)[0]
    assert np.abs(a.astype(int) - c).mean() > 1.0
    with pytest.raises(ConfigError, match="DDIM only"):
        _config(ckpts, num_samples=3, use_ddim=False, eta=0.5)


def test_cascade_keeps_both_stores_and_matches_standalone_upsample(ckpts, tmp_path):
    cfg = _config(ckpts, num_samples=3, seed=5, classes="0-9", upsampler_flags=UPSAMPLER_FLAGS,
                  upsampler_checkpoint=str(ckpts["upsampler"]), upsampler_respacing="2")
    run = run_sampling(cfg, tmp_path / "c", _opts(2))
    base_images, base_labels = _load(tmp_path / "c" / "base" / "samples_3x8x8x3.npz")
    up_images, up_labels = _load(run.npz_path)
    assert run.npz_path == tmp_path / "c" / "upsampled" / "samples_3x16x16x3.npz" and run.base is not None
    assert up_images.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(up_labels, base_labels)
    # `evalkit upsample` on the base store with seed + 1 reproduces the cascade's upsampled store.
    ucfg = _upsample_request(str(tmp_path / "c" / "base" / "samples_3x8x8x3.npz"),
                                  checkpoint=str(ckpts["upsampler"]), flags=UPSAMPLER_FLAGS,
                                  timestep_respacing="2", seed=6)
    alone = run_upsampling(ucfg, tmp_path / "u", _opts(2))
    np.testing.assert_array_equal(_load(alone.npz_path)[0], up_images)
    # A different low-res input changes the result (the conditioning is used).
    flipped = tmp_path / "flipped.npz"
    write_npz(flipped, 255 - base_images, base_labels)
    other = run_upsampling(_upsample_request(str(flipped), checkpoint=str(ckpts["upsampler"]),
                                                  flags=UPSAMPLER_FLAGS, timestep_respacing="2", seed=6),
                           tmp_path / "u2", _opts(2))
    assert np.abs(_load(other.npz_path)[0].astype(int) - up_images).mean() > 1.0


def test_upsample_refuses_wrong_resolution_and_missing_labels(ckpts, tmp_path):
    wrong = tmp_path / "wrong.npz"
    write_npz(wrong, np.zeros((2, 16, 16, 3), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(InputError, match="16x16, but the upsampler expects 8x8"):
        _upsample_request(str(wrong), checkpoint=str(ckpts["upsampler"]), flags=UPSAMPLER_FLAGS)
    nolabels = tmp_path / "nolabels.npz"
    write_npz(nolabels, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="no labels"):
        _upsample_request(str(nolabels), checkpoint=str(ckpts["upsampler"]), flags=UPSAMPLER_FLAGS)


def test_config_errors(ckpts, tmp_path):
    with pytest.raises(ConfigError, match="--num-samples"):
        _config(ckpts, num_samples=0)
    with pytest.raises(ConfigError, match="without --classifier PATH"):
        _config(ckpts, num_samples=2, classifier_scale=1.0)
    with pytest.raises(ConfigError, match="without --classifier-scale"):
        _config(ckpts, num_samples=2, classifier=str(ckpts["classifier"]), classifier_flags=CLASSIFIER_FLAGS)
    with pytest.raises(CheckpointError, match="no such file"):
        _request(checkpoint=str(tmp_path / "missing.pt"), model_flags=UNET_FLAGS, num_samples=2)
    with pytest.raises(ConfigError, match="exactly one of --preset"):
        _request(checkpoint=str(ckpts["unet"]), num_samples=2)


def test_fixed_chunk_makes_network_calls_batch_size_independent():
    from evalkit.sampling.chunk import FixedChunk
    from evalkit.models import from_flags
    from tiny_sampling import UNET_FLAGS

    torch.manual_seed(0)
    net = from_flags(UNET_FLAGS, kind="diffusion").model
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    x, t, y = torch.randn(11, 3, 8, 8), torch.randint(0, 1000, (11,)), torch.randint(0, 10, (11,))
    chunked = FixedChunk(net, chunk=4)
    with torch.no_grad():
        full = chunked(x, t, y=y)
        # Bit-identical for every sample, whatever the batch it came in.
        for lo, hi in [(0, 1), (2, 5), (3, 11)]:
            assert torch.equal(chunked(x[lo:hi], t[lo:hi], y=y[lo:hi]), full[lo:hi])
        # The same values as one plain call, up to float rounding.
        assert torch.allclose(net(x, t, y=y), full, atol=1e-5)
    # Gradients flow to the real rows only (classifier guidance differentiates through it).
    xg = x[:3].clone().requires_grad_(True)
    chunked(xg, t[:3], y=y[:3]).sum().backward()
    xr = x[:3].clone().requires_grad_(True)
    net(xr, t[:3], y=y[:3]).sum().backward()
    assert torch.allclose(xg.grad, xr.grad, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Device-independent noise and device-bound run directories

class _FakeDevice:
    """Stands in for a CUDA device on a CPU-only machine: records what is moved to it."""

    type = "cuda"

    def __init__(self):
        self.moved: list[torch.Tensor] = []


def test_noise_is_drawn_on_cpu_whatever_the_device(monkeypatch):
    """Every generator is a CPU generator and every draw equals the CPU draw of (seed, i), moved to
    the requested device once per tensor. Catches generators created on the compute device (CUDA
    draws differ from CPU draws) and per-sample transfers."""
    requested = []
    real_generator = torch.Generator

    def recording_generator(device="cpu"):
        requested.append(torch.device(device).type)
        return real_generator(device=device)

    fake = _FakeDevice()
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and args[0] is fake:
            fake.moved.append(self)
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch, "Generator", recording_generator)
    monkeypatch.setattr(torch.Tensor, "to", to)
    on_fake = SampleNoise(5, range(2, 6), fake)
    labels, x_T = on_fake.labels((1, 4, 7)), on_fake.randn((3, 4, 4))
    step = on_fake.step_noise(1, torch.empty(4, 3, 4, 4))
    monkeypatch.undo()
    assert requested == ["cpu"] * 4
    assert len(fake.moved) == 3  # one transfer per drawn tensor, not one per sample
    on_cpu = SampleNoise(5, range(2, 6), CPU)
    assert torch.equal(labels, on_cpu.labels((1, 4, 7)))
    assert torch.equal(x_T, on_cpu.randn((3, 4, 4)))
    assert torch.equal(step, on_cpu.step_noise(1, torch.empty(4, 3, 4, 4)))
    # The draws are those of the per-sample CPU generator (seed, i), in order: label, then x_T.
    g = sample_generator(5, 3)
    assert int(labels[1]) == (1, 4, 7)[int(torch.randint(0, 3, (1,), generator=g))]
    assert torch.equal(x_T[1], torch.randn((3, 4, 4), generator=g))


def test_resume_on_another_device_type_is_refused(tmp_path):
    """An unfinished run whose manifest says "cuda" is not resumed on the CPU (one line naming the
    directory and both devices); a finished one is reused, and a manifest without a device is allowed."""
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_stage(_fake_stage([], fail_at=4), run_dir, _opts(2))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["device_type"] == "cpu"
    manifest["device_type"] = "cuda"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirectoryError) as err:
        run_stage(_fake_stage([]), run_dir, _opts(2))
    msg = str(err.value)
    assert str(run_dir) in msg and "device type cuda" in msg and "cpu was requested" in msg and "\n" not in msg
    assert [(s.start, s.end) for s in runstore.list_shards(run_dir)] == [(0, 2), (2, 4)]  # nothing touched
    del manifest["device_type"]  # a manifest written before devices were recorded
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    done = run_stage(_fake_stage([]), run_dir, _opts(2))
    assert done.generated == 6
    finished = json.loads((run_dir / "manifest.json").read_text())
    finished["device_type"] = "cuda"
    (run_dir / "manifest.json").write_text(json.dumps(finished))
    assert run_stage(_fake_stage([]), run_dir, _opts(2)).generated == 0
