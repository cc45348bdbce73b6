"""MLflow tracking of training runs: per-step losses, params, final metrics, sample images, registration.

A training command opens a run (``registry.tracked_run``), trains with ``mlflow_step_logger`` (diffusion) or
``mlflow_progress_logger`` (VAE) feeding the run's metric history, then ``log_training_run`` logs params,
final metrics and images and registers the model folder as a new version (alias ``candidate``).
``train_vae_tracked`` and ``train_diffusion_tracked`` do all of it for the two trainers; the CLI and the
``train`` flow call them. Multi-process training logs from the main process only (``on_step`` runs there).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..config import Settings
from ..registry import CANDIDATE, ModelVersionRef, configured_mlflow, register_model_folder, tracked_run

TRAINING_EXPERIMENT = "training"
VAE_MODEL = "expdiff-vae"
DENOISER_MODEL = "expdiff-denoiser"
PIPELINE_MODEL = "expdiff"
KIND_TAG = "expdiff.kind"
IMAGES_PATH = "samples"


@dataclass(frozen=True)
class TrackedTraining:
    """A finished training run: its model folder, MLflow run and the registered version (alias candidate)."""

    folder: Path
    model_version: ModelVersionRef
    experiment_id: str
    run_id: str


def flatten(values: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings -> one level, keys joined with ``sep`` (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def numeric_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested mapping as MLflow metrics (``held_out/albedo/psnr_db``); others dropped."""
    out = {}
    for name, value in flatten(values, prefix, sep="/").items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _active_mlflow():
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("MLflow step logging needs an active run (registry.tracked_run)")
    return mlflow


def _should_log(step: int, total: int, every: int) -> bool:
    return step == 1 or step % every == 0 or step == total


def mlflow_step_logger(every: int = 10) -> Callable[[Any], None]:
    """An ``on_step`` callback for ``train_diffusion``: logs ``loss``, ``lr`` and ``grad_norm`` of every
    ``every``-th step (and the first and last) into the active MLflow run, at that step."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    mlflow = _active_mlflow()

    def on_step(log: Any) -> None:
        if _should_log(log.step, log.total_steps, every):
            mlflow.log_metrics(numeric_metrics({"loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm}),
                               step=log.step)

    return on_step


def mlflow_progress_logger(every: int = 10) -> Callable[[int, int, dict[str, float]], None]:
    """A ``progress(step, steps, values)`` callback for ``train_vae``: logs ``values`` (loss, l1, kl) of every
    ``every``-th step (and the first and last) into the active MLflow run."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    mlflow = _active_mlflow()

    def progress(step: int, steps: int, values: dict[str, float]) -> None:
        if _should_log(step, steps, every):
            mlflow.log_metrics(numeric_metrics(values), step=step)

    return progress


def log_training_run(settings: Settings, experiment: str, kind: str, params: Mapping[str, Any],
                     metrics: Mapping[str, Any], model_folder: str | os.PathLike, registered_name: str,
                     images: Iterable[str | os.PathLike] = (), *, run_name: str | None = None,
                     files: Iterable[str | os.PathLike] = (), alias: str = CANDIDATE) -> ModelVersionRef:
    """Log a finished training to MLflow and register ``model_folder`` as a new version of ``registered_name``.

    Logs into the active run when there is one (so a step logger's history stays with it), else in a new
    run of ``experiment``. params: nested values, flattened to ``a.b`` keys. metrics: finite numbers of a
    nested mapping, flattened to ``a/b``. images: PNG/JPEG files logged under ``samples/``. files: other
    artifacts (logs, metrics.json). The new version gets ``alias`` (default ``candidate``).
    """
    mlflow = configured_mlflow(settings)
    if mlflow.active_run() is None:
        with tracked_run(settings, experiment, run_name=run_name or f"{kind} {Path(model_folder).name}",
                         tags={KIND_TAG: kind}):
            return log_training_run(settings, experiment, kind, params, metrics, model_folder, registered_name,
                                    images, files=files, alias=alias)
    mlflow.set_tag(KIND_TAG, kind)
    flat = {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str)
            for k, v in flatten(params).items()}
    if flat:
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
    scalar = numeric_metrics(metrics)
    if scalar:
        mlflow.log_metrics(scalar)
    for image in images:
        mlflow.log_artifact(str(image), artifact_path=IMAGES_PATH)
    for path in files:
        mlflow.log_artifact(str(path))
    return register_model_folder(settings, model_folder, registered_name, alias=alias, tags={KIND_TAG: kind})


def _run_ids(run: Any) -> tuple[str, str]:
    return run.info.experiment_id, run.info.run_id


def train_vae_tracked(settings: Settings, dataset_root: str | os.PathLike, out: str | os.PathLike, config: Any, *,
                      registered_name: str = VAE_MODEL, experiment: str = TRAINING_EXPERIMENT,
                      log_every: int = 10, run_name: str | None = None, images: Sequence[str | os.PathLike] = (),
                      cache_dir: str | os.PathLike | None = None, show_progress: bool = True) -> TrackedTraining:
    """``train_vae_on_dataset`` inside an MLflow run: loss history, params (the VAETrainConfig ``config``),
    held-out metrics, and the codec registered as a new version of ``registered_name`` (alias candidate)."""
    from ..errors import ExpDiffInputError
    from .vae import train_vae_on_dataset

    out = Path(out)
    if out.exists():  # refused before an MLflow run is opened, so a refusal leaves no failed run behind
        raise ExpDiffInputError(out, "output folder already exists; trained models are never overwritten")
    with tracked_run(settings, experiment, run_name=run_name or f"vae {out.name}", tags={KIND_TAG: "vae"}) as run:
        folder = train_vae_on_dataset(dataset_root, out, config, cache_dir=cache_dir,
                                      progress=mlflow_progress_logger(log_every), show_progress=show_progress)
        recorded = json.loads((folder / "metrics.json").read_text())
        metrics = {k: v for k, v in recorded.items() if k not in ("config", "data", "loss_curve")}
        params = {"dataset": str(Path(dataset_root).resolve()), "train": dataclasses.asdict(config),
                  "data": {k: v for k, v in recorded["data"].items() if k != "dataset"}}
        ref = log_training_run(settings, experiment, "vae", params, metrics, folder, registered_name, images)
    return TrackedTraining(folder, ref, *_run_ids(run))


def diffusion_metrics(result: Any) -> dict[str, float]:
    """Final figures of a ``TrainResult``: last loss, mean loss of the last tenth, steps, seconds, processes."""
    tail = result.losses[-max(1, len(result.losses) // 10):] if result.losses else []
    figures = {"step": result.step, "start_step": result.start_step, "seconds": result.seconds,
               "num_processes": result.num_processes}
    if tail:
        figures.update(final_loss=result.losses[-1], final_loss_mean=sum(tail) / len(tail))
    return numeric_metrics(figures)


def train_diffusion_tracked(settings: Settings, latents_root: str | os.PathLike, out_dir: str | os.PathLike,
                            model_config: Mapping[str, Any] | None = None, train_config: Any = None, *,
                            text_encoder: Any = None, registered_name: str = DENOISER_MODEL,
                            experiment: str = TRAINING_EXPERIMENT, log_every: int = 10, run_name: str | None = None,
                            images: Sequence[str | os.PathLike] = (), progress: bool = True,
                            on_step: Callable[[Any], None] | None = None) -> tuple[Any, TrackedTraining]:
    """``train_diffusion`` (resuming as it does) inside an MLflow run: loss/lr/grad_norm history, params
    (model and training config as the run records them in training.json), final figures, train_log.jsonl,
    and the EMA denoiser (``out_dir/model``) registered as a new version of ``registered_name``.

    on_step: a further ``StepLog`` callback (a progress report), called after the MLflow logger.
    Returns (TrainResult, TrackedTraining). Single process only; under torchrun log from rank 0 yourself.
    """
    from .diffusion import train_diffusion

    out_dir = Path(out_dir)
    with tracked_run(settings, experiment, run_name=run_name or f"diffusion {out_dir.name}",
                     tags={KIND_TAG: "diffusion"}) as run:
        log_step = mlflow_step_logger(log_every)

        def each_step(log: Any) -> None:
            log_step(log)
            if on_step is not None:
                on_step(log)

        result = train_diffusion(latents_root, out_dir, model_config, train_config, text_encoder=text_encoder,
                                 on_step=each_step, progress=progress)
        recorded = json.loads((out_dir / "training.json").read_text())
        params = {"latents": str(Path(latents_root).resolve()), "model": recorded.get("model_config", {}),
                  "train": recorded.get("train_config", {})}
        files = [p for p in (result.log_path,) if Path(p).is_file()]
        ref = log_training_run(settings, experiment, "diffusion", params, diffusion_metrics(result),
                               result.model_dir, registered_name, images, files=files)
    return result, TrackedTraining(result.model_dir, ref, *_run_ids(run))


def register_pipeline(settings: Settings, pipeline_dir: str | os.PathLike, *, images: Sequence[str | os.PathLike] = (),
                      params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                      registered_name: str = PIPELINE_MODEL, experiment: str = TRAINING_EXPERIMENT,
                      run_name: str | None = None) -> TrackedTraining:
    """Register an assembled pipeline folder as a new version of ``registered_name`` (alias candidate), in a
    new MLflow run with its pipeline config as params, its codec's held-out metrics (``vae/...``), the
    extra ``params`` / ``metrics`` given, the model card and ``images`` (sample contact sheets)."""
    folder = Path(pipeline_dir)
    config_path = folder / "pipeline_config.json"
    all_params: dict[str, Any] = {"pipeline": json.loads(config_path.read_text())} if config_path.is_file() else {}
    all_params.update(params or {})
    all_metrics: dict[str, Any] = {}
    vae_metrics = folder / "vae" / "metrics.json"
    if vae_metrics.is_file():
        recorded = json.loads(vae_metrics.read_text())
        all_metrics["vae"] = {"held_out": recorded.get("held_out", {}), "final_loss": recorded.get("final_loss")}
    all_metrics.update(metrics or {})
    files = [p for p in (folder / "README.md",) if p.is_file()]
    with tracked_run(settings, experiment, run_name=run_name or f"pipeline {folder.name}",
                     tags={KIND_TAG: "pipeline"}) as run:
        ref = log_training_run(settings, experiment, "pipeline", all_params, all_metrics, folder, registered_name,
                               images, files=files)
    return TrackedTraining(folder, ref, *_run_ids(run))
