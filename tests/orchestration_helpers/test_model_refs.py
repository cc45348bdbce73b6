"""Model references: a local pipeline folder is fingerprinted by content; registry references resolve."""

from __future__ import annotations

import json

import pytest

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError
from expdiff_core.orchestration_helpers.model_refs import folder_fingerprint, resolve_model_reference


@pytest.fixture
def pipeline_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "vae").mkdir(parents=True)
    (folder / "pipeline_config.json").write_text(json.dumps({"kinds": ["position"]}))
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return folder


def test_a_local_folder_is_its_own_version_fingerprinted_by_content(pipeline_folder):
    ref = resolve_model_reference(load_settings(), str(pipeline_folder))
    assert ref["path"] == str(pipeline_folder.resolve()) and ref["version"] == "local" and ref["run_id"] is None
    assert ref["fingerprint"] == f"sha256:{folder_fingerprint(pipeline_folder)}"


def test_the_fingerprint_changes_with_any_byte_and_with_a_renamed_file(pipeline_folder):
    before = folder_fingerprint(pipeline_folder)
    weights = pipeline_folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    changed = folder_fingerprint(pipeline_folder)
    assert changed != before
    weights.rename(weights.with_name("other.safetensors"))
    assert folder_fingerprint(pipeline_folder) != changed


def test_a_folder_without_a_pipeline_config_is_refused(tmp_path):
    with pytest.raises(ExpDiffInputError, match="pipeline_config.json missing"):
        resolve_model_reference(load_settings(), str(tmp_path))


@pytest.mark.slow  # MLflow's SQLite store setup: 5-10 s on 2 shared cores
def test_a_registered_version_resolves_by_alias_with_its_run(pipeline_folder):
    from expdiff_core.registry import register_model_folder, tracked_run

    settings = load_settings()  # SQLite MLflow store in this test's state folder
    with tracked_run(settings, "tests", "tiny") as run:
        version = register_model_folder(settings, pipeline_folder, "tiny-model")
    ref = resolve_model_reference(settings, "models:/tiny-model@candidate")
    assert (ref["name"], ref["version"], ref["run_id"]) == ("tiny-model", version.version, run.info.run_id)
    assert ref["experiment_id"] == run.info.experiment_id
    assert ref["fingerprint"] == f"tiny-model/{version.version}"
    assert (settings.cache_path / "models" / "tiny-model" / version.version / "pipeline_config.json").is_file()


@pytest.mark.slow  # MLflow's SQLite store setup
def test_an_unknown_alias_names_the_reference():
    with pytest.raises(ExpDiffInputError, match="models:/nobody@champion"):
        resolve_model_reference(load_settings(), "models:/nobody@champion")
