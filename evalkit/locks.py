"""Exclusive locks between processes, on a lock file with ``fcntl.flock``, that say who holds them.

Every file several evalkit jobs may share (a results CSV, a run directory, a feature-cache entry, a
downloaded weights file) is guarded by a lock file: ``FileLock(path)`` opens it and takes an
exclusive ``flock`` on it, then writes its holder there (host, pid, time taken, command, torchrun
job), so that a process that cannot take it can say who can.

Stale locks: the kernel drops a ``flock`` when the last descriptor of its holder closes, which
includes the holder being killed (``kill -9``, OOM killer, node reboot for a network filesystem's
lock server). A lock file whose lock is free is therefore simply taken, whatever record it holds;
that record (a holder that ended without releasing) is kept in ``FileLock.previous``. Lock files are
never deleted (deleting one while another process waits on it would let two processes hold
"the" lock); a released lock file is left empty.

One trap remains: a child made by ``fork`` without ``exec`` shares its parent's descriptor and so
its lock. Descriptors are opened close-on-exec (subprocesses never inherit them), and after a
fork the child closes its copies (``os.register_at_fork``), so a forked worker never keeps a lock
alive after its parent died. If a lock is nevertheless held while its recorded holder, on this
host, is dead, the error says so and names the processes that still have the file open.

Scope: exclusion is between processes (and between threads that use separate ``FileLock``
objects on a local filesystem; network filesystems emulate ``flock`` with per-process POSIX
locks, so there only processes exclude each other). Within one thread a lock is re-entrant:
taking a lock this thread already holds only counts a level. Which filesystems honour ``flock``
across machines is listed in the README ("Running many jobs at once"). Where ``fcntl`` does not
exist (Windows) or ``EVALKIT_NO_LOCKS=1`` is set, locks do nothing (one writer at a time is then
the user's job); a filesystem that refuses ``flock`` raises LockError telling the user so.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no flock (see the module docstring)
    fcntl = None  # type: ignore[assignment]

from evalkit.errors import LockError
from evalkit.hashing import sha256_bytes

NO_LOCKS_ENV = "EVALKIT_NO_LOCKS"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
_POLL_MIN, _POLL_MAX = 0.005, 0.25  # seconds between attempts while waiting (grows geometrically)


def locks_disabled() -> bool:
    """True when locking is switched off: ``EVALKIT_NO_LOCKS=1`` or a platform without ``fcntl``."""
    return fcntl is None or os.environ.get(NO_LOCKS_ENV, "").strip() not in ("", "0")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _job() -> str | None:
    """Identity of the torchrun job this process belongs to, if any."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "MASTER_ADDR" in os.environ:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        return f"torchrun {run_id or where} rank {os.environ.get('RANK', '?')}/{os.environ.get('WORLD_SIZE', '?')}"
    return None


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock: what a lock file records."""

    host: str
    pid: int
    started: str          # UTC ISO-8601 time the lock was taken
    command: str = ""
    job: str | None = None

    @classmethod
    def me(cls) -> "Holder":
        command = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
        return cls(host=socket.gethostname(), pid=os.getpid(), started=_now(), command=command[:300], job=_job())

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        """The holder recorded in a lock file's text, or None (empty or not a record)."""
        try:
            data = json.loads(text)
            return cls(host=str(data["host"]), pid=int(data["pid"]), started=str(data["started"]),
                       command=str(data.get("command") or ""), job=data.get("job"))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started, "command": self.command,
                           "job": self.job}, sort_keys=True) + "\n"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """Whether the holder process still runs: True/False on this host, None (unknown) elsewhere."""
        if not self.on_this_host():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            return True
        return True

    def describe(self) -> str:
        """``pid 123 on host node7 since 2026-12-01T10:00:00+00:00 (evalkit sample ...)``."""
        extra = "; ".join(x for x in (self.command, self.job) if x)
        return f"pid {self.pid} on host {self.host} since {self.started}" + (f" ({extra})" if extra else "")


# Lock files this process holds, per thread: real path -> [descriptor, depth]. Also every open
# descriptor of this process (all threads), closed in a forked child.
_local = threading.local()
_all_fds: "weakref.WeakSet[FileLock]" = weakref.WeakSet()


def _held() -> dict[str, list[int]]:
    if not hasattr(_local, "held"):
        _local.held = {}
    return _local.held


def _after_fork_in_child() -> None:
    """Close the lock descriptors a forked child inherited, so it never keeps its parent's locks alive."""
    for lock in list(_all_fds):
        lock._forget_after_fork()
    _local.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _holders_of(path: Path) -> list[int]:
    """Pids of this host's processes that have `path` open (Linux /proc; best effort, own processes)."""
    target = os.path.realpath(path)
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == target:
                    pids.append(int(entry.name))
                    break
        except OSError:
            continue
    return sorted(pids)


class FileLock:
    """An exclusive lock on `path` (created if absent), re-entrant within a thread.

    ``timeout``: seconds to wait for a busy lock (None: wait as long as it takes; 0: fail at once)
    before raising LockError naming `what` (default: the lock file) and the holder. ``on_wait`` is
    called once with the holder (or None) when the lock is busy and waiting begins.
    Use as a context manager, or ``acquire()`` / ``release()``.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float | None = None, what: str | None = None,
                 on_wait: Callable[["Holder | None"], None] | None = None):
        self.path = Path(path)
        self.timeout = timeout
        self.what = what or f"lock file {self.path}"
        self.on_wait = on_wait
        self.previous: Holder | None = None  # record of a holder that ended without releasing
        self.waited = False                   # whether acquire() found the lock busy
        self._fd: int | None = None
        self._key: str | None = None
        self._pid = os.getpid()
        self._reentered = False

    # -- taking and releasing -------------------------------------------------------------------

    def acquire(self) -> "FileLock":
        """Take the lock, waiting up to ``timeout``; LockError when busy past it or unsupported."""
        if locks_disabled():
            return self
        self._key = os.path.realpath(self.path)
        held = _held()
        if self._key in held:  # this thread holds it already
            held[self._key][1] += 1
            self._reentered = True
            return self
        deadline = None if self.timeout is None else time.monotonic() + max(0.0, self.timeout)
        delay = _POLL_MIN
        while True:
            fd = self._open()
            try:
                if self._try_lock(fd, deadline, delay):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was replaced while we waited: lock the new one
        self._fd = fd
        _all_fds.add(self)
        self._pid = os.getpid()
        text = self._read(fd)
        self.previous = Holder.parse(text) if text.strip() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().to_json().encode("utf-8"), 0)
        held[self._key] = [fd, 1]
        return self

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise LockError(f"cannot open {self.what}: {exc.strerror or exc} (is the folder writable?)") from exc

    def _try_lock(self, fd: int, deadline: float | None, delay: float) -> bool:
        """Lock `fd`, polling until `deadline`; True when locked, False when the path now names another file."""
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in _UNSUPPORTED:
                    raise LockError(
                        f"cannot lock {self.what}: the filesystem refuses flock ({exc.strerror or exc}); "
                        f"mount it with locking enabled (NFS: lockd running / no 'nolock'; Lustre: -o flock), "
                        f"or set {NO_LOCKS_ENV}=1 to run without locks, safe only when one process at a time "
                        f"writes there") from exc
                raise
            else:
                # Still the file `path` names? (Someone may have deleted or replaced the lock file.)
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return same
            self.waited = True
            if deadline is not None and time.monotonic() >= deadline:
                raise LockError(self.busy_message(self._read(fd)))
            if not announced and self.on_wait is not None:
                self.on_wait(Holder.parse(self._read(fd)))
            announced = True
            sleep = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(sleep)
            delay = min(delay * 1.5, _POLL_MAX)

    @staticmethod
    def _read(fd: int) -> str:
        # Read through our own descriptor: on NFS, closing any other descriptor of the file would
        # drop this process's locks on it.
        try:
            return os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            return ""

    def busy_message(self, text: str) -> str:
        """``<what> is in use by pid … on host … since …`` (plus the stale-descriptor case)."""
        holder = Holder.parse(text)
        if holder is None:
            return f"{self.what} is in use by another process (no holder recorded in {self.path})"
        msg = f"{self.what} is in use by {holder.describe()}"
        if holder.alive() is False:
            others = _holders_of(self.path)
            who = f" (pids {', '.join(map(str, others))})" if others else ""
            msg += (f"; that process is no longer running, but a process it started still holds the lock"
                    f"{who}: end it, then retry")
        return msg

    def release(self) -> None:
        """Release the lock (or one level of a re-entered one); a no-op when not held."""
        if self._reentered:
            held = _held().get(self._key or "")
            if held is not None:
                held[1] -= 1
            self._reentered = False
            return
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _all_fds.discard(self)
        _held().pop(self._key or "", None)
        if os.getpid() != self._pid:  # a forked child: the descriptor was closed at fork
            return
        try:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _forget_after_fork(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # closes the child's copy only; the parent keeps its lock
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd is not None or self._reentered

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def sidecar(path: str | os.PathLike, hidden: bool = False) -> Path:
    """The lock file of `path`: ``<path>.lock`` (``.<name>.lock`` with `hidden`), in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock" if hidden else f"{path.name}.lock")


def note_waiting(what: str) -> Callable[[Holder | None], None]:
    """An ``on_wait`` callback printing one line to stderr: what is being waited for, and on whom."""
    def note(holder: Holder | None) -> None:
        who = holder.describe() if holder else "another process"
        print(f"evalkit: waiting for {what}: in use by {who}", file=sys.stderr, flush=True)
    return note


# ---------------------------------------------------------------------------------------------
# Locks of cache entries (features, downloads): in one folder, ``<cache root>/locks``

def cache_lock_path(kind: str, target: str | os.PathLike, cache_root: str | os.PathLike) -> Path:
    """Lock file guarding `target`: ``<cache_root>/locks/<kind>-<name>.lock``.

    `name` is `target`'s path relative to `cache_root` when it lies inside it (so nodes that mount
    a shared cache at different paths agree), else a hash of its real path plus its file name. The
    lock files stay out of the folders they guard, whose listings are then unchanged.
    """
    root = Path(os.path.realpath(cache_root))
    real = Path(os.path.realpath(target))
    try:
        name = "--".join(real.relative_to(root).parts)
    except ValueError:
        name = f"{sha256_bytes(str(real).encode('utf-8'))[:16]}-{real.name}"
    return root / "locks" / f"{kind}-{name}.lock"


def try_acquire(lock: FileLock) -> bool:
    """Take `lock`; when the filesystem cannot lock, warn and return False (the caller goes on unlocked).

    For caches, where a missing lock costs duplicated work at worst, never a wrong result.
    """
    try:
        lock.acquire()
        return True
    except LockError as exc:
        warnings.warn(f"{exc}; going on without the lock", stacklevel=3)
        return False
