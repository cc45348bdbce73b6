"""A change model: the denoiser's latents are changes, decoded onto the character's own neutral maps."""

import numpy as np
import pytest
import torch

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.pipelines.expdiff import ExpDiffPipeline, Expression
from expdiff_core.synth.template import template_mesh

from .conftest import neutral_textures, tiny_pipeline_folder


def _neutral_maps(pipeline):
    return pipeline.neutral_maps(template_mesh(), neutral_textures())


def test_zero_change_latents_decode_to_the_characters_neutral_maps(tiny_change_pipeline):
    maps = _neutral_maps(tiny_change_pipeline)
    shape = tiny_change_pipeline.target_shape(tiny_change_pipeline.encode(maps))
    decoded = tiny_change_pipeline.decode(torch.zeros(2, *shape), neutral_maps=maps)
    for kind, tiles in maps.items():
        for udim, image in tiles.items():
            # D(z0) - D(z0) is zero up to the decoder's batch-composition rounding (float32)
            np.testing.assert_allclose(decoded[1][kind][udim], image, atol=1e-5)


def test_a_change_model_needs_the_neutral_maps_to_decode_onto(tiny_change_pipeline):
    shape = tiny_change_pipeline.target_shape(tiny_change_pipeline.encode(_neutral_maps(tiny_change_pipeline)))
    with pytest.raises(ExpDiffInputError, match="decodes onto the character's neutral maps"):
        tiny_change_pipeline.decode(torch.zeros(1, *shape))


def test_the_generated_neutral_is_the_users_mesh_and_maps_are_read_against_the_users_maps(tiny_change_pipeline):
    out = tiny_change_pipeline(template_mesh(), neutral_textures(), ["jawOpen"], seed=0, progress=False)
    assert np.array_equal(out.vertices["neutral"], template_mesh().vertices)
    maps = _neutral_maps(tiny_change_pipeline)
    np.testing.assert_allclose(out.references["jawOpen"]["albedo"][1001], maps["albedo"][1001], atol=1e-5)
    assert np.isfinite(out.vertices["jawOpen"]).all()


def test_sampling_from_the_neutral_starts_from_no_change(tiny_change_pipeline):
    z0 = tiny_change_pipeline.encode(_neutral_maps(tiny_change_pipeline))
    unchanged = tiny_change_pipeline.unchanged_latents(z0)
    assert unchanged.shape == tiny_change_pipeline.target_shape(z0) and not unchanged.any()


@pytest.fixture(scope="module", params=["vae", "change"])
def tiny_subspace_pipeline(request, tmp_path_factory):
    """A subspace denoiser's pipeline, its condition encoded by the absolute VAE, then by the change codec."""
    folder = tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-subspace"), target="change",
                                  change_codec="patch", denoiser="subspace", condition=request.param)
    return ExpDiffPipeline.from_pretrained(folder, device="cpu")


def test_a_subspace_denoiser_samples_changes_inside_its_fitted_subspace(tiny_subspace_pipeline):
    pipe = tiny_subspace_pipeline
    z0 = pipe.encode(_neutral_maps(pipe))
    latents = pipe.sample(z0, [Expression.parse("jawOpen"), Expression.parse("eyeBlink_L")], steps=3, progress=False)
    assert latents.shape == (2, *pipe.target_shape(z0))
    # what it makes lies in the span it was fitted on: projecting it again changes nothing (float32 rounding)
    again = pipe.denoiser.latents_from_target(pipe.denoiser.diffusion_target(latents))
    torch.testing.assert_close(again, latents, atol=1e-5, rtol=1e-4)


def test_a_subspace_denoiser_samples_a_whole_character_in_one_forward_with_the_same_result(tiny_subspace_pipeline):
    pipe = tiny_subspace_pipeline
    z0 = pipe.encode(_neutral_maps(pipe))
    exprs = [Expression.parse(e) for e in ("neutral", "jawOpen", "browInnerUp_L", "mouthSmile_L")]
    assert pipe.denoiser.sampling_batch >= 57  # the neutral and the 56 units
    together = pipe.sample(z0, exprs, steps=3, seed=7, progress=False)
    alone = pipe.sample(z0, exprs, steps=3, seed=7, batch_size=1, progress=False)
    # the same per-expression ops; batched matmuls may differ in the last bits on CPU
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_at_noise_scale_zero_sampling_follows_one_path_whatever_the_seed(tiny_subspace_pipeline):
    pipe = tiny_subspace_pipeline
    z0 = pipe.encode(_neutral_maps(pipe))
    expressions = [Expression.parse("jawOpen")]

    def draw(seed, scale):
        return pipe.sample(z0, expressions, steps=3, seed=seed, noise_scale=scale, progress=False)

    torch.testing.assert_close(draw(0, 0.0), draw(1, 0.0), atol=0, rtol=0)
    assert not torch.allclose(draw(0, 1.0), draw(1, 1.0))


def test_a_noise_scale_outside_zero_to_one_is_refused(tiny_subspace_pipeline):
    pipe = tiny_subspace_pipeline
    with pytest.raises(ExpDiffInputError, match="noise_scale"):
        pipe.sample(pipe.encode(_neutral_maps(pipe)), [Expression.parse("jawOpen")], steps=2, noise_scale=1.5,
                    progress=False)


def test_a_subspace_model_builds_a_character_end_to_end(tiny_subspace_pipeline):
    out = tiny_subspace_pipeline(template_mesh(), neutral_textures(), ["jawOpen"], seed=0, steps=2, progress=False)
    assert np.array_equal(out.vertices["neutral"], template_mesh().vertices)
    assert np.isfinite(out.vertices["jawOpen"]).all()
    assert set(out.maps["jawOpen"]) == {"position", "albedo", "specular", "roughness", "normal"}


def test_the_condition_is_the_neutral_encoded_by_the_codec_the_denoiser_names(tiny_subspace_pipeline):
    pipe = tiny_subspace_pipeline
    maps = _neutral_maps(pipe)
    z0 = pipe.encode(maps)
    codec = pipe.change_codec if pipe.denoiser.config.condition_codec == "change" else pipe.codec
    assert z0.shape[1] == pipe.denoiser.condition_channels
    expected = codec.encode(torch.from_numpy(np.asarray(maps["position"][1001])), "position").float()
    torch.testing.assert_close(z0[0], expected)  # map 0: UDIM 1001's position
