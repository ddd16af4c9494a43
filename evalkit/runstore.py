"""The run directory of `evalkit sample` / `evalkit upsample`: shards, manifest, resume, final npz.

A run directory holds::

    manifest.json                              settings that change the images + record + progress
    shards/shard-<start>-<end>.npz             one finished batch: images [n,H,W,3] uint8, labels [n]
                                               int64 (when the run has labels), index_range [start,end)
    samples_<N>x<H>x<W>x3.npz                  the final store (arr_0 images, arr_1 labels), written
                                               once every index in [0, N) has a shard
    .evalkit-run.lock                          held by the job that owns the directory (claim_run_dir)

Shards are the source of truth for what is done: each is written atomically (temporary name, then
rename), so a `kill -9` loses at most the batches in flight, and any set of shards tiles part of
[0, N). Which process or batch size produced a shard does not matter, because sample i's
randomness depends on (seed, i) alone (see `evalkit.generator`). The reference scripts
(`scripts/image_sample.py` at `evalkit.REFERENCE_COMMIT`) instead gather every image into one
process and write once at the end.

One job owns a run directory at a time (``claim_run_dir``): another process that opens it while
it is in use fails at once (or waits, see ``claim_run_dir``) naming the holder; a lock left by a
killed process is free again, so ``kill -9`` then rerun resumes. The ranks of one torchrun job
share the directory: rank 0 holds the lock for the job.

This module knows nothing about models: it stores uint8 batches that a caller produces.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from evalkit.atomic import atomic_path, atomic_write_text
from evalkit.context import Context
from evalkit.errors import LockError, RunDirectoryError
from evalkit.locks import FileLock, note_waiting
from evalkit.store import NpzWriter

MANIFEST = "manifest.json"
RUN_LOCK = ".evalkit-run.lock"
#: Seconds to wait for a run directory another job holds (unset or 0: fail at once).
WAIT_ENV = "EVALKIT_RUN_DIR_WAIT"
SHARD_DIR = "shards"
FORMAT = "evalkit-sample-run/1"
_SHARD_RE = re.compile(r"^shard-(\d{8})-(\d{8})\.npz$")


def final_npz_name(num_samples: int, height: int, width: int) -> str:
    """The reference scripts' file name: ``samples_<N>x<H>x<W>x3.npz``."""
    return f"samples_{num_samples}x{height}x{width}x3.npz"


# ---------------------------------------------------------------------------------------------
# Shards

@dataclass(frozen=True)
class Shard:
    """One finished batch on disk: sample indices ``[start, end)``."""

    start: int
    end: int
    path: Path


def shard_path(run_dir: str | os.PathLike, start: int, end: int) -> Path:
    return Path(run_dir) / SHARD_DIR / f"shard-{start:08d}-{end:08d}.npz"


def _os_error(exc: OSError, what: str, path: Path) -> RunDirectoryError:
    return RunDirectoryError(f"cannot write {what} {path}: {exc.strerror or exc} "
                             f"(is the output directory read-only or the disk full? finished shards "
                             f"stay valid; rerun the same command to resume)")


def write_shard(run_dir: str | os.PathLike, start: int, images: np.ndarray,
                labels: np.ndarray | None, rank: int = 0) -> Path:
    """Atomically write the batch of samples ``[start, start + len(images))``.

    images: uint8 [n, H, W, 3]; labels: int64 [n] or None; rank: the writing process (informative).
    Raises RunDirectoryError on OSError (read-only directory, disk full); nothing partial is left behind.
    """
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3, images.shape
    end = start + len(images)
    path = shard_path(run_dir, start, end)
    arrays = {"images": images, "index_range": np.array([start, end], dtype=np.int64),
              "rank": np.array(rank, dtype=np.int64)}
    if labels is not None:
        assert labels.shape == (len(images),), labels.shape
        arrays["labels"] = labels.astype(np.int64)
    try:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as exc:
        raise _os_error(exc, "shard", path) from exc
    return path


def read_shard(shard: Shard) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 [n,H,W,3] and labels int64 [n] (or None) of a shard, checked against its name."""
    try:
        with np.load(shard.path, allow_pickle=False) as f:
            images = f["images"]
            labels = f["labels"] if "labels" in f.files else None
            index_range = f["index_range"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise RunDirectoryError(f"shard {shard.path} is unreadable ({exc}); delete it and rerun "
                                f"the same command to regenerate it") from exc
    n = shard.end - shard.start
    if (images.dtype != np.uint8 or images.ndim != 4 or len(images) != n
            or list(index_range) != [shard.start, shard.end]
            or (labels is not None and labels.shape != (n,))):
        raise RunDirectoryError(f"shard {shard.path} does not hold samples [{shard.start}, {shard.end}) "
                                f"(found images {images.dtype} {images.shape}, index_range "
                                f"{list(index_range)}); delete it and rerun to regenerate it")
    return images, labels


def list_shards(run_dir: str | os.PathLike) -> list[Shard]:
    """Finished shards of a run directory, sorted by start index (temporary files are ignored)."""
    d = Path(run_dir) / SHARD_DIR
    if not d.is_dir():
        return []
    shards = []
    for p in d.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and int(m.group(2)) > int(m.group(1)):
            shards.append(Shard(int(m.group(1)), int(m.group(2)), p))
    return sorted(shards, key=lambda s: (s.start, -s.end))


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete temporary files (shards, final npz, manifest) left by killed processes.

    Call only when no process is writing into ``run_dir``.
    """
    run_dir = Path(run_dir)
    patterns = [(run_dir / SHARD_DIR, ".shard-*.tmp"), (run_dir, ".samples_*.tmp"), (run_dir, f".{MANIFEST}.*.tmp")]
    for folder, pattern in patterns:
        if folder.is_dir():
            for p in folder.glob(pattern):
                p.unlink(missing_ok=True)


def covering(shards: list[Shard], num_samples: int) -> list[Shard]:
    """A chain of shards that tiles ``[0, covered)`` from index 0, skipping redundant ones."""
    chain, pos = [], 0
    for s in shards:
        if s.start == pos and s.end <= num_samples:
            chain.append(s)
            pos = s.end
    return chain


def done_intervals(shards: list[Shard], num_samples: int) -> list[tuple[int, int]]:
    """Merged ``[start, end)`` intervals covered by shards, clipped to ``[0, num_samples)``."""
    merged: list[list[int]] = []
    for s in sorted(shards, key=lambda s: s.start):
        a, b = max(s.start, 0), min(s.end, num_samples)
        if a >= b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def plan_batches(done: list[tuple[int, int]], num_samples: int, batch_size: int) -> list[range]:
    """Contiguous batches of at most ``batch_size`` indices covering what ``done`` leaves out."""
    batches, pos = [], 0
    for a, b in done + [(num_samples, num_samples)]:
        for start in range(pos, a, batch_size):
            batches.append(range(start, min(start + batch_size, a)))
        pos = max(pos, b)
    return batches


def batches_of_rank(batches: list[range], rank: int, world_size: int) -> list[range]:
    """Round-robin split of a batch plan, so every rank gets a balanced share even on resume."""
    return batches[rank::world_size]


# ---------------------------------------------------------------------------------------------
# Manifest

def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a run directory, or None when there is none."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"{path} is unreadable ({exc}); use another --out directory") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunDirectoryError(f"{path} is not an evalkit sample-run manifest (format "
                                f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                                f"expected {FORMAT!r}); use another --out directory")
    return manifest


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable ``key: old (in the directory) != new (requested)`` lines."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            lines.append(f"{key}: {_fmt(old.get(key, '<unset>'))} (in the directory) != "
                         f"{_fmt(new.get(key, '<unset>'))} (requested)")
    return lines


def check_run_dir(run_dir: str | os.PathLike, kind: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse a directory that holds a run with other settings; return its manifest (or None).

    ``settings`` must be JSON-serialisable and hold everything that changes the images (never
    batch size or device). A non-empty directory without a manifest is refused too.
    """
    run_dir = Path(run_dir)
    settings = json.loads(json.dumps(settings))  # normalise tuples -> lists, as stored
    manifest = read_manifest(run_dir)
    if manifest is None:
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirectoryError(f"--out {run_dir} is a file, expected a directory")
        if run_dir.is_dir() and any(p.name != RUN_LOCK for p in run_dir.iterdir()):
            raise RunDirectoryError(f"--out {run_dir} is not empty and holds no {MANIFEST}; "
                                    f"use an empty or new directory")
        return None
    diffs = settings_differences(manifest.get("settings", {}), settings)
    if manifest.get("kind") != kind:
        diffs.insert(0, f"kind: {manifest.get('kind')!r} (in the directory) != {kind!r} (requested)")
    if diffs:
        raise RunDirectoryError(f"--out {run_dir} holds another run; settings that differ: "
                                + "; ".join(diffs)
                                + ". Use another --out directory, or the same settings to resume "
                                  "(batch size and device may differ)")
    return manifest


def write_manifest(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Atomically (re)write ``manifest.json``; OSError becomes RunDirectoryError."""
    path = Path(run_dir) / MANIFEST
    try:
        atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    except OSError as exc:
        raise _os_error(exc, "manifest", path) from exc


def new_manifest(kind: str, settings: dict[str, Any], record: dict[str, Any], num_samples: int,
                 image_shape: tuple[int, int, int], has_labels: bool,
                 device_type: str | None = None) -> dict[str, Any]:
    """A fresh manifest: ``settings`` (compared on resume), ``record`` (informative only) and the
    device type that makes the images (an unfinished run resumes on that type only)."""
    return {
        "format": FORMAT,
        "kind": kind,
        "device_type": device_type,
        "settings": json.loads(json.dumps(settings)),
        "record": json.loads(json.dumps(record)),
        "num_samples": int(num_samples),
        "image_shape": list(image_shape),
        "labels": bool(has_labels),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "done": [],
        "complete": False,
        "npz": None,
    }


def refresh_done(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Copy the index ranges finished so far (from the shard files) into the manifest and save it.

    A manifest another process marked complete meanwhile is kept (and returned), never overwritten.
    """
    current = read_manifest(run_dir)
    if current is not None and current.get("complete"):
        manifest.update(current)
        return manifest
    manifest["done"] = [list(iv) for iv in done_intervals(list_shards(run_dir), manifest["num_samples"])]
    write_manifest(run_dir, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Final npz

def assemble(run_dir: str | os.PathLike, manifest: dict[str, Any], keep_shards: bool = True) -> Path:
    """Stream the shards of a finished run into ``samples_<N>x<H>x<W>x3.npz`` (one shard in memory).

    Raises RunDirectoryError when shards do not tile ``[0, N)``. Marks the manifest complete.
    With ``keep_shards=False`` the shards are deleted once the npz and manifest are in place.
    """
    run_dir = Path(run_dir)
    n = manifest["num_samples"]
    h, w, _ = manifest["image_shape"]
    shards = list_shards(run_dir)
    chain = covering(shards, n)
    covered = chain[-1].end if chain else 0
    if covered != n:
        # Another process may have finished this run and removed the shards meanwhile (possible only
        # where locks are off or not shared): then its npz is the result, not an unfinished run.
        finished = completed_npz(run_dir, read_manifest(run_dir))
        if finished is not None:
            manifest.update(read_manifest(run_dir) or {})
            return finished
        raise RunDirectoryError(f"{run_dir}: shards cover samples [0, {covered}) only, expected [0, {n}); "
                                f"rerun the same command to finish the run")
    path = run_dir / final_npz_name(n, h, w)
    try:
        with NpzWriter(path) as writer:
            for shard in chain:
                images, labels = read_shard(shard)
                if images.shape[1:] != (h, w, 3):
                    raise RunDirectoryError(f"shard {shard.path} holds {images.shape[1:]} images, "
                                            f"expected {(h, w, 3)}")
                if manifest["labels"] and labels is None:
                    raise RunDirectoryError(f"shard {shard.path} has no labels but the run has labels")
                writer.append(images, labels if manifest["labels"] else None)
    except OSError as exc:
        raise _os_error(exc, "final npz", path) from exc
    manifest["done"] = [[0, n]]
    manifest["complete"] = True
    manifest["npz"] = path.name
    write_manifest(run_dir, manifest)
    if not keep_shards:
        for shard in shards:
            shard.path.unlink(missing_ok=True)
        try:
            (run_dir / SHARD_DIR).rmdir()
        except OSError:
            pass
    return path


def completed_npz(run_dir: str | os.PathLike, manifest: dict[str, Any] | None) -> Path | None:
    """The final npz of a complete run, or None when the run is not finished."""
    if not manifest or not manifest.get("complete") or not manifest.get("npz"):
        return None
    path = Path(run_dir) / manifest["npz"]
    return path if path.exists() else None


# ---------------------------------------------------------------------------------------------
# One owner at a time

def run_lock_path(run_dir: str | os.PathLike) -> Path:
    """The lock file of a run directory."""
    return Path(run_dir) / RUN_LOCK


def _wait_timeout(wait: bool | float | None) -> float | None:
    """Seconds to wait (None: without limit) for `wait`: False/0 at once, True forever, None from WAIT_ENV."""
    if wait is None:
        text = os.environ.get(WAIT_ENV, "").strip()
        try:
            wait = float(text) if text else False
        except ValueError:
            raise RunDirectoryError(f"{WAIT_ENV}={text!r}: expected a number of seconds") from None
    if wait is True:
        return None
    return max(0.0, float(wait))


@contextlib.contextmanager
def claim_run_dir(run_dir: str | os.PathLike, wait: bool | float | None = None,
                  ctx: Context | None = None) -> Iterator[FileLock]:
    """Own `run_dir` for the block: hold ``<run_dir>/.evalkit-run.lock`` (created with the directory).

    `wait`: False (or 0) fails at once when another job holds the directory, a number waits that many
    seconds, True waits as long as it takes; None (the default) reads ``$EVALKIT_RUN_DIR_WAIT``
    (seconds; unset means fail at once). Busy past the wait → RunDirectoryError, one line naming the
    directory and the holder (host, pid, since when, command). A lock whose holder was killed is free:
    it is taken, with a note on stderr, and the run resumes from the holder's shards.

    Under torchrun every rank calls this: rank 0 takes the lock for the whole job (the other ranks
    take none; ranks may run on other hosts, and the job is one owner), and its outcome is broadcast,
    so every rank raises the same error or enters the block. Waiting is then bounded by the process
    group's collective timeout. Only the first ``claim_run_dir`` of a directory in a thread locks;
    nested ones re-enter. Whoever calls this must not write into `run_dir` outside the block.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"--out {run_dir} is a file, expected a directory")
    lock = FileLock(run_lock_path(run_dir), timeout=_wait_timeout(wait), what=f"run directory {run_dir}",
                    on_wait=note_waiting(f"run directory {run_dir}"))
    created = not run_dir.exists()
    error: Exception | None = None
    ctx = ctx or Context.local()
    if ctx.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except LockError as exc:
            error = RunDirectoryError(f"{exc}; wait until it finishes (the same command then reuses or resumes "
                                      f"its samples) or use another --out; to wait instead of failing set "
                                      f"{WAIT_ENV}=SECONDS")
        except OSError as exc:
            error = _os_error(exc, "run directory", run_dir)
    error = ctx.broadcast(error)
    if error is not None:
        raise error
    if lock.previous is not None:
        print(f"evalkit: run directory {run_dir} was left locked by {lock.previous.describe()}, which ended "
              f"without releasing it; taking it over (finished shards are kept)", file=sys.stderr, flush=True)
    try:
        yield lock
    finally:
        remove = lock.held and created
        if remove:
            # Nothing was written (e.g. a bad checkpoint): leave no directory behind.
            with contextlib.suppress(OSError):
                if [p.name for p in run_dir.iterdir()] == [RUN_LOCK]:
                    lock.path.unlink()  # safe: a waiter that locked the unlinked file retries
        lock.release()
        if remove:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds when empty


F = TypeVar("F", bound=Callable[..., Any])


def owns_run_dir(param: str = "out_dir", wait: bool | float | None = None) -> Callable[[F], F]:
    """Decorator: run the function inside ``claim_run_dir(<its argument `param`>, wait)``."""
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        if param not in signature.parameters:
            raise TypeError(f"owns_run_dir: {fn.__qualname__} has no parameter {param!r}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            with claim_run_dir(bound.arguments[param], wait, bound.arguments.get("ctx")):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate
