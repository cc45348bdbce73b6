"""``dataset`` flow: synthesise a training/test corpus with the synthetic face factory, validate it, preview it.

Artifacts on the run page: a summary (``dataset-<name>-summary``), a table of subjects and splits, a
progress bar over the steps, and a contact sheet of the first subject's expressions.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks import artifacts
from tasks.common import StageTimer, artifacts_path, bind_result_storage, run_settings
from tasks.dataset import Source, render_dataset_sheet, synthesise_dataset, validate_dataset


@flow(name="dataset", description="Synthesise a dataset (identities x neutral + expression units, meshes and "
      "BRDF maps), validate every file, and preview one subject.")
def dataset(out: str, identities: int = 2, resolution: int = 128, seed: int = 0, source: Source = "procedural",
            source_path: str | None = None, workers: int = 1, preview: bool = True,
            config_file: str | None = None) -> dict:
    """out: new dataset folder. source: ``procedural`` (our template head) or ``ict-facekit`` (source_path:
    the ICT-FaceKit folder). resolution: texels per UDIM tile side (64..4096). preview: render a contact
    sheet. config_file: ExpDiff settings TOML (default $EXPDIFF_CONFIG / EXPDIFF_* env of the worker)."""
    settings = run_settings(config_file)
    synth, check, sheet = bind_result_storage(settings, synthesise_dataset, validate_dataset, render_dataset_sheet)
    name = Path(out).name
    progress = artifacts.ProgressReporter(artifacts.artifact_key("dataset", name, "progress"),
                                          description=f"dataset {name}: steps done")
    steps = 3 if preview else 2
    timer = StageTimer()

    with timer.stage("synthesise"):
        made = synth(out, identities, resolution, seed, source=source, source_path=source_path, workers=workers,
                     cache_dir=str(settings.cache_path / "uv_raster"))
    progress.update(1, steps, description=f"dataset {name}: synthesised")
    with timer.stage("validate"):
        figures = check(made["path"])
    progress.update(2, steps, description=f"dataset {name}: validated")

    sheet_path = None
    if preview:
        with timer.stage("preview"):
            target = artifacts_path(settings) / "datasets" / f"{name}-{flow_run.get_id()}.png"
            sheet_path = sheet(made["path"], str(target))
        artifacts.image_artifact(sheet_path, settings, artifacts.artifact_key("dataset", name, "contact-sheet"),
                                 description=f"dataset {name}: {figures['subjects'][0]['subject']}'s expressions")
        progress.update(3, steps, description=f"dataset {name}: previewed")

    splits = {s: sum(1 for row in figures["subjects"] if row["split"] == s) for s in ("train", "val", "test")}
    artifacts.markdown_summary(
        f"Dataset {name}",
        {"path": figures["path"], "source": source, "seed": seed, "identities": len(figures["subjects"]),
         "splits": ", ".join(f"{k} {v}" for k, v in splits.items()),
         "expressions per identity": figures["expressions"], "maps": ", ".join(figures["map_kinds"]),
         "resolution": f"{figures['resolution']}^2 per tile", "UDIM tiles": ", ".join(map(str, figures["udims"])),
         "vertices": figures["vertex_count"], "contact sheet": sheet_path or "not rendered",
         **{f"{stage} (s)": seconds for stage, seconds in timer.seconds.items()}},
        key=artifacts.artifact_key("dataset", name, "summary"), description=f"dataset {name}",
        notes=[f"absent units: {', '.join(figures['absent_units'])}"] if figures["absent_units"] else [])
    artifacts.table(figures["subjects"], key=artifacts.artifact_key("dataset", name, "subjects"),
                    description=f"dataset {name}: subjects and splits")
    return {"path": figures["path"], "subjects": len(figures["subjects"]), "splits": splits,
            "contact_sheet": sheet_path, "seconds": timer.seconds}
