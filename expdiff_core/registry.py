"""MLflow: track runs, register model folders as versions, move aliases, resolve ``models:/NAME@alias``.

A model is a diffusers-style folder (config.json + *.safetensors + model card). It is logged as run
artifacts and registered as a version of a named registered model; new versions get the ``candidate``
alias, ``promote`` moves ``champion``. With nothing configured the store is SQLite under the state folder
and artifacts live beside it, so everything works offline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .config import Settings
from .errors import ExpDiffInputError

CANDIDATE = "candidate"
CHAMPION = "champion"
BUNDLED_MODEL = "expdiff"  # models/expdiff in the package: the offline default pipeline


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version: ``models:/{name}/{version}``, logged by MLflow run ``run_id``."""

    name: str
    version: str
    run_id: str | None
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def configured_mlflow(settings: Settings):
    """Import mlflow pointed at the configured tracking URI (SQLite under state_dir by default)."""
    import mlflow

    settings.state_path.mkdir(parents=True, exist_ok=True)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow


def artifact_root(settings: Settings) -> str:
    """Where a new experiment keeps artifacts: beside the SQLite store, or the server's default."""
    if settings.mlflow_tracking_uri:
        return ""
    return (settings.state_path / "mlartifacts").as_uri()


def ensure_experiment(settings: Settings, name: str) -> str:
    """The id of experiment ``name``, creating it (with our artifact root) if needed."""
    mlflow = configured_mlflow(settings)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(settings)
    return mlflow.create_experiment(name, artifact_location=root or None)


@contextlib.contextmanager
def tracked_run(settings: Settings, experiment: str, run_name: str | None = None,
                params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Start an MLflow run in ``experiment``; yields the active ``mlflow.ActiveRun``.

    A failure inside marks the run FAILED (MLflow's context manager does so) and re-raises.
    """
    mlflow = configured_mlflow(settings)
    exp_id = ensure_experiment(settings, experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags or {})) as run:
        if params:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield run


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def register_model_folder(settings: Settings, folder: str | os.PathLike, name: str,
                          alias: str = CANDIDATE, tags: Mapping[str, str] | None = None) -> ModelVersionRef:
    """Log ``folder`` as artifacts of the active run and register it as a new version of ``name``.

    Must be called inside ``tracked_run``. Only safetensors weights are accepted.
    """
    folder = Path(folder)
    _require_safetensors_folder(folder)
    mlflow = configured_mlflow(settings)
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_model_folder must be called inside tracked_run()")
    mlflow.log_artifacts(str(folder), artifact_path="model")
    source = mlflow.get_artifact_uri("model")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description=f"ExpDiff {name} (config.json + safetensors)")
    mv = client.create_model_version(name, source=source, run_id=run.info.run_id, tags=dict(tags or {}))
    client.set_registered_model_alias(name, alias, mv.version)
    return ModelVersionRef(name, str(mv.version), run.info.run_id, source)


def promote(settings: Settings, name: str, version: str | int, alias: str = CHAMPION) -> ModelVersionRef:
    """Point ``alias`` (default ``champion``) at ``version`` of registered model ``name``."""
    mlflow = configured_mlflow(settings)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise ExpDiffInputError(None, f"registered model {name!r} has no version {version}") from None
    client.set_registered_model_alias(name, alias, mv.version)
    return ModelVersionRef(name, str(mv.version), mv.run_id, mv.source)


def register_bundled(settings: Settings) -> ModelVersionRef | None:
    """Register the bundled offline default (``models/expdiff``) as ``expdiff`` with aliases ``candidate`` and
    ``champion`` if the registry has no ``expdiff`` model yet; None when there is nothing bundled."""
    from .models.store import offline_default_path

    folder = offline_default_path(settings, BUNDLED_MODEL)
    if folder is None:
        return None
    mlflow = configured_mlflow(settings)
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(BUNDLED_MODEL)
        return None
    except mlflow.exceptions.MlflowException:
        pass
    with tracked_run(settings, "expdiff-bundled", run_name="bundled offline default",
                     params={"source": str(folder)}, tags={"expdiff.bundled": "true"}):
        if (folder / "README.md").is_file():
            mlflow.log_artifact(str(folder / "README.md"))
        ref = register_model_folder(settings, folder, BUNDLED_MODEL, alias=CANDIDATE)
    client.set_registered_model_alias(BUNDLED_MODEL, CHAMPION, ref.version)
    return ref


def resolve_version(settings: Settings, uri: str) -> ModelVersionRef:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` -> the registered version it names.

    The bundled offline default (``models:/expdiff@...``) is registered on first use.
    """
    mlflow = configured_mlflow(settings)
    client = mlflow.MlflowClient()
    if not uri.startswith("models:/"):
        raise ExpDiffInputError(None, f"model reference {uri!r} is not of the form models:/NAME@alias or models:/NAME/N")
    ref = uri[len("models:/"):]
    if ref.split("@")[0].split("/")[0] == BUNDLED_MODEL:
        register_bundled(settings)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.rsplit("/", 1)
            mv = client.get_model_version(name, version)
    except (mlflow.exceptions.MlflowException, ValueError):
        raise ExpDiffInputError(None, f"model reference {uri!r} not found in MLflow at {settings.tracking_uri}") from None
    return ModelVersionRef(mv.name, str(mv.version), mv.run_id, mv.source)


def resolve_model(settings: Settings, uri: str, dst: str | os.PathLike | None = None) -> Path:
    """Download (or locate) the folder of ``models:/NAME@alias`` and check it holds safetensors only."""
    mlflow = configured_mlflow(settings)
    version = resolve_version(settings, uri)
    dst_path = Path(dst) if dst else settings.cache_path / "models" / version.name / version.version
    from .models.store import CONFIG_FILES

    if not any((dst_path / name).is_file() for name in CONFIG_FILES):
        tmp = dst_path.with_name(dst_path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(tmp))
        shutil.rmtree(dst_path, ignore_errors=True)
        os.replace(tmp, dst_path)
    _require_safetensors_folder(dst_path)
    return dst_path


def _require_safetensors_folder(folder: Path) -> None:
    from .errors import UnsafeModelFileError

    if not folder.is_dir():
        raise ExpDiffInputError(folder, "model folder not found")
    pickles = [p.name for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    if pickles:
        raise UnsafeModelFileError(folder, f"holds pickle weight file(s) {pickles}; only safetensors are accepted")
    if not any(folder.rglob("*.safetensors")):
        raise ExpDiffInputError(folder, "holds no .safetensors weights")
