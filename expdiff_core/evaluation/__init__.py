"""Evaluation against the paper's baselines and ablations: metrics, baselines, the run, the table."""

from .baselines import BASELINES, LINEAR_3DMM, NEUTRAL_COPY, MeanFace, Prediction, mean_training_face
from .evaluate import ALL, Row, Sample, evaluate_methods, expdiff_predictions, score_predictions
from .metrics import LpipsMetric, LpipsStatus, fvd, lpips_available, lpips_status, psnr, ssim
from .report import format_table, log_report, log_rows, read_csv, summary_metrics, write_csv

__all__ = [
    "ALL", "BASELINES", "LINEAR_3DMM", "NEUTRAL_COPY", "LpipsMetric", "LpipsStatus", "MeanFace", "Prediction", "Row", "Sample",
    "evaluate_methods", "expdiff_predictions", "format_table", "fvd", "log_report", "log_rows", "lpips_available",
    "lpips_status", "mean_training_face", "psnr", "read_csv", "score_predictions", "ssim", "summary_metrics",
    "write_csv",
]
