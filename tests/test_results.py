"""Results-table schema: columns and dtypes, run ids, atomic append, clear errors on foreign CSVs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from evalkit.errors import InputError
from evalkit.metrics import METRIC_KEYS
from evalkit.results import (
    COLUMNS,
    IDENTITY_COLUMNS,
    append_row,
    empty_table,
    has_row,
    make_run_id,
    metric_label,
    read_results,
)


def settings(scale: float = 1.0, **over) -> dict:
    """One sweep row as the sweep would write it."""
    row = {
        "label": "tiny 32", "preset": "tiny_cond", "checkpoint_sha256": "0" * 64, "classifier": "tiny_classifier",
        "classifier_sha256": "1" * 64, "guidance_scale": scale, "sampler": "ddim", "steps": "ddim5", "eta": 0.0,
        "num_samples": 64, "seed": 0, "image_size": 32, "reference": "tiny_ref.npz", "reference_sha256": "2" * 64,
        "features": "inception", "inception_score": 3.5 + scale, "fid": 120.25 - scale, "sfid": 80.5,
        "precision": 0.5, "recall": 0.25, "wall_clock_s": 1.5,
    }
    row.update(over)
    return row


def test_schema_columns_and_dtypes():
    table = empty_table()
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 0
    for key in METRIC_KEYS:
        assert key in COLUMNS and table[key].dtype == "float64"
    assert str(table["num_samples"].dtype) == "Int64"
    assert str(table["steps"].dtype) == "string"   # "250" stays a respacing string, not a number
    assert set(IDENTITY_COLUMNS) <= set(COLUMNS)


def test_append_creates_and_round_trips(tmp_path):
    path = tmp_path / "results.csv"
    rid = append_row(path, settings(0.0))
    append_row(path, settings(2.0))
    df = read_results(path)
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 2
    assert df.loc[0, "run_id"] == rid
    assert df["guidance_scale"].tolist() == [0.0, 2.0]
    assert df.loc[1, "inception_score"] == 5.5 and df.loc[1, "fid"] == 118.25
    assert df.loc[0, "steps"] == "ddim5" and df.loc[0, "num_samples"] == 64
    # Filled in automatically.
    assert df["evalkit_version"].notna().all() and df["created_at"].notna().all()
    assert df["torch_version"].notna().all()


def test_run_id_stable_and_defined_by_settings():
    assert make_run_id(settings(1)) == make_run_id(settings(1.0))          # 1 and 1.0 alike
    assert make_run_id(settings(1.0)) == make_run_id(settings(1.0, fid=3.0, label="other"))  # metrics don't count
    assert make_run_id(settings(1.0)) != make_run_id(settings(2.0))
    assert make_run_id(settings(1.0)) != make_run_id(settings(1.0, steps="ddim10"))
    assert make_run_id(settings(1.0, classifier=None)) == make_run_id(settings(1.0, classifier=""))
    assert len(make_run_id(settings())) == 16


def test_has_row_and_duplicates(tmp_path):
    path = tmp_path / "r.csv"
    assert not has_row(path, "anything")
    rid = append_row(path, settings(1.0))
    assert has_row(path, rid) and not has_row(path, make_run_id(settings(3.0)))
    with pytest.raises(InputError, match="already present"):
        append_row(path, settings(1.0))
    append_row(path, settings(1.0, fid=7.0), replace=True)
    df = read_results(path)
    assert len(df) == 1 and df.loc[0, "fid"] == 7.0


def test_unknown_key_and_bad_values_rejected(tmp_path):
    path = tmp_path / "r.csv"
    with pytest.raises(InputError, match="unknown columns scale"):
        append_row(path, {**settings(), "scale": 1.0})
    with pytest.raises(InputError, match="sampler.*'euler'.*ancestral, ddim"):
        append_row(path, settings(sampler="euler"))
    with pytest.raises(InputError, match="'fid'.*expected a number"):
        append_row(path, settings(fid="low"))
    assert not path.exists()


def test_optional_samples_path_column(tmp_path):
    path = tmp_path / "r.csv"
    append_row(path, settings(0.0))
    append_row(path, settings(1.0, samples_path="samples/scale1.npz"))
    df = read_results(path)
    assert list(df.columns)[-1] == "samples_path"
    assert pd.isna(df.loc[0, "samples_path"]) and df.loc[1, "samples_path"] == "samples/scale1.npz"


def test_foreign_csv_names_missing_and_extra_columns(tmp_path):
    path = tmp_path / "paper.csv"
    path.write_text("source,model,fid\nsomewhere,ADM,4.59\n")
    with pytest.raises(InputError) as err:
        read_results(path)
    msg = str(err.value)
    assert str(path) in msg and "missing columns: run_id, label" in msg and "unexpected columns: source, model" in msg


def test_missing_columns_only(tmp_path):
    path = tmp_path / "r.csv"
    append_row(path, settings())
    df = pd.read_csv(path).drop(columns=["recall", "seed"])
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"missing columns: seed, recall\)"):
        read_results(path)


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"run_id,label\n\"unterminated,x\n", "malformed CSV"),
    (b"\xff\xfe\x00\x01garbage\x00", "malformed CSV"),
])
def test_malformed_files(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_results(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="found nothing, expected a CSV file"):
        read_results(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="found a directory"):
        read_results(tmp_path)


def test_exception_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    append_row(path, settings(0.0))
    before = path.read_bytes()

    def broken_to_csv(self, target, *args, **kwargs):
        Path(target).write_text("run_id,lab")   # half a header, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        append_row(path, settings(1.0))
    assert path.read_bytes() == before
    # No temporary file left; the writers' lock file stays, empty once released.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.lock"]
    assert (tmp_path / "r.csv.lock").read_bytes() == b""


def test_kill_during_write_leaves_readable_table(tmp_path):
    """SIGKILL a process in the middle of writing the new table: the old CSV must stay intact."""
    path = tmp_path / "r.csv"
    append_row(path, settings(0.0))
    before = path.read_bytes()
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, pandas as pd
        from pathlib import Path
        from evalkit.results import append_row
        real = pd.DataFrame.to_csv
        def slow(self, target, *a, **k):
            Path(target).write_text("run_id,label,pre")   # partial bytes in the temporary file
            Path({str(ready)!r}).write_text("1")
            time.sleep(60)
        pd.DataFrame.to_csv = slow
        append_row({str(path)!r}, {{"label": "killed", "guidance_scale": 5.0, "fid": 1.0}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "writer exited before the write started"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.read_bytes() == before
    df = read_results(path)
    assert len(df) == 1 and df.loc[0, "guidance_scale"] == 0.0


def test_metric_label_depends_on_features():
    assert metric_label("fid", "inception") == "FID"
    assert metric_label("sfid") == "sFID"
    assert metric_label("inception_score", None) == "IS"
    assert metric_label("fid", float("nan")) == "FID"
    assert metric_label("fid", "digits") == "FD (digits features)"
    assert metric_label("precision", "digits") == "Precision (digits features)"
    assert metric_label("inception_score", "digits") == "IS (digits features)"
    with pytest.raises(InputError, match="unknown metric 'lpips'"):
        metric_label("lpips")


def test_version1_csv_reads_validates_and_keeps_its_run_ids(tmp_path):
    """A CSV written before schema version 2 (no schema_version column) reads as a full table: the
    new columns empty, schema_version 1, run_ids unchanged; appending keeps the old row intact."""
    from evalkit.results import SCHEMA_VERSION, V1_COLUMNS

    row = settings(1.0)
    row["run_id"] = make_run_id(row)
    path = tmp_path / "v1.csv"
    pd.DataFrame([{c: row.get(c) for c in V1_COLUMNS}]).to_csv(path, index=False)
    assert "schema_version" not in path.read_text().splitlines()[0]
    df = read_results(path)
    assert tuple(df.columns) == COLUMNS and df.loc[0, "schema_version"] == 1
    assert df.loc[0, "run_id"] == row["run_id"] == make_run_id(df.loc[0].to_dict())
    assert df[["family", "truncation", "kid", "fid_ci_low", "bootstrap"]].isna().all().all()
    append_row(path, settings(2.0))
    both = read_results(path)
    assert both["schema_version"].tolist() == [1, SCHEMA_VERSION]
    assert both.loc[0, "run_id"] == row["run_id"] and both.loc[0, "fid"] == row["fid"]
    # A version-1 table with a column missing is still refused, naming it.
    pd.DataFrame([{c: row.get(c) for c in V1_COLUMNS if c != "seed"}]).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing columns: seed"):
        read_results(path)


def test_run_id_of_version2_columns_equals_version1_flag_text():
    """Settings that version 1 wrote into model_flags as flag text and version 2 writes into columns
    give the same run_id, so a rerun sweep skips rows of the old version; family/truncation count
    only when set. Catches a hash over the new columns as they are."""
    flags = "--image_size 8 --class_cond True"
    v1 = settings(1.0, model_flags=f'{flags} --classes 0,1,2 --no-clip-denoised --upsampler-flags "--large_size 16" '
                                   f'--upsampler-sha256 {"3" * 64} --upsampler-respacing 2 --upsampler-seed 1')
    v2 = settings(1.0, model_flags=flags, classes="0,1,2", clip_denoised=0, upsampler="--large_size 16",
                  upsampler_sha256="3" * 64, upsampler_steps="2", upsampler_seed=1, family="adm",
                  features_sha256="4" * 64, kid=0.1, fid_ci_low=1.0, bootstrap=100)
    assert make_run_id(v1) == make_run_id(v2)
    preset_v1 = settings(1.0, model_flags=f"--upsampler up64 --upsampler-sha256 {'3' * 64} --upsampler-respacing "
                                         f"250 --upsampler-seed 2")
    preset_v2 = settings(1.0, upsampler="up64", upsampler_sha256="3" * 64, upsampler_steps="250", upsampler_seed=2)
    assert make_run_id(preset_v1) == make_run_id(preset_v2)
    assert make_run_id(settings(1.0, clip_denoised=1)) == make_run_id(settings(1.0))
    for changed in (dict(classes="0,1"), dict(clip_denoised=0), dict(family="biggan-deep"), dict(truncation=0.5),
                    dict(upsampler="up64", upsampler_sha256="3" * 64, upsampler_steps="250", upsampler_seed=2)):
        assert make_run_id(settings(1.0, **changed)) != make_run_id(settings(1.0)), changed
