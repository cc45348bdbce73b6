"""A pipeline with an expression prior: every expression starts from the prior and is read against it."""

import numpy as np
import pytest

from expdiff_core.pipelines.expdiff import Expression
from expdiff_core.synth.template import template_mesh

from .conftest import neutral_textures


def _run(pipeline, expressions, **kw):
    return pipeline(template_mesh(), neutral_textures(), expressions, seed=0, progress=False, **kw)


def test_at_strength_zero_the_vertices_are_the_neutral_plus_the_priors_change(tiny_prior_pipeline):
    out = _run(tiny_prior_pipeline, ["jawOpen", "mouthSmile_L"])
    mesh = template_mesh()
    moved = out.vertices["jawOpen"] - mesh.vertices
    lower = mesh.vertices[:, 1] < np.median(mesh.vertices[:, 1])
    # the prior's jawOpen moves the lower half down by ~1 cm (x the face's scale) and nothing else; float16
    # coefficients and float32 sums keep it within 1e-2 cm
    assert moved[lower, 1].max() < -0.8 and np.abs(moved[~lower]).max() < 1e-2
    assert np.array_equal(out.vertices["neutral"], mesh.vertices)


def test_left_units_move_the_characters_left_half(tiny_prior_pipeline):
    out = _run(tiny_prior_pipeline, ["mouthSmile_L", "mouthSmile_R"])
    mesh = template_mesh()
    left = mesh.vertices[:, 0] > 0
    for label, side in (("mouthSmile_L", left), ("mouthSmile_R", ~left)):
        moved = np.linalg.norm(out.vertices[label] - mesh.vertices, axis=1)
        assert moved[side].mean() > 3 * moved[~side].mean()


def test_units_blends_and_free_prompts_mix_the_priors_units(tiny_prior_pipeline):
    mix = tiny_prior_pipeline.prior_mix([Expression.parse(e) for e in (
        "neutral", "jawOpen", "jawOpen->mouthSmile_L@0.25", "smile on both sides")])
    units = tiny_prior_pipeline.prior.expressions
    assert not mix[0].any()
    assert mix[1][units.index("jawOpen")] == 1.0 and mix[1].sum() == 1.0
    assert mix[2][units.index("jawOpen")] == pytest.approx(0.75)
    assert mix[2][units.index("mouthSmile_L")] == pytest.approx(0.25)
    # both smiles resemble the prompt far more than jawOpen does, and about equally
    smile_l, smile_r = mix[3][units.index("mouthSmile_L")], mix[3][units.index("mouthSmile_R")]
    assert smile_l > 0.3 and smile_r > 0.3 and mix[3].sum() == pytest.approx(1.0)


def test_a_positive_strength_diffuses_from_the_prior(tiny_prior_pipeline):
    kept = _run(tiny_prior_pipeline, ["jawOpen"])
    diffused = _run(tiny_prior_pipeline, ["jawOpen"], strength=0.5, steps=4)
    assert np.isfinite(diffused.vertices["jawOpen"]).all()
    assert not np.allclose(kept.latents[1], diffused.latents[1])


def test_the_prior_can_be_switched_off(tiny_prior_pipeline):
    tiny_prior_pipeline.use_prior = False
    try:
        out = _run(tiny_prior_pipeline, ["jawOpen"])
    finally:
        tiny_prior_pipeline.use_prior = True
    # read against the generated neutral, as without a prior
    assert out.references["jawOpen"] is out.maps["neutral"]


def test_a_map_prior_puts_its_change_on_the_characters_own_neutral_maps(tiny_map_prior_pipeline):
    from ..helpers.tiny_models import PRIOR_UNITS, tiny_map_change
    from expdiff_core.models.prior import unflatten_maps

    pipe = tiny_map_prior_pipeline
    out = _run(pipe, ["jawOpen", "mouthSmile_L"])
    neutral = pipe.neutral_maps(template_mesh(), neutral_textures())
    c = pipe.prior.config
    scores = pipe.prior_scores(template_mesh(), neutral_textures())
    for unit in ("jawOpen", "mouthSmile_L"):
        # the template is identity 0 of the made-up family up to its scale: its change is ~0.05 on its block
        want = unflatten_maps(tiny_map_change(unit, c.map_layout, 0), c.map_layout, c.map_resolution)
        for kind in ("albedo", "roughness"):
            got = out.maps[unit][kind][1002] - neutral[kind][1002]
            # float16 coefficients (5e-4 relative) and the template's few-percent scale difference from identity 0
            assert np.abs(got - want[kind][1002]).max() < 5e-3
        np.testing.assert_array_equal(out.references[unit]["albedo"][1001], neutral["albedo"][1001])
    assert scores.shape == (pipe.prior.features.n_components,)
    assert np.array_equal(out.maps["neutral"]["albedo"][1001], neutral["albedo"][1001])  # no change, exactly


def test_a_map_prior_reads_one_channel_maps_against_one_channel_neutrals(tiny_map_prior_pipeline):
    textures = {k: v for k, v in neutral_textures().items() if k in ("albedo", "normal")}  # roughness = albedo
    out = tiny_map_prior_pipeline(template_mesh(), textures, ["jawOpen"], seed=0, progress=False)
    for kind in ("roughness", "specular"):
        assert out.maps["jawOpen"][kind][1001].shape == out.references["jawOpen"][kind][1001].shape == (1, 32, 32)


def test_at_strength_zero_a_map_prior_leaves_the_kinds_it_replaces_undecoded(tiny_map_prior_pipeline, monkeypatch):
    pipe = tiny_map_prior_pipeline
    assert pipe.kinds_to_decode(kept=False) is None  # sampling changed the latents: every decoded kind counts
    assert set(pipe.kinds_to_decode(kept=True)) == set(pipe.config.kinds) - set(pipe.prior.map_parts)
    skipped = _run(pipe, ["jawOpen", "mouthSmile_L"])
    monkeypatch.setattr(type(pipe), "kinds_to_decode", lambda self, kept: None)
    everything = _run(pipe, ["jawOpen", "mouthSmile_L"])
    for label in everything.labels:  # the same build: what was skipped was never used
        np.testing.assert_array_equal(skipped.vertices[label], everything.vertices[label])
        for kind, tiles in everything.maps[label].items():
            for udim, image in tiles.items():
                np.testing.assert_array_equal(skipped.maps[label][kind][udim], image)
