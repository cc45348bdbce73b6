"""Evaluation as JSON steps: baseline rows from a tiny dataset, published to CSV and an MLflow run."""

from __future__ import annotations

import json

import pytest

from expdiff_core.config import load_settings
from expdiff_core.errors import PublishError
from expdiff_core.evaluation.report import read_csv
from expdiff_core.orchestration_helpers.evaluation_runs import evaluate_model, publish_evaluation


@pytest.mark.slow  # MLflow's SQLite store setup and the evaluation imports: 10-20 s on 2 shared cores
def test_rows_are_json_and_publish_to_csv_and_mlflow(make_tiny_dataset, tmp_path):
    from mlflow import MlflowClient

    settings = load_settings()
    root = make_tiny_dataset(tmp_path / "ds", splits={"s0": "train", "s1": "train", "s2": "test"})
    rows = evaluate_model(settings, root, None, split="test", device="cpu")
    assert json.loads(json.dumps(rows)) == rows
    assert [(r["method"], r["expression"]) for r in rows] == [
        (m, e) for m in ("neutral copy", "3DMM", "ridge") for e in ("all", "jawOpen", "mouthSmile_L")]

    published = publish_evaluation(settings, rows, tmp_path / "eval", {"split": "test"}, "tiny")
    assert [(r.method, r.expression) for r in read_csv(published["csv"])] == [(r["method"], r["expression"]) for r in rows]
    run = MlflowClient(settings.tracking_uri).get_run(published["run_id"])
    assert run.info.experiment_id == published["experiment_id"] and run.data.params == {"split": "test"}
    with pytest.raises(PublishError):  # a published table is never overwritten
        publish_evaluation(settings, rows, tmp_path / "eval", {"split": "test"}, "tiny")
