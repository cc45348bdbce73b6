"""MLflow registry against a real SQLite-backed store under a temp state folder."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError, UnsafeModelFileError
from expdiff_core.registry import promote, register_model_folder, resolve_model, resolve_version, tracked_run


def _model_folder(root: Path, value: float) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"value": value}))
    save_file({"w": torch.full((2, 2), value)}, str(root / "diffusion_pytorch_model.safetensors"))
    return root


@pytest.fixture
def settings(tmp_path):
    return load_settings(environ={"EXPDIFF_STATE_DIR": str(tmp_path / "state")})


def test_registered_version_resolves_by_candidate_alias(settings, tmp_path):
    folder = _model_folder(tmp_path / "m1", 1.0)
    with tracked_run(settings, "unit-tests", params={"lr": 1e-3}) as run:
        ref = register_model_folder(settings, folder, "vae")
    assert ref.run_id == run.info.run_id
    local = resolve_model(settings, "models:/vae@candidate")
    assert json.loads((local / "config.json").read_text()) == {"value": 1.0}
    # Artifacts stay under the state folder, never in the working directory.
    assert ref.source.startswith((settings.state_path / "mlartifacts").as_uri())


def test_second_version_takes_candidate_and_promote_moves_champion(settings, tmp_path):
    for i in (1, 2):
        with tracked_run(settings, "unit-tests"):
            register_model_folder(settings, _model_folder(tmp_path / f"m{i}", float(i)), "denoiser")
    assert resolve_version(settings, "models:/denoiser@candidate").version == "2"
    promote(settings, "denoiser", 1)
    assert resolve_version(settings, "models:/denoiser@champion").version == "1"
    assert resolve_version(settings, "models:/denoiser/2").version == "2"


def test_unknown_reference_is_a_clear_error(settings):
    with pytest.raises(ExpDiffInputError, match=r"models:/nothing@champion.* not found"):
        resolve_version(settings, "models:/nothing@champion")
    with pytest.raises(ExpDiffInputError, match="is not of the form"):
        resolve_version(settings, "runs:/abc/model")


def test_pickle_weights_are_refused(settings, tmp_path):
    folder = _model_folder(tmp_path / "bad", 1.0)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with tracked_run(settings, "unit-tests"), pytest.raises(UnsafeModelFileError, match="pytorch_model.bin"):
        register_model_folder(settings, folder, "vae")
