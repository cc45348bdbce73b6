#!/usr/bin/env bash
# Reproduce the bundled offline-default model (models/expdiff/) from scratch on a CPU machine:
# synthetic corpus -> latent codec -> latents -> denoiser -> assembled pipeline -> held-out evaluation.
# Every step is an ordinary `expdiff` command; WORK keeps the intermediate folders (resumable steps resume).
set -euo pipefail
WORK=${WORK:-$PWD/.offline-default}
IDENTITIES=${IDENTITIES:-40}
RESOLUTION=${RESOLUTION:-128}
VAE_STEPS=${VAE_STEPS:-3000}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-1800}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-models/expdiff}
mkdir -p "$WORK"

[ -d "$WORK/dataset" ] || expdiff data synth --identities "$IDENTITIES" --resolution "$RESOLUTION" --seed 2026 --out "$WORK/dataset"
[ -d "$WORK/vae" ] || expdiff train vae --dataset "$WORK/dataset" --out "$WORK/vae" --steps "$VAE_STEPS" \
    --batch-size 8 --widths 16,32,64,64 --held-out-maps 256 --device "$DEVICE"
expdiff data encode "$WORK/dataset" --vae "$WORK/vae" --out "$WORK/latents" --splits train --device "$DEVICE"
expdiff train diffusion --latents "$WORK/latents" --out "$WORK/diffusion" --steps "$DIFFUSION_STEPS" \
    --model-config "$(dirname "$0")/offline_denoiser.json" --target residual --batch-size 16 \
    --learning-rate 5e-4 --warmup-steps 50 --checkpoint-every 200 --device "$DEVICE"
[ -d "$OUT" ] || expdiff models assemble --dataset "$WORK/dataset" --vae "$WORK/vae" --diffusion "$WORK/diffusion" --out "$OUT"
