"""A deployed night fans out: ``nightly-build`` with ``build_deployment`` makes one ``build-character/on-demand``
run per character on a real Prefect server, two GPU-pool workers pick them up, and a failed character is
isolated. (The in-process night is covered in test_build_flow.py.)

Everything started (server, workers, their flow-run processes) is stopped even when a step fails.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import write_neutral_asset
from .services import PrefectStack

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("fanout-worker-a", "fanout-worker-b")
GOOD = ("alice", "bob")


@pytest.fixture(scope="module")
def night(tmp_path_factory, tiny_model):
    """Two good characters and one with a missing texture, built by a deployed-style night on two workers."""
    root = tmp_path_factory.mktemp("night-fanout")
    mesh, textures = write_neutral_asset(root / "asset")
    manifest = root / "nightly.toml"
    lines = ["[defaults]", f'model = "{tiny_model}"', 'expressions = ["jawOpen"]', "steps = 2", ""]
    for name in GOOD:
        lines += ["[[characters]]", f'name = "{name}"', f'mesh = "{mesh}"', f'textures = {{ albedo = "{textures["albedo"]}" }}', ""]
    lines += ["[[characters]]", 'name = "bad"', f'mesh = "{mesh}"', 'textures = { albedo = "asset/tex/missing.<UDIM>.exr" }']
    manifest.write_text("\n".join(lines) + "\n")
    with PrefectStack(root, REPO, deployments=["build-character/on-demand"], gpu_limit=2,
                      extra_env={"OMP_NUM_THREADS": "1"}) as stack:
        workers = stack.start_workers(WORKERS, queues=["builds"])
        code = ("import json; from flows.nightly_build import nightly_build; "
                f"s = nightly_build(manifest={str(manifest)!r}, build_deployment='build-character/on-demand', "
                "return_state=True); print('NIGHT ' + json.dumps({'id': str(s.state_details.flow_run_id), "
                "'failed': s.is_failed(), 'message': s.message or ''}))")
        out = stack.cli([sys.executable, "-c", code], 900)
        found = json.loads(re.search(r"^NIGHT (.*)$", out, re.M).group(1))
        yield {**found, "api": stack.api, "workers": workers, "root": root, "logs": stack.logs}


def _children(api: str, night_id: str) -> dict[str, dict]:
    """{flow run name: flow run} of the build-character runs made under the night (``run_deployment`` links
    each as a subflow through a task run it adds to the night, beside the mapped task that called it)."""
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [night_id]}}}, timeout=10).json()
    task_ids = [t["id"] for t in tasks]
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"parent_task_run_id": {"any_": task_ids}}},
                      timeout=10).json()
    return {r["name"]: r for r in runs}


def test_the_night_fails_naming_only_the_bad_character(night):
    assert night["failed"], night
    assert "1 of 3 character build(s) failed: bad" in night["message"]


def test_each_character_is_its_own_deployment_run_under_the_night(night):
    children = _children(night["api"], night["id"])
    assert sorted(children) == ["build-alice", "build-bad", "build-bob"], f"{children}\n{night['logs']()}"
    deployment = httpx.get(f"{night['api']}/deployments/name/build-character/on-demand", timeout=10).json()
    assert {r["deployment_id"] for r in children.values()} == {deployment["id"]}
    states = {name: r["state"]["type"] for name, r in children.items()}
    assert states == {"build-alice": "COMPLETED", "build-bob": "COMPLETED", "build-bad": "FAILED"}


def test_good_characters_are_published_and_listed_with_their_versions(night):
    artifacts = httpx.post(f"{night['api']}/artifacts/filter",
                           json={"artifacts": {"flow_run_id": {"any_": [night["id"]]}}}, timeout=10).json()
    rows = {r["character"]: r for r in json.loads(next(a for a in artifacts if a["key"] == "nightly-characters")["data"])}
    for name in GOOD:
        assert rows[name]["outcome"] == "built"
        assert rows[name]["version"].endswith(f"{name}/v001") and Path(rows[name]["version"], f"{name}.usda").is_file()
    assert rows["bad"]["outcome"] == "failed" and "missing" in rows["bad"]["detail"]


def test_both_workers_build_characters(night):
    children = _children(night["api"], night["id"])
    started = {w.name: [n for n, r in children.items() if f"Flow run '{r['name']}' submitted to infrastructure" in w.log()]
               for w in night["workers"]}
    assert sorted(n for names in started.values() for n in names) == sorted(children), started
    assert all(started.values()), f"a worker built nothing: {started}"
