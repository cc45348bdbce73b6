"""The evaluation table: printed aligned like the paper's Tables II/III, saved as CSV, logged to MLflow.

CSV columns: ``method, expression, samples, fvd_mm``, then ``psnr_<kind>`` for every map kind and
``psnr_mean``, the same for ``ssim``, ``lpips`` (LPIPS cells are empty when it was not computed),
``change_psnr`` and ``change_region_psnr`` (PSNR of the predicted change against the true change, peak =
the true change's range; whole map and inside the change region; empty where the truth has no change).
Floats are written with full precision, so ``read_csv(write_csv(rows))`` gives the rows back exactly.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Settings
from ..errors import ExpDiffInputError
from ..fileio import atomic_path
from .evaluate import ALL, Row

MEASURES = ("psnr", "ssim", "lpips", "change_psnr", "change_region_psnr")
KIND_ABBREVIATIONS = {"albedo": "alb", "specular": "spec", "roughness": "rough", "normal": "nrm"}
EXPERIMENT = "evaluation"


def _kinds(rows: Sequence[Row]) -> list[str]:
    return list(rows[0].psnr) if rows else []


def csv_columns(kinds: Sequence[str]) -> list[str]:
    """The CSV header for these map kinds."""
    columns = ["method", "expression", "samples", "fvd_mm"]
    for measure in MEASURES:
        columns += [f"{measure}_{k}" for k in kinds] + [f"{measure}_mean"]
    return columns


def _record(row: Row, kinds: Sequence[str]) -> dict[str, Any]:
    record: dict[str, Any] = {"method": row.method, "expression": row.expression, "samples": row.samples,
                              "fvd_mm": repr(row.fvd_mm)}
    for measure in MEASURES:
        values: dict[str, float] = getattr(row, measure)
        for k in kinds:
            record[f"{measure}_{k}"] = repr(values[k]) if k in values else ""
        mean = getattr(row, f"{measure}_mean")
        record[f"{measure}_mean"] = "" if mean is None else repr(mean)
    return record


def write_csv(rows: Sequence[Row], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the rows as CSV, atomically; an existing file is only replaced with ``overwrite=True``."""
    path = Path(path)
    kinds = _kinds(rows)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_columns(kinds))
            writer.writeheader()
            for row in rows:
                writer.writerow(_record(row, kinds))
    return path


def read_csv(path: str | os.PathLike) -> list[Row]:
    """Rows back from a CSV written by ``write_csv``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            records = list(reader)
    except OSError as exc:
        raise ExpDiffInputError(path, f"cannot read evaluation CSV ({exc})") from None
    kinds = [c[len("psnr_"):] for c in header if c.startswith("psnr_") and c != "psnr_mean"]
    if header != csv_columns(kinds):
        raise ExpDiffInputError(path, f"not an evaluation table: header {header}")
    rows = []
    for line, r in enumerate(records, start=2):
        try:
            measures = {m: {k: float(r[f"{m}_{k}"]) for k in kinds if r[f"{m}_{k}"] != ""} for m in MEASURES}
            rows.append(Row(r["method"], r["expression"], int(r["samples"]), float(r["fvd_mm"]), **measures))
        except ValueError as exc:
            raise ExpDiffInputError(path, f"line {line}: {exc}") from None
    return rows


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[Row], *, per_expression: bool = False) -> str:
    """An aligned text table: one line per method (its ``all`` row), or per method and expression.

    Columns: FVD in mm (lower is better), PSNR in dB and SSIM (higher is better) per map kind and their
    mean, the mean LPIPS (lower is better) when it was computed, and the change PSNR per kind and its mean
    inside the change region (dPSNR, higher is better).
    """
    kinds = _kinds(rows)
    chosen = [r for r in rows if per_expression or r.expression == ALL]
    with_lpips = any(r.lpips for r in chosen)
    header = ["Method"] + (["Expression"] if per_expression else []) + ["N", "FVD mm"]
    header += [f"PSNR {KIND_ABBREVIATIONS.get(k, k)}" for k in kinds] + ["PSNR"]
    header += [f"SSIM {KIND_ABBREVIATIONS.get(k, k)}" for k in kinds] + ["SSIM"]
    header += ["LPIPS"] if with_lpips else []
    header += [f"dPSNR {KIND_ABBREVIATIONS.get(k, k)}" for k in kinds] + ["dPSNR region"]
    lines = []
    for r in chosen:
        cells = [r.method] + ([r.expression] if per_expression else []) + [str(r.samples), _cell(r.fvd_mm, 3)]
        cells += [_cell(r.psnr.get(k), 2) for k in kinds] + [_cell(r.psnr_mean, 2)]
        cells += [_cell(r.ssim.get(k), 4) for k in kinds] + [_cell(r.ssim_mean, 4)]
        cells += [_cell(r.lpips_mean, 4)] if with_lpips else []
        cells += [_cell(r.change_psnr.get(k), 2) for k in kinds] + [_cell(r.change_region_psnr_mean, 2)]
        lines.append(cells)
    text_columns = 2 if per_expression else 1
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < text_columns else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(c) for c in lines)])


def summary_records(rows: Sequence[Row], baselines: Sequence[str]) -> list[dict[str, Any]]:
    """One record per method (its ``all`` row) with how it compares to the best of ``baselines``.

    Columns: ``method``, ``FVD mm``, ``FVD / best baseline`` (below 1 wins), then per map kind PSNR, SSIM,
    LPIPS (when computed), change PSNR, change PSNR in the change region, and ``change PSNR - best baseline``
    (dB, above 0 wins), where "best baseline" is the best value among ``baselines`` for that column.
    """
    chosen = [r for r in rows if r.expression == ALL]
    kinds = _kinds(chosen)
    base = [r for r in chosen if r.method in baselines]
    if not base:
        raise ExpDiffInputError(None, f"no baseline row among {list(baselines)}")
    best_fvd = min(r.fvd_mm for r in base)
    best_change = {k: max(r.change_psnr[k] for r in base if k in r.change_psnr) for k in kinds
                   if any(k in r.change_psnr for r in base)}
    out = []
    for r in chosen:
        rec: dict[str, Any] = {"method": r.method, "FVD mm": round(r.fvd_mm, 5),
                               "FVD / best baseline": round(r.fvd_mm / best_fvd, 3)}
        for k in kinds:
            rec[f"PSNR {k}"] = round(r.psnr[k], 3)
            rec[f"SSIM {k}"] = round(r.ssim[k], 5)
            if r.lpips:
                rec[f"LPIPS {k}"] = round(r.lpips[k], 5)
            if k in r.change_psnr:
                rec[f"change PSNR {k}"] = round(r.change_psnr[k], 3)
                rec[f"change PSNR region {k}"] = round(r.change_region_psnr[k], 3)
                rec[f"change PSNR {k} - best baseline"] = round(r.change_psnr[k] - best_change[k], 3)
        out.append(rec)
    return out


def write_summary_csv(rows: Sequence[Row], path: str | os.PathLike, baselines: Sequence[str], *,
                      overwrite: bool = False) -> Path:
    """``summary_records`` as CSV, atomically (never replacing a file unless ``overwrite``)."""
    records = summary_records(rows, baselines)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return path


def metric_key(method: str, name: str) -> str:
    """MLflow metric name ``<method slug>.<name>``, e.g. ``w_o_attention.psnr_mean``."""
    slug = re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_") or "method"
    return f"{slug}.{name}"


def summary_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """{metric name: value} of every method's ``all`` row: FVD, PSNR / SSIM / LPIPS per kind and mean."""
    out: dict[str, float] = {}
    for r in rows:
        if r.expression != ALL:
            continue
        out[metric_key(r.method, "fvd_mm")] = r.fvd_mm
        for measure in MEASURES:
            values: dict[str, float] = getattr(r, measure)
            for k, v in values.items():
                out[metric_key(r.method, f"{measure}_{k}")] = v
            mean = getattr(r, f"{measure}_mean")
            if mean is not None:
                out[metric_key(r.method, f"{measure}_mean")] = mean
    return out


def log_rows(rows: Sequence[Row], csv_path: str | os.PathLike | None = None) -> None:
    """Log the summary metrics (and the CSV as an artifact) into the active MLflow run."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_rows must be called inside an MLflow run (registry.tracked_run)")
    mlflow.log_metrics(summary_metrics(rows))
    if csv_path is not None:
        mlflow.log_artifact(str(csv_path), artifact_path="evaluation")


def log_report(settings: Settings, rows: Sequence[Row], csv_path: str | os.PathLike, *,
               experiment: str = EXPERIMENT, run_name: str | None = None,
               params: Mapping[str, Any] | None = None) -> str:
    """Log the table to a new MLflow run in ``experiment`` (tracking URI from settings); returns its run id."""
    from ..registry import tracked_run

    with tracked_run(settings, experiment, run_name=run_name, params=params) as run:
        log_rows(rows, csv_path)
        return run.info.run_id
