"""``expdiff train ... --mlflow/--no-mlflow`` and ``expdiff models assemble --register`` against a real
SQLite-backed MLflow in the test's state folder."""

from __future__ import annotations

import json

import pytest

from expdiff_core.cli import main
from expdiff_core.config import load_settings
from expdiff_core.pipelines.expdiff import ExpDiffPipeline
from expdiff_core.registry import resolve_model, resolve_version

from ..helpers.tiny_training import TINY_DENOISER, encode_tiny, tiny_codec_folder


pytestmark = pytest.mark.usefixtures("one_thread")


def diffusion_flags(latents, out, model_config) -> list[str]:
    return ["train", "diffusion", "--latents", str(latents), "--out", str(out), "--model-config", str(model_config),
            "--steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--checkpoint-every", "2",
            "--device", "cpu", "--no-progress"]


@pytest.fixture
def inputs(make_tiny_dataset, tmp_path):
    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    vae = tiny_codec_folder(tmp_path / "vae")
    config = tmp_path / "denoiser.json"
    config.write_text(json.dumps(TINY_DENOISER))
    return dataset, vae, encode_tiny(dataset, vae, tmp_path / "latents"), config


def test_train_diffusion_no_mlflow_touches_no_tracking_store(inputs, tmp_path, capsys):
    _, _, latents, config = inputs
    assert main([*diffusion_flags(latents, tmp_path / "run", config), "--no-mlflow"]) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert "registered" not in capsys.readouterr().out
    assert not (load_settings().state_path / "mlflow.db").exists()


def test_train_diffusion_then_assemble_register_gives_candidates_with_a_sample_sheet(inputs, tmp_path, capsys):
    import mlflow

    dataset, vae, latents, config = inputs
    assert main(diffusion_flags(latents, tmp_path / "run", config)) == 0
    assert "registered expdiff-denoiser version 1 (alias candidate)" in capsys.readouterr().out
    assert main(["models", "assemble", "--dataset", str(dataset), "--vae", str(vae), "--diffusion",
                 str(tmp_path / "run"), "--out", str(tmp_path / "pipeline"), "--steps", "2", "--register",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "registered expdiff version 1 (alias candidate)" in printed
    assert (tmp_path / "pipeline-samples.png").is_file()
    settings = load_settings()
    version = resolve_version(settings, "models:/expdiff@candidate")
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(version.run_id, "samples")]
    assert artifacts == ["samples/pipeline-samples.png"]
    pipe = ExpDiffPipeline.from_pretrained(resolve_model(settings, "models:/expdiff@candidate"), device="cpu")
    assert pipe.config.steps == 2


def test_a_residual_denoiser_trains_assembles_and_says_so_in_its_model_card(inputs, tmp_path):
    dataset, vae, latents, config = inputs
    assert main([*diffusion_flags(latents, tmp_path / "run", config), "--target", "residual", "--no-mlflow"]) == 0
    assert main(["models", "assemble", "--dataset", str(dataset), "--vae", str(vae), "--diffusion",
                 str(tmp_path / "run"), "--out", str(tmp_path / "pipeline"), "--steps", "2", "--no-samples"]) == 0
    pipe = ExpDiffPipeline.from_pretrained(tmp_path / "pipeline", device="cpu")
    assert pipe.denoiser.config.target == "residual" and len(pipe.denoiser.config.residual_scale) == pipe.denoiser.n_maps
    assert "diffuses the residual latents" in (tmp_path / "pipeline" / "README.md").read_text()
