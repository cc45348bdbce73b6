"""A pipeline with an expression support changes each expression only where its units act."""

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.models.support import ExpressionSupport, ExpressionSupportConfig
from expdiff_core.pipelines.expdiff import ExpDiffPipeline
from expdiff_core.synth.template import template_mesh

from .conftest import neutral_textures, tiny_pipeline_folder


def _support_for(pipeline: ExpDiffPipeline, moving: np.ndarray) -> ExpressionSupport:
    """jawOpen may move ``moving`` vertices and change every albedo texel, nothing else; mouthSmile_L anything."""
    c = pipeline.config
    layout = [[k, u, 3 if k in ("albedo", "normal") else 1] for k in c.kinds if k != "position" for u in c.udims]
    size = sum(ch for _, _, ch in layout) * c.resolution ** 2
    maps = np.zeros((2, size), bool)
    maps[0, :3 * c.resolution ** 2] = True  # layout starts with albedo on the first tile
    maps[1] = True
    vertices = np.stack([moving, np.ones_like(moving)])
    config = ExpressionSupportConfig(["jawOpen", "mouthSmile_L"], int(len(moving)), layout, c.resolution)
    return ExpressionSupport(config, vertices, maps)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    folder = tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-support"), target="change", change_codec="patch")
    plain = ExpDiffPipeline.from_pretrained(folder, device="cpu")
    moving = np.zeros(template_mesh().n_vertices, bool)
    moving[::2] = True
    _support_for(plain, moving).save_pretrained(folder / "support")
    return plain, ExpDiffPipeline.from_pretrained(folder, device="cpu"), moving


def test_an_expression_changes_only_its_units_vertices_and_texels(pipelines):
    plain, supported, moving = pipelines
    mesh = template_mesh()
    free = plain(mesh, neutral_textures(), ["jawOpen"], seed=0, progress=False)
    kept = supported(mesh, neutral_textures(), ["jawOpen"], seed=0, progress=False)
    assert np.array_equal(kept.vertices["jawOpen"][~moving], mesh.vertices[~moving])
    np.testing.assert_allclose(kept.vertices["jawOpen"][moving], free.vertices["jawOpen"][moving], atol=1e-6)
    udim = supported.config.udims[0]
    np.testing.assert_array_equal(kept.maps["jawOpen"]["albedo"][udim], free.maps["jawOpen"]["albedo"][udim])
    np.testing.assert_array_equal(kept.maps["jawOpen"]["roughness"][udim],
                                  kept.references["jawOpen"]["roughness"][udim])


def test_a_unit_supported_everywhere_is_left_as_the_model_made_it(pipelines):
    plain, supported, _ = pipelines
    free = plain(template_mesh(), neutral_textures(), ["mouthSmile_L"], seed=0, progress=False)
    kept = supported(template_mesh(), neutral_textures(), ["mouthSmile_L"], seed=0, progress=False)
    np.testing.assert_allclose(kept.vertices["mouthSmile_L"], free.vertices["mouthSmile_L"], atol=1e-6)


def test_a_support_for_another_template_is_refused_when_the_model_loads(tmp_path):
    folder = tiny_pipeline_folder(tmp_path / "m", target="change", change_codec="patch")
    plain = ExpDiffPipeline.from_pretrained(folder, device="cpu")
    _support_for(plain, np.ones(7, bool)).save_pretrained(folder / "support")
    with pytest.raises(ExpDiffInputError, match="is for 7 vertices"):
        ExpDiffPipeline.from_pretrained(folder, device="cpu")
