"""``expdiff build``: build one character's expression asset by running the ``build-character`` flow."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import settings_from

DEFAULT_MODEL = "models:/expdiff@champion"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="build FACS blendshapes + dynamic BRDF maps for a character and publish USD",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the build-character flow: ingest the neutral mesh and maps, generate every expression "
        "with the ExpDiff model, recover meshes on your topology (Eq. 9), transfer the expression changes onto "
        "your textures, and publish <output_root>/<character>/v###/ as USD (validated), with a contact sheet.\n\n"
        "  expdiff build --demo\n"
        "  expdiff build head.obj --albedo 'tex/albedo.<UDIM>.exr' --normal tex/ --character hero\n\n"
        "Runs on Prefect's ephemeral local API unless PREFECT_API_URL (or the prefect_api_url setting) names a "
        "server; MLflow's SQLite store under the state folder unless mlflow_tracking_uri is set.")
    p.add_argument("mesh", nargs="?", metavar="MESH", help="neutral mesh (.obj .ply .usd*) on the model's template")
    p.add_argument("--demo", action="store_true",
                   help="build the bundled held-out synthetic head (writes it under <state_dir>/demo first)")
    for kind in ("albedo", "specular", "roughness", "normal"):
        p.add_argument(f"--{kind}", metavar="PATTERN",
                       help=f"{kind} maps: a '<UDIM>' pattern, one tile's file or a folder"
                       + (" (required)" if kind == "albedo" else " (default: generated from albedo)"))
    p.add_argument("--character", metavar="NAME", help="character name (USD prim name; default: mesh file stem)")
    p.add_argument("--expressions", nargs="+", metavar="EXPR",
                   help="FACS unit names, free prompts, or blends 'a->b@w' (default: all 56 units)")
    p.add_argument("--model", default=None, metavar="REF",
                   help=f"models:/NAME@alias, models:/NAME/VERSION or a pipeline folder (default {DEFAULT_MODEL}, "
                   "the bundled offline default registered in MLflow on first use)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s); same seed, same result")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--sampler", choices=["ddim", "dpm++", "ddpm"], default=None, help="sampler (default: the model's)")
    p.add_argument("--strength", type=float, default=None,
                   help="SDEdit strength in (0, 1]; 1 starts from pure noise (default: the model's)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: settings' device)")
    p.add_argument("--output-root", default=None, metavar="DIR", help="publish under DIR (default: settings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import facs
    from ..errors import ExpDiffInputError

    settings = settings_from(args)
    if args.demo == bool(args.mesh):
        raise ExpDiffInputError(None, "give either a MESH or --demo")
    if args.demo:
        from ..demo import DEMO_CHARACTER, write_demo_asset

        asset = write_demo_asset(settings.state_path / "demo")
        mesh, textures = asset["mesh"], dict(asset["textures"])
        character = args.character or DEMO_CHARACTER
    else:
        if not args.albedo:
            raise ExpDiffInputError(args.mesh, "--albedo is required")
        mesh = str(Path(args.mesh).resolve())
        textures = {k: getattr(args, k) for k in ("albedo", "specular", "roughness", "normal") if getattr(args, k)}
        character = args.character or Path(args.mesh).stem
    if args.output_root:
        os.environ["EXPDIFF_OUTPUT_ROOT"] = str(Path(args.output_root).resolve())
    if args.config:
        os.environ["EXPDIFF_CONFIG"] = str(Path(args.config).resolve())
    if settings.prefect_api_url:
        os.environ.setdefault("PREFECT_API_URL", settings.prefect_api_url)
    # Prefect gives its ephemeral API 20 s to start; a loaded 2-core machine can need more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from flows.build_character import build_character

    result = build_character(character=character, mesh=mesh, textures=textures,
                             expressions=list(args.expressions or facs.UNIT_NAMES),
                             model=args.model or DEFAULT_MODEL, seed=args.seed, steps=args.steps,
                             sampler=args.sampler, strength=args.strength, device=args.device)
    print(f"published {result['root_layer']}")
    print(f"contact sheet {result['contact_sheet']}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    print(f"stages: {timings}")
    return 0
