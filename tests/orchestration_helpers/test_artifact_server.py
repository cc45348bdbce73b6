"""The run-image file server: serves files under its root over HTTP, nothing else."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.orchestration_helpers.artifact_server import (artifact_url, make_artifact_server,
                                                                 serve_in_thread, server_url)


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


def test_a_missing_root_is_refused(tmp_path):
    with pytest.raises(ExpDiffInputError, match="artifacts folder not found"):
        make_artifact_server(tmp_path / "nope")
