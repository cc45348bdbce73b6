"""The prior's map part fitted from a dataset: the BRDF changes at full resolution, tuned per kind on val."""

import numpy as np

from expdiff_core.io.dataset import Dataset
from expdiff_core.models.prior import ExpressionPrior, flatten_maps
from expdiff_core.training.prior import fit_prior

from .conftest import UNITS


def test_the_map_part_is_tuned_per_kind_on_val_and_predicts_the_training_changes(procedural_dataset, tmp_path):
    prior, _ = fit_prior(procedural_dataset, tmp_path / "prior", n_components=1, ridge=1e-6, maps=True,
                         progress=False)
    c = prior.config
    assert sorted(c.map_tuning) == ["albedo", "normal", "roughness", "specular"]
    for kind, (k, ridge) in c.map_tuning.items():  # the chosen candidate is the best on val
        scores = c.fitted_on["map_validation"][kind]
        assert scores[f"K={k} ridge={ridge:g}"] == max(scores.values())

    ds = Dataset(procedural_dataset)
    loaded = ExpressionPrior.from_pretrained(tmp_path / "prior")
    subject = ds.split("train")[0]
    neutral = ds.load_maps(subject, "neutral")
    scores = loaded.scores(ds.load_vertices(subject, "neutral"), neutral)
    predicted = loaded.map_change(scores, loaded.weights_for([{u: 1.0} for u in UNITS]))
    for unit, maps in zip(UNITS, predicted):
        true = flatten_maps(ds.load_maps(subject, unit), c.map_layout) - flatten_maps(neutral, c.map_layout)
        got = flatten_maps(maps, c.map_layout)
        # two training identities: the prediction lies between the mean change and the identity's own, so it
        # is closer to the truth than no change at all
        assert np.abs(got - true).mean() < 0.5 * np.abs(true).mean()


def test_a_map_part_that_would_not_fit_in_memory_is_refused_before_reading(procedural_dataset, tmp_path, monkeypatch):
    import pytest

    from expdiff_core.errors import ExpDiffInputError
    from expdiff_core.training import prior as training_prior

    monkeypatch.setattr(training_prior, "_available_memory", lambda: 1_000_000)  # 1 MB free
    with pytest.raises(ExpDiffInputError, match=r"manifest.json.*map part holds every train/val identity"):
        fit_prior(procedural_dataset, tmp_path / "prior", n_components=1, ridge=1e-6, maps=True, progress=False)
    assert not (tmp_path / "prior").exists()
