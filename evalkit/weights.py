"""Network weights: where they live, where they come from, and how downloads are checked.

Every file evalkit may need (the Inception graph the reference evaluator uses, pytorch-fid's port of
the same weights, the released guided-diffusion checkpoints) has an entry in ``WEIGHTS`` with its URL
and whatever hash is published for it: OpenAI publishes none, pytorch-fid's file name carries the first
8 hex digits of its sha256. ``fetch`` streams a file to a temporary name beside its final path, checks
it (published hash or prefix, a user pin, an optional structure check), then renames it, so a partial
or rejected download never appears under the final name. The sha256 of every file is recorded in
``sha256.json`` beside it on first use.

Pins: a user may pin the sha256 of any named file (weights or reference batch) with ``--sha256`` on
``fetch``, in ``$EVALKIT_PINS`` (``name=sha256,name=sha256``) or in a JSON pin file (``{"name":
"sha256"}``) at ``$EVALKIT_PIN_FILE``, default ``cache_dir()/pins.json``; the environment wins over
the file. A file whose sha256 differs from its pin is refused.
"""

from __future__ import annotations

import datetime
import functools
import http.client
import inspect
import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from evalkit import __version__
from evalkit.atomic import atomic_path, atomic_write_text
from evalkit.errors import ConfigError, EvalkitError, WeightsError
from evalkit.locks import FileLock, cache_lock_path, note_waiting, try_acquire
from evalkit.hashing import sha256_chunks, sha256_file
from evalkit.presets import URL_BASE

CHUNK = 1 << 20  # 1 MiB: read/hash/write granularity
REGISTRY_NAME = "sha256.json"  # per-folder record of the sha256 of each file, taken on first use
PINS_ENV = "EVALKIT_PINS"  # "name=sha256,name=sha256"
PIN_FILE_ENV = "EVALKIT_PIN_FILE"  # JSON {"name": "sha256"}; default cache_dir()/pins.json


def cache_dir() -> Path:
    """Root of evalkit's caches: ``$EVALKIT_CACHE``, else ``$XDG_CACHE_HOME/evalkit``, else ``~/.cache/evalkit``."""
    env = os.environ.get("EVALKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "evalkit"
    return Path.home() / ".cache" / "evalkit"


def weights_dir() -> Path:
    """Folder holding downloaded weights files (``cache_dir()/weights``)."""
    return cache_dir() / "weights"


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file.

    ``sha256`` is the full hex digest when known; ``sha256_prefix`` the leading hex digits a file
    name carries (pytorch-fid's ``...-6726825d.pth``). Either, both or neither may be known.
    """

    name: str
    filename: str
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    description: str = ""
    companions: tuple[str, ...] = ()  # names of files that `fetch` downloads with this one

    @property
    def path(self) -> Path:
        """Where this file lives in the cache (whether or not it is there)."""
        return weights_dir() / self.filename


_OPENAI = URL_BASE

# The released guided-diffusion checkpoints (file stem, README label).
_CHECKPOINTS = (
    ("64x64_classifier", "64x64 classifier"),
    ("64x64_diffusion", "64x64 diffusion"),
    ("128x128_classifier", "128x128 classifier"),
    ("128x128_diffusion", "128x128 diffusion"),
    ("256x256_classifier", "256x256 classifier"),
    ("256x256_diffusion", "256x256 diffusion"),
    ("256x256_diffusion_uncond", "256x256 diffusion (not class conditional)"),
    ("512x512_classifier", "512x512 classifier"),
    ("512x512_diffusion", "512x512 diffusion"),
    ("64_256_upsampler", "64x64 -> 256x256 upsampler"),
    ("128_512_upsampler", "128x128 -> 512x512 upsampler"),
    ("lsun_bedroom", "LSUN bedroom"),
    ("lsun_cat", "LSUN cat"),
    ("lsun_horse", "LSUN horse"),
    ("lsun_horse_nodropout", "LSUN horse (no dropout)"),
)

# pytorch-pretrained-biggan 0.1.1's conversions of the TF-Hub BigGAN-deep modules (URLs of its
# PRETRAINED_MODEL_ARCHIVE_MAP / PRETRAINED_CONFIG_ARCHIVE_MAP); no checksums were published.
_BIGGAN = "https://s3.amazonaws.com/models.huggingface.co/biggan/"
BIGGAN_RESOLUTIONS = (128, 256, 512)


def _build_registry() -> dict[str, WeightsFile]:
    entries = [
        WeightsFile(
            name="inception-pb",
            filename="classify_image_graph_def.pb",
            url=_OPENAI + "ref_batches/classify_image_graph_def.pb",
            description="Inception-v3 2015-12-05 frozen TF graph, as downloaded by OpenAI's evaluator",
        ),
        WeightsFile(
            name="inception-pth",
            filename="pt_inception-2015-12-05-6726825d.pth",
            url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                "pt_inception-2015-12-05-6726825d.pth",
            sha256_prefix="6726825d",
            description="pytorch-fid's PyTorch port of the same Inception-v3 2015-12-05 weights",
        ),
    ]
    entries += [
        WeightsFile(name=stem, filename=f"{stem}.pt", url=f"{_OPENAI}{stem}.pt",
                    description=f"guided-diffusion checkpoint: {label}")
        for stem, label in _CHECKPOINTS
    ]
    for res in BIGGAN_RESOLUTIONS:
        stem = f"biggan-deep-{res}"
        entries += [
            WeightsFile(name=stem, filename=f"{stem}-pytorch_model.bin", url=f"{_BIGGAN}{stem}-pytorch_model.bin",
                        description=f"BigGAN-deep {res}x{res} generator (pytorch-pretrained-biggan conversion of "
                                    f"TF-Hub deepmind/{stem}/1)", companions=(f"{stem}-config",)),
            WeightsFile(name=f"{stem}-config", filename=f"{stem}-config.json", url=f"{_BIGGAN}{stem}-config.json",
                        description=f"BigGAN-deep {res}x{res} architecture config (pytorch-pretrained-biggan)"),
        ]
    registry = {}
    for entry in entries:
        assert entry.name not in registry, entry.name
        registry[entry.name] = entry
    return registry


WEIGHTS: dict[str, WeightsFile] = _build_registry()


def get(name: str) -> WeightsFile:
    """The ``WEIGHTS`` entry called `name`; an unknown name lists the known ones."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise ConfigError(f"unknown weights name {name!r}; known: {', '.join(WEIGHTS)}") from None


# ---------------------------------------------------------------------------------------------
# Hashes

def _registry_path(folder: Path) -> Path:
    return folder / REGISTRY_NAME


def _read_registry(folder: Path) -> dict:
    path = _registry_path(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def record_sha256(path: str | os.PathLike, digest: str, url: str | None = None) -> None:
    """Remember the verified `digest` of `path` (with its size and mtime) in the folder's ``sha256.json``."""
    path = Path(path)
    stat = path.stat()
    registry = _read_registry(path.parent)
    registry[path.name] = {
        "sha256": digest,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "url": url,
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(_registry_path(path.parent), json.dumps(registry, indent=1, sort_keys=True) + "\n")


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 recorded for `path` when it was fetched, if the file is unchanged since (size, mtime)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    entry = _read_registry(path.parent).get(path.name)
    if not isinstance(entry, dict):
        return None
    if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return entry.get("sha256")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of `path`: the record when the file is unchanged since, else computed (and recorded when
    the file lives in one of evalkit's cache folders, so each file is hashed once)."""
    found = recorded_sha256(path)
    if found is None:
        found = sha256_file(path)
        if _in_cache(Path(path)):
            try:
                record_sha256(path, found, None)
            except OSError:  # a read-only cache still answers
                pass
    return found


def _in_cache(path: Path) -> bool:
    try:
        return path.resolve().parent.is_relative_to(cache_dir().resolve())
    except OSError:
        return False


def downloaded_from(path: str | os.PathLike) -> str | None:
    """The URL the unchanged file at `path` was downloaded from, as recorded, else None."""
    path = Path(path)
    entry = _read_registry(path.parent).get(path.name)
    if not isinstance(entry, dict) or recorded_sha256(path) is None:
        return None
    return entry.get("url")


# ---------------------------------------------------------------------------------------------
# Pins

_HEX = set("0123456789abcdef")


def _check_hex(digest: str, where: str) -> str:
    digest = str(digest).strip().lower()
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise ConfigError(f"{where}: found {digest!r}, expected a sha256 of 64 hex digits")
    return digest


def pin_file() -> Path:
    """The JSON pin file: ``$EVALKIT_PIN_FILE``, else ``cache_dir()/pins.json``."""
    env = os.environ.get(PIN_FILE_ENV)
    return Path(env).expanduser() if env else cache_dir() / "pins.json"


def pins() -> dict[str, str]:
    """Pinned sha256 by file name (weights or batch name): the pin file, then ``$EVALKIT_PINS`` over it."""
    out: dict[str, str] = {}
    path = pin_file()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"pin file {path}: not readable JSON ({exc}); expected {{\"name\": \"sha256\"}}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"pin file {path}: holds a {type(data).__name__}; expected {{\"name\": \"sha256\"}}")
        out.update({str(k): _check_hex(v, f"pin file {path}: {k}") for k, v in data.items()})
    for item in filter(None, (part.strip() for part in os.environ.get(PINS_ENV, "").split(","))):
        name, sep, digest = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"${PINS_ENV}: found {item!r}, expected name=sha256 (comma-separated)")
        out[name.strip()] = _check_hex(digest, f"${PINS_ENV}: {name.strip()}")
    return out


def pinned_sha256(name: str, override: str | None = None) -> str | None:
    """The sha256 `name` must have: `override` (a ``--sha256`` option), else its pin, else None."""
    if override:
        return _check_hex(override, "--sha256")
    return pins().get(name)


def is_known_file(name: str, digest: str) -> bool:
    """Whether `digest` is the sha256 of the real file `name`: its pin when pinned, else its published
    hash or hash prefix, else (nothing published) a file recorded as downloaded from its registered URL."""
    entry = get(name)
    digest = str(digest or "").lower()
    pinned = pinned_sha256(name)
    if pinned or entry.sha256 or entry.sha256_prefix:
        return bool(digest) and check_sha256(digest, pinned or entry.sha256, None if pinned else entry.sha256_prefix)
    record = _read_registry(entry.path.parent).get(entry.filename)
    return isinstance(record, dict) and bool(digest) and record.get("sha256") == digest and record.get("url") == entry.url


def check_sha256(found: str, sha256: str | None, sha256_prefix: str | None) -> bool:
    """True when `found` agrees with the full hash and/or prefix that are known (vacuously True if none)."""
    if sha256 and found.lower() != sha256.lower():
        return False
    if sha256_prefix and not found.lower().startswith(sha256_prefix.lower()):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Download

def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def one_download_at_a_time(download: Callable[..., str]) -> Callable[..., str]:
    """Decorator for ``download(url, dest, *, sha256, sha256_prefix, ...) -> sha256``: one process at a time.

    Every call holds ``cache_lock_path("download", dest)`` while it downloads. A call that had to wait
    and finds that `dest` appeared (or was replaced) meanwhile, with a sha256 matching the expected
    one (when one is given), returns that sha256 instead of downloading the file again.
    """
    signature = inspect.signature(download)

    @functools.wraps(download)
    def wrapper(*args, **kwargs) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        dest = Path(bound.arguments["dest"])
        before = _stat(dest)
        lock = FileLock(cache_lock_path("download", dest, cache_dir()), what=f"download of {dest}",
                        on_wait=note_waiting(f"{dest.name}, which another process is downloading"))
        locked = try_acquire(lock)
        try:
            after = _stat(dest)
            if locked and lock.waited and after is not None and after != before:
                digest = recorded_sha256(dest) or sha256_file(dest)
                if check_sha256(digest, bound.arguments.get("sha256"),
                                           bound.arguments.get("sha256_prefix")):
                    return digest
            return download(*args, **kwargs)
        finally:
            lock.release()

    return wrapper


@one_download_at_a_time  # two jobs fetching one file: one downloads, the other waits and reuses it
def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, sha256_prefix: str | None = None,
             progress: bool = True, retry_hint: str = "", error_cls: type[EvalkitError] = WeightsError,
             timeout: float = 60.0, check: Callable[[Path], None] | None = None) -> str:
    """Stream `url` to `dest` through a temporary file beside it; verify; rename; return the sha256.

    `check(tmp_path)` may inspect the downloaded file's structure and raise an EvalkitError. On any
    failure (no network, HTTP error, connection closed early, hash mismatch, failed check) the
    temporary file is deleted, `dest` is untouched, and `error_cls` is raised naming the file, the URL
    and where to put the file by hand (plus `retry_hint`, e.g. the fetch command).
    """
    dest = Path(dest)
    by_hand = f"download it yourself from {url} and save it as {dest}"
    hint = f"; {retry_hint}" if retry_hint else ""
    request = urllib.request.Request(url, headers={"User-Agent": f"evalkit/{__version__}"})
    with atomic_path(dest) as tmp:
        received = 0

        def written(response, out, bar):
            """The response's chunks, each written to the file as it is hashed."""
            nonlocal received
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                yield chunk

        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                with open(tmp, "wb") as out, tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                                                  desc=dest.name, disable=not progress, leave=False) as bar:
                    found = sha256_chunks(written(response, out, bar))
        except urllib.error.HTTPError as exc:
            raise error_cls(f"could not download {dest.name}: {url} answered HTTP {exc.code} {exc.reason}; "
                            f"{by_hand}{hint}") from exc
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(exc, http.client.IncompleteRead):
                reason = f"connection closed after {received + len(exc.partial)} bytes"
            raise error_cls(f"could not download {dest.name} from {url} ({reason}); {by_hand}{hint}") from exc
        # A server that closes the connection early without an exception still gives a short body.
        if expected is not None and received != expected:
            raise error_cls(f"download of {dest.name} from {url} was interrupted: received {received} of "
                            f"{expected} bytes; nothing was saved; {by_hand}{hint}")
        if not check_sha256(found, sha256, sha256_prefix):
            want = sha256 or f"{sha256_prefix}..."
            raise error_cls(f"{dest.name} downloaded from {url} is corrupted or another file: sha256 {found}, expected {want}; "
                            f"the download was deleted; {by_hand}{hint}")
        if check is not None:
            try:
                check(tmp)
            except EvalkitError as exc:
                raise error_cls(f"{dest.name} downloaded from {url} is not the expected file: {exc}; the download "
                                f"was deleted{hint}") from exc
    record_sha256(dest, found, url)
    return found


# ---------------------------------------------------------------------------------------------
# The public API over WEIGHTS

def find(name: str) -> Path | None:
    """Path of the weights file `name` in the cache, or None when it has not been fetched."""
    path = get(name).path
    return path if path.is_file() else None


def _missing_message(entry: WeightsFile) -> str:
    return (f"weights file {entry.filename} ({entry.name}) is not in the cache; download it from {entry.url} "
            f"and save it as {entry.path}, or run `evalkit weights fetch {entry.name}`")


def require(name: str) -> Path:
    """Path of the weights file `name`; WeightsError naming the file, URL, cache path and fetch command if absent."""
    entry = get(name)
    path = find(name)
    if path is None:
        raise WeightsError(_missing_message(entry))
    return path


def verify(name: str, path: str | os.PathLike | None = None, sha256: str | None = None) -> str:
    """Hash `path` (default: the cached file) and check it against `sha256`, the pin or the published
    hash; return the sha256. A mismatch raises WeightsError with both digests; the hash is recorded."""
    entry = get(name)
    path = Path(path) if path is not None else require(name)
    found = file_sha256(path)
    pinned = pinned_sha256(name, sha256)
    want_full, want_prefix = pinned or entry.sha256, None if pinned else entry.sha256_prefix
    if not check_sha256(found, want_full, want_prefix):
        want = want_full or f"{want_prefix}..."
        raise WeightsError(f"{path} is not the expected {entry.filename}: sha256 {found}, expected {want}"
                           f"{' (pinned)' if pinned else ''}; delete it and run `evalkit weights fetch {entry.name}`")
    if recorded_sha256(path) is None:
        record_sha256(path, found, None)
    return found


def fetch(name: str, force: bool = False, progress: bool = True, url: str | None = None,
          sha256: str | None = None, check: Callable[[Path], None] | None = None) -> Path:
    """Download the weights file `name` into the cache (unless present) and return its path.

    `url` overrides the registered URL (a mirror). With `force`, an existing file is downloaded again.
    The file must have `sha256`, else its pin, else its published hash/prefix, and pass `check` (a
    structure check, see `download`); otherwise the download is deleted and WeightsError raised.
    Companion files (a BigGAN config beside its weights) are fetched too, from their own URLs.
    """
    entry = get(name)
    dest = entry.path
    if dest.is_file() and not force:
        verify(name, dest, sha256)
    else:
        pinned = pinned_sha256(name, sha256)
        download(url or entry.url, dest, sha256=pinned or entry.sha256,
                 sha256_prefix=None if pinned else entry.sha256_prefix, progress=progress, check=check,
                 retry_hint=f"or retry `evalkit weights fetch {entry.name}` when online")
    for companion in entry.companions:
        fetch(companion, force=force, progress=progress)
    return dest
