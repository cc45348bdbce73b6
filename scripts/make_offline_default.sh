#!/usr/bin/env bash
# Reproduce the bundled offline-default model (models/expdiff/) from scratch on a CPU machine:
# synthetic corpus -> absolute latent codec (the neutral's condition) -> linear change codec -> change latents ->
# denoiser -> expression prior -> assembled pipeline.
# Every step is an ordinary `expdiff` command; WORK keeps the intermediate folders (resumable steps resume).
set -euo pipefail
WORK=${WORK:-$PWD/.offline-default}
IDENTITIES=${IDENTITIES:-160}              # the corpus (the factory makes ~30 identities/min on 2 cores)
VAE_IDENTITIES=${VAE_IDENTITIES:-40}       # the absolute codec trains on the first ones (its recipe's corpus)
RESOLUTION=${RESOLUTION:-128}
VAE_STEPS=${VAE_STEPS:-3000}
CHANGE_CHANNELS=${CHANGE_CHANNELS:-64}     # the linear change codec's latent channels, chosen on val (model card)
DIFFUSION_STEPS=${DIFFUSION_STEPS:-3000}
DEVICE=${DEVICE:-auto}                     # cuda: bf16 autocast for the denoiser and codec
OUT=${OUT:-models/expdiff}
PRIOR_STRENGTH=${PRIOR_STRENGTH:-0.0}      # SDEdit strength from the prior, chosen on val (score_prior_strengths)
mkdir -p "$WORK"
DATA="$WORK/dataset$IDENTITIES"

[ -d "$WORK/dataset" ] || expdiff data synth --identities "$VAE_IDENTITIES" --resolution "$RESOLUTION" --seed 2026 \
    --out "$WORK/dataset"
[ -d "$WORK/vae" ] || expdiff train vae --dataset "$WORK/dataset" --out "$WORK/vae" --steps "$VAE_STEPS" \
    --batch-size 8 --widths 16,32,64,64 --held-out-maps 256 --device "$DEVICE"
[ -d "$DATA" ] || expdiff data synth --identities "$IDENTITIES" --resolution "$RESOLUTION" --seed 2026 --out "$DATA"
# Expressions as changes from the neutral: a linear codec fitted in closed form (3.5 min), the neutral's absolute
# latents (the condition) from the VAE.
[ -d "$WORK/change_codec" ] || expdiff train change-codec --dataset "$DATA" --channels "$CHANGE_CHANNELS" \
    --out "$WORK/change_codec"
expdiff data encode "$DATA" --vae "$WORK/vae" --change-vae "$WORK/change_codec" --out "$WORK/latents" \
    --splits train --device "$DEVICE"
expdiff train diffusion --latents "$WORK/latents" --out "$WORK/diffusion" --steps "$DIFFUSION_STEPS" \
    --model-config "$(dirname "$0")/offline_denoiser.json" --target change --prediction-type v_prediction \
    --snr-gamma 5 --text-dropout 0 --batch-size 16 --learning-rate 5e-4 --warmup-steps 100 --checkpoint-every 250 \
    --device "$DEVICE"
# The identity-aware prior: ridge from the neutral to every unit's change (vertices and, --maps, the BRDF maps in
# map space), tuned on the val split. The pipeline encodes its changes with the change codec as each expression's
# start, so it needs no latent part.
[ -d "$WORK/prior" ] || expdiff train prior --dataset "$DATA" --maps --out "$WORK/prior"
[ -d "$OUT" ] || expdiff models assemble --dataset "$DATA" --vae "$WORK/vae" --diffusion "$WORK/diffusion" \
    --change-vae "$WORK/change_codec" --prior "$WORK/prior" --prior-strength "$PRIOR_STRENGTH" --out "$OUT"
