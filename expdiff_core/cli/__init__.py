"""``expdiff`` command line: thin argument parsing; every command calls into expdiff_core (or flows).

Each command group lives in its own module with ``register(subparsers)``; list it in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback

from ..errors import ExpDiffEnvironmentError, ExpDiffError

# Exit statuses of every command (``expdiff build --help`` says what they mean for a build).
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _terminated(signum, frame):  # SIGTERM: unwind like Ctrl-C, so atexit handlers (Prefect's server) run
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors print one line ``expdiff COMMAND: error: <path>: <problem>`` (the traceback
    only with --debug); exit 2 for ExpDiff's input errors, 3 for environment failures (no space, read-only,
    permission), 1 for anything else, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error ends as one line (and a documented status)
        return report_error(args, exc)


def report_error(args: argparse.Namespace, exc: BaseException) -> int:
    """Print ``exc`` as one line (plus its traceback with --debug); return the exit status for it."""
    from ..fileio import environment_error, is_unhealable

    if isinstance(exc, OSError) and is_unhealable(exc):
        exc = environment_error(exc)
    if getattr(args, "debug", False):
        traceback.print_exception(exc)
    if isinstance(exc, ExpDiffEnvironmentError):
        status = EXIT_ENVIRONMENT
    elif isinstance(exc, ExpDiffError):
        status = EXIT_REFUSED
    else:
        status = EXIT_FAILED
    text = str(exc).strip() if isinstance(exc, ExpDiffError) else f"{type(exc).__name__}: {str(exc).strip()}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    lines = text.splitlines() or [type(exc).__name__]
    more = "" if getattr(args, "debug", False) else " (--debug shows the traceback)"
    print(f"expdiff {args.command}: error: {lines[0]}" + (more if status == EXIT_FAILED else ""), file=sys.stderr)
    for line in lines[1:]:  # multi-line reports (e.g. every USD validation error) keep their detail lines
        print(f"  {line}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
