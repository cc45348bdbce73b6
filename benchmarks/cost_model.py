"""Characters per GPU-hour at the paper's 512^2, and a 500-character night over a GPU pool, from a suite run.

    python benchmarks/cost_model.py benchmarks/results/<date>-<machine>.json [--characters 500] [--window-h 6]

No GPU was measured: the GPU time is the 512^2 production models' FLOPs (counted by torch's FLOP counter on
meta tensors: nothing is computed) divided by a GPU's vendor dense bf16 FLOP/s times the *measured* fraction of
matmul FLOP/s our models reach on the suite's machine (denoiser forward vs dense matmul in the same run; the
VAE decoder is printed beside it but scaled by the denoiser's fraction too). The CPU stages (ingest, recover, textures, USD, contact
sheet) are taken from the suite's demo build as measured. Printed as a markdown table for docs/cost-model.md.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

# Vendor datasheet dense (no sparsity) bf16 tensor FLOP/s: assumptions, not measurements.
GPUS = {"NVIDIA L4": 121e12, "NVIDIA A100 80GB": 312e12, "NVIDIA H100 SXM": 989e12}
KINDS = ["position", "albedo", "normal", "roughness", "specular"]
UDIMS = 2
EXPRESSIONS = 57  # 56 units + the generated neutral
CPU_WORKERS_PER_GPU = 8  # CPU cores per GPU on a typical GPU node, for the overlapped figure
CPU_STAGES = ("resolve model", "ingest", "recover", "textures", "USD", "contact sheet")


def denoiser_flops(preset: str, latent: int) -> float:
    """FLOPs of one denoiser forward for one expression (batch 1) at ``latent``^2 latents."""
    from torch.utils.flop_counter import FlopCounterMode

    from expdiff_core.models.denoiser import ExpDiffDenoiser, denoiser_config

    cfg = denoiser_config(KINDS, UDIMS, 4, latent, preset=preset, text_conditioning="encoder")
    with torch.device("meta"):
        model = ExpDiffDenoiser(**cfg)
        m = len(KINDS) * UDIMS
        x = torch.randn(1, m, 4, latent, latent)
        text = torch.randn(1, model.config.text_len, model.config.text_dim)
        mask = torch.ones(1, model.config.text_len, dtype=torch.bool)
        with FlopCounterMode(display=False) as counter:
            model(x, torch.tensor([500]), x, text, mask)
    return float(counter.get_total_flops())


def vae_decode_flops(block_out_channels: list[int], size: int) -> float:
    """FLOPs of decoding one ``size``^2 map with an AutoencoderKL of ``block_out_channels`` (SD VAE: 128..512)."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=block_out_channels, layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * len(block_out_channels),
                            up_block_types=["UpDecoderBlock2D"] * len(block_out_channels), latent_channels=4)
        z = torch.randn(1, 4, size // 8, size // 8)
        with FlopCounterMode(display=False) as counter:
            vae.decode(z)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_json", type=Path)
    parser.add_argument("--characters", type=int, default=500)
    parser.add_argument("--window-h", type=float, default=6.0, help="hours the night may take")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps")
    args = parser.parse_args(argv)
    suite = json.loads(args.suite_json.read_text())

    # the production transformer's own fraction when the suite measured it (the bundled denoiser is then another
    # class, whose matmul shapes say nothing about the transformer's)
    den_fraction = suite.get("production_denoiser_matmul_fraction", suite["denoiser_matmul_fraction"])
    # The bundled codec's decoder: its measured maps/s x its FLOPs per map, over the matmul FLOP/s -- when what
    # the suite timed was the VAE (a change model decodes with its change codec: a linear one is one matrix
    # product per patch and says nothing about a VAE decoder's convolutions).
    res = suite["codec"]["resolution"]
    decoder = suite["codec"].get("decoder", "LatentCodec")
    vae_line = (f"the bundled model decodes with its {decoder} (not a VAE decoder: its rate, "
                f"{suite['codec']['decode_maps_per_s']:.0f} maps/s at {res}^2, says nothing about one). The decode "
                "stage is scaled by the transformer's fraction")
    if decoder == "LatentCodec":
        vae_cfg = json.loads((Path(suite["model"]) / "vae" / "config.json").read_text())
        from diffusers import AutoencoderKL
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):  # the bundled layout, counted exactly
            vae = AutoencoderKL(**{k: v for k, v in vae_cfg.items() if not k.startswith("_")})
            with FlopCounterMode(display=False) as counter:
                vae.decode(torch.randn(1, 4, res // 8, res // 8))
        small_vae = float(counter.get_total_flops())
        vae_fraction = suite["codec"]["decode_maps_per_s"] * small_vae / suite["matmul_flops_per_s"]
        vae_line = (f"the bundled VAE decoder {100 * vae_fraction:.1f}% ({small_vae / 1e9:.2f} GFLOP per {res}^2 map "
                    f"at {suite['codec']['decode_maps_per_s']:.1f} maps/s). Both stages are scaled by the "
                    "denoiser's fraction (the decoder's, measured minutes apart on a shared machine, is the noisier "
                    "figure)")

    den_512 = denoiser_flops("production", 64)
    vae_512 = vae_decode_flops([128, 256, 512, 512], 512)
    maps = EXPRESSIONS * len(KINDS) * UDIMS
    gpu_flops = {"diffuse": EXPRESSIONS * args.steps * den_512, "decode": maps * vae_512}
    cpu_s = sum(suite["demo_build"]["seconds"].get(s, 0.0) for s in CPU_STAGES)

    print(f"Inputs (suite run {args.suite_json.name}, {suite['machine']}, {suite['torch_threads']} thread(s)):\n")
    which = ("the production transformer (random weights, 32^2 latents)" if "production_denoiser_matmul_fraction"
             in suite else "the bundled denoiser")
    print(f"- measured: {which} reaches {100 * den_fraction:.1f}% of dense matmul FLOP/s; {vae_line}")
    print(f"- counted (meta tensors): production denoiser {den_512 / 1e9:.0f} GFLOP per expression per step at 512^2 "
          f"(2560 tokens); SD-VAE decoder {vae_512 / 1e9:.0f} GFLOP per 512^2 map")
    print(f"- per character: {EXPRESSIONS} expressions x {args.steps} DPM-Solver++ steps = "
          f"{gpu_flops['diffuse'] / 1e12:.1f} TFLOP diffusion, {maps} maps = {gpu_flops['decode'] / 1e12:.1f} TFLOP decoding")
    print(f"- CPU stages of the demo build as measured (128^2 model maps, 256^2 textures): {cpu_s:.0f} s\n")
    print("| GPU (vendor bf16 dense, assumed) | diffuse s | decode s | GPU s / character | + CPU stages s | "
          f"characters / GPU-hour, serial | GPUs for {args.characters} in {args.window_h:g} h, serial | "
          "characters / GPU-hour, CPU stages overlapped | GPUs, overlapped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, peak in GPUS.items():
        diffuse = gpu_flops["diffuse"] / (peak * den_fraction)
        decode = gpu_flops["decode"] / (peak * den_fraction)
        per_char = diffuse + decode + cpu_s
        per_hour = 3600 / per_char
        gpus = math.ceil(args.characters * per_char / (args.window_h * 3600))
        gpu_s = diffuse + decode
        overlapped = 3600 / max(gpu_s, cpu_s / CPU_WORKERS_PER_GPU)
        gpus_overlapped = math.ceil(args.characters / (overlapped * args.window_h))
        print(f"| {name} ({peak / 1e12:.0f} TFLOP/s) | {diffuse:.1f} | {decode:.1f} | {gpu_s:.1f} | "
              f"{per_char:.0f} | {per_hour:.0f} | {gpus} | {overlapped:.0f} | {gpus_overlapped} |")
    print(f"\nSerial: one build at a time per GPU, its CPU stages as measured (one loaded core). Overlapped: the CPU "
          f"stages of a build run on {CPU_WORKERS_PER_GPU} CPU cores beside the GPU while the next build diffuses, "
          "so a GPU-hour is bounded by the slower of the two.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
