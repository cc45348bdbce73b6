"""Settings: documented TOML defaults, overridden by a user TOML, then EXPDIFF_* env vars, then CLI flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ExpDiffInputError

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
PACKAGE_MODELS = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Settings:
    """Everything configurable. See ``defaults.toml`` for what each key means."""

    state_dir: str
    output_root: str
    model_store: str
    device: str
    prefect_api_url: str
    mlflow_tracking_uri: str
    sd_vae_path: str
    clip_text_encoder_path: str
    realesrgan_path: str
    lpips_weights_path: str
    upscaler: str
    upscaler_model: str
    compile_denoiser: bool

    # ------------------------------------------------------------- derived
    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser().resolve()

    @property
    def output_path(self) -> Path:
        return Path(self.output_root).expanduser().resolve()

    def resolve(self, value: str) -> Path:
        """A configured path: ``~`` expanded, relative paths taken under the state folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.state_path / p

    @property
    def model_store_path(self) -> Path:
        return self.resolve(self.model_store)

    @property
    def cache_path(self) -> Path:
        return self.state_path / "cache"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_path / 'mlflow.db'}"

    def production_path(self, key: str) -> Path | None:
        """The configured production weight path for ``key`` (e.g. ``"sd_vae_path"``), or None."""
        value = getattr(self, key)
        return self.resolve(value) if value else None

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


FIELDS = tuple(f.name for f in dataclasses.fields(Settings))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ExpDiffInputError(path, "config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExpDiffInputError(path, f"invalid TOML: {exc}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ExpDiffInputError(path, f"unknown setting(s) {unknown}; known: {list(FIELDS)}")
    return {k: str(v) for k, v in data.items()}


def load_settings(
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < ``config_file`` (or $EXPDIFF_CONFIG) < EXPDIFF_<KEY> env vars < ``overrides`` (CLI)."""
    env = os.environ if environ is None else environ
    values = _read_toml(DEFAULTS_FILE)
    config_file = config_file or env.get("EXPDIFF_CONFIG")
    if config_file:
        values.update(_read_toml(Path(config_file)))
    for key in FIELDS:
        env_value = env.get(f"EXPDIFF_{key.upper()}")
        if env_value is not None:
            values[key] = env_value
    for key, value in (overrides or {}).items():
        if key not in FIELDS:
            raise ExpDiffInputError(None, f"unknown setting {key!r}; known: {list(FIELDS)}")
        if value is not None:
            values[key] = str(value)
    for field in dataclasses.fields(Settings):
        if field.type in (bool, "bool"):
            values[field.name] = _boolean(field.name, values[field.name])
    return Settings(**values)


BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ExpDiffInputError(None, f"setting {key} (config file, EXPDIFF_{key.upper()} or flag) must be true "
                                f"or false, got {value!r}") from None
