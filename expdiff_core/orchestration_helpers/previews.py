"""Preview images of datasets for run pages: a contact sheet of one subject's expressions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ExpDiffInputError
from ..io.dataset import Dataset
from ..render.contact_sheet import render_expression_sheet
from ..render.preview import write_preview

# Units that read at thumbnail size (jaw, mouth corners, lids, brows, lips), in sheet order; a dataset shows
# the ones it has.
SHEET_EXPRESSIONS = ("neutral", "jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "browInnerUp_R",
                     "mouthPucker", "cheekPuff_L", "noseSneer_R")


def dataset_contact_sheet(dataset_root: str | os.PathLike, out: str | os.PathLike, subject: str | None = None,
                          expressions: Sequence[str] | None = None, size: int = 160,
                          columns: int | None = None, overwrite: bool = False) -> Path:
    """Render ``subject``'s ``expressions`` from a dataset (meshes + BRDF maps) as a PNG contact sheet.

    subject: default the dataset's first subject. expressions: default ``SHEET_EXPRESSIONS`` that the
    dataset holds. size: pixels per cell side. Written atomically to ``out``; returns ``out``.
    """
    dataset = Dataset(dataset_root)
    subject = subject or dataset.subjects[0]
    if subject not in dataset.subjects:
        raise ExpDiffInputError(Path(dataset_root) / "manifest.json", f"has no subject {subject!r}")
    wanted = list(expressions) if expressions else [e for e in SHEET_EXPRESSIONS if e in dataset.expressions]
    unknown = [e for e in wanted if e not in dataset.expressions]
    if unknown:
        raise ExpDiffInputError(Path(dataset_root) / "manifest.json", f"has no expression(s) {unknown}")
    neutral = dataset.load_mesh(subject, "neutral")
    image = render_expression_sheet(
        neutral, {e: dataset.load_vertices(subject, e) for e in wanted},
        {e: dataset.load_maps(subject, e) for e in wanted}, size=size, columns=columns,
        title=f"{dataset.root.name} / {subject}", progress=False)
    return write_preview(out, image, overwrite=overwrite)
