"""The neutral-copy and linear 3DMM baselines."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.evaluation.baselines import LINEAR_3DMM, NEUTRAL_COPY, baseline_predictions, mean_training_face
from expdiff_core.evaluation.metrics import fvd, psnr
from expdiff_core.io.dataset import Dataset

from .conftest import UNITS


def test_3dmm_equals_the_truth_when_expressions_are_exactly_linear(linear_dataset):
    ds = Dataset(linear_dataset)
    subject = ds.split("test")[0]
    predicted = baseline_predictions(ds, subject, UNITS, progress=False)[LINEAR_3DMM]
    for unit in UNITS:
        # Vertices are float32 of magnitude ~10 cm (rounding ~1e-6 cm); 1e-4 mm leaves a wide margin.
        assert fvd(predicted[unit].vertices, ds.load_vertices(subject, unit)) < 1e-4
        for kind, tiles in ds.load_maps(subject, unit).items():
            for udim, true in tiles.items():
                # Maps are stored as half floats (error <= 2^-12 for values in [0, 1]); the prediction sums
                # three stored maps, so it is within 4 * 2^-12 ~ 1e-3 of the stored truth.
                assert np.abs(predicted[unit].maps[kind][udim] - true).max() < 1e-3, (unit, kind, udim)


def test_3dmm_beats_the_neutral_copy_on_linear_data(linear_dataset):
    ds = Dataset(linear_dataset)
    subject = ds.split("test")[0]
    both = baseline_predictions(ds, subject, UNITS, progress=False)
    true = ds.load_vertices(subject, "jawOpen")
    assert fvd(both[NEUTRAL_COPY]["jawOpen"].vertices, true) > 1.0  # jawOpen moves the chin by centimetres
    true_albedo = ds.load_map(subject, "jawOpen", "albedo", 1001)
    assert psnr(both[LINEAR_3DMM]["jawOpen"].maps["albedo"][1001], true_albedo) > \
        psnr(both[NEUTRAL_COPY]["jawOpen"].maps["albedo"][1001], true_albedo)


def test_neutral_copy_predicts_the_subjects_own_neutral(procedural_dataset):
    ds = Dataset(procedural_dataset)
    subject = ds.split("test")[0]
    copy = baseline_predictions(ds, subject, UNITS, progress=False)[NEUTRAL_COPY]
    neutral_maps = ds.load_maps(subject, "neutral")
    for unit in UNITS:
        np.testing.assert_array_equal(copy[unit].vertices, ds.load_vertices(subject, "neutral"))
        for kind, tiles in neutral_maps.items():
            for udim, image in tiles.items():
                np.testing.assert_array_equal(copy[unit].maps[kind][udim], image)


def test_3dmm_mean_comes_from_the_training_identities_only(procedural_dataset):
    ds = Dataset(procedural_dataset)
    face = mean_training_face(ds, UNITS, progress=False)
    assert face.subjects == ds.split("train") and ds.split("test")[0] not in face.subjects
    expected = np.mean([ds.load_vertices(s, "jawOpen") - ds.load_vertices(s, "neutral") for s in face.subjects], axis=0)
    np.testing.assert_allclose(face.vertex_delta("jawOpen"), expected, atol=1e-5)  # float32 sums of ~10 cm values


def test_mean_training_face_is_computed_once_per_dataset_and_split(procedural_dataset):
    ds = Dataset(procedural_dataset)
    first = mean_training_face(ds, UNITS, progress=False)
    assert mean_training_face(Dataset(procedural_dataset), UNITS, progress=False) is first
    assert mean_training_face(ds, UNITS, split="val", progress=False) is not first


def test_an_empty_training_split_is_a_clear_error(linear_dataset):
    with pytest.raises(ExpDiffInputError, match="split .val. has no subject"):
        mean_training_face(Dataset(linear_dataset), UNITS, split="val", progress=False)


def test_ridge_equals_the_truth_when_expressions_are_exactly_linear(linear_dataset):
    from expdiff_core.evaluation.baselines import RidgeBaseline
    from expdiff_core.evaluation.baselines import Prediction

    ds = Dataset(linear_dataset)
    subject = ds.split("test")[0]
    neutral = Prediction(ds.load_vertices(subject, "neutral"), ds.load_maps(subject, "neutral"))
    # every identity has the same change, so the regression has nothing to add to the mean change
    predicted = RidgeBaseline(ds, UNITS, progress=False).predict([neutral], UNITS)[0]
    for unit in UNITS:
        assert fvd(predicted[unit].vertices, ds.load_vertices(subject, unit)) < 1e-4  # as for 3DMM above
        true = ds.load_map(subject, unit, "albedo", 1001)
        assert np.abs(predicted[unit].maps["albedo"][1001] - true).max() < 1e-3  # half-float maps, as above


def test_ridge_is_personal_where_3dmm_is_not(procedural_dataset):
    from expdiff_core.evaluation.baselines import Prediction, RidgeBaseline

    ds = Dataset(procedural_dataset)
    subjects = ds.split("train")
    neutrals = [Prediction(ds.load_vertices(s, "neutral"), ds.load_maps(s, "neutral")) for s in subjects]
    ridge = RidgeBaseline(ds, UNITS, n_components=1, ridge=1e-6, progress=False)
    predicted = ridge.predict(neutrals, ["jawOpen"])
    # two training identities, one component, almost no shrinkage: each training identity gets its own change
    for s, p in zip(subjects, predicted):
        assert fvd(p["jawOpen"].vertices, ds.load_vertices(s, "jawOpen")) < 0.01
