"""``expdiff models``: inspect and promote registered model versions in MLflow."""

from __future__ import annotations

import argparse

from .common import settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="registered models in MLflow: resolve, promote",
                       description="Registered ExpDiff models (VAE, denoiser, upscaler) in the MLflow registry.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pr = msub.add_parser("promote", help="point the 'champion' alias (or --alias) at a version",
                         description="Move an alias of a registered model to VERSION. New versions get "
                         "'candidate' automatically; nightly builds use 'champion'.")
    pr.add_argument("name", help="registered model name, e.g. expdiff-denoiser")
    pr.add_argument("version", help="version number to promote")
    pr.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    pr.set_defaults(func=_promote)
    rs = msub.add_parser("resolve", help="show which version a models:/NAME@alias reference names",
                         description="Resolve a models:/NAME@alias or models:/NAME/N reference and print its "
                         "version, MLflow run and artifact source.")
    rs.add_argument("uri", help="e.g. models:/expdiff-denoiser@champion")
    rs.set_defaults(func=_resolve)
    asm = msub.add_parser("assemble", help="build an ExpDiff pipeline folder from a trained VAE and denoiser",
                          description="Assemble a trained latent codec (`expdiff train vae`) and a finished "
                          "diffusion run (`expdiff train diffusion`) with their dataset's template into one "
                          "pipeline folder (pipeline_config.json, template.obj, vae/, denoiser/, README.md "
                          "model card) that `expdiff build --model` and the flows load.")
    asm.add_argument("--dataset", required=True, metavar="PATH", help="the dataset both were trained on")
    asm.add_argument("--vae", required=True, metavar="PATH", help="VAE model folder")
    asm.add_argument("--diffusion", required=True, metavar="PATH", help="diffusion training run folder")
    asm.add_argument("--out", required=True, metavar="PATH", help="new pipeline folder (must not exist)")
    asm.add_argument("--name", default="expdiff-offline", help="model name in the model card (default %(default)s)")
    asm.add_argument("--steps", type=int, default=30, help="default sampling steps (default %(default)s)")
    asm.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++", "ddpm"], help="default sampler")
    asm.add_argument("--strength", type=float, default=1.0,
                     help="default SDEdit strength; 1 = start from pure noise (default %(default)s)")
    asm.set_defaults(func=_assemble)


def _promote(args: argparse.Namespace) -> int:
    from ..registry import promote

    ref = promote(settings_from(args), args.name, args.version, args.alias)
    print(f"{ref.name}@{args.alias} -> version {ref.version} (run {ref.run_id})")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from ..registry import resolve_version

    ref = resolve_version(settings_from(args), args.uri)
    print(f"{args.uri} -> {ref.uri} (run {ref.run_id})\nsource {ref.source}")
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from ..training.assemble import assemble_pipeline

    out = assemble_pipeline(args.dataset, args.vae, args.diffusion, args.out, name=args.name, steps=args.steps,
                            sampler=args.sampler, strength=args.strength)
    print(f"wrote pipeline {out}")
    return 0
