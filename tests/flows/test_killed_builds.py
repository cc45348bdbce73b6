"""A build killed outright (SIGKILL) leaves a RUNNING flow run; the next build's sweep marks it Crashed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def test_the_next_build_marks_a_killed_builds_flow_run_crashed(prefect_harness, tmp_path, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from expdiff_core.config import load_settings
    from tasks.common import begin_build_run

    @flow(name="killed-build-stand-in")
    def stand_in():
        return None

    monkeypatch.setenv("EXPDIFF_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EXPDIFF_OUTPUT_ROOT", str(tmp_path / "builds"))
    settings = load_settings()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(stand_in, state=Running())
    # The killed build: it recorded itself as running, then its process died without any cleanup.
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from expdiff_core.housekeeping import register_build, work_folder
        register_build({str(settings.state_path)!r}, {str(run.id)!r},
                       work_folder({str(settings.state_path)!r}, "hero", {str(run.id)!r}))
        os.kill(os.getpid(), signal.SIGKILL)
        """)], check=False)
    from expdiff_core.housekeeping import release_build

    begin_build_run(settings, "hero", "run-next")
    release_build(settings.state_path, "run-next")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.name == "Crashed"
