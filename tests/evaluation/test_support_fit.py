"""The expression support fitted from a dataset: where each unit's training identities change."""

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.dataset import Dataset
from expdiff_core.models.prior import flatten_maps
from expdiff_core.models.support import ExpressionSupport
from expdiff_core.training.support import fit_support

from .conftest import UNITS


def test_the_support_holds_every_change_of_the_training_identities_and_nothing_still(procedural_dataset, tmp_path):
    fit_support(procedural_dataset, tmp_path / "support", progress=False)
    support = ExpressionSupport.from_pretrained(tmp_path / "support")
    ds = Dataset(procedural_dataset)
    layout = support.config.map_layout
    moved = {u: np.zeros(ds.vertex_count, bool) for u in UNITS}
    changed = {u: np.zeros(support.maps.shape[1], bool) for u in UNITS}
    for s in ds.split("train"):
        neutral_v, neutral_m = ds.load_vertices(s, "neutral"), flatten_maps(ds.load_maps(s, "neutral"), layout)
        for u in UNITS:
            moved[u] |= np.linalg.norm(ds.load_vertices(s, u) - neutral_v, axis=1) > support.config.vertex_threshold
            changed[u] |= np.abs(flatten_maps(ds.load_maps(s, u), layout) - neutral_m) > support.config.map_threshold
    for i, u in enumerate(support.expressions):
        assert np.array_equal(support.vertices[i], moved[u]) and np.array_equal(support.maps[i], changed[u])
    # jawOpen moves the jaw, not the whole head: its support is a part of the face
    assert 0 < support.vertices[support.index["jawOpen"]].mean() < 0.5


def test_fitting_onto_an_existing_folder_is_refused_before_reading(procedural_dataset, tmp_path):
    (tmp_path / "support").mkdir()
    with pytest.raises(ExpDiffInputError, match="never overwritten"):
        fit_support(procedural_dataset, tmp_path / "support", progress=False)


def test_the_support_holds_every_vertex_and_texel_the_prior_changes(procedural_dataset, tmp_path):
    """So a model with both keeps the prior's expression exactly (the shipped default is the prior)."""
    from expdiff_core.training.prior import fit_prior

    support = fit_support(procedural_dataset, tmp_path / "support", progress=False)
    prior, _ = fit_prior(procedural_dataset, tmp_path / "prior", n_components=1, ridge=1e-6, maps=True,
                         progress=False)
    for e, unit in enumerate(prior.expressions):
        moved = prior.vertex_index[prior.vertex_offsets[e]:prior.vertex_offsets[e + 1]]
        assert support.vertices[support.index[unit], moved].all()
        for part in prior.map_parts.values():
            changed = part.index[part.offsets[e]:part.offsets[e + 1]]
            # the prior reads the changes in float16: a texel within its rounding of the threshold may differ
            assert support.maps[support.index[unit], changed].mean() > 0.999
