"""ExpDiffPipeline stages on a tiny untrained model: shapes, determinism, Eq. 9 identities, clear errors."""

import numpy as np
import pytest
import torch

from expdiff_core.errors import ExpDiffInputError, TemplateMismatchError
from expdiff_core.pipelines.expdiff import Expression, transfer_map
from expdiff_core.synth.template import template_mesh

from .conftest import KINDS, RESOLUTION, neutral_textures


@pytest.fixture(scope="module")
def result(tiny_pipeline):
    return tiny_pipeline(template_mesh(), neutral_textures(), ["jawOpen", "mouthSmile_L"], seed=3, progress=False)


def test_every_expression_gets_a_mesh_and_maps_with_the_generated_neutral_first(result):
    mesh = template_mesh()
    assert result.labels == ["neutral", "jawOpen", "mouthSmile_L"]
    for label in result.labels:
        assert result.vertices[label].shape == mesh.vertices.shape
        assert np.isfinite(result.vertices[label]).all()
        assert set(result.maps[label]) == set(KINDS)
        assert result.maps[label]["albedo"][1001].shape == (3, RESOLUTION, RESOLUTION)
        assert result.maps[label]["roughness"][1002].shape == (1, RESOLUTION, RESOLUTION)


def test_recovering_the_generated_neutral_returns_the_users_mesh_exactly(result):
    # Eq. 9 with P_n == P_neutral adds exactly zero.
    assert np.array_equal(result.vertices["neutral"], template_mesh().vertices)


def test_same_seed_same_result_whatever_the_batching(tiny_pipeline):
    mesh, tex = template_mesh(), neutral_textures()
    z0 = tiny_pipeline.encode(tiny_pipeline.neutral_maps(mesh, tex))
    exprs = [Expression.parse(e) for e in ("neutral", "jawOpen", "browInnerUp_L")]
    a = tiny_pipeline.sample(z0, exprs, seed=7, batch_size=8, progress=False)
    b = tiny_pipeline.sample(z0, exprs, seed=7, batch_size=1, progress=False)
    c = tiny_pipeline.sample(z0, exprs, seed=8, batch_size=8, progress=False)
    # Same ops on the same per-expression noise; batched matmuls may differ in the last bits on CPU.
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("model", ["tiny_pipeline", "tiny_residual_pipeline"])
def test_sdedit_strength_starts_from_the_noised_neutral(model, request):
    pipeline = request.getfixturevalue(model)
    mesh, tex = template_mesh(), neutral_textures()
    z0 = pipeline.encode(pipeline.neutral_maps(mesh, tex))
    exprs = [Expression.parse("jawOpen")]
    weak = pipeline.sample(z0, exprs, seed=1, strength=0.05, steps=20, progress=False)[0]
    full = pipeline.sample(z0, exprs, seed=1, strength=1.0, steps=20, progress=False)[0]
    # At 5% strength the sample stays near the neutral latents; from pure noise it does not.
    assert (weak - z0).abs().mean() < 0.5 * (full - z0).abs().mean()


def test_a_residual_model_returns_the_neutral_plus_its_unscaled_residual(tiny_residual_pipeline):
    pipeline = tiny_residual_pipeline
    z0 = pipeline.encode(pipeline.neutral_maps(template_mesh(), neutral_textures()))
    exprs = [Expression.parse("jawOpen")]
    latents = pipeline.sample(z0, exprs, seed=2, progress=False)[0]
    # The untrained network predicts zero noise, so the denoised residual is a deterministic function of
    # the seeded start noise; what comes back must be the neutral plus that residual / residual_scale (4).
    assert not torch.allclose(latents, z0)
    rerun = pipeline.sample(z0 + 1.0, exprs, seed=2, progress=False)[0]
    torch.testing.assert_close(rerun - (z0 + 1.0), latents - z0, rtol=1e-4, atol=1e-4)


def test_a_mesh_off_the_template_is_refused(tiny_pipeline):
    mesh = template_mesh()
    last = int(mesh.face_vertex_counts[-1])
    other = type(mesh)(mesh.vertices, mesh.face_vertex_counts[:-1], mesh.face_vertex_indices[:-last], mesh.uvs,
                       mesh.face_uv_indices[:-last], mesh.face_groups[:-1], mesh.group_names)
    with pytest.raises(TemplateMismatchError, match="faces"):
        tiny_pipeline.check_mesh(other)


def test_albedo_is_required(tiny_pipeline):
    tex = neutral_textures()
    del tex["albedo"]
    with pytest.raises(ExpDiffInputError, match="albedo"):
        tiny_pipeline.neutral_maps(template_mesh(), tex)


@pytest.mark.parametrize("text,label,prompt_b,weight", [
    ("jawOpen", "jawOpen", None, 0.0),
    ("nose right", "prompt_nose_right", None, 0.0),
    ("jawOpen->mouthSmile_L@0.25", "prompt_jawOpen_mouthSmile_L_0_25", "smile", 0.25),
])
def test_expression_specs_parse(text, label, prompt_b, weight):
    e = Expression.parse(text)
    assert e.label == label and e.weight == weight
    assert (e.prompt_b is None) == (prompt_b is None)
    if prompt_b:
        assert prompt_b in e.prompt_b


def test_texture_transfer_without_change_returns_the_users_map():
    user = np.random.default_rng(0).uniform(0.1, 0.9, (3, 64, 64)).astype(np.float32)
    gen = np.random.default_rng(1).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    assert np.array_equal(transfer_map(user, gen, gen, "albedo"), user)


def test_normal_transfer_keeps_the_users_normals_without_change_and_their_length_with_one():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(3, 32, 32)) + np.array([0, 0, 3.0])[:, None, None]
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    # Stored as half floats, as in an EXR: unit length only to ~5e-4.
    user = (vectors * 0.5 + 0.5).astype(np.float16).astype(np.float32)
    gen = rng.uniform(0, 1, (3, 8, 8)).astype(np.float32)
    # float32 rescaling by |n| / |n| rounds in the last bit at most.
    np.testing.assert_allclose(transfer_map(user, gen, gen, "normal"), user, rtol=0, atol=1e-6)
    tilted = transfer_map(user, gen + np.float32(0.05) * np.array([1, 0, 0], np.float32)[:, None, None], gen, "normal")
    length = lambda m: np.linalg.norm(m * 2 - 1, axis=0)  # noqa: E731
    np.testing.assert_allclose(length(tilted), length(user), rtol=1e-5)
    assert (tilted[0] > user[0]).mean() > 0.99  # tilted towards +X


def test_texture_transfer_adds_the_upsampled_expression_change():
    user = np.full((1, 64, 64), 0.4, np.float32)
    neutral = np.full((1, 16, 16), 0.5, np.float32)
    expr = neutral + 0.1
    assert np.allclose(transfer_map(user, expr, neutral, "roughness"), 0.5, atol=1e-6)


@pytest.mark.slow  # torch.compile builds C++ kernels on CPU: tens of seconds
def test_a_compiled_denoiser_samples_what_the_eager_one_does(tiny_model):
    from expdiff_core.pipelines.expdiff import ExpDiffPipeline

    pipe = ExpDiffPipeline.from_pretrained(tiny_model, device="cpu")
    z0 = pipe.encode(pipe.neutral_maps(template_mesh(), neutral_textures()))
    exprs = [Expression.parse(e) for e in ("neutral", "jawOpen", "mouthSmile_L")]
    eager = pipe.sample(z0, exprs, seed=1, strength=1.0, progress=False)
    pipe.compile_denoiser()
    pipe.compile_denoiser()  # once is enough: a second call is a no-op
    compiled = pipe.sample(z0, exprs, seed=1, strength=1.0, progress=False)
    # fused kernels reorder float32 sums: ~1e-6 per pass, over the tiny model's 4 steps
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), atol=1e-4)
