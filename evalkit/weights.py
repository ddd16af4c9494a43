"""Network weights: where they live, where they come from, and how they are downloaded and verified.

Every file evalkit may need (the Inception graph the reference evaluator uses, pytorch-fid's port of
the same weights, and the 15 released guided-diffusion checkpoints) has an entry in ``WEIGHTS`` with
its URL and, where known, its sha256. Files live in ``cache_dir()/weights``; ``fetch`` streams a file
to a temporary name beside its final path, verifies it, then renames it, so a half-downloaded file
never appears under the final name. Verified hashes are recorded in ``sha256.json`` in the same folder.

URLs: openai/guided-diffusion commit 22e0df8183507e13a7813f8d38d51b072ca1e67c (README.md and
evaluations/evaluator.py); pytorch-fid release ``fid_weights``.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from evalkit import __version__
from evalkit.atomic import atomic_path, atomic_write_text
from evalkit.errors import ConfigError, EvalkitError, WeightsError
from evalkit.locks import one_download_at_a_time

CHUNK = 1 << 20  # 1 MiB: read/hash/write granularity
REGISTRY_NAME = "sha256.json"  # per-folder record of verified hashes


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


_OPENAI = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

# The released guided-diffusion checkpoints (file stem, README label); spec/checkpoints.json.
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

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    """sha256 of `path`, from the fetch record when the file is unchanged, else computed (and not recorded)."""
    return recorded_sha256(path) or sha256_file(path)


def check_sha256(found: str, sha256: str | None, sha256_prefix: str | None) -> bool:
    """True when `found` agrees with the full hash and/or prefix that are known (vacuously True if none)."""
    if sha256 and found.lower() != sha256.lower():
        return False
    if sha256_prefix and not found.lower().startswith(sha256_prefix.lower()):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Download

@one_download_at_a_time  # two jobs fetching one file: one downloads, the other waits and reuses it
def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, sha256_prefix: str | None = None,
             progress: bool = True, retry_hint: str = "", error_cls: type[EvalkitError] = WeightsError,
             timeout: float = 60.0) -> str:
    """Stream `url` to `dest` through a temporary file beside it; verify; rename; return the sha256.

    On any failure (no network, HTTP error, connection closed early, hash mismatch) the temporary
    file is deleted, `dest` is untouched, and `error_cls` is raised naming the file, the URL and where
    to put the file by hand (plus `retry_hint`, e.g. the fetch command).
    """
    dest = Path(dest)
    by_hand = f"download it yourself from {url} and save it as {dest}"
    hint = f"; {retry_hint}" if retry_hint else ""
    request = urllib.request.Request(url, headers={"User-Agent": f"evalkit/{__version__}"})
    with atomic_path(dest) as tmp:
        digest = hashlib.sha256()
        received = 0
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                with open(tmp, "wb") as out, tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                                                  desc=dest.name, disable=not progress, leave=False) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
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
        found = digest.hexdigest()
        if not check_sha256(found, sha256, sha256_prefix):
            want = sha256 or f"{sha256_prefix}..."
            raise error_cls(f"{dest.name} downloaded from {url} is corrupted: sha256 {found}, expected {want}; "
                            f"the file was deleted; {by_hand}{hint}")
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


def verify(name: str, path: str | os.PathLike | None = None) -> str:
    """Hash `path` (default: the cached file) and check it against the known hash; return the sha256.

    A mismatch raises WeightsError with the expected and found digests. The result is recorded.
    """
    entry = get(name)
    path = Path(path) if path is not None else require(name)
    found = file_sha256(path)
    if not check_sha256(found, entry.sha256, entry.sha256_prefix):
        want = entry.sha256 or f"{entry.sha256_prefix}..."
        raise WeightsError(f"{path} is not the expected {entry.filename}: sha256 {found}, expected {want}; "
                           f"delete it and run `evalkit weights fetch {entry.name}`")
    if recorded_sha256(path) is None:
        record_sha256(path, found, None)
    return found


def fetch(name: str, force: bool = False, progress: bool = True, url: str | None = None) -> Path:
    """Download the weights file `name` into the cache (unless present) and return its path.

    `url` overrides the registered URL (a mirror). With `force`, an existing file is downloaded again.
    The known sha256/prefix is verified; a mismatch deletes the download and raises WeightsError.
    Companion files (a BigGAN config beside its weights) are fetched too, from their own URLs.
    """
    entry = get(name)
    dest = entry.path
    if dest.is_file() and not force:
        verify(name, dest)
    else:
        download(url or entry.url, dest, sha256=entry.sha256, sha256_prefix=entry.sha256_prefix, progress=progress,
                 retry_hint=f"or retry `evalkit weights fetch {entry.name}` when online")
    for companion in entry.companions:
        fetch(companion, force=force, progress=progress)
    return dest
