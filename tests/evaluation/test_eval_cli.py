"""``expdiff eval`` end to end: table printed, metrics.csv written, MLflow run logged, LPIPS status said."""

from __future__ import annotations

import pytest

from expdiff_core.cli import main
from expdiff_core.evaluation.evaluate import ALL
from expdiff_core.evaluation.report import read_csv


def test_eval_help_describes_measures_and_baselines(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for word in ("FVD", "PSNR", "SSIM", "LPIPS", "neutral copy", "3DMM", "--method", "--no-mlflow"):
        assert word in text


def _argv(dataset, model, out, *extra):
    return ["eval", "--dataset", str(dataset), "--model", str(model), "--expressions", "jawOpen", "--steps", "1",
            "--max-subjects", "1", "--out", str(out), "--device", "cpu", *extra]


def test_eval_prints_the_table_writes_the_csv_and_never_overwrites_it(procedural_dataset, tiny_model, tmp_path,
                                                                      capsys):
    argv = _argv(procedural_dataset, tiny_model, tmp_path / "eval", "--no-mlflow")
    assert main(argv) == 0
    text = capsys.readouterr().out
    table = text[text.index("Method"):]
    for method in ("neutral copy", "3DMM", "ridge", "ExpDiff"):
        assert f"\n{method} " in table
    assert "1 subject(s) x 1 expression(s), 4 method(s)" in text
    assert "LPIPS: not computed: no LPIPS weights: lpips_weights_path is not configured" in text
    assert "MLflow" not in text
    rows = read_csv(tmp_path / "eval" / "metrics.csv")
    assert [(r.method, r.expression) for r in rows] == [
        (m, e) for m in ("neutral copy", "3DMM", "ridge", "ExpDiff") for e in (ALL, "jawOpen")]

    before = (tmp_path / "eval" / "metrics.csv").read_bytes()
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "eval" / "metrics.csv").read_bytes() == before


@pytest.mark.slow
def test_eval_scores_an_ablation_and_logs_to_mlflow(procedural_dataset, tiny_model, tiny_onehot_model, tmp_path,
                                                    capsys):
    import mlflow

    from expdiff_core.config import load_settings

    argv = _argv(procedural_dataset, tiny_model, tmp_path / "eval", "--method", f"one-hot={tiny_onehot_model}")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "\none-hot " in text[text.index("Method"):]
    run_id = text.split("logged to MLflow run ")[1].split()[0]
    settings = load_settings()  # the test's own state folder (tests/conftest.py), SQLite store inside it
    run = mlflow.MlflowClient(tracking_uri=settings.tracking_uri).get_run(run_id)
    rows = {r.method: r for r in read_csv(tmp_path / "eval" / "metrics.csv") if r.expression == ALL}
    assert run.data.metrics["one_hot.fvd_mm"] == pytest.approx(rows["one-hot"].fvd_mm)
    assert run.data.metrics["expdiff.psnr_mean"] == pytest.approx(rows["ExpDiff"].psnr_mean)
    assert run.data.params["model.one-hot"] == str(tiny_onehot_model)


def test_eval_reports_a_missing_dataset_as_an_error(tmp_path, capsys):
    assert main(["eval", "--dataset", str(tmp_path / "nothing"), "--no-mlflow", "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
