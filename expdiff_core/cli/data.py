"""``expdiff data``: make training/test datasets (synthetic or from ICT-FaceKit) and validate them."""

from __future__ import annotations

import argparse
import os
import time

from ..errors import ExpDiffInputError
from .common import settings_from

FORMAT_HELP = "Dataset format: docs/dataset.md (manifest.json, template/, subjects/<subject>/<expression>/)."


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make and validate datasets (synthetic faces, ICT-FaceKit)",
                       description="Make datasets of identities x (neutral + 56 expression units), each with a "
                       "mesh and BRDF maps (albedo, specular, roughness, normal) per UDIM tile, and validate "
                       f"them. {FORMAT_HELP}")
    data = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    s = data.add_parser("synth", help="synthesise a dataset of procedural identities",
                        description="Synthesise N procedural identities on our template head, each with the "
                        "neutral and all 56 expression units, and skin maps whose wrinkles, pores and blood "
                        "follow the geometry's compression and stretch. Deterministic: the same seed, count "
                        f"and resolution give byte-identical files. {FORMAT_HELP}")
    _common_make_flags(s)
    s.set_defaults(func=run_synth)

    i = data.add_parser("from-ict-facekit", help="make a dataset from the ICT-FaceKit face model",
                        description="Sample N identities from ICT-FaceKit's PCA identity modes, pose them with "
                        "its ARKit-style shapes (55 of our 56 units; ICT has no tongueOut, which the manifest "
                        "lists under absent_units) and synthesise skin maps on ICT's UVs (skin groups M_Face "
                        f"and M_BackHead, tiles 1001-1002), on ICT's own topology. {FORMAT_HELP}")
    i.add_argument("--source", required=True, metavar="DIR",
                   help="ICT-FaceKit folder with generic_neutral_mesh.obj, ict_facekit_deltas.npz and "
                   "vertex_indices.json")
    _common_make_flags(i)
    i.add_argument("--identity-scale", type=float, default=None, metavar="S",
                   help="scale of the N(0, 1) identity weights (default 0.6: plausible, varied faces)")
    i.set_defaults(func=run_from_ict)

    v = data.add_parser("validate", help="check a dataset and list every problem with its file",
                        description="Check a dataset folder: manifest, template, every subject has every "
                        "expression unit, vertex counts, and every map file (present, OpenEXR, resolution, "
                        "channels, pixels readable and in range). Prints each problem with the file it "
                        "concerns; exits 1 if there is any.")
    v.add_argument("path", metavar="PATH", help="dataset folder (holding manifest.json)")
    v.add_argument("--quick", action="store_true",
                   help="check file headers only (skip reading pixels: no corruption or value-range checks)")
    v.set_defaults(func=run_validate)

    e = data.add_parser("encode", help="encode a dataset into latents for diffusion training",
                        description="Encode every subject x expression x map (position maps made from the vertices, "
                        "and the BRDF maps) with a latent codec into sharded safetensors (one per subject) for "
                        "`expdiff train diffusion`. Resumable: shards already written are kept.")
    e.add_argument("dataset", metavar="DATASET", help="dataset folder made by `expdiff data synth|from-ict-facekit`")
    e.add_argument("--out", required=True, metavar="LATENTS", help="latent dataset folder (created or resumed)")
    e.add_argument("--vae", required=True, metavar="PATH",
                   help="latent codec folder: ours from `expdiff train vae`, or a Stable Diffusion VAE folder")
    e.add_argument("--change-vae", metavar="PATH",
                   help="a change codec (`expdiff train change-codec` or `expdiff train vae --change`): every "
                   "expression is encoded as its change from the subject's neutral with it, the neutral with --vae (the condition); for "
                   "`expdiff train diffusion --target change`")
    e.add_argument("--condition", choices=("vae", "change"), default="vae",
                   help="what encodes the neutral (the denoiser's condition): --vae (default), or --change-vae (for "
                   "a subspace denoiser with condition_codec 'change': the linear codec keeps the neutral "
                   "geometry's detail)")
    e.add_argument("--position-scale-cm", type=float, default=6.0, metavar="CM",
                   help="displacement that maps to +-1 in position maps (default %(default)s cm)")
    e.add_argument("--splits", default="train,val,test", metavar="S1,S2",
                   help="identities to encode (default %(default)s; diffusion training reads only train)")
    e.add_argument("--identities", type=int, default=None, metavar="N",
                   help="encode only the first N identities of each split (default: all)")
    e.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    e.set_defaults(func=run_encode)


def _common_make_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identities", type=int, required=True, metavar="N", help="number of identities (subjects)")
    p.add_argument("--resolution", type=int, default=256, metavar="R",
                   help="texels per UDIM tile side, 64..4096 (default 256)")
    p.add_argument("--out", required=True, metavar="PATH", help="new dataset folder (must not exist)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="dataset seed (default 0)")
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help=f"worker processes, one identity each at a time (default 1; this machine has "
                   f"{os.cpu_count()} CPUs)")


def _make(args: argparse.Namespace, source, generator: str) -> int:
    from ..synth.factory import write_dataset

    settings = settings_from(args)
    start = time.perf_counter()
    out = write_dataset(args.out, source, args.identities, args.resolution, seed=args.seed,
                        workers=args.workers, cache_dir=settings.cache_path / "uv_raster", generator=generator)
    minutes = (time.perf_counter() - start) / 60
    n_expr = len(source.units) + 1
    print(f"wrote {out}: {args.identities} identities x {n_expr} expressions at {args.resolution}^2 "
          f"in {minutes * 60:.1f} s ({args.identities / minutes:.2f} identities/min)")
    return 0


def _check_make_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers and an existing --out before the (slow) face source is built."""
    from ..errors import PublishError
    from ..synth.factory import check_resolution

    check_resolution(args.resolution)
    if args.identities < 1:
        raise ExpDiffInputError(None, f"--identities must be at least 1, got {args.identities}")
    if os.path.exists(args.out):
        raise PublishError(f"{args.out}: already exists and will not be overwritten")


def run_synth(args: argparse.Namespace) -> int:
    from ..synth.factory import ProceduralSource

    _check_make_args(args)
    return _make(args, ProceduralSource(), "expdiff data synth")


def run_from_ict(args: argparse.Namespace) -> int:
    from ..synth.factory import IctSource

    _check_make_args(args)
    return _make(args, IctSource(args.source, args.identity_scale), "expdiff data from-ict-facekit")


def run_validate(args: argparse.Namespace) -> int:
    from ..io.dataset import validate_dataset

    problems = validate_dataset(args.path, check_pixels=not args.quick, progress=True)
    for p in problems:
        print(p)
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: valid")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from ..config import load_settings
    from ..models.patch_codec import load_codec
    from ..models.vae import LatentCodec
    from ..training.encode import encode_dataset
    from ..uv.position_map import PositionMapConfig

    settings = load_settings(args.config, {"device": args.device})
    codec = LatentCodec.from_pretrained(args.vae, device=settings.device)
    change_codec = (load_codec(args.change_vae, device=settings.device)
                    if args.change_vae else None)
    out = encode_dataset(args.dataset, codec, args.out, PositionMapConfig(scale_cm=args.position_scale_cm),
                         cache_dir=settings.cache_path / "uv", splits=tuple(args.splits.split(",")),
                         change_codec=change_codec, identities=args.identities, condition=args.condition)
    print(f"wrote latents {out}")
    return 0
