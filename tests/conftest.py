"""Shared test helpers. Fixtures of the reference implementation are copied under tests/fixtures/
(from ../shared/fixtures, see its README) so the project tests without ../shared."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Return (json description, arrays) of the reference fixture `name` (no pickles)."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    npz = FIXTURES / f"{name}.npz"
    arrays = {}
    if npz.exists():
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    return meta, arrays


def load_weights(name: str) -> dict[str, np.ndarray]:
    """State-dict arrays of a fixture weights file such as ``weights_unet_cond``."""
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `tf` when TensorFlow is not installed (the `tf` extra)."""
    if importlib.util.find_spec("tensorflow") is not None:
        return
    skip = pytest.mark.skip(reason="TensorFlow not installed (pip install 'evalkit[tf]')")
    for item in items:
        if "tf" in item.keywords:
            item.add_marker(skip)
