"""A pipeline with an expression support changes each expression only where its units act."""

import numpy as np
import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.pipelines.expdiff import ExpDiffPipeline
from expdiff_core.synth.template import template_mesh

from ..helpers.tiny_models import tiny_support, tiny_support_vertices
from .conftest import neutral_textures, tiny_pipeline_folder


@pytest.fixture(scope="module")
def pipelines(tiny_support_model):
    """The same model without its support, and with it."""
    plain = ExpDiffPipeline.from_pretrained(tiny_support_model, device="cpu")
    plain.support = None
    return plain, ExpDiffPipeline.from_pretrained(tiny_support_model, device="cpu")


def _run(pipeline, unit):
    return pipeline(template_mesh(), neutral_textures(), [unit], seed=0, progress=False)


def test_an_expression_changes_only_its_units_vertices_and_texels(pipelines):
    plain, supported = pipelines
    mesh = template_mesh()
    moving = tiny_support_vertices(mesh.n_vertices)
    free, kept = _run(plain, "jawOpen"), _run(supported, "jawOpen")
    assert np.array_equal(kept.vertices["jawOpen"][~moving], mesh.vertices[~moving])
    np.testing.assert_allclose(kept.vertices["jawOpen"][moving], free.vertices["jawOpen"][moving], atol=1e-6)
    np.testing.assert_array_equal(kept.maps["jawOpen"]["albedo"][1001], free.maps["jawOpen"]["albedo"][1001])
    np.testing.assert_array_equal(kept.maps["jawOpen"]["roughness"][1001],
                                  kept.references["jawOpen"]["roughness"][1001])


def test_a_unit_supported_everywhere_is_left_as_the_model_made_it(pipelines):
    plain, supported = pipelines
    np.testing.assert_allclose(_run(supported, "mouthSmile_L").vertices["mouthSmile_L"],
                               _run(plain, "mouthSmile_L").vertices["mouthSmile_L"], atol=1e-6)


def test_a_support_for_another_template_is_refused_when_the_model_loads(tmp_path):
    folder = tiny_pipeline_folder(tmp_path / "m", target="change", change_codec="patch")
    config = ExpDiffPipeline.from_pretrained(folder, device="cpu").config
    tiny_support(config, 7).save_pretrained(folder / "support")
    with pytest.raises(ExpDiffInputError, match="is for 7 vertices"):
        ExpDiffPipeline.from_pretrained(folder, device="cpu")


def test_a_support_on_a_model_without_a_change_codec_is_refused(tmp_path):
    folder = tiny_pipeline_folder(tmp_path / "m")
    config = ExpDiffPipeline.from_pretrained(folder, device="cpu").config
    tiny_support(config, template_mesh().n_vertices).save_pretrained(folder / "support")
    with pytest.raises(ExpDiffInputError, match="restricts the changes of a change model"):
        ExpDiffPipeline.from_pretrained(folder, device="cpu")
