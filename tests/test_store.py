"""Sample-batch IO: npz (stored/deflated/NpzWriter), folders and HDF5 read back exactly, streamed, and
every malformed input fails with one BatchFormatError naming the file."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import tracemalloc
import warnings
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from evalkit.errors import BatchFormatError
from evalkit.store import STAT_KEYS, NpzWriter, open_batch, write_npz
from evalkit.store import readers as readers_mod
from evalkit.store._npy import crc32_combine, npy_header_bytes, read_npy_header


def _images(n=23, h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _stats(d=4, ds=3):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(ds, ds))
    return {"mu": rng.normal(size=d), "sigma": a @ a.T, "mu_s": rng.normal(size=ds), "sigma_s": b @ b.T}


def _raw_npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    """Write an npz whose members are given as raw .npy bytes (to build malformed files)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes(array, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def _read_all(reader, batch_size):
    return np.concatenate(list(reader.iter_images(batch_size)))


# ----------------------------------------------------------------------------- low-level pieces


def test_crc32_combine_matches_zlib():
    import zlib

    rng = np.random.default_rng(0)
    for n1, n2 in [(0, 5), (7, 0), (100, 1), (64, 100_000), (3, 123_457)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_reserved_header_overwritten_in_place_parses():
    big = npy_header_bytes(np.uint8, (10**15, 64, 64, 3))
    small = npy_header_bytes(np.uint8, (7, 64, 64, 3), total_size=len(big))
    assert len(small) == len(big) and len(big) % 64 == 0
    hd = read_npy_header(io.BytesIO(small))
    assert hd.shape == (7, 64, 64, 3) and hd.dtype == np.uint8 and hd.header_size == len(big)
    assert np.lib.format.read_array_header_1_0(io.BytesIO(small[8:]))[0] == (7, 64, 64, 3)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_numpy_npz_round_trip(tmp_path, saver):
    x, labels, stats = _images(), np.arange(23) % 7, _stats()
    path = tmp_path / "b.npz"
    saver(path, x, labels, mu_clip=np.ones(5), **stats)
    with open_batch(path) as r:
        assert r.format == "npz" and r.path == path
        assert r.compressed == (saver is np.savez_compressed)
        assert r.num_images == 23 and r.image_shape == (6, 5, 3) and r.dtype == np.uint8
        assert r.labels.dtype == np.int64 and np.array_equal(r.labels, labels)
        assert r.has_statistics and set(r.statistics) == set(STAT_KEYS)
        for k in STAT_KEYS:
            np.testing.assert_array_equal(r.statistics[k], stats[k])
        assert r.extra_keys == ["mu_clip"]
        np.testing.assert_array_equal(_read_all(r, 5), x)
        np.testing.assert_array_equal(r.read_images(4, 17), x[4:17])


def test_writer_round_trip_np_load(tmp_path):
    x, labels, stats = _images(40), np.arange(40) * 3, _stats()
    path = tmp_path / "out" / "samples.npz"
    with NpzWriter(path) as w:
        w.append(x[:0], labels[:0])  # empty batches are allowed anywhere
        for i in range(0, 40, 9):
            w.append(x[i:i + 9], labels[i:i + 9])
        for k, v in stats.items():
            w.add_array(k, v)
        w.add_array("mu_clip", np.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["samples.npz"]
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == {"arr_0", "arr_1", "mu_clip", *STAT_KEYS}
        np.testing.assert_array_equal(f["arr_0"], x)
        assert f["arr_1"].dtype == np.int64
        np.testing.assert_array_equal(f["arr_1"], labels)
        np.testing.assert_array_equal(f["sigma"], stats["sigma"])
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every member's CRC-32 matches its bytes
        assert zf.getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
        # The reference evaluator's streaming path: read_magic + read_array_header_1_0 on the member.
        with zf.open("arr_0.npy") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            assert (shape, fortran, dtype) == ((40, 6, 5, 3), False, np.uint8)
            np.testing.assert_array_equal(np.frombuffer(f.read(9 * 90), np.uint8).reshape(9, 6, 5, 3), x[:9])
    with open_batch(path) as r:
        assert r.num_images == 40 and np.array_equal(r.labels, labels) and r.has_statistics
        np.testing.assert_array_equal(_read_all(r, 7), x)


def test_writer_without_labels_and_write_npz(tmp_path):
    x = _images(11)
    write_npz(tmp_path / "a.npz", x, batch_size=4)
    with np.load(tmp_path / "a.npz") as f:
        assert f.files == ["arr_0"]
        np.testing.assert_array_equal(f["arr_0"], x)
    # Non-contiguous input is written in C order.
    write_npz(tmp_path / "b.npz", x[:, ::-1])
    with open_batch(tmp_path / "b.npz") as r:
        np.testing.assert_array_equal(r.read_images(), x[:, ::-1])


def test_writer_members_use_zip64(tmp_path):
    write_npz(tmp_path / "a.npz", _images(3))
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        offset = zf.getinfo("arr_0.npy").header_offset
    raw = (tmp_path / "a.npz").read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[offset + 26:offset + 30])
    extra = raw[offset + 30 + name_len:offset + 30 + name_len + extra_len]
    assert struct.unpack("<H", extra[:2])[0] == 0x0001  # ZIP64 extended-information field


def test_writer_zip64_sizes_beyond_limit(tmp_path, monkeypatch):
    # Pretend the 32-bit limit is 1 KiB, so this small member takes the > 4 GB code path end to end.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1024)
    x, labels = _images(30, 8, 8), np.arange(30)
    write_npz(tmp_path / "big.npz", x, labels, batch_size=7)
    monkeypatch.undo()
    with zipfile.ZipFile(tmp_path / "big.npz") as zf:
        assert zf.testzip() is None
    with np.load(tmp_path / "big.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], x)
    with open_batch(tmp_path / "big.npz") as r:
        np.testing.assert_array_equal(_read_all(r, 4), x)


def _write_pngs(folder, x, names):
    folder.mkdir()
    for img, name in zip(x, names):
        Image.fromarray(img).save(folder / name)


def test_folder_round_trip_sorted_by_name(tmp_path):
    x = _images(5)
    names = ["c.png", "a.png", "e.PNG", "b.png", "d.png"]
    _write_pngs(tmp_path / "imgs", x, names)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "sub").mkdir()
    with open_batch(tmp_path / "imgs") as r:
        assert r.format == "folder" and r.num_images == 5 and r.image_shape == (6, 5, 3)
        assert r.labels is None and r.statistics is None and not r.has_statistics
        assert [p.name for p in r.files] == sorted(names)
        order = [names.index(n) for n in sorted(names)]
        np.testing.assert_array_equal(_read_all(r, 2), x[order])
        assert r.file_size == sum((tmp_path / "imgs" / n).stat().st_size for n in names)


def test_folder_converts_grayscale_and_reads_jpeg(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
    Image.fromarray(gray, mode="L").save(folder / "a.png")
    yy, xx = np.mgrid[0:6, 0:5]
    smooth = np.stack([yy * 20 + 40, xx * 25 + 30, yy * 5 + xx * 10 + 100], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(folder / "b.jpg", quality=95)
    with open_batch(folder) as r:
        out = r.read_images()
    assert out.shape == (2, 6, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], np.repeat(gray[:, :, None], 3, axis=2))
    assert np.abs(out[1].astype(int) - smooth).mean() < 4  # JPEG is lossy, but it is the image


@pytest.mark.parametrize("image_key,label_key", [("images", "labels"), ("arr_0", "arr_1")])
def test_hdf5_round_trip(tmp_path, image_key, label_key):
    x, labels, stats = _images(17), np.arange(17, dtype=np.int32), _stats()
    path = tmp_path / "b.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(image_key, data=x, chunks=(4, 6, 5, 3), compression="gzip")
        f.create_dataset(label_key, data=labels)
        for k, v in stats.items():
            f.create_dataset(k, data=v)
        f.create_dataset("note", data=np.zeros(2))
    with open_batch(path) as r:
        assert r.format == "hdf5" and r.num_images == 17 and r.image_shape == (6, 5, 3)
        assert r.labels.dtype == np.int64 and np.array_equal(r.labels, labels)
        np.testing.assert_array_equal(r.statistics["sigma_s"], stats["sigma_s"])
        assert r.extra_keys == ["note"]
        np.testing.assert_array_equal(_read_all(r, 5), x)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_header_versions(tmp_path, version):
    x = _images(9)
    _raw_npz(tmp_path / "v.npz", {"arr_0.npy": _npy_bytes(x, version)}, zipfile.ZIP_DEFLATED)
    with open_batch(tmp_path / "v.npz") as r:
        np.testing.assert_array_equal(_read_all(r, 4), x)


# ----------------------------------------------------------------------------- streaming and batching


def _make_all_formats(tmp_path, x):
    np.savez(tmp_path / "s.npz", x)
    np.savez_compressed(tmp_path / "c.npz", x)
    write_npz(tmp_path / "w.npz", x)
    with h5py.File(tmp_path / "h.h5", "w") as f:
        f["images"] = x
    _write_pngs(tmp_path / "f", x, [f"{i:03d}.png" for i in range(len(x))])
    return ["s.npz", "c.npz", "w.npz", "h.h5", "f"]


def test_batch_size_and_range_invariance(tmp_path):
    x = _images(13)
    for name in _make_all_formats(tmp_path, x):
        with open_batch(tmp_path / name) as r:
            for bs in (1, 3, 5, 13, 100):
                batches = list(r.iter_images(bs))
                assert len(batches) == math.ceil(13 / bs)
                assert all(len(b) == bs for b in batches[:-1]) and 0 < len(batches[-1]) <= bs
                assert all(b.dtype == np.uint8 and b.flags.writeable for b in batches)
                np.testing.assert_array_equal(np.concatenate(batches), x, err_msg=name)
            for start, stop in [(0, 0), (2, 3), (5, 13), (12, 13)]:
                got = list(r.iter_images(4, start, stop))
                got = np.concatenate(got) if got else np.zeros((0, 6, 5, 3), np.uint8)
                np.testing.assert_array_equal(got, x[start:stop], err_msg=f"{name} {start}:{stop}")
            with pytest.raises(ValueError, match="batch_size"):
                next(r.iter_images(0))
            with pytest.raises(ValueError, match="outside"):
                next(r.iter_images(4, 10, 14))


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed, write_npz])
def test_reader_streams_one_batch_at_a_time(tmp_path, saver):
    # 3000 images of 32×32×3 = 9.2 MB; a batch of 8 is 24 KB. Loading arr_0 whole would peak at ≥ 9 MB.
    x = np.random.default_rng(0).integers(0, 256, (3000, 32, 32, 3), dtype=np.uint8)
    saver(tmp_path / "big.npz", x)
    checksum = int(x.sum(dtype=np.int64))
    del x
    with open_batch(tmp_path / "big.npz") as r:
        tracemalloc.start()
        try:
            total = 0
            for batch in r.iter_images(8):
                total += int(batch.sum(dtype=np.int64))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total == checksum
    assert peak < 1_000_000, f"peak traced memory {peak} bytes while streaming 24 KB batches"


def test_content_hash_and_file_size(tmp_path):
    x = _images(6)
    np.savez(tmp_path / "a.npz", x)
    with open_batch(tmp_path / "a.npz") as r:
        assert r.content_hash() == hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
        assert r.content_hash() is r.content_hash()  # cached
        assert r.file_size == (tmp_path / "a.npz").stat().st_size
    _write_pngs(tmp_path / "f", x, [f"{i}.png" for i in range(6)])
    with open_batch(tmp_path / "f") as r:
        h1 = r.content_hash()
    (tmp_path / "f" / "5.png").rename(tmp_path / "f" / "6.png")  # same bytes, another name
    with open_batch(tmp_path / "f") as r:
        h2 = r.content_hash()
    Image.fromarray(x[0] ^ 1).save(tmp_path / "f" / "0.png")  # same name, other bytes
    with open_batch(tmp_path / "f") as r:
        h3 = r.content_hash()
    assert len({h1, h2, h3}) == 3 and len(h1) == 64


# ----------------------------------------------------------------------------- non-uint8 images


def test_integral_floats_accepted_with_warning(tmp_path):
    x = _images(5)
    np.savez(tmp_path / "f.npz", x.astype(np.float32))
    with pytest.warns(UserWarning, match="float32"):
        r = open_batch(tmp_path / "f.npz")
    with r:
        np.testing.assert_array_equal(_read_all(r, 2), x)


def test_wide_integers_in_range_accepted(tmp_path):
    x = _images(5)
    np.savez(tmp_path / "i.npz", x.astype(">i2"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_batch(tmp_path / "i.npz") as r:
            np.testing.assert_array_equal(_read_all(r, 3), x)


@pytest.mark.parametrize("values,match", [
    (np.linspace(-1, 1, 5 * 6 * 5 * 3), r"values in \[-1, 1\].*\(\(x \+ 1\) \* 127\.5\)"),
    (np.linspace(0, 255, 5 * 6 * 5 * 3), r"not whole numbers"),
    (np.full(5 * 6 * 5 * 3, np.nan), r"NaN or inf"),
])
def test_float_images_rejected_with_hint(tmp_path, values, match):
    np.savez(tmp_path / "f.npz", values.reshape(5, 6, 5, 3).astype(np.float32))
    with pytest.raises(BatchFormatError, match=match) as err:
        open_batch(tmp_path / "f.npz")
    assert "f.npz" in str(err.value)


def test_out_of_range_integers_rejected(tmp_path):
    x = _images(5).astype(np.int16)
    x[3, 0, 0, 0] = 300
    np.savez(tmp_path / "i.npz", x)
    with pytest.raises(BatchFormatError, match=r"int16 images with values in \[0, 300\]"):
        open_batch(tmp_path / "i.npz")


def test_bad_values_after_the_probe_fail_while_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_mod, "_PROBE_BYTES", 1)  # probe only image 0
    x = _images(6).astype(np.float64)
    x[4] = x[4] / 255.0 * 2 - 1
    np.savez(tmp_path / "f.npz", x)
    with pytest.warns(UserWarning):
        r = open_batch(tmp_path / "f.npz")
    with r, pytest.raises(BatchFormatError, match=r"images 3\.\.5.*127\.5"):
        list(r.iter_images(3))


# ----------------------------------------------------------------------------- bad input


def _err(path, match):
    with pytest.raises(BatchFormatError, match=match) as err:
        open_batch(path)
    assert str(path.name) in str(err.value)
    return str(err.value)


def test_missing_file_and_not_an_npz(tmp_path):
    _err(tmp_path / "nope.npz", "no such file")
    (tmp_path / "t.npz").write_text("hello, not a zip")
    _err(tmp_path / "t.npz", "not an npz")
    (tmp_path / "e.npz").write_bytes(b"")
    _err(tmp_path / "e.npz", "not an npz")
    np.save(tmp_path / "a.npy", _images(2))
    _err(tmp_path / "a.npy", r"single \.npy array")
    np.savez(tmp_path / "cut.npz", _images(4))
    data = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    _err(tmp_path / "cut.npz", "not a readable npz")
    (tmp_path / "bad.h5").write_bytes(b"garbage garbage")
    _err(tmp_path / "bad.h5", "not a readable HDF5")


def test_npz_without_arr_0_lists_keys(tmp_path):
    np.savez(tmp_path / "k.npz", images=_images(2), labels=np.arange(2))
    msg = _err(tmp_path / "k.npz", "no arr_0")
    assert "images" in msg and "labels" in msg


def test_object_arrays_refused_without_unpickling(tmp_path):
    obj = np.empty((2, 2, 2, 3), dtype=object)
    np.savez(tmp_path / "o.npz", obj)  # numpy pickles object arrays
    _err(tmp_path / "o.npz", "Python objects")
    np.savez(tmp_path / "l.npz", _images(2), np.array([1, "a"], dtype=object))
    _err(tmp_path / "l.npz", "unpickling")


@pytest.mark.parametrize("shape,match", [
    ((4, 6, 5), r"shape \(4, 6, 5\); expected N×H×W×3"),
    ((4, 6, 5, 4), r"shape \(4, 6, 5, 4\)"),
    ((4, 3, 6, 5), "NCHW"),
    ((4, 0, 5, 3), "positive"),
])
def test_wrong_rank_or_channels(tmp_path, shape, match):
    np.savez(tmp_path / "r.npz", np.zeros(shape, np.uint8))
    _err(tmp_path / "r.npz", match)


def test_bool_and_fortran_order_refused(tmp_path):
    np.savez(tmp_path / "b.npz", np.zeros((2, 4, 4, 3), bool))
    _err(tmp_path / "b.npz", "dtype bool")
    _raw_npz(tmp_path / "f.npz", {"arr_0.npy": _npy_bytes(np.asfortranarray(_images(3)))})
    _err(tmp_path / "f.npz", "Fortran order")


def test_unsupported_npy_version(tmp_path):
    data = bytearray(_npy_bytes(_images(2)))
    data[6] = 4
    _raw_npz(tmp_path / "v.npz", {"arr_0.npy": bytes(data)})
    _err(tmp_path / "v.npz", "version 4.0")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_truncated_member(tmp_path, compression):
    x = _images(10)
    data = _npy_bytes(x)
    header_size = len(data) - x.nbytes
    cut = data[: header_size + 6 * x[0].nbytes + 17]  # six and a bit images of ten
    _raw_npz(tmp_path / "t.npz", {"arr_0.npy": cut}, compression)
    with open_batch(tmp_path / "t.npz") as r:  # the header alone looks fine
        assert r.num_images == 10
        batches = r.iter_images(3)
        np.testing.assert_array_equal(next(batches), x[:3])
        np.testing.assert_array_equal(next(batches), x[3:6])
        with pytest.raises(BatchFormatError, match="truncated.*image 6") as err:
            next(batches)
    assert "t.npz" in str(err.value)


def test_partial_or_malformed_statistics(tmp_path):
    s = _stats()
    np.savez(tmp_path / "p.npz", _images(2), mu=s["mu"], sigma=s["sigma"])
    msg = _err(tmp_path / "p.npz", "has statistics mu, sigma but not mu_s, sigma_s")
    assert "all of mu, sigma, mu_s, sigma_s" in msg
    np.savez(tmp_path / "m.npz", _images(2), **{**s, "sigma": np.eye(5)})
    _err(tmp_path / "m.npz", r"mu has shape \(4,\) and sigma \(5, 5\)")


def test_labels_must_match_images(tmp_path):
    np.savez(tmp_path / "l.npz", _images(4), np.arange(3))
    _err(tmp_path / "l.npz", "3 labels for 4 images")
    np.savez(tmp_path / "f.npz", _images(4), np.arange(4.0))
    _err(tmp_path / "f.npz", "1-D integer")


def test_zero_images(tmp_path):
    np.savez(tmp_path / "z.npz", np.zeros((0, 4, 4, 3), np.uint8))
    _err(tmp_path / "z.npz", "0 images")
    # A statistics-only reference batch is fine.
    np.savez(tmp_path / "s.npz", np.zeros((0, 4, 4, 3), np.uint8), **_stats())
    with open_batch(tmp_path / "s.npz") as r:
        assert r.num_images == 0 and r.has_statistics and list(r.iter_images(4)) == []


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    _err(tmp_path / "empty", "no images")
    _write_pngs(tmp_path / "bad", _images(2), ["a.png", "b.png"])
    (tmp_path / "bad" / "c.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(BatchFormatError, match="unreadable image") as err:
        open_batch(tmp_path / "bad")
    assert "c.png" in str(err.value)
    _write_pngs(tmp_path / "mixed", _images(3), ["a.png", "b.png", "c.png"])
    Image.fromarray(_images(1, 7, 9)[0]).save(tmp_path / "mixed" / "d.png")
    Image.fromarray(_images(1, 8, 9)[0]).save(tmp_path / "mixed" / "e.png")
    msg = _err(tmp_path / "mixed", "mixed resolutions")
    assert "d.png (9×7)" in msg and "e.png (9×8)" in msg and "5×6" in msg
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep" / "a.png")
    _err(tmp_path / "deep", "image mode I")


def test_hdf5_without_images_lists_datasets(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f["pictures"] = _images(2)
    msg = _err(tmp_path / "x.hdf5", "no 'images' or 'arr_0'")
    assert "pictures" in msg


# ----------------------------------------------------------------------------- writer validation and atomicity


def test_writer_exception_leaves_nothing(tmp_path):
    target = tmp_path / "s.npz"
    with pytest.raises(RuntimeError, match="boom"):
        with NpzWriter(target) as w:
            w.append(_images(5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # An existing target survives a failed rewrite untouched.
    target.write_bytes(b"previous run")
    with pytest.raises(BatchFormatError):
        with NpzWriter(target) as w:
            w.append(_images(5))
            w.append(_images(2).astype(np.float32))
    assert target.read_bytes() == b"previous run"
    assert list(tmp_path.iterdir()) == [target]


def test_writer_close_errors_leave_nothing(tmp_path):
    with pytest.raises(BatchFormatError, match="no images"):
        with NpzWriter(tmp_path / "a.npz"):
            pass
    with pytest.raises(BatchFormatError, match="without mu_s, sigma_s"):
        with NpzWriter(tmp_path / "b.npz") as w:
            w.append(_images(2))
            w.add_array("mu", np.zeros(3))
            w.add_array("sigma", np.eye(3))
    w = NpzWriter(tmp_path / "c.npz")
    w.append(_images(2))
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BatchFormatError, match="already closed"):
        w.append(_images(2))


@pytest.mark.parametrize("steps,match", [
    ([(_images(2).astype(np.float32), None)], r"float32.*127\.5"),
    ([(_images(2)[..., :2], None)], r"expected \[b, H, W, 3\]"),
    ([(_images(2), None), (_images(2, 7, 5), None)], "earlier batches were 6×5×3"),
    ([(_images(2), np.arange(3))], "one integer label per image"),
    ([(_images(2), np.arange(2.0))], "one integer label per image"),
    ([(_images(2), np.arange(2)), (_images(2), None)], "all-or-none"),
    ([(_images(2), None), (_images(2), np.arange(2))], "all-or-none"),
])
def test_writer_rejects_bad_batches(tmp_path, steps, match):
    with pytest.raises(BatchFormatError, match=match):
        with NpzWriter(tmp_path / "w.npz") as w:
            for images, labels in steps:
                w.append(images, labels)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_extra_arrays(tmp_path):
    with NpzWriter(tmp_path / "w.npz") as w:
        w.append(_images(2))
        with pytest.raises(BatchFormatError, match="reserved"):
            w.add_array("arr_1", np.arange(2))
        with pytest.raises(BatchFormatError, match="Python objects"):
            w.add_array("meta", np.array([{}], dtype=object))
    with np.load(tmp_path / "w.npz") as f:
        assert f.files == ["arr_0"]
