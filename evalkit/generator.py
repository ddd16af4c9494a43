"""The generator interface and the shard engine that fills a sample store from any generator.

A generator is what the sample store needs from a model family (ADM diffusion, an upsampler,
later BigGAN-deep): the store kind, the settings that identify its images, how many images of
which size, a provenance record, and ``make_batch(indices, ctx)``, where sample i depends only
on (seed, i). ``run_stage`` deals batches to the processes of a `Context`, writes each as an
atomic shard (`evalkit.runstore`) and, on rank 0, assembles the final
``samples_<N>x<H>x<W>x3.npz``, so a killed run resumes from its shards.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from evalkit import __version__, runstore
from evalkit.context import Context
from evalkit.errors import RunDirectoryError
from evalkit.options import RunOptions


@runtime_checkable
class Generator(Protocol):
    """What the sample store needs from a model family.

    ``kind``: the store kind compared on resume ("sample", "upsample"); ``family``: the model
    family written to results rows ("adm"); ``desc``: progress-bar text. ``settings()`` is the
    run identity (JSON-serialisable; everything that changes the images, never batch size or
    device), ``provenance()`` an informative record (paths, sha256s, the full request).
    ``prepare(ctx)`` loads the networks onto ``ctx.device`` (called once, only when this process
    has batches to make, before anything is written); ``make_batch(indices, ctx)`` returns uint8
    images [len(indices), H, W, 3] and int64 labels [len(indices)] (or None when ``has_labels``
    is False), sample i depending only on (seed, i).
    """

    kind: str
    family: str
    desc: str
    num_samples: int
    image_size: int
    has_labels: bool

    def settings(self) -> dict[str, Any]: ...

    def provenance(self) -> dict[str, Any]: ...

    def prepare(self, ctx: Context) -> None: ...

    def make_batch(self, indices: range, ctx: Context) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclass
class SampleRun:
    """A finished store: ``npz_path`` (samples_<N>x<H>x<W>x3.npz), its manifest, timing.

    ``generated`` counts samples made by this call (0 when everything was already done);
    ``base`` is the base store of a cascade (None otherwise).
    """

    out_dir: Path
    npz_path: Path
    manifest: dict[str, Any]
    num_samples: int
    generated: int
    seconds: float
    base: "SampleRun | None" = None
    stage: str = "sample"

    def summary(self) -> str:
        """One line: N samples, time, samples/s, output path."""
        if self.generated == 0:
            return f"{self.stage}: {self.num_samples} samples already complete -> {self.npz_path}"
        rate = self.generated / self.seconds if self.seconds > 0 else 0.0
        new = "" if self.generated == self.num_samples else f" ({self.generated} new, resumed)"
        return (f"{self.stage}: {self.num_samples} samples{new} in {self.seconds:.1f} s, "
                f"{rate:.2f} samples/s -> {self.npz_path}")


def versions() -> dict[str, str]:
    """Versions that can change the images, for provenance records."""
    return {"evalkit": __version__, "torch": torch.__version__, "numpy": np.__version__}


def check_device(out_dir: str | os.PathLike, manifest: dict[str, Any] | None, device: torch.device) -> None:
    """Refuse to resume an unfinished store on another device type than the one that started it.

    The noise is the same on every device, but network arithmetic rounds differently, so one
    store would mix two kinds of images. Manifests without a recorded device are allowed.
    """
    recorded = (manifest or {}).get("device_type")
    if recorded is not None and not manifest.get("complete") and recorded != device.type:
        raise RunDirectoryError(f"--out {out_dir} was started on device type {recorded}, but {device.type} was "
                                f"requested; resuming would mix two devices' arithmetic in one store. Resume with "
                                f"--device {recorded} or use another --out directory")


@runstore.owns_run_dir("out_dir")  # one job at a time in out_dir; another fails at once naming the holder
def run_stage(generator: Generator, out_dir: str | os.PathLike, options: RunOptions = RunOptions(),
              ctx: Context | None = None) -> SampleRun:
    """Fill `out_dir` with shards for every missing index, then (rank 0) write the final npz.

    Every process of `ctx` calls it; batches are dealt round-robin. Finished shards are skipped,
    so rerunning after a kill resumes. Raises RunDirectoryError when `out_dir` holds a run with
    other settings, was started on another device type, or cannot be written.
    """
    ctx = ctx or Context.local()
    out_dir = Path(out_dir)
    r, w = ctx.rank, ctx.world_size
    t0 = time.perf_counter()
    settings = generator.settings()
    manifest = runstore.check_run_dir(out_dir, generator.kind, settings)
    done_npz = runstore.completed_npz(out_dir, manifest)
    if done_npz is not None:
        return SampleRun(out_dir, done_npz, manifest, generator.num_samples, 0, time.perf_counter() - t0,
                         stage=generator.desc)
    check_device(out_dir, manifest, ctx.device)
    # Plan from the finished shards, and load the models, before anything is written: a bad
    # checkpoint must not leave a manifest behind.
    n = generator.num_samples
    done = runstore.done_intervals(runstore.list_shards(out_dir), n) if manifest else []
    plan = runstore.plan_batches(done, n, options.batch_size)
    mine = runstore.batches_of_rank(plan, r, w)
    todo = sum(len(b) for b in plan)
    if mine:
        generator.prepare(ctx)
    ctx.barrier()  # every rank has listed the shards and loaded before any rank writes
    if ctx.is_main:
        if manifest is None:
            manifest = runstore.new_manifest(generator.kind, settings, {**generator.provenance(),
                                                                        "versions": versions()}, n,
                                             (generator.image_size, generator.image_size, 3), generator.has_labels,
                                             device_type=ctx.device.type)
            runstore.write_manifest(out_dir, manifest)
        runstore.remove_stale_temporaries(out_dir)
    ctx.barrier()
    manifest = runstore.read_manifest(out_dir)

    if mine:
        desc = generator.desc if w == 1 else f"{generator.desc} (rank 0 of {w})"
        bar = tqdm(total=todo, unit="sample", desc=desc, disable=not options.progress or r != 0,
                   dynamic_ncols=True, smoothing=0.1)
        last_refresh = time.monotonic()
        with bar:
            for k, batch in enumerate(mine):
                images, labels = generator.make_batch(batch, ctx)
                runstore.write_shard(out_dir, batch.start, images, labels if generator.has_labels else None, rank=r)
                # Rank 0 advances by the batches dealt to all ranks in this round (exact at the end).
                j = k * w + r
                bar.update(sum(len(b) for b in plan[j:j + w]) if r == 0 else 0)
                if r == 0 and time.monotonic() - last_refresh > 10.0:
                    manifest = runstore.refresh_done(out_dir, manifest)
                    last_refresh = time.monotonic()
    ctx.barrier()
    if ctx.is_main:
        runstore.assemble(out_dir, manifest, keep_shards=options.keep_shards)
    ctx.barrier()
    manifest = runstore.read_manifest(out_dir)
    npz = out_dir / manifest["npz"]
    return SampleRun(out_dir, npz, manifest, n, todo, time.perf_counter() - t0, stage=generator.desc)
