"""Evaluation as two JSON-in/JSON-out steps for flows: score a model against the baselines, then publish
the table (CSV + an MLflow run). See ``expdiff_core.evaluation`` for the metrics and baselines."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Settings
from ..evaluation.evaluate import Row, evaluate_methods

MODEL_METHOD = "ExpDiff"
_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Row))


def evaluate_model(settings: Settings, dataset_root: str | os.PathLike, model_dir: str | os.PathLike | None,
                   split: str = "test", max_subjects: int | None = None, expressions: Sequence[str] | None = None,
                   seed: int = 0, steps: int | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """Rows of ``evaluate_methods`` for the baselines and (when given) the pipeline at ``model_dir`` as
    ``"ExpDiff"``, as JSON: Row fields plus ``psnr_mean`` / ``ssim_mean``. LPIPS when its weights are configured."""
    from ..evaluation.metrics import LpipsMetric, lpips_status

    status = lpips_status(settings)
    lpips = LpipsMetric(status.path, status.net, "cpu") if status.available else None
    rows = evaluate_methods(dataset_root, {MODEL_METHOD: model_dir} if model_dir else {}, split=split,
                            max_subjects=max_subjects, expressions=expressions, seed=seed, steps=steps,
                            device=device, lpips=lpips)
    return [{**dataclasses.asdict(r), "psnr_mean": r.psnr_mean, "ssim_mean": r.ssim_mean} for r in rows]


def publish_evaluation(settings: Settings, rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                       params: Mapping[str, Any], run_name: str) -> dict[str, Any]:
    """Write ``<out_dir>/metrics.csv`` (never overwritten) and log the table to a new MLflow run in experiment
    ``evaluation``. Returns {"csv", "run_id", "experiment_id"}."""
    from mlflow import MlflowClient

    from ..evaluation.report import log_report, write_csv

    table = [Row(**{k: r[k] for k in _ROW_FIELDS if k in r}) for r in rows]
    csv_path = write_csv(table, Path(out_dir) / "metrics.csv")
    run_id = log_report(settings, table, csv_path, params=params, run_name=run_name)
    experiment_id = MlflowClient(settings.tracking_uri).get_run(run_id).info.experiment_id
    return {"csv": str(csv_path), "run_id": run_id, "experiment_id": experiment_id}
