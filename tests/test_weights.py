"""Weights registry, cache folder, download + verification against a local HTTP server, reference batch names."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading

import pytest
from click.testing import CliRunner

from evalkit import refbatches, weights
from evalkit.cli import main
from evalkit.errors import ConfigError, InputError, WeightsError
from evalkit.weights import WEIGHTS, WeightsFile

GOOD = bytes(range(256)) * 5000 + b"evalkit"  # ~1.2 MiB: more than one read chunk
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
CORRUPT = GOOD[:-7] + b"EVALKIT"


def _npz_bytes(n: int, size: int, stats: bool) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    extra = {"mu": np.zeros(3), "sigma": np.eye(3), "mu_s": np.zeros(2), "sigma_s": np.eye(2)} if stats else {}
    np.savez(buf, np.zeros((n, size, size, 3), np.uint8), **extra)
    return buf.getvalue()


SMALL_REF = _npz_bytes(5, 8, True)  # a tiny stand-in for a published reference batch
SMALL_REF_SHA = hashlib.sha256(SMALL_REF).hexdigest()
WRONG_REF = _npz_bytes(4, 8, True)  # one image short


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path == "/good":
            self._send(GOOD)
        elif self.path == "/corrupt":
            self._send(CORRUPT)
        elif self.path == "/ref":
            self._send(SMALL_REF)
        elif self.path == "/wrongref":
            self._send(WRONG_REF)
        elif self.path == "/short":
            # Promise the whole file, send half, then drop the connection.
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.send_error(404, "not here")

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(monkeypatch, url, sha256=GOOD_SHA, prefix=None, name="test-net"):
    entry = WeightsFile(name=name, filename=f"{name}.bin", url=url, sha256=sha256, sha256_prefix=prefix,
                        description="test file")
    monkeypatch.setitem(WEIGHTS, name, entry)
    return entry


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _refused_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    return f"http://127.0.0.1:{port}/file"


# --- registry and cache folder -----------------------------------------------------------------

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("EVALKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "evalkit"
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("EVALKIT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.cache_dir().parts[-2:] == (".cache", "evalkit")


def test_registry_entries():
    pb = WEIGHTS["inception-pb"]
    assert pb.filename == "classify_image_graph_def.pb"
    assert pb.url == ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"
                      "classify_image_graph_def.pb")
    pth = WEIGHTS["inception-pth"]
    assert pth.sha256_prefix == "6726825d" and pth.sha256_prefix in pth.filename
    checkpoints = [w for w in WEIGHTS.values() if w.filename.endswith(".pt")]
    assert len(checkpoints) == 15
    for w in checkpoints:
        assert w.url == f"https://openaipublic.blob.core.windows.net/diffusion/jul-2021/{w.name}.pt"
    assert {"64x64_diffusion", "256x256_diffusion_uncond", "128_512_upsampler", "lsun_horse_nodropout"} <= set(WEIGHTS)


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError, match="inception-pth"):
        weights.require("no-such-net")


def test_sha256_file_streams(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(GOOD)
    assert weights.sha256_file(path) == GOOD_SHA
    assert weights.check_sha256(GOOD_SHA, None, GOOD_SHA[:8])
    assert not weights.check_sha256(GOOD_SHA, None, "00000000")


def test_require_missing_names_file_url_path_and_command(cache, monkeypatch):
    entry = _entry(monkeypatch, "http://example.invalid/test-net.bin")
    assert weights.find("test-net") is None
    with pytest.raises(WeightsError) as info:
        weights.require("test-net")
    msg = str(info.value)
    assert entry.filename in msg and entry.url in msg and str(cache / "weights" / entry.filename) in msg
    assert "evalkit weights fetch test-net" in msg


# --- downloads ----------------------------------------------------------------------------------

def test_fetch_good_file_verifies_and_records(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good")
    path = weights.fetch("test-net", progress=False)
    assert path == cache / "weights" / "test-net.bin"
    assert path.read_bytes() == GOOD
    assert weights.find("test-net") == path == weights.require("test-net")
    assert weights.recorded_sha256(path) == GOOD_SHA
    record = json.loads((cache / "weights" / "sha256.json").read_text())
    assert record["test-net.bin"]["sha256"] == GOOD_SHA and record["test-net.bin"]["url"] == f"{server}/good"
    assert _leftovers(cache / "weights") == ["sha256.json", "test-net.bin"]
    # A changed file no longer matches its record.
    path.write_bytes(CORRUPT)
    assert weights.recorded_sha256(path) is None


def test_fetch_with_prefix_only(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good", sha256=None, prefix=GOOD_SHA[:8])
    assert weights.fetch("test-net", progress=False).read_bytes() == GOOD


def test_fetch_corrupted_file_is_deleted(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/corrupt")
    with pytest.raises(WeightsError) as info:
        weights.fetch("test-net", progress=False)
    msg = str(info.value)
    assert "corrupted" in msg and GOOD_SHA in msg and hashlib.sha256(CORRUPT).hexdigest() in msg
    assert _leftovers(cache / "weights") == []


def test_fetch_wrong_prefix_is_deleted(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good", sha256=None, prefix="00000000")
    with pytest.raises(WeightsError, match="expected 00000000"):
        weights.fetch("test-net", progress=False)
    assert _leftovers(cache / "weights") == []


def test_interrupted_transfer_leaves_nothing(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/short")
    with pytest.raises(WeightsError) as info:
        weights.fetch("test-net", progress=False)
    msg = str(info.value)
    assert "test-net.bin" in msg and f"{server}/short" in msg
    assert "interrupted" in msg or "connection closed" in msg
    assert _leftovers(cache / "weights") == []


def test_http_error(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/missing")
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.fetch("test-net", progress=False)
    assert _leftovers(cache / "weights") == []


def test_no_network_names_file_url_and_destination(cache, monkeypatch):
    url = _refused_url()
    _entry(monkeypatch, url)
    with pytest.raises(WeightsError) as info:
        weights.fetch("test-net", progress=False)
    msg = str(info.value)
    assert "test-net.bin" in msg and url in msg and str(cache / "weights" / "test-net.bin") in msg
    assert "refused" in msg.lower()
    assert _leftovers(cache / "weights") == []


def test_present_file_is_verified_not_downloaded(cache, monkeypatch):
    _entry(monkeypatch, _refused_url())  # any download attempt would fail
    dest = cache / "weights" / "test-net.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(GOOD)
    assert weights.fetch("test-net", progress=False) == dest
    assert weights.recorded_sha256(dest) == GOOD_SHA
    dest.write_bytes(CORRUPT)
    with pytest.raises(WeightsError, match="not the expected"):
        weights.fetch("test-net", progress=False)


def test_force_redownloads(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good")
    dest = cache / "weights" / "test-net.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"stale")
    weights.fetch("test-net", force=True, progress=False, url=f"{server}/good")
    assert dest.read_bytes() == GOOD


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_weights_fetch_and_list(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good")
    runner = CliRunner()
    result = runner.invoke(main, ["weights", "fetch", "test-net", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert GOOD_SHA in result.output
    listing = runner.invoke(main, ["weights", "list"])
    assert listing.exit_code == 0
    line = next(ln for ln in listing.output.splitlines() if ln.startswith("test-net "))
    assert " yes " in line and GOOD_SHA in line
    assert any(ln.startswith("inception-pb ") and " no " in ln for ln in listing.output.splitlines())


def test_cli_weights_errors_are_one_line(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/corrupt")
    result = CliRunner().invoke(main, ["weights", "fetch", "test-net", "--no-progress"])
    assert result.exit_code == 1
    assert "corrupted" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["weights", "fetch", "nope"])
    assert result.exit_code == 1 and "inception-pth" in result.output


# --- reference batches by name ------------------------------------------------------------------

def test_manifest_lists_the_seven_reference_batches():
    names = refbatches.batch_names("reference")
    assert names == ["lsun_bedroom", "lsun_cat", "lsun_horse", "imagenet64", "imagenet128", "imagenet256",
                     "imagenet512"]
    e = refbatches.get_batch("imagenet256")
    assert e.filename == "VIRTUAL_imagenet256_labeled.npz" and e.resolution == 256 and e.num_images == 10000
    assert e.url.endswith("/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz")
    assert refbatches.get_batch("imagenet512").num_images == 1000
    sample = refbatches.get_batch("admnet_guided_upsampled_imagenet256")
    assert sample.kind == "sample" and sample.reference == "imagenet256"
    assert len(refbatches.batch_names("sample")) == 27


def test_repo_manifest_equals_packaged_copy(fixtures_dir):
    repo_copy = fixtures_dir.parent.parent / "reference_batches" / "manifest.json"
    assert json.loads(repo_copy.read_text()) == refbatches.load_manifest()


def test_resolve_batch(cache, tmp_path):
    real = tmp_path / "x.npz"
    real.write_bytes(b"")
    assert refbatches.resolve_batch(real) == real
    with pytest.raises(InputError, match="evalkit ref fetch imagenet64"):
        refbatches.resolve_batch("imagenet64")
    with pytest.raises(InputError, match="imagenet256") as info:
        refbatches.resolve_batch("imagenet1024")
    assert "lsun_cat" in str(info.value)
    cached = cache / "reference_batches" / "VIRTUAL_imagenet64_labeled.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert refbatches.resolve_batch("imagenet64") == cached


@pytest.fixture
def small_imagenet64(monkeypatch):
    """imagenet64's manifest entry, listed as 5 images of 8×8 with statistics (what SMALL_REF holds)."""
    import dataclasses

    entries = dict(refbatches._entries())
    entries["imagenet64"] = dataclasses.replace(entries["imagenet64"], num_images=5, resolution=8,
                                                documented_num_images=None)
    monkeypatch.setattr(refbatches, "_entries", lambda: entries)
    return entries["imagenet64"]


def test_ref_fetch_uses_download_machinery(cache, server, small_imagenet64):
    path = refbatches.fetch_batch("imagenet64", progress=False, url=f"{server}/ref")
    assert path == cache / "reference_batches" / "VIRTUAL_imagenet64_labeled.npz"
    assert refbatches.batch_sha256("imagenet64") == SMALL_REF_SHA
    with pytest.raises(InputError) as info:
        refbatches.fetch_batch("imagenet128", progress=False, url=f"{server}/short")
    assert "evalkit ref fetch imagenet128" in str(info.value)
    assert not (cache / "reference_batches" / "VIRTUAL_imagenet128_labeled.npz").exists()


def test_cli_ref_list_and_unknown_fetch(cache):
    result = CliRunner().invoke(main, ["ref", "list"])
    assert result.exit_code == 0
    assert "VIRTUAL_imagenet512.npz" in result.output and "admnet" not in result.output
    assert "admnet_guided_imagenet256" in CliRunner().invoke(main, ["ref", "list", "--all"]).output
    bad = CliRunner().invoke(main, ["ref", "fetch", "imagenet1024"])
    assert bad.exit_code == 1 and "imagenet256" in bad.output


# --- honest verification: pins and structure checks ---------------------------------------------

def test_ref_fetch_checks_the_listed_structure(cache, server, small_imagenet64):
    """A published batch must hold the image count and resolution listed for it; else nothing is left.
    Catches a download that is renamed into place before its structure is checked."""
    with pytest.raises(InputError, match="holds 4 images of .*expected 5 images"):
        refbatches.fetch_batch("imagenet64", progress=False, url=f"{server}/wrongref")
    assert _leftovers(cache / "reference_batches") == []


@pytest.mark.parametrize("how", ["option", "env", "pin file"])
def test_a_pinned_hash_that_does_not_match_is_refused(how, cache, server, small_imagenet64, monkeypatch, tmp_path):
    wrong = "ab" * 32
    kwargs = {}
    if how == "option":
        kwargs["sha256"] = wrong
    elif how == "env":
        monkeypatch.setenv("EVALKIT_PINS", f"imagenet64={wrong}")
    else:
        pin_file = tmp_path / "pins.json"
        pin_file.write_text(json.dumps({"imagenet64": wrong}))
        monkeypatch.setenv("EVALKIT_PIN_FILE", str(pin_file))
    with pytest.raises(InputError, match=f"sha256 {SMALL_REF_SHA}, expected {wrong}"):
        refbatches.fetch_batch("imagenet64", progress=False, url=f"{server}/ref", **kwargs)
    assert _leftovers(cache / "reference_batches") == []


def test_a_matching_pin_is_accepted_and_checked_on_use(cache, server, small_imagenet64, monkeypatch):
    monkeypatch.setenv("EVALKIT_PINS", f"imagenet64={SMALL_REF_SHA}")
    path = refbatches.fetch_batch("imagenet64", progress=False, url=f"{server}/ref")
    assert refbatches.resolve_batch("imagenet64") == path
    monkeypatch.setenv("EVALKIT_PINS", "imagenet64=" + "cd" * 32)
    with pytest.raises(InputError, match="is pinned to"):
        refbatches.resolve_batch("imagenet64")


def test_weights_pin_overrides_and_mismatch_leaves_nothing(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good", sha256=None)
    with pytest.raises(WeightsError, match="expected " + "ef" * 32):
        weights.fetch("test-net", progress=False, sha256="ef" * 32)
    assert _leftovers(cache / "weights") == []
    monkeypatch.setenv("EVALKIT_PINS", f"test-net={GOOD_SHA}")
    assert weights.fetch("test-net", progress=False).is_file()
    monkeypatch.setenv("EVALKIT_PINS", "test-net=" + "ef" * 32)
    with pytest.raises(WeightsError, match="pinned"):
        weights.verify("test-net")


def test_malformed_pins_are_one_clear_error(cache, monkeypatch):
    monkeypatch.setenv("EVALKIT_PINS", "inception-pb=xyz")
    with pytest.raises(ConfigError, match="EVALKIT_PINS: inception-pb: found 'xyz', expected a sha256"):
        weights.pins()
    monkeypatch.setenv("EVALKIT_PINS", "no-equals-sign")
    with pytest.raises(ConfigError, match="expected name=sha256"):
        weights.pins()


def test_cli_fetch_with_a_wrong_pin_is_one_line(cache, monkeypatch, server):
    _entry(monkeypatch, f"{server}/good", sha256=None)
    result = CliRunner().invoke(main, ["weights", "fetch", "test-net", "--no-progress", "--url", f"{server}/good",
                                       "--sha256", "ef" * 32])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert _leftovers(cache / "weights") == []


def test_inception_pb_download_is_checked_for_the_graph(cache, monkeypatch, server):
    """A .pb download that is not the Inception graph is refused and removed (the converter's checks)."""
    _entry(monkeypatch, f"{server}/good", sha256=None, name="inception-pb")
    result = CliRunner().invoke(main, ["weights", "fetch", "inception-pb", "--no-progress"])
    assert result.exit_code == 1 and "not the expected file" in result.output, result.output
    assert _leftovers(cache / "weights") == []


def test_canonical_inception_identity(cache, monkeypatch):
    """Precomputed OpenAI statistics are trusted for: the pytorch-fid .pth (published prefix), a pinned
    file, or the .pb recorded as downloaded from OpenAI's URL; nothing else."""
    from evalkit.stored_stats import canonical_inception

    pth = "6726825d" + "0" * 56
    assert canonical_inception({"name": "inception", "weights_sha256": pth})
    assert canonical_inception({"name": "inception-tf", "weights_sha256": pth})
    assert not canonical_inception({"name": "digits", "weights_sha256": pth})
    other = "12" * 32
    assert not canonical_inception({"name": "inception", "weights_sha256": other})
    entry = weights.get("inception-pb")
    entry.path.parent.mkdir(parents=True)
    entry.path.write_bytes(b"graph")
    weights.record_sha256(entry.path, other, "https://mirror.example/x.pb")
    assert not canonical_inception({"name": "inception", "weights_sha256": other})  # a mirror: not known
    weights.record_sha256(entry.path, other, entry.url)
    assert canonical_inception({"name": "inception", "weights_sha256": other})
    monkeypatch.setenv("EVALKIT_PINS", "inception-pb=" + "34" * 32)
    assert not canonical_inception({"name": "inception", "weights_sha256": other})  # the pin decides
