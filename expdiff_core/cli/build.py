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
        "server; MLflow's SQLite store under the state folder unless mlflow_tracking_uri is set.\n\n"
        "Every input is checked before Prefect or any model starts (files readable, template, texture sizes, "
        "expressions, flags, character name, output root writable with room for the output).\n\n"
        "exit status:\n"
        "  0  published a new version\n"
        "  1  the build failed while running (a stage failed; the message says which)\n"
        "  2  refused: a bad input, flag or output root, found before the build started (or bad input found by "
        "a stage)\n"
        "  3  the machine failed during the build: no space left, read-only file system, permission denied\n"
        "  130 interrupted\n"
        "Errors are one line 'expdiff build: error: <path>: <problem>'; --debug adds the traceback.")
    p.add_argument("mesh", nargs="?", metavar="MESH", help="neutral mesh (.obj .ply .usd*) on the model's template")
    p.add_argument("--demo", action="store_true",
                   help="build the bundled held-out synthetic head (writes it under <state_dir>/demo first)")
    for kind in ("albedo", "specular", "roughness", "normal"):
        p.add_argument(f"--{kind}", metavar="PATTERN",
                       help=f"{kind} maps: a '<UDIM>' pattern, one tile's file or a folder"
                       + (" (required)" if kind == "albedo" else " (default: generated from albedo)"))
    p.add_argument("--character", metavar="NAME", help="character name (USD prim name; default: mesh file stem)")
    p.add_argument("--expressions", nargs="+", metavar="EXPR",
                   help="FACS unit names or blends 'a->b@w' (w in [0, 1]) (default: all 56 units, unless only "
                   "--prompt is given)")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a free text prompt to build as an expression (repeatable), e.g. --prompt 'nose wrinkle'")
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
    p.add_argument("--keep-work", action="store_true",
                   help="keep the run's work folder (<state>/cache/builds/<character>/<run id>); removed by default")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import facs
    from ..preflight import PROMPT_PREFIX, PreflightError, check_build, check_expressions, check_sampling

    settings = settings_from(args)
    if args.demo == bool(args.mesh):
        raise PreflightError(None, "give either a MESH or --demo")
    expressions = list(args.expressions or ([] if args.prompt else facs.UNIT_NAMES))
    expressions += [PROMPT_PREFIX + p for p in args.prompt]
    check_sampling(args.seed, args.steps, args.strength, args.sampler)  # values first: no file is touched
    check_expressions(expressions)
    if args.demo:
        from ..preflight import check_writable_folder

        check_writable_folder(settings.state_path, "state folder")
        from ..demo import DEMO_CHARACTER, write_demo_asset

        asset = write_demo_asset(settings.state_path / "demo")
        mesh, textures = asset["mesh"], dict(asset["textures"])
        character = args.character or DEMO_CHARACTER
    else:
        if not args.albedo:
            raise PreflightError(args.mesh, "--albedo is required")
        mesh = str(Path(args.mesh).expanduser().resolve())
        textures = {k: str(Path(getattr(args, k)).expanduser().resolve())
                    for k in ("albedo", "specular", "roughness", "normal") if getattr(args, k)}
        character = args.character
    plan = check_build(settings, mesh=mesh, textures=textures, character=character, expressions=expressions,
                       model=args.model or DEFAULT_MODEL, seed=args.seed, steps=args.steps, sampler=args.sampler,
                       strength=args.strength)
    if args.output_root:
        os.environ["EXPDIFF_OUTPUT_ROOT"] = str(Path(args.output_root).resolve())
    if args.config:
        os.environ["EXPDIFF_CONFIG"] = str(Path(args.config).resolve())
    if settings.prefect_api_url:
        os.environ.setdefault("PREFECT_API_URL", settings.prefect_api_url)
    # Prefect gives its ephemeral API 20 s to start; a loaded 2-core machine can need more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from ..housekeeping import start_watchdog

    # Stops Prefect's temporary API server (a child of this process) if this process is killed.
    start_watchdog()
    from flows.build_character import build_character

    result = build_character(character=plan.character, mesh=mesh, textures=textures, expressions=expressions,
                             model=args.model or DEFAULT_MODEL, seed=args.seed, steps=args.steps,
                             sampler=args.sampler, strength=args.strength, device=args.device,
                             keep_work=args.keep_work)
    print(f"published {result['root_layer']}")
    print(f"contact sheet {result['contact_sheet']}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    print(f"stages: {timings}")
    return 0
