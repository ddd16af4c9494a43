"""The Python API (`evalkit.score`, `evalkit.ReferenceStats`): every input kind gives the CLI's numbers,
reference features are computed once, bad input fails clearly, and `import evalkit` stays torch-free.

Equalities are exact: an array, a tensor, batches and the npz of the same uint8 images go through the
same extractor with the same batch boundaries, so the features, and every number, are bit-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_extractor import CALLS, make_images

import evalkit
from evalkit.cli import main
from evalkit.errors import InputError
from evalkit.store import ArrayReader, write_npz

FEATURES = "tiny-test"


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EVALKIT_PLUGINS", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def data(tmp_path):
    sample, ref = make_images(40, 1), make_images(52, 2, shift=30)
    write_npz(tmp_path / "s.npz", sample)
    write_npz(tmp_path / "r.npz", ref)
    return {"sample": sample, "ref": ref, "sample_path": tmp_path / "s.npz", "ref_path": tmp_path / "r.npz"}


@pytest.fixture
def ref(data):
    return evalkit.ReferenceStats(data["ref"], extractor=FEATURES, device="cpu")


def _numbers(result) -> dict:
    return {k: v for k, v in result.to_dict().items() if k not in ("labels", "provenance")}


def test_array_and_path_give_the_cli_numbers(data, tmp_path):
    """Catches: an array path that extracts differently (e.g. channel order, dtype) or drops images."""
    from_arrays = evalkit.score(data["sample"], data["ref"], extractor=FEATURES, device="cpu")
    from_paths = evalkit.score(data["sample_path"], data["ref_path"], extractor=FEATURES, device="cpu")
    assert _numbers(from_arrays) == _numbers(from_paths)
    out = tmp_path / "cli.json"
    cli = CliRunner().invoke(main, ["score", str(data["sample_path"]), str(data["ref_path"]), "--features", FEATURES,
                                    "--device", "cpu", "--no-progress", "--json", str(out)])
    assert cli.exit_code == 0, cli.output
    assert str(from_arrays).splitlines() == cli.stdout.splitlines()
    assert {k: v for k, v in json.loads(out.read_text()).items() if k not in ("labels", "provenance")} == _numbers(from_paths)
    assert from_arrays.fid == from_paths.fid and from_arrays.kid is None
    assert from_arrays.provenance["in_memory_sample"] is True and from_paths.provenance["in_memory_sample"] is False
    assert len(from_arrays.provenance["sample"]["sha256"]) == 64


def test_reference_stats_are_computed_once(data, ref):
    """Three scores against one ReferenceStats extract the reference's 52 images once (in the constructor)
    and the 40 samples each time. Catches: ReferenceStats re-extracting, or score() ignoring it."""
    start = CALLS.get(FEATURES, 0)
    results = [evalkit.score(data["sample"][i:i + 30], ref) for i in range(3)]
    assert CALLS.get(FEATURES, 0) - start == 3 * 30
    assert len({r.fid for r in results}) == 3  # different samples: different numbers
    assert results[0].provenance["reference"]["num_images"] == 52


def test_iterator_and_tensor_inputs(data, ref):
    want = _numbers(evalkit.score(data["sample"], ref))
    batches = (data["sample"][i:i + 7] for i in range(0, 40, 7))
    assert _numbers(evalkit.score(batches, ref)) == want
    assert _numbers(evalkit.score(torch.from_numpy(data["sample"]), ref)) == want
    assert _numbers(evalkit.score([torch.from_numpy(data["sample"][:20]), data["sample"][20:]], ref)) == want
    assert _numbers(evalkit.score(ArrayReader(data["sample"]), ref)) == want


def test_extra_metrics_and_intervals_through_the_api(data, ref):
    result = evalkit.score(data["sample"], ref, metrics="is,fid,sfid,pr,kid,dc", kid_subset_size=20,
                           kid_subsets=5, bootstrap=10)
    cli_like = evalkit.score(data["sample"], ref, metrics=("kid",), kid_subset_size=20, kid_subsets=5)
    assert result.kid == cli_like.kid and cli_like.fid is None
    assert set(result.intervals) == {"inception_score", "fid", "sfid", "precision", "recall", "kid", "density",
                                     "coverage"}
    assert result.provenance["bootstrap"]["replicates"] == 10
    lines = str(result).splitlines()
    assert lines[5].startswith("KD (tiny-test features): ") and lines[-1].startswith("Coverage (tiny-test features) 95% CI")
    again = evalkit.ScoreResult.from_dict(result.to_dict())
    assert again == result


@pytest.mark.parametrize("bad, match", [
    (lambda s: s.astype(np.float32) / 127.5 - 1, "float images .* expected uint8 in \\[0, 255\\]. convert samples"),
    (lambda s: s.transpose(0, 3, 1, 2), "looks like NCHW"),
    (lambda s: s[..., :2], "expected N×H×W×3"),
    (lambda s: torch.from_numpy(s).float() / 255, "float images"),
    (lambda s: iter([]), "yielded no batches"),
    (lambda s: [s[:10], s[10:, :16]], "batch 1 has shape"),
    (lambda s: 3.0, "found float; expected a path"),
])
def test_bad_input_is_one_clear_error(data, ref, bad, match):
    start = CALLS.get(FEATURES, 0)
    with pytest.raises(InputError, match=match):
        evalkit.score(bad(data["sample"]), ref)
    assert CALLS.get(FEATURES, 0) == start


def test_bad_options_and_mismatched_extractor(data, ref):
    with pytest.raises(InputError, match="unknown metric 'lpips'"):
        evalkit.score(data["sample"], ref, metrics="fid,lpips")
    with pytest.raises(InputError, match="--kid-subset-size 1000: sample batch"):
        evalkit.score(data["sample"], ref, metrics="kid")
    with pytest.raises(InputError, match="not the network the ReferenceStats"):
        evalkit.score(data["sample"], ref, extractor="tiny-test-alt")


def test_import_evalkit_is_torch_free_and_the_api_is_lazy():
    root = Path(__file__).resolve().parents[1]
    probe = ("import sys, evalkit; assert 'torch' not in sys.modules, 'import evalkit loaded torch'; "
             "assert 'evalkit.api' not in sys.modules; f = evalkit.score; "
             "assert 'torch' in sys.modules and callable(f) and 'ReferenceStats' in dir(evalkit); print('ok')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError):
        evalkit.no_such_name  # noqa: B018
