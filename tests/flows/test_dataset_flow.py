"""The ``dataset`` flow under the Prefect test harness: synthesise -> validate -> preview, with artifacts."""

from __future__ import annotations

import json

import pytest

from expdiff_core.io.dataset import validate_dataset

from .conftest import flow_run_id, run_artifacts, task_states

pytestmark = pytest.mark.slow


@pytest.fixture
def flow():
    from flows.dataset import dataset

    return dataset


def test_dataset_flow_makes_a_valid_dataset_with_artifacts(prefect_harness, flow, tmp_path):
    out = tmp_path / "tiny_ds"
    # 1 identity at 64^2 (the smallest resolution): 57 expressions in ~10 s on one core.
    state = flow(out=str(out), identities=1, resolution=64, seed=3, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert validate_dataset(out) == []
    assert result["subjects"] == 1 and result["path"] == str(out.resolve())

    run = flow_run_id(state)
    assert task_states(run) == {"synthesise-dataset": "Completed", "validate-dataset": "Completed",
                                "dataset-contact-sheet": "Completed"}
    found = run_artifacts(run)
    summary = found["dataset-tiny-ds-summary"]
    assert summary.type == "markdown"
    for needle in ("# Dataset tiny_ds", str(out.resolve()), "| **seed** | 3 |", "64^2 per tile"):
        assert needle in summary.data
    table = json.loads(found["dataset-tiny-ds-subjects"].data)
    assert [row["subject"] for row in table] == ["s0000"]
    assert found["dataset-tiny-ds-progress"].data == 100.0
    # No artifact server configured in this test: the sheet is named in markdown instead of linked.
    assert str(result["contact_sheet"]) in found["dataset-tiny-ds-contact-sheet"].data


def test_task_results_are_persisted_under_the_state_folder(prefect_harness, flow, tmp_path):
    from expdiff_core.config import load_settings
    from tasks.common import results_path

    state = flow(out=str(tmp_path / "ds"), identities=1, resolution=64, preview=False, return_state=True)
    assert state.is_completed(), state.message
    records = [json.loads(p.read_text()) for p in results_path(load_settings()).iterdir()]
    stored = [json.loads(r["result"]) for r in records if r["metadata"]["serializer"]["type"] == "json"]
    assert {"path": str((tmp_path / "ds").resolve()), "identities": 1, "resolution": 64, "seed": 0} in stored


def test_an_existing_dataset_fails_the_flow_naming_the_folder(prefect_harness, flow, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    state = flow(out=str(out), identities=1, resolution=64, preview=False, return_state=True)
    assert state.is_failed()
    assert str(out) in state.message and "will not be overwritten" in state.message
    assert task_states(flow_run_id(state)) == {"synthesise-dataset": "Failed"}


def test_a_corrupt_map_fails_validation_naming_the_file(prefect_harness, make_tiny_dataset, tmp_path):
    from prefect import flow as prefect_flow

    from tasks.dataset import validate_dataset as validate_task

    @prefect_flow
    def check(path: str) -> dict:
        return validate_task(path)

    root = make_tiny_dataset(tmp_path / "ds")
    assert [row["subject"] for row in check(str(root))["subjects"]] == ["s0", "s1", "s2"]
    broken = root / "subjects" / "s1" / "jawOpen" / "albedo.1001.exr"
    broken.write_bytes(broken.read_bytes()[:200])
    state = check(str(root), return_state=True)
    assert state.is_failed() and str(broken) in state.message
