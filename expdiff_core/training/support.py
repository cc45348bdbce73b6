"""Fit the expression support (:mod:`expdiff_core.models.support`) on a dataset's training identities."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import ExpDiffInputError
from ..io.dataset import NEUTRAL, Dataset
from ..models.prior import flatten_maps, map_layout
from ..models.support import MAP_THRESHOLD, VERTEX_THRESHOLD_CM, ExpressionSupport, fit_expression_support


def fit_support(dataset_root: str | os.PathLike, out: str | os.PathLike, *, split: str = "train",
                vertex_threshold: float = VERTEX_THRESHOLD_CM, map_threshold: float = MAP_THRESHOLD,
                progress: bool = True) -> ExpressionSupport:
    """Per unit, the vertices and BRDF texels some identity of ``split`` changes; saved to ``out`` (must not
    exist). Reads one identity at a time (a running maximum), so any corpus size fits in memory."""
    dataset = Dataset(Path(dataset_root))
    subjects = dataset.split(split)
    if not subjects:
        raise ExpDiffInputError(dataset.root / "manifest.json", f"split {split!r} has no identity to fit on")
    if Path(out).exists():
        raise ExpDiffInputError(Path(out), "output folder already exists; trained models are never overwritten")
    units = [e for e in dataset.units if e != NEUTRAL]
    layout = map_layout(dataset.map_kinds, dataset.udims)
    vertices = {e: np.zeros(dataset.vertex_count, np.float32) for e in units}
    maps = {e: None for e in units}
    bar = tqdm(total=len(subjects) * len(dataset.expressions), desc="support", unit="expr", disable=not progress)
    for s in subjects:
        neutral_vertices = dataset.load_vertices(s, NEUTRAL)
        neutral_maps = flatten_maps(dataset.load_maps(s, NEUTRAL), layout)
        bar.update(1)
        for e in units:
            moved = np.linalg.norm(dataset.load_vertices(s, e) - neutral_vertices, axis=1)
            changed = np.abs(flatten_maps(dataset.load_maps(s, e), layout) - neutral_maps)
            np.maximum(vertices[e], moved, out=vertices[e])
            maps[e] = changed if maps[e] is None else np.maximum(maps[e], changed)
            bar.update(1)
    bar.close()
    support = fit_expression_support(vertices, maps, layout, dataset.resolution, vertex_threshold=vertex_threshold,
                                     map_threshold=map_threshold,
                                     fitted_on={"dataset": dataset.root.name, "split": split,
                                                "identities": len(subjects)})
    support.save_pretrained(out)
    return support
