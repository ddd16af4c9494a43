"""Tradeoff figures and sample grids, checked through matplotlib objects (Agg, no pyplot)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

matplotlib.use("Agg")

from evalkit.baselines import select_baselines  # noqa: E402
from evalkit.errors import EvalkitError, InputError  # noqa: E402
from evalkit.plots import (  # noqa: E402
    BASELINE_GID,
    CURVE_GID_PREFIX,
    FIGURE_WIDTH_IN,
    curve_names,
    fid_vs_is,
    precision_vs_recall,
    sample_grid,
    save_figure,
)
from evalkit.results import COLUMNS, validate_table  # noqa: E402
from evalkit.store import write_npz  # noqa: E402


def table(rows: list[dict]) -> pd.DataFrame:
    return validate_table(pd.DataFrame([{**{c: None for c in COLUMNS}, **r} for r in rows]))


def sweep(label="tiny", scales=(4.0, 0.0, 1.0), size=256, features="inception", steps="250"):
    """Rows of one guidance sweep, given out of scale order on purpose."""
    return [{"run_id": f"{label}{s}", "label": label, "image_size": size, "steps": steps, "guidance_scale": s,
             "features": features, "inception_score": 50 + 20 * s, "fid": 30 - 2 * s, "sfid": 6.0,
             "precision": 0.6 + 0.05 * s, "recall": 0.6 - 0.05 * s} for s in scales]


def curves(ax):
    return {ln.get_gid()[len(CURVE_GID_PREFIX):]: ln for ln in ax.get_lines()
            if (ln.get_gid() or "").startswith(CURVE_GID_PREFIX)}


def test_fid_vs_is_curves_points_annotations_and_baseline():
    df = table(sweep("A") + sweep("B", scales=(0.0, 2.0)))
    fig = fid_vs_is(df, select_baselines("biggan-deep", [256]))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "IS" and ax.get_ylabel() == "FID"
    lines = curves(ax)
    assert set(lines) == {"A", "B"}
    # Points joined in guidance-scale order: IS = 50 + 20 s, FID = 30 - 2 s.
    np.testing.assert_allclose(lines["A"].get_xdata(), [50, 70, 130])
    np.testing.assert_allclose(lines["A"].get_ydata(), [30, 28, 22])
    assert len(lines["B"].get_xdata()) == 2
    # Every point annotated with its guidance scale, at the point.
    texts = [(t.get_text(), t.xy) for t in ax.texts]
    assert sorted(t for t, _ in texts) == sorted(["0", "1", "4", "0", "2"])
    assert ("4", (130.0, 22.0)) in [(t, tuple(map(float, xy))) for t, xy in texts]
    # The BigGAN-deep 256 baseline is a separate marker at its published (IS, FID).
    base = [ln for ln in ax.get_lines() if ln.get_gid() == BASELINE_GID]
    assert len(base) == 1 and base[0].get_marker() == "*" and base[0].get_linestyle() == "None"
    np.testing.assert_allclose([base[0].get_xdata()[0], base[0].get_ydata()[0]], [171.4, 6.95])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["A", "B", "BigGAN-deep 256 (trunc. 1.0)"]


def test_precision_vs_recall_axes_and_orientation():
    fig = precision_vs_recall(table(sweep("A")))
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Precision", "Recall")
    line = curves(ax)["A"]
    np.testing.assert_allclose(line.get_xdata(), [0.6, 0.65, 0.8])
    np.testing.assert_allclose(line.get_ydata(), [0.6, 0.55, 0.4])
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == BASELINE_GID]


def test_non_inception_features_are_named():
    ax = fid_vs_is(table(sweep("digits", features="digits"))).axes[0]
    assert ax.get_xlabel() == "IS (digits features)"
    assert ax.get_ylabel() == "FD (digits features)"


def test_paper_figure_size_and_fonts():
    fig = fid_vs_is(table(sweep("A")), select_baselines("biggan-deep", [256]))
    assert fig.get_size_inches()[0] == pytest.approx(FIGURE_WIDTH_IN)
    ax = fig.axes[0]
    texts = ax.texts + [ax.xaxis.label, ax.yaxis.label] + ax.get_legend().get_texts()
    texts += ax.get_xticklabels() + ax.get_yticklabels()
    sizes = {t.get_fontsize() for t in texts}
    assert min(sizes) >= 7 and max(sizes) <= 9, sizes


def test_rows_missing_a_metric_are_skipped():
    rows = sweep("A")
    rows[0]["inception_score"] = None
    ax = fid_vs_is(table(rows)).axes[0]
    assert len(curves(ax)["A"].get_xdata()) == 2
    assert len(ax.texts) == 2


def test_curves_split_by_resolution_and_steps():
    df = table(sweep("A", size=64) + sweep("A", size=128) + sweep("A", size=128, steps="ddim25"))
    names = set(curve_names(df))
    assert names == {"A (64px, 250 steps)", "A (128px, 250 steps)", "A (128px, ddim25 steps)"}
    assert len(curves(fid_vs_is(df).axes[0])) == 3


def test_mixed_features_and_mismatched_baselines_rejected():
    with pytest.raises(InputError, match="different feature networks.*digits, inception"):
        fid_vs_is(table(sweep("A") + sweep("B", features="digits")))
    with pytest.raises(InputError, match="baselines were measured with 'inception'.*'digits'"):
        fid_vs_is(table(sweep("A", features="digits")), select_baselines("biggan-deep", [256]))


def test_nothing_to_plot_is_an_error():
    rows = sweep("A")
    for r in rows:
        r["precision"] = None
    with pytest.raises(InputError, match="no row has both precision and recall"):
        precision_vs_recall(table(rows))


def test_save_figure_writes_vector_and_png(tmp_path):
    paths = save_figure(fid_vs_is(table(sweep("A"))), tmp_path / "fig")
    assert [p.name for p in paths] == ["fig.pdf", "fig.svg", "fig.png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert ET.parse(paths[1]).getroot().tag.endswith("svg")
    with Image.open(paths[2]) as im:
        assert im.size[0] == round(FIGURE_WIDTH_IN * 200)


def test_sample_grid_tiles_images_in_order(tmp_path):
    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    for i in range(5):
        images[i] = 40 * i + 10      # each image one flat grey level
    path = tmp_path / "samples.npz"
    write_npz(path, images)
    fig = sample_grid(path, n=4, title="scale 2")
    ax = fig.axes[0]
    mosaic = np.asarray(ax.images[0].get_array())
    assert mosaic.shape == (17, 17, 3)             # 2x2 images of 8 px with a 1 px gap
    assert mosaic[0, 0, 0] == 10 and mosaic[0, 9, 0] == 50 and mosaic[9, 0, 0] == 90 and mosaic[9, 9, 0] == 130
    assert mosaic[8, 0, 0] == 255                  # white gap between rows
    assert ax.get_title() == "scale 2"
    assert np.asarray(sample_grid(path, n=100).axes[0].images[0].get_array()).shape == (17, 26, 3)  # all 5: 2 rows x 3


def test_sample_grid_bad_input(tmp_path):
    with pytest.raises(InputError, match="n=0"):
        sample_grid(tmp_path / "x.npz", n=0)
    with pytest.raises(EvalkitError):
        sample_grid(tmp_path / "missing.npz")
