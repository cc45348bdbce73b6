"""Evaluation tasks: score a model and the baselines on held-out identities; publish the table."""

from __future__ import annotations

from typing import Any, Sequence

from prefect import task

from expdiff_core.orchestration_helpers.evaluation_runs import evaluate_model, publish_evaluation

from .common import (GPU_TAG, IO_RETRIES, IO_RETRY_DELAYS, IO_RETRY_JITTER, NOT_CACHED, RESULT_SERIALIZER,
                     content_cache_key, retry_on_transient_io, run_settings)


# Pure: the scores follow from the dataset's files, the model version and the sampling settings.
@task(name="evaluate-model", tags=[GPU_TAG], result_serializer=RESULT_SERIALIZER,
      cache_key_fn=content_cache_key("evaluate", files=["dataset"],
                                     values=["model.fingerprint", "split", "max_subjects", "expressions", "seed",
                                             "steps"]))
def score(dataset: str, model: dict[str, Any] | None, split: str = "test", max_subjects: int | None = None,
          expressions: Sequence[str] | None = None, seed: int = 0, steps: int | None = None,
          device: str = "auto", config_file: str | None = None) -> list[dict[str, Any]]:
    """``evaluate_model``: one row per method and expression (plus each method's ``all`` row)."""
    return evaluate_model(run_settings(config_file), dataset, model["path"] if model else None, split=split,
                          max_subjects=max_subjects, expressions=expressions, seed=seed, steps=steps, device=device)


@task(name="publish-evaluation", **NOT_CACHED, result_serializer=RESULT_SERIALIZER, retries=IO_RETRIES,
      retry_delay_seconds=IO_RETRY_DELAYS, retry_jitter_factor=IO_RETRY_JITTER, retry_condition_fn=retry_on_transient_io)
def publish(rows: list[dict[str, Any]], out_dir: str, params: dict[str, Any], run_name: str,
            config_file: str | None = None) -> dict[str, Any]:
    """``publish_evaluation``: metrics.csv + an MLflow run in experiment ``evaluation``."""
    return publish_evaluation(run_settings(config_file), rows, out_dir, params, run_name)
