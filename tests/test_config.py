"""Settings precedence: defaults < TOML file < EXPDIFF_* env < CLI flags."""

from pathlib import Path

import pytest

from expdiff_core.config import load_settings
from expdiff_core.errors import ExpDiffInputError


def test_defaults_are_documented_and_complete():
    s = load_settings(environ={})
    assert s.device == "auto"
    assert s.tracking_uri.startswith("sqlite:///") and s.tracking_uri.endswith("mlflow.db")
    assert s.sd_vae_path == ""


def test_file_then_env_then_flags_override_in_order(tmp_path: Path):
    cfg = tmp_path / "studio.toml"
    cfg.write_text('device = "cpu"\noutput_root = "/from/file"\nsd_vae_path = "/models/sd-vae"\n')
    env = {"EXPDIFF_OUTPUT_ROOT": "/from/env", "EXPDIFF_DEVICE": "cuda:1"}
    s = load_settings(cfg, overrides={"device": "cpu"}, environ=env)
    assert s.output_root == "/from/env"  # env beats file
    assert s.device == "cpu"  # flag beats env
    assert s.sd_vae_path == "/models/sd-vae"  # file beats defaults


def test_config_file_from_environment(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('mlflow_tracking_uri = "http://127.0.0.1:5000"\n')
    assert load_settings(environ={"EXPDIFF_CONFIG": str(cfg)}).tracking_uri == "http://127.0.0.1:5000"


def test_unknown_key_in_file_names_the_file_and_key(tmp_path: Path):
    cfg = tmp_path / "typo.toml"
    cfg.write_text('devcie = "cpu"\n')
    with pytest.raises(ExpDiffInputError, match=r"typo\.toml.*devcie"):
        load_settings(cfg, environ={})


def test_invalid_toml_names_the_file(tmp_path: Path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("device = \n")
    with pytest.raises(ExpDiffInputError, match=r"broken\.toml: invalid TOML"):
        load_settings(cfg, environ={})


def test_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ExpDiffInputError, match=r"nope\.toml: config file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_relative_paths_resolve_under_the_state_folder(tmp_path: Path):
    s = load_settings(environ={"EXPDIFF_STATE_DIR": str(tmp_path)})
    assert s.model_store_path == tmp_path / "models"


def test_a_true_false_setting_reads_toml_booleans_and_env_words(tmp_path: Path):
    assert load_settings(environ={}).compile_denoiser is False  # the documented default
    cfg = tmp_path / "c.toml"
    cfg.write_text("compile_denoiser = true\n")
    assert load_settings(cfg, environ={}).compile_denoiser is True
    assert load_settings(cfg, environ={"EXPDIFF_COMPILE_DENOISER": "no"}).compile_denoiser is False


def test_a_true_false_setting_refuses_other_words_naming_the_key():
    with pytest.raises(ExpDiffInputError, match="compile_denoiser .* must be true or false, got 'sometimes'"):
        load_settings(environ={"EXPDIFF_COMPILE_DENOISER": "sometimes"})
