"""A tiny, untrained ExpDiff pipeline on our procedural template: exercises every stage in seconds."""

from __future__ import annotations

import numpy as np

from expdiff_core.models.denoiser import ExpDiffDenoiser, denoiser_config
from expdiff_core.models.vae import LatentCodec, offline_vae_config
from expdiff_core.pipelines.expdiff import ExpDiffPipeline, PipelineConfig
from expdiff_core.schedulers import training_noise_scheduler
from expdiff_core.synth.template import template_mesh

KINDS = ["position", "albedo", "specular", "roughness", "normal"]
RESOLUTION = 32  # 4x4 latents: the smallest size the 8x VAE and a patch-2 denoiser accept


def tiny_pipeline_folder(root, text_conditioning: str = "encoder", target: str = "absolute"):
    """Write a pipeline folder under ``root / "model"`` (random weights, 4 sampling steps); returns it.

    target="residual": the denoiser diffuses (expression - neutral) latents, every map scaled by 4.
    """
    template = template_mesh()
    config = PipelineConfig(kinds=KINDS, udims=[1001, 1002], resolution=RESOLUTION,
                            skin_groups=["M_Face", "M_BackHead"], steps=4)
    codec = LatentCodec.from_config(offline_vae_config(block_out_channels=[8, 8, 16, 16], norm_num_groups=8),
                                    seed=0, device="cpu")
    vae_dir = codec.save_pretrained(root / "parts" / "vae")
    denoiser = ExpDiffDenoiser(**denoiser_config(KINDS, 2, 4, RESOLUTION // 8, width=32, depth=1, heads=2,
                                                 text_conditioning=text_conditioning, target=target,
                                                 residual_scale=[4.0] * 2 * len(KINDS) if target == "residual" else None))
    den_dir = root / "parts" / "denoiser"
    denoiser.save_pretrained(den_dir)
    training_noise_scheduler().save_pretrained(den_dir)
    return ExpDiffPipeline.assemble(root / "model", config, vae_dir, den_dir, template, "# tiny test model\n")


def neutral_textures(resolution: int = 48) -> dict[str, dict[int, np.ndarray]]:
    """Smooth, distinct per-kind maps at a resolution other than the model's (so resizing is exercised)."""
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    base = {
        "albedo": np.stack([0.6 + 0.2 * x, 0.4 + 0.1 * y, 0.35 + 0.0 * x]),
        "specular": (0.3 + 0.1 * x)[None],
        "roughness": (0.5 + 0.2 * y)[None],
        "normal": np.stack([0.5 + 0.0 * x, 0.5 + 0.0 * x, 1.0 + 0.0 * x]),
    }
    return {k: {1001: v.copy(), 1002: v[:, ::-1].copy()} for k, v in base.items()}
