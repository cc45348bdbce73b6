"""Helpers shared by command modules: settings from the global --config flag plus per-command overrides."""

from __future__ import annotations

import argparse

from ..config import Settings, load_settings


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: settings' device, 'auto')")


def settings_from(args: argparse.Namespace, **overrides) -> Settings:
    """Settings for a command: --config file, EXPDIFF_* env, then flags present on ``args``."""
    flags = {k: getattr(args, k, None) for k in ("device", "output_root", "state_dir")}
    flags.update(overrides)
    return load_settings(getattr(args, "config", None), flags)
