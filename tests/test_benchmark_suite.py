"""The benchmark suite measures every pipeline the project can ship (it once stopped at the bundled subspace
denoiser's first forward). Figures are not checked here -- timing belongs to the suite -- only that each
measurement runs on each denoiser class and reports what the README table quotes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from expdiff_core.pipelines.expdiff import ExpDiffPipeline

from .helpers.tiny_models import tiny_pipeline_folder

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("benchmark_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=[dict(), dict(target="change", change_codec="patch", denoiser="subspace")],
                ids=["transformer", "subspace"])
def pipe(request, tmp_path_factory):
    folder = tiny_pipeline_folder(tmp_path_factory.mktemp("suite-model"), **request.param)
    return ExpDiffPipeline.from_pretrained(folder, device="cpu")


def test_denoiser_figures_count_flops_and_throughput(suite, pipe, one_thread):
    figures = suite.denoiser_figures(pipe, batch=4, repeats=1)
    assert figures["flops_per_forward"] > 0 and figures["expressions_per_s"] > 0
    # a transformer's throughput is in patch tokens; the subspace denoiser's sample is one vector per expression
    assert (figures["tokens_per_s"] is not None) == (figures["denoiser"] == "ExpDiffDenoiser")


def test_batched_and_one_at_a_time_sampling_are_both_timed(suite, pipe, one_thread):
    figures = suite.batched_vs_single(pipe, n_expressions=3, steps=1)
    assert figures["expressions"] == 3 and figures["speedup"] > 0


def test_decode_is_timed_against_diffusion(suite, pipe, one_thread):
    figures = suite.decode_vs_diffuse(pipe, n_expressions=2, steps=1)
    assert figures["diffuse_s"] > 0 and figures["decode_s"] > 0


def test_codec_figures_decode_with_the_codec_the_build_uses(suite, pipe, one_thread):
    figures = suite.codec_figures(pipe, maps=len(pipe.config.kinds) * len(pipe.config.udims), repeats=1)
    assert figures["encode_maps_per_s"] > 0 and figures["decode_maps_per_s"] > 0
