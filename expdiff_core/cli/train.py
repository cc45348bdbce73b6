"""``expdiff train``: train ExpDiff's own offline-default models, one subcommand per model.

Add a model by writing ``_add_<model>(group)`` (its parser, flags and ``func``) and listing it in
``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from .common import add_device_flag, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train ExpDiff's own models (latent codec, ...)",
                       description="Train the offline-default models ExpDiff ships, from a dataset made by "
                       "`expdiff data`. Each model is a subcommand; see `expdiff train MODEL --help`.")
    group = p.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    for add in SUBCOMMANDS:
        add(group)


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(widths) != 4 or min(widths) < 1:
        raise argparse.ArgumentTypeError("four positive block widths are needed (8x downsampling)")
    return widths


# The trainer's defaults (VAETrainConfig, offline_vae_config), repeated so that building the parser does
# not import torch; tests/cli/test_train.py checks they agree.
VAE_DEFAULTS = dict(steps=2000, resolution=None, batch_size=8, learning_rate=1e-3, widths=[32, 64, 128, 128],
                    seed=0, held_out_maps=512)


def _add_vae(group: argparse._SubParsersAction) -> None:
    d = VAE_DEFAULTS
    v = group.add_parser(
        "vae", help="train the latent codec: a small AutoencoderKL on maps of every kind",
        description="Train the offline-default latent codec (a Stable-Diffusion-family AutoencoderKL: 8x "
        "downsampling, 4 latent channels, small widths) on every map of a dataset: position maps made from "
        "each expression's vertices, and the albedo, specular, roughness and normal maps. Trains on the "
        "dataset's train split and reports reconstruction PSNR per map kind on its val split (held-out "
        "identities; a seeded 10% of the train maps when val is empty). Writes a new model folder: "
        "config.json + diffusion_pytorch_model.safetensors, metrics.json and a model card README.md. "
        "Deterministic on CPU for a given --seed.")
    v.add_argument("--dataset", required=True, metavar="PATH", help="dataset folder made by `expdiff data`")
    v.add_argument("--out", required=True, metavar="PATH", help="new model folder (must not exist)")
    v.add_argument("--steps", type=int, default=d["steps"], metavar="N", help="optimizer steps (default %(default)s)")
    v.add_argument("--resolution", type=int, default=d["resolution"], metavar="R",
                   help="train on random RxR crops of the maps, a multiple of 8 (default: whole maps). "
                   "Faster, but the codec is evaluated and used on whole maps, where crop-trained codecs "
                   "do worse (GroupNorm and attention statistics change with image size)")
    v.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="B",
                   help="maps per step (default %(default)s)")
    v.add_argument("--learning-rate", type=float, default=d["learning_rate"], metavar="LR",
                   help="AdamW peak learning rate, cosine decay after warm-up (default %(default)g)")
    v.add_argument("--widths", type=_widths, default=d["widths"], metavar="W1,W2,W3,W4",
                   help="channel widths of the four encoder/decoder blocks (default "
                   f"{','.join(map(str, d['widths']))}; Stable Diffusion's VAE has 128,256,512,512)")
    v.add_argument("--seed", type=int, default=d["seed"], metavar="S", help="seed (default %(default)s)")
    v.add_argument("--held-out-maps", type=int, default=d["held_out_maps"], metavar="N",
                   help="evaluate on at most N held-out maps, drawn at random (default %(default)s)")
    add_device_flag(v)
    v.set_defaults(func=run_vae)


def run_vae(args: argparse.Namespace) -> int:
    from ..errors import ExpDiffInputError
    from ..io.dataset import require_valid_dataset
    from ..models.vae import offline_vae_config
    from ..training.vae import DatasetMaps, VAETrainConfig, train_vae
    from ..uv.position_map import PositionMapConfig

    settings = settings_from(args)
    out = Path(args.out)
    if out.exists():
        raise ExpDiffInputError(out, "output folder already exists; trained models are never overwritten")
    # Headers only: every map is range-checked when the trainer reads it, so the full pixel pass is skipped.
    dataset = require_valid_dataset(args.dataset, check_pixels=False)
    train_subjects, val_subjects = dataset.split("train"), dataset.split("val")
    if not train_subjects:
        raise ExpDiffInputError(dataset.root, "the dataset's train split is empty")
    resolution = args.resolution or dataset.resolution
    if resolution > dataset.resolution:
        raise ExpDiffInputError(dataset.root, f"--resolution {args.resolution} exceeds the dataset's "
                                              f"{dataset.resolution}x{dataset.resolution} maps")
    widths = args.widths
    config = VAETrainConfig(
        steps=args.steps, batch_size=args.batch_size,
        crop_size=None if resolution == dataset.resolution else resolution,
        learning_rate=args.learning_rate, seed=args.seed, device=settings.device,
        held_out_max_maps=args.held_out_maps,
        # GroupNorm groups must divide every width; 32 is Stable Diffusion's choice when they allow it.
        model=offline_vae_config(block_out_channels=widths, norm_num_groups=math.gcd(32, *widths),
                                 sample_size=dataset.resolution),
    )
    position = PositionMapConfig()
    cache = settings.cache_path / "uv_raster"
    maps = DatasetMaps(dataset, train_subjects, position, cache_dir=cache)
    held_out = DatasetMaps(dataset, val_subjects, position, cache_dir=cache) if val_subjects else None
    data_info = {
        "dataset": str(dataset.root.resolve()), "resolution": dataset.resolution, "udims": dataset.udims,
        "train_subjects": train_subjects, "held_out": f"val split: {val_subjects}" if val_subjects
        else f"{config.held_out_fraction:.0%} of the train maps", "position_map": position.to_dict(),
    }
    print(f"training on {len(maps)} maps of {len(train_subjects)} subject(s) "
          f"({', '.join(maps.kinds)}; tiles {dataset.udims}; {dataset.resolution}^2)")
    start = time.perf_counter()
    folder = train_vae(maps, config, out, held_out=held_out, data_info=data_info)
    metrics = json.loads((folder / "metrics.json").read_text())
    print(f"wrote {folder} in {time.perf_counter() - start:.0f} s; scaling factor "
          f"{metrics['scaling_factor']:.5f}; held-out reconstruction:")
    for kind, row in metrics["held_out"].items():
        print(f"  {kind:<10} PSNR {row['psnr_db']:6.2f} dB (min {row['psnr_min_db']:.2f})  "
              f"mean abs error {row['mean_abs_error']:.5f}  [{row['maps']} maps]")
    return 0



def _add_diffusion(group: argparse._SubParsersAction) -> None:
    from ..training.diffusion_config import build_arg_parser

    p = group.add_parser("diffusion", help="train the ExpDiff denoiser on encoded latents",
                         description="Train the ExpDiff dual-attention denoiser (epsilon-prediction, Eq. 6) on a "
                         "latent dataset made by `expdiff data encode`. Resumes from the latest checkpoint in "
                         "--out; for 2-process data-parallel training on CPU run "
                         "`torchrun --nproc_per_node 2 -m expdiff_core.training.diffusion ...` with the same flags.")
    build_arg_parser(p)
    p.set_defaults(func=run_diffusion)


def run_diffusion(args: argparse.Namespace) -> int:
    from ..training.diffusion import run_from_args

    result = run_from_args(args, settings_from(args).device)
    print(f"trained to step {result.step} in {result.seconds:.0f} s; model in {result.model_dir}")
    return 0


SUBCOMMANDS = [_add_vae, _add_diffusion]
