"""Model references of builds: ``models:/NAME@alias``, ``models:/NAME/VERSION`` or a local pipeline folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ExpDiffInputError
from ..fileio import hash_files


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over every file's relative path and content hash: changes when any byte of the folder does."""
    root = Path(folder)
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    digest = hashlib.sha256()
    for path, sha in hash_files(files).items():
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{sha}\n".encode())
    return digest.hexdigest()


def resolve_model_reference(settings: Settings, reference: str) -> dict[str, Any]:
    """Where a build's model is and which one it is, as JSON.

    reference: ``models:/NAME@alias`` / ``models:/NAME/VERSION`` (resolved in the MLflow registry and fetched
    into the cache once per version) or a local pipeline folder. Returns {"reference", "path", "name",
    "version", "run_id", "experiment_id", "uri", "fingerprint"} (run and experiment of the MLflow run that
    logged the version; None for local folders); the fingerprint is ``NAME/VERSION`` for registered models
    (versions are immutable) and a content hash of the folder for local ones.
    """
    if reference.startswith("models:/"):
        from ..registry import resolve_model, resolve_version

        version = resolve_version(settings, reference)
        path = resolve_model(settings, version.uri)
        experiment_id = None
        if version.run_id:
            from mlflow import MlflowClient

            experiment_id = MlflowClient(settings.tracking_uri).get_run(version.run_id).info.experiment_id
        return {"reference": reference, "path": str(path), "name": version.name, "version": version.version,
                "run_id": version.run_id, "experiment_id": experiment_id, "uri": version.uri,
                "fingerprint": f"{version.name}/{version.version}"}
    from ..pipelines.expdiff import CONFIG_NAME

    folder = Path(reference).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        raise ExpDiffInputError(folder, f"is neither models:/NAME@alias nor a pipeline folder ({CONFIG_NAME} missing)")
    return {"reference": reference, "path": str(folder.resolve()), "name": folder.name, "version": "local",
            "run_id": None, "experiment_id": None, "uri": None, "fingerprint": f"sha256:{folder_fingerprint(folder)}"}
