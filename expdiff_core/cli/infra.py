"""``expdiff infra``: set up the Prefect server for ExpDiff (gpu pool, gpu limit) and serve run images."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infra", help="set up the Prefect server (gpu pool and limit); serve run images",
                       description="Orchestration setup. 'setup' creates the 'gpu' work pool from "
                       "infra/work-pools/ and the 'gpu' tag concurrency limit on the Prefect server at "
                       "$PREFECT_API_URL; 'serve-artifacts' serves run images (contact sheets) so the Prefect "
                       "UI can show them. See docs/orchestration.md.")
    infra = p.add_subparsers(dest="infra_command", metavar="SUBCOMMAND", required=True)

    s = infra.add_parser("setup", help="create/update the 'gpu' work pool and the 'gpu' concurrency limit",
                         description="Create (or update) the 'gpu' work pool from its base job template and set "
                         "the 'gpu' tag concurrency limit (at most N GPU task runs at once, server-wide: use the "
                         "number of GPUs serving the pool). Idempotent. Talks to $PREFECT_API_URL.")
    s.add_argument("--pool-type", choices=["process", "kubernetes"], default="process",
                   help="worker type of the pool: 'process' (workers on GPU machines) or 'kubernetes' "
                   "(one Job per flow run requesting nvidia.com/gpu); default process")
    s.add_argument("--gpu-limit", type=int, default=1, metavar="N",
                   help="gpu tag concurrency limit: the number of GPUs serving the pool (default 1)")
    s.add_argument("--templates", default=None, metavar="DIR",
                   help="folder holding gpu-process.json / gpu-kubernetes.json (default: the checkout's "
                   "infra/work-pools)")
    s.set_defaults(func=run_setup)

    a = infra.add_parser("serve-artifacts", help="serve run images so the Prefect UI can show them",
                         description="Serve the artifacts folder (<state_dir>/artifacts: contact sheets written by "
                         "flows) over HTTP, read-only, files only. Set EXPDIFF_ARTIFACT_BASE_URL on the workers "
                         "to the URL printed here (as the browser reaches it) so flows link their images. "
                         "Runs until interrupted.")
    a.add_argument("--root", default=None, metavar="DIR", help="folder to serve (default <state_dir>/artifacts)")
    a.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; use 0.0.0.0 only on a trusted network)")
    a.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    a.set_defaults(func=run_serve_artifacts)


def run_setup(args: argparse.Namespace) -> int:
    from flows.infra import setup_infrastructure

    done = setup_infrastructure(args.pool_type, args.gpu_limit, args.templates)
    pool = done["pool"]
    print(f"work pool   {pool['name']} (type {pool['type']}; job variables: {', '.join(pool['variables'])})")
    print(f"gpu limit   {done['gpu_concurrency_limit']} concurrent task run(s) tagged 'gpu'")
    return 0


def run_serve_artifacts(args: argparse.Namespace) -> int:
    from ..orchestration_helpers.artifact_server import ARTIFACTS_FOLDER, make_artifact_server, server_url

    root = Path(args.root) if args.root else settings_from(args).state_path / ARTIFACTS_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    server = make_artifact_server(root, args.host, args.port)
    print(f"serving {root} at {server_url(server)} (EXPDIFF_ARTIFACT_BASE_URL={server_url(server)})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
