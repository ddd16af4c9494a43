"""OpenAI's published reference (and sample) batches by name: manifest, download, name → path.

The manifest (``evalkit/data/reference_batches.json``, twin of ``reference_batches/manifest.json``) is
built from the links in guided-diffusion's ``evaluations/README.md`` (at ``evalkit.REFERENCE_COMMIT``).
Reference batches are named by dataset and resolution (``imagenet256`` → ``VIRTUAL_imagenet256_labeled.npz``);
sample batches by their file stem (``admnet_guided_upsampled_imagenet256``). Downloads go to
``cache_dir()/reference_batches``. No sha256 is published for these files: a download is checked
against a user pin if there is one (see ``evalkit.weights``) and against the shape, image count and
statistics listed for it, and its sha256 is recorded.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from evalkit.errors import BatchFormatError, InputError
from evalkit.store import open_batch
from evalkit.weights import cache_dir, download, file_sha256, pinned_sha256, recorded_sha256

MANIFEST_RESOURCE = "reference_batches.json"


@dataclass(frozen=True)
class BatchEntry:
    """One published batch. ``kind`` is "reference" or "sample"; ``reference`` names a sample's reference."""

    name: str
    filename: str
    url: str
    dataset: str
    resolution: int
    num_images: int
    kind: str
    label: str = ""
    reference: str | None = None
    notes: str = ""
    has_statistics: bool = False
    documented_num_images: int | None = None  # when the documentation lists another count than measured

    @property
    def path(self) -> Path:
        """Where this batch lives in the cache (whether or not it is there)."""
        return batches_dir() / self.filename


def batches_dir() -> Path:
    """Folder holding downloaded batches (``cache_dir()/reference_batches``)."""
    return cache_dir() / "reference_batches"


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict:
    """The packaged manifest as a dict (read once)."""
    text = resources.files("evalkit.data").joinpath(MANIFEST_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _entries() -> dict[str, BatchEntry]:
    manifest = load_manifest()
    entries: dict[str, BatchEntry] = {}
    for kind, key in (("reference", "reference_batches"), ("sample", "sample_batches")):
        for item in manifest[key]:
            entry = BatchEntry(name=item["name"], filename=item["filename"], url=item["url"],
                               dataset=item["dataset"], resolution=int(item["resolution"]),
                               num_images=int(item["num_images"]), kind=kind, label=item.get("label", ""),
                               reference=item.get("reference"), notes=item.get("notes", ""),
                               has_statistics=bool(item.get("has_statistics", False)),
                               documented_num_images=item.get("documented_num_images"))
            if entry.name in entries:
                raise ValueError(f"reference batch manifest: duplicate name {entry.name!r}")
            entries[entry.name] = entry
    return entries


def batch_names(kind: str | None = "reference") -> list[str]:
    """Known names in manifest order; `kind` "reference", "sample" or None for both."""
    return [e.name for e in _entries().values() if kind is None or e.kind == kind]


def get_batch(name: str) -> BatchEntry:
    """The manifest entry called `name` (reference or sample batch); an unknown name lists the known ones."""
    try:
        return _entries()[name]
    except KeyError:
        raise InputError(f"unknown batch name {name!r}; known reference batches: "
                         f"{', '.join(batch_names('reference'))} (see `evalkit ref list --all` for sample batches)"
                         ) from None


def find_batch(name: str) -> Path | None:
    """Path of the downloaded batch `name`, or None when it is not in the cache."""
    path = get_batch(name).path
    return path if path.is_file() else None


def check_structure(entry: BatchEntry, path: str | os.PathLike) -> None:
    """Raise BatchFormatError unless the npz at `path` has the image count and resolution listed for
    `entry` (the measured or the documented count) and, for a reference batch, its statistics."""
    counts = sorted({entry.num_images, entry.documented_num_images or entry.num_images})
    shape = (entry.resolution, entry.resolution, 3)
    with open_batch(path) as reader:
        n, found_shape, stats = int(reader.num_images), tuple(int(x) for x in reader.image_shape), reader.has_statistics
    if n not in counts or found_shape != shape or (entry.has_statistics and not stats):
        raise BatchFormatError(f"holds {n} images of {found_shape} ({'with' if stats else 'without'} statistics); "
                               f"expected {' or '.join(map(str, counts))} images of {shape}"
                               f"{' with mu/sigma/mu_s/sigma_s' if entry.has_statistics else ''}")


def _check_pin(entry: BatchEntry, sha256: str | None = None) -> None:
    """A present, recorded file whose sha256 differs from its pin is refused (unrecorded: hashed on use)."""
    pinned = pinned_sha256(entry.name, sha256)
    found = recorded_sha256(entry.path)
    if pinned and found and found != pinned:
        raise InputError(f"{entry.path}: sha256 {found}, but {entry.name} is pinned to {pinned}; delete the file "
                         f"and run `evalkit ref fetch {entry.name}`, or correct the pin")


def fetch_batch(name: str, force: bool = False, progress: bool = True, url: str | None = None,
                sha256: str | None = None) -> Path:
    """Download batch `name` into ``batches_dir()`` unless present (or `force`); return its path.

    The download must match `sha256`, else the pin of `name` when there is one, and hold the image
    count, resolution and statistics listed in the manifest; otherwise it is deleted and InputError
    raised. Its sha256 is recorded. A present file is checked against the pin.
    """
    entry = get_batch(name)
    if entry.path.is_file() and not force:
        if pinned_sha256(name, sha256) and recorded_sha256(entry.path) is None:
            file_sha256(entry.path)  # hash once and record, so the pin can be checked
        _check_pin(entry, sha256)
        return entry.path
    download(url or entry.url, entry.path, sha256=pinned_sha256(name, sha256), progress=progress,
             error_cls=InputError, check=lambda tmp: check_structure(entry, tmp),
             retry_hint=f"or retry `evalkit ref fetch {name}` when online")
    return entry.path


def resolve_batch(name_or_path: str | os.PathLike) -> Path:
    """Turn a command-line batch argument into a file path.

    An existing file wins; a known batch name resolves to its cached download (missing → error
    with the fetch command); anything else → error listing the known names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if path.is_dir():
        raise InputError(f"{text} is a directory; expected an .npz batch file or a reference batch name")
    if text in _entries():
        entry = _entries()[text]
        if entry.path.is_file():
            _check_pin(entry)
            return entry.path
        raise InputError(f"batch {text!r} ({entry.filename}) is not downloaded yet: run `evalkit ref fetch {text}` "
                         f"(or download {entry.url} and save it as {entry.path})")
    raise InputError(f"{text!r} is neither an existing file nor a known batch name; known reference batches: "
                     f"{', '.join(batch_names('reference'))}")


def batch_sha256(name: str) -> str | None:
    """sha256 recorded when batch `name` was fetched (None if absent or changed since)."""
    return recorded_sha256(get_batch(name).path)
