"""``train`` flow: dataset -> latent codec -> latents -> denoiser -> pipeline -> samples -> MLflow candidate.

Folders under ``out`` (which must not exist): ``vae/``, ``latents/``, ``diffusion/`` (run with checkpoints),
``pipeline/`` and ``samples.png``. With ``register_in_mlflow`` the codec, the denoiser and the assembled pipeline are
each tracked in MLflow and registered as new versions of ``expdiff-vae``, ``expdiff-denoiser`` and
``expdiff`` (alias ``candidate``); ``expdiff models promote expdiff N`` makes one the nightly ``champion``.

Artifacts: ``train-<name>-summary`` (folders, versions, figures, timings), ``train-<name>-progress`` (stages),
``train-<name>-diffusion-progress`` (denoiser steps), ``train-<name>-samples`` (contact sheet) and, with an
MLflow tracking server, ``train-<name>-mlflow-run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.training.tracking import PIPELINE_MODEL
from tasks import artifacts
from tasks.common import StageTimer, artifacts_path, bind_result_storage, run_settings
from tasks.dataset import validate_dataset
from tasks.train import assemble, encode_latents, register_pipeline, sample_sheet, train_denoiser, train_vae

STAGES = ("validate", "train vae", "encode", "train diffusion", "assemble", "samples", "register")


@flow(name="train", description="Train ExpDiff end to end on a dataset: latent codec, latents, denoiser, "
      "pipeline, sample contact sheet; register the versions in MLflow with alias candidate.")
def train(dataset: str, out: str, vae_steps: int = 2000, diffusion_steps: int = 3000,
          vae_widths: list[int] | None = None, vae_batch_size: int = 8, vae_crop: int | None = None,
          vae_learning_rate: float = 1e-3, vae_held_out_maps: int | None = 512,
          denoiser_preset: str = "offline", denoiser_config: dict[str, Any] | None = None,
          diffusion_config: dict[str, Any] | None = None, sampling_steps: int = 30,
          sample_expressions: list[str] | None = None, seed: int = 0, device: str | None = None,
          register_in_mlflow: bool = True, registered_name: str = PIPELINE_MODEL,
          config_file: str | None = None) -> dict:
    """dataset: a dataset folder (``expdiff data``). out: new folder for everything this run makes.
    vae_widths: the codec's four block widths (default 32,64,128,128). vae_crop: train the codec on random
    crops of this size (default whole maps). denoiser_preset / denoiser_config: the denoiser's size preset
    and config overrides (e.g. {"width": 64}). diffusion_config: DiffusionTrainConfig fields (batch_size,
    learning_rate, checkpoint_every, ...). sampling_steps: the pipeline's default sampler steps, also used for
    the samples. sample_expressions: expressions on the contact sheet (default a few of the dataset's).
    register_in_mlflow: track in MLflow and register (alias candidate); registered_name: the pipeline's name.
    config_file: ExpDiff settings TOML (default $EXPDIFF_CONFIG / EXPDIFF_* env of the worker)."""
    settings = run_settings(config_file)
    device = device or settings.device
    root = Path(out)
    if root.exists():
        raise ExpDiffInputError(root, "output folder already exists; trained models are never overwritten")
    name = root.name
    check, vae_, encode_, diffuse_, assemble_, sheet_, register_ = bind_result_storage(
        settings, validate_dataset, train_vae, encode_latents, train_denoiser, assemble, sample_sheet,
        register_pipeline)
    progress = artifacts.ProgressReporter(artifacts.artifact_key("train", name, "progress"),
                                          description=f"train {name}: stages done")
    timer = StageTimer()

    def advance(stage: str) -> None:
        progress.update(STAGES.index(stage) + 1, len(STAGES), description=f"train {name}: {stage} done")

    with timer.stage("validate"):
        figures = check(dataset, check_pixels=False)
    advance("validate")
    with timer.stage("train vae"):
        vae = vae_(figures["path"], str(root / "vae"), vae_steps, vae_batch_size, vae_widths or [32, 64, 128, 128],
                   vae_crop, vae_learning_rate, seed, vae_held_out_maps, device, register_in_mlflow, config_file)
    advance("train vae")
    with timer.stage("encode"):
        latents = encode_(figures["path"], vae["path"], str(root / "latents"), device, config_file)
    advance("encode")
    with timer.stage("train diffusion"):
        denoiser = diffuse_(latents, str(root / "diffusion"), diffusion_steps, denoiser_preset, denoiser_config,
                            diffusion_config, seed, device, register_in_mlflow,
                            artifacts.artifact_key("train", name, "diffusion-progress"), config_file)
    advance("train diffusion")
    with timer.stage("assemble"):
        pipeline = assemble_(figures["path"], vae["path"], denoiser["path"], str(root / "pipeline"),
                             f"expdiff-{name}", sampling_steps)
    advance("assemble")
    with timer.stage("samples"):
        sheet = sheet_(pipeline, figures["path"], str(root / "samples.png"), sample_expressions, seed,
                       sampling_steps, device)
    advance("samples")

    version = None
    if register_in_mlflow:
        with timer.stage("register"):
            version = register_(
                pipeline, [sheet],
                {"dataset": figures["path"], "seed": seed, "vae_steps": vae_steps, "diffusion_steps": diffusion_steps,
                 "vae_version": vae["model_version"]["uri"], "denoiser_version": denoiser["model_version"]["uri"]},
                {"vae_held_out_psnr_db": vae["held_out"], "diffusion_final_loss": denoiser["final_loss"]},
                registered_name, config_file)
        artifacts.mlflow_link(settings.tracking_uri, version["experiment_id"], version["run_id"],
                              artifacts.artifact_key("train", name, "mlflow-run"),
                              description=f"MLflow run registering {registered_name} version {version['version']}")
    advance("register")

    # A copy under the artifact server's folder, so the run page can show it when that server runs.
    shown = artifacts_path(settings) / "training" / f"{name}-samples.png"
    shown.parent.mkdir(parents=True, exist_ok=True)
    shown.write_bytes(Path(sheet).read_bytes())
    artifacts.image_artifact(shown, settings, artifacts.artifact_key("train", name, "samples"),
                             description=f"train {name}: generated vs true expressions of a held-out subject",
                             mlflow_run_id=version["run_id"] if version else None,
                             mlflow_artifact_path=f"samples/{Path(sheet).name}" if version else None)
    versions = {"vae": vae["model_version"], "denoiser": denoiser["model_version"], "pipeline": version}
    artifacts.markdown_summary(
        f"Training {name}",
        {"dataset": figures["path"], "output": str(root.resolve()), "seed": seed, "device": device,
         "codec held-out PSNR (dB)": ", ".join(f"{k} {v:.2f}" for k, v in vae["held_out"].items()),
         "denoiser": f"{denoiser['step']} steps, final loss {denoiser['final_loss']:.4g}"
         if denoiser["final_loss"] is not None else f"{denoiser['step']} steps",
         "pipeline": pipeline, "contact sheet": sheet,
         **{f"{kind} model": f"{v['name']} version {v['version']} (alias candidate, MLflow run {v['run_id']})"
            for kind, v in versions.items() if v},
         **{f"{stage} (s)": seconds for stage, seconds in timer.seconds.items()}},
        key=artifacts.artifact_key("train", name, "summary"), description=f"training {name}",
        notes=[] if register_in_mlflow else ["not registered in MLflow (register_in_mlflow=False)"])
    return {"pipeline": pipeline, "vae": vae["path"], "latents": latents, "diffusion": denoiser["path"],
            "contact_sheet": sheet, "versions": versions, "seconds": timer.seconds}
