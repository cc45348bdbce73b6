#!/usr/bin/env bash
# Reproduce the bundled offline-default model (models/expdiff/) from scratch on a CPU machine:
# synthetic corpora -> latent codec (absolute maps: the neutral condition) -> change codec (expression minus
# neutral) -> change latents -> denoiser -> expression prior -> assembled pipeline.
# Every step is an ordinary `expdiff` command; WORK keeps the intermediate folders (finished steps are skipped,
# encoding and diffusion training resume). On a CUDA machine DEVICE=auto trains with bf16 autocast.
set -euo pipefail
WORK=${WORK:-$PWD/.offline-default}
IDENTITIES=${IDENTITIES:-40}               # the absolute codec's corpus
CORPUS_IDENTITIES=${CORPUS_IDENTITIES:-160} # the change codec's, the denoiser's and the prior's (~18 identities/min)
DENOISER_IDENTITIES=${DENOISER_IDENTITIES:-40}  # encoded for the denoiser (~30 s each on 2 CPU cores)
RESOLUTION=${RESOLUTION:-128}
VAE_STEPS=${VAE_STEPS:-3000}
CHANGE_VAE_STEPS=${CHANGE_VAE_STEPS:-1200}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-3000}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-models/expdiff}
PRIOR_STRENGTH=${PRIOR_STRENGTH:-0.0}      # SDEdit strength from the prior, chosen on val (score_prior_strengths)
CORPUS="$WORK/dataset$CORPUS_IDENTITIES"
mkdir -p "$WORK"

[ -d "$WORK/dataset" ] || expdiff data synth --identities "$IDENTITIES" --resolution "$RESOLUTION" --seed 2026 --out "$WORK/dataset"
[ -d "$CORPUS" ] || expdiff data synth --identities "$CORPUS_IDENTITIES" --resolution "$RESOLUTION" --seed 2026 --out "$CORPUS"
[ -d "$WORK/vae" ] || expdiff train vae --dataset "$WORK/dataset" --out "$WORK/vae" --steps "$VAE_STEPS" \
    --batch-size 8 --widths 16,32,64,64 --held-out-maps 256 --device "$DEVICE"
# The change codec: warm-started from the absolute one, trained on expression-minus-neutral maps (~25 min).
[ -d "$WORK/change_vae" ] || expdiff train vae --change --dataset "$CORPUS" --init-from "$WORK/vae" \
    --out "$WORK/change_vae" --steps "$CHANGE_VAE_STEPS" --batch-size 8 --held-out-maps 256 --device "$DEVICE"
expdiff data encode "$CORPUS" --vae "$WORK/vae" --change-vae "$WORK/change_vae" --out "$WORK/latents-change" \
    --splits train --identities "$DENOISER_IDENTITIES" --device "$DEVICE"
expdiff train diffusion --latents "$WORK/latents-change" --out "$WORK/diffusion-change" --steps "$DIFFUSION_STEPS" \
    --model-config "$(dirname "$0")/offline_denoiser.json" --target change --batch-size 16 \
    --learning-rate 5e-4 --warmup-steps 50 --checkpoint-every 250 --prediction-type v_prediction --snr-gamma 5 \
    --device "$DEVICE"
# The identity-aware prior: ridge from the neutral to every unit's change (vertices on every training identity,
# change latents on the encoded ones), components and ridge tuned on the val split.
[ -d "$WORK/prior-change" ] || expdiff train prior --dataset "$CORPUS" --latents "$WORK/latents-change" \
    --out "$WORK/prior-change"
[ -d "$OUT" ] || expdiff models assemble --dataset "$WORK/dataset" --vae "$WORK/vae" --change-vae "$WORK/change_vae" \
    --diffusion "$WORK/diffusion-change" --prior "$WORK/prior-change" --prior-strength "$PRIOR_STRENGTH" --out "$OUT"
