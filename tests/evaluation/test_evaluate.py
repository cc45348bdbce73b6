"""evaluate_methods: baselines and ExpDiff pipelines scored on held-out identities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.evaluation.evaluate import ALL, evaluate_methods, expdiff_predictions
from expdiff_core.evaluation.metrics import fvd
from expdiff_core.io.dataset import Dataset
from expdiff_core.pipelines.expdiff import ExpDiffPipeline

from .conftest import UNITS


@pytest.fixture(scope="module")
def baseline_rows(procedural_dataset):
    return evaluate_methods(procedural_dataset, {}, progress=False)


def test_rows_hold_an_all_row_then_one_per_expression_for_each_baseline(baseline_rows):
    assert [(r.method, r.expression) for r in baseline_rows] == [
        (m, e) for m in ("neutral copy", "3DMM", "ridge") for e in [ALL, *UNITS]]
    by_key = {(r.method, r.expression): r for r in baseline_rows}
    assert by_key[("3DMM", ALL)].samples == len(UNITS) and by_key[("3DMM", "jawOpen")].samples == 1
    for r in baseline_rows:
        assert set(r.psnr) == set(r.ssim) == {"albedo", "specular", "roughness", "normal"}
        assert r.lpips == {} and r.lpips_mean is None


def test_change_psnr_is_scored_for_every_kind_that_changes(baseline_rows):
    rows = {(r.method, r.expression): r for r in baseline_rows}
    copy, mean = rows[("neutral copy", ALL)], rows[("3DMM", ALL)]
    # neutral copy predicts no change: its change error is the whole change, so 3DMM (the mean change) beats it
    assert set(copy.change_psnr) == {"albedo", "specular", "roughness", "normal"}
    assert mean.change_psnr_mean > copy.change_psnr_mean
    assert mean.change_region_psnr_mean > copy.change_region_psnr_mean


def test_the_all_row_is_the_mean_over_every_sample(baseline_rows):
    rows = {(r.method, r.expression): r for r in baseline_rows}
    for method in ("neutral copy", "3DMM"):
        per_unit = [rows[(method, u)] for u in UNITS]  # one test subject: one sample per unit
        assert rows[(method, ALL)].fvd_mm == pytest.approx(np.mean([r.fvd_mm for r in per_unit]))
        assert rows[(method, ALL)].psnr_mean == pytest.approx(np.mean([r.psnr_mean for r in per_unit]))


def test_neutral_copy_fvd_is_the_expression_displacement(procedural_dataset, baseline_rows):
    ds = Dataset(procedural_dataset)
    subject = ds.split("test")[0]
    expected = fvd(ds.load_vertices(subject, "neutral"), ds.load_vertices(subject, "jawOpen"))
    row = next(r for r in baseline_rows if (r.method, r.expression) == ("neutral copy", "jawOpen"))
    assert row.fvd_mm == pytest.approx(expected)


def test_3dmm_beats_the_neutral_copy_on_geometry_of_procedural_identities(baseline_rows):
    rows = {(r.method, r.expression): r for r in baseline_rows}
    # Identity-specific deformation makes 3DMM imperfect, but the mean jaw motion is most of jawOpen.
    assert rows[("3DMM", "jawOpen")].fvd_mm < 0.5 * rows[("neutral copy", "jawOpen")].fvd_mm


def test_fvd_can_be_restricted_to_material_groups(procedural_dataset, baseline_rows):
    rows = evaluate_methods(procedural_dataset, {}, expressions=["jawOpen"], fvd_groups=["M_BackHead"],
                            progress=False)
    all_vertices = next(r for r in baseline_rows if (r.method, r.expression) == ("neutral copy", "jawOpen"))
    back_head = next(r for r in rows if (r.method, r.expression) == ("neutral copy", "jawOpen"))
    assert back_head.fvd_mm < all_vertices.fvd_mm  # the jaw is not on the back of the head


def test_expdiff_predictions_cover_every_expression_at_the_dataset_resolution(procedural_dataset, tiny_model):
    ds = Dataset(procedural_dataset)
    subject = ds.split("test")[0]
    pipeline = ExpDiffPipeline.from_pretrained(tiny_model, device="cpu")
    mesh = ds.load_mesh(subject, "neutral")
    neutral_maps = ds.load_maps(subject, "neutral")
    predicted = expdiff_predictions(pipeline, mesh, neutral_maps, UNITS, seed=0, steps=2)
    assert list(predicted) == UNITS
    for unit in UNITS:
        assert predicted[unit].vertices.shape == (ds.vertex_count, 3)
        assert np.isfinite(predicted[unit].vertices).all()
        for kind, tiles in neutral_maps.items():
            for udim, image in tiles.items():
                out = predicted[unit].maps[kind][udim]
                assert out.shape == image.shape == (image.shape[0], ds.resolution, ds.resolution)  # 64, model 32
                assert 0.0 <= out.min() and out.max() <= 1.0
        # Transferred normals keep the neutral's vector lengths (unit up to its half-float storage).
        lengths = [np.linalg.norm(m * 2 - 1, axis=0) for m in (predicted[unit].maps["normal"][1001],
                                                                  neutral_maps["normal"][1001])]
        np.testing.assert_allclose(lengths[0], lengths[1], rtol=1e-5)


def test_an_expdiff_method_is_scored_like_the_baselines(procedural_dataset, tiny_model):
    rows = evaluate_methods(procedural_dataset, {"ExpDiff": tiny_model}, expressions=["jawOpen"], steps=2,
                            progress=False)
    assert [(r.method, r.expression) for r in rows][-2:] == [("ExpDiff", ALL), ("ExpDiff", "jawOpen")]
    row = rows[-1]
    assert math.isfinite(row.fvd_mm) and row.fvd_mm > 0 and 0 < row.psnr_mean < 100 and -1 <= row.ssim_mean < 1


def test_a_method_named_like_a_baseline_is_refused(procedural_dataset, tiny_model):
    with pytest.raises(ExpDiffInputError, match="taken by the baselines"):
        evaluate_methods(procedural_dataset, {"3DMM": tiny_model}, progress=False)


def test_expressions_the_dataset_lacks_are_refused(procedural_dataset):
    with pytest.raises(ExpDiffInputError, match="cannot evaluate expression.*browDown_L"):
        evaluate_methods(procedural_dataset, {}, expressions=["browDown_L"], progress=False)


def test_an_empty_split_is_refused(procedural_dataset):
    with pytest.raises(ExpDiffInputError, match="no subject to evaluate"):
        evaluate_methods(procedural_dataset, {}, max_subjects=0, progress=False)
