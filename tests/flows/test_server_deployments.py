"""Acceptance against a real Prefect server on loopback: deploy from prefect.yaml, two GPU-pool workers, three
deployment runs, then the Prefect UI in headless Chromium showing a run and its artifacts.

Everything started here (server, two workers and their flow-run processes, the artifact file server, the
browser) runs in its own process group / thread and is torn down even when a step fails. Waits are bounded
and say what they waited for, with the services' logs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from expdiff_core.io.dataset import validate_dataset
from expdiff_core.orchestration_helpers.artifact_server import make_artifact_server, serve_in_thread, server_url

from .chromium import Chromium, chromium_binary, free_port
from .services import Service, wait_until as _wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKERS = ("expdiff-test-worker-a", "expdiff-test-worker-b")
RUNS = 3
PREVIEW_RUN = 0  # the run that also renders a contact sheet, for the UI check


def wait_until(*args, **kwargs):
    return _wait_until(*args, not_ready=(OSError, httpx.TransportError), **kwargs)


def _run(argv, env, timeout, cwd=REPO) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Prefect server (SQLite, temp PREFECT_HOME) on a free loopback port, the artifact file server, and
    the environment every CLI call and worker gets. Yields a dict; tears everything down afterwards."""
    root = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    (root / "state" / "artifacts").mkdir(parents=True)
    artifacts = make_artifact_server(root / "state" / "artifacts")
    serve_in_thread(artifacts)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EXPDIFF_"))}
    env.update({
        "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,  # the UI asks this URL for data; it defaults to port 4200 otherwise
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        "EXPDIFF_SRC": str(REPO), "EXPDIFF_STATE_DIR": str(root / "state"),
        "EXPDIFF_OUTPUT_ROOT": str(root / "builds"), "EXPDIFF_ARTIFACT_BASE_URL": server_url(artifacts),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    services: list[Service] = []
    try:
        server = Service("prefect-server", [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         env, root)
        services.append(server)
        wait_until(lambda: server.alive() and httpx.get(f"{api}/health", timeout=5).status_code == 200, 300,
                   "prefect server health", interval=2, explain=server.log_tail)
        yield {"root": root, "api": api, "ui": f"http://127.0.0.1:{port}", "env": env, "services": services,
               "artifacts_url": server_url(artifacts)}
    finally:
        for service in reversed(services):
            service.stop()
        artifacts.shutdown()
        artifacts.server_close()


@pytest.fixture(scope="module")
def deployment_runs(stack):
    """expdiff infra setup, prefect deploy --all, two workers (--limit 1 each), three dataset runs to the end."""
    env, api, root, services = stack["env"], stack["api"], stack["root"], stack["services"]
    setup = _run([sys.executable, "-m", "expdiff_core.cli", "infra", "setup", "--gpu-limit", "1"], env, 300)
    assert "work pool   gpu (type process" in setup
    _run([BIN / "prefect", "--no-prompt", "deploy", "--all"], env, 600)

    workers = [Service(name, [BIN / "prefect", "worker", "start", "--pool", "gpu", "--limit", "1", "--name", name],
                       env, root, cwd=root) for name in WORKERS]
    services.extend(workers)
    logs = lambda: "\n".join(s.log_tail() for s in services)  # noqa: E731

    def online() -> bool:
        found = httpx.post(f"{api}/work_pools/gpu/workers/filter", json={}, timeout=10).json()
        return {w["name"] for w in found if w["status"] == "ONLINE"} >= set(WORKERS)

    wait_until(online, 300, "both workers online in pool 'gpu'", interval=2, explain=logs)

    runs = []
    for i in range(RUNS):
        out = root / "datasets" / f"ds{i}"
        # 1 identity at 64^2, the smallest dataset: seconds of work once the flow process has imported.
        stdout = _run([BIN / "prefect", "deployment", "run", "dataset/dataset", "--param", f"out={out}",
                       "--param", "identities=1", "--param", "resolution=64",
                       "--param", f"preview={'true' if i == PREVIEW_RUN else 'false'}"], env, 180)
        runs.append({"id": re.search(r"UUID: ([0-9a-f-]{36})", stdout).group(1), "out": out})

    def states() -> dict[str, str]:
        return {r["id"]: httpx.get(f"{api}/flow_runs/{r['id']}", timeout=10).json()["state"]["type"] for r in runs}

    final = wait_until(lambda: (s := states()) and all(t in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
                                                        for t in s.values()) and s,
                       900, "three deployment runs finished", interval=3, explain=logs)
    return {"runs": runs, "final": final, "logs": logs, "workers": workers}


def test_three_deployment_runs_complete_on_two_workers(stack, deployment_runs):
    api, runs, final = stack["api"], deployment_runs["runs"], deployment_runs["final"]
    assert set(final.values()) == {"COMPLETED"}, f"{final}\n{deployment_runs['logs']()}"
    for run in runs:
        assert validate_dataset(run["out"]) == []
    # Both workers may try to submit the same run; the server lets one move it to Pending and the other
    # aborts. The one that started it logs "Flow run '<name>' submitted to infrastructure" (stdout).
    names = {r["id"]: httpx.get(f"{api}/flow_runs/{r['id']}", timeout=10).json()["name"] for r in runs}
    assert len(set(names.values())) == RUNS
    started = {w.name: {rid for rid, name in names.items() if f"Flow run '{name}' submitted to infrastructure" in w.log()}
               for w in deployment_runs["workers"]}
    assert sorted(rid for ids in started.values() for rid in ids) == sorted(names), started  # each run once
    assert all(started.values()), f"a worker started none of the runs: {started}"


def test_deployments_carry_the_prefect_yaml_settings(stack, deployment_runs):
    api = stack["api"]
    nightly = httpx.get(f"{api}/deployments/name/nightly-build/nightly", timeout=10).json()
    assert nightly["work_pool_name"] == "gpu" and nightly["work_queue_name"] == "nightly"
    assert nightly["parameters"]["build_deployment"] == "build-character/on-demand"
    assert nightly["schedules"][0]["schedule"] == {"cron": "0 2 * * *", "timezone": "Europe/London", "day_or": True}
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    gpu = httpx.get(f"{api}/concurrency_limits/tag/gpu", timeout=10).json()
    assert gpu["concurrency_limit"] == 1


@pytest.fixture
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run does)")
    chromium = Chromium(binary)
    yield chromium
    chromium.close()


def _artifacts(api: str, run_id: str) -> dict[str, dict]:
    found = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
                       timeout=10).json()
    return {a["key"]: a for a in found if a["key"]}


def test_prefect_ui_shows_the_run_its_summary_and_contact_sheet(stack, deployment_runs, browser, tmp_path):
    api, ui = stack["api"], stack["ui"]
    run = deployment_runs["runs"][PREVIEW_RUN]
    assert deployment_runs["final"][run["id"]] == "COMPLETED"
    name = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["name"]
    keys = {kind: f"dataset-ds{PREVIEW_RUN}-{kind}" for kind in ("summary", "contact-sheet", "subjects", "progress")}
    shots = Path(os.environ.get("EXPDIFF_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    browser.goto(f"{ui}/runs/flow-run/{run['id']}")
    browser.wait_for_text(name, "Completed", "Deployment\ndataset", "Work Pool\ngpu", "Beginning flow run", timeout=90)
    browser.screenshot(shots / "flow-run.png")
    browser.click_text("Artifacts")
    browser.wait_for_text(*keys.values(), "IMAGE", "MARKDOWN", timeout=60)
    browser.screenshot(shots / "flow-run-artifacts.png")

    found = _artifacts(api, run["id"])
    browser.goto(f"{ui}/artifacts/artifact/{found[keys['summary']]['id']}")
    browser.wait_for_text(f"Dataset ds{PREVIEW_RUN}", str(run["out"]), "expressions per identity", timeout=60)
    browser.screenshot(shots / "summary-artifact.png")

    sheet = found[keys["contact-sheet"]]
    assert sheet["type"] == "image" and sheet["data"].startswith(stack["artifacts_url"])
    browser.goto(f"{ui}/artifacts/artifact/{sheet['id']}")
    image = browser.wait_for_image(stack["artifacts_url"], timeout=60)
    assert image["width"] > 100  # the rendered sheet, not a broken-image icon
    browser.screenshot(shots / "contact-sheet-artifact.png")
