"""Prefect artifacts for ExpDiff runs: markdown summaries, tables, progress, MLflow links, images.

Artifact keys (lowercase letters, digits and dashes; ``artifact_key`` makes one) group the artifacts of
successive runs in the UI's Artifacts page; every artifact also shows on the run page that made it.

Images: a Prefect image artifact is a URL the *browser* loads. ``image_artifact`` picks, in order:
the ExpDiff artifact server (``$EXPDIFF_ARTIFACT_BASE_URL``, serving ``<state_dir>/artifacts`` - see
``expdiff infra serve-artifacts``), else MLflow's ``get-artifact`` URL when a tracking *server* is configured
and the image was logged to an MLflow run; otherwise a markdown artifact naming the file (nothing to load).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode
from uuid import UUID

from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from expdiff_core.config import Settings
from expdiff_core.orchestration_helpers.artifact_server import artifact_url

from .common import artifacts_path

ARTIFACT_BASE_URL_ENV = "EXPDIFF_ARTIFACT_BASE_URL"
_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: Any) -> str:
    """A valid artifact key from ``parts``: lowercase, runs of other characters become one dash."""
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return _KEY_CHARS.sub("-", text.lower()).strip("-") or "expdiff"


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(title: str, fields: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """Markdown: a ``# title``, a two-column table of ``fields`` (in order) and bullet ``notes``."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| **{_cell(k)}** | {_cell(v)} |" for k, v in fields.items()]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def markdown_summary(title: str, fields: Mapping[str, Any], key: str, description: str | None = None,
                     notes: Sequence[str] = ()) -> UUID:
    """Create the run's summary artifact (see ``summary_markdown``); returns its id."""
    return create_markdown_artifact(summary_markdown(title, fields, notes), key=key, description=description)


def table(rows: Sequence[Mapping[str, Any]], key: str, description: str | None = None) -> UUID:
    """Create a table artifact, one row per mapping (columns: the keys of the first row)."""
    columns = list(rows[0]) if rows else []
    return create_table_artifact([{c: row.get(c) for c in columns} for row in rows], key=key,
                                 description=description)


class ProgressReporter:
    """A progress artifact (0..100 %) created at 0 and moved forward by ``update(done, total)``.

    Only forward moves are sent, at most one per whole percent, so a per-step callback does not flood the API.
    """

    def __init__(self, key: str, description: str | None = None):
        self.description = description
        self.percent = 0.0
        self.artifact_id = create_progress_artifact(0.0, key=key, description=description)

    def update(self, done: float, total: float, description: str | None = None) -> None:
        percent = 100.0 * min(max(done / total, 0.0), 1.0) if total > 0 else 100.0
        if percent <= self.percent or (percent < 100.0 and int(percent) == int(self.percent)):
            return
        self.percent = percent
        update_progress_artifact(self.artifact_id, percent, description=description)


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run on a tracking server; None for a local (SQLite / file) store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_link(tracking_uri: str, experiment_id: str, run_id: str, key: str,
                description: str | None = None) -> UUID | None:
    """Create a link artifact to the MLflow run's page; None (nothing created) without a tracking server."""
    url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    if url is None:
        return None
    return create_link_artifact(url, link_text=f"MLflow run {run_id}", key=key, description=description)


def mlflow_artifact_url(tracking_uri: str, run_id: str, artifact_path: str) -> str | None:
    """The URL an MLflow tracking server serves a run's artifact file at; None for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/get-artifact?{urlencode({'path': artifact_path, 'run_id': run_id})}"


def image_url(path: str | os.PathLike, settings: Settings, mlflow_run_id: str | None = None,
              mlflow_artifact_path: str | None = None) -> str | None:
    """A URL the UI can load ``path`` from (see the module docstring), or None when there is none."""
    base = os.environ.get(ARTIFACT_BASE_URL_ENV, "").strip()
    root = artifacts_path(settings)
    if base and Path(path).resolve().is_relative_to(root.resolve()):
        return artifact_url(path, root, base)
    if mlflow_run_id and mlflow_artifact_path:
        return mlflow_artifact_url(settings.tracking_uri, mlflow_run_id, mlflow_artifact_path)
    return None


def image_artifact(path: str | os.PathLike, settings: Settings, key: str, description: str | None = None,
                   mlflow_run_id: str | None = None, mlflow_artifact_path: str | None = None) -> UUID:
    """Show the image at ``path`` on the run page: an image artifact when it has a URL, else markdown."""
    url = image_url(path, settings, mlflow_run_id, mlflow_artifact_path)
    if url is not None:
        return create_image_artifact(url, key=key, description=description)
    hint = (f"Image written to `{path}`. To see it here, serve `{artifacts_path(settings)}` with "
            f"`expdiff infra serve-artifacts` and set `{ARTIFACT_BASE_URL_ENV}` on the workers.")
    return create_markdown_artifact(hint, key=key, description=description)

