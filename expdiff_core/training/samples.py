"""A sample contact sheet of a trained pipeline: generated expressions of a held-out subject beside the truth.

Used to show a training run's result (MLflow image artifact, Prefect run page). The subject's own neutral
mesh and maps go in, exactly as a build would take them, so the sheet shows what a build would make.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ExpDiffInputError
from ..io.dataset import Dataset
from ..orchestration_helpers.previews import SHEET_EXPRESSIONS

HELD_OUT_ORDER = ("test", "val", "train")  # the first split with a subject gives the sheet's subject


def sample_subject(dataset: Dataset) -> str:
    """The subject a sample sheet shows: the first test subject, else val, else train."""
    for split in HELD_OUT_ORDER:
        if dataset.split(split):
            return dataset.split(split)[0]
    raise ExpDiffInputError(dataset.root / "manifest.json", "has no subjects")


def render_sample_sheet(pipeline_dir: str | os.PathLike, dataset_root: str | os.PathLike, out: str | os.PathLike,
                        *, subject: str | None = None, expressions: Sequence[str] | None = None,
                        max_expressions: int = 4, seed: int = 0, steps: int | None = None, device: str = "auto",
                        size: int = 160, progress: bool = False) -> Path:
    """Generate ``subject``'s expressions with the pipeline at ``pipeline_dir`` and write a PNG to ``out``.

    Two columns: generated (sample) and the dataset's ground truth, one row per expression (the generated
    neutral first). subject: default ``sample_subject``. expressions: default the first ``max_expressions``
    thumbnail-friendly units the dataset holds. Returns ``out`` (written atomically, never overwritten).
    """
    from ..pipelines.expdiff import NEUTRAL, POSITION, ExpDiffPipeline
    from ..render.contact_sheet import render_expression_sheet
    from ..render.preview import write_preview

    dataset = Dataset(dataset_root)
    subject = subject or sample_subject(dataset)
    if subject not in dataset.subjects:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"has no subject {subject!r}")
    wanted = list(expressions) if expressions else [
        e for e in SHEET_EXPRESSIONS if e in dataset.expressions and e != NEUTRAL][:max_expressions]
    unknown = [e for e in wanted if e not in dataset.expressions]
    if unknown:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"has no expression(s) {unknown}")
    pipe = ExpDiffPipeline.from_pretrained(pipeline_dir, device=device)
    neutral = dataset.load_mesh(subject, NEUTRAL)
    result = pipe(neutral, dataset.load_maps(subject, NEUTRAL), wanted, seed=seed, steps=steps, progress=progress)
    vertices, maps = {}, {}
    for label in result.labels:
        vertices[f"{label} (sample)"] = result.vertices[label]
        maps[f"{label} (sample)"] = {k: v for k, v in result.maps[label].items() if k != POSITION}
        vertices[f"{label} (truth)"] = dataset.load_vertices(subject, label)
        maps[f"{label} (truth)"] = dataset.load_maps(subject, label)
    image = render_expression_sheet(neutral, vertices, maps, size=size, columns=2, progress=progress,
                                    title=f"{Path(pipeline_dir).name}: {dataset.root.name}/{subject}, seed {seed}")
    return write_preview(out, image, overwrite=False)
