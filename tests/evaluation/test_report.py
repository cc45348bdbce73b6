"""The evaluation table: aligned text, CSV round trip, MLflow logging against a real SQLite store."""

from __future__ import annotations

import pytest

from expdiff_core.config import load_settings
from expdiff_core.errors import PublishError
from expdiff_core.evaluation.evaluate import ALL, Row
from expdiff_core.evaluation.report import format_table, log_report, metric_key, read_csv, summary_metrics, write_csv

KINDS = ("albedo", "specular", "roughness", "normal")


def _rows(with_lpips: bool = False) -> list[Row]:
    def row(method, expression, base):
        return Row(method, expression, 3, base / 7, {k: 30 + base + i / 3 for i, k in enumerate(KINDS)},
                   {k: 0.9 - base / 1000 - i / 97 for i, k in enumerate(KINDS)},
                   {k: 0.1 + i / 11 for i, k in enumerate(KINDS)} if with_lpips else {})

    return [row(m, e, b + 10 * j) for j, m in enumerate(["neutral copy", "3DMM", "w/o attention"])
            for b, e in enumerate([ALL, "jawOpen", "mouthSmile_L"])]


@pytest.mark.parametrize("with_lpips", [False, True])
def test_csv_round_trip_gives_the_rows_back_exactly(tmp_path, with_lpips):
    rows = _rows(with_lpips)
    path = write_csv(rows, tmp_path / "metrics.csv")
    assert read_csv(path) == rows


def test_csv_is_never_overwritten_silently(tmp_path):
    path = write_csv(_rows(), tmp_path / "metrics.csv")
    before = path.read_bytes()
    with pytest.raises(PublishError, match="already exists"):
        write_csv(_rows(True), path)
    assert path.read_bytes() == before
    write_csv(_rows(True), path, overwrite=True)
    assert read_csv(path) == _rows(True)


def test_table_has_one_aligned_line_per_method(tmp_path):
    text = format_table(_rows())
    lines = text.splitlines()
    assert [line.split("  ")[0].strip() for line in lines[2:]] == ["neutral copy", "3DMM", "w/o attention"]
    assert len({len(line) for line in lines}) == 1  # numbers are right-aligned under their headers
    assert "LPIPS" not in lines[0] and "LPIPS" in format_table(_rows(True)).splitlines()[0]
    assert len(format_table(_rows(), per_expression=True).splitlines()) == 2 + len(_rows())


def test_summary_metrics_name_each_method_and_measure():
    metrics = summary_metrics(_rows(True))
    assert metrics[metric_key("w/o attention", "fvd_mm")] == _rows()[6].fvd_mm
    assert "w_o_attention.psnr_mean" in metrics and "3dmm.lpips_normal" in metrics
    assert len(metrics) == 3 * (1 + 3 * (len(KINDS) + 1))  # only the 'all' rows are logged


def test_report_is_logged_to_a_real_sqlite_mlflow_store(tmp_path):
    import mlflow

    settings = load_settings(environ={"EXPDIFF_STATE_DIR": str(tmp_path / "state")})
    rows = _rows()
    csv_path = write_csv(rows, tmp_path / "out" / "metrics.csv")
    run_id = log_report(settings, rows, csv_path, params={"split": "test"})
    assert settings.tracking_uri.startswith("sqlite:///")
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.metrics["3dmm.fvd_mm"] == pytest.approx(rows[3].fvd_mm)
    assert run.data.metrics["neutral_copy.ssim_mean"] == pytest.approx(rows[0].ssim_mean)
    assert run.data.params["split"] == "test"
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/metrics.csv"]
    local = client.download_artifacts(run_id, "evaluation/metrics.csv", str(tmp_path / "back"))
    assert read_csv(local) == rows


def test_the_summary_says_by_how_much_each_method_wins_or_loses_against_the_best_baseline():
    from expdiff_core.evaluation.evaluate import ALL, Row
    from expdiff_core.evaluation.report import summary_records

    def row(method, fvd, change):
        return Row(method, ALL, 4, fvd, {"albedo": 70.0}, {"albedo": 0.99}, {}, {"albedo": change}, {"albedo": change - 3})

    records = summary_records([row("neutral copy", 0.2, 0.0), row("3DMM", 0.04, 20.0), row("model", 0.02, 25.0)],
                              ["neutral copy", "3DMM"])
    model = records[-1]
    assert model["FVD / best baseline"] == 0.5  # 0.02 mm against 3DMM's 0.04
    assert model["change PSNR albedo - best baseline"] == 5.0
    assert records[1]["FVD / best baseline"] == 1.0
