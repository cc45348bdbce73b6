"""A read-only static file server for run artifacts (contact sheets), so the Prefect UI can show them.

Prefect image artifacts are URLs that the *browser* loads; files on a worker's disk are not URLs. Flows
write images under one artifacts folder (``<state_dir>/artifacts`` by default) and link them as
``<base_url>/<path relative to that folder>``; this server (``expdiff infra serve-artifacts``) serves the
folder. It binds to loopback unless told otherwise and serves files only (no directory listings).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from ..errors import ExpDiffInputError

logger = logging.getLogger(__name__)

# Under the state folder: where flows write run images and what ``expdiff infra serve-artifacts`` serves.
ARTIFACTS_FOLDER = "artifacts"


class _FilesOnlyHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of files under the served folder; folders answer 404 instead of a listing."""

    def list_directory(self, path):  # noqa: D401 - http.server's hook
        self.send_error(404, "Not Found")
        return None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        logger.debug("%s %s", self.address_string(), format % args)


def make_artifact_server(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A (not yet serving) HTTP server for the files under ``root``; port 0 picks a free port.

    Call ``serve_forever()`` (or use ``serve_in_thread``) and ``shutdown()`` + ``server_close()`` to stop.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExpDiffInputError(root, "artifacts folder not found")
    handler = functools.partial(_FilesOnlyHandler, directory=str(root))
    return ThreadingHTTPServer((host, port), handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Start ``server.serve_forever()`` on a daemon thread; returns the thread."""
    thread = threading.Thread(target=server.serve_forever, name="expdiff-artifact-server", daemon=True)
    thread.start()
    return thread


def server_url(server: ThreadingHTTPServer) -> str:
    """``http://host:port`` of a server made by ``make_artifact_server``."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def artifact_url(path: str | os.PathLike, root: str | os.PathLike, base_url: str) -> str:
    """The URL under ``base_url`` of ``path``, a file inside the served ``root`` folder."""
    path, root = Path(path).resolve(), Path(root).resolve()
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise ExpDiffInputError(path, f"is not inside the served artifacts folder {root}") from None
    return f"{base_url.rstrip('/')}/{quote(relative.as_posix())}"
