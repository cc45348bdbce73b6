"""``expdiff infra serve-artifacts`` serves the state folder's artifacts until stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request


def test_serve_artifacts_serves_the_state_artifacts_folder(tmp_path):
    state = tmp_path / "state"
    (state / "artifacts" / "builds").mkdir(parents=True)
    (state / "artifacts" / "builds" / "hero.png").write_bytes(b"\x89PNG sheet")
    env = {**os.environ, "EXPDIFF_STATE_DIR": str(state)}
    server = subprocess.Popen([sys.executable, "-m", "expdiff_core.cli", "infra", "serve-artifacts", "--port", "0"],
                              env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = server.stdout.readline()  # printed once listening
        url = re.search(r"at (http://127\.0\.0\.1:\d+)", line).group(1)
        assert str(state / "artifacts") in line
        with urllib.request.urlopen(f"{url}/builds/hero.png", timeout=10) as response:
            assert response.read() == b"\x89PNG sheet"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
