"""The ``expdiff`` command line: help everywhere, doctor's report, clear errors."""

import subprocess
import sys

import pytest

from expdiff_core.cli import build_parser, main


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            yield from action.choices.items()


def _all_parsers(parser, prefix=("expdiff",)):
    yield prefix, parser
    for name, sub in _subcommands(parser):
        yield from _all_parsers(sub, prefix + (name,))


@pytest.mark.parametrize("path,parser", list(_all_parsers(build_parser())), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_command_has_a_description_and_help(path, parser, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(path)}")
    assert parser.description, f"{' '.join(path)} has no description"


def test_doctor_reports_versions_device_models_and_endpoints(capsys):
    code = main(["doctor", "--device", "cpu"])
    out = capsys.readouterr().out
    for needle in ("torch", "diffusers", "usd-core", "OpenImageIO", "device      cpu",
                   "text_encoder", "sd_vae_path", "not configured", "mlflow tracking sqlite:///", "prefect api"):
        assert needle in out, needle
    assert code == 0


def test_doctor_flags_a_configured_but_missing_production_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPDIFF_SD_VAE_PATH", str(tmp_path / "no-such-vae"))
    assert main(["doctor", "--device", "cpu"]) == 1
    assert "no-such-vae (MISSING)" in capsys.readouterr().out


def test_errors_print_the_problem_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "broken.toml"
    bad.write_text("device = \n")
    assert main(["--config", str(bad), "doctor"]) == 2
    assert "broken.toml: invalid TOML" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "expdiff_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout
