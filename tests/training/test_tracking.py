"""MLflow tracking of training runs, against a real SQLite-backed MLflow under the test's state folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from expdiff_core.config import load_settings
from expdiff_core.models.denoiser import ExpDiffDenoiser
from expdiff_core.models.vae import LatentCodec
from expdiff_core.registry import resolve_model, resolve_version
from expdiff_core.render.contact_sheet import write_contact_sheet
from expdiff_core.training.diffusion_config import DiffusionTrainConfig
from expdiff_core.training.tracking import (DENOISER_MODEL, VAE_MODEL, log_training_run, mlflow_step_logger,
                                            numeric_metrics, train_diffusion_tracked, train_vae_tracked)
from expdiff_core.training.vae import VAETrainConfig

from ..helpers.tiny_training import TINY_DENOISER, TINY_VAE, encode_tiny, tiny_codec_folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def latents(make_tiny_dataset, tmp_path):
    """A real tiny dataset (32^2 maps -> 4x4 latents) encoded by an untrained tiny codec."""
    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    return encode_tiny(dataset, tiny_codec_folder(tmp_path / "codec"), tmp_path / "latents")


def diffusion_config(steps: int = 6) -> DiffusionTrainConfig:
    return DiffusionTrainConfig(steps=steps, batch_size=2, warmup_steps=1, checkpoint_every=3, seed=0,
                                lr_schedule="constant_with_warmup", device="cpu")


def sample_image(path):
    """A small real contact sheet (two flat colour cells) standing in for rendered samples."""
    cells = [np.full((16, 16, 3), value, np.float32) for value in (0.2, 0.7)]
    return write_contact_sheet(path, cells, ["a", "b"])


def test_diffusion_run_is_tracked_and_registered_as_a_loadable_candidate(latents, tmp_path):
    import mlflow

    settings = load_settings()
    sheet = sample_image(tmp_path / "samples.png")
    result, tracked = train_diffusion_tracked(settings, latents, tmp_path / "run", TINY_DENOISER,
                                              diffusion_config(), log_every=2, images=[sheet], progress=False)
    client = mlflow.MlflowClient()
    run = client.get_run(tracked.run_id)
    assert run.data.params["train.steps"] == "6" and run.data.params["model.width"] == "32"
    assert run.data.tags["expdiff.kind"] == "diffusion"
    # First, every 2nd and the last step.
    history = client.get_metric_history(tracked.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 4, 6]
    assert history[-1].value == pytest.approx(result.losses[-1])
    assert {m.key for m in client.get_metric_history(tracked.run_id, "grad_norm")} == {"grad_norm"}
    assert run.data.metrics["final_loss"] == pytest.approx(result.losses[-1])
    assert [a.path for a in client.list_artifacts(tracked.run_id, "samples")] == ["samples/samples.png"]

    version = resolve_version(settings, f"models:/{DENOISER_MODEL}@candidate")
    assert (version.version, version.run_id) == (tracked.model_version.version, tracked.run_id)
    folder = resolve_model(settings, f"models:/{DENOISER_MODEL}@candidate", tmp_path / "resolved")
    loaded = ExpDiffDenoiser.from_pretrained(folder)
    published = ExpDiffDenoiser.from_pretrained(result.model_dir)
    for a, b in zip(loaded.state_dict().values(), published.state_dict().values()):
        assert torch.equal(a, b)


def test_a_second_registration_is_a_new_version_and_takes_the_candidate_alias(latents, tmp_path):
    settings = load_settings()
    _, first = train_diffusion_tracked(settings, latents, tmp_path / "a", TINY_DENOISER, diffusion_config(2),
                                       progress=False)
    _, second = train_diffusion_tracked(settings, latents, tmp_path / "b", TINY_DENOISER, diffusion_config(2),
                                        progress=False)
    assert int(second.model_version.version) == int(first.model_version.version) + 1
    assert resolve_version(settings, f"models:/{DENOISER_MODEL}@candidate").version == second.model_version.version


def test_vae_run_logs_held_out_psnr_per_kind_and_registers_the_codec(make_tiny_dataset, tmp_path):
    import mlflow

    settings = load_settings()
    dataset = make_tiny_dataset(tmp_path / "data", resolution=32)
    config = VAETrainConfig(steps=3, batch_size=2, device="cpu", held_out_max_maps=15, model=dict(TINY_VAE))
    tracked = train_vae_tracked(settings, dataset, tmp_path / "vae", config, log_every=1, show_progress=False)
    run = mlflow.MlflowClient().get_run(tracked.run_id)
    recorded = json.loads((tracked.folder / "metrics.json").read_text())
    for kind, row in recorded["held_out"].items():
        assert run.data.metrics[f"held_out/{kind}/psnr_db"] == pytest.approx(row["psnr_db"])
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(tracked.run_id, "loss")] == [1, 2, 3]
    assert run.data.params["train.model.block_out_channels"] == "[8, 8, 16, 16]"
    codec = LatentCodec.from_pretrained(resolve_model(settings, f"models:/{VAE_MODEL}@candidate"), device="cpu")
    assert codec.scaling_factor == pytest.approx(recorded["scaling_factor"])


def test_log_training_run_outside_a_run_opens_one_and_refuses_a_pickle_folder(tmp_path):
    from expdiff_core.errors import UnsafeModelFileError

    settings = load_settings()
    folder = tmp_path / "model"
    ExpDiffDenoiser(kinds=["position"], n_udims=1, latent_channels=4, latent_size=[4, 4],
                    **TINY_DENOISER).save_pretrained(folder)
    ref = log_training_run(settings, "training", "diffusion", {"a": {"b": 1}}, {"loss": 0.5, "note": "x"},
                           folder, "expdiff-test")
    import mlflow

    run = mlflow.MlflowClient().get_run(ref.run_id)
    assert run.data.params == {"a.b": "1"} and run.data.metrics == {"loss": 0.5}
    (folder / "weights.bin").write_bytes(b"not safetensors")
    with pytest.raises(UnsafeModelFileError, match="pickle"):
        log_training_run(settings, "training", "diffusion", {}, {}, folder, "expdiff-test")


def test_step_logger_needs_an_active_run():
    with pytest.raises(RuntimeError, match="active run"):
        mlflow_step_logger()


def test_numeric_metrics_keep_finite_numbers_only():
    assert numeric_metrics({"a": {"b": 1, "c": float("nan")}, "d": True, "e": "x", "f": 2.5}) == {"a/b": 1.0, "f": 2.5}
