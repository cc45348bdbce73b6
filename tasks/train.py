"""Training tasks: train the latent codec, encode latents, train the denoiser, assemble, sample, register.

Every step publishes a new folder (trainers refuse an existing one; diffusion resumes its own), so none is
served from the cache. Training steps carry the ``gpu`` tag: one GPU trains or samples one thing at a time.
With ``register`` the trainers track their run in MLflow and register their model (alias candidate).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

from prefect import task

from expdiff_core.models.denoiser import denoiser_config
from expdiff_core.models.vae import LatentCodec, offline_vae_config
from expdiff_core.training import tracking
from expdiff_core.training.assemble import assemble_pipeline
from expdiff_core.training.diffusion import train_diffusion
from expdiff_core.training.diffusion_config import DiffusionTrainConfig
from expdiff_core.training.encode import encode_dataset
from expdiff_core.training.latents import read_manifest
from expdiff_core.training.samples import render_sample_sheet
from expdiff_core.training.vae import VAETrainConfig, train_vae_on_dataset

from . import artifacts
from .common import GPU_TAG, NOT_CACHED, RESULT_SERIALIZER, run_settings


def _version(tracked: tracking.TrackedTraining | None) -> dict[str, Any] | None:
    if tracked is None:
        return None
    ref = tracked.model_version
    return {"name": ref.name, "version": ref.version, "uri": ref.uri, "run_id": tracked.run_id,
            "experiment_id": tracked.experiment_id}


@task(name="train-vae", tags=[GPU_TAG], **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def train_vae(dataset: str, out: str, steps: int, batch_size: int, widths: Sequence[int], crop_size: int | None,
              learning_rate: float, seed: int, held_out_maps: int | None, device: str, register: bool,
              config_file: str | None = None) -> dict[str, Any]:
    """``train_vae_tracked`` (or ``train_vae_on_dataset`` without ``register``): a new codec folder ``out``.

    Returns {"path", "held_out" (PSNR dB per kind), "model_version" (or None)}.
    """
    settings = run_settings(config_file)
    config = VAETrainConfig(steps=steps, batch_size=batch_size, crop_size=crop_size, learning_rate=learning_rate,
                            seed=seed, device=device, held_out_max_maps=held_out_maps,
                            model=offline_vae_config(block_out_channels=list(widths),
                                                     norm_num_groups=math.gcd(32, *widths)))
    cache = settings.cache_path / "uv_raster"
    tracked = None
    if register:
        tracked = tracking.train_vae_tracked(settings, dataset, out, config, cache_dir=cache)
        folder = tracked.folder
    else:
        folder = train_vae_on_dataset(dataset, out, config, cache_dir=cache)
    held_out = json.loads((Path(folder) / "metrics.json").read_text())["held_out"]
    return {"path": str(Path(folder).resolve()), "held_out": {k: v["psnr_db"] for k, v in held_out.items()},
            "model_version": _version(tracked)}


@task(name="encode-latents", tags=[GPU_TAG], **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def encode_latents(dataset: str, vae: str, out: str, device: str, config_file: str | None = None) -> str:
    """``encode_dataset`` of the train split with the codec at ``vae``; resumes a partial ``out``."""
    settings = run_settings(config_file)
    codec = LatentCodec.from_pretrained(vae, device=device)
    return str(encode_dataset(dataset, codec, out, cache_dir=settings.cache_path / "uv_raster", splits=("train",),
                              progress=True).resolve())


@task(name="train-diffusion", tags=[GPU_TAG], **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def train_denoiser(latents: str, out: str, steps: int, preset: str, model_overrides: dict[str, Any] | None,
                   train_overrides: dict[str, Any] | None, seed: int, device: str, register: bool,
                   progress_key: str, config_file: str | None = None) -> dict[str, Any]:
    """``train_diffusion_tracked`` (or ``train_diffusion`` without ``register``) with a progress artifact.

    preset / model_overrides: the denoiser's size preset and config overrides. train_overrides: further
    ``DiffusionTrainConfig`` fields. Returns {"path" (the run folder), "model", "step", "final_loss",
    "seconds", "model_version" (or None)}.
    """
    settings = run_settings(config_file)
    manifest = read_manifest(latents)
    model_config = denoiser_config(manifest.kinds, len(manifest.udims), manifest.latent_shape[0],
                                   manifest.latent_shape[1:], preset, **(model_overrides or {}))
    config = dataclasses.replace(DiffusionTrainConfig(steps=steps, seed=seed, device=device),
                                 **(train_overrides or {}))
    progress = artifacts.ProgressReporter(progress_key, description="denoiser training: steps done")

    def report(log: Any) -> None:
        progress.update(log.step, log.total_steps, description=f"denoiser training: step {log.step}/"
                        f"{log.total_steps}, loss {log.loss:.4f}")

    tracked = None
    if register:
        result, tracked = tracking.train_diffusion_tracked(settings, latents, out, model_config, config,
                                                           on_step=report)
    else:
        result = train_diffusion(latents, out, model_config, config, on_step=report)
    return {"path": str(Path(out).resolve()), "model": str(result.model_dir.resolve()), "step": result.step,
            "final_loss": result.losses[-1] if result.losses else None, "seconds": result.seconds,
            "model_version": _version(tracked)}


@task(name="assemble-pipeline", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def assemble(dataset: str, vae: str, diffusion_run: str, out: str, name: str, steps: int) -> str:
    """``assemble_pipeline``: a new pipeline folder from the trained codec and denoiser."""
    return str(assemble_pipeline(dataset, vae, diffusion_run, out, name=name, steps=steps).resolve())


@task(name="sample-contact-sheet", tags=[GPU_TAG], **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def sample_sheet(pipeline: str, dataset: str, out: str, expressions: list[str] | None, seed: int,
                 steps: int | None, device: str) -> str:
    """``render_sample_sheet``: generated vs true expressions of a held-out subject, as a PNG."""
    return str(render_sample_sheet(pipeline, dataset, out, expressions=expressions, seed=seed, steps=steps,
                                   device=device))


@task(name="register-pipeline", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def register_pipeline(pipeline: str, images: list[str], params: dict[str, Any], metrics: dict[str, Any],
             registered_name: str, config_file: str | None = None) -> dict[str, Any]:
    """``register_pipeline``: a new version of ``registered_name`` with alias candidate."""
    tracked = tracking.register_pipeline(run_settings(config_file), pipeline, images=images, params=params,
                                         metrics=metrics, registered_name=registered_name)
    return _version(tracked)
