"""Shared test fixtures. Tests never touch the network or the user's home: state goes to a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
ICT_DIR = REPO_ROOT.parent / "shared" / "data" / "ict-facekit"


@pytest.fixture
def ict_dir() -> Path:
    """The ICT-FaceKit light face model from shared data; tests using it skip on a fresh clone without it."""
    if not (ICT_DIR / "generic_neutral_mesh.obj").is_file():
        pytest.skip(f"ICT-FaceKit data not found at {ICT_DIR}")
    return ICT_DIR


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Every test gets its own ExpDiff state folder and output root."""
    root = tmp_path_factory.mktemp("expdiff-state")
    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(root / "state"))
    monkeypatch.setenv("EXPDIFF_OUTPUT_ROOT", str(root / "builds"))
