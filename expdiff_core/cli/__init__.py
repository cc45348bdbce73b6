"""``expdiff`` command line: thin argument parsing; every command calls into expdiff_core (or flows).

Each command group lives in its own module with ``register(subparsers)``; list it in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import ExpDiffError

COMMAND_MODULES = [
    "build",
    "doctor",
    "models",
    "usd",
    "data",
    "preview",
    "train",
    "infra",
    "eval",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expdiff",
        description="ExpDiff: one neutral 3D face -> FACS expression blendshapes with dynamic BRDF "
        "textures, delivered as USD.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="TOML", help="settings file (default: $EXPDIFF_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ExpDiffError as exc:
        print(f"expdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
