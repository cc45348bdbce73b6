"""``evaluate`` flow: a model version against the neutral-copy and 3DMM baselines on held-out identities.

Artifacts: ``evaluation-<dataset>-metrics`` (table: one row per method, FVD mm and mean PSNR / SSIM per map
kind), ``evaluation-<dataset>-summary`` (dataset, split, model, CSV, MLflow run) and, with an MLflow tracking
server, ``evaluation-<dataset>-mlflow-run``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from expdiff_core.evaluation.evaluate import ALL
from tasks import artifacts
from tasks.build import resolve_model
from tasks.common import StageTimer, bind_result_storage, run_settings
from tasks.evaluate import publish, score


@flow(name="evaluate", description="Score a model version and the baselines (neutral copy, 3DMM) on a dataset's "
      "held-out identities: FVD, PSNR, SSIM (LPIPS when configured); table to CSV and MLflow.")
def evaluate(dataset: str, model: str | None = "models:/expdiff@candidate", split: str = "test",
             max_subjects: int | None = None, expressions: list[str] | None = None, seed: int = 0,
             steps: int | None = None, device: str | None = None, config_file: str | None = None) -> dict:
    """dataset: a dataset folder (``expdiff data``). model: ``models:/NAME@alias``, a pipeline folder, or
    None for the baselines only. split: train | val | test | all. expressions: units (default: all of the
    dataset's). steps: sampler steps (default: the model's). config_file: ExpDiff settings TOML."""
    settings = run_settings(config_file)
    resolve, score_, publish_ = bind_result_storage(settings, resolve_model, score, publish)
    name = Path(dataset).name
    run_id = str(flow_run.get_id())
    timer = StageTimer()

    model_ref = None
    if model:
        with timer.stage("resolve model"):
            model_ref = resolve(model, config_file)
    with timer.stage("evaluate"):
        rows = score_(dataset, model_ref, split=split, max_subjects=max_subjects, expressions=expressions,
                      seed=seed, steps=steps, device=device or settings.device, config_file=config_file)
    params = {"dataset": str(Path(dataset).resolve()), "split": split, "max_subjects": max_subjects, "seed": seed,
              "steps": steps, "model": model_ref["fingerprint"] if model_ref else "none (baselines only)",
              "prefect_flow_run_id": run_id}
    with timer.stage("publish"):
        published = publish_(rows, str(settings.output_path / "evaluations" / f"{name}-{run_id}"), params,
                             f"evaluate {name}", config_file)

    overall = [r for r in rows if r["expression"] == ALL]
    artifacts.table(
        [{"method": r["method"], "samples": r["samples"], "fvd_mm": r["fvd_mm"], "psnr_mean_db": r["psnr_mean"],
          "ssim_mean": r["ssim_mean"], **{f"psnr_{k}": v for k, v in r["psnr"].items()},
          **{f"ssim_{k}": v for k, v in r["ssim"].items()}} for r in overall],
        key=artifacts.artifact_key("evaluation", name, "metrics"),
        description=f"{name} ({split}): FVD in mm (lower is better), PSNR dB and SSIM (higher is better)")
    run_url = artifacts.mlflow_run_url(settings.tracking_uri, published["experiment_id"], published["run_id"])
    artifacts.mlflow_link(settings.tracking_uri, published["experiment_id"], published["run_id"],
                          artifacts.artifact_key("evaluation", name, "mlflow-run"),
                          description=f"MLflow run of the evaluation of {name}")
    best = min(overall, key=lambda r: r["fvd_mm"])
    artifacts.markdown_summary(
        f"Evaluation on {name}",
        {"dataset": params["dataset"], "split": split, "identities x expressions": overall[0]["samples"],
         "model": f"{model_ref['name']} version {model_ref['version']} ({model})" if model_ref else "baselines only",
         "lowest FVD": f"{best['method']} ({best['fvd_mm']:.4g} mm)", "metrics CSV": published["csv"],
         "MLflow run": f"[{published['run_id']}]({run_url})" if run_url else published["run_id"],
         **{f"{stage} (s)": seconds for stage, seconds in timer.seconds.items()}},
        key=artifacts.artifact_key("evaluation", name, "summary"), description=f"evaluation on {name}")
    return {"csv": published["csv"], "mlflow_run_id": published["run_id"],
            "methods": {r["method"]: {"fvd_mm": r["fvd_mm"], "psnr_mean": r["psnr_mean"], "ssim_mean": r["ssim_mean"]}
                        for r in overall}}
