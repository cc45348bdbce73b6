"""A tiny, untrained ExpDiff pipeline on our template: exercises every stage in seconds."""

from __future__ import annotations

import pytest

from expdiff_core.pipelines.expdiff import ExpDiffPipeline

from ..helpers.tiny_models import KINDS, RESOLUTION, neutral_textures, tiny_pipeline_folder  # noqa: F401 (re-exported)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    return ExpDiffPipeline.from_pretrained(tiny_model, device="cpu")


@pytest.fixture(scope="session")
def tiny_residual_pipeline(tmp_path_factory):
    folder = tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-residual"), target="residual")
    return ExpDiffPipeline.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="session")
def tiny_change_model(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-change"), target="change")


@pytest.fixture(scope="session", params=["vae", "patch"])
def tiny_change_pipeline(request, tiny_change_model, tmp_path_factory):
    """A change pipeline with a learned (AutoencoderKL) change codec, then with the linear patch codec."""
    if request.param == "vae":
        return ExpDiffPipeline.from_pretrained(tiny_change_model, device="cpu")
    folder = tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-patch"), target="change", change_codec="patch")
    return ExpDiffPipeline.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="session")
def tiny_prior_model(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-prior"), target="residual", prior=True)


@pytest.fixture(scope="session")
def tiny_prior_pipeline(tiny_prior_model):
    return ExpDiffPipeline.from_pretrained(tiny_prior_model, device="cpu")


@pytest.fixture(scope="session")
def tiny_map_prior_model(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-map-prior"), target="residual", map_prior=True)


@pytest.fixture(scope="session")
def tiny_map_prior_pipeline(tiny_map_prior_model):
    return ExpDiffPipeline.from_pretrained(tiny_map_prior_model, device="cpu")


@pytest.fixture(scope="session")
def tiny_linear_prior_model(tmp_path_factory):
    """A change model with the linear patch codec and a prior (vertex and map parts, no latent part)."""
    return tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-linear-prior"), target="change",
                                change_codec="patch", map_prior=True)


@pytest.fixture(scope="session")
def tiny_support_model(tmp_path_factory):
    """A change model (linear patch codec) with an expression support (``tiny_support``)."""
    return tiny_pipeline_folder(tmp_path_factory.mktemp("tiny-expdiff-support"), target="change", change_codec="patch",
                                support=True)
