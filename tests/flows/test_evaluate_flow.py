"""``evaluate`` under the Prefect test harness: the tiny model vs the baselines on a synthetic held-out identity."""

from __future__ import annotations

import csv
import json

import pytest

from .conftest import flow_run_id, run_artifacts, task_states

pytestmark = pytest.mark.slow

EXPRESSIONS = ["jawOpen", "mouthSmile_L"]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Two procedural identities at 64^2 (one train, one test), ~15-30 s."""
    from expdiff_core.synth.factory import ProceduralSource, write_dataset

    return write_dataset(tmp_path_factory.mktemp("eval") / "heldout", ProceduralSource(), 2, 64, seed=0,
                         progress=False)


def test_evaluate_scores_model_and_baselines_and_logs_to_mlflow(prefect_harness, tiny_model, heldout):
    from mlflow import MlflowClient

    from expdiff_core.config import load_settings
    from flows.evaluate import evaluate

    params = dict(dataset=str(heldout), model=str(tiny_model), expressions=EXPRESSIONS, steps=2, device="cpu")
    state = evaluate(**params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert list(result["methods"]) == ["neutral copy", "3DMM", "ridge", "ExpDiff"]

    with open(result["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["method"], r["expression"]) for r in rows} == {
        (m, e) for m in result["methods"] for e in ["all", *EXPRESSIONS]}
    run = MlflowClient(load_settings().tracking_uri).get_run(result["mlflow_run_id"])
    assert run.data.params["split"] == "test" and run.data.params["model"].startswith("sha256:")

    found = run_artifacts(flow_run_id(state))
    table = json.loads(found["evaluation-heldout-metrics"].data)
    assert [r["method"] for r in table] == ["neutral copy", "3DMM", "ridge", "ExpDiff"]
    # The neutral copy does not move: its FVD is the mean true displacement, which 3DMM must beat on
    # identities drawn like the training one.
    assert table[1]["fvd_mm"] < table[0]["fvd_mm"]
    summary = found["evaluation-heldout-summary"].data
    assert "lowest FVD" in summary and result["csv"] in summary

    again = evaluate(**params, return_state=True)
    assert again.is_completed(), again.message
    assert task_states(flow_run_id(again))["evaluate-model"] == "Cached"
    assert again.result()["csv"] != result["csv"]  # a new table is published per run, never overwritten


def test_baselines_only_without_a_model(prefect_harness, heldout):
    from flows.evaluate import evaluate

    state = evaluate(dataset=str(heldout), model=None, expressions=["jawOpen"], return_state=True)
    assert state.is_completed(), state.message
    assert list(state.result()["methods"]) == ["neutral copy", "3DMM", "ridge"]
    assert "resolve-model" not in task_states(flow_run_id(state))
