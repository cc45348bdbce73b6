"""The ``train`` flow under the Prefect test harness: a tiny dataset through every stage to an MLflow candidate."""

from __future__ import annotations

import pytest

from expdiff_core.config import load_settings
from expdiff_core.pipelines.expdiff import ExpDiffPipeline
from expdiff_core.registry import resolve_model, resolve_version

from ..helpers.tiny_training import TINY_DENOISER
from .conftest import flow_run_id, run_artifacts, task_states

# The harness takes ~30-60 s to start on the shared 2 cores; the flow itself ~30 s.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY = dict(vae_steps=2, diffusion_steps=3, vae_widths=[8, 8, 16, 16], vae_batch_size=2, vae_held_out_maps=6,
            denoiser_config=TINY_DENOISER,
            diffusion_config={"batch_size": 2, "warmup_steps": 1, "checkpoint_every": 3,
                              "lr_schedule": "constant_with_warmup"},
            sampling_steps=2, sample_expressions=["jawOpen"], device="cpu")


def test_train_flow_trains_assembles_samples_and_registers_candidates(prefect_harness, make_tiny_dataset, tmp_path):
    from flows.train import train

    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    out = tmp_path / "tiny_run"
    state = train(dataset=str(dataset), out=str(out), **TINY, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    run = flow_run_id(state)
    assert task_states(run) == {name: "Completed" for name in (
        "validate-dataset", "train-vae", "encode-latents", "train-diffusion", "assemble-pipeline",
        "sample-contact-sheet", "register-pipeline")}
    settings = load_settings()
    for kind, name in (("vae", "expdiff-vae"), ("denoiser", "expdiff-denoiser"), ("pipeline", "expdiff")):
        version = resolve_version(settings, f"models:/{name}@candidate")
        assert (version.version, version.run_id) == (result["versions"][kind]["version"],
                                                     result["versions"][kind]["run_id"])
    pipe = ExpDiffPipeline.from_pretrained(resolve_model(settings, "models:/expdiff@candidate"), device="cpu")
    assert pipe.config.steps == 2 and pipe.config.resolution == 32
    assert (out / "samples.png").is_file() and result["contact_sheet"] == str(out / "samples.png")

    found = run_artifacts(run)
    summary = found["train-tiny-run-summary"].data
    for needle in ("# Training tiny_run", "expdiff version 1 (alias candidate", "3 steps, final loss"):
        assert needle in summary
    assert found["train-tiny-run-progress"].type == "progress"
    assert found["train-tiny-run-diffusion-progress"].type == "progress"
    assert "train-tiny-run-samples" in found


def test_train_flow_fails_on_an_invalid_dataset_naming_the_file(prefect_harness, tmp_path):
    from flows.train import train

    (tmp_path / "broken").mkdir()
    state = train(dataset=str(tmp_path / "broken"), out=str(tmp_path / "run"), **TINY, return_state=True)
    assert state.is_failed()
    assert "manifest.json" in str(state.result(raise_on_failure=False))
    assert not (tmp_path / "run").exists()
