"""tasks.artifacts helpers that need no Prefect API: keys, markdown, MLflow and image URLs."""

from __future__ import annotations

from expdiff_core.config import load_settings
from tasks.artifacts import (ARTIFACT_BASE_URL_ENV, artifact_key, image_url, mlflow_artifact_url,
                             mlflow_run_url, summary_markdown)
from tasks.common import artifacts_path


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    assert artifact_key("build", "Alice_v2", "summary") == "build-alice-v2-summary"
    assert artifact_key("dataset", "ds 01/x", None, "") == "dataset-ds-01-x"


def test_summary_markdown_lists_fields_in_order_and_escapes_pipes():
    text = summary_markdown("Build alice", {"model": "expdiff/3", "seed": 7, "loss": 0.123456, "a|b": "c"},
                            notes=["jawOpen failed"])
    lines = text.splitlines()
    assert lines[0] == "# Build alice"
    assert lines.index("| **model** | expdiff/3 |") < lines.index("| **seed** | 7 |")
    assert "| **loss** | 0.1235 |" in lines and "| **a\\|b** | c |" in lines
    assert lines[-1] == "- jawOpen failed"


def test_mlflow_urls_only_exist_for_a_tracking_server():
    assert mlflow_run_url("sqlite:///x/mlflow.db", "1", "abc") is None
    assert mlflow_run_url("http://mlflow:5000/", "1", "abc") == "http://mlflow:5000/#/experiments/1/runs/abc"
    assert mlflow_artifact_url("http://mlflow:5000", "abc", "previews/sheet.png") == \
        "http://mlflow:5000/get-artifact?path=previews%2Fsheet.png&run_id=abc"
    assert mlflow_artifact_url("file:///tmp/mlruns", "abc", "sheet.png") is None


def test_image_url_uses_the_artifact_server_when_configured(monkeypatch):
    settings = load_settings()
    sheet = artifacts_path(settings) / "datasets" / "d.png"
    monkeypatch.delenv(ARTIFACT_BASE_URL_ENV, raising=False)
    assert image_url(sheet, settings) is None  # SQLite MLflow, no server: nothing a browser can load
    monkeypatch.setenv(ARTIFACT_BASE_URL_ENV, "http://127.0.0.1:8765/")
    assert image_url(sheet, settings) == "http://127.0.0.1:8765/datasets/d.png"


def test_image_url_falls_back_to_the_mlflow_server(monkeypatch):
    monkeypatch.delenv(ARTIFACT_BASE_URL_ENV, raising=False)
    monkeypatch.setenv("EXPDIFF_MLFLOW_TRACKING_URI", "http://mlflow.studio:5000")
    settings = load_settings()
    assert image_url("/builds/alice/sheet.png", settings, "run42", "previews/sheet.png") == \
        "http://mlflow.studio:5000/get-artifact?path=previews%2Fsheet.png&run_id=run42"
