"""Latent codec round trip on held-out identities (issue "Unified representation", codec acceptance).

    python benchmarks/codec_roundtrip.py --dataset HELDOUT --vae VAE_FOLDER [--vae OTHER ...] [--pooled 4 ...]
        [--subjects N] [--geometry-only]

For each codec prints, over subjects x expressions: geometry error of the decoded position map sampled back
(absolute, mm; not for a change codec, whose decoded change is added to the true neutral), the error through Eq. 9 (decoded expression - decoded neutral added to the true neutral:
the best a denoiser could reach with this codec), the neutral copy's error for scale, and PSNR per BRDF kind
of the decoded maps and of the texture transfer (true neutral + decoded difference), and the spurious motion
of the vertices each expression leaves still.
"""

from __future__ import annotations

import argparse
import time

import torch

from expdiff_core.evaluation.codec import PooledChanges, codec_round_trip
from expdiff_core.io.dataset import Dataset
from expdiff_core.models.patch_codec import load_codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="held-out dataset folder (`expdiff data synth`)")
    parser.add_argument("--vae", action="append", default=[], help="codec folder; repeat to compare")
    parser.add_argument("--pooled", action="append", type=int, default=[], metavar="F",
                        help="also the no-learning reference: changes area-pooled by F and upsampled bilinearly "
                        "(what a linear latent of that downsampling keeps); repeatable")
    parser.add_argument("--subjects", type=int, default=None, help="first N subjects (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--geometry-only", action="store_true", help="skip the BRDF maps (4x faster on a CPU)")
    args = parser.parse_args()
    dataset = Dataset(args.dataset)
    subjects = dataset.subjects[: args.subjects]
    print(f"{args.dataset}: {len(subjects)} subject(s), {dataset.resolution}^2 maps, torch {torch.__version__}")
    if not args.vae and not args.pooled:
        parser.error("give at least one --vae or --pooled")
    codecs = [(folder, load_codec(folder, device=args.device)) for folder in args.vae]
    codecs += [(f"pooled {f}x (no learning)", PooledChanges(f)) for f in args.pooled]
    for name, codec in codecs:
        started = time.perf_counter()
        r = codec_round_trip(dataset, codec, subjects, textures=not args.geometry_only)
        print(f"\n{name}  ({r.samples} expression samples, {time.perf_counter() - started:.0f} s)")
        kind_of = "change codec: decoded changes on the true neutral" if r.absolute_mm != r.absolute_mm else \
            f"absolute codec; decoded map sampled back: {r.absolute_mm:.4f} mm mean vertex error"
        print(f"  {kind_of}")
        print(f"  geometry, through Eq. 9 (true latents):        {r.eq9_mm:.4f} mm   (neutral copy {r.neutral_copy_mm:.4f} mm)")
        print(f"  spurious motion of the vertices left still:    {r.still_mm:.4f} mm")
        for kind in r.psnr:
            print(f"  {kind:<10} PSNR decoded {r.psnr[kind]:6.2f} dB   transfer (neutral + decoded difference) "
                  f"{r.transfer_psnr[kind]:6.2f} dB")


if __name__ == "__main__":
    main()
