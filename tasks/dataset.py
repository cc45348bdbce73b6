"""Dataset tasks: synthesise a dataset, validate it, render a preview sheet. One core call each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import task

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.io.dataset import require_valid_dataset
from expdiff_core.orchestration_helpers.previews import dataset_contact_sheet
from expdiff_core.synth import factory

from .common import IO_RETRIES, IO_RETRY_DELAYS, IO_RETRY_JITTER, NOT_CACHED, RESULT_SERIALIZER, retry_on_transient_io

Source = Literal["procedural", "ict-facekit"]
SOURCES: tuple[str, ...] = ("procedural", "ict-facekit")


def face_source(source: str, source_path: str | None) -> Any:
    """The factory's face source for a flow parameter: ``procedural`` or ``ict-facekit`` (+ its folder)."""
    if source == "ict-facekit":
        if not source_path:
            raise ExpDiffInputError(None, "source 'ict-facekit' needs source_path (the ICT-FaceKit folder)")
        return factory.IctSource(source_path)
    if source == "procedural":
        return factory.ProceduralSource()
    raise ExpDiffInputError(None, f"unknown dataset source {source!r}; use one of {list(SOURCES)}")


# Publishes a new folder (refuses an existing one), so never cached: a rerun must not claim a dataset that was
# deleted since. The write is atomic, so retrying after an I/O error starts clean.
@task(name="synthesise-dataset", **NOT_CACHED, result_serializer=RESULT_SERIALIZER,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_jitter_factor=IO_RETRY_JITTER,
      retry_condition_fn=retry_on_transient_io)
def synthesise_dataset(out: str, identities: int, resolution: int, seed: int, source: str = "procedural",
                       source_path: str | None = None, workers: int = 1, cache_dir: str | None = None
                       ) -> dict[str, Any]:
    """``write_dataset``: a new dataset folder at ``out``. Returns {"path", "identities", "resolution", "seed"}."""
    path = factory.write_dataset(out, face_source(source, source_path), identities, resolution, seed=seed,
                                 workers=workers, cache_dir=cache_dir, progress=True,
                                 generator=f"expdiff flows.dataset ({source})")
    return {"path": str(Path(path).resolve()), "identities": identities, "resolution": resolution, "seed": seed}


@task(name="validate-dataset", **NOT_CACHED, result_serializer=RESULT_SERIALIZER,
      retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS, retry_jitter_factor=IO_RETRY_JITTER,
      retry_condition_fn=retry_on_transient_io)
def validate_dataset(path: str, check_pixels: bool = True) -> dict[str, Any]:
    """``require_valid_dataset``: fails listing every problem with its file; else the dataset's figures."""
    dataset = require_valid_dataset(path, check_pixels=check_pixels)
    split_of = {s: split for split, names in dataset.splits.items() for s in names}
    return {
        "path": str(dataset.root.resolve()), "name": dataset.root.name,
        "subjects": [{"subject": s, "split": split_of.get(s, ""), "seed": dataset.subject_info(s).get("seed")}
                     for s in dataset.subjects],
        "expressions": len(dataset.expressions), "absent_units": sorted(dataset.absent_units),
        "map_kinds": list(dataset.map_kinds), "udims": list(dataset.udims), "resolution": dataset.resolution,
        "vertex_count": dataset.vertex_count,
    }


@task(name="dataset-contact-sheet", **NOT_CACHED, result_serializer=RESULT_SERIALIZER)
def render_dataset_sheet(path: str, out: str, subject: str | None = None, size: int = 160) -> str:
    """``dataset_contact_sheet``: a PNG of one subject's expressions; returns its path."""
    return str(dataset_contact_sheet(path, out, subject=subject, size=size))
