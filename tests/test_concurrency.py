"""Many jobs at once: results-CSV appends, run directories, feature cache and downloads under contention.

Every test starts real processes (subprocesses of this interpreter) that begin together at a start
line, with hard timeouts, and checks what survives: exact row counts, one owner per run directory,
one computation per cache key, one download per file, and what a lock left by ``kill -9`` does.
"""

from __future__ import annotations

import http.server
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_sampling import SUBPROCESS_ENV, UNET_FLAGS, one_thread, save_random

from evalkit import locks, runstore
from evalkit import results as results_mod
from evalkit.cli import main
from evalkit.errors import InputError, LockError, RunDirectoryError
from evalkit.locks import FileLock
from evalkit.results import append_row, read_results

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
HOST = socket.gethostname()
pytestmark = pytest.mark.skipif(locks.fcntl is None, reason="flock locks need fcntl (POSIX)")


# ---------------------------------------------------------------------------------------------
# Helpers: subprocesses that start together, and always end

class Procs:
    """Start python snippets as subprocesses; they wait for ``GO`` (a file) after writing ``READY``."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.tmp, self.procs = tmp, []
        self.go = tmp / "go"
        self.env = {**os.environ, **SUBPROCESS_ENV, **(env or {}),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
        self.env.pop(locks.NO_LOCKS_ENV, None)

    def start(self, body: str, **env: str) -> subprocess.Popen:
        i = len(self.procs)
        ready = self.tmp / f"ready-{i}"
        prelude = textwrap.dedent(f"""
            import os, sys, time
            from pathlib import Path
            def start_line():
                Path({str(ready)!r}).write_text("1")
                while not Path({str(self.go)!r}).exists():
                    time.sleep(0.002)
        """)
        proc = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(body)], env={**self.env, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.ready = ready  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def wait_ready(self, procs=None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for p in procs or self.procs:
            while not p.ready.exists():
                assert p.poll() is None, f"helper exited early: {p.communicate()}"
                assert time.monotonic() < deadline, "helpers did not reach the start line"
                time.sleep(0.01)

    def release(self) -> None:
        self.go.write_text("1")

    def finish(self, timeout: float = 60) -> list[tuple[int, str, str]]:
        out = []
        for p in self.procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
        return out

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.fixture
def procs(tmp_path):
    group = Procs(tmp_path)
    try:
        yield group
    finally:
        group.kill_all()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _holder_pid(lock_file: Path) -> int | None:
    holder = locks.Holder.parse(lock_file.read_text()) if lock_file.exists() else None
    return holder.pid if holder else None


# ---------------------------------------------------------------------------------------------
# Results CSV

def _append_rows(csv: str, worker: int, rows: int, start) -> None:
    start.wait(60)
    for j in range(rows):
        append_row(csv, {"label": f"w{worker}", "guidance_scale": float(worker * 1000 + j), "sampler": "ddim",
                         "num_samples": 10, "seed": worker, "fid": float(j)})


class Appenders:
    """Forked writers (no interpreter start-up: evalkit is already imported) that append `rows` rows each."""

    def __init__(self, csv: Path, workers, rows: int):
        ctx = mp.get_context("fork")
        self.start = ctx.Event()
        self.procs = [ctx.Process(target=_append_rows, args=(str(csv), w, rows, self.start)) for w in workers]
        for p in self.procs:
            p.start()

    def go(self) -> None:
        self.start.set()

    def join(self, timeout: float = 60) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        codes = [p.exitcode for p in self.procs]
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join()
        return codes


needs_fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="forked writers need fork")


@needs_fork
def test_n_processes_times_m_appends_keep_every_row(tmp_path):
    """4 processes x 10 concurrent appends -> exactly 40 rows, each once.

    Catches: appends without the lock (with EVALKIT_NO_LOCKS=1, 12-13 of 40 rows survived in 3 tries), and
    a lock taken after the CSV was read (the same lost updates).
    """
    csv = tmp_path / "results.csv"
    n, m = 4, 10
    writers = Appenders(csv, range(n), m)
    writers.go()
    assert writers.join() == [0] * n
    table = read_results(csv)
    assert len(table) == n * m
    assert not table["run_id"].duplicated().any()
    assert sorted(table["guidance_scale"]) == sorted(float(w * 1000 + j) for w in range(n) for j in range(m))
    assert (tmp_path / "results.csv.lock").read_bytes() == b""  # released cleanly by every writer


@needs_fork
def test_concurrent_sweeps_over_disjoint_settings_write_the_union(procs, tmp_path):
    """A real `evalkit sweep` (tiny models, scales 0 and 4) and two writers standing in for other sweeps
    (disjoint settings), all at once on one CSV: the CSV holds the union of their rows."""
    from sweep_helpers import make_assets, model_args, score_args

    assets = make_assets(tmp_path / "assets")
    csv = tmp_path / "results.csv"
    args = ["sweep", *map(str, model_args(assets, steps="2")), *map(str, score_args(assets)), "--scales", "0,4",
            "--out", str(tmp_path / "sweep"), "--csv", str(csv)]
    procs.start(f"""
        from evalkit.cli import main
        start_line()
        main({args!r})
    """, EVALKIT_PLUGINS="tiny_extractor", EVALKIT_CACHE=str(tmp_path / "cache"))
    writers = Appenders(csv, (7, 8), 8)
    procs.wait_ready()
    procs.release()
    writers.go()
    assert writers.join(120) == [0, 0]
    code, _, err = procs.finish(timeout=120)[0]
    assert code == 0, err[-3000:]
    table = read_results(csv)
    assert len(table) == 2 + 2 * 8 and not table["run_id"].duplicated().any()
    rows = table[~table["label"].isin(["w7", "w8"])]
    assert sorted(rows["guidance_scale"]) == [0.0, 4.0] and rows["fid"].notna().all()
    assert sorted(table["guidance_scale"][table["label"].isin(["w7", "w8"])]) == sorted(
        float(w * 1000 + j) for w in (7, 8) for j in range(8))


def test_exist_ok_keeps_the_row_another_job_wrote_first(tmp_path):
    """Two jobs that computed the same setting: the second append keeps the first row (exist_ok), where
    the default still refuses a duplicate."""
    csv = tmp_path / "r.csv"
    rid = append_row(csv, {"label": "first", "guidance_scale": 2.0, "fid": 1.0})
    assert append_row(csv, {"label": "second", "guidance_scale": 2.0, "fid": 1.5}, exist_ok=True) == rid
    with pytest.raises(InputError, match="already present"):
        append_row(csv, {"label": "third", "guidance_scale": 2.0})
    assert read_results(csv)["label"].tolist() == ["first"]


KILLED_WRITER = """
    import pandas as pd
    from evalkit.results import append_row
    def hang(self, target, *a, **k):
        Path(target).write_text("run_id,lab")   # half a table in the temporary file
        Path({ready!r}).write_text("1")
        time.sleep(120)
    pd.DataFrame.to_csv = hang
    append_row({csv!r}, {{"label": "killed", "guidance_scale": 9.0, "fid": 1.0}})
"""


def test_writer_killed_while_holding_the_lock(procs, tmp_path):
    """SIGKILL a writer inside its locked write: the next writer gets the lock at once and the CSV keeps
    every row. Catches: a lock that outlives its holder (e.g. a lock file whose mere existence means
    "locked", which would leave the next writer waiting for LOCK_TIMEOUT_S and then failing)."""
    csv = tmp_path / "results.csv"
    append_row(csv, {"label": "first", "guidance_scale": 0.0, "fid": 3.0})
    inside = tmp_path / "inside"
    victim = procs.start(KILLED_WRITER.format(ready=str(inside), csv=str(csv)))
    procs.release()
    _wait_for(inside.exists, 60, "the writer to enter its locked write")
    assert _holder_pid(tmp_path / "results.csv.lock") == victim.pid
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert _holder_pid(tmp_path / "results.csv.lock") == victim.pid  # the dead holder's record is still there
    t0 = time.monotonic()
    append_row(csv, {"label": "next", "guidance_scale": 1.0, "fid": 2.0})
    assert time.monotonic() - t0 < 5.0
    table = read_results(csv)
    assert table["label"].tolist() == ["first", "next"]
    assert not list(tmp_path.glob(".results.csv.*.tmp"))


HOLDER = """
    from evalkit.locks import FileLock
    lock = FileLock({path!r}).acquire()
    Path({ready!r}).write_text("1")
    time.sleep(120)
"""


def test_busy_lock_times_out_naming_the_holder(procs, tmp_path, monkeypatch):
    """A held lock: timeout=0 fails at once, a short timeout after about that long; the one-line error
    names what, the holder's pid, host, start time and command. A results writer gives up the same way."""
    path, inside = tmp_path / "r.csv.lock", tmp_path / "inside"
    holder = procs.start(HOLDER.format(path=str(path), ready=str(inside)))
    procs.release()
    _wait_for(inside.exists, 60, "the holder")
    t0 = time.monotonic()
    with pytest.raises(LockError) as info:
        FileLock(path, timeout=0, what="the thing").acquire()
    assert time.monotonic() - t0 < 1.0
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("the thing is in use by ")
    assert f"pid {holder.pid} on host {HOST} since 20" in msg and "-c" in msg
    t0 = time.monotonic()
    with pytest.raises(LockError):
        FileLock(path, timeout=0.5).acquire()
    assert 0.5 <= time.monotonic() - t0 < 3.0
    monkeypatch.setattr(results_mod, "LOCK_TIMEOUT_S", 0.2)
    with pytest.raises(LockError, match=f"results CSV .*r.csv is in use by pid {holder.pid}"):
        append_row(tmp_path / "r.csv", {"label": "late", "guidance_scale": 1.0})
    assert not (tmp_path / "r.csv").exists()


def test_lock_kept_by_an_orphaned_child_is_explained(procs, tmp_path):
    """The recorded holder died but a process it started still has the lock's descriptor: the error
    says so and names that process; once it ends, the lock is free."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to find the processes that hold the file")
    path, child_pid_file = tmp_path / "x.lock", tmp_path / "child"
    parent = procs.start(f"""
        import subprocess
        from evalkit.locks import FileLock
        lock = FileLock({str(path)!r}).acquire()
        child = subprocess.Popen(["sleep", "60"], pass_fds=[lock._fd])  # inherits the locked descriptor
        Path({str(child_pid_file)!r}).write_text(str(child.pid))
        os._exit(0)  # dies without releasing; the child keeps the lock alive
    """)
    procs.release()
    parent.wait(timeout=60)
    child = int(child_pid_file.read_text())
    try:
        with pytest.raises(LockError) as info:
            FileLock(path, timeout=0).acquire()
        msg = str(info.value)
        assert f"pid {parent.pid} on host {HOST}" in msg and "no longer running" in msg and f"pids {child}" in msg
    finally:
        os.kill(child, signal.SIGKILL)
    _wait_for(lambda: _try(path), 10, "the lock to be free once the child ended")


def _try(path: Path) -> bool:
    try:
        FileLock(path, timeout=0).acquire().release()
        return True
    except LockError:
        return False


def test_forked_child_does_not_keep_the_lock_after_its_parent_is_killed(procs, tmp_path):
    """A lock holder that forks a worker (as DataLoader/multiprocessing do) and is then killed: the lock
    is free although the worker lives on. Catches: not closing inherited lock descriptors at fork."""
    path, inside = tmp_path / "x.lock", tmp_path / "inside"
    parent = procs.start(f"""
        from evalkit.locks import FileLock
        lock = FileLock({str(path)!r}).acquire()
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        Path({str(inside)!r}).write_text(str(pid))
        time.sleep(60)
    """)
    procs.release()
    _wait_for(lambda: inside.exists() and inside.read_text(), 60, "the holder to fork")
    child = int(inside.read_text())
    try:
        assert not _try(path)  # held by the parent
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        os.kill(child, 0)  # the forked worker is still alive...
        assert _try(path)  # ...and the lock is free
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_lock_is_reentrant_in_a_thread_and_excludes_other_threads(tmp_path):
    path = tmp_path / "x.lock"
    order = []
    with FileLock(path, timeout=0):
        with FileLock(path, timeout=0):  # same thread: re-entered, not a deadlock
            assert locks.Holder.parse(path.read_text()).pid == os.getpid()

        def other():
            with FileLock(path, timeout=10):
                order.append("other")

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("first")  # the other thread is still waiting
    thread.join(10)
    assert order == ["first", "other"] and path.read_bytes() == b""


# ---------------------------------------------------------------------------------------------
# Run directories

NUM = 16


def _sample_args(ckpt: Path, out: Path) -> list[str]:
    return ["sample", "--model-flags", UNET_FLAGS, "--checkpoint", str(ckpt), "--num-samples", str(NUM),
            "--batch-size", "1", "--timestep-respacing", "6", "--seed", "5", "--classes", "0-9", "--device", "cpu",
            "--quiet", "--out", str(out)]


def test_two_samplers_on_one_run_directory(procs, tmp_path):
    """`evalkit sample` runs in a directory; the same command started meanwhile fails at once with one line
    naming the directory and the holder; with EVALKIT_RUN_DIR_WAIT it waits, then reuses the finished npz
    (the message of a finished run, not "shards cover samples [0, 0) only")."""
    ckpt = save_random("diffusion", UNET_FLAGS, tmp_path / "unet.pt", seed=1)
    out = tmp_path / "run"
    first = procs.start(f"""
        from evalkit.cli import main
        start_line()
        main({list(map(str, _sample_args(ckpt, out)))!r})
    """)
    procs.release()
    _wait_for(lambda: runstore.list_shards(out) or first.poll() is not None, 120, "the first sampler's first shard")
    assert first.poll() is None, first.communicate()
    with one_thread():
        refused = CliRunner().invoke(main, _sample_args(ckpt, out))
        assert refused.exit_code != 0
        line = refused.output.strip()
        assert "\n" not in line, line
        assert f"run directory {out} is in use by pid {first.pid} on host {HOST} since 20" in line
        assert "use another --out" in line and "EVALKIT_RUN_DIR_WAIT" in line
        assert first.poll() is None  # still sampling: the refusal was not a finished run
        waited = CliRunner(env={runstore.WAIT_ENV: "120"}).invoke(main, _sample_args(ckpt, out))
    assert waited.exit_code == 0, waited.output
    assert first.wait(timeout=60) == 0, first.communicate()
    assert f"{NUM} samples already complete" in waited.output
    assert "waiting for run directory" in waited.output or "waiting for run directory" in str(waited.stderr_bytes)
    assert sorted(p.name for p in out.iterdir()) == [runstore.RUN_LOCK, "manifest.json",
                                                     f"samples_{NUM}x8x8x3.npz"]
    with np.load(out / f"samples_{NUM}x8x8x3.npz", allow_pickle=False) as f:
        assert f["arr_0"].shape == (NUM, 8, 8, 3) and f["arr_0"].std() > 10


def test_killed_owner_is_taken_over_with_a_note(procs, tmp_path, capfd):
    """A run-directory owner killed with SIGKILL leaves its record; the next claim takes the directory
    at once and says whose lock it took over."""
    run_dir, inside = tmp_path / "run", tmp_path / "inside"
    owner = procs.start(f"""
        from evalkit import runstore
        with runstore.claim_run_dir({str(run_dir)!r}, wait=False):
            Path({str(inside)!r}).write_text("1")
            time.sleep(120)
    """)
    procs.release()
    _wait_for(inside.exists, 60, "the owner")
    with pytest.raises(RunDirectoryError, match=f"in use by pid {owner.pid}"):
        with runstore.claim_run_dir(run_dir, wait=False):
            pass
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    capfd.readouterr()
    with runstore.claim_run_dir(run_dir, wait=False) as lock:
        assert lock.previous is not None and lock.previous.pid == owner.pid
    note = capfd.readouterr().err
    assert f"left locked by pid {owner.pid} on host {HOST}" in note and "taking it over" in note


def test_assembling_a_run_another_process_finished_reuses_its_npz(tmp_path):
    """Without a shared lock (locks off, or a filesystem whose flock is node-local), a second process may
    reach assembly after the first assembled and removed the shards: it returns the finished npz.
    Catches the old message "shards cover samples [0, 0) only, expected [0, N)"."""
    run_dir = tmp_path / "run"
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    manifest = runstore.new_manifest("sample", {"x": 1}, {}, 4, (8, 8, 3), False)
    runstore.write_manifest(run_dir, manifest)
    runstore.write_shard(run_dir, 0, images, None)
    stale = dict(manifest)  # what the second process read before the first finished
    npz = runstore.assemble(run_dir, manifest, keep_shards=False)
    assert not (run_dir / "shards").exists()
    runstore.refresh_done(run_dir, dict(stale))  # the second's progress update must not undo "complete"
    assert runstore.read_manifest(run_dir)["complete"] is True
    again = runstore.assemble(run_dir, stale, keep_shards=False)
    assert again == npz and stale["complete"] is True
    with np.load(again, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["arr_0"], images)


def test_failed_claim_leaves_no_directory(tmp_path):
    """A run that fails before writing anything leaves no directory behind, lock file included."""
    run_dir = tmp_path / "new"
    with pytest.raises(ValueError):
        with runstore.claim_run_dir(run_dir, wait=False):
            raise ValueError("bad checkpoint")
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# Feature cache and downloads

FEATURES_JOB = """
    import numpy as np
    import tiny_extractor
    from evalkit.extract import build_extractor, compute_features
    from evalkit.options import ScoreOptions
    ex = build_extractor("tiny-test", "cpu")
    call = type(ex).__call__
    def slow(self, images):
        time.sleep(0.4)  # 5 batches: 2 s of extraction, long enough for the other job to arrive
        return call(self, images)
    type(ex).__call__ = slow
    start_line()
    feats = compute_features({batch!r}, ex, ScoreOptions(batch_size=10, progress=False))
    print(tiny_extractor.CALLS.get("tiny-test", 0), float(np.abs(feats["pool"]).sum()))
"""


def test_feature_cache_computes_a_shared_key_once(procs, tmp_path):
    """Two jobs need the same reference features at once: one extracts, the other waits and reads its
    cache file; both get the same numbers. Catches: misses that do not claim the key (both jobs
    extract: 100 images instead of 50)."""
    from tiny_extractor import make_images

    from evalkit.store import write_npz
    batch = tmp_path / "ref.npz"
    write_npz(batch, make_images(50, 3, res=8))
    env = {"EVALKIT_CACHE": str(tmp_path / "cache")}
    for _ in range(2):
        procs.start(FEATURES_JOB.format(batch=str(batch)), **env)
    procs.wait_ready()
    procs.release()
    results = procs.finish(timeout=120)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    calls = [int(out.split()[0]) for _, out, _ in results]
    sums = {out.split()[1] for _, out, _ in results}
    assert sorted(calls) == [0, 50] and len(sums) == 1
    assert sum("waiting for features another job is computing" in err for _, _, err in results) == 1
    assert list((tmp_path / "cache" / "features").glob("*.h5"))


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file in 16 pieces over about 0.8 s, and counts the requests."""

    requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        step = len(PAYLOAD) // 16
        for i in range(0, len(PAYLOAD), step):
            self.wfile.write(PAYLOAD[i:i + step])
            self.wfile.flush()
            time.sleep(0.05)


@pytest.fixture
def slow_server():
    SlowHandler.requests = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file"
    httpd.shutdown()
    httpd.server_close()


def test_two_downloads_of_one_file_download_it_once(procs, tmp_path, slow_server):
    """Two `fetch`es of the same weights file at once: one downloads, the other waits and reuses the
    verified file. Catches: downloads without the lock (2 requests, the file written twice)."""
    import hashlib
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    job = f"""
        from evalkit import weights
        weights.WEIGHTS["test-net"] = weights.WeightsFile(name="test-net", filename="test-net.bin",
                                                          url={slow_server!r}, sha256={digest!r})
        start_line()
        print(weights.fetch("test-net", progress=False))
    """
    env = {"EVALKIT_CACHE": str(tmp_path / "cache")}
    for _ in range(2):
        procs.start(job, **env)
    procs.wait_ready()
    procs.release()
    results = procs.finish(timeout=60)
    for code, _, err in results:
        assert code == 0, err
    dest = tmp_path / "cache" / "weights" / "test-net.bin"
    assert {out.strip() for _, out, _ in results} == {str(dest)}
    assert SlowHandler.requests == 1
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["sha256.json", "test-net.bin"]
