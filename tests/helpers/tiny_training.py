"""Tiny training inputs on a real dataset: an encoded latent dataset and a tiny denoiser config (seconds)."""

from __future__ import annotations

from pathlib import Path

from expdiff_core.models.vae import LatentCodec, offline_vae_config

TINY_VAE = offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8)
# One-hot prompts: no text encoder to load, which is all a tracking/orchestration test needs.
TINY_DENOISER = dict(width=32, depth=1, heads=2, text_conditioning="one-hot", text_dim=16, text_len=4)


def tiny_codec_folder(root: Path) -> Path:
    """An untrained tiny codec saved as a model folder (config.json + safetensors)."""
    return LatentCodec.from_config(TINY_VAE, seed=0, device="cpu").save_pretrained(root)


def encode_tiny(dataset: Path, vae: Path, out: Path) -> Path:
    """The train split of ``dataset`` encoded with the codec at ``vae`` into ``out``."""
    from expdiff_core.training.encode import encode_dataset

    return encode_dataset(dataset, LatentCodec.from_pretrained(vae, device="cpu"), out, splits=("train",),
                          progress=False)
