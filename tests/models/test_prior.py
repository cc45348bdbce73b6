"""The identity-aware expression prior: ridge from the neutral's identity scores to each unit's change."""

from __future__ import annotations

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.prior import ExpressionPrior, coarse_maps, fit_expression_prior

V = 50
UNITS = ["jawOpen", "mouthSmile_L"]


def _corpus(n: int = 12, seed: int = 0):
    """n identities of one family whose unit changes are an exact linear function of their neutral."""
    family = np.random.default_rng(1234)
    base = family.normal(size=(V, 3))
    directions = family.normal(size=(2, V, 3)) * 0.1
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(n, 2))
    neutrals = base + np.einsum("ni,ivd->nvd", identity, directions)
    maps = np.zeros((n, 4))  # coarse map features that say nothing about the identity
    moving = np.zeros((V, 1))
    moving[: V // 2] = 1.0  # each unit moves half the vertices
    changes = {u: (0.5 + 0.2 * k + 0.3 * (neutrals - base)) * moving for k, u in enumerate(UNITS)}
    return neutrals.astype(np.float32), maps, {u: c.astype(np.float32) for u, c in changes.items()}


def _fit(ridge: float, **kw):
    neutrals, maps, changes = _corpus()
    return fit_expression_prior(neutrals, maps, changes, n_components=4, ridge=ridge, map_kinds=[], udims=[], **kw), \
        (neutrals, maps, changes)


def test_a_linear_corpus_is_recovered_for_a_new_identity():
    prior, _ = _fit(ridge=1e-8)
    fresh_n, fresh_m, fresh_c = _corpus(n=1, seed=99)  # an identity of the same family, not trained on
    scores = prior.features.scores(fresh_n[-1].reshape(1, -1), fresh_m[-1:])[0]
    predicted = prior.vertex_change(scores, prior.weights_for([{"jawOpen": 1.0}]))[0]
    # float32 data and float16 stored coefficients (relative 5e-4 of changes ~1): 5e-3 is a safe bound
    assert np.abs(predicted - fresh_c["jawOpen"][-1]).max() < 5e-3


def test_a_strong_ridge_gives_the_mean_change_the_plain_3dmm():
    prior, (neutrals, maps, changes) = _fit(ridge=1e8)
    scores = prior.features.scores(neutrals[0].reshape(1, -1), maps[:1])[0]
    predicted = prior.vertex_change(scores, prior.weights_for([{"mouthSmile_L": 1.0}]))[0]
    assert np.abs(predicted - changes["mouthSmile_L"].mean(axis=0)).max() < 1e-4  # float32 rounding of ~1


def test_units_mix_linearly_and_neutral_has_no_change():
    prior, (neutrals, maps, _) = _fit(ridge=1e-2)
    scores = prior.features.scores(neutrals[0].reshape(1, -1), maps[:1])[0]
    mix = prior.weights_for([{"jawOpen": 1.0}, {"mouthSmile_L": 1.0}, {"jawOpen": 0.25, "mouthSmile_L": 0.75}, {}])
    jaw, smile, blend, none = prior.vertex_change(scores, mix)
    np.testing.assert_allclose(blend, 0.25 * jaw + 0.75 * smile, atol=1e-6)
    assert not none.any()


def test_only_moving_vertices_are_stored():
    prior, _ = _fit(ridge=1e-2)
    assert prior.vertex_index.size == len(UNITS) * V // 2


def test_save_and_load_keep_the_predictions(tmp_path):
    latents = {u: np.random.default_rng(k + 7).normal(size=(12, 2, 4, 2, 2)).astype(np.float32)
               for k, u in enumerate(UNITS)}
    prior, (neutrals, maps, _) = _fit(ridge=1e-2, latent_changes=latents, latent_components=2)
    loaded = ExpressionPrior.from_pretrained(prior.save_pretrained(tmp_path / "prior"))
    scores = prior.features.scores(neutrals[1].reshape(1, -1), maps[1:2])[0]
    mix = prior.weights_for([{"jawOpen": 1.0}])
    np.testing.assert_allclose(loaded.vertex_change(scores, mix), prior.vertex_change(scores, mix), atol=1e-3)
    np.testing.assert_allclose(loaded.latent_change(scores, mix), prior.latent_change(scores, mix), atol=1e-2)
    assert loaded.config.latent_components == 2


def test_a_folder_without_a_prior_is_a_clear_error(tmp_path):
    with pytest.raises(ExpDiffInputError, match="expression prior config not found"):
        ExpressionPrior.from_pretrained(tmp_path)


def test_coarse_maps_average_blocks_and_mark_missing_kinds():
    tile = np.arange(32 * 32, dtype=np.float32).reshape(1, 32, 32)
    out = coarse_maps({"roughness": {1001: tile}}, ["roughness", "albedo"], [1001], size=16)
    assert out[:256].reshape(16, 16)[0, 0] == pytest.approx(tile[0, :2, :2].mean())
    assert np.isnan(out[256:]).all() and out.size == 256 + 3 * 256


def _map_part(ridge: float):
    """The map part on the linear corpus: 2 map entries per unit change as 0.1 * (identity's first neutral
    coordinate - its mean) + 0.05, the third entry never changes."""
    from expdiff_core.models.prior import fit_map_change

    prior, (neutrals, maps, _) = _fit(ridge=1e-8)
    layout = [["roughness", 1001, 1]]
    scores = prior.features.scores(neutrals.reshape(len(neutrals), -1), maps)
    x = neutrals[:, 0, 0] - neutrals[:, 0, 0].mean()

    def changes(x):
        return np.stack([0.05 + 0.1 * x, 0.05 - 0.1 * x, np.zeros_like(x), np.zeros_like(x)], axis=1)

    flat = {u: changes(x) for u in UNITS}
    part = fit_map_change(scores, flat, UNITS, layout, 2, {"roughness": (4, ridge)})
    return prior.with_map_part(part, layout, 2, {"roughness": (4, ridge)}), changes, neutrals.mean(axis=0)


def test_the_map_part_recovers_a_linear_map_change_for_a_new_identity():
    prior, changes, mean_neutral = _map_part(ridge=1e-8)
    fresh_n, fresh_m, _ = _corpus(n=1, seed=99)
    scores = prior.features.scores(fresh_n[-1].reshape(1, -1), fresh_m[-1:])[0]
    got = prior.map_change(scores, prior.weights_for([{"jawOpen": 1.0}]))[0]["roughness"][1001].ravel()
    want = changes(np.array([fresh_n[-1, 0, 0] - mean_neutral[0, 0]]))[0]
    assert np.abs(got - want).max() < 1e-4  # float32 least squares on exactly linear data


def test_the_map_part_stores_only_the_entries_a_unit_changes_and_survives_saving(tmp_path):
    prior, _, _ = _map_part(ridge=1e-2)
    assert prior.map_parts["roughness"].index.size == len(UNITS) * 2
    loaded = ExpressionPrior.from_pretrained(prior.save_pretrained(tmp_path / "prior"))
    scores = np.linspace(-1, 1, prior.features.n_components)
    mix = prior.weights_for([{"jawOpen": 0.5, "mouthSmile_L": 0.5}])
    got = loaded.map_change(scores, mix)[0]["roughness"][1001]
    np.testing.assert_allclose(got, prior.map_change(scores, mix)[0]["roughness"][1001], atol=1e-4)  # float16
    assert loaded.config.map_tuning == {"roughness": [4, 1e-2]}
