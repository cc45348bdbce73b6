"""tasks.artifacts helpers and the artifact file server (no Prefect API needed)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.orchestration_helpers.artifact_server import (artifact_url, make_artifact_server,
                                                                 serve_in_thread, server_url)
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


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "artifacts"
    (root / "datasets").mkdir(parents=True)
    server = make_artifact_server(root)
    serve_in_thread(server)
    yield root, server_url(server)
    server.shutdown()
    server.server_close()


def test_the_server_serves_files_under_its_root(served):
    root, url = served
    (root / "datasets" / "sheet 1.png").write_bytes(b"\x89PNG fake")
    link = artifact_url(root / "datasets" / "sheet 1.png", root, url)
    assert link == f"{url}/datasets/sheet%201.png"
    with urllib.request.urlopen(link, timeout=5) as response:
        assert response.read() == b"\x89PNG fake"


def test_the_server_lists_no_folders_and_stays_inside_its_root(served, tmp_path):
    root, url = served
    (tmp_path / "secret.txt").write_text("no")
    for path in ("/datasets/", "/../secret.txt"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + path, timeout=5)
        assert err.value.code == 404


def test_server_binds_to_loopback_by_default(served):
    assert served[1].startswith("http://127.0.0.1:")


def test_files_outside_the_served_root_have_no_url(tmp_path):
    with pytest.raises(ExpDiffInputError, match="not inside the served artifacts folder"):
        artifact_url(tmp_path / "elsewhere.png", tmp_path / "artifacts", "http://127.0.0.1:1")


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
